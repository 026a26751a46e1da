//! Logging through tracing: text or JSON on stderr (stdout carries command output),
//! filtered by `RUST_LOG` when set, else by `LOG_LEVEL`.
//!
//! Lines for the operator that are not log events (a configuration error, a fatal
//! error, the verdict of `sync`) go through `report`, which writes them in the same
//! format: with `LOG_FORMAT=json` every line on stderr is one JSON object.

use crate::config::{LogFormat, Settings};
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use tracing::Level;
use tracing_subscriber::EnvFilter;

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

pub fn init(settings: &Settings) {
    let _ = FORMAT.set(settings.logging.format);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{},sqlx=warn,sea_orm=warn,sea_orm_migration=warn",
            settings.logging.level
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match settings.logging.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The log format before the settings are known (a configuration error): the
/// `--log-format` flag, else `LOG_FORMAT` from the environment (with `.env`
/// loaded as far as it could be). Anything but `json` is text.
pub fn init_early(flag: Option<&str>) {
    let raw = flag
        .map(str::to_owned)
        .or_else(|| std::env::var("LOG_FORMAT").ok());
    let json = raw.is_some_and(|v| v.trim().eq_ignore_ascii_case("json"));
    let _ = FORMAT.set(if json {
        LogFormat::Json
    } else {
        LogFormat::Text
    });
}

fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or(LogFormat::Text)
}

/// Whether stderr carries JSON lines.
pub fn is_json() -> bool {
    format() == LogFormat::Json
}

/// One line for the operator on stderr, whatever `LOG_LEVEL` says: text
/// `followers-etl: MESSAGE`, or with `LOG_FORMAT=json` an object with the keys of
/// the log events (`timestamp`, `level`, `message`, `target`). A closed stderr is
/// ignored.
pub fn report(level: Level, message: &str) {
    write_line(level, message, true);
}

/// Like `report`, but the text line is `MESSAGE` as it is (`check`'s per-line
/// findings, which start with the file name).
pub fn report_raw(level: Level, message: &str) {
    write_line(level, message, false);
}

fn write_line(level: Level, message: &str, prefix: bool) {
    let line = match format() {
        LogFormat::Json => serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": level.as_str(),
            "message": message,
            "target": "followers_etl",
        })
        .to_string(),
        LogFormat::Text if prefix => format!("followers-etl: {message}"),
        LogFormat::Text => message.to_owned(),
    };
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
