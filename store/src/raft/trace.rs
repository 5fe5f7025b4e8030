//! Per-write latency marks, for finding where one write's time goes across the members
//! (feature `latency-trace`; without it [`mark`] compiles to nothing).
//!
//! Each mark is a wall-clock timestamp, a stage name and the Raft log index it concerns (0 when
//! not known yet). Wall-clock time rather than `Instant` so that marks of the three member
//! processes on one machine line up. Marks are buffered in memory and appended every 200 ms to
//! `$SHOAL_STORE_TRACE/trace-<pid>.log` (one `nanos stage index` line each) by a thread of
//! their own, so that recording one costs a lock and a push, not a write. Without
//! `SHOAL_STORE_TRACE` nothing is recorded.

#[cfg(feature = "latency-trace")]
mod imp {
    use std::io::Write;
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    type Mark = (u128, &'static str, u64);

    static MARKS: OnceLock<Option<Mutex<Vec<Mark>>>> = OnceLock::new();

    fn marks() -> Option<&'static Mutex<Vec<Mark>>> {
        MARKS
            .get_or_init(|| {
                let dir = std::env::var_os("SHOAL_STORE_TRACE")?;
                let path =
                    std::path::Path::new(&dir).join(format!("trace-{}.log", std::process::id()));
                std::thread::Builder::new()
                    .name("store-trace".into())
                    .spawn(move || write_loop(&path))
                    .ok()?;
                Some(Mutex::new(Vec::with_capacity(1 << 16)))
            })
            .as_ref()
    }

    fn write_loop(path: &std::path::Path) {
        let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        else {
            tracing::warn!(path = %path.display(), "cannot open the latency trace file");
            return;
        };
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let Some(marks) = marks() else { return };
            let taken = std::mem::take(&mut *marks.lock().unwrap_or_else(|e| e.into_inner()));
            let mut text = String::with_capacity(taken.len() * 40);
            for (at, stage, index) in taken {
                text.push_str(&format!("{at} {stage} {index}\n"));
            }
            if file.write_all(text.as_bytes()).is_err() {
                return;
            }
        }
    }

    pub(in crate::raft) fn mark(stage: &'static str, index: u64) {
        let Some(marks) = marks() else { return };
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        marks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((at, stage, index));
    }
}

#[cfg(feature = "latency-trace")]
pub(super) use imp::mark;

/// Records that a write reached `stage` (feature `latency-trace` only).
#[cfg(not(feature = "latency-trace"))]
#[inline(always)]
pub(super) fn mark(_stage: &'static str, _index: u64) {}
