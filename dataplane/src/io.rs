//! Socket I/O shared by the HTTP server side and the Redis and ClickHouse clients:
//! reading into a growable buffer, against a deadline or a stop signal.

use std::future::Future;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;
use monoio::time::Instant;

/// Why no bytes were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// The deadline passed.
    Timeout,
    /// The peer closed the connection, or it failed.
    Closed,
    /// The caller's stop signal came first.
    Stopped,
}

/// The errno of a cancelled operation (ECANCELED).
const CANCELED: i32 = 125;

/// Makes room for at least one more read in `buf`.
fn make_room(buf: &mut Vec<u8>) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(buf.capacity().clamp(4096, 1 << 20));
    }
}

/// Appends what the socket has (at least one byte) to `buf`; growing it as needed.
pub async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, ReadError> {
    make_room(buf);
    let len = buf.len();
    let cap = buf.capacity();
    let (res, slice) = stream.read(std::mem::take(buf).slice_mut(len..cap)).await;
    *buf = slice.into_inner();
    match res {
        Ok(0) | Err(_) => Err(ReadError::Closed),
        Ok(n) => Ok(n),
    }
}

/// A client connection whose reads end at a deadline or a stop signal by being
/// cancelled, not dropped: the buffer comes back, and bytes that arrived while the read
/// was being cancelled are kept. So a connection can stop waiting and still answer a
/// request that raced with the stop.
pub struct Socket {
    stream: TcpStream,
    /// Reused by every read (it allocates only when it is used to cancel).
    canceller: Canceller,
}

impl Socket {
    /// Wraps an accepted connection.
    pub fn new(stream: TcpStream) -> Socket {
        Socket { stream, canceller: Canceller::new() }
    }

    /// The stream, for writing.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Appends what the socket has (at least one byte) to `buf`, waiting until `deadline`.
    pub async fn read(&mut self, buf: &mut Vec<u8>, deadline: Instant) -> Result<usize, ReadError> {
        self.read_or_stop(buf, deadline, std::future::pending()).await
    }

    /// [`Socket::read`], giving up when `stop` completes first ([`ReadError::Stopped`]).
    pub async fn read_or_stop(
        &mut self,
        buf: &mut Vec<u8>,
        deadline: Instant,
        stop: impl Future<Output = ()>,
    ) -> Result<usize, ReadError> {
        make_room(buf);
        let len = buf.len();
        let cap = buf.capacity();
        let handle = self.canceller.handle();
        let read = self.stream.cancelable_read(std::mem::take(buf).slice_mut(len..cap), handle);
        let mut read = std::pin::pin!(read);
        let mut why = ReadError::Closed;
        let (res, slice) = monoio::select! {
            biased;
            r = &mut read => r,
            _ = monoio::time::sleep_until(deadline) => {
                why = ReadError::Timeout;
                self.canceller = std::mem::take(&mut self.canceller).cancel();
                read.await
            }
            _ = stop => {
                why = ReadError::Stopped;
                self.canceller = std::mem::take(&mut self.canceller).cancel();
                read.await
            }
        };
        *buf = slice.into_inner();
        match res {
            // Bytes that arrived before the cancellation took effect are the caller's.
            Ok(n) if n > 0 => Ok(n),
            Err(e) if e.raw_os_error() == Some(CANCELED) => Err(why),
            Ok(_) | Err(_) => Err(ReadError::Closed),
        }
    }
}
