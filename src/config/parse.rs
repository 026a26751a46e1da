//! The value syntaxes the groups share (booleans, whole numbers, Go durations),
//! each read from the layered values with its default; an invalid value is a
//! `ConfigError::Invalid` naming the variable, the value and the rule.

use super::sources::Raw;
use super::{invalid, ConfigError};
use robfig_cron::go_duration::parse_go_duration;
use std::time::Duration;

pub(super) fn parse_bool(var: &'static str, raw: &str) -> Result<bool, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(
            var,
            raw,
            "expected true or false (also 1/0, yes/no, on/off)",
        )),
    }
}

pub(super) fn parse_int<T>(var: &'static str, raw: &str, min: u64) -> Result<T, ConfigError>
where
    T: TryFrom<u64>,
{
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n >= min)
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| invalid(var, raw, format!("expected a whole number ≥ {min}")))
}

pub(super) fn parse_int_in(
    var: &'static str,
    raw: &str,
    min: u64,
    max: u64,
) -> Result<usize, ConfigError> {
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| {
            invalid(
                var,
                raw,
                format!("expected a whole number ≥ {min} and ≤ {max}"),
            )
        })
}

pub(super) fn parse_duration(var: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    parse_go_duration(raw.trim()).map_err(|e| {
        invalid(
            var,
            raw,
            format!("expected a Go duration such as 2s, 500ms or 1m30s ({e})"),
        )
    })
}

/// `var` read with `parse`, or `default` when it is unset.
fn parsed_or<T>(
    raw: &Raw,
    var: &'static str,
    default: T,
    parse: impl FnOnce(&'static str, &str) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    raw.get(var)
        .map(|v| parse(var, v))
        .transpose()
        .map(|v| v.unwrap_or(default))
}

pub(super) fn bool_or(raw: &Raw, var: &'static str, default: bool) -> Result<bool, ConfigError> {
    parsed_or(raw, var, default, parse_bool)
}

pub(super) fn duration_or(
    raw: &Raw,
    var: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    parsed_or(raw, var, default, parse_duration)
}

/// A whole number ≥ `min`, or `default` when unset.
pub(super) fn int_or<T>(
    raw: &Raw,
    var: &'static str,
    min: u64,
    default: T,
) -> Result<T, ConfigError>
where
    T: TryFrom<u64>,
{
    parsed_or(raw, var, default, |var, v| parse_int(var, v, min))
}
