//! Reading from a connection into a growable buffer, against a deadline.

use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;
use monoio::time::Instant;

/// Why no bytes were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// The deadline passed.
    Timeout,
    /// The peer closed the connection, or it failed.
    Closed,
}

/// Appends what the socket has (at least one byte) to `buf`; growing it as needed.
pub async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, ReadError> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(buf.capacity().clamp(4096, 1 << 20));
    }
    let len = buf.len();
    let cap = buf.capacity();
    let (res, slice) = stream.read(std::mem::take(buf).slice_mut(len..cap)).await;
    *buf = slice.into_inner();
    match res {
        Ok(0) | Err(_) => Err(ReadError::Closed),
        Ok(n) => Ok(n),
    }
}

/// [`read_more`], waiting until `deadline`. On timeout the buffer may be lost with the
/// cancelled read, so the connection must be closed.
pub async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> Result<usize, ReadError> {
    match monoio::time::timeout_at(deadline, read_more(stream, buf)).await {
        Err(_) => Err(ReadError::Timeout),
        Ok(r) => r,
    }
}
