//! Logging for the plugin process: events to stderr, nothing more. A plugin
//! lives a few milliseconds and logs almost nothing, so it does not pay for
//! a full subscriber (span registry, filter directives) at every start.

use std::fmt::Write as _;
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Installs the stderr logger as the process's default subscriber. The
/// level is the first plain level (`error`, `warn`, `info`, `debug`,
/// `trace`, `off`) named in `PODWIRE_LOG`, else `default`; per-target
/// directives of the full command-line syntax are ignored here.
pub fn init(default: Level) {
    let level = std::env::var("PODWIRE_LOG")
        .ok()
        .and_then(|text| level_of(&text))
        .unwrap_or(Some(default));
    let _ = tracing::subscriber::set_global_default(Stderr { max: level });
}

/// The first plain level in a `PODWIRE_LOG` value: Some(None) is `off`.
fn level_of(text: &str) -> Option<Option<Level>> {
    text.split(',')
        .find_map(|part| match part.trim().to_ascii_lowercase().as_str() {
            "off" => Some(None),
            "error" => Some(Some(Level::ERROR)),
            "warn" => Some(Some(Level::WARN)),
            "info" => Some(Some(Level::INFO)),
            "debug" => Some(Some(Level::DEBUG)),
            "trace" => Some(Some(Level::TRACE)),
            _ => None,
        })
}

struct Stderr {
    /// None: nothing is logged.
    max: Option<Level>,
}

impl Subscriber for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.max.is_some_and(|max| *metadata.level() <= max)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(match self.max {
            Some(level) => tracing::level_filters::LevelFilter::from_level(level),
            None => tracing::level_filters::LevelFilter::OFF,
        })
    }

    // Spans carry nothing a plugin's log needs; every span is the same one.
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = format!("{:>5} ", event.metadata().level());
        event.record(&mut Line(&mut line));
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// Writes the message, then the other fields as `name=value`.
struct Line<'a>(&'a mut String);

impl Visit for Line<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_plain_level_wins() {
        assert_eq!(level_of("debug"), Some(Some(Level::DEBUG)));
        assert_eq!(level_of("kube=off, WARN"), Some(Some(Level::WARN)));
        assert_eq!(level_of("off"), Some(None));
        assert_eq!(level_of("podwire=debug"), None);
        assert_eq!(level_of(""), None);
    }

    #[test]
    fn events_become_one_line_with_their_fields() {
        let mut line = String::new();
        let mut visit = Line(&mut line);
        let fields = tracing::field::FieldSet::new(
            &["message", "code"],
            tracing::callsite::Identifier(&CALLSITE),
        );
        let mut names = fields.iter();
        let (message, code) = (names.next().unwrap(), names.next().unwrap());
        visit.record_str(&message, "corrupt record");
        visit.record_debug(&code, &5);
        assert_eq!(line, "corrupt record code=5");
    }

    struct Callsite;
    static CALLSITE: Callsite = Callsite;
    impl tracing::Callsite for Callsite {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unimplemented!()
        }
    }
}
