//! The Raft log's write-ahead files: the format, and replaying them into the log's state.
//!
//! The log lives in `<store>/wal/` as numbered segment files (`00000000000000000001.wal`, …),
//! each a sequence of records framed as `len: u32 LE | crc32: u32 LE | payload` (bincode of a
//! [`Record`]). Records are only ever appended; a segment is closed once it holds
//! [`SEGMENT_BYTES`] and the next one is started with the vote, purge point and commit hint
//! repeated at its head, so dropping old segments never loses them.
//!
//! Replay reads the segments in order and folds their records ([`Replay::apply`]): an entry
//! extends the log (one at an index already logged replaces it and everything after, as a
//! truncation would); `Truncated` drops entries from an index on; `Purged` drops entries up to
//! a log id; the last `Vote` and `Committed` win. Only the end of the newest segment may be
//! torn (a crash during a write): the first frame that does not check there ends the log, and
//! it is cut off before anything is written after it. Anywhere else a bad frame is corruption.

use std::collections::BTreeMap;
use std::path::Path;

use openraft::{Entry, LogId, RaftLogId, Vote};
use serde::{Deserialize, Serialize};

use super::TypeConfig;

type NodeId = u64;

/// Bytes before a record's payload: its length and CRC-32.
pub(super) const FRAME_HEADER: usize = 8;
/// A segment is closed, and the next one started, once it holds this many bytes.
pub(super) const SEGMENT_BYTES: u64 = 64 << 20;
/// The largest payload a frame may announce; more is a damaged length, not a record.
const MAX_PAYLOAD: u32 = 1 << 30;
const SEGMENT_SUFFIX: &str = ".wal";

/// A record as read back.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Record {
    Entry(Entry<TypeConfig>),
    Vote(Vote<NodeId>),
    Committed(Option<LogId<NodeId>>),
    Purged(LogId<NodeId>),
    Truncated { since: u64 },
}

/// A record as written: [`Record`] by reference (same variants in the same order, so the same
/// bytes), so that appending an entry does not copy it.
#[derive(Debug, Serialize)]
pub(super) enum RecordRef<'a> {
    Entry(&'a Entry<TypeConfig>),
    Vote(&'a Vote<NodeId>),
    Committed(&'a Option<LogId<NodeId>>),
    Purged(&'a LogId<NodeId>),
    Truncated { since: u64 },
}

/// Why a write-ahead file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub(super) enum WalError {
    #[error("encoding a log record: {0}")]
    Encode(String),
    #[error("{0}")]
    Corrupt(String),
}

/// Appends `record`, framed, to `out`; returns the payload's length.
pub(super) fn push_frame(out: &mut Vec<u8>, record: &RecordRef<'_>) -> Result<u32, WalError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    bincode::serialize_into(&mut *out, record).map_err(|e| WalError::Encode(e.to_string()))?;
    let payload = &out[start + FRAME_HEADER..];
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len <= MAX_PAYLOAD)
        .ok_or_else(|| WalError::Encode(format!("a record of {} bytes", payload.len())))?;
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(len)
}

/// Decodes a frame's payload.
pub(super) fn decode_payload(payload: &[u8]) -> Result<Record, WalError> {
    bincode::deserialize(payload)
        .map_err(|e| WalError::Corrupt(format!("a log record does not decode: {e}")))
}

/// The frames of one segment's bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Scan {
    /// Each whole frame: where it starts and its payload's length.
    pub frames: Vec<(u64, u32)>,
    /// Where the whole frames end.
    pub end: u64,
    /// Whether bytes follow `end` that are not a whole, checked frame.
    pub torn: bool,
}

/// Splits a segment's bytes into frames, stopping at the first that is incomplete or fails
/// its checksum.
pub(super) fn scan(bytes: &[u8]) -> Scan {
    let mut scan = Scan::default();
    let mut at = 0usize;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + FRAME_HEADER) else {
            break;
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let start = at + FRAME_HEADER;
        let Some(payload) = bytes.get(start..start + len as usize) else {
            break;
        };
        if len > MAX_PAYLOAD || crc32fast::hash(payload) != crc {
            break;
        }
        scan.frames.push((at as u64, len));
        at = start + len as usize;
    }
    scan.end = at as u64;
    scan.torn = at < bytes.len();
    scan
}

/// Where an entry's frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Location {
    pub log_id: LogId<NodeId>,
    /// The segment's number.
    pub segment: u64,
    /// Where the frame starts in it.
    pub offset: u64,
    /// The payload's length.
    pub len: u32,
}

/// The log's state, folded from its records in order.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Replay {
    pub vote: Option<Vote<NodeId>>,
    pub committed: Option<LogId<NodeId>>,
    pub purged: Option<LogId<NodeId>>,
    pub entries: BTreeMap<u64, Location>,
}

impl Replay {
    /// The next record, read at `location` (its log id unused unless it is an entry).
    pub fn apply(&mut self, record: Record, mut location: Location) -> Result<(), WalError> {
        match record {
            Record::Entry(entry) => {
                let index = entry.get_log_id().index;
                location.log_id = *entry.get_log_id();
                if self.purged.is_some_and(|p| index <= p.index) {
                    return Err(WalError::Corrupt(format!(
                        "log entry {index} was written after the log was purged past it"
                    )));
                }
                if let Some((&last, _)) = self.entries.last_key_value() {
                    if index > last + 1 {
                        return Err(WalError::Corrupt(format!(
                            "log entry {index} follows entry {last}: entries are missing"
                        )));
                    }
                    // Raft rewrites an index only after truncating there; the record of the
                    // rewrite implies it.
                    self.entries.split_off(&index);
                }
                self.entries.insert(index, location);
            }
            Record::Vote(vote) => self.vote = Some(vote),
            Record::Committed(committed) => self.committed = committed,
            Record::Purged(upto) => {
                self.purged = Some(upto);
                self.entries = self.entries.split_off(&(upto.index + 1));
            }
            Record::Truncated { since } => {
                self.entries.split_off(&since);
            }
        }
        Ok(())
    }

    /// Checks the folded log: it must start right after the purge point, when there is one
    /// (older segments are dropped only once purged, so a gap there means lost files).
    pub fn check(&self) -> Result<(), WalError> {
        if let (Some(purged), Some((&first, _))) = (self.purged, self.entries.first_key_value()) {
            if first != purged.index + 1 {
                return Err(WalError::Corrupt(format!(
                    "the log starts at entry {first} but was purged only up to {}",
                    purged.index
                )));
            }
        }
        Ok(())
    }
}

/// The file name of segment `number`.
pub(super) fn segment_name(number: u64) -> String {
    format!("{number:020}{SEGMENT_SUFFIX}")
}

/// The segment number a file name stands for, if it names a segment.
pub(super) fn segment_number(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments in `dir`, oldest first.
pub(super) fn list_segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(number) = name.to_str().and_then(segment_number) {
            numbers.push(number);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(super) mod tests {
    use super::*;
    use crate::mvcc::Command;
    use openraft::{CommittedLeaderId, EntryPayload};

    pub(in crate::raft) fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    /// An entry of leader 1 in `term` with a put of 100 bytes.
    pub(in crate::raft) fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(Command::Put {
                key: format!("/k{index}"),
                value: vec![7; 100],
            }),
        }
    }

    fn at(segment: u64, offset: u64) -> Location {
        Location {
            log_id: LogId::default(),
            segment,
            offset,
            len: 0,
        }
    }

    fn replay(records: Vec<Record>) -> Result<Replay, WalError> {
        let mut replay = Replay::default();
        for (i, record) in records.into_iter().enumerate() {
            replay.apply(record, at(1, i as u64))?;
        }
        replay.check()?;
        Ok(replay)
    }

    fn indexes(replay: &Replay) -> Vec<(u64, u64)> {
        replay
            .entries
            .values()
            .map(|l| (l.log_id.leader_id.term, l.log_id.index))
            .collect()
    }

    #[test]
    fn frames_round_trip_and_borrowed_records_encode_like_owned_ones() {
        let e = entry(2, 7);
        let vote = Vote::new(3, 1);
        let mut bytes = Vec::new();
        push_frame(&mut bytes, &RecordRef::Entry(&e)).unwrap();
        push_frame(&mut bytes, &RecordRef::Vote(&vote)).unwrap();
        push_frame(&mut bytes, &RecordRef::Truncated { since: 5 }).unwrap();
        let scan = scan(&bytes);
        assert!(!scan.torn);
        assert_eq!(scan.end, bytes.len() as u64);
        let records: Vec<Record> = scan
            .frames
            .iter()
            .map(|&(offset, len)| {
                let start = offset as usize + FRAME_HEADER;
                decode_payload(&bytes[start..start + len as usize]).unwrap()
            })
            .collect();
        assert!(matches!(&records[0], Record::Entry(got) if got.log_id == e.log_id));
        assert!(matches!(&records[1], Record::Vote(got) if *got == vote));
        assert!(matches!(&records[2], Record::Truncated { since: 5 }));
    }

    #[test]
    fn a_torn_or_damaged_tail_ends_the_scan() {
        let mut bytes = Vec::new();
        push_frame(&mut bytes, &RecordRef::Entry(&entry(1, 1))).unwrap();
        let first_end = bytes.len() as u64;
        push_frame(&mut bytes, &RecordRef::Entry(&entry(1, 2))).unwrap();
        let whole = bytes.len();

        // Cut inside the second frame's payload, then inside its header.
        for cut in [whole - 3, first_end as usize + 5] {
            let scan = scan(&bytes[..cut]);
            assert_eq!(
                (scan.frames.len(), scan.end, scan.torn),
                (1, first_end, true)
            );
        }
        // A flipped bit in the second payload.
        let mut damaged = bytes.clone();
        damaged[whole - 1] ^= 1;
        let scan_damaged = scan(&damaged);
        assert_eq!(scan_damaged.frames.len(), 1);
        assert!(scan_damaged.torn);
        // Nothing at all is a clean, empty segment.
        assert_eq!(scan(&[]), Scan::default());
    }

    #[test]
    fn replay_folds_truncations_rewrites_and_purges() {
        let replay = replay(vec![
            Record::Vote(Vote::new(1, 1)),
            Record::Entry(entry(1, 1)),
            Record::Entry(entry(1, 2)),
            Record::Entry(entry(1, 3)),
            Record::Entry(entry(1, 4)),
            Record::Truncated { since: 4 },
            // Rewriting index 3 drops 3 and everything after it.
            Record::Entry(entry(2, 3)),
            Record::Vote(Vote::new(2, 1)),
            Record::Committed(Some(log_id(2, 3))),
            Record::Purged(log_id(1, 1)),
            Record::Entry(entry(2, 4)),
        ])
        .unwrap();
        assert_eq!(indexes(&replay), [(1, 2), (2, 3), (2, 4)]);
        assert_eq!(replay.vote, Some(Vote::new(2, 1)));
        assert_eq!(replay.committed, Some(log_id(2, 3)));
        assert_eq!(replay.purged, Some(log_id(1, 1)));
    }

    #[test]
    fn a_purge_past_the_last_entry_empties_the_log() {
        let replay = replay(vec![
            Record::Entry(entry(1, 1)),
            Record::Purged(log_id(3, 10)),
            Record::Entry(entry(3, 11)),
        ])
        .unwrap();
        assert_eq!(indexes(&replay), [(3, 11)]);
    }

    #[test]
    fn holes_are_corruption() {
        let gap = replay(vec![Record::Entry(entry(1, 1)), Record::Entry(entry(1, 3))]);
        assert!(matches!(gap, Err(WalError::Corrupt(_))), "{gap:?}");
        // Segments before the first kept one were dropped, but the purge point says the log
        // went further back.
        let missing = replay(vec![
            Record::Entry(entry(1, 5)),
            Record::Entry(entry(1, 6)),
            Record::Purged(log_id(1, 2)),
        ]);
        assert!(matches!(missing, Err(WalError::Corrupt(_))), "{missing:?}");
        let behind_purge = replay(vec![
            Record::Purged(log_id(1, 4)),
            Record::Entry(entry(1, 3)),
        ]);
        assert!(matches!(behind_purge, Err(WalError::Corrupt(_))));
        // After dropped segments the first kept entry may start anywhere past the purge point.
        replay(vec![
            Record::Entry(entry(1, 5)),
            Record::Entry(entry(1, 6)),
            Record::Purged(log_id(1, 4)),
        ])
        .unwrap();
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(segment_name(7), "00000000000000000007.wal");
        assert_eq!(segment_number(&segment_name(123)), Some(123));
        for bad in [
            "7.wal",
            "0000000000000000000x.wal",
            "00000000000000000007.tmp",
        ] {
            assert_eq!(segment_number(bad), None, "{bad}");
        }
    }
}
