//! The sending half of a peer connection, shared by every task that sends on it (requests on
//! the calling side, answers on the answering side). A sender that finds nobody writing writes
//! its frame itself, from its own task, with whatever others queued meanwhile, and flushes
//! once; one that finds a write under way leaves its frame queued for that writer, which looks
//! at the queue again after letting go. So a lone request or answer reaches the socket without
//! waking another task — one hand-off less each way on every write's path — and under load
//! frames still share TLS records and flushes, as they did behind a writer task.
//!
//! A sender's future may be dropped halfway through a write (a caller's deadline): the rest of
//! what it took on is then finished by a task spawned for it, since a frame cut short would
//! leave the stream unreadable. A write that fails closes the outbox: later sends fail at once
//! and [`Outbox::closed`] resolves, for the connection's owner to tear it down.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, OwnedMutexGuard};

/// See the module docs. Cheap to share behind an `Arc`.
pub(crate) struct Outbox<W> {
    queue: Mutex<Vec<Vec<u8>>>,
    writer: Arc<tokio::sync::Mutex<W>>,
    closed: AtomicBool,
    notify: Notify,
}

impl<W> std::fmt::Debug for Outbox<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> Outbox<W> {
    pub fn new(writer: W) -> Arc<Outbox<W>> {
        Arc::new(Outbox {
            queue: Mutex::new(Vec::new()),
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            closed: AtomicBool::new(false),
            notify: Notify::new(),
        })
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Resolves once a write failed (or [`Outbox::close`] was called).
    pub async fn closed(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn take_queued(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Sends `frame` (whole: its length prefix included): written and flushed when this
    /// returns, unless another sender was writing, which then writes it.
    pub async fn send(self: &Arc<Self>, frame: Vec<u8>) -> Result<(), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(frame);
        loop {
            // Whoever holds the writer takes the queue again after letting go, so a frame
            // queued while it wrote is not stranded.
            let Ok(writer) = Arc::clone(&self.writer).try_lock_owned() else {
                return Ok(());
            };
            let frames = self.take_queued();
            if frames.is_empty() {
                return Ok(());
            }
            let mut batch = Batch {
                outbox: Arc::clone(self),
                writer: Some(writer),
                frames,
                frame: 0,
                offset: 0,
                respawned: false,
            };
            if let Err(err) = batch.write().await {
                self.close();
                return Err(SendError::Failed(err));
            }
            drop(batch);
            if self
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            {
                return Ok(());
            }
        }
    }
}

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The outbox was closed already: the frame was not sent.
    #[error("the peer connection closed")]
    Closed,
    /// Writing failed: the frame may have reached the peer, or part of it.
    #[error("writing to the peer connection: {0}")]
    Failed(io::Error),
}

/// Frames one sender took on, and how far they are written.
struct Batch<W: AsyncWrite + Unpin + Send + 'static> {
    outbox: Arc<Outbox<W>>,
    /// `None` once everything is written and flushed.
    writer: Option<OwnedMutexGuard<W>>,
    frames: Vec<Vec<u8>>,
    frame: usize,
    offset: usize,
    /// Whether this is the rest of an abandoned batch, in a task of its own: dropped unfinished
    /// again (the runtime shutting down), it closes the outbox rather than spawn once more.
    respawned: bool,
}

impl<W: AsyncWrite + Unpin + Send + 'static> Batch<W> {
    /// Writes the rest and flushes. Progress is kept in `self` after every partial write (an
    /// `AsyncWrite` that returns `Pending` took none of the bytes), so a batch dropped midway
    /// knows exactly what is left.
    async fn write(&mut self) -> io::Result<()> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        while let Some(frame) = self.frames.get(self.frame) {
            let n = writer.write(&frame[self.offset..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.offset += n;
            if self.offset == frame.len() {
                self.frame += 1;
                self.offset = 0;
            }
        }
        writer.flush().await?;
        self.writer = None;
        Ok(())
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> Drop for Batch<W> {
    fn drop(&mut self) {
        if self.writer.is_none() || self.outbox.is_closed() {
            return;
        }
        if self.respawned {
            self.outbox.close();
            return;
        }
        let rest = Batch {
            outbox: Arc::clone(&self.outbox),
            writer: self.writer.take(),
            frames: std::mem::take(&mut self.frames),
            frame: self.frame,
            offset: self.offset,
            respawned: true,
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.outbox.close();
            return;
        };
        runtime.spawn(async move {
            let mut rest = rest;
            if let Err(err) = rest.write().await {
                tracing::debug!(%err, "peer connection write failed");
                rest.outbox.close();
            }
            // Frames queued while this finished are sent by the next sender; a lone one
            // would wait for it, so pass them on now.
            let outbox = Arc::clone(&rest.outbox);
            drop(rest);
            let queued = outbox.take_queued();
            for frame in queued {
                if outbox.send(frame).await.is_err() {
                    break;
                }
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn frames_from_many_senders_arrive_whole_and_in_send_order_per_sender() {
        let (a, mut b) = tokio::io::duplex(64);
        let outbox = Outbox::new(a);
        let mut tasks = Vec::new();
        for sender in 0u8..8 {
            let outbox = Arc::clone(&outbox);
            tasks.push(tokio::spawn(async move {
                for i in 0u8..50 {
                    outbox.send(vec![sender, i, 0xAA, 0xBB]).await.unwrap();
                }
            }));
        }
        let mut got = vec![0u8; 8 * 50 * 4];
        b.read_exact(&mut got).await.unwrap();
        for task in tasks {
            task.await.unwrap();
        }
        let mut next = [0u8; 8];
        for frame in got.chunks(4) {
            assert_eq!(&frame[2..], [0xAA, 0xBB]);
            let sender = frame[0] as usize;
            assert_eq!(frame[1], next[sender], "sender {sender} out of order");
            next[sender] += 1;
        }
        assert!(next.iter().all(|n| *n == 50));
    }

    #[tokio::test]
    async fn a_send_dropped_midway_is_finished_by_a_task_of_its_own() {
        // A pipe too small for the frame: the write stalls until the reader reads.
        let (a, mut b) = tokio::io::duplex(16);
        let outbox = Outbox::new(a);
        let frame: Vec<u8> = (0..100u8).collect();
        let stalled = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            outbox.send(frame.clone()),
        )
        .await;
        assert!(stalled.is_err(), "the send should have stalled");
        // Queued behind the abandoned one.
        outbox.send(vec![7, 7]).await.unwrap();
        let mut got = vec![0u8; 102];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..100], &frame[..]);
        assert_eq!(&got[100..], [7, 7]);
        assert!(!outbox.is_closed());
    }

    #[tokio::test]
    async fn a_failed_write_closes_the_outbox() {
        let (a, b) = tokio::io::duplex(16);
        drop(b);
        let outbox = Outbox::new(a);
        assert!(outbox.send(vec![1; 8]).await.is_err());
        outbox.closed().await;
        assert!(outbox.send(vec![1]).await.is_err());
    }
}
