//! The thread a member's Raft runs on: one OS thread with a single-threaded tokio runtime of
//! its own, hosting openraft's tasks (core, replication, state machine, timer), the peer
//! connections (both sides), the write batcher and the time-based compactor.
//!
//! Why: one write crosses many tasks — openraft's core, a replication task, the core again,
//! the state machine task, a connection's reader — and on a multi-threaded runtime each
//! hand-off may wake another worker thread, which on a busy machine costs 50–180 µs of waiting
//! for a core. On one thread a hand-off is a queue push and the next poll. What blocks stays
//! off it: the log's `fdatasync` has its flusher thread (`log.rs`), the state machine's sled
//! sync and snapshot files go to the runtime's blocking pool.
//!
//! Callers on other runtimes (the API server's) talk to it through the channels Raft's
//! handles and the write batcher already are, so a write crosses threads twice: in, and back
//! when it is applied.
//!
//! The thread stops when [`RaftThread::stop`] is called (after a clean shutdown) or when the
//! runtime that opened the store goes away — what a crash of the process is to the store: a
//! task left on that runtime ([`RaftThread::lifeline`]) ends with it. Stopping drops every
//! task at once, as a crash would; what must be durable is made so before (`shutdown`).

use std::sync::Mutex;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};

/// How long [`RaftThread::stop_and_wait`] waits for the thread to end.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A running Raft thread.
#[derive(Debug)]
pub(crate) struct RaftThread {
    handle: Handle,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    lifeline: Mutex<Option<oneshot::Sender<()>>>,
    exited: watch::Receiver<bool>,
}

impl RaftThread {
    /// Starts the thread and its runtime.
    pub fn start() -> std::io::Result<RaftThread> {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (lifeline_tx, lifeline_rx) = oneshot::channel::<()>();
        let (exited_tx, exited) = watch::channel(false);
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("store-raft".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name("store-raft-blocking")
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = handle_tx.send(Err(err));
                        return;
                    }
                };
                if handle_tx.send(Ok(runtime.handle().clone())).is_err() {
                    return;
                }
                runtime.block_on(async {
                    // Either one sent, or its sender dropped.
                    tokio::select! {
                        _ = stop_rx => {}
                        _ = lifeline_rx => {}
                    }
                });
                // Drops every task now, and does not wait for blocking ones (a log or sled
                // sync under way finishes on its own thread).
                runtime.shutdown_background();
                exited_tx.send_replace(true);
            })?;
        let handle = handle_rx
            .recv()
            .map_err(|_| std::io::Error::other("the store's Raft thread ended at once"))??;
        Ok(RaftThread {
            handle,
            stop: Mutex::new(Some(stop_tx)),
            lifeline: Mutex::new(Some(lifeline_tx)),
            exited,
        })
    }

    /// The runtime's handle, for spawning onto the thread.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// A future to leave running on the opener's runtime: the thread stops when it is dropped
    /// (that runtime shut down). Given out once; later calls return a future that does nothing.
    pub fn lifeline(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let sender = self
            .lifeline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        async move {
            if sender.is_some() {
                std::future::pending::<()>().await;
            }
            drop(sender);
        }
    }

    /// Stops the thread: every task on it is dropped. Idempotent.
    pub fn stop(&self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = stop.send(());
        }
    }

    /// [`RaftThread::stop`], then waits (a while at most) until the thread has ended, so that
    /// whatever its tasks held (the database's lock among them) is released.
    pub async fn stop_and_wait(&self) {
        self.stop();
        let mut exited = self.exited.clone();
        let ended = exited.wait_for(|exited| *exited);
        if tokio::time::timeout(EXIT_TIMEOUT, ended).await.is_err() {
            tracing::warn!("the store's Raft thread did not end within {EXIT_TIMEOUT:?}");
        }
    }

    /// Whether the thread has ended.
    #[cfg(test)]
    pub fn exited(&self) -> bool {
        *self.exited.borrow()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A task on the thread that reports when it is dropped.
    fn watched_task(thread: &RaftThread) -> oneshot::Receiver<()> {
        let (dropped_tx, dropped) = oneshot::channel::<()>();
        thread.handle().spawn(async move {
            let _tell_when_dropped = dropped_tx;
            std::future::pending::<()>().await;
        });
        dropped
    }

    #[tokio::test]
    async fn tasks_run_on_one_thread_of_their_own() {
        let thread = RaftThread::start().unwrap();
        let caller = std::thread::current().id();
        let ids = thread
            .handle()
            .spawn(async {
                let here = std::thread::current().id();
                let inner = tokio::spawn(async { std::thread::current().id() })
                    .await
                    .unwrap();
                (here, inner, std::thread::current().name().map(String::from))
            })
            .await
            .unwrap();
        assert_ne!(ids.0, caller);
        assert_eq!(ids.0, ids.1, "a task spawned there runs on the same thread");
        assert_eq!(ids.2.as_deref(), Some("store-raft"));
        thread.stop_and_wait().await;
    }

    #[tokio::test]
    async fn stopping_drops_every_task_and_ends_the_thread() {
        let thread = RaftThread::start().unwrap();
        let dropped = watched_task(&thread);
        thread.stop_and_wait().await;
        assert!(thread.exited());
        assert!(dropped.await.is_err(), "the task was dropped");
        // Again: nothing happens.
        thread.stop_and_wait().await;
    }

    #[test]
    fn the_thread_ends_with_the_runtime_that_holds_its_lifeline() {
        let thread = Arc::new(RaftThread::start().unwrap());
        let opener = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        opener.spawn(thread.lifeline());
        let dropped = watched_task(&thread);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!thread.exited());
        opener.shutdown_background();
        let checker = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        checker.block_on(async {
            let mut exited = thread.exited.clone();
            tokio::time::timeout(Duration::from_secs(5), exited.wait_for(|e| *e))
                .await
                .expect("the thread did not end")
                .ok();
            assert!(dropped.await.is_err());
        });
    }
}
