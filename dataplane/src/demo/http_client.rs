//! A small blocking HTTP/1.1 client for the demo: the simulated players' keep-alive
//! connection to the data port, and one-shot GETs of `/metrics` and ClickHouse's HTTP
//! interface. Hand-written on `std::net` and `httparse` (already a dependency) because it
//! needs three request shapes and no runtime; the data path never uses it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A response: status and body.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

/// A connection that is reopened when it fails.
#[derive(Debug)]
pub struct Client {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    timeout: Duration,
}

impl Client {
    /// A client of `addr`; connects on first use.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Client {
        Client { addr, stream: None, timeout }
    }

    /// Sends one request and reads its response. On any error the connection is dropped
    /// (the next request opens a new one).
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let res = self.try_request(method, target, headers, body);
        if res.is_err() {
            self.stream = None;
        }
        res
    }

    fn try_request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let stream = match &mut self.stream {
            Some(s) => s,
            slot => {
                let s = TcpStream::connect_timeout(&self.addr, self.timeout)?;
                s.set_read_timeout(Some(self.timeout))?;
                s.set_write_timeout(Some(self.timeout))?;
                s.set_nodelay(true)?;
                slot.insert(s)
            }
        };
        let mut head =
            format!("{method} {target} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n", self.addr, body.len());
        for (k, v) in headers {
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        stream.write_all(&out)?;
        let (res, close) = read_response(stream)?;
        if close {
            self.stream = None;
        }
        Ok(res)
    }
}

/// One GET on a new connection.
pub fn get(addr: SocketAddr, target: &str, timeout: Duration) -> std::io::Result<Response> {
    Client::new(addr, timeout).request("GET", target, &[("Connection", "close")], b"")
}

fn invalid(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

/// Reads one response; also says whether the server closes the connection after it.
fn read_response(stream: &mut TcpStream) -> std::io::Result<(Response, bool)> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16384];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&buf).map_err(|e| invalid(e.to_string()))? {
            httparse::Status::Complete(head_len) => {
                let status = parsed.code.unwrap_or(0);
                let mut length = None;
                let (mut chunked, mut close) = (false, parsed.version == Some(0));
                for h in parsed.headers.iter() {
                    let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = Some(v.trim().parse::<usize>().map_err(|_| invalid("bad Content-Length"))?);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = v.contains("chunked");
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        close = v.contains("close");
                    }
                }
                let rest = buf.split_off(head_len);
                let body = if chunked {
                    read_chunked(stream, rest)?
                } else if let Some(n) = length {
                    read_exact_body(stream, rest, n)?
                } else {
                    close = true;
                    read_to_end(stream, rest)?
                };
                return Ok((Response { status, body }, close));
            }
            httparse::Status::Partial => {
                if buf.len() > 64 << 10 {
                    return Err(invalid("response head too large"));
                }
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

fn read_exact_body(stream: &mut TcpStream, mut body: Vec<u8>, n: usize) -> std::io::Result<Vec<u8>> {
    if body.len() < n {
        let have = body.len();
        body.resize(n, 0);
        stream.read_exact(&mut body[have..])?;
    }
    body.truncate(n);
    Ok(body)
}

fn read_to_end(stream: &mut TcpStream, mut body: Vec<u8>) -> std::io::Result<Vec<u8>> {
    stream.read_to_end(&mut body)?;
    Ok(body)
}

fn read_chunked(stream: &mut TcpStream, mut raw: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut pos = 0;
    let mut chunk = [0u8; 16384];
    loop {
        // A size line, then that many bytes and CRLF; size 0 ends (trailers not expected).
        if let Some(eol) = raw[pos..].windows(2).position(|w| w == b"\r\n") {
            let line = std::str::from_utf8(&raw[pos..pos + eol]).map_err(|_| invalid("bad chunk size"))?;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| invalid("bad chunk size"))?;
            let start = pos + eol + 2;
            if size == 0 {
                return Ok(body);
            }
            if raw.len() >= start + size + 2 {
                body.extend_from_slice(&raw[start..start + size]);
                pos = start + size + 2;
                continue;
            }
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        raw.extend_from_slice(&chunk[..n]);
    }
}
