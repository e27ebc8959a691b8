//! Container logs in the CRI format runtimes write and kubelet reads: one
//! record per line, `<RFC 3339 time> <stdout|stderr> <F|P> <text>`, P for
//! a piece of a line longer than [`MAX_RECORD`]. The shim writes them; the
//! kubelet's `/containerLogs` renders them as `kubectl logs` asks
//! (timestamps, tailLines, sinceTime/sinceSeconds, limitBytes). Pure apart
//! from the types, unit-tested.

use k8s_openapi::jiff::Timestamp;

/// The longest text of one record; longer lines are split (as containerd's
/// 16 KiB pieces).
pub const MAX_RECORD: usize = 16 * 1024;

/// One log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub text: &'a [u8],
}

/// One record as a line of the log file.
pub fn format_record(time: Timestamp, stream: &str, partial: bool, text: &[u8]) -> Vec<u8> {
    let mut line = format!("{time} {stream} {} ", if partial { 'P' } else { 'F' }).into_bytes();
    line.extend_from_slice(text);
    line.push(b'\n');
    line
}

/// Splits `buffered` (what a stream produced since the last call, with any
/// unfinished line kept by the caller) into records: complete lines, and
/// pieces of [`MAX_RECORD`] of a longer one. Returns the records' texts
/// with their partial flag, and how many bytes were consumed.
pub fn split_records(buffered: &[u8], at_eof: bool) -> (Vec<(&[u8], bool)>, usize) {
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let rest = &buffered[start..];
        if let Some(nl) = rest.iter().take(MAX_RECORD + 1).position(|b| *b == b'\n') {
            out.push((&rest[..nl], false));
            start += nl + 1;
        } else if rest.len() > MAX_RECORD {
            out.push((&rest[..MAX_RECORD], true));
            start += MAX_RECORD;
        } else if at_eof && !rest.is_empty() {
            out.push((rest, false));
            start = buffered.len();
        } else {
            return (out, start);
        }
    }
}

/// Parses one line of a log file (without its newline).
pub fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or_default();
    Some(Record {
        time,
        stream,
        partial: tag == b"P",
        text,
    })
}

/// What `kubectl logs` asks for (the kubelet's query parameters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub limit_bytes: Option<usize>,
    pub since: Option<Timestamp>,
}

impl LogOptions {
    /// From a query string (`follow=true&tailLines=10&...`); an error names
    /// the bad parameter.
    pub fn from_query(query: &str, now: Timestamp) -> Result<LogOptions, String> {
        let mut o = LogOptions::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
            let v = percent_decode(v);
            let bad = || format!("invalid value {v:?} for {k}");
            let flag = |v: &str| v == "true" || v == "1";
            match k {
                "follow" => o.follow = flag(&v),
                "previous" => o.previous = flag(&v),
                "timestamps" => o.timestamps = flag(&v),
                "tailLines" => o.tail_lines = Some(v.parse().map_err(|_| bad())?),
                "limitBytes" => o.limit_bytes = Some(v.parse().map_err(|_| bad())?),
                "sinceSeconds" => {
                    let secs: i64 = v.parse().map_err(|_| bad())?;
                    o.since = Some(
                        now.checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(secs))
                            .map_err(|_| bad())?,
                    );
                }
                "sinceTime" => o.since = Some(v.parse().map_err(|_| bad())?),
                _ => {}
            }
        }
        Ok(o)
    }
}

/// Decodes a query value (%XX and +).
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Renders records as `kubectl logs` shows them: the text (a newline after
/// each complete line), each record prefixed with its time when asked,
/// records before `since` left out.
pub fn render_records<'a>(
    records: impl Iterator<Item = Record<'a>>,
    options: &LogOptions,
) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        if let Some(since) = options.since
            && r.time.parse::<Timestamp>().is_ok_and(|t| t < since)
        {
            continue;
        }
        if options.timestamps {
            out.extend_from_slice(r.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(r.text);
        if !r.partial {
            out.push(b'\n');
        }
    }
    out
}

/// A whole log file rendered: the last `tailLines` records, `since`
/// applied, cut at `limitBytes`.
pub fn render_file(data: &[u8], options: &LogOptions) -> Vec<u8> {
    let lines: Vec<&[u8]> = data
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let skip = options
        .tail_lines
        .map(|n| lines.len().saturating_sub(n))
        .unwrap_or(0);
    let mut out = render_records(
        lines[skip..].iter().filter_map(|l| parse_record(l)),
        options,
    );
    if let Some(limit) = options.limit_bytes {
        out.truncate(limit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn file(lines: &[(i64, &str, bool, &str)]) -> Vec<u8> {
        lines
            .iter()
            .flat_map(|(t, s, p, text)| format_record(at(*t), s, *p, text.as_bytes()))
            .collect()
    }

    #[test]
    fn records_round_trip_and_render() {
        let data = file(&[
            (0, "stdout", false, "hello"),
            (1, "stderr", true, "par"),
            (1, "stderr", false, "tial"),
            (2, "stdout", false, "with spaces  inside"),
        ]);
        let plain = render_file(&data, &LogOptions::default());
        assert_eq!(plain, b"hello\npartial\nwith spaces  inside\n");
        let tail = render_file(
            &data,
            &LogOptions {
                tail_lines: Some(1),
                timestamps: true,
                ..Default::default()
            },
        );
        assert_eq!(
            String::from_utf8(tail).unwrap(),
            format!("{} with spaces  inside\n", at(2))
        );
        let since = render_file(
            &data,
            &LogOptions {
                since: Some(at(1)),
                limit_bytes: Some(4),
                ..Default::default()
            },
        );
        assert_eq!(since, b"part");
    }

    #[test]
    fn long_lines_are_split_and_eof_flushes() {
        let long = vec![b'x'; MAX_RECORD + 10];
        let mut input = long.clone();
        input.extend_from_slice(b"\nab");
        let (records, used) = split_records(&input, false);
        assert_eq!(records.len(), 2);
        assert!(records[0].1 && !records[1].1);
        assert_eq!(records[1].0.len(), 10);
        assert_eq!(&input[used..], b"ab");
        let (records, used) = split_records(b"ab", true);
        assert_eq!((records, used), (vec![(&b"ab"[..], false)], 2));
    }

    #[test]
    fn query_parameters() {
        let now = at(100);
        let o = LogOptions::from_query(
            "follow=true&tailLines=5&limitBytes=100&timestamps=true&previous=true&sinceSeconds=10",
            now,
        )
        .unwrap();
        assert!(o.follow && o.previous && o.timestamps);
        assert_eq!((o.tail_lines, o.limit_bytes), (Some(5), Some(100)));
        assert_eq!(o.since, Some(at(90)));
        let o = LogOptions::from_query("sinceTime=2023-11-14T22%3A13%3A20Z", now).unwrap();
        assert_eq!(o.since, Some(at(0)));
        assert!(LogOptions::from_query("tailLines=x", now).is_err());
    }
}
