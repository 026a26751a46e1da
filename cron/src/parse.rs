//! Parsing of cron expressions, following robfig/cron v3's `ParseStandard`.
//!
//! The accepted language is exactly the one of robfig's standard parser
//! (`Minute | Hour | Dom | Month | Dow | Descriptor`), quirks included:
//!
//! * an optional `TZ=<zone> ` or `CRON_TZ=<zone> ` prefix, case-sensitive,
//!   at the very start; the zone name runs up to the first ASCII space, an
//!   empty name means UTC and `Local` means the default zone;
//! * descriptors (`@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
//!   `@midnight`, `@hourly`, `@every <go duration>`) must match exactly
//!   (case-sensitive, nothing trailing unless a zone prefix was trimmed);
//! * otherwise exactly five whitespace-separated fields; each field is a
//!   comma-separated list (empty items are skipped, so `,` is a field with no
//!   values at all) of `*`, `?`, `N`, `N-M`, each optionally `/step`;
//! * `N/step` means `N-max/step`; `*`/`?` only look at the part before the
//!   first `-`, so `*-5` is the same as `*`;
//! * numbers are Go `strconv.Atoi` numbers (an optional sign, then digits),
//!   must not be negative, and month and weekday names (`jan`..`dec`,
//!   `sun`..`sat`) are matched after Go's `strings.ToLower`;
//! * a field written with `*` or `?` and a step of at most 1 is remembered
//!   as "star", which switches the day-of-month/day-of-week rule from OR to
//!   AND (see `spec.rs`).
//!
//! Where Go would panic (a zone prefix without a following space) an error
//! is returned instead.

use chrono_tz::Tz;

use super::spec::{ConstantDelay, SpecSchedule};
use super::{CronError, FieldError, ScheduleKind};
use crate::go_duration::parse_go_duration_nanos;

/// Set in a field's bits when the field was written as `*` or `?` (with no
/// step, or a step of 1).
pub(crate) const STAR_BIT: u64 = 1 << 63;

/// The allowed values of one field, and its names if it has any.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub name: &'static str,
    pub min: u64,
    pub max: u64,
    pub names: &'static [(&'static str, u64)],
}

pub(crate) const SECONDS: Bounds = Bounds {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
};
pub(crate) const MINUTES: Bounds = Bounds {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
pub(crate) const HOURS: Bounds = Bounds {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
pub(crate) const DOM: Bounds = Bounds {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
pub(crate) const MONTHS: Bounds = Bounds {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        ("jan", 1),
        ("feb", 2),
        ("mar", 3),
        ("apr", 4),
        ("may", 5),
        ("jun", 6),
        ("jul", 7),
        ("aug", 8),
        ("sep", 9),
        ("oct", 10),
        ("nov", 11),
        ("dec", 12),
    ],
};
pub(crate) const DOW: Bounds = Bounds {
    name: "day of week",
    min: 0,
    max: 6,
    names: &[
        ("sun", 0),
        ("mon", 1),
        ("tue", 2),
        ("wed", 3),
        ("thu", 4),
        ("fri", 5),
        ("sat", 6),
    ],
};

/// Parses `spec` the way robfig's standard parser does (`with_seconds`
/// false), or with a leading seconds field, six fields in all, the way its
/// seconds parser does for six-field input (used by the tests, which are
/// transcribed from robfig's seconds-based tables).
pub(crate) fn parse_spec(
    spec: &str,
    default_zone: Tz,
    with_seconds: bool,
) -> Result<(ScheduleKind, Tz), CronError> {
    if spec.is_empty() {
        return Err(CronError::Empty);
    }

    let mut zone = default_zone;
    let mut rest = spec;
    if rest.starts_with("TZ=") || rest.starts_with("CRON_TZ=") {
        let space = rest
            .find(' ')
            .ok_or_else(|| CronError::MissingSpaceAfterZone {
                spec: spec.to_owned(),
            })?;
        // Both prefixes contain '=' before any space.
        let eq = rest.find('=').unwrap_or(0);
        let name = &rest[eq + 1..space];
        zone = load_location(name, default_zone).ok_or_else(|| CronError::UnknownZone {
            zone: name.to_owned(),
            spec: spec.to_owned(),
        })?;
        rest = rest[space..].trim();
    }

    if rest.starts_with('@') {
        return parse_descriptor(rest).map(|kind| (kind, zone));
    }

    let fields: Vec<&str> = rest.split_whitespace().collect();
    let layout: &[Bounds] = if with_seconds {
        &[SECONDS, MINUTES, HOURS, DOM, MONTHS, DOW]
    } else {
        &[MINUTES, HOURS, DOM, MONTHS, DOW]
    };
    if fields.len() != layout.len() {
        return Err(CronError::FieldCount {
            expected: layout.len(),
            found: fields.len(),
            spec: spec.to_owned(),
        });
    }

    let mut bits = [0_u64; 6];
    for (position, (field, bounds)) in fields.iter().zip(layout).enumerate() {
        bits[position] = get_field(field, bounds).map_err(|reason| CronError::Field {
            position: position + 1,
            name: bounds.name,
            value: (*field).to_owned(),
            reason,
        })?;
    }
    let schedule = if with_seconds {
        SpecSchedule {
            second: bits[0],
            minute: bits[1],
            hour: bits[2],
            dom: bits[3],
            month: bits[4],
            dow: bits[5],
        }
    } else {
        SpecSchedule {
            // The standard parser fills in "0" for the seconds field.
            second: 1 << SECONDS.min,
            minute: bits[0],
            hour: bits[1],
            dom: bits[2],
            month: bits[3],
            dow: bits[4],
        }
    };
    Ok((ScheduleKind::Spec(schedule), zone))
}

/// Go's `time.LoadLocation` as far as chrono-tz can follow it.
fn load_location(name: &str, default_zone: Tz) -> Option<Tz> {
    match name {
        "" | "UTC" => Some(Tz::UTC),
        "Local" => Some(default_zone),
        _ => name.parse::<Tz>().ok(),
    }
}

/// The predefined schedules, and `@every <duration>`.
fn parse_descriptor(descriptor: &str) -> Result<ScheduleKind, CronError> {
    let first = |b: &Bounds| 1_u64 << b.min;
    let spec = |minute, hour, dom, month, dow| {
        ScheduleKind::Spec(SpecSchedule {
            second: first(&SECONDS),
            minute,
            hour,
            dom,
            month,
            dow,
        })
    };
    let kind = match descriptor {
        "@yearly" | "@annually" => spec(
            first(&MINUTES),
            first(&HOURS),
            first(&DOM),
            first(&MONTHS),
            all_bits(&DOW),
        ),
        "@monthly" => spec(
            first(&MINUTES),
            first(&HOURS),
            first(&DOM),
            all_bits(&MONTHS),
            all_bits(&DOW),
        ),
        "@weekly" => spec(
            first(&MINUTES),
            first(&HOURS),
            all_bits(&DOM),
            all_bits(&MONTHS),
            first(&DOW),
        ),
        "@daily" | "@midnight" => spec(
            first(&MINUTES),
            first(&HOURS),
            all_bits(&DOM),
            all_bits(&MONTHS),
            all_bits(&DOW),
        ),
        "@hourly" => spec(
            first(&MINUTES),
            all_bits(&HOURS),
            all_bits(&DOM),
            all_bits(&MONTHS),
            all_bits(&DOW),
        ),
        _ => {
            let Some(duration) = descriptor.strip_prefix("@every ") else {
                return Err(CronError::UnknownDescriptor {
                    descriptor: descriptor.to_owned(),
                });
            };
            let nanos =
                parse_go_duration_nanos(duration).map_err(|error| CronError::EveryDuration {
                    descriptor: descriptor.to_owned(),
                    error,
                })?;
            ScheduleKind::Every(ConstantDelay::from_go_nanos(nanos))
        }
    };
    Ok(kind)
}

/// The schedule part of `spec` after any `TZ=`/`CRON_TZ=` prefix, and
/// whether there was one.
pub(crate) fn strip_zone_prefix(spec: &str) -> (&str, bool) {
    if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
        let rest = spec.split_once(' ').map_or("", |(_, rest)| rest);
        (rest.trim(), true)
    } else {
        (spec, false)
    }
}

/// For `@every D` with D below one second (zero and negative included), the
/// duration as written: robfig runs such a schedule every second.
pub(crate) fn every_below_one_second(spec: &str) -> Option<&str> {
    let duration = strip_zone_prefix(spec).0.strip_prefix("@every ")?;
    let nanos = parse_go_duration_nanos(duration).ok()?;
    (nanos < 1_000_000_000).then_some(duration)
}

/// The bits of a field: a comma-separated list of ranges. Empty list items
/// are ignored (Go's `strings.FieldsFunc`).
pub(crate) fn get_field(field: &str, bounds: &Bounds) -> Result<u64, FieldError> {
    let mut bits = 0;
    for expr in field.split(',').filter(|expr| !expr.is_empty()) {
        bits |= get_range(expr, bounds)?;
    }
    Ok(bits)
}

/// The bits of one range: `*`, `?`, `N` or `N-M`, optionally followed by
/// `/step`. The checks run in robfig's order.
pub(crate) fn get_range(expr: &str, bounds: &Bounds) -> Result<u64, FieldError> {
    let range_and_step: Vec<&str> = expr.split('/').collect();
    let low_and_high: Vec<&str> = range_and_step[0].split('-').collect();
    let single = low_and_high.len() == 1;

    let (start, mut end, mut extra);
    if low_and_high[0] == "*" || low_and_high[0] == "?" {
        start = bounds.min;
        end = bounds.max;
        extra = STAR_BIT;
    } else {
        start = parse_int_or_name(low_and_high[0], bounds.names)?;
        end = match low_and_high.len() {
            1 => start,
            2 => parse_int_or_name(low_and_high[1], bounds.names)?,
            _ => {
                return Err(FieldError::TooManyHyphens {
                    expr: expr.to_owned(),
                })
            }
        };
        extra = 0;
    }

    let step = match range_and_step.len() {
        1 => 1,
        2 => {
            let step = parse_non_negative(range_and_step[1])?;
            // "N/step" means "N-max/step".
            if single {
                end = bounds.max;
            }
            if step > 1 {
                extra = 0;
            }
            step
        }
        _ => {
            return Err(FieldError::TooManySlashes {
                expr: expr.to_owned(),
            })
        }
    };

    if start < bounds.min {
        return Err(out_of_range(start, bounds));
    }
    if end > bounds.max {
        return Err(out_of_range(end, bounds));
    }
    if start > end {
        return Err(FieldError::StartAfterEnd { start, end });
    }
    if step == 0 {
        return Err(FieldError::ZeroStep {
            expr: expr.to_owned(),
        });
    }
    Ok(get_bits(start, end, step) | extra)
}

fn out_of_range(value: u64, bounds: &Bounds) -> FieldError {
    FieldError::OutOfRange {
        value,
        min: bounds.min,
        max: bounds.max,
    }
}

/// A name from `names` (after Go's `strings.ToLower`) or a number.
fn parse_int_or_name(expr: &str, names: &[(&str, u64)]) -> Result<u64, FieldError> {
    if !names.is_empty() {
        let lower = go_to_lower(expr);
        if let Some(&(_, value)) = names.iter().find(|(name, _)| *name == lower) {
            return Ok(value);
        }
    }
    parse_non_negative(expr)
}

/// Go's `strings.ToLower`, as far as it can matter for ASCII names: ASCII
/// letters, plus the two non-ASCII letters whose simple lowercase mapping is
/// ASCII (U+0130 'İ' -> 'i' and U+212A KELVIN SIGN -> 'k'). Other characters
/// are kept; they can never make a string equal to an ASCII name.
fn go_to_lower(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\u{130}' => 'i',
            '\u{212a}' => 'k',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Go's `strconv.Atoi` followed by robfig's "negative number not allowed".
fn parse_non_negative(expr: &str) -> Result<u64, FieldError> {
    let not_a_number = || FieldError::NotANumber {
        text: expr.to_owned(),
    };
    let (negative, digits) = match expr.as_bytes().first() {
        Some(b'-') => (true, &expr[1..]),
        Some(b'+') => (false, &expr[1..]),
        _ => (false, expr),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_a_number());
    }
    // Accumulate while the value still fits in an i64 (or is i64::MIN).
    let limit: u64 = if negative {
        1 << 63
    } else {
        i64::MAX.unsigned_abs()
    };
    let mut value: u64 = 0;
    for b in digits.bytes() {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .filter(|&v| v <= limit)
            .ok_or_else(not_a_number)?;
    }
    if negative && value != 0 {
        return Err(FieldError::NegativeNumber {
            text: expr.to_owned(),
        });
    }
    Ok(value)
}

/// The bits `min, min+step, ...` up to `max` (values above 63 are ignored;
/// the parser never asks for them). A step of 0 is treated as 1.
pub(crate) fn get_bits(min: u64, max: u64, step: u64) -> u64 {
    let step = step.max(1);
    let mut bits = 0;
    let mut i = min;
    while i <= max.min(63) {
        bits |= 1 << i;
        match i.checked_add(step) {
            Some(next) => i = next,
            None => break,
        }
    }
    bits
}

/// Every value of the field, plus the star bit.
pub(crate) fn all_bits(bounds: &Bounds) -> u64 {
    get_bits(bounds.min, bounds.max, 1) | STAR_BIT
}
