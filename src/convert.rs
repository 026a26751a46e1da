//! The one place where numbers cross the database boundary (and the few other
//! type boundaries of the pipeline) change type.
//!
//! PostgreSQL has only signed integers: counts and line numbers are `bigint`
//! (`i64`) there and `u64` here, lengths in COPY's binary format are `int4`
//! (`i32`) and here `usize`. A value that does not fit is an [`OutOfRange`]
//! error naming what it was, never a silent wrap and never a panic: a
//! `count(*)` is non-negative by construction, and should it ever not be, the
//! run fails with that name instead of recording a count near 2^64.
//! Saturation is used only where it is the meaning (each such helper says so);
//! the `f64` helpers are approximate by definition (ratios and gauges).

use sea_orm::DbErr;
use std::time::Duration;

/// A value that does not fit the type it is converted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{what} is {value}, which does not fit in {into}")]
pub struct OutOfRange {
    /// What the value is (a column, a count, a length).
    pub what: &'static str,
    pub value: i128,
    /// The type it was converted from.
    pub from: &'static str,
    /// The type it was converted to.
    pub into: &'static str,
}

/// A database value conversion failure, so `?` works in the
/// functions that return [`DbErr`].
impl From<OutOfRange> for DbErr {
    fn from(e: OutOfRange) -> Self {
        DbErr::TryIntoErr {
            from: e.from,
            into: e.into,
            source: Box::new(e),
        }
    }
}

/// A count or line number read from a `bigint` column.
pub(crate) fn count(what: &'static str, n: i64) -> Result<u64, OutOfRange> {
    u64::try_from(n).map_err(|_| OutOfRange {
        what,
        value: i128::from(n),
        from: "bigint",
        into: "u64",
    })
}

/// A count or line number written to a `bigint` column or parameter.
pub(crate) fn bigint(what: &'static str, n: u64) -> Result<i64, OutOfRange> {
    i64::try_from(n).map_err(|_| OutOfRange {
        what,
        value: i128::from(n),
        from: "u64",
        into: "bigint",
    })
}

/// A field length in COPY's binary format (`int4`).
pub(crate) fn int4_len(what: &'static str, n: usize) -> Result<i32, OutOfRange> {
    i32::try_from(n).map_err(|_| OutOfRange {
        what,
        value: i128::try_from(n).unwrap_or(i128::MAX),
        from: "usize",
        into: "int4",
    })
}

/// A length or count of items in memory as a `u64` count. Lossless on every
/// target Rust supports (pointers are at most 64 bits); saturates otherwise.
pub(crate) fn len(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// A `u64` limit as a `bigint` parameter, saturating: a limit beyond `bigint`
/// (`JOURNAL_KEEP_RUNS`) is no limit.
pub(crate) fn saturating_bigint(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A `u64` limit as an `int4` parameter, saturating: used for limits such as
/// the journal's retention days, where more than `i32::MAX` means "no limit".
pub(crate) fn saturating_int4(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A wait in whole milliseconds as an `int4` setting (`lock_timeout`):
/// at least 1 (0 would mean "wait forever"), saturating at `i32::MAX`
/// (about 24 days, "wait as long as PostgreSQL allows").
pub(crate) fn millis_int4(wait: Duration) -> i32 {
    i32::try_from(wait.as_millis()).unwrap_or(i32::MAX).max(1)
}

/// A count as `f64` for a ratio or a gauge: exact up to 2^53, approximate
/// above, which is the meaning of a ratio.
#[allow(clippy::cast_precision_loss)]
pub(crate) fn approx(n: u64) -> f64 {
    n as f64
}

/// A signed value (a Unix timestamp) as `f64` for a gauge; exact up to 2^53.
#[allow(clippy::cast_precision_loss)]
pub(crate) fn approx_signed(n: i64) -> f64 {
    n as f64
}

/// `part` as a percentage of `whole` (for messages; the guards refuse only
/// when `whole` is positive).
pub(crate) fn percent(part: u64, whole: u64) -> f64 {
    approx(part) * 100.0 / approx(whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_out_of_range_are_named_errors() {
        assert_eq!(count("rows", 7), Ok(7));
        let e = count("rows", -1).unwrap_err();
        assert_eq!(e.to_string(), "rows is -1, which does not fit in u64");
        assert_eq!(bigint("limit", 5), Ok(5));
        assert!(bigint("limit", u64::MAX).is_err());
        assert_eq!(int4_len("email", 6), Ok(6));
        assert!(int4_len("email", usize::MAX).is_err());
        assert!(matches!(
            DbErr::from(e),
            DbErr::TryIntoErr {
                from: "bigint",
                into: "u64",
                ..
            }
        ));
    }

    #[test]
    fn saturation_where_it_is_the_meaning() {
        assert_eq!(saturating_bigint(u64::MAX), i64::MAX);
        assert_eq!(saturating_int4(30), 30);
        assert_eq!(saturating_int4(u64::MAX), i32::MAX);
        assert_eq!(millis_int4(Duration::ZERO), 1);
        assert_eq!(millis_int4(Duration::from_millis(1500)), 1500);
        assert_eq!(millis_int4(Duration::MAX), i32::MAX);
        assert_eq!(len(3), 3);
        assert!((percent(1, 4) - 25.0).abs() < f64::EPSILON);
    }
}
