//! Socket I/O shared by the HTTP server side and the Redis and ClickHouse clients:
//! reading into a growable buffer, against a deadline or a stop signal.

use std::future::Future;
use std::rc::Rc;

use monoio::buf::{IoBuf, IoBufMut, VecBuf};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;
use monoio::time::Instant;

use crate::server::{IdlePlace, Server};

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

/// Makes room for at least one more read in `buf` ([`grow_for`]).
fn make_room(buf: &mut Vec<u8>) {
    grow_for(buf, 4096);
}

/// Makes room for `more` bytes in `buf`, growing it as reads fill it: doubling up to
/// 1 MiB, then by 1 MiB or a quarter of what it holds, whichever is more (`reserve_exact`:
/// `reserve` would double it whatever it is asked). A buffer so grown holds at most 1 MiB
/// or a quarter more than it received — what the body budget
/// (`server.max_inflight_body_bytes`) counts — and its copies stay linear in its size.
pub fn grow_for(buf: &mut Vec<u8>, more: usize) {
    if buf.capacity() - buf.len() < more {
        let step = buf.capacity().clamp(4096, 1 << 20).max(buf.capacity() / 4);
        buf.reserve_exact(step.max(more));
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
    /// A served connection whose reads may be stopped at the connection cap, and the
    /// tier its reads count in ([`Socket::evictable`]).
    evict: Option<(Rc<Server>, crate::server::Tier)>,
    /// A read was stopped for that.
    evicted: bool,
}

impl Socket {
    /// Wraps an accepted connection.
    pub fn new(stream: TcpStream) -> Socket {
        Socket { stream, canceller: Canceller::new(), evict: None, evicted: false }
    }

    /// Wraps a served connection on a listener with `evict_idle`: while [`Socket::read`]
    /// waits (for a request's body, or while closing), the connection counts in `tier`
    /// among those that may be chosen to close at the connection cap
    /// ([`crate::server::IdleConnections::register`]); the read then fails with
    /// [`ReadError::Stopped`] and [`Socket::evicted`] says so.
    pub fn evictable(stream: TcpStream, server: Rc<Server>, tier: crate::server::Tier) -> Socket {
        Socket { evict: Some((server, tier)), ..Socket::new(stream) }
    }

    /// Whether a read was stopped to make room for a new connection.
    pub fn evicted(&self) -> bool {
        self.evicted
    }

    /// The stream, for writing.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Appends what the socket has (at least one byte) to `buf`, waiting until `deadline`.
    pub async fn read(&mut self, buf: &mut Vec<u8>, deadline: Instant) -> Result<usize, ReadError> {
        match self.evict.clone() {
            Some((server, tier)) => {
                let place = server.idle.register(tier);
                let read = self.read_in_place(buf, deadline, &place).await;
                self.evicted |= read == Err(ReadError::Stopped);
                read
            }
            None => self.read_or_stop(buf, deadline, std::future::pending()).await,
        }
    }

    /// [`Socket::read_or_stop`] until `place`'s connection is chosen to close at the
    /// connection cap ([`ReadError::Stopped`]). One chosen as bytes came in closes all the
    /// same, or a body or head trickled byte by byte would dodge every choice and free no
    /// place.
    pub async fn read_in_place(
        &mut self,
        buf: &mut Vec<u8>,
        deadline: Instant,
        place: &IdlePlace<'_>,
    ) -> Result<usize, ReadError> {
        match self.read_or_stop(buf, deadline, place.evicted()).await {
            Ok(_) if place.is_evicted() => Err(ReadError::Stopped),
            read => read,
        }
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

/// Writes every buffer of `bufs`, in order, in as few `writev` calls as the socket takes,
/// and leaves `bufs` as it was. Written here rather than taken from monoio 0.2: its
/// `write_vectored_all` shortens a partly written buffer without advancing its start
/// (`IoVecMeta::consume`), so after a short `writev` it sends that buffer's first bytes
/// again in place of its last ones — a Redis command whose bulk string then holds the
/// wrong bytes — or panics. A short write (the peer's window full) is finished with
/// `write_all` on the rest of the partly written buffer, then `writev` of the ones after.
pub async fn write_all_vectored(stream: &mut TcpStream, bufs: &mut Vec<Vec<u8>>) -> std::io::Result<()> {
    // The first buffer with bytes still to send; buffers before it are fully written.
    let mut first = 0;
    while first < bufs.len() {
        let mut rest = if first == 0 { std::mem::take(bufs) } else { bufs.split_off(first) };
        let (res, back) = stream.writev(VecBuf::from(rest)).await;
        rest = back.into();
        let written = match res {
            Ok(0) => Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "the peer took no bytes")),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        };
        // Where the write stopped, in `rest`: buffer `k`, `within` bytes into it.
        let (mut k, mut within) = (0, written.as_ref().map_or(0, |n| *n));
        while k < rest.len() && within >= rest[k].len() {
            within -= rest[k].len();
            k += 1;
        }
        bufs.append(&mut rest);
        written?;
        first += k;
        if within > 0 {
            let buf = std::mem::take(&mut bufs[first]);
            let end = buf.len();
            let (res, slice) = stream.write_all(buf.slice(within..end)).await;
            bufs[first] = slice.into_inner();
            res?;
            first += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::{grow_for, make_room, write_all_vectored};

    /// A peer that does not read for a while fills the socket's buffers, so `writev`
    /// returns short, in the middle of a buffer: every byte must still arrive once, in
    /// order (monoio 0.2's `write_vectored_all` sent a buffer's first bytes again).
    #[test]
    fn short_writev_sends_every_byte_once_in_order() {
        let auto = crate::runtime::resolve(croupier_control::config::Driver::Auto).expect("a driver");
        for driver in [crate::runtime::ActiveDriver::Epoll, auto] {
            short_writev_on(driver);
        }
    }

    fn short_writev_on(driver: crate::runtime::ActiveDriver) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Buffers of odd sizes, each byte telling its buffer and position apart.
        let bufs: Vec<Vec<u8>> = (0..12u32)
            .map(|b| (0..(300_001 + b * 7_919)).map(|i| (i.wrapping_mul(31) ^ b.wrapping_mul(131)) as u8).collect())
            .collect();
        let want: Vec<u8> = bufs.concat();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            // Hold off until the writer's first writev has had to stop short.
            std::thread::sleep(std::time::Duration::from_millis(300));
            let mut got = Vec::new();
            let mut chunk = vec![0u8; 4096];
            loop {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
            got
        });
        let sent = bufs.clone();
        let result = crate::runtime::block_on(driver, async move {
            let mut stream = monoio::net::TcpStream::connect(addr).await.expect("connect");
            let mut bufs = bufs;
            let res = write_all_vectored(&mut stream, &mut bufs).await;
            (res.is_ok(), bufs)
        });
        let (ok, back) = result.expect("runtime");
        assert!(ok, "the write failed ({})", driver.name());
        assert_eq!(back, sent, "the buffers are given back as they were");
        let got = reader.join().expect("reader");
        assert_eq!(got.len(), want.len(), "bytes received");
        assert!(got == want, "the bytes arrived changed or out of order ({})", driver.name());
    }

    /// A buffer filled read after read holds at most 1 MiB or a quarter more than it
    /// received: a 9 MiB body is not held in 16 MiB. And its growth copies it a few times
    /// over, not once per MiB.
    #[test]
    fn a_buffer_grows_by_at_most_a_quarter_past_what_it_holds() {
        let mut buf: Vec<u8> = Vec::new();
        let mut copied = 0;
        while buf.len() < 64 << 20 {
            let before = buf.capacity();
            make_room(&mut buf);
            if buf.capacity() != before {
                copied += buf.len();
            }
            let room = buf.capacity() - buf.len();
            assert!(room >= 4096, "room {room}");
            assert!(room <= (1 << 20).max(buf.len() / 4), "room {room} with {} held", buf.len());
            // A read fills the room.
            buf.resize(buf.capacity(), 0);
        }
        assert!(copied < 6 * buf.len(), "{copied} bytes copied to grow to {}", buf.len());
        // A chunked body's data, appended as it comes, grows the same way.
        let mut body: Vec<u8> = Vec::new();
        for _ in 0..9 * 16 {
            grow_for(&mut body, 64 << 10);
            body.extend_from_slice(&[0; 64 << 10]);
        }
        assert!(body.capacity() <= body.len() + body.len() / 4, "{} for {}", body.capacity(), body.len());
    }
}
