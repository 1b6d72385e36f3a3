//! Log lines as engines expect them from a runc-compatible runtime.
//!
//! containerd and Docker pass `--log FILE --log-format json` and, when a command fails,
//! report the `msg` of the last line whose `level` is `error`. Text lines follow
//! runc's logfmt shape: `time="…" level=error msg="…"`.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::{Layer, Registry};

/// The `--log-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The `--log` file could not be opened for appending.
    #[error("cannot open log file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A global subscriber was already installed.
    #[error("logging was already initialised")]
    AlreadyInitialised,
}

/// Formats one log line (without the trailing newline).
pub fn format_line(format: LogFormat, level: Level, message: &str, time: &str) -> String {
    let level = level.as_str().to_ascii_lowercase();
    match format {
        LogFormat::Json => {
            serde_json::json!({ "level": level, "msg": message, "time": time }).to_string()
        }
        LogFormat::Text => {
            let escaped = message.replace('\\', "\\\\").replace('"', "\\\"");
            format!("time=\"{time}\" level={level} msg=\"{escaped}\"")
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Collects an event's message and its other fields into one line of text.
#[derive(Default)]
struct MessageVisitor {
    message: String,
    fields: String,
}

impl Visit for MessageVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

struct LineLayer {
    format: LogFormat,
    sink: Mutex<Box<dyn Write + Send>>,
}

impl<S: Subscriber> Layer<S> for LineLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut visitor = MessageVisitor::default();
        event.record(&mut visitor);
        let message = format!("{}{}", visitor.message, visitor.fields);
        let line = format_line(self.format, *event.metadata().level(), &message, &now());
        if let Ok(mut sink) = self.sink.lock() {
            // A log line that cannot be written must not fail the command itself.
            let _ = writeln!(sink, "{line}");
        }
    }
}

/// Where log lines go for this invocation.
pub struct LogSettings<'a> {
    pub file: Option<&'a Path>,
    pub format: LogFormat,
    pub debug: bool,
}

/// Installs the global subscriber. With `--log`, warnings and errors (everything with
/// `--debug`) go to the file; without it errors (everything with `--debug`) go to
/// stderr.
pub fn init(settings: &LogSettings<'_>) -> Result<(), LoggingError> {
    let (sink, level): (Box<dyn Write + Send>, LevelFilter) = match settings.file {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| LoggingError::Open {
                    path: path.to_path_buf(),
                    source,
                })?;
            let level = if settings.debug {
                LevelFilter::DEBUG
            } else {
                LevelFilter::WARN
            };
            (Box::new(file), level)
        }
        None if settings.debug => (Box::new(std::io::stderr()), LevelFilter::DEBUG),
        // Errors logged along the way often name the root cause (a failing rlimit, a
        // missing mount source) that the final message only summarises.
        None => (Box::new(std::io::stderr()), LevelFilter::ERROR),
    };
    let layer = LineLayer {
        format: settings.format,
        sink: Mutex::new(sink),
    }
    .with_filter(level);
    tracing::subscriber::set_global_default(Registry::default().with(layer))
        .map_err(|_| LoggingError::AlreadyInitialised)
}

/// Writes the command's final error where engines look for it: the log file as an
/// `error` line (whatever the level filter) and stderr as plain text.
pub fn report_error(settings: &LogSettings<'_>, message: &str) {
    if let Some(path) = settings.file {
        if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(
                file,
                "{}",
                format_line(settings.format, Level::ERROR, message, &now())
            );
        }
    }
    eprintln!("husk: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_have_level_msg_time() {
        let line = format_line(LogFormat::Json, Level::ERROR, "boom \"x\"", "T");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["level"], "error");
        assert_eq!(value["msg"], "boom \"x\"");
        assert_eq!(value["time"], "T");
    }

    #[test]
    fn text_lines_escape_quotes() {
        let line = format_line(LogFormat::Text, Level::WARN, "say \"hi\"", "T");
        assert_eq!(line, "time=\"T\" level=warn msg=\"say \\\"hi\\\"\"");
    }
}
