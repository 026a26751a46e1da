//! The two kinds of schedule and their `next` functions, ported from
//! robfig/cron v3 (`SpecSchedule.Next` in spec.go and
//! `ConstantDelaySchedule.Next` in constantdelay.go).
//!
//! `SpecSchedule::next` follows robfig's field-by-field search literally,
//! on the Go time model of `gotime.rs`, so that its results match robfig's
//! in every case, including its daylight-saving behaviour:
//!
//! * wall times skipped by a spring-forward are not fired that day (the hour
//!   search steps over them on the absolute time line);
//! * wall times repeated in an autumn overlap fire twice;
//! * a midnight that does not exist is repaired the way robfig does it
//!   (move to the nearest midnight when the day search lands at another
//!   hour);
//! * the search gives up (returns `None`) once it passes five years after
//!   the start year, so a schedule that can never fire, such as
//!   `0 0 30 Feb *`, yields `None`.
//!
//! One deliberate difference: when a zone skips a whole calendar day (as
//! Pacific/Apia did on 2011-12-30), Go's `AddDate(0, 0, 1)` lands on the
//! same instant again and robfig's day search never terminates. Here the
//! search steps over the missing day instead (24 hours of absolute time).
//! A generous iteration budget guards against any other non-terminating
//! case; it is never reached by a search robfig completes.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::gotime::{Civil, GoTime};
use super::parse::STAR_BIT;

/// A crontab-style schedule as bit sets, one bit per allowed value, plus
/// [`STAR_BIT`] for fields written as `*`/`?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpecSchedule {
    pub second: u64,
    pub minute: u64,
    pub hour: u64,
    pub dom: u64,
    pub month: u64,
    pub dow: u64,
}

fn has(bits: u64, value: u32) -> bool {
    bits & (1 << value) != 0
}

impl SpecSchedule {
    /// robfig's `dayMatches`: if either day field was written with a star,
    /// both must match; if both are restricted, either may match.
    fn day_matches(&self, c: &Civil) -> bool {
        let dom_match = has(self.dom, c.day);
        let dow_match = has(self.dow, c.weekday);
        if self.dom & STAR_BIT != 0 || self.dow & STAR_BIT != 0 {
            dom_match && dow_match
        } else {
            dom_match || dow_match
        }
    }

    /// True if no time can ever match (a field whose list was empty, such
    /// as `,`). robfig's search would run until its five-year limit and
    /// give up; answering at once gives the same result without the work.
    fn never_matches(&self) -> bool {
        let values = |bits: u64| bits & !STAR_BIT;
        let no_day = if self.dom & STAR_BIT != 0 || self.dow & STAR_BIT != 0 {
            values(self.dom) == 0 || values(self.dow) == 0
        } else {
            values(self.dom) == 0 && values(self.dow) == 0
        };
        values(self.second) == 0
            || values(self.minute) == 0
            || values(self.hour) == 0
            || values(self.month) == 0
            || no_day
    }

    /// The first activation strictly after `after`, computed on the wall
    /// clock of `zone` exactly as robfig's `SpecSchedule.Next`.
    pub(crate) fn next(&self, zone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.never_matches() {
            return None;
        }

        // Start at the earliest possible time: the next whole second.
        let mut t = GoTime::new(after.timestamp().checked_add(1)?, zone);
        // Whether a field has been advanced (after which the lower fields
        // start from their minimum instead of from the current time).
        let mut added = false;
        let year_limit = t.civil()?.year + 5;
        // Far more steps than any terminating search needs (five years of
        // day steps plus one day of hour, minute and second steps per
        // matching day is well under a million).
        let mut budget: u32 = 10_000_000;
        let mut step = || {
            budget = budget.checked_sub(1)?;
            Some(())
        };

        'wrap: loop {
            let mut c = t.civil()?;
            if c.year > year_limit {
                return None;
            }

            // Find the first applicable month.
            while !has(self.month, c.month) {
                if !added {
                    added = true;
                    t = GoTime::date(zone, c.year, i64::from(c.month), 1, 0, 0, 0)?;
                }
                step()?;
                t = t.add_date(0, 1, 0)?;
                c = t.civil()?;
                if c.month == 1 {
                    continue 'wrap;
                }
            }

            // Find a day in that month.
            while !self.day_matches(&c) {
                if !added {
                    added = true;
                    t = GoTime::date(zone, c.year, i64::from(c.month), i64::from(c.day), 0, 0, 0)?;
                }
                step()?;
                let before = t;
                t = t.add_date(0, 0, 1)?;
                if t.unix <= before.unix {
                    // The next calendar day does not exist in this zone
                    // (robfig would loop forever): step over it.
                    t = before.add_seconds(86_400)?;
                }
                c = t.civil()?;
                // Midnight may not exist (DST starting at 00:00); then the
                // date normalisation lands at another hour. Go to the
                // nearest midnight: forward from the evening, back otherwise.
                if c.hour != 0 {
                    let shift = if c.hour > 12 {
                        i64::from(24 - c.hour)
                    } else {
                        -i64::from(c.hour)
                    };
                    t = t.add_seconds(shift * 3_600)?;
                    c = t.civil()?;
                }
                if c.day == 1 {
                    continue 'wrap;
                }
            }

            while !has(self.hour, c.hour) {
                if !added {
                    added = true;
                    t = GoTime::date(
                        zone,
                        c.year,
                        i64::from(c.month),
                        i64::from(c.day),
                        i64::from(c.hour),
                        0,
                        0,
                    )?;
                }
                step()?;
                t = t.add_seconds(3_600)?;
                c = t.civil()?;
                if c.hour == 0 {
                    continue 'wrap;
                }
            }

            while !has(self.minute, c.minute) {
                if !added {
                    added = true;
                    t = t.truncate(60);
                }
                step()?;
                t = t.add_seconds(60)?;
                c = t.civil()?;
                if c.minute == 0 {
                    continue 'wrap;
                }
            }

            while !has(self.second, c.second) {
                if !added {
                    added = true;
                    t = t.truncate(1);
                }
                step()?;
                t = t.add_seconds(1)?;
                c = t.civil()?;
                if c.second == 0 {
                    continue 'wrap;
                }
            }

            return t.to_utc();
        }
    }
}

/// `@every <duration>`: a fixed delay of whole seconds, at least one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConstantDelay {
    /// The delay in seconds (at least 1).
    pub seconds: i64,
}

impl ConstantDelay {
    /// robfig's `Every`: delays under one second (including zero and
    /// negative ones) become one second; anything else is truncated to
    /// whole seconds.
    pub(crate) fn from_go_nanos(nanos: i64) -> Self {
        const NANOS_PER_SECOND: i64 = 1_000_000_000;
        let seconds = if nanos < NANOS_PER_SECOND {
            1
        } else {
            nanos / NANOS_PER_SECOND
        };
        ConstantDelay { seconds }
    }

    /// robfig's `ConstantDelaySchedule.Next`: `after` rounded down to the
    /// second, plus the delay. Independent of any time zone.
    pub(crate) fn next(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(after.timestamp().checked_add(self.seconds)?, 0)
    }
}
