//! A shard's listener: the accept loop, the open connections, and draining them at
//! shutdown.
//!
//! Shutdown, once the stop flag is seen: the listener takes the connections the kernel
//! already queued for it, then stops listening and closes, which takes it out of the
//! SO_REUSEPORT group so the kernel routes new connections to another process sharing the
//! port, or refuses them. Each
//! connection answers its next response with `Connection: close` and closes; a
//! connection waiting for its next request is closed once it has been idle for
//! [`DRAIN_IDLE_GRACE`] (a client sending back to back still gets its next request
//! answered); a request in progress is finished. The shard waits for its connections
//! for at most [`DRAIN_DEADLINE`].

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use local_sync::semaphore::Semaphore;
use monoio::io::Canceller;
use monoio::net::{TcpListener, TcpStream};
use monoio::time::Instant;

/// How long a keep-alive connection idle during shutdown is kept for a request that its
/// client may already be sending.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(500);
/// Longest wait for a shard's connections to finish at shutdown.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How often the shard looks at the stop flag (set from another thread).
const STOP_POLL: Duration = Duration::from_millis(20);

/// The shard-wide signal that shutdown has begun.
pub struct Drain {
    /// Never has permits: waiters wake when it is closed.
    signal: Semaphore,
}

impl Drain {
    fn new() -> Drain {
        Drain { signal: Semaphore::new(0) }
    }

    /// Begins the drain and wakes everything waiting for it.
    fn start(&self) {
        self.signal.close();
    }

    /// Whether the drain has begun.
    pub fn is_started(&self) -> bool {
        self.signal.is_closed()
    }

    /// Completes once the drain has begun.
    pub async fn started(&self) {
        // A closed semaphore answers every waiter with an error: that is the signal.
        let _ = self.signal.acquire().await;
    }

    /// Completes once the drain has begun and a connection last active at `last` has
    /// been idle for [`DRAIN_IDLE_GRACE`].
    pub async fn idle_past_grace(&self, last: Instant) {
        self.started().await;
        monoio::time::sleep_until(last + DRAIN_IDLE_GRACE).await;
    }
}

/// What a shard's connections share with its accept loop.
pub struct Server {
    /// Shutdown has begun.
    pub drain: Drain,
    /// Connections open.
    open: Cell<usize>,
}

/// Counts a connection as open until dropped.
struct Open(Rc<Server>);

impl Open {
    fn new(server: &Rc<Server>) -> Open {
        server.open.set(server.open.get() + 1);
        Open(server.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.set(self.0.open.get() - 1);
    }
}

/// Serves `listener` on the current thread's runtime: each connection is handed to
/// `serve` in a task of its own. Returns once `stop` is set and the connections have
/// drained (or [`DRAIN_DEADLINE`] passed).
pub async fn run<F, Fut>(listener: std::net::TcpListener, stop: Arc<AtomicBool>, serve: F) -> std::io::Result<()>
where
    F: Fn(TcpStream, Rc<Server>) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    // A second handle on the socket takes what the kernel queued for it before it closes.
    let queued = listener.try_clone()?;
    let listener = TcpListener::from_std(listener)?;
    let server = Rc::new(Server { drain: Drain::new(), open: Cell::new(0) });
    let accept = monoio::spawn(accept_loop(listener, queued, server.clone(), serve));
    while !stop.load(Ordering::Relaxed) {
        monoio::time::sleep(STOP_POLL).await;
    }
    server.drain.start();
    accept.await;
    let deadline = Instant::now() + DRAIN_DEADLINE;
    while server.open.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Accepts until the drain begins, then takes the connections already queued and closes
/// the listener.
async fn accept_loop<F, Fut>(listener: TcpListener, queued: std::net::TcpListener, server: Rc<Server>, serve: F)
where
    F: Fn(TcpStream, Rc<Server>) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let start = |stream: TcpStream| {
        let _ = stream.set_nodelay(true);
        let open = Open::new(&server);
        let conn = serve(stream, server.clone());
        monoio::spawn(async move {
            conn.await;
            drop(open);
        });
    };
    let mut canceller = Canceller::new();
    loop {
        let accept = listener.cancelable_accept(canceller.handle());
        let mut accept = std::pin::pin!(accept);
        let (accepted, draining) = monoio::select! {
            biased;
            r = &mut accept => (r, false),
            _ = server.drain.started() => {
                canceller = std::mem::take(&mut canceller).cancel();
                (accept.await, true)
            }
        };
        match accepted {
            Ok((stream, _)) => start(stream),
            Err(_) if draining => {}
            // Out of file descriptors or the like: try again shortly.
            Err(_) => monoio::time::sleep(Duration::from_millis(10)).await,
        }
        if draining {
            break;
        }
    }
    // The socket is non-blocking: take connections until none is queued.
    while let Ok((stream, _)) = queued.accept() {
        if stream.set_nonblocking(true).is_ok() {
            if let Ok(stream) = TcpStream::from_std(stream) {
                start(stream);
            }
        }
    }
    // Stop listening now, whatever else still holds the socket (an io_uring close is
    // asynchronous): a shut-down listening socket leaves the SO_REUSEPORT group at once.
    let _ = socket2::SockRef::from(&queued).shutdown(std::net::Shutdown::Both);
    drop(queued);
    drop(listener);
}
