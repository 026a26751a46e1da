//! Cron schedules compatible with robfig/cron v3's standard parser, and Go's
//! duration syntax (`time.ParseDuration`, [`go_duration`]) that `@every` uses.
//!
//! The agent is configured with the same schedule strings a Go deployment
//! using `github.com/robfig/cron/v3` (`cron.ParseStandard`) would accept,
//! and must fire at the same instants. This module provides:
//!
//! * [`Schedule`]: a parsed schedule (five-field crontab line, descriptor
//!   such as `@daily`, or `@every <go duration>`), optionally prefixed with
//!   `CRON_TZ=<IANA zone> ` or `TZ=<IANA zone> `;
//! * [`Schedule::next_after`]: robfig's `Next` algorithm, computed on the
//!   wall clock of the schedule's zone, DST behaviour included;
//! * [`CronError`] / [`FieldError`]: why an expression was rejected.
//!
//! Without a zone prefix a schedule runs in the process's local zone, as
//! robfig's does (`time.Local`): see [`local_zone`]. Use
//! [`Schedule::parse_with_default_zone`] to pick that zone explicitly.
//!
//! The accepted language is documented in `parse.rs`, the search algorithm
//! in `spec.rs`, and the Go time semantics it depends on in `gotime.rs`.

pub mod go_duration;
mod gotime;
mod parse;
mod spec;
#[cfg(test)]
mod tests;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use thiserror::Error;

use crate::go_duration::GoDurationError;
use spec::{ConstantDelay, SpecSchedule};

/// Why one field of a cron expression is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FieldError {
    /// A value is neither a number nor (for month and day of week) a name.
    #[error("failed to parse int from {text:?}")]
    NotANumber {
        /// The offending text.
        text: String,
    },
    /// A step was written as a negative number.
    #[error("negative number not allowed: {text:?}")]
    NegativeNumber {
        /// The offending text.
        text: String,
    },
    /// More than one `-` in a range.
    #[error("too many hyphens in {expr:?}")]
    TooManyHyphens {
        /// The offending range.
        expr: String,
    },
    /// More than one `/` in a range.
    #[error("too many slashes in {expr:?}")]
    TooManySlashes {
        /// The offending range.
        expr: String,
    },
    /// A value lies outside the field's bounds.
    #[error("value {value} out of range {min}-{max}")]
    OutOfRange {
        /// The value given.
        value: u64,
        /// The smallest allowed value.
        min: u64,
        /// The largest allowed value.
        max: u64,
    },
    /// A range starts after it ends.
    #[error("beginning of range ({start}) beyond end of range ({end})")]
    StartAfterEnd {
        /// First value of the range.
        start: u64,
        /// Last value of the range.
        end: u64,
    },
    /// A step of zero.
    #[error("step of range should be a positive number in {expr:?}")]
    ZeroStep {
        /// The offending range.
        expr: String,
    },
}

/// Why a cron expression was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CronError {
    /// The expression is the empty string.
    #[error("empty spec string")]
    Empty,
    /// `TZ=...`/`CRON_TZ=...` is not followed by a space and a schedule.
    #[error("time zone prefix in {spec:?} must be followed by a space and a schedule")]
    MissingSpaceAfterZone {
        /// The expression as given.
        spec: String,
    },
    /// The zone named by `TZ=`/`CRON_TZ=` is not a known IANA zone.
    #[error("unknown time zone {zone:?} in {spec:?}")]
    UnknownZone {
        /// The zone name.
        zone: String,
        /// The expression as given.
        spec: String,
    },
    /// The expression does not have the right number of fields.
    #[error(
        "expected exactly {expected} fields (minute hour day-of-month month day-of-week), found {found} in {spec:?}"
    )]
    FieldCount {
        /// How many fields are needed.
        expected: usize,
        /// How many were found.
        found: usize,
        /// The expression as given.
        spec: String,
    },
    /// An `@...` word that is not a known descriptor.
    #[error(
        "unrecognized descriptor {descriptor:?} (expected @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or @every <duration>)"
    )]
    UnknownDescriptor {
        /// The descriptor as given.
        descriptor: String,
    },
    /// `@every` with an invalid Go duration.
    #[error("failed to parse duration in {descriptor:?}: {error}")]
    EveryDuration {
        /// The descriptor as given.
        descriptor: String,
        /// What is wrong with the duration.
        error: GoDurationError,
    },
    /// One field is invalid.
    #[error("field {position} ({name}) {value:?}: {reason}")]
    Field {
        /// 1-based position of the field.
        position: usize,
        /// Name of the field ("minute", "hour", "day of month", "month",
        /// "day of week").
        name: &'static str,
        /// The field's text.
        value: String,
        /// What is wrong with it.
        reason: FieldError,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScheduleKind {
    Spec(SpecSchedule),
    Every(ConstantDelay),
}

/// A parsed cron schedule (robfig/cron v3 standard-parser syntax) bound to
/// a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    source: String,
    kind: ScheduleKind,
    zone: Tz,
    warnings: Vec<String>,
}

impl Schedule {
    /// Parses `expr` with robfig/cron's standard parser rules. Without a
    /// `TZ=`/`CRON_TZ=` prefix the schedule uses [`local_zone`].
    ///
    /// # Errors
    ///
    /// Returns a [`CronError`] for every expression robfig's
    /// `cron.ParseStandard` rejects.
    pub fn parse(expr: &str) -> Result<Schedule, CronError> {
        let mut schedule = Schedule::parse_with_default_zone(expr, local_zone())?;
        let (_, prefixed) = parse::strip_zone_prefix(expr);
        let every = matches!(schedule.kind, ScheduleKind::Every(_));
        if !prefixed && !every {
            schedule.warnings.extend(local_zone_problem());
        }
        Ok(schedule)
    }

    /// Like [`Schedule::parse`], but a schedule without a zone prefix (or
    /// with `TZ=Local`) uses `default_zone`.
    ///
    /// # Errors
    ///
    /// As [`Schedule::parse`].
    pub fn parse_with_default_zone(expr: &str, default_zone: Tz) -> Result<Schedule, CronError> {
        let (kind, zone) = parse::parse_spec(expr, default_zone, false)?;
        let warnings = parse::every_below_one_second(expr)
            .map(|d| {
                format!("\"@every {d}\" is below one second: it runs every second (as robfig/cron does); write the interval you mean, e.g. @every 1m")
            })
            .into_iter()
            .collect();
        Ok(Schedule {
            source: expr.to_owned(),
            kind,
            zone,
            warnings,
        })
    }

    /// What about this schedule probably is not what its author meant: an
    /// `@every` below one second, or a `TZ` that names no known zone (the
    /// schedule then follows UTC). `serve` logs them at start-up and
    /// `schedule` prints them.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The zone whose wall clock the schedule follows. (`@every` schedules
    /// do not depend on it; it is still the zone from the prefix or the
    /// default.)
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The first activation strictly after `t`, or `None` if there is none
    /// within robfig's search horizon (five years for crontab schedules)
    /// or within the range of representable times.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            ScheduleKind::Spec(spec) => spec.next(self.zone, t),
            ScheduleKind::Every(every) => every.next(t),
        }
    }

    /// Up to `count` successive activations after `from`, in the schedule's
    /// zone; fewer if the schedule runs out.
    pub fn upcoming(&self, from: DateTime<Utc>, count: usize) -> Vec<DateTime<Tz>> {
        let mut out = Vec::with_capacity(count.min(1024));
        let mut t = from;
        while out.len() < count {
            let Some(next) = self.next_after(t) else {
                break;
            };
            out.push(next.with_timezone(&self.zone));
            t = next;
        }
        out
    }
}

/// The expression as written (the source text the schedule was parsed from).
impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

/// The process's local time zone, resolved like Go's `time.Local` on Unix:
/// the `TZ` environment variable if set (an empty value means UTC, a
/// leading `:` is ignored, an absolute path into a `zoneinfo` directory is
/// read as the zone name after it), otherwise the system zone. Anything
/// that cannot be resolved to an IANA zone falls back to UTC.
pub fn local_zone() -> Tz {
    local_zone_checked().unwrap_or(Tz::UTC)
}

/// Why the local zone fell back to UTC, naming the value: `TZ` (or the
/// system's zone) is set to something that is not a known IANA zone name,
/// such as a POSIX rule (`CET-1CEST,M3.5.0,M10.5.0/3`), which Go's
/// `time.Local`, and so the old service, also read as UTC.
pub fn local_zone_problem() -> Option<String> {
    if local_zone_checked().is_some() {
        return None;
    }
    let fix = "schedules without a CRON_TZ= prefix run in UTC; set TZ to an IANA zone name such as Europe/Berlin, or prefix CRON_SCHEDULE with CRON_TZ=Europe/Berlin";
    Some(match std::env::var_os("TZ") {
        Some(value) => format!(
            "TZ={:?} is not a known time zone name (POSIX TZ rules are not supported): {fix}",
            value.to_string_lossy()
        ),
        // No system zone configured at all (no /etc/localtime): UTC, as meant.
        None => format!(
            "the system time zone ({}) is not a known time zone name: {fix}",
            iana_time_zone::get_timezone().ok()?
        ),
    })
}

/// The local zone, or `None` when what names it cannot be resolved.
fn local_zone_checked() -> Option<Tz> {
    match std::env::var("TZ") {
        Ok(value) => tz_env_zone(&value),
        Err(std::env::VarError::NotPresent) => system_zone(),
        Err(std::env::VarError::NotUnicode(_)) => None,
    }
}

fn system_zone() -> Option<Tz> {
    iana_time_zone::get_timezone()
        .ok()
        .and_then(|name| name.parse().ok())
}

/// The zone `TZ=value` selects, UTC when it names none.
#[cfg(test)]
fn zone_from_tz_env(value: &str) -> Tz {
    tz_env_zone(value).unwrap_or(Tz::UTC)
}

fn tz_env_zone(value: &str) -> Option<Tz> {
    let value = value.strip_prefix(':').unwrap_or(value);
    if value.is_empty() {
        return Some(Tz::UTC);
    }
    if value.starts_with('/') {
        if value == "/etc/localtime" {
            return system_zone();
        }
        return value
            .split_once("/zoneinfo/")
            .and_then(|(_, name)| name.parse().ok());
    }
    value.parse().ok()
}

#[cfg(test)]
mod warning_tests {
    use super::*;

    #[test]
    fn every_below_one_second_is_warned_about() {
        for expr in [
            "@every 0s",
            "@every -5m",
            "@every 500ms",
            "TZ=UTC @every 0s",
        ] {
            let s = Schedule::parse_with_default_zone(expr, Tz::UTC).unwrap();
            assert_eq!(s.next_after(DateTime::UNIX_EPOCH).unwrap().timestamp(), 1);
            let w = s.warnings().join(" ");
            assert!(
                w.contains("every second") && w.contains(&expr[expr.find('@').unwrap()..]),
                "{expr}: {w}"
            );
        }
        for expr in ["@every 1s", "@every 1h", "@daily", "*/5 * * * *"] {
            let s = Schedule::parse_with_default_zone(expr, Tz::UTC).unwrap();
            assert!(s.warnings().is_empty(), "{expr}: {:?}", s.warnings());
        }
    }

    #[test]
    fn a_schedule_displays_as_written() {
        for expr in ["CRON_TZ=Europe/Berlin 0 */6 * * *", "@every 90m", "@daily"] {
            assert_eq!(Schedule::parse(expr).unwrap().to_string(), expr);
        }
    }

    #[test]
    fn posix_rules_and_unknown_names_are_not_zones() {
        for value in [
            "CET-1CEST,M3.5.0,M10.5.0/3",
            "Mars/Olympus",
            "/nowhere",
            "<+03>-3",
        ] {
            assert_eq!(tz_env_zone(value), None, "{value}");
        }
        for value in ["", "UTC", "Europe/Berlin", ":America/New_York", "EST5EDT"] {
            assert!(tz_env_zone(value).is_some(), "{value}");
        }
    }
}
