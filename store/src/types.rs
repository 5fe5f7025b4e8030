//! The store's data model: revisioned key-values, change events, range requests and their
//! continue tokens, and the limits every write is checked against.

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};

/// A cluster-wide, monotonically increasing write counter. `0` is the empty store; the first
/// successful write is revision `1`. Failed compare-and-swaps do not consume a revision.
pub type Revision = i64;

/// The largest value the store accepts: 1.5 MiB, etcd's default request limit.
pub const MAX_VALUE_BYTES: usize = 1536 * 1024;

/// The longest key the store accepts.
pub const MAX_KEY_BYTES: usize = 1024;

/// One key with its value and revision bookkeeping (etcd's `mvccpb.KeyValue`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    #[serde(with = "bytes")]
    pub value: Vec<u8>,
    /// Revision of the write that created this incarnation of the key.
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// Number of writes since creation (1 after create); resets when the key is deleted.
    pub version: i64,
}

impl std::fmt::Debug for KeyValue {
    /// Shows at most 64 bytes of the value: values can be megabytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = &self.value[..self.value.len().min(64)];
        let more = if shown.len() < self.value.len() {
            "…"
        } else {
            ""
        };
        f.debug_struct("KeyValue")
            .field("key", &self.key)
            .field(
                "value",
                &format_args!(
                    "{:?}{more} ({} bytes)",
                    String::from_utf8_lossy(shown),
                    self.value.len()
                ),
            )
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .field("version", &self.version)
            .finish()
    }
}

/// Values as byte strings for serde. Derived serde treats a `Vec<u8>` as a sequence of
/// numbers, one call per byte: slow for megabyte values (hundreds of milliseconds in an
/// unoptimised build, where the Raft log, snapshots and peer frames encode them). bincode
/// writes both forms identically (a length, then the bytes), so data written either way reads
/// back either way.
pub(crate) mod bytes {
    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> de::Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(byte) = seq.next_element()? {
                out.push(byte);
            }
            Ok(out)
        }
    }
}

/// What happened to a key at one revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// Created or updated: `kv` is the new state.
    Put,
    /// Deleted: `kv` carries the key, empty value and the deleting revision; the deleted state is
    /// in `prev`.
    Delete,
}

/// One change, as delivered by watch and kept in the bounded history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    /// The key's state before this change; `None` when the change created the key.
    pub prev: Option<KeyValue>,
}

impl Event {
    /// The revision at which this change happened.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// A page of a prefix range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeRequest {
    /// Every key starting with this string (`""` is the whole store).
    pub prefix: String,
    /// At most this many items; `0` means no limit.
    pub limit: usize,
    /// Read at this revision instead of the latest. Must not be compacted.
    pub revision: Option<Revision>,
    /// Continue a previous range: the page starts after the token's key, at the token's revision.
    pub continue_from: Option<ContinueToken>,
}

impl RangeRequest {
    /// A range over every key under `prefix`, at the latest revision, without limit.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        RangeRequest {
            prefix: prefix.into(),
            ..Default::default()
        }
    }

    /// The same request with a page size.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
}

/// One page of results, all as of `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    /// The revision the page was read at; later pages of the same range are read at it too.
    pub revision: Revision,
    /// Present when more items follow: pass it back in [`RangeRequest::continue_from`].
    pub next: Option<ContinueToken>,
}

/// Where the next page of a range starts, and at which revision it is read. Rendered as an
/// opaque string so it can travel through an API (`metadata.continue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContinueToken {
    pub revision: Revision,
    /// The last key returned so far; the next page starts after it.
    pub after_key: String,
}

impl ContinueToken {
    /// The opaque string form: `<revision>.<hex of key>`.
    pub fn encode(&self) -> String {
        let mut out = format!("{}.", self.revision);
        for byte in self.after_key.as_bytes() {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }

    /// Parses what [`ContinueToken::encode`] produced.
    pub fn decode(token: &str) -> Result<ContinueToken> {
        let bad = |why: &str| StoreError::InvalidContinue(format!("{why} in {token:?}"));
        let (rev, hex) = token.split_once('.').ok_or_else(|| bad("no separator"))?;
        let revision: Revision = rev.parse().map_err(|_| bad("bad revision"))?;
        if revision < 0 || hex.len() % 2 != 0 {
            return Err(bad("bad encoding"));
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
            .collect::<std::result::Result<Vec<u8>, _>>()
            .map_err(|_| bad("bad hex"))?;
        let after_key = String::from_utf8(bytes).map_err(|_| bad("key is not UTF-8"))?;
        Ok(ContinueToken {
            revision,
            after_key,
        })
    }
}

/// Checks a key: non-empty, starts with `/`, at most [`MAX_KEY_BYTES`], no control characters,
/// no empty or relative (`.`/`..`) path segments.
pub fn validate_key(key: &str) -> Result<()> {
    let invalid = |reason| {
        Err(StoreError::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return invalid("empty");
    }
    if !key.starts_with('/') {
        return invalid("must start with '/'");
    }
    if key.len() > MAX_KEY_BYTES {
        return invalid("longer than 1024 bytes");
    }
    if key.chars().any(char::is_control) {
        return invalid("contains control characters");
    }
    if key.len() > 1
        && key[1..]
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return invalid("has an empty, '.' or '..' segment");
    }
    Ok(())
}

/// Checks a value against [`MAX_VALUE_BYTES`].
pub fn validate_value(key: &str, value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::ValueTooLarge {
            key: key.to_string(),
            size: value.len(),
            max: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// Checks a range prefix: empty (everything) or a valid key prefix.
pub fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    if !prefix.starts_with('/')
        || prefix.len() > MAX_KEY_BYTES
        || prefix.chars().any(char::is_control)
    {
        return Err(StoreError::InvalidKey {
            key: prefix.to_string(),
            reason: "a prefix must be empty or start with '/', without control characters",
        });
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        for good in ["/", "/registry/pods/default/web-1", "/a", "/a/b.c/d-e_f"] {
            assert!(validate_key(good).is_ok(), "{good}");
        }
        for bad in [
            "", "registry", "/a//b", "/a/", "/a/../b", "/a/./b", "/a\0b", "/a\nb",
        ] {
            assert!(
                matches!(validate_key(bad), Err(StoreError::InvalidKey { .. })),
                "{bad:?}"
            );
        }
        assert!(validate_key(&format!("/{}", "x".repeat(MAX_KEY_BYTES))).is_err());
    }

    #[test]
    fn values_are_bounded() {
        assert!(validate_value("/k", &vec![0; MAX_VALUE_BYTES]).is_ok());
        assert!(matches!(
            validate_value("/k", &vec![0; MAX_VALUE_BYTES + 1]),
            Err(StoreError::ValueTooLarge { size, .. }) if size == MAX_VALUE_BYTES + 1
        ));
    }

    #[test]
    fn values_encode_as_before_only_faster() {
        /// The derived form values had before `bytes`.
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct Old {
            key: String,
            value: Vec<u8>,
            create_revision: Revision,
            mod_revision: Revision,
            version: i64,
        }
        let kv = KeyValue {
            key: "/k".into(),
            value: vec![0, 1, 2, 254, 255],
            create_revision: 3,
            mod_revision: 4,
            version: 2,
        };
        let old = Old {
            key: kv.key.clone(),
            value: kv.value.clone(),
            create_revision: 3,
            mod_revision: 4,
            version: 2,
        };
        let new_bytes = bincode::serialize(&kv).unwrap();
        assert_eq!(new_bytes, bincode::serialize(&old).unwrap());
        assert_eq!(bincode::deserialize::<KeyValue>(&new_bytes).unwrap(), kv);
        assert_eq!(bincode::deserialize::<Old>(&new_bytes).unwrap(), old);
    }

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let token = ContinueToken {
            revision: 42,
            after_key: "/registry/pods/ns/ü".into(),
        };
        assert_eq!(ContinueToken::decode(&token.encode()), Ok(token));
        for bad in ["", "12", "x.00", "-1.00", "1.0", "1.zz", "1.ff"] {
            assert!(ContinueToken::decode(bad).is_err(), "{bad}");
        }
    }
}
