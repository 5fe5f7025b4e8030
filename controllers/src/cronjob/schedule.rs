//! Cron schedules as Kubernetes parses and evaluates them (`cron.ParseStandard` and
//! `SpecSchedule.Next` of robfig/cron v3): five fields — minute, hour, day of month,
//! month, day of week — each a list of `*`, `?`, values, names (`JAN`, `MON`, any case),
//! ranges `a-b` and steps `/n`; or one of the descriptors `@yearly`, `@annually`,
//! `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly` and `@every <duration>`.
//!
//! Quirks kept on purpose: the day of week runs 0–6 (7 is not Sunday); when both the day
//! of month and the day of week are restricted a day matching either fires, but if
//! either starts with `*` or `?` (and has no step above 1) both must match; `N/step`
//! means `N-max/step`; a schedule that finds no time within five years (`0 0 30 2 *`)
//! never fires. `TZ=`/`CRON_TZ=` prefixes are refused, as the Kubernetes API does:
//! `spec.timeZone` says the zone.

use std::time::Duration;

use jiff::civil;
use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, Zoned};

/// Why a schedule does not parse; the text follows robfig/cron's messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("empty spec string")]
    Empty,
    #[error("cannot use TZ or CRON_TZ in schedule, use timeZone field instead")]
    TimeZoneInSchedule,
    #[error("expected exactly 5 fields, found {found}: {spec}")]
    FieldCount { found: usize, spec: String },
    #[error("unrecognized descriptor: {0}")]
    UnknownDescriptor(String),
    #[error("failed to parse duration {0}")]
    InvalidDuration(String),
    #[error("failed to parse int from {0}")]
    NotANumber(String),
    #[error("too many hyphens: {0}")]
    TooManyHyphens(String),
    #[error("too many slashes: {0}")]
    TooManySlashes(String),
    #[error("beginning of range ({start}) below minimum ({min}): {expr}")]
    BelowMinimum { start: u32, min: u32, expr: String },
    #[error("end of range ({end}) above maximum ({max}): {expr}")]
    AboveMaximum { end: u32, max: u32, expr: String },
    #[error("beginning of range ({start}) beyond end of range ({end}): {expr}")]
    Reversed { start: u32, end: u32, expr: String },
    #[error("step of range should be a positive number: {0}")]
    ZeroStep(String),
}

/// Set when a field starts with `*` or `?` (without a step above 1): it then does not
/// widen the day match (see the module docs).
const STAR_BIT: u64 = 1 << 63;

struct Bounds {
    min: u32,
    max: u32,
    names: &'static [(&'static str, u32)],
}

const MINUTES: Bounds = Bounds {
    min: 0,
    max: 59,
    names: &[],
};
const HOURS: Bounds = Bounds {
    min: 0,
    max: 23,
    names: &[],
};
const DAYS_OF_MONTH: Bounds = Bounds {
    min: 1,
    max: 31,
    names: &[],
};
const MONTHS: Bounds = Bounds {
    min: 1,
    max: 12,
    names: &[
        ("jan", 1),
        ("feb", 2),
        ("mar", 3),
        ("apr", 4),
        ("may", 5),
        ("jun", 6),
        ("jul", 7),
        ("aug", 8),
        ("sep", 9),
        ("oct", 10),
        ("nov", 11),
        ("dec", 12),
    ],
};
const DAYS_OF_WEEK: Bounds = Bounds {
    min: 0,
    max: 6,
    names: &[
        ("sun", 0),
        ("mon", 1),
        ("tue", 2),
        ("wed", 3),
        ("thu", 4),
        ("fri", 5),
        ("sat", 6),
    ],
};

/// The five fields as bit sets (bit `n` for value `n`, plus [`STAR_BIT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fields(Fields),
    /// `@every`: a fixed delay (whole seconds, at least one).
    Every(Duration),
}

/// A parsed cron schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule(Kind);

fn all(bounds: &Bounds) -> u64 {
    bits(bounds.min, bounds.max, 1) | STAR_BIT
}

fn bits(min: u32, max: u32, step: u32) -> u64 {
    (min..=max)
        .step_by(usize::try_from(step).unwrap_or(1))
        .fold(0, |acc, v| acc | 1 << v)
}

/// A non-negative integer (`mustParseInt`).
fn number(text: &str) -> Result<u32, ScheduleError> {
    text.parse::<u32>()
        .map_err(|_| ScheduleError::NotANumber(text.to_string()))
}

fn number_or_name(text: &str, bounds: &Bounds) -> Result<u32, ScheduleError> {
    let lower = text.to_ascii_lowercase();
    match bounds.names.iter().find(|(name, _)| *name == lower) {
        Some((_, value)) => Ok(*value),
        None => number(text),
    }
}

/// One comma-separated piece of a field (`getRange`).
fn range(expr: &str, bounds: &Bounds) -> Result<u64, ScheduleError> {
    let mut range_and_step = expr.split('/');
    let range_part = range_and_step.next().unwrap_or("");
    let step_part = range_and_step.next();
    if range_and_step.next().is_some() {
        return Err(ScheduleError::TooManySlashes(expr.to_string()));
    }
    let low_and_high: Vec<&str> = range_part.split('-').collect();
    let single = low_and_high.len() == 1;
    let mut extra = 0;
    let (start, mut end) = if low_and_high[0] == "*" || low_and_high[0] == "?" {
        extra = STAR_BIT;
        (bounds.min, bounds.max)
    } else {
        let start = number_or_name(low_and_high[0], bounds)?;
        let end = match low_and_high.len() {
            1 => start,
            2 => number_or_name(low_and_high[1], bounds)?,
            _ => return Err(ScheduleError::TooManyHyphens(expr.to_string())),
        };
        (start, end)
    };
    let step = match step_part {
        None => 1,
        Some(text) => {
            let step = number(text)?;
            // "N/step" means "N-max/step".
            if single {
                end = bounds.max;
            }
            if step > 1 {
                extra = 0;
            }
            step
        }
    };
    if start < bounds.min {
        return Err(ScheduleError::BelowMinimum {
            start,
            min: bounds.min,
            expr: expr.to_string(),
        });
    }
    if end > bounds.max {
        return Err(ScheduleError::AboveMaximum {
            end,
            max: bounds.max,
            expr: expr.to_string(),
        });
    }
    if start > end {
        return Err(ScheduleError::Reversed {
            start,
            end,
            expr: expr.to_string(),
        });
    }
    if step == 0 {
        return Err(ScheduleError::ZeroStep(expr.to_string()));
    }
    Ok(bits(start, end, step) | extra)
}

/// A whole field: the union of its comma-separated ranges (empty pieces are skipped, as
/// Go's `strings.FieldsFunc` does).
fn field(text: &str, bounds: &Bounds) -> Result<u64, ScheduleError> {
    text.split(',')
        .filter(|piece| !piece.is_empty())
        .try_fold(0, |acc, piece| Ok(acc | range(piece, bounds)?))
}

/// Go's `time.ParseDuration`: a sequence of decimal numbers with units
/// (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), optionally signed; "0" alone is allowed.
fn parse_go_duration(text: &str) -> Option<i128> {
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        let whole: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let mut value = whole.checked_mul(scale)?;
        if !fraction.is_empty() {
            let digits: i128 = fraction.parse().ok()?;
            let denominator = 10i128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
            value += digits.checked_mul(scale)? / denominator;
        }
        total = total.checked_add(value)?;
        rest = after;
    }
    Some(if negative { -total } else { total })
}

fn descriptor(spec: &str) -> Result<Kind, ScheduleError> {
    let fields = |minute, hour, dom, month, dow| {
        Kind::Fields(Fields {
            minute,
            hour,
            dom,
            month,
            dow,
        })
    };
    let kind = match spec {
        "@yearly" | "@annually" => fields(1, 1, 1 << 1, 1 << 1, all(&DAYS_OF_WEEK)),
        "@monthly" => fields(1, 1, 1 << 1, all(&MONTHS), all(&DAYS_OF_WEEK)),
        "@weekly" => fields(1, 1, all(&DAYS_OF_MONTH), all(&MONTHS), 1),
        "@daily" | "@midnight" => {
            fields(1, 1, all(&DAYS_OF_MONTH), all(&MONTHS), all(&DAYS_OF_WEEK))
        }
        "@hourly" => fields(
            1,
            all(&HOURS),
            all(&DAYS_OF_MONTH),
            all(&MONTHS),
            all(&DAYS_OF_WEEK),
        ),
        _ => {
            let Some(text) = spec.strip_prefix("@every ") else {
                return Err(ScheduleError::UnknownDescriptor(spec.to_string()));
            };
            let nanos = parse_go_duration(text)
                .ok_or_else(|| ScheduleError::InvalidDuration(spec.to_string()))?;
            // `cron.Every`: at least a second, whole seconds only.
            let seconds = u64::try_from((nanos / 1_000_000_000).max(1)).unwrap_or(u64::MAX);
            Kind::Every(Duration::from_secs(seconds))
        }
    };
    Ok(kind)
}

impl Schedule {
    /// Parses a CronJob's `spec.schedule`.
    pub fn parse(spec: &str) -> Result<Schedule, ScheduleError> {
        if spec.is_empty() {
            return Err(ScheduleError::Empty);
        }
        // The API refuses any "TZ" in a schedule (`validateScheduleFormat`).
        if spec.contains("TZ") {
            return Err(ScheduleError::TimeZoneInSchedule);
        }
        if spec.starts_with('@') {
            return descriptor(spec).map(Schedule);
        }
        let parts: Vec<&str> = spec.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = parts[..] else {
            return Err(ScheduleError::FieldCount {
                found: parts.len(),
                spec: spec.to_string(),
            });
        };
        Ok(Schedule(Kind::Fields(Fields {
            minute: field(minute, &MINUTES)?,
            hour: field(hour, &HOURS)?,
            dom: field(dom, &DAYS_OF_MONTH)?,
            month: field(month, &MONTHS)?,
            dow: field(dow, &DAYS_OF_WEEK)?,
        })))
    }

    /// The first time strictly after `after` (at a whole second) the schedule fires,
    /// reading the fields in `zone`; `None` when none comes within five years.
    pub fn next(&self, after: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
        match self.0 {
            Kind::Every(delay) => {
                // `ConstantDelaySchedule.Next`: the delay after `after` rounded down to the
                // second.
                let floor = after.as_second() - i64::from(after.subsec_nanosecond() < 0);
                let delay = i64::try_from(delay.as_secs()).ok()?;
                Timestamp::from_second(floor.checked_add(delay)?).ok()
            }
            Kind::Fields(fields) => next_matching(&fields, after, zone),
        }
    }
}

fn has(set: u64, value: i8) -> bool {
    u32::try_from(value).is_ok_and(|v| v < 64 && set & (1 << v) != 0)
}

/// `dayMatches`: both must match when either field is a star, else either may.
fn day_matches(fields: &Fields, t: &Zoned) -> bool {
    let dom = has(fields.dom, t.day());
    let dow = has(fields.dow, t.weekday().to_sunday_zero_offset());
    if fields.dom & STAR_BIT != 0 || fields.dow & STAR_BIT != 0 {
        dom && dow
    } else {
        dom || dow
    }
}

/// The same day at `hour`:00:00 local time.
fn at_hour(t: &Zoned, hour: i8, zone: &TimeZone) -> Option<Zoned> {
    civil::date(t.year(), t.month(), t.day())
        .at(hour, 0, 0, 0)
        .to_zoned(zone.clone())
        .ok()
}

/// `SpecSchedule.Next`: walk month, day, hour, minute and second forward until every
/// field matches, restarting from the month whenever a field wraps around. Wall-clock
/// steps (months, days) keep the local time; hours and minutes are added as elapsed time,
/// so a daylight-saving gap skips times that do not exist and a repeated hour is seen
/// twice — as in Go.
fn next_matching(fields: &Fields, after: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
    let floor = after.as_second() - i64::from(after.subsec_nanosecond() < 0);
    let mut t = Timestamp::from_second(floor.checked_add(1)?)
        .ok()?
        .to_zoned(zone.clone());
    let mut added = false;
    let year_limit = t.year() + 5;
    'wrap: loop {
        if t.year() > year_limit {
            return None;
        }
        while !has(fields.month, t.month()) {
            if !added {
                added = true;
                t = civil::date(t.year(), t.month(), 1)
                    .at(0, 0, 0, 0)
                    .to_zoned(zone.clone())
                    .ok()?;
            }
            t = t.checked_add(Span::new().months(1)).ok()?;
            if t.month() == 1 {
                continue 'wrap;
            }
        }
        while !day_matches(fields, &t) {
            if !added {
                added = true;
                t = at_hour(&t, 0, zone)?;
            }
            t = t.checked_add(Span::new().days(1)).ok()?;
            // Midnight may not exist on a daylight-saving day: land on it anyway.
            let hour = t.hour();
            if hour != 0 {
                let shift = if hour > 12 { 24 - hour } else { -hour };
                t = t.checked_add(Span::new().hours(shift)).ok()?;
            }
            if t.day() == 1 {
                continue 'wrap;
            }
        }
        while !has(fields.hour, t.hour()) {
            if !added {
                added = true;
                t = at_hour(&t, t.hour(), zone)?;
            }
            t = t.checked_add(Span::new().hours(1)).ok()?;
            if t.hour() == 0 {
                continue 'wrap;
            }
        }
        while !has(fields.minute, t.minute()) {
            if !added {
                added = true;
                let second = t.timestamp().as_second();
                t = Timestamp::from_second(second - second.rem_euclid(60))
                    .ok()?
                    .to_zoned(zone.clone());
            }
            t = t.checked_add(Span::new().minutes(1)).ok()?;
            if t.minute() == 0 {
                continue 'wrap;
            }
        }
        // The standard parser fixes the seconds field at 0.
        while t.second() != 0 {
            added = true;
            t = t.checked_add(Span::new().seconds(1)).ok()?;
            if t.second() == 0 {
                continue 'wrap;
            }
        }
        return Some(t.timestamp());
    }
}
