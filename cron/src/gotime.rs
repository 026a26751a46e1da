//! A minimal model of Go's `time.Time` in a named zone.
//!
//! robfig/cron's `SpecSchedule.Next` is written against Go's time package
//! and its results depend on Go's exact semantics, in particular on how
//! `time.Date` resolves wall-clock times that do not exist (spring forward)
//! or exist twice (autumn overlap), on `AddDate` going through `time.Date`,
//! and on `Add`/`Truncate` working on absolute time. This module reproduces
//! exactly those operations on top of chrono-tz's offset tables, so that the
//! port in `spec.rs` can follow the Go algorithm step by step.
//!
//! Times are whole seconds since the Unix epoch (the schedule search never
//! needs sub-second precision once it has rounded up to the next second).
//! Every operation returns `None` instead of panicking when a value leaves
//! the range chrono can represent.

use chrono::{DateTime, Offset, TimeZone};
use chrono_tz::Tz;

const SECONDS_PER_DAY: i64 = 86_400;

/// UTC offset (seconds east of Greenwich) in force at the instant `unix`.
pub(crate) fn offset_at(tz: Tz, unix: i64) -> Option<i64> {
    let utc = DateTime::from_timestamp(unix, 0)?.naive_utc();
    Some(i64::from(
        tz.offset_from_utc_datetime(&utc).fix().local_minus_utc(),
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1-12).
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let (month, day) = (i64::from(month), i64::from(day));
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Proleptic Gregorian (year, month 1-12, day 1-31) of a day count since
/// 1970-01-01.
pub(crate) fn civil_from_days(days: i64) -> Option<(i64, u32, u32)> {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // month is in 1..=12 and day in 1..=31 by construction.
    Some((year, u32::try_from(month).ok()?, u32::try_from(day).ok()?))
}

/// The wall-clock reading of a [`GoTime`] in its zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// 0 = Sunday ... 6 = Saturday, as Go's `time.Weekday`.
    pub weekday: u32,
}

/// An instant (whole seconds) together with the zone it is presented in,
/// like a Go `time.Time` with a `*time.Location`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GoTime {
    pub unix: i64,
    pub tz: Tz,
}

impl GoTime {
    pub(crate) fn new(unix: i64, tz: Tz) -> Self {
        GoTime { unix, tz }
    }

    /// Wall-clock fields in the zone (Go's `Date`, `Clock`, `Weekday`).
    pub(crate) fn civil(self) -> Option<Civil> {
        let local = self.unix.checked_add(offset_at(self.tz, self.unix)?)?;
        let days = local.div_euclid(SECONDS_PER_DAY);
        let secs = local.rem_euclid(SECONDS_PER_DAY);
        let (year, month, day) = civil_from_days(days)?;
        // secs is in 0..86400, so these fit in u32.
        Some(Civil {
            year,
            month,
            day,
            hour: u32::try_from(secs / 3_600).ok()?,
            minute: u32::try_from(secs % 3_600 / 60).ok()?,
            second: u32::try_from(secs % 60).ok()?,
            // 1970-01-01 was a Thursday (4).
            weekday: u32::try_from((days + 4).rem_euclid(7)).ok()?,
        })
    }

    /// Go's `time.Date(year, month, day, hour, min, sec, 0, tz)`.
    ///
    /// Out-of-range fields are normalised the way Go does (month 13 is
    /// January of the next year, February 31 is early March, ...). The
    /// zone offset is then chosen with Go's two-step lookup: take the offset
    /// in force at the instant whose UTC reading equals the wall time, and if
    /// subtracting it lands outside that offset's period, use the offset in
    /// force at the corrected instant instead. For a wall time skipped by a
    /// spring-forward this yields a time one gap earlier (west of Greenwich)
    /// or later (east of it); for a repeated wall time it yields one of the
    /// two occurrences. That is what robfig/cron observes, so it is kept.
    pub(crate) fn date(
        tz: Tz,
        year: i64,
        month: i64,
        day: i64,
        hour: i64,
        minute: i64,
        second: i64,
    ) -> Option<GoTime> {
        let month0 = month.checked_sub(1)?;
        let year = year.checked_add(month0.div_euclid(12))?;
        // In 1..=12.
        let month = u32::try_from(month0.rem_euclid(12) + 1).ok()?;
        // Bound the year so the day arithmetic below cannot overflow; chrono
        // cannot represent anything near these years anyway.
        if !(-1_000_000..=1_000_000).contains(&year) {
            return None;
        }
        let days = days_from_civil(year, month, 1).checked_add(day.checked_sub(1)?)?;
        let clock = hour
            .checked_mul(3_600)?
            .checked_add(minute.checked_mul(60)?)?
            .checked_add(second)?;
        let local = days.checked_mul(SECONDS_PER_DAY)?.checked_add(clock)?;

        let first_guess = offset_at(tz, local)?;
        // If `local - first_guess` is still inside the period of
        // `first_guess`, the lookup below returns `first_guess` again; if not,
        // it returns the offset Go switches to. Either way this is Go's result.
        let offset = offset_at(tz, local.checked_sub(first_guess)?)?;
        Some(GoTime::new(local.checked_sub(offset)?, tz))
    }

    /// Go's `t.AddDate(years, months, days)`: `time.Date` on the shifted
    /// wall-clock fields.
    pub(crate) fn add_date(self, years: i64, months: i64, days: i64) -> Option<GoTime> {
        let c = self.civil()?;
        GoTime::date(
            self.tz,
            c.year.checked_add(years)?,
            i64::from(c.month).checked_add(months)?,
            i64::from(c.day).checked_add(days)?,
            i64::from(c.hour),
            i64::from(c.minute),
            i64::from(c.second),
        )
    }

    /// Go's `t.Add(d)` for a whole number of seconds (absolute time).
    pub(crate) fn add_seconds(self, seconds: i64) -> Option<GoTime> {
        Some(GoTime::new(self.unix.checked_add(seconds)?, self.tz))
    }

    /// Go's `t.Truncate(d)` for a whole number of seconds: rounds down on the
    /// absolute time line (Go's zero time is a whole number of minutes before
    /// the Unix epoch), not on the wall clock.
    pub(crate) fn truncate(self, seconds: i64) -> GoTime {
        GoTime::new(self.unix - self.unix.rem_euclid(seconds), self.tz)
    }

    /// The instant as a chrono UTC time.
    pub(crate) fn to_utc(self) -> Option<DateTime<chrono::Utc>> {
        DateTime::from_timestamp(self.unix, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn civil_round_trip_matches_chrono() {
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days).unwrap();
            assert_eq!(days_from_civil(y, m, d), days);
            let chrono_date = NaiveDate::from_ymd_opt(i32::try_from(y).unwrap(), m, d).unwrap();
            let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
            assert_eq!((chrono_date - epoch).num_days(), days);
        }
    }

    #[test]
    fn weekday_of_known_dates() {
        // 2012-07-09 was a Monday, 2012-07-15 a Sunday.
        let t = GoTime::new(1_341_792_000, Tz::UTC).civil().unwrap();
        assert_eq!((t.year, t.month, t.day, t.weekday), (2012, 7, 9, 1));
        let t = GoTime::new(1_342_310_400, Tz::UTC).civil().unwrap();
        assert_eq!((t.day, t.weekday), (15, 0));
    }

    fn rfc3339(t: GoTime) -> String {
        t.to_utc().unwrap().with_timezone(&t.tz).to_rfc3339()
    }

    /// How Go's time.Date resolves wall times around transitions, derived
    /// from its algorithm: for zones west of Greenwich a skipped time moves
    /// back by the gap and a repeated time picks the first (daylight)
    /// occurrence; east of Greenwich a skipped time moves forward and a
    /// repeated time picks the second (standard) occurrence.
    #[test]
    fn date_normalisation_like_go() {
        let ny = chrono_tz::America::New_York;
        let berlin = chrono_tz::Europe::Berlin;
        let cases: &[(Tz, [i64; 6], &str)] = &[
            // ordinary
            (ny, [2012, 7, 9, 12, 0, 0], "2012-07-09T12:00:00-04:00"),
            // skipped 02:30 (EST -> EDT at 02:00)
            (ny, [2012, 3, 11, 2, 30, 0], "2012-03-11T01:30:00-05:00"),
            // repeated 01:30 (EDT -> EST at 02:00)
            (ny, [2012, 11, 4, 1, 30, 0], "2012-11-04T01:30:00-04:00"),
            // skipped 02:30 (CET -> CEST at 02:00)
            (berlin, [2021, 3, 28, 2, 30, 0], "2021-03-28T03:30:00+02:00"),
            // repeated 02:30 (CEST -> CET at 03:00)
            (
                berlin,
                [2021, 10, 31, 2, 30, 0],
                "2021-10-31T02:30:00+01:00",
            ),
            // normalisation of out-of-range fields
            (Tz::UTC, [2013, 2, 31, 0, 0, 0], "2013-03-03T00:00:00+00:00"),
            (Tz::UTC, [2012, 13, 1, 0, 0, 0], "2013-01-01T00:00:00+00:00"),
            (
                Tz::UTC,
                [2012, 12, 32, 0, 0, 0],
                "2013-01-01T00:00:00+00:00",
            ),
            (Tz::UTC, [2012, 1, 1, 25, 0, 0], "2012-01-02T01:00:00+00:00"),
        ];
        for (tz, [y, mo, d, h, mi, s], want) in cases {
            let t = GoTime::date(*tz, *y, *mo, *d, *h, *mi, *s).unwrap();
            assert_eq!(rfc3339(t), *want, "{tz} {y}-{mo}-{d} {h}:{mi}:{s}");
        }
    }

    #[test]
    fn extreme_values_do_not_panic() {
        assert!(GoTime::date(Tz::UTC, i64::MAX, i64::MAX, i64::MAX, 0, 0, 0).is_none());
        assert!(GoTime::date(Tz::UTC, i64::MIN, i64::MIN, i64::MIN, 0, 0, 0).is_none());
        assert!(GoTime::new(i64::MAX, Tz::UTC).civil().is_none());
        assert!(GoTime::new(i64::MAX, Tz::UTC).add_seconds(1).is_none());
        assert_eq!(GoTime::new(-61, Tz::UTC).truncate(60).unix, -120);
    }
}
