//! A small cache of upstream answers (as CoreDNS's `cache 30` in k3s's Corefile): positive
//! answers for their smallest TTL, negative ones for their SOA's negative TTL, neither for
//! more than 30 s; failures and truncated answers are not kept. Served answers have their
//! TTLs lowered by the time spent in the cache, so no client keeps them longer than the
//! upstream allowed. The clock is a parameter: the logic is tested without waiting.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// The longest an answer is kept.
pub const MAX_TTL: Duration = Duration::from_secs(30);
/// How many questions are kept at most.
pub const DEFAULT_CAPACITY: usize = 10_000;

#[derive(Debug, Clone)]
struct Entry {
    message: Message,
    stored: Instant,
    expires: Instant,
}

/// Upstream answers by question.
#[derive(Debug)]
pub struct AnswerCache {
    entries: Mutex<HashMap<(String, RecordType), Entry>>,
    capacity: usize,
}

fn cache_key(name: &Name, rtype: RecordType) -> (String, RecordType) {
    (name.to_lowercase().to_ascii(), rtype)
}

/// How long `message` may be kept, if at all.
fn lifetime(message: &Message) -> Option<Duration> {
    if message.metadata.truncation {
        return None;
    }
    let seconds = match message.metadata.response_code {
        ResponseCode::NoError if !message.answers.is_empty() => {
            message.answers.iter().map(|r| r.ttl).min()?
        }
        // NXDOMAIN and NODATA: the SOA's negative TTL (RFC 2308), when there is one.
        ResponseCode::NoError | ResponseCode::NXDomain => {
            message.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })?
        }
        _ => return None,
    };
    let lifetime = Duration::from_secs(u64::from(seconds)).min(MAX_TTL);
    (!lifetime.is_zero()).then_some(lifetime)
}

impl AnswerCache {
    pub fn new(capacity: usize) -> AnswerCache {
        AnswerCache {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The cached answer to (`name`, `rtype`) at `now`, its TTLs lowered by its age.
    pub fn get(&self, name: &Name, rtype: RecordType, now: Instant) -> Option<Message> {
        let key = cache_key(name, rtype);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.get(&key)?;
        if now >= entry.expires {
            entries.remove(&key);
            return None;
        }
        let age = u32::try_from(now.duration_since(entry.stored).as_secs()).unwrap_or(u32::MAX);
        let mut message = entry.message.clone();
        for record in message
            .answers
            .iter_mut()
            .chain(message.authorities.iter_mut())
            .chain(message.additionals.iter_mut())
        {
            record.ttl = record.ttl.saturating_sub(age);
        }
        Some(message)
    }

    /// Keeps `message`, the upstream's answer to (`name`, `rtype`) received at `now`, if it
    /// may be kept.
    pub fn put(&self, name: &Name, rtype: RecordType, message: &Message, now: Instant) {
        let Some(lifetime) = lifetime(message) else {
            return;
        };
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity {
            entries.retain(|_, e| e.expires > now);
            // Still full of live answers: make room by dropping a share of them.
            let excess = (entries.len() + 1).saturating_sub(self.capacity * 3 / 4);
            if excess > 0 {
                let doomed: Vec<_> = entries.keys().take(excess).cloned().collect();
                for key in doomed {
                    entries.remove(&key);
                }
            }
        }
        entries.insert(
            cache_key(name, rtype),
            Entry {
                message: message.clone(),
                stored: now,
                expires: now + lifetime,
            },
        );
    }

    /// How many answers are kept.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::Record;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap()
    }

    fn answer(ttls: &[u32]) -> Message {
        let mut message = Message::response(1, hickory_proto::op::OpCode::Query);
        for (i, ttl) in ttls.iter().enumerate() {
            message.add_answer(Record::from_rdata(
                name("www.example.org."),
                *ttl,
                RData::A(A([192, 0, 2, u8::try_from(i).unwrap()].into())),
            ));
        }
        message
    }

    fn negative(code: ResponseCode, soa_ttl: u32, minimum: u32) -> Message {
        let mut message = Message::response(1, hickory_proto::op::OpCode::Query);
        message.metadata.response_code = code;
        message.add_authority(Record::from_rdata(
            name("example.org."),
            soa_ttl,
            RData::SOA(SOA::new(
                name("ns.example.org."),
                name("h.example.org."),
                1,
                1,
                1,
                1,
                minimum,
            )),
        ));
        message
    }

    #[test]
    fn answers_live_for_their_ttl_capped() {
        let cache = AnswerCache::new(10);
        let t0 = Instant::now();
        let q = name("WWW.example.org.");
        cache.put(&q, RecordType::A, &answer(&[20, 10]), t0);
        let hit = cache
            .get(
                &name("www.EXAMPLE.org."),
                RecordType::A,
                t0 + Duration::from_secs(4),
            )
            .expect("cached, case-insensitively");
        assert_eq!(
            hit.answers.iter().map(|r| r.ttl).collect::<Vec<_>>(),
            [16, 6],
            "TTLs lowered by the age"
        );
        assert!(cache.get(&q, RecordType::AAAA, t0).is_none(), "per type");
        assert!(cache
            .get(&q, RecordType::A, t0 + Duration::from_secs(10))
            .is_none());
        assert!(cache.is_empty(), "expired entries go when asked");

        cache.put(&q, RecordType::A, &answer(&[3600]), t0);
        assert!(cache
            .get(&q, RecordType::A, t0 + Duration::from_secs(29))
            .is_some());
        assert!(
            cache.get(&q, RecordType::A, t0 + MAX_TTL).is_none(),
            "capped at 30 s"
        );
    }

    #[test]
    fn negative_answers_use_the_soa_and_failures_are_not_kept() {
        let cache = AnswerCache::new(10);
        let t0 = Instant::now();
        let q = name("nx.example.org.");
        cache.put(
            &q,
            RecordType::A,
            &negative(ResponseCode::NXDomain, 300, 5),
            t0,
        );
        assert!(cache
            .get(&q, RecordType::A, t0 + Duration::from_secs(4))
            .is_some());
        assert!(cache
            .get(&q, RecordType::A, t0 + Duration::from_secs(5))
            .is_none());
        cache.put(
            &q,
            RecordType::AAAA,
            &negative(ResponseCode::NoError, 2, 60),
            t0,
        );
        assert!(
            cache
                .get(&q, RecordType::AAAA, t0 + Duration::from_secs(1))
                .is_some(),
            "NODATA"
        );

        for kept_not in [
            negative(ResponseCode::ServFail, 60, 60),
            Message::response(1, hickory_proto::op::OpCode::Query), // NXDOMAIN without SOA
            answer(&[0]),
            {
                let mut m = answer(&[60]);
                m.metadata.truncation = true;
                m
            },
        ] {
            let cache = AnswerCache::new(10);
            cache.put(&q, RecordType::A, &kept_not, t0);
            assert!(cache.is_empty(), "{kept_not:?}");
        }
    }

    #[test]
    fn a_full_cache_makes_room() {
        let cache = AnswerCache::new(8);
        let t0 = Instant::now();
        for i in 0..20 {
            cache.put(
                &name(&format!("h{i}.example.org.")),
                RecordType::A,
                &answer(&[60]),
                t0,
            );
            assert!(cache.len() <= 8);
        }
        assert!(cache
            .get(&name("h19.example.org."), RecordType::A, t0)
            .is_some());
    }
}
