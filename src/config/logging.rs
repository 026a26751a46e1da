//! The logging settings: `LOG_FORMAT` and `LOG_LEVEL` (`RUST_LOG`, when set, wins
//! over the level; see `telemetry`).

use super::sources::Raw;
use super::{invalid, var, ConfigError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// As `LOG_FORMAT` spells it.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggingSettings {
    pub format: LogFormat,
    /// One of trace, debug, info, warn, error.
    pub level: String,
}

impl LoggingSettings {
    pub(super) fn from_raw(raw: &Raw) -> Result<Self, ConfigError> {
        let format = match raw
            .get(var::LOG_FORMAT)
            .map(|v| v.trim().to_ascii_lowercase())
        {
            None => LogFormat::Text,
            Some(v) if v == "text" => LogFormat::Text,
            Some(v) if v == "json" => LogFormat::Json,
            Some(v) => return Err(invalid(var::LOG_FORMAT, &v, "expected text or json")),
        };
        let level = raw
            .get(var::LOG_LEVEL)
            .unwrap_or("info")
            .trim()
            .to_ascii_lowercase();
        if !matches!(
            level.as_str(),
            "trace" | "debug" | "info" | "warn" | "error"
        ) {
            return Err(invalid(
                var::LOG_LEVEL,
                &level,
                "expected trace, debug, info, warn or error",
            ));
        }
        Ok(Self { format, level })
    }
}
