//! The trigger settings: what starts a run in `serve` (the cron schedule, the
//! start-up run, the file watcher and its debounce) and how long an unchanged
//! file may go without being compared with the table (docs/sync.md#edits-outside-the-agent).

use super::parse::{bool_or, duration_or};
use super::sources::Raw;
use super::{invalid, var, ConfigError};
use robfig_cron::Schedule;
use std::time::Duration;

/// Without the write counter on `followers`, an unchanged file is compared with
/// the table at most this long after the last comparison
/// (docs/sync.md#edits-outside-the-agent).
pub const DEFAULT_VERIFY_EVERY: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug)]
pub struct TriggerSettings {
    pub cron_schedule: Schedule,
    pub run_on_start: bool,
    pub watch: bool,
    pub watch_debounce: Duration,
    pub watch_poll: bool,
    /// `VERIFY_EVERY`: where `followers` has no write counter, how long a run may
    /// trust that the table is what the last sync left (docs/sync.md#edits-outside-the-agent).
    pub verify_every: Duration,
}

impl TriggerSettings {
    pub(super) fn from_raw(raw: &Raw) -> Result<Self, ConfigError> {
        Ok(Self {
            cron_schedule: cron_schedule(raw)?,
            run_on_start: bool_or(raw, var::RUN_ON_START, true)?,
            watch: bool_or(raw, var::WATCH, true)?,
            watch_debounce: duration_or(raw, var::WATCH_DEBOUNCE, Duration::from_secs(2))?,
            watch_poll: bool_or(raw, var::WATCH_POLL, false)?,
            verify_every: duration_or(raw, var::VERIFY_EVERY, DEFAULT_VERIFY_EVERY)?,
        })
    }
}

fn cron_schedule(raw: &Raw) -> Result<Schedule, ConfigError> {
    let expression = raw
        .get(var::CRON_SCHEDULE)
        .unwrap_or("@every 24h")
        .trim()
        .to_owned();
    Schedule::parse(&expression).map_err(|e| {
        invalid(
            var::CRON_SCHEDULE,
            &expression,
            format!("{e} (robfig/cron v3 standard syntax)"),
        )
    })
}
