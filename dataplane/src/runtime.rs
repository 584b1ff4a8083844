//! Shard threads: one monoio runtime per shard on the configured io driver, pinned to
//! its core.

use std::future::Future;

use croupier_control::config::Driver;

/// The io driver a shard actually runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveDriver {
    /// io_uring.
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

impl ActiveDriver {
    /// Name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ActiveDriver::IoUring => "io_uring",
            ActiveDriver::Epoll => "epoll",
        }
    }
}

/// Resolves the configured driver: `auto` takes io_uring when the kernel allows it.
pub fn resolve(driver: Driver) -> Result<ActiveDriver, String> {
    let uring = monoio::utils::detect_uring();
    match driver {
        Driver::Auto if uring => Ok(ActiveDriver::IoUring),
        Driver::Auto | Driver::Epoll => Ok(ActiveDriver::Epoll),
        Driver::IoUring if uring => Ok(ActiveDriver::IoUring),
        Driver::IoUring => {
            Err("io_uring is not available here (kernel or seccomp); use driver = \"epoll\" or \"auto\"".into())
        }
    }
}

/// Runs `fut` to completion on a new runtime of the given driver (with timers).
///
/// The io_uring ring is made with `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN`
/// where the kernel has them (6.1+): the ring is made and used by this thread only, and a
/// completion (a socket became readable because the peer on another core sent) is
/// posted only when the thread asks for completions, which the runtime does when it runs
/// out of tasks and waits — once per round for everything that completed in it, instead
/// of at every kernel entry, or with an inter-processor interrupt. A kernel without them
/// (`EINVAL`) gets `IORING_SETUP_COOP_TASKRUN` (5.19+: no interrupt, the work run at the
/// next entry), else a plain ring; which ring the process runs is logged once. Each step
/// cost or saved an ingest shard a few percent of its CPU (perf/CHANGES.md). On the
/// deferred ring, the runtime's submit between two rounds of tasks (when tasks stay
/// runnable) no longer collects completions: a task that kept itself runnable without
/// awaiting I/O would hold every socket of its shard back. No task of croupier's does
/// (none yields in a loop); each awaits I/O, a timer or a message.
pub fn block_on<F: Future>(driver: ActiveDriver, fut: F) -> std::io::Result<F::Output> {
    // Marked inside the runtime's run only: the tasks it drops as it ends are not.
    let fut = async {
        let _running = Running::enter();
        fut.await
    };
    Ok(match driver {
        ActiveDriver::IoUring => {
            // The rings to try, best first; a kernel that refuses one (`EINVAL`) gets the next.
            let mut deferred = io_uring::IoUring::builder();
            deferred.setup_single_issuer().setup_defer_taskrun();
            let mut cooperative = io_uring::IoUring::builder();
            cooperative.setup_coop_taskrun();
            let rings = [
                (Some(deferred), "io_uring rings with deferred task running"),
                (Some(cooperative), "io_uring rings with cooperative task running"),
                (None, "io_uring rings without cooperative task running"),
            ];
            let mut built = Err(std::io::Error::from_raw_os_error(libc::EINVAL));
            for (ring, what) in rings {
                let builder = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new();
                built = match ring {
                    Some(ring) => builder.uring_builder(ring).enable_timer().build(),
                    None => builder.enable_timer().build(),
                };
                match &built {
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue,
                    Ok(_) => RING_LOGGED.call_once(|| tracing::info!("{what}")),
                    Err(_) => {}
                }
                break;
            }
            let mut runtime = built?;
            runtime.block_on(fut)
        }
        ActiveDriver::Epoll => {
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build()?.block_on(fut)
        }
    })
}

thread_local! {
    /// This thread is in [`block_on`].
    static RUNNING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the thread as in [`block_on`] while it lives.
struct Running;

impl Running {
    fn enter() -> Running {
        RUNNING.with(|r| r.set(true));
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.with(|r| r.set(false));
    }
}

/// Whether this thread runs a runtime ([`block_on`]): a value dropped outside one (a task
/// the runtime drops as it ends) cannot spawn work to finish after it.
pub fn running() -> bool {
    RUNNING.with(|r| r.get())
}

/// Which io_uring ring the process runs is logged by the first thread that makes one.
static RING_LOGGED: std::sync::Once = std::sync::Once::new();

/// The `index`-th CPU (by number) the process may run on: its affinity mask, which in a
/// container is the cpuset it was given (the static CPU manager's exclusive CPUs in a
/// Guaranteed pod, `docker run --cpuset-cpus`). On a whole machine it is CPU `index`.
pub fn allowed_core(index: usize) -> Option<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()?.into_iter().map(|c| c.id).collect();
    ids.sort_unstable();
    ids.get(index).copied()
}

/// Pins the current thread to `core`, if that core exists.
pub fn pin(core: usize) -> bool {
    core_affinity::get_core_ids()
        .and_then(|ids| ids.into_iter().find(|c| c.id == core))
        .is_some_and(core_affinity::set_for_current)
}
