//! The mirrors of the settings (docs/mirrors.md): the built-in `followers`
//! mirror (from `CSV_FILE`, present whenever it is set) first, then the config
//! file's `[[mirror]]` tables, each parsed and validated once at load
//! (docs/configuration.md#mirrors).

use super::*;
use crate::mirror::{MirrorError, MirrorSpec};

/// The built-in mirror, when `CSV_FILE` is set (as given; `resolve_csv_file`
/// confines it when a command reads it).
pub(super) fn builtin(csv: &CsvSettings) -> Vec<MirrorSpec> {
    csv.file
        .as_deref()
        .map(MirrorSpec::followers)
        .into_iter()
        .collect()
}

/// The config file's `[[mirror]]` array (none: no key `mirror`), validated with
/// the built-in mirror: names unique and one table per mirror, `public.followers`
/// being the built-in mirror's also when `CSV_FILE` is unset.
pub(super) fn configured(file: &toml::Table) -> Result<Vec<MirrorSpec>, MirrorError> {
    let Some(value) = file.get(MIRROR_KEY) else {
        return Ok(Vec::new());
    };
    let specs = crate::mirror::parse_mirrors(value)?;
    let mut all = vec![MirrorSpec::followers(Path::new(""))];
    all.extend(specs.iter().cloned());
    crate::mirror::validate_set(&all)?;
    Ok(specs)
}

/// The config file's key of the mirrors' array of tables (`[[mirror]]`).
pub(super) const MIRROR_KEY: &str = "mirror";

/// One setting of a mirror with the value it runs with, for `followers-etl
/// mirrors`: the mirror's own (`from_mirror`) or else its variable's.
#[derive(Clone, Debug, PartialEq)]
pub struct EffectiveSetting {
    /// The `[[mirror]]` key.
    pub key: &'static str,
    /// The variable the value comes from when the mirror does not set it.
    pub var: &'static str,
    /// `null`: none (a `READY_MARKER` that is unset).
    pub value: serde_json::Value,
    pub from_mirror: bool,
}

impl Settings {
    /// Whether the config file has `[[mirror]]` tables (then summaries, events
    /// and metrics name their mirror: docs/mirrors.md#metrics-and-logs).
    pub fn has_configured_mirrors(&self) -> bool {
        self.mirrors
            .iter()
            .any(|m| m.name.as_str() != crate::mirror::MirrorName::FOLLOWERS)
    }

    /// Whether the built-in mirror `followers` runs (`CSV_FILE` is set).
    pub fn runs_builtin(&self) -> bool {
        self.mirrors
            .iter()
            .any(|m| m.name.as_str() == crate::mirror::MirrorName::FOLLOWERS)
    }

    /// The built-in mirror's name in its metrics' `mirror` label and its log
    /// events, once mirrors are configured; `None` without them.
    pub fn builtin_label(&self) -> Option<&'static str> {
        self.has_configured_mirrors()
            .then_some(crate::mirror::MirrorName::FOLLOWERS)
    }

    /// Every setting a mirror may override, with its effective value, in the
    /// order of docs/mirrors.md#keys-of-a-mirror.
    pub fn effective(&self, spec: &MirrorSpec) -> Vec<EffectiveSetting> {
        use serde_json::Value;
        let o = &spec.overrides;
        let format = &self.csv.format;
        let setting = |key, var, own: Option<Value>, default: Value| EffectiveSetting {
            key,
            var,
            from_mirror: own.is_some(),
            value: own.unwrap_or(default),
        };
        let delimiter = |d: u8| Value::from(char::from(d).to_string());
        let encoding =
            |e: Option<&'static encoding_rs::Encoding>| Value::from(e.map_or("auto", |e| e.name()));
        vec![
            setting(
                "schedule",
                var::CRON_SCHEDULE,
                spec.schedule.as_ref().map(|s| s.to_string().into()),
                self.triggers.cron_schedule.to_string().into(),
            ),
            setting(
                "max_delete_ratio",
                var::MAX_DELETE_RATIO,
                o.max_delete_ratio.map(Value::from),
                self.guard.max_delete_ratio.into(),
            ),
            setting(
                "max_rejects",
                var::MAX_REJECTS,
                o.max_rejects.map(Value::from),
                self.guard.max_rejects.into(),
            ),
            setting(
                "csv_delimiter",
                var::CSV_DELIMITER,
                o.csv_delimiter.map(delimiter),
                delimiter(format.delimiter),
            ),
            setting(
                "csv_header",
                var::CSV_HEADER,
                o.csv_header.map(|h| h.as_str().into()),
                format.header.as_str().into(),
            ),
            setting(
                "csv_encoding",
                var::CSV_ENCODING,
                o.csv_encoding.map(encoding),
                encoding(format.encoding),
            ),
            setting(
                "ready_marker",
                var::READY_MARKER,
                o.ready_marker.clone().map(Value::from),
                self.csv
                    .ready_marker
                    .clone()
                    .map_or(Value::Null, Value::from),
            ),
            setting(
                "journal_keep_runs",
                var::JOURNAL_KEEP_RUNS,
                o.journal_keep_runs.map(Value::from),
                self.retention.journal.keep_runs.into(),
            ),
        ]
    }
}
