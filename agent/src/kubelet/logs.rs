//! Container logs in the CRI format containerd writes (`<RFC 3339 time> <stream> <P|F> <text>`),
//! read back as `kubectl logs` shows them: the text only (or with the time for
//! `--timestamps`), partial lines joined, `--tail`, `--since`/`--since-time` and `--limit-bytes`
//! applied. Pure.

use k8s_openapi::jiff::Timestamp;

/// What `kubectl logs` asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub since: Option<Timestamp>,
    pub limit_bytes: Option<usize>,
}

impl LogOptions {
    /// From the kubelet's query parameters (`follow`, `previous`, `timestamps`, `tailLines`,
    /// `sinceSeconds`, `sinceTime`, `limitBytes`), relative to `now`.
    pub fn from_query(query: &str, now: Timestamp) -> Result<LogOptions, String> {
        let mut options = LogOptions::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
            let value = percent_decode(value);
            let flag = || matches!(value.as_str(), "true" | "1");
            let number = || {
                value
                    .parse::<i64>()
                    .map_err(|_| format!("invalid {key}: {value:?}"))
            };
            match key {
                "follow" => options.follow = flag(),
                "previous" => options.previous = flag(),
                "timestamps" => options.timestamps = flag(),
                "tailLines" => {
                    options.tail_lines = Some(usize::try_from(number()?.max(0)).unwrap_or(0))
                }
                "limitBytes" => {
                    options.limit_bytes = Some(usize::try_from(number()?.max(1)).unwrap_or(1))
                }
                "sinceSeconds" => {
                    let seconds = number()?;
                    options.since = now
                        .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(seconds))
                        .ok();
                }
                "sinceTime" => {
                    options.since = Some(
                        value
                            .parse()
                            .map_err(|_| format!("invalid sinceTime: {value:?}"))?,
                    )
                }
                _ => {}
            }
        }
        Ok(options)
    }
}

/// Decodes `%XX` escapes and `+` of a query value.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One record of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub text: &'a str,
}

/// Parses one line of a CRI log file.
pub fn parse(line: &str) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, ' ');
    let time = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or("");
    Some(Record {
        time,
        stream,
        partial: tag.split(':').next() == Some("P"),
        text,
    })
}

/// Renders the records of `content` (whole lines only) per `options`, except following.
pub fn render(content: &str, options: &LogOptions) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut pending = String::new();
    let mut pending_time = String::new();
    for line in content.lines() {
        let Some(record) = parse(line) else { continue };
        if let Some(since) = options.since {
            if record.time.parse::<Timestamp>().is_ok_and(|t| t < since) {
                continue;
            }
        }
        if pending.is_empty() {
            pending_time = record.time.to_string();
        }
        pending.push_str(record.text);
        if !record.partial {
            let text = std::mem::take(&mut pending);
            lines.push(if options.timestamps {
                format!("{pending_time} {text}\n")
            } else {
                format!("{text}\n")
            });
        }
    }
    if let Some(tail) = options.tail_lines {
        let skip = lines.len().saturating_sub(tail);
        lines.drain(..skip);
    }
    let mut out: String = lines.concat();
    if let Some(limit) = options.limit_bytes {
        if out.len() > limit {
            let mut cut = limit;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LOG: &str = "2026-01-01T00:00:01.000000000Z stdout F one\n2026-01-01T00:00:02.000000000Z stderr P tw\n2026-01-01T00:00:02.500000000Z stderr F o\n2026-01-01T00:00:03.000000000Z stdout F three\n";

    #[test]
    fn records_become_lines_with_partials_joined() {
        assert_eq!(render(LOG, &LogOptions::default()), "one\ntwo\nthree\n");
        let stamped = LogOptions {
            timestamps: true,
            ..LogOptions::default()
        };
        assert!(render(LOG, &stamped).starts_with("2026-01-01T00:00:01.000000000Z one\n"));
    }

    #[test]
    fn tail_since_and_limit_apply() {
        assert_eq!(
            render(
                LOG,
                &LogOptions {
                    tail_lines: Some(1),
                    ..LogOptions::default()
                }
            ),
            "three\n"
        );
        let since = LogOptions {
            since: Some("2026-01-01T00:00:02Z".parse().unwrap()),
            ..LogOptions::default()
        };
        assert_eq!(render(LOG, &since), "two\nthree\n");
        assert_eq!(
            render(
                LOG,
                &LogOptions {
                    limit_bytes: Some(5),
                    ..LogOptions::default()
                }
            ),
            "one\nt"
        );
    }

    #[test]
    fn query_parameters_are_read() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let options = LogOptions::from_query(
            "follow=true&tailLines=10&sinceSeconds=30&timestamps=true",
            now,
        )
        .unwrap();
        assert!(options.follow && options.timestamps);
        assert_eq!(options.tail_lines, Some(10));
        assert_eq!(options.since, Some("2026-01-01T00:00:30Z".parse().unwrap()));
        let time = LogOptions::from_query("sinceTime=2026-01-01T00%3A00%3A10Z", now).unwrap();
        assert_eq!(time.since, Some("2026-01-01T00:00:10Z".parse().unwrap()));
        assert!(LogOptions::from_query("tailLines=x", now).is_err());
    }
}
