//! One-shot Redis commands for the demo (PING at start, PFCOUNT of the sketches), on a
//! blocking `std::net` connection with the protocol crate's RESP codec.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use croupier_protocol::resp::{self, Frame};

/// A blocking connection to Redis.
#[derive(Debug)]
pub struct Redis {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Redis {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Redis> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Redis { stream, buf: Vec::new() })
    }

    /// Sends one command and reads its reply.
    pub fn command(&mut self, args: &[&[u8]]) -> std::io::Result<Frame> {
        let mut out = Vec::new();
        resp::command(&mut out, args);
        self.stream.write_all(&out)?;
        let mut chunk = [0u8; 4096];
        loop {
            match resp::decode_reply(&self.buf) {
                Ok(Some((frame, used))) => {
                    self.buf.drain(..used);
                    return Ok(frame);
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())),
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// `PFCOUNT key` (0 for a key that does not exist).
    pub fn pfcount(&mut self, key: &str) -> std::io::Result<u64> {
        match self.command(&[b"PFCOUNT", key.as_bytes()])? {
            Frame::Integer(n) => Ok(n.max(0) as u64),
            Frame::Error(e) => Err(std::io::Error::other(format!("PFCOUNT {key}: {e}"))),
            other => Err(std::io::Error::other(format!("PFCOUNT {key}: unexpected reply {other:?}"))),
        }
    }
}
