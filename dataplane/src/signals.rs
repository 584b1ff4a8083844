//! What the process was started with for its signals.

/// Whether `sig` was ignored when the process started (`nohup` ignores SIGHUP): a
/// process that was asked to outlive its terminal keeps ignoring it.
pub fn ignored(sig: libc::c_int) -> bool {
    // SAFETY: sigaction with a null new action only reads the current one into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_set_to_ignore_reads_ignored() {
        assert!(!ignored(libc::SIGUSR2));
        // SAFETY: sets SIGUSR2's action to ignore (the test binary handles none).
        unsafe { libc::signal(libc::SIGUSR2, libc::SIG_IGN) };
        assert!(ignored(libc::SIGUSR2));
        // SAFETY: back to the default action.
        unsafe { libc::signal(libc::SIGUSR2, libc::SIG_DFL) };
    }
}
