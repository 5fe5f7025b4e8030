//! `shoal pause`: the process every pod sandbox runs (Kubernetes' pause container). It holds the
//! pod's namespaces open, reaps orphans when it is the pod's PID 1, and exits on SIGTERM or
//! SIGINT, doing nothing else.

use tokio::signal::unix::{signal, SignalKind};

/// Runs until SIGTERM or SIGINT; returns the exit code.
pub fn run() -> i32 {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return 1;
    };
    runtime.block_on(async {
        let (Ok(mut term), Ok(mut int), Ok(mut child)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::child()),
        ) else {
            return 1;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return 0,
                _ = int.recv() => return 0,
                _ = child.recv() => reap(),
            }
        }
    })
}

/// Collects every exited child, so orphans re-parented to us do not linger as zombies.
fn reap() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            return;
        }
    }
}
