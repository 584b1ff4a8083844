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
/// The io_uring ring is made with `IORING_SETUP_COOP_TASKRUN` where the kernel has it
/// (5.19+): a completion (a socket became readable because the peer on another core sent)
/// then waits for the thread's next `io_uring_enter` instead of interrupting it with an
/// inter-processor interrupt to post it. The runtime enters the kernel whenever it runs
/// out of tasks, which is when it reads completions anyway, so nothing is seen later; the
/// interrupts had cost an ingest shard several percent of its CPU (perf/CHANGES.md). An
/// older kernel refuses the flag (`EINVAL`), and the ring is made without it; which ring
/// the process runs is logged once.
pub fn block_on<F: Future>(driver: ActiveDriver, fut: F) -> std::io::Result<F::Output> {
    Ok(match driver {
        ActiveDriver::IoUring => {
            let mut cooperative = io_uring::IoUring::builder();
            cooperative.setup_coop_taskrun();
            let built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .uring_builder(cooperative)
                .enable_timer()
                .build();
            let mut runtime = match built {
                Ok(runtime) => {
                    RING_LOGGED.call_once(|| tracing::info!("io_uring rings with cooperative task running"));
                    runtime
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    RING_LOGGED.call_once(|| {
                        tracing::info!("io_uring rings without cooperative task running (a kernel before 5.19)")
                    });
                    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().enable_timer().build()?
                }
                Err(e) => return Err(e),
            };
            runtime.block_on(fut)
        }
        ActiveDriver::Epoll => {
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build()?.block_on(fut)
        }
    })
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
