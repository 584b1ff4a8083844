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
//!
//! Budgets, per shard ([`Limits`]): at most `max_connections` connections are open (at
//! the cap the loop accepts no more until one closes; new connections wait in the
//! listen backlog), and at most `max_inflight_body_bytes` of request bodies are being
//! received at once ([`BodyBudget`]).
//!
//! With `evict_idle` (the control port), a connection waiting at the cap does not wait
//! for an idle one to time out: the oldest connection that is between requests is
//! closed to make room, or, none being idle, the oldest that has not sent a whole request
//! yet (none or part of a head, or a body still arriving) or is writing an answer
//! ([`IdleConnections`]): sockets that send part of a request and stop, or never read
//! their answers, cannot keep probes out. A connection whose whole request is in and
//! being handled is never closed for this. One chosen as its request arrives stays to
//! answer it and says so ([`IdleConnections::decline`]): another is chosen at once.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use local_sync::semaphore::Semaphore;

use crate::slots::{OwnedSlot, Slots};
use monoio::net::{TcpListener, TcpStream};
use monoio::time::Instant;

/// How long a keep-alive connection idle during shutdown is kept for a request that its
/// client may already be sending.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(500);
/// Longest wait for a shard's connections to finish at shutdown.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How often the shard looks at the stop flag (set from another thread).
const STOP_POLL: Duration = Duration::from_millis(20);

/// A listener's limits and budgets, per shard (from `[server]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's head and body must be in within this of its first byte (else 408), and
    /// a response written within this (else the connection closes).
    pub read_timeout: Duration,
    /// A connection idle this long between requests is closed.
    pub idle_timeout: Duration,
    /// Largest request body as sent.
    pub max_body_bytes: usize,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most bytes of request bodies being received at once.
    pub max_inflight_body_bytes: usize,
    /// `Retry-After` of a request refused for lack of body budget, seconds.
    pub retry_after_secs: u64,
    /// At the connection cap, close the oldest idle connection (else the oldest that sent
    /// nothing yet or part of a head) for a new one rather than keep the new one waiting.
    pub evict_idle: bool,
    /// With `evict_idle`, connections whose body is still arriving or whose answer is
    /// being written count with incomplete heads (the control port's probes). Without it,
    /// an answer being written is never closed (ingest: an acknowledgement cut would make
    /// its client send again what is stored), and a body arriving is closed only when no
    /// connection is idle or reading a head, oldest first (a slow upload cannot hold a
    /// place against every new client; what is cut was not acknowledged).
    pub evict_busy: bool,
}

/// The connections waiting for their next request, and those waiting for the rest of a
/// request (head or body) or writing an answer, each oldest first (by when their current
/// wait began): at the cap (with [`Limits::evict_idle`]) the oldest idle one is told to
/// close, or, none being idle, the oldest still reading a head (or none yet), then a
/// body. A connection registers while it waits for bytes and leaves when they arrive
/// ([`IdleConnections::wait`], [`IdleConnections::wait_head`]).
pub struct IdleConnections {
    /// By the order they became idle; each one's signal closes it.
    waiting: RefCell<BTreeMap<u64, Rc<Semaphore>>>,
    /// Those with part of a request, or writing an answer, by the order they began waiting.
    heads: RefCell<BTreeMap<u64, Rc<Semaphore>>>,
    /// Those receiving a body, on listeners whose bodies are closed last (`evict_busy` off).
    bodies: RefCell<BTreeMap<u64, Rc<Semaphore>>>,
    next: Cell<u64>,
    /// A count for each connection that was chosen to close as its request came in and
    /// stays to answer it ([`IdleConnections::decline`]): the place waited for will not
    /// come from it, so another is chosen at once. `Slots`, not `local_sync`'s semaphore,
    /// whose waiter dropped just after a permit was handed to it panics (`make_room`
    /// gives up on the wait whenever a place frees first).
    declined: Slots,
}

/// Which of the connections waiting a place belongs to, in the order they are closed at
/// the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Between requests.
    Idle,
    /// Nothing or part of a head (or, with `evict_busy`, a body or an answer).
    Head,
    /// A body arriving (without `evict_busy`).
    Body,
}

/// A connection's place among the idle ones (or those reading a head); it leaves when
/// dropped.
pub struct IdlePlace<'a> {
    idle: &'a IdleConnections,
    key: u64,
    tier: Tier,
    /// Closed when the connection is to close.
    signal: Rc<Semaphore>,
}

impl Default for IdleConnections {
    fn default() -> Self {
        IdleConnections {
            waiting: RefCell::default(),
            heads: RefCell::default(),
            bodies: RefCell::default(),
            next: Cell::new(0),
            declined: Slots::new(0),
        }
    }
}

impl IdleConnections {
    /// Says that a connection chosen to close stays: its request arrived as it was
    /// chosen, and is answered (a request racing with the choice is not dropped).
    pub fn decline(&self) {
        self.declined.give_back();
    }

    /// Completes when a connection chosen to close since [`IdleConnections::forget_declines`]
    /// stays.
    async fn declined(&self) {
        self.declined.take_one().await;
    }

    /// Forgets stays said before: they answered earlier choices.
    fn forget_declines(&self) {
        while self.declined.take() {}
    }

    /// Registers a connection as idle until the place is dropped.
    pub fn wait(&self) -> IdlePlace<'_> {
        self.register(Tier::Idle)
    }

    /// Registers a connection that has part of a request (head or body), or is writing an
    /// answer, until the place is dropped: closed for a new one only when no connection
    /// is idle.
    pub fn wait_head(&self) -> IdlePlace<'_> {
        self.register(Tier::Head)
    }

    /// Registers a connection in `tier` until the place is dropped.
    pub fn register(&self, tier: Tier) -> IdlePlace<'_> {
        let key = self.next.get();
        self.next.set(key.wrapping_add(1));
        let signal = Rc::new(Semaphore::new(0));
        self.map(tier).borrow_mut().insert(key, signal.clone());
        IdlePlace { idle: self, key, tier, signal }
    }

    fn map(&self, tier: Tier) -> &RefCell<BTreeMap<u64, Rc<Semaphore>>> {
        match tier {
            Tier::Idle => &self.waiting,
            Tier::Head => &self.heads,
            Tier::Body => &self.bodies,
        }
    }

    /// Tells the oldest idle connection to close, or, none being idle, the oldest reading
    /// a head; false when there is neither.
    fn evict_oldest(&self) -> bool {
        let oldest = self
            .waiting
            .borrow_mut()
            .pop_first()
            .or_else(|| self.heads.borrow_mut().pop_first())
            .or_else(|| self.bodies.borrow_mut().pop_first());
        match oldest {
            Some((_, signal)) => {
                signal.close();
                true
            }
            None => false,
        }
    }
}

impl IdlePlace<'_> {
    /// Whether the connection has been chosen to close.
    pub fn is_evicted(&self) -> bool {
        self.signal.is_closed()
    }

    /// Completes once the connection has been chosen to close.
    pub async fn evicted(&self) {
        // A closed semaphore answers every waiter with an error: that is the signal.
        let _ = self.signal.acquire().await;
    }
}

/// Completes once `place`'s connection has been chosen to close; never without a place
/// (a listener that does not close connections at the cap).
pub async fn evicted(place: &Option<IdlePlace<'_>>) {
    match place {
        Some(p) => p.evicted().await,
        None => std::future::pending().await,
    }
}

impl Drop for IdlePlace<'_> {
    fn drop(&mut self) {
        self.idle.map(self.tier).borrow_mut().remove(&self.key);
    }
}

/// Bytes of request bodies a shard is receiving, against its cap. A request counts its
/// body ([`BodyBytes`]) from before it is read until it has been handled.
pub struct BodyBudget {
    cap: usize,
    used: Cell<usize>,
    /// `Retry-After` of a refusal for lack of budget, seconds.
    pub retry_after_secs: u64,
}

impl BodyBudget {
    /// An empty claim on the budget, grown with [`BodyBytes::grow_to`].
    pub fn hold(&self) -> BodyBytes<'_> {
        BodyBytes { budget: self, held: 0 }
    }
}

/// One request's body bytes counted against the [`BodyBudget`]; given back when dropped.
pub struct BodyBytes<'a> {
    budget: &'a BodyBudget,
    held: usize,
}

impl BodyBytes<'_> {
    /// Counts the body as `bytes` long; false (and nothing counted) if the budget has
    /// no room for the difference.
    pub fn grow_to(&mut self, bytes: usize) -> bool {
        let Some(more) = bytes.checked_sub(self.held) else { return true };
        let used = self.budget.used.get();
        if more > self.budget.cap - used {
            return false;
        }
        self.budget.used.set(used + more);
        self.held = bytes;
        true
    }

    /// The `Retry-After` of a refusal for lack of budget, seconds.
    pub fn retry_after_secs(&self) -> u64 {
        self.budget.retry_after_secs
    }
}

impl Drop for BodyBytes<'_> {
    fn drop(&mut self) {
        self.budget.used.set(self.budget.used.get() - self.held);
    }
}

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
    /// The listener's limits.
    pub limits: Limits,
    /// Shutdown has begun.
    pub drain: Drain,
    /// Request bodies being received.
    pub bodies: BodyBudget,
    /// Connections between requests.
    pub idle: IdleConnections,
    /// Places for connections: one permit per open connection.
    slots: Rc<Slots>,
    /// Connections open.
    open: Cell<usize>,
}

/// Counts a connection as open, and holds its place, until dropped.
struct Open {
    server: Rc<Server>,
    _slot: OwnedSlot,
}

impl Open {
    fn new(server: &Rc<Server>, slot: OwnedSlot) -> Open {
        server.open.set(server.open.get() + 1);
        Open { server: server.clone(), _slot: slot }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.server.open.set(self.server.open.get() - 1);
    }
}

/// Serves `listener` on the current thread's runtime: each connection is handed to
/// `serve` in a task of its own. Returns once `stop` is set and the connections have
/// drained (or [`DRAIN_DEADLINE`] passed).
pub async fn run<F, Fut>(
    listener: std::net::TcpListener,
    stop: Arc<AtomicBool>,
    limits: Limits,
    serve: F,
) -> std::io::Result<()>
where
    F: Fn(TcpStream, Rc<Server>) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    // A second handle on the socket takes what the kernel queued for it before it closes.
    let queued = listener.try_clone()?;
    let listener = TcpListener::from_std(listener)?;
    let server = Rc::new(Server {
        limits,
        drain: Drain::new(),
        bodies: BodyBudget {
            cap: limits.max_inflight_body_bytes,
            used: Cell::new(0),
            retry_after_secs: limits.retry_after_secs,
        },
        idle: IdleConnections::default(),
        slots: Rc::new(Slots::new(limits.max_connections)),
        open: Cell::new(0),
    });
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
/// the listener. Connections are taken with `accept4` on the socket (close-on-exec, as
/// io_uring's accept would not set it), `listener` only says when one is queued.
async fn accept_loop<F, Fut>(listener: TcpListener, queued: std::net::TcpListener, server: Rc<Server>, serve: F)
where
    F: Fn(TcpStream, Rc<Server>) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let start = |stream: std::net::TcpStream, slot: OwnedSlot| {
        let Some(stream) = adopt(stream) else { return };
        let open = Open::new(&server, slot);
        let conn = serve(stream, server.clone());
        monoio::spawn(async move {
            conn.await;
            drop(open);
        });
    };
    'accepting: loop {
        // A place for the next connection first: at the cap, the kernel holds new ones
        // (or, with `evict_idle`, the oldest idle connection makes room for them).
        let slot = match server.slots.try_acquire_owned() {
            Some(slot) => Some(slot),
            None if server.limits.evict_idle => make_room(&listener, &server).await,
            None => monoio::select! {
                biased;
                _ = server.drain.started() => None,
                slot = server.slots.clone().acquire_owned() => Some(slot),
            },
        };
        let Some(slot) = slot else { break };
        loop {
            match queued.accept() {
                Ok((stream, _)) => {
                    start(stream, slot);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Waiting for readiness holds nothing: stopping it loses no connection.
                    let ready = monoio::select! {
                        biased;
                        _ = server.drain.started() => None,
                        r = listener.readable(false) => Some(r),
                    };
                    match ready {
                        None => break 'accepting,
                        Some(Ok(())) => {}
                        Some(Err(_)) => monoio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                // Out of file descriptors or the like: try again shortly.
                Err(_) => monoio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
    // Take what is queued (while there are places), then stop listening at once, whatever
    // else still holds the socket (an io_uring close is asynchronous): a shut-down
    // listening socket leaves the SO_REUSEPORT group.
    while let Some(slot) = server.slots.try_acquire_owned() {
        let Ok((stream, _)) = queued.accept() else { break };
        start(stream, slot);
    }
    let _ = socket2::SockRef::from(&queued).shutdown(std::net::Shutdown::Both);
    drop(queued);
    drop(listener);
}

/// At the cap: waits for a place, and while a connection is queued for one, closes the
/// oldest idle connection to free it. `None` once the drain has begun.
async fn make_room(listener: &TcpListener, server: &Server) -> Option<OwnedSlot> {
    loop {
        let queued = monoio::select! {
            biased;
            _ = server.drain.started() => return None,
            slot = server.slots.clone().acquire_owned() => return Some(slot),
            r = listener.readable(false) => r.is_ok(),
        };
        // Someone is waiting: make room (the evicted connection gives its place back as
        // it closes; one whose request came in as it was chosen stays to answer it, and
        // another is chosen at once), or, every connection being busy with a request,
        // look again shortly (readiness stays set while the connection is queued).
        server.idle.forget_declines();
        let evicted = queued && server.idle.evict_oldest();
        let wait = if evicted { 100 } else { 20 };
        let declined = async {
            if evicted {
                server.idle.declined().await
            } else {
                std::future::pending().await
            }
        };
        monoio::select! {
            biased;
            _ = server.drain.started() => return None,
            slot = server.slots.clone().acquire_owned() => return Some(slot),
            _ = declined => {}
            _ = monoio::time::sleep(Duration::from_millis(wait)) => {}
        }
    }
}

/// An accepted connection, on the runtime: non-blocking, without Nagle's delay.
fn adopt(stream: std::net::TcpStream) -> Option<TcpStream> {
    stream.set_nonblocking(true).ok()?;
    let _ = stream.set_nodelay(true);
    TcpStream::from_std(stream).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> std::task::Poll<F::Output> {
        f.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    }

    /// Black-box finding: at the connection cap the process aborted ("already borrowed"
    /// in `local_sync`'s semaphore) when a connection declined its eviction while
    /// `make_room`'s wait for the decline was given up for a place freed at the same time.
    #[test]
    fn attack_a_decline_handed_to_a_wait_given_up_is_kept_not_a_panic() {
        let idle = IdleConnections::default();
        let mut waiting = Box::pin(idle.declined());
        assert!(poll_once(waiting.as_mut()).is_pending());
        idle.decline();
        // A place freed first: the wait is dropped before it runs.
        drop(waiting);
        let mut again = Box::pin(idle.declined());
        assert!(poll_once(again.as_mut()).is_ready(), "the decline is still there");
        idle.decline();
        idle.decline();
        idle.forget_declines();
        let mut none = Box::pin(idle.declined());
        assert!(poll_once(none.as_mut()).is_pending(), "forgotten");
    }

    #[test]
    fn body_bytes_are_counted_until_dropped() {
        let budget = BodyBudget { cap: 100, used: Cell::new(0), retry_after_secs: 1 };
        let mut a = budget.hold();
        assert!(a.grow_to(60));
        assert!(a.grow_to(40), "shrinking is a no-op");
        let mut b = budget.hold();
        assert!(!b.grow_to(41), "past the cap");
        assert!(b.grow_to(40));
        assert_eq!(budget.used.get(), 100);
        drop(a);
        assert_eq!(budget.used.get(), 40);
        assert!(b.grow_to(100));
        drop(b);
        assert_eq!(budget.used.get(), 0);
    }
}
