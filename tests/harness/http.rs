//! A byte-level HTTP/1.1 client over a real TCP connection, and request signing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use croupier_protocol::signature;

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Reply {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error` tag of a JSON error body.
    pub fn error_tag(&self) -> String {
        let t = self.text();
        t.split(r#""error":""#).nth(1).and_then(|r| r.split('"').next()).unwrap_or("").to_owned()
    }
}

/// One keep-alive connection.
pub struct HttpClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpClient {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> HttpClient {
        let stream = TcpStream::connect(addr).expect("connect to ingest");
        stream.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        HttpClient { stream, buf: Vec::new() }
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write request");
    }

    /// A second handle on the connection, to write from another thread while this one
    /// reads (a client still sending when the server answers).
    pub fn writer(&self) -> TcpStream {
        self.stream.try_clone().expect("clone the connection")
    }

    /// Reads one response.
    pub fn read_reply(&mut self) -> Reply {
        self.try_read_reply().expect("a response")
    }

    /// Reads one response, or `None` if the server closed first.
    pub fn try_read_reply(&mut self) -> Option<Reply> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = resp.parse(&self.buf) {
                let status = resp.code.unwrap_or(0);
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .map(|(_, v)| v.parse().expect("content-length"))
                    .unwrap_or(0);
                if status == 100 {
                    self.buf.drain(..n);
                    continue;
                }
                if self.buf.len() >= n + len {
                    let body = self.buf[n..n + len].to_vec();
                    self.buf.drain(..n + len);
                    return Some(Reply { status, headers, body });
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                // A signal may interrupt the read (EINTR): not the end of the response.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads one response if it arrives within `wait` (`None` if it does not, or if the
    /// server closed first).
    pub fn reply_within(&mut self, wait: Duration) -> Option<Reply> {
        self.stream.set_read_timeout(Some(wait)).expect("timeout");
        let r = self.try_read_reply();
        self.stream.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
        r
    }

    /// Sends a request with a Content-Length body and reads the response.
    pub fn request(&mut self, method: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> Reply {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes);
        self.read_reply()
    }

    /// Whether the server has closed the connection (waits up to `wait`).
    pub fn is_closed(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).expect("timeout");
        let mut b = [0u8; 1];
        let closed = loop {
            match self.stream.read(&mut b) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break matches!(r, Ok(0)),
            }
        };
        self.stream.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
        closed
    }
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() as i64
}

/// Waits, if needed, until the UTC day has at least `ahead` seconds left and has run at
/// least `after` seconds, and returns the Unix seconds then: a test whose figures are per
/// UTC day and that stamps events up to `after` seconds back, or runs for up to `ahead`
/// seconds, calls it first, so that its events and its reads fall on one day.
pub fn clear_of_day_turn(ahead: u64, after: u64) -> i64 {
    let into = now_secs().rem_euclid(86_400) as u64;
    let wait = if into < after {
        after - into
    } else if 86_400 - into < ahead {
        86_400 - into + after
    } else {
        0
    };
    if wait > 0 {
        std::thread::sleep(std::time::Duration::from_secs(wait));
    }
    now_secs()
}

static NONCE: AtomicU64 = AtomicU64::new(0);

/// A nonce not used before in this process.
pub fn fresh_nonce() -> String {
    format!("n-{}-{}-{}", std::process::id(), now_secs(), NONCE.fetch_add(1, Ordering::Relaxed))
}

/// Headers of a signed JSON request: content type and the four credential headers.
pub fn signed_headers(game: &str, secret: &str, body: &[u8], ts: i64, nonce: &str) -> Vec<(String, String)> {
    let ts = ts.to_string();
    let sig = signature::sign(secret.as_bytes(), &ts, nonce, body);
    vec![
        ("Content-Type".into(), "application/json".into()),
        ("X-Game-Id".into(), game.into()),
        ("X-Timestamp".into(), ts),
        ("X-Nonce".into(), nonce.into()),
        ("X-Signature".into(), sig),
    ]
}
