//! Data-driven tests for the cron module.
//!
//! The tables are transcribed, as data, from robfig/cron v3's
//! spec_test.go (TestActivation, TestNext, TestErrors, TestNextWithTz,
//! TestSlash0NoHang), parser_test.go (TestRange, TestField, TestAll,
//! TestBits, TestParseScheduleErrors, TestParseSchedule,
//! TestStandardSpecSchedule) and constantdelay_test.go
//! (TestConstantDelayNext). Go's "Mon Jul 9 14:45 2012" times are written
//! as "2012-07-09 14:45"; robfig's tests run those in `time.Local`, for
//! which these tests use UTC (the default zone passed to the parser).
//! Times written with an offset are absolute; "TZ=<zone> <time>" means the
//! time is presented in that zone, which is then also the zone of a
//! schedule without a prefix (robfig computes such schedules in the zone of
//! the time handed to `Next`).

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use super::parse::{
    all_bits, get_bits, get_field, get_range, parse_spec, Bounds, DOM, DOW, HOURS, MINUTES, MONTHS,
    SECONDS, STAR_BIT,
};
use super::spec::{ConstantDelay, SpecSchedule};
use super::*;

// ---------------------------------------------------------------------------
// helpers

/// Parses a test time: an optional "TZ=<zone> " prefix, then either an RFC
/// 3339 time with offset or a wall time "YYYY-MM-DD HH:MM[:SS[.fff]]" in the
/// zone (UTC without a prefix). Returns the zone and the instant.
fn when(s: &str) -> (Tz, DateTime<Utc>) {
    let (zone, text) = match s.strip_prefix("TZ=") {
        Some(rest) => {
            let (name, text) = rest.split_once(' ').expect("zone and time");
            (name.parse::<Tz>().expect("known zone"), text)
        }
        None => (Tz::UTC, s),
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return (zone, t.with_timezone(&Utc));
    }
    let naive = ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .unwrap_or_else(|| panic!("bad test time {s:?}"));
    let t = zone
        .from_local_datetime(&naive)
        .single()
        .unwrap_or_else(|| panic!("ambiguous test time {s:?}"));
    (zone, t.with_timezone(&Utc))
}

fn instant(s: &str) -> Option<DateTime<Utc>> {
    (!s.is_empty()).then(|| when(s).1)
}

/// Parses with the standard parser, or with a leading seconds field.
fn schedule(spec: &str, default_zone: Tz, with_seconds: bool) -> Result<Schedule, CronError> {
    parse_spec(spec, default_zone, with_seconds).map(|(kind, zone)| Schedule {
        source: spec.to_owned(),
        kind,
        zone,
        warnings: Vec::new(),
    })
}

fn kind_of(spec: &str, default_zone: Tz, with_seconds: bool) -> (ScheduleKind, Tz) {
    parse_spec(spec, default_zone, with_seconds)
        .unwrap_or_else(|e| panic!("{spec:?} should parse: {e}"))
}

/// Drops the seconds field of a six-field spec (after an optional zone
/// prefix) if it is "0"; `None` if the spec needs seconds.
fn to_standard(spec: &str) -> Option<String> {
    let (prefix, fields) = if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
        let (prefix, rest) = spec.split_once(' ')?;
        (format!("{prefix} "), rest)
    } else {
        (String::new(), spec)
    };
    let rest = fields.strip_prefix("0 ")?;
    Some(format!("{prefix}{rest}"))
}

fn spec_bits(second: u64, minute: u64, hour: u64, dom: u64, month: u64, dow: u64) -> ScheduleKind {
    ScheduleKind::Spec(SpecSchedule {
        second,
        minute,
        hour,
        dom,
        month,
        dow,
    })
}

fn every_5_min() -> ScheduleKind {
    spec_bits(
        1,
        1 << 5,
        all_bits(&HOURS),
        all_bits(&DOM),
        all_bits(&MONTHS),
        all_bits(&DOW),
    )
}

fn midnight() -> ScheduleKind {
    spec_bits(1, 1, 1, all_bits(&DOM), all_bits(&MONTHS), all_bits(&DOW))
}

fn annual() -> ScheduleKind {
    spec_bits(1, 1, 1, 1 << 1, 1 << 1, all_bits(&DOW))
}

fn tz(name: &str) -> Tz {
    name.parse().unwrap()
}

// ---------------------------------------------------------------------------
// spec_test.go: TestActivation (standard parser)

/// (time, spec, whether the schedule fires exactly at that time)
const ACTIVATION: &[(&str, &str, bool)] = &[
    // every fifteen minutes
    ("2012-07-09 15:00", "0/15 * * * *", true),
    ("2012-07-09 15:45", "0/15 * * * *", true),
    ("2012-07-09 15:40", "0/15 * * * *", false),
    // every fifteen minutes, starting at 5 minutes
    ("2012-07-09 15:05", "5/15 * * * *", true),
    ("2012-07-09 15:20", "5/15 * * * *", true),
    ("2012-07-09 15:50", "5/15 * * * *", true),
    // named months
    ("2012-07-15 15:00", "0/15 * * Jul *", true),
    ("2012-07-15 15:00", "0/15 * * Jun *", false),
    // everything set
    ("2012-07-15 08:30", "30 08 ? Jul Sun", true),
    ("2012-07-15 08:30", "30 08 15 Jul ?", true),
    ("2012-07-16 08:30", "30 08 ? Jul Sun", false),
    ("2012-07-16 08:30", "30 08 15 Jul ?", false),
    // predefined schedules
    ("2012-07-09 15:00", "@hourly", true),
    ("2012-07-09 15:04", "@hourly", false),
    ("2012-07-09 15:00", "@daily", false),
    ("2012-07-09 00:00", "@daily", true),
    ("2012-07-09 00:00", "@weekly", false),
    ("2012-07-08 00:00", "@weekly", true),
    ("2012-07-08 01:00", "@weekly", false),
    ("2012-07-08 00:00", "@monthly", false),
    ("2012-07-01 00:00", "@monthly", true),
    // day of week and day of month both restricted: either may match
    ("2012-07-15 00:00", "* * 1,15 * Sun", true),
    ("2012-06-15 00:00", "* * 1,15 * Sun", true),
    ("2012-08-01 00:00", "* * 1,15 * Sun", true),
    ("2012-07-15 00:00", "* * */10 * Sun", true),
    // one of them a star: both must match
    ("2012-07-15 00:00", "* * * * Mon", false),
    ("2012-07-09 00:00", "* * 1,15 * *", false),
    ("2012-07-15 00:00", "* * 1,15 * *", true),
    ("2012-07-15 00:00", "* * */2 * Sun", true),
];

#[test]
fn robfig_activation() {
    for &(time, spec, fires) in ACTIVATION {
        let (zone, t) = when(time);
        let s = schedule(spec, zone, false).unwrap();
        let next = s.next_after(t - chrono::Duration::seconds(1));
        assert_eq!(next == Some(t), fires, "{spec:?} at {time}: next {next:?}");
    }
}

// ---------------------------------------------------------------------------
// spec_test.go: TestNext (robfig runs it with its seconds parser)

/// (from, six-field spec, expected next activation or "" for none)
const NEXT: &[(&str, &str, &str)] = &[
    // simple cases
    ("2012-07-09 14:45", "0 0/15 * * * *", "2012-07-09 15:00"),
    ("2012-07-09 14:59", "0 0/15 * * * *", "2012-07-09 15:00"),
    ("2012-07-09 14:59:59", "0 0/15 * * * *", "2012-07-09 15:00"),
    // wrap around hours
    ("2012-07-09 15:45", "0 20-35/15 * * * *", "2012-07-09 16:20"),
    // wrap around days
    ("2012-07-09 23:46", "0 */15 * * * *", "2012-07-10 00:00"),
    ("2012-07-09 23:45", "0 20-35/15 * * * *", "2012-07-10 00:20"),
    (
        "2012-07-09 23:35:51",
        "15/35 20-35/15 * * * *",
        "2012-07-10 00:20:15",
    ),
    (
        "2012-07-09 23:35:51",
        "15/35 20-35/15 1/2 * * *",
        "2012-07-10 01:20:15",
    ),
    (
        "2012-07-09 23:35:51",
        "15/35 20-35/15 10-12 * * *",
        "2012-07-10 10:20:15",
    ),
    (
        "2012-07-09 23:35:51",
        "15/35 20-35/15 1/2 */2 * *",
        "2012-07-11 01:20:15",
    ),
    (
        "2012-07-09 23:35:51",
        "15/35 20-35/15 * 9-20 * *",
        "2012-07-10 00:20:15",
    ),
    (
        "2012-07-09 23:35:51",
        "15/35 20-35/15 * 9-20 Jul *",
        "2012-07-10 00:20:15",
    ),
    // wrap around months
    ("2012-07-09 23:35", "0 0 0 9 Apr-Oct ?", "2012-08-09 00:00"),
    (
        "2012-07-09 23:35",
        "0 0 0 */5 Apr,Aug,Oct Mon",
        "2012-08-01 00:00",
    ),
    ("2012-07-09 23:35", "0 0 0 */5 Oct Mon", "2012-10-01 00:00"),
    // wrap around years
    ("2012-07-09 23:35", "0 0 0 * Feb Mon", "2013-02-04 00:00"),
    ("2012-07-09 23:35", "0 0 0 * Feb Mon/2", "2013-02-01 00:00"),
    // wrap around minute, hour, day, month and year
    ("2012-12-31 23:59:45", "0 * * * * *", "2013-01-01 00:00:00"),
    // leap year
    ("2012-07-09 23:35", "0 0 0 29 Feb ?", "2016-02-29 00:00"),
    // DST 2am EST (-5) -> 3am EDT (-4): 02:30 does not exist that day
    (
        "2012-03-11T00:00:00-05:00",
        "TZ=America/New_York 0 30 2 11 Mar ?",
        "2013-03-11T02:30:00-04:00",
    ),
    // hourly job
    (
        "2012-03-11T00:00:00-05:00",
        "TZ=America/New_York 0 0 * * * ?",
        "2012-03-11T01:00:00-05:00",
    ),
    (
        "2012-03-11T01:00:00-05:00",
        "TZ=America/New_York 0 0 * * * ?",
        "2012-03-11T03:00:00-04:00",
    ),
    (
        "2012-03-11T03:00:00-04:00",
        "TZ=America/New_York 0 0 * * * ?",
        "2012-03-11T04:00:00-04:00",
    ),
    (
        "2012-03-11T04:00:00-04:00",
        "TZ=America/New_York 0 0 * * * ?",
        "2012-03-11T05:00:00-04:00",
    ),
    // hourly job using CRON_TZ
    (
        "2012-03-11T00:00:00-05:00",
        "CRON_TZ=America/New_York 0 0 * * * ?",
        "2012-03-11T01:00:00-05:00",
    ),
    (
        "2012-03-11T01:00:00-05:00",
        "CRON_TZ=America/New_York 0 0 * * * ?",
        "2012-03-11T03:00:00-04:00",
    ),
    (
        "2012-03-11T03:00:00-04:00",
        "CRON_TZ=America/New_York 0 0 * * * ?",
        "2012-03-11T04:00:00-04:00",
    ),
    (
        "2012-03-11T04:00:00-04:00",
        "CRON_TZ=America/New_York 0 0 * * * ?",
        "2012-03-11T05:00:00-04:00",
    ),
    // 1am nightly job
    (
        "2012-03-11T00:00:00-05:00",
        "TZ=America/New_York 0 0 1 * * ?",
        "2012-03-11T01:00:00-05:00",
    ),
    (
        "2012-03-11T01:00:00-05:00",
        "TZ=America/New_York 0 0 1 * * ?",
        "2012-03-12T01:00:00-04:00",
    ),
    // 2am nightly job (skipped)
    (
        "2012-03-11T00:00:00-05:00",
        "TZ=America/New_York 0 0 2 * * ?",
        "2012-03-12T02:00:00-04:00",
    ),
    // DST 2am EDT (-4) -> 1am EST (-5)
    (
        "2012-11-04T00:00:00-04:00",
        "TZ=America/New_York 0 30 2 04 Nov ?",
        "2012-11-04T02:30:00-05:00",
    ),
    (
        "2012-11-04T01:45:00-04:00",
        "TZ=America/New_York 0 30 1 04 Nov ?",
        "2012-11-04T01:30:00-05:00",
    ),
    // hourly job
    (
        "2012-11-04T00:00:00-04:00",
        "TZ=America/New_York 0 0 * * * ?",
        "2012-11-04T01:00:00-04:00",
    ),
    (
        "2012-11-04T01:00:00-04:00",
        "TZ=America/New_York 0 0 * * * ?",
        "2012-11-04T01:00:00-05:00",
    ),
    (
        "2012-11-04T01:00:00-05:00",
        "TZ=America/New_York 0 0 * * * ?",
        "2012-11-04T02:00:00-05:00",
    ),
    // 1am nightly job (runs twice)
    (
        "2012-11-04T00:00:00-04:00",
        "TZ=America/New_York 0 0 1 * * ?",
        "2012-11-04T01:00:00-04:00",
    ),
    (
        "2012-11-04T01:00:00-04:00",
        "TZ=America/New_York 0 0 1 * * ?",
        "2012-11-04T01:00:00-05:00",
    ),
    (
        "2012-11-04T01:00:00-05:00",
        "TZ=America/New_York 0 0 1 * * ?",
        "2012-11-05T01:00:00-05:00",
    ),
    // 2am nightly job
    (
        "2012-11-04T00:00:00-04:00",
        "TZ=America/New_York 0 0 2 * * ?",
        "2012-11-04T02:00:00-05:00",
    ),
    (
        "2012-11-04T02:00:00-05:00",
        "TZ=America/New_York 0 0 2 * * ?",
        "2012-11-05T02:00:00-05:00",
    ),
    // 3am nightly job
    (
        "2012-11-04T00:00:00-04:00",
        "TZ=America/New_York 0 0 3 * * ?",
        "2012-11-04T03:00:00-05:00",
    ),
    (
        "2012-11-04T03:00:00-05:00",
        "TZ=America/New_York 0 0 3 * * ?",
        "2012-11-05T03:00:00-05:00",
    ),
    // the same, with the time (not the spec) in New York
    (
        "TZ=America/New_York 2012-11-04T00:00:00-04:00",
        "0 0 * * * ?",
        "2012-11-04T01:00:00-04:00",
    ),
    (
        "TZ=America/New_York 2012-11-04T01:00:00-04:00",
        "0 0 * * * ?",
        "2012-11-04T01:00:00-05:00",
    ),
    (
        "TZ=America/New_York 2012-11-04T01:00:00-05:00",
        "0 0 * * * ?",
        "2012-11-04T02:00:00-05:00",
    ),
    (
        "TZ=America/New_York 2012-11-04T00:00:00-04:00",
        "0 0 1 * * ?",
        "2012-11-04T01:00:00-04:00",
    ),
    (
        "TZ=America/New_York 2012-11-04T01:00:00-04:00",
        "0 0 1 * * ?",
        "2012-11-04T01:00:00-05:00",
    ),
    (
        "TZ=America/New_York 2012-11-04T01:00:00-05:00",
        "0 0 1 * * ?",
        "2012-11-05T01:00:00-05:00",
    ),
    (
        "TZ=America/New_York 2012-11-04T00:00:00-04:00",
        "0 0 2 * * ?",
        "2012-11-04T02:00:00-05:00",
    ),
    (
        "TZ=America/New_York 2012-11-04T02:00:00-05:00",
        "0 0 2 * * ?",
        "2012-11-05T02:00:00-05:00",
    ),
    (
        "TZ=America/New_York 2012-11-04T00:00:00-04:00",
        "0 0 3 * * ?",
        "2012-11-04T03:00:00-05:00",
    ),
    (
        "TZ=America/New_York 2012-11-04T03:00:00-05:00",
        "0 0 3 * * ?",
        "2012-11-05T03:00:00-05:00",
    ),
    // unsatisfiable
    ("2012-07-09 23:35", "0 0 0 30 Feb ?", ""),
    ("2012-07-09 23:35", "0 0 0 31 Apr ?", ""),
    // monthly job
    (
        "TZ=America/New_York 2012-11-04T00:00:00-04:00",
        "0 0 3 3 * ?",
        "2012-12-03T03:00:00-05:00",
    ),
    // DST making midnight not exist (robfig issue 157)
    (
        "2018-10-17T05:00:00-04:00",
        "TZ=America/Sao_Paulo 0 0 9 10 * ?",
        "2018-11-10T06:00:00-05:00",
    ),
    (
        "2018-02-14T05:00:00-05:00",
        "TZ=America/Sao_Paulo 0 0 9 22 * ?",
        "2018-02-22T07:00:00-05:00",
    ),
];

fn check_next(from: &str, spec: &str, want: &str, with_seconds: bool) {
    let (zone, t) = when(from);
    let s =
        schedule(spec, zone, with_seconds).unwrap_or_else(|e| panic!("{spec:?} should parse: {e}"));
    assert_eq!(
        s.next_after(t),
        instant(want),
        "{spec:?} from {from}: expected {want:?}"
    );
}

#[test]
fn robfig_next_with_seconds_field() {
    for &(from, spec, want) in NEXT {
        check_next(from, spec, want, true);
    }
}

#[test]
fn robfig_next_standard_parser() {
    let mut converted = 0;
    for &(from, spec, want) in NEXT {
        if let Some(standard) = to_standard(spec) {
            check_next(from, &standard, want, false);
            converted += 1;
        }
    }
    // Only the six "15/35 ..." cases need a seconds field.
    assert_eq!(converted, NEXT.len() - 6);
}

// ---------------------------------------------------------------------------
// spec_test.go: TestNextWithTz (times with a +05:30 offset, schedule in
// the time's zone; Asia/Kolkata is +05:30 throughout)

const NEXT_WITH_TZ: &[(&str, &str, &str)] = &[
    (
        "TZ=Asia/Kolkata 2016-01-03T13:09:03+05:30",
        "14 14 * * *",
        "2016-01-03T14:14:00+05:30",
    ),
    (
        "TZ=Asia/Kolkata 2016-01-03T04:09:03+05:30",
        "14 14 * * ?",
        "2016-01-03T14:14:00+05:30",
    ),
    (
        "TZ=Asia/Kolkata 2016-01-03T14:09:03+05:30",
        "14 14 * * *",
        "2016-01-03T14:14:00+05:30",
    ),
    (
        "TZ=Asia/Kolkata 2016-01-03T14:00:00+05:30",
        "14 14 * * ?",
        "2016-01-03T14:14:00+05:30",
    ),
];

#[test]
fn robfig_next_with_tz() {
    for &(from, spec, want) in NEXT_WITH_TZ {
        check_next(from, spec, want, false);
    }
}

// ---------------------------------------------------------------------------
// spec_test.go: TestErrors, TestSlash0NoHang

#[test]
fn robfig_errors() {
    for spec in [
        "xyz",
        "60 0 * * *",
        "0 60 * * *",
        "0 0 * * XYZ",
        // TestSlash0NoHang
        "TZ=America/New_York 15/0 * * * *",
    ] {
        assert!(
            Schedule::parse_with_default_zone(spec, Tz::UTC).is_err(),
            "{spec:?}"
        );
    }
    // The step of zero is what is rejected.
    let err =
        Schedule::parse_with_default_zone("TZ=America/New_York 15/0 * * * *", Tz::UTC).unwrap_err();
    assert!(
        matches!(
            err,
            CronError::Field {
                position: 1,
                reason: FieldError::ZeroStep { .. },
                ..
            }
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// parser_test.go: TestRange, TestField, TestAll, TestBits

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fe {
    NotANumber,
    Negative,
    Hyphens,
    Slashes,
    Range,
    StartAfterEnd,
    ZeroStep,
}

fn fe(e: &FieldError) -> Fe {
    match e {
        FieldError::NotANumber { .. } => Fe::NotANumber,
        FieldError::NegativeNumber { .. } => Fe::Negative,
        FieldError::TooManyHyphens { .. } => Fe::Hyphens,
        FieldError::TooManySlashes { .. } => Fe::Slashes,
        FieldError::OutOfRange { .. } => Fe::Range,
        FieldError::StartAfterEnd { .. } => Fe::StartAfterEnd,
        FieldError::ZeroStep { .. } => Fe::ZeroStep,
    }
}

fn bounds(min: u64, max: u64) -> Bounds {
    Bounds {
        name: "test",
        min,
        max,
        names: &[],
    }
}

/// (range, min, max, expected bits or error)
const RANGES: &[(&str, u64, u64, Result<u64, Fe>)] = &[
    ("5", 0, 7, Ok(1 << 5)),
    ("0", 0, 7, Ok(1 << 0)),
    ("7", 0, 7, Ok(1 << 7)),
    ("5-5", 0, 7, Ok(1 << 5)),
    ("5-6", 0, 7, Ok(1 << 5 | 1 << 6)),
    ("5-7", 0, 7, Ok(1 << 5 | 1 << 6 | 1 << 7)),
    ("5-6/2", 0, 7, Ok(1 << 5)),
    ("5-7/2", 0, 7, Ok(1 << 5 | 1 << 7)),
    ("5-7/1", 0, 7, Ok(1 << 5 | 1 << 6 | 1 << 7)),
    ("*", 1, 3, Ok(1 << 1 | 1 << 2 | 1 << 3 | STAR_BIT)),
    ("*/2", 1, 3, Ok(1 << 1 | 1 << 3)),
    ("5--5", 0, 0, Err(Fe::Hyphens)),
    ("jan-x", 0, 0, Err(Fe::NotANumber)),
    ("2-x", 1, 5, Err(Fe::NotANumber)),
    ("*/-12", 0, 0, Err(Fe::Negative)),
    ("*//2", 0, 0, Err(Fe::Slashes)),
    ("1", 3, 5, Err(Fe::Range)),
    ("6", 3, 5, Err(Fe::Range)),
    ("5-3", 3, 5, Err(Fe::StartAfterEnd)),
    ("*/0", 0, 0, Err(Fe::ZeroStep)),
];

#[test]
fn robfig_range() {
    for &(expr, min, max, want) in RANGES {
        let got = get_range(expr, &bounds(min, max)).map_err(|e| fe(&e));
        assert_eq!(got, want, "{expr:?} in {min}-{max}");
    }
}

#[test]
fn robfig_field() {
    let cases: &[(&str, u64, u64, u64)] = &[
        ("5", 1, 7, 1 << 5),
        ("5,6", 1, 7, 1 << 5 | 1 << 6),
        ("5,6,7", 1, 7, 1 << 5 | 1 << 6 | 1 << 7),
        ("1,5-7/2,3", 1, 7, 1 << 1 | 1 << 5 | 1 << 7 | 1 << 3),
    ];
    for &(expr, min, max, want) in cases {
        assert_eq!(get_field(expr, &bounds(min, max)), Ok(want), "{expr:?}");
    }
}

#[test]
fn robfig_all() {
    let cases: &[(Bounds, u64)] = &[
        (MINUTES, 0xfff_ffff_ffff_ffff), // 0-59
        (HOURS, 0xff_ffff),              // 0-23
        (DOM, 0xffff_fffe),              // 1-31
        (MONTHS, 0x1ffe),                // 1-12
        (DOW, 0x7f),                     // 0-6
    ];
    for (b, want) in cases {
        assert_eq!(all_bits(b), want | STAR_BIT, "{}", b.name);
    }
}

#[test]
fn robfig_bits() {
    let cases: &[(u64, u64, u64, u64)] = &[
        (0, 0, 1, 0x1),
        (1, 1, 1, 0x2),
        (1, 5, 2, 0x2a),
        (1, 4, 2, 0xa),
    ];
    for &(min, max, step, want) in cases {
        assert_eq!(get_bits(min, max, step), want, "{min}-{max}/{step}");
    }
}

// ---------------------------------------------------------------------------
// parser_test.go: TestParseScheduleErrors, TestParseSchedule,
// TestStandardSpecSchedule

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ce {
    Empty,
    Count,
    Descriptor,
    Duration,
    Field(usize, Fe),
}

fn ce(e: &CronError) -> Ce {
    match e {
        CronError::Empty => Ce::Empty,
        CronError::FieldCount { .. } => Ce::Count,
        CronError::UnknownDescriptor { .. } => Ce::Descriptor,
        CronError::EveryDuration { .. } => Ce::Duration,
        CronError::Field {
            position, reason, ..
        } => Ce::Field(*position, fe(reason)),
        other => panic!("unexpected error kind: {other}"),
    }
}

#[test]
fn robfig_parse_schedule_errors() {
    let cases: &[(&str, Ce)] = &[
        // robfig's seconds-parser case, as written and made standard
        ("* 5 j * * *", Ce::Count),
        ("5 j * * *", Ce::Field(2, Fe::NotANumber)),
        ("@every Xm", Ce::Duration),
        ("@unrecognized", Ce::Descriptor),
        ("* * * *", Ce::Count),
        ("", Ce::Empty),
    ];
    for &(spec, want) in cases {
        let err = Schedule::parse_with_default_zone(spec, Tz::UTC).unwrap_err();
        assert_eq!(ce(&err), want, "{spec:?}: {err}");
    }
    let msg = |spec| {
        Schedule::parse_with_default_zone(spec, Tz::UTC)
            .unwrap_err()
            .to_string()
    };
    // robfig's messages contain these words; ours do too.
    assert!(msg("5 j * * *").contains("failed to parse int from"));
    assert!(msg("@every Xm").contains("failed to parse duration"));
    assert!(msg("@unrecognized").contains("unrecognized descriptor"));
    assert!(msg("* * * *").contains("expected exactly 5 fields"));
    assert!(msg("").contains("empty spec string"));
}

#[test]
fn robfig_parse_schedule() {
    let default = tz("Europe/Paris");
    let tokyo = tz("Asia/Tokyo");
    let standard: Vec<(&str, ScheduleKind, Tz)> = vec![
        ("5 * * * *", every_5_min(), default),
        ("CRON_TZ=UTC  5 * * * *", every_5_min(), Tz::UTC),
        ("CRON_TZ=Asia/Tokyo 5 * * * *", every_5_min(), tokyo),
        (
            "@every 5m",
            ScheduleKind::Every(ConstantDelay { seconds: 300 }),
            default,
        ),
        ("@midnight", midnight(), default),
        ("TZ=UTC  @midnight", midnight(), Tz::UTC),
        ("TZ=Asia/Tokyo @midnight", midnight(), tokyo),
        ("@yearly", annual(), default),
        ("@annually", annual(), default),
    ];
    for (spec, kind, zone) in standard {
        assert_eq!(kind_of(spec, default, false), (kind, zone), "{spec:?}");
    }
    let with_seconds: Vec<(&str, ScheduleKind, Tz)> = vec![
        ("0 5 * * * *", every_5_min(), default),
        ("CRON_TZ=UTC  0 5 * * * *", every_5_min(), Tz::UTC),
        ("CRON_TZ=Asia/Tokyo 0 5 * * * *", every_5_min(), tokyo),
        (
            "* 5 * * * *",
            spec_bits(
                all_bits(&SECONDS),
                1 << 5,
                all_bits(&HOURS),
                all_bits(&DOM),
                all_bits(&MONTHS),
                all_bits(&DOW),
            ),
            default,
        ),
    ];
    for (spec, kind, zone) in with_seconds {
        assert_eq!(kind_of(spec, default, true), (kind, zone), "{spec:?}");
        // The standard parser rejects six fields.
        assert!(matches!(
            parse_spec(spec, default, false),
            Err(CronError::FieldCount { found: 6, .. })
        ));
    }
}

#[test]
fn robfig_standard_spec_schedule() {
    assert_eq!(kind_of("5 * * * *", Tz::UTC, false).0, every_5_min());
    assert_eq!(
        kind_of("@every 5m", Tz::UTC, false).0,
        ScheduleKind::Every(ConstantDelay { seconds: 300 })
    );
    let err = Schedule::parse_with_default_zone("5 j * * *", Tz::UTC).unwrap_err();
    assert!(
        err.to_string().contains("failed to parse int from"),
        "{err}"
    );
    let err = Schedule::parse_with_default_zone("* * * *", Tz::UTC).unwrap_err();
    assert!(
        err.to_string().contains("expected exactly 5 fields"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// constantdelay_test.go: TestConstantDelayNext

/// (from, delay as a Go duration, expected next)
const CONSTANT_DELAY: &[(&str, &str, &str)] = &[
    // simple cases
    ("2012-07-09 14:45", "15m50ns", "2012-07-09 15:00"),
    ("2012-07-09 14:59", "15m", "2012-07-09 15:14"),
    ("2012-07-09 14:59:59", "15m", "2012-07-09 15:14:59"),
    // wrap around hours
    ("2012-07-09 15:45", "35m", "2012-07-09 16:20"),
    // wrap around days
    ("2012-07-09 23:46", "14m", "2012-07-10 00:00"),
    ("2012-07-09 23:45", "35m", "2012-07-10 00:20"),
    ("2012-07-09 23:35:51", "44m24s", "2012-07-10 00:20:15"),
    ("2012-07-09 23:35:51", "25h44m24s", "2012-07-11 01:20:15"),
    // wrap around months (91 days and 25 minutes)
    ("2012-07-09 23:35", "2184h25m", "2012-10-09 00:00"),
    // wrap around minute, hour, day, month and year
    ("2012-12-31 23:59:45", "15s", "2013-01-01 00:00:00"),
    // round to the second on the delay
    ("2012-07-09 14:45", "15m50ns", "2012-07-09 15:00"),
    // round up to one second if the delay is less
    ("2012-07-09 14:45:00", "15ms", "2012-07-09 14:45:01"),
    // round to the second when computing the next time
    ("2012-07-09 14:45:00.005", "15m", "2012-07-09 15:00"),
    // both
    ("2012-07-09 14:45:00.005", "15m50ns", "2012-07-09 15:00"),
];

#[test]
fn robfig_constant_delay_next() {
    for &(from, delay, want) in CONSTANT_DELAY {
        let (zone, t) = when(from);
        let s = Schedule::parse_with_default_zone(&format!("@every {delay}"), zone).unwrap();
        assert_eq!(s.next_after(t), instant(want), "@every {delay} from {from}");
    }
}

#[test]
fn every_rounding_like_robfig() {
    let cases: &[(&str, i64)] = &[
        ("@every 1s", 1),
        ("@every 1.5s", 1),
        ("@every 1h30m", 5_400),
        ("@every 500ms", 1),
        ("@every 0s", 1),
        ("@every 0", 1),
        ("@every 1ns", 1),
        ("@every 2562047h47m16.854775807s", 9_223_372_036),
        // Go's ParseDuration accepts negative values and robfig's Every
        // turns anything under a second into one second.
        ("@every -5s", 1),
    ];
    for &(spec, seconds) in cases {
        assert_eq!(
            kind_of(spec, Tz::UTC, false).0,
            ScheduleKind::Every(ConstantDelay { seconds }),
            "{spec:?}"
        );
    }
    // A constant delay is absolute time, unaffected by the zone or DST.
    let s = Schedule::parse("CRON_TZ=America/New_York @every 1h").unwrap();
    let (_, t) = when("2012-03-11T01:30:00-05:00");
    assert_eq!(s.next_after(t), instant("2012-03-11T03:30:00-04:00"));
}

// ---------------------------------------------------------------------------
// accept/reject set of robfig's standard parser, beyond its own tables

#[test]
fn accepted_like_robfig() {
    let accepted = [
        "* * * * *",
        "? ? ? ? ?",
        "  5   *\t* *  *  ",
        "\n0 0 1 1 *\n",
        "0 0 * * 0",
        "0 0 * * 6",
        "0 0 1 12 *",
        "59 23 31 12 6",
        "0 0 * * mon-fri",
        "0 0 * * MON-FRI",
        "0 0 * JAN-dec *",
        "0 0 * jan/3 *",
        "0 0 * * sun,sat",
        "5/15 * * * *",
        "*/1 * * * *",
        "*/100 * * * *",
        "05 007 * * *",
        "+5 * * * *",
        "1-+5 * * * *",
        "*-5 * * * *",
        "?-x-y * * * *",
        ", * * * *",
        "1,,2 * * * *",
        "1, * * * *",
        "0 0 30 Feb *",
        "TZ= * * * * *",
        "TZ=UTC * * * * *",
        "CRON_TZ=UTC * * * * *",
        "TZ=Local * * * * *",
        "TZ=America/New_York * * * * *",
        "TZ=UTC @daily",
        "TZ=UTC   @daily   ",
        "CRON_TZ=Europe/Berlin @every 5m",
        "@every 1h30m",
        "@every -1s",
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ];
    for spec in accepted {
        assert!(
            Schedule::parse_with_default_zone(spec, Tz::UTC).is_ok(),
            "{spec:?}: {:?}",
            Schedule::parse_with_default_zone(spec, Tz::UTC)
        );
    }
}

#[test]
fn rejected_like_robfig() {
    let rejected: &[(&str, Ce)] = &[
        ("", Ce::Empty),
        (" ", Ce::Count),
        ("* * * *", Ce::Count),
        ("* * * * * *", Ce::Count),
        ("0 * * * * * *", Ce::Count),
        // A descriptor must be at the very start (or right after a prefix).
        (" @daily", Ce::Count),
        ("@daily ", Ce::Descriptor),
        ("@DAILY", Ce::Descriptor),
        ("@every", Ce::Descriptor),
        ("@every  5s", Ce::Duration),
        ("@every 5s ", Ce::Duration),
        ("@every 1d", Ce::Duration),
        // The prefix is case-sensitive; otherwise it is just a sixth field.
        ("tz=UTC * * * * *", Ce::Count),
        ("60 * * * *", Ce::Field(1, Fe::Range)),
        ("* 24 * * *", Ce::Field(2, Fe::Range)),
        ("* * 0 * *", Ce::Field(3, Fe::Range)),
        ("* * 32 * *", Ce::Field(3, Fe::Range)),
        ("* * * 0 *", Ce::Field(4, Fe::Range)),
        ("* * * 13 *", Ce::Field(4, Fe::Range)),
        ("* * * * 7", Ce::Field(5, Fe::Range)),
        ("* * * * 0-7", Ce::Field(5, Fe::Range)),
        ("5-3 * * * *", Ce::Field(1, Fe::StartAfterEnd)),
        ("70/5 * * * *", Ce::Field(1, Fe::StartAfterEnd)),
        ("*/0 * * * *", Ce::Field(1, Fe::ZeroStep)),
        ("1-5/0 * * * *", Ce::Field(1, Fe::ZeroStep)),
        ("*/-1 * * * *", Ce::Field(1, Fe::Negative)),
        ("*/ * * * *", Ce::Field(1, Fe::NotANumber)),
        ("/5 * * * *", Ce::Field(1, Fe::NotANumber)),
        ("-5 * * * *", Ce::Field(1, Fe::NotANumber)),
        ("5- * * * *", Ce::Field(1, Fe::NotANumber)),
        ("1-2-3 * * * *", Ce::Field(1, Fe::Hyphens)),
        ("1/2/3 * * * *", Ce::Field(1, Fe::Slashes)),
        ("a * * * *", Ce::Field(1, Fe::NotANumber)),
        ("0x1 * * * *", Ce::Field(1, Fe::NotANumber)),
        ("1_0 * * * *", Ce::Field(1, Fe::NotANumber)),
        ("99999999999999999999 * * * *", Ce::Field(1, Fe::NotANumber)),
        ("9223372036854775807 * * * *", Ce::Field(1, Fe::Range)),
        ("* * * * L", Ce::Field(5, Fe::NotANumber)),
        ("* * L * *", Ce::Field(3, Fe::NotANumber)),
        ("* * * * 1#2", Ce::Field(5, Fe::NotANumber)),
        ("* * jan * *", Ce::Field(3, Fe::NotANumber)),
        ("* * * sun *", Ce::Field(4, Fe::NotANumber)),
        ("* * * * monday", Ce::Field(5, Fe::NotANumber)),
        ("* * * * /2", Ce::Field(5, Fe::NotANumber)),
    ];
    for &(spec, want) in rejected {
        let err = Schedule::parse_with_default_zone(spec, Tz::UTC)
            .expect_err(&format!("{spec:?} should be rejected"));
        assert_eq!(ce(&err), want, "{spec:?}: {err}");
    }
}

#[test]
fn zone_prefix_handling() {
    let default = tz("Europe/Paris");
    let zone = |spec: &str| Schedule::parse_with_default_zone(spec, default).map(|s| s.zone());
    assert_eq!(zone("* * * * *"), Ok(default));
    assert_eq!(zone("TZ=Local * * * * *"), Ok(default));
    assert_eq!(zone("TZ= * * * * *"), Ok(Tz::UTC));
    assert_eq!(zone("CRON_TZ=UTC * * * * *"), Ok(Tz::UTC));
    assert_eq!(
        zone("CRON_TZ=America/New_York 0 9 * * *"),
        Ok(tz("America/New_York"))
    );
    assert_eq!(zone("TZ=Asia/Tokyo @every 1m"), Ok(tz("Asia/Tokyo")));
    assert!(matches!(
        zone("TZ=Mars/Olympus_Mons * * * * *"),
        Err(CronError::UnknownZone { .. })
    ));
    assert!(matches!(
        zone("TZ=america/new_york * * * * *"),
        Err(CronError::UnknownZone { .. })
    ));
    // The zone name runs up to the first ASCII space, tabs included.
    assert!(matches!(
        zone("TZ=UTC\t* * * * *"),
        Err(CronError::UnknownZone { .. })
    ));
    // robfig panics here (slice out of range); we report an error.
    assert!(matches!(
        zone("TZ=UTC"),
        Err(CronError::MissingSpaceAfterZone { .. })
    ));
    assert!(matches!(
        zone("CRON_TZ=UTC "),
        Err(CronError::FieldCount { found: 0, .. })
    ));
}

#[test]
fn error_messages_name_the_field() {
    let msg = |spec| {
        Schedule::parse_with_default_zone(spec, Tz::UTC)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        msg("0 0 32 * *"),
        "field 3 (day of month) \"32\": value 32 out of range 1-31"
    );
    assert_eq!(
        msg("0 0 * * 7"),
        "field 5 (day of week) \"7\": value 7 out of range 0-6"
    );
    assert_eq!(
        msg("0 5-3 * * *"),
        "field 2 (hour) \"5-3\": beginning of range (5) beyond end of range (3)"
    );
    assert_eq!(
        msg("*/0 * * * *"),
        "field 1 (minute) \"*/0\": step of range should be a positive number in \"*/0\""
    );
    assert_eq!(
        msg("0 0 * foo *"),
        "field 4 (month) \"foo\": failed to parse int from \"foo\""
    );
    assert_eq!(
        msg("* * * * * *"),
        "expected exactly 5 fields (minute hour day-of-month month day-of-week), found 6 in \"* * * * * *\""
    );
    assert_eq!(
        msg("TZ=Nowhere * * * * *"),
        "unknown time zone \"Nowhere\" in \"TZ=Nowhere * * * * *\""
    );
    assert!(msg("@every 3").contains("missing unit"));
}

#[test]
fn names_use_go_lowercasing() {
    // Go's strings.ToLower maps U+0130 (capital I with dot) to 'i', so
    // robfig accepts "FRİ" as Friday.
    let a = kind_of("0 0 * * FR\u{130}", Tz::UTC, false).0;
    let b = kind_of("0 0 * * fri", Tz::UTC, false).0;
    assert_eq!(a, b);
    assert!(Schedule::parse_with_default_zone("0 0 * * fr\u{131}", Tz::UTC).is_err());
}

#[test]
fn star_bit_rules() {
    let day = |spec: &str| match kind_of(spec, Tz::UTC, false).0 {
        ScheduleKind::Spec(s) => (s.dom & STAR_BIT != 0, s.dow & STAR_BIT != 0),
        ScheduleKind::Every(_) => unreachable!(),
    };
    assert_eq!(day("0 0 * * *"), (true, true));
    assert_eq!(day("0 0 ? * ?"), (true, true));
    assert_eq!(day("0 0 */1 * *"), (true, true));
    assert_eq!(day("0 0 */2 * *"), (false, true));
    assert_eq!(day("0 0 *-3 * *"), (true, true));
    assert_eq!(day("0 0 1-31 * 0-6"), (false, false));

    // "*/1" keeps the star, so day of month and day of week must both
    // match; "1-31" does not, so either may.
    let (_, from) = when("2024-01-01 12:00"); // a Monday
    let next = |spec| {
        Schedule::parse_with_default_zone(spec, Tz::UTC)
            .unwrap()
            .next_after(from)
    };
    assert_eq!(next("0 0 */1 * 1"), instant("2024-01-08 00:00"));
    assert_eq!(next("0 0 1-31 * 1"), instant("2024-01-02 00:00"));
    assert_eq!(next("0 0 1,15 * 5"), instant("2024-01-05 00:00"));
    assert_eq!(next("0 0 1,15 * *"), instant("2024-01-15 00:00"));
}

#[test]
fn never_firing_schedules() {
    let (_, from) = when("2024-01-01 00:00");
    for spec in [
        "0 0 30 Feb *",
        "0 0 31 Apr,Jun,Sep,Nov *",
        ", * * * *",
        "* , * * *",
        "* * , * *",
        "* * * , *",
        "* * * * ,",
        "* * , * ,",
    ] {
        let s = Schedule::parse_with_default_zone(spec, Tz::UTC).unwrap();
        assert_eq!(s.next_after(from), None, "{spec:?}");
        assert!(s.upcoming(from, 3).is_empty(), "{spec:?}");
    }
    // Restricted day of month with an empty day of week still fires (OR).
    let s = Schedule::parse_with_default_zone("0 0 15 * ,", Tz::UTC).unwrap();
    assert_eq!(s.next_after(from), instant("2024-01-15 00:00"));
    // Feb 29 is found even four years away, within the five-year horizon.
    let s = Schedule::parse_with_default_zone("0 0 29 Feb *", Tz::UTC).unwrap();
    assert_eq!(
        s.next_after(when("2024-03-01 00:00").1),
        instant("2028-02-29 00:00")
    );
}

#[test]
fn dst_in_a_zone_east_of_greenwich() {
    // Europe/Berlin: 2021-03-28 02:00 CET -> 03:00 CEST, and
    // 2021-10-31 03:00 CEST -> 02:00 CET.
    let s = Schedule::parse("CRON_TZ=Europe/Berlin 30 2 * * *").unwrap();
    // 02:30 does not exist on 2021-03-28: that day is skipped.
    let spring: Vec<String> = s
        .upcoming(when("2021-03-27T12:00:00+01:00").1, 2)
        .iter()
        .map(|t| t.to_rfc3339())
        .collect();
    assert_eq!(
        spring,
        ["2021-03-29T02:30:00+02:00", "2021-03-30T02:30:00+02:00"]
    );
    // 02:30 exists twice on 2021-10-31: it fires twice.
    let autumn: Vec<String> = s
        .upcoming(when("2021-10-30T12:00:00+02:00").1, 4)
        .iter()
        .map(|t| t.to_rfc3339())
        .collect();
    assert_eq!(
        autumn,
        [
            "2021-10-31T02:30:00+02:00",
            "2021-10-31T02:30:00+01:00",
            "2021-11-01T02:30:00+01:00",
            "2021-11-02T02:30:00+01:00",
        ]
    );
}

/// Derived by hand from robfig's algorithm (not from its tables): around
/// a midnight that does not exist (Sao Paulo, 2018-11-04 00:00 -03 became
/// 01:00 -02), the day search lands at 23:00 the evening before and moves
/// forward to 01:00, and one day later moves back from 01:00 to midnight.
#[test]
fn missing_midnight_like_robfig() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "2018-10-17T06:00:00-03:00",
            "0 9 4 * *",
            "2018-11-04T09:00:00-02:00",
        ),
        (
            "2018-10-17T06:00:00-03:00",
            "0 9 5 * *",
            "2018-11-05T09:00:00-02:00",
        ),
        // No 00:00 on 2018-11-04, so a midnight job skips that day.
        (
            "2018-11-03T12:00:00-03:00",
            "0 0 * * *",
            "2018-11-05T00:00:00-02:00",
        ),
        (
            "2018-11-03T12:00:00-03:00",
            "30 0 * * *",
            "2018-11-05T00:30:00-02:00",
        ),
        (
            "2018-11-03T12:00:00-03:00",
            "0 1 * * *",
            "2018-11-04T01:00:00-02:00",
        ),
    ];
    for &(from, spec, want) in cases {
        let s = Schedule::parse_with_default_zone(spec, tz("America/Sao_Paulo")).unwrap();
        assert_eq!(
            s.next_after(when(from).1),
            instant(want),
            "{spec:?} from {from}"
        );
    }
}

/// Pacific/Apia skipped 2011-12-30 entirely (-10:00 -> +14:00). robfig's
/// day search would loop forever here; this port steps over the day.
#[test]
fn skipped_calendar_day_does_not_hang() {
    let apia = tz("Pacific/Apia");
    let cases: &[(&str, &str, &str)] = &[
        (
            "2011-12-29T12:00:00-10:00",
            "0 0 31 12 *",
            "2011-12-31T00:00:00+14:00",
        ),
        (
            "2011-12-29T12:00:00-10:00",
            "0 0 30 12 *",
            "2012-12-30T00:00:00+14:00",
        ),
        (
            "2011-12-29T13:00:00-10:00",
            "0 12 * * *",
            "2011-12-31T12:00:00+14:00",
        ),
        (
            "2011-12-29T13:00:00-10:00",
            "0 0 * * *",
            "2011-12-31T00:00:00+14:00",
        ),
    ];
    for &(from, spec, want) in cases {
        let s = Schedule::parse_with_default_zone(spec, apia).unwrap();
        assert_eq!(
            s.next_after(when(from).1),
            instant(want),
            "{spec:?} from {from}"
        );
    }
}

#[test]
fn upcoming_in_schedule_zone() {
    let s = Schedule::parse("CRON_TZ=America/New_York 0 9 * * 1-5").unwrap();
    assert_eq!(s.zone(), tz("America/New_York"));
    let got: Vec<String> = s
        .upcoming(when("2024-01-05T15:00:00Z").1, 3)
        .iter()
        .map(|t| t.to_rfc3339())
        .collect();
    assert_eq!(
        got,
        [
            "2024-01-08T09:00:00-05:00",
            "2024-01-09T09:00:00-05:00",
            "2024-01-10T09:00:00-05:00",
        ]
    );
    assert!(s.upcoming(when("2024-01-05T15:00:00Z").1, 0).is_empty());

    let every = Schedule::parse("TZ=Asia/Tokyo @every 90m").unwrap();
    let got: Vec<String> = every
        .upcoming(when("2024-01-01T00:00:00.7Z").1, 2)
        .iter()
        .map(|t| t.to_rfc3339())
        .collect();
    assert_eq!(
        got,
        ["2024-01-01T10:30:00+09:00", "2024-01-01T12:00:00+09:00"]
    );
}

#[test]
fn next_is_strictly_after() {
    let s = Schedule::parse_with_default_zone("*/5 * * * *", Tz::UTC).unwrap();
    let (_, t) = when("2024-01-01 10:05");
    assert_eq!(s.next_after(t), instant("2024-01-01 10:10"));
    let (_, t) = when("2024-01-01 10:04:59.999");
    assert_eq!(s.next_after(t), instant("2024-01-01 10:05"));
}

#[test]
fn tz_env_resolution() {
    use super::zone_from_tz_env;
    assert_eq!(zone_from_tz_env(""), Tz::UTC);
    assert_eq!(zone_from_tz_env(":"), Tz::UTC);
    assert_eq!(zone_from_tz_env("UTC"), Tz::UTC);
    assert_eq!(zone_from_tz_env("Europe/Berlin"), tz("Europe/Berlin"));
    assert_eq!(zone_from_tz_env(":Europe/Berlin"), tz("Europe/Berlin"));
    assert_eq!(
        zone_from_tz_env("/usr/share/zoneinfo/America/New_York"),
        tz("America/New_York")
    );
    assert_eq!(zone_from_tz_env("Not/AZone"), Tz::UTC);
    assert_eq!(zone_from_tz_env("/nowhere"), Tz::UTC);
    // Whatever the machine's zone is, resolving it does not fail.
    let _ = local_zone();
}

#[test]
fn extreme_times_do_not_panic() {
    let specs = [
        "* * * * *",
        "0 0 29 Feb *",
        "@every 2562047h47m16s",
        "@every 1s",
        "CRON_TZ=America/Sao_Paulo 0 0 * * *",
        "CRON_TZ=Pacific/Chatham 45 2 * * *",
    ];
    let times = [
        DateTime::<Utc>::MIN_UTC,
        DateTime::<Utc>::MAX_UTC,
        DateTime::<Utc>::MAX_UTC - chrono::Duration::days(365 * 3),
        DateTime::<Utc>::MIN_UTC + chrono::Duration::days(365 * 3),
        DateTime::<Utc>::UNIX_EPOCH,
    ];
    for spec in specs {
        let s = Schedule::parse_with_default_zone(spec, Tz::UTC).unwrap();
        for t in times {
            let _ = s.next_after(t);
            let _ = s.upcoming(t, 3);
        }
    }
    let s = Schedule::parse_with_default_zone("* * * * *", Tz::UTC).unwrap();
    assert_eq!(s.next_after(DateTime::<Utc>::MAX_UTC), None);
}

// ---------------------------------------------------------------------------
// property tests: no input makes parsing or searching panic

const ZONES: &[&str] = &[
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "America/Sao_Paulo",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "Pacific/Apia",
    "America/Havana",
];

proptest::proptest! {
    #[test]
    fn parse_never_panics(s in "\\PC*") {
        let _ = Schedule::parse_with_default_zone(&s, Tz::UTC);
    }

    #[test]
    fn parse_never_panics_on_cron_like_input(
        s in "((CRON_)?TZ=[A-Za-z/_]{0,12} )?([0-9*?a-zA-Z,/+-]{0,8}[ \t]{1,2}){0,7}[0-9*?,/-]{0,6}"
    ) {
        let _ = Schedule::parse_with_default_zone(&s, Tz::UTC);
    }

    #[test]
    fn parse_never_panics_on_descriptors(s in "@[a-z]{0,9}( [-+0-9.a-zµ]{0,12})?") {
        let _ = Schedule::parse_with_default_zone(&s, Tz::UTC);
    }

    #[test]
    fn next_never_panics_and_is_after(
        minute in "(\\*|[0-5]?[0-9])(/[1-9])?",
        hour in "(\\*|1?[0-9]|2[0-3])(-2[0-3])?",
        dom in "(\\*|\\?|[1-9]|[12][0-9]|3[01])(/[1-9])?",
        month in "(\\*|[1-9]|1[0-2]|jan|feb|dec)",
        dow in "(\\*|\\?|[0-6]|mon-fri)",
        zone in proptest::sample::select(ZONES),
        secs in -4_000_000_000_i64..8_000_000_000_i64,
    ) {
        let spec = format!("CRON_TZ={zone} {minute} {hour} {dom} {month} {dow}");
        if let Ok(s) = Schedule::parse_with_default_zone(&spec, Tz::UTC) {
            let t = DateTime::from_timestamp(secs, 0).unwrap();
            if let Some(next) = s.next_after(t) {
                proptest::prop_assert!(next > t, "{} from {}: {}", spec, t, next);
            }
        }
    }
}
