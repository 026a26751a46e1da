//! One CSV field of a mirror's column, validated for its type
//! (docs/mirrors.md#types): pure, returning the canonical text PostgreSQL reads
//! back as the same value (so COPY never sees an invalid one), `None` for NULL,
//! or the reason in the words of today's rejects (docs/sync.md#4-validate).
//!
//! Every type trims the field at both ends first; an empty field is NULL where
//! the column is `nullable` and a reject elsewhere. The canonical text is the
//! value itself, not yet escaped for COPY's format.

use super::{ColumnSpec, ColumnType, ValueRule};
use crate::domain::{Email, FullName};
use chrono::{NaiveDate, NaiveTime};
use std::borrow::Cow;

/// The longest excerpt of a field a reason quotes, in characters.
const SHOWN_CHARS: usize = 40;

/// Digits a numeric's mantissa may have, and the largest exponent: far inside
/// PostgreSQL's limits (131072 digits before the point, 16383 after).
const NUMERIC_MAX_DIGITS: usize = 1000;
const NUMERIC_MAX_EXPONENT: u32 = 1000;

/// The field `raw` of `column`: `Ok(Some(text))` to load, `Ok(None)` for NULL,
/// or the reject reason, naming the column.
pub fn parse_field<'a>(column: &ColumnSpec, raw: &'a str) -> Result<Option<Cow<'a, str>>, String> {
    let name = column.name.as_str();
    if column.rule == ValueRule::FollowersFullName {
        return FullName::parse(raw)
            .map(|n| Some(Cow::Owned(n.as_str().to_owned())))
            .map_err(|e| e.to_string());
    }
    let value = raw.trim();
    // An empty address keeps the followers rule's own reason ("email is empty").
    if value.is_empty() && (column.nullable || column.ty != ColumnType::Email) {
        return if column.nullable {
            Ok(None)
        } else {
            Err(format!("{name} is empty (the column is not nullable)"))
        };
    }
    parse_value(column.ty, value)
        .map(Some)
        .map_err(|reason| match column.ty {
            ColumnType::Email if name == "email" => reason,
            ColumnType::Email => format!("{name}: {reason}"),
            _ => format!("{name} {reason}"),
        })
}

/// A non-empty, trimmed value of type `ty`. The reason of an `email` is the
/// email rule's own message; the others continue the column's name
/// (`"12x" is not a whole number`).
pub fn parse_value(ty: ColumnType, value: &str) -> Result<Cow<'_, str>, String> {
    match ty {
        ColumnType::Text { max_length } => text(value, max_length),
        ColumnType::Email => Email::parse(value)
            .map(|e| Cow::Owned(e.as_str().to_owned()))
            .map_err(|e| e.to_string()),
        ColumnType::Bigint => integer::<i64>(value),
        ColumnType::Integer => integer::<i32>(value),
        ColumnType::Numeric => numeric(value),
        ColumnType::Boolean => boolean(value).map(Cow::Borrowed),
        ColumnType::Date => date(value).map(|()| Cow::Borrowed(value)),
        ColumnType::Timestamp => timestamp(value, false).map(Cow::Owned),
        ColumnType::Timestamptz => timestamp(value, true).map(Cow::Owned),
        ColumnType::Uuid => uuid(value),
    }
}

/// `value` quoted for a reason, cut to `SHOWN_CHARS` characters.
fn shown(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        None => format!("{value:?}"),
        Some((i, _)) => format!("{:?}…", &value[..i]),
    }
}

fn text(value: &str, max_length: Option<u32>) -> Result<Cow<'_, str>, String> {
    if value.contains('\0') {
        return Err("contains a NUL character".into());
    }
    if let Some(max) = max_length {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let chars = value.chars().count();
        if chars > max {
            return Err(format!(
                "is {chars} characters long, at most {max} are allowed"
            ));
        }
    }
    Ok(Cow::Borrowed(value))
}

fn integer<T>(value: &str) -> Result<Cow<'_, str>, String>
where
    T: std::str::FromStr + ToString + num_bounds::Bounded,
{
    let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        let hint = if digits.contains(['.', 'e', 'E']) {
            " (a whole number has no decimal point or exponent)"
        } else if digits.contains([',', '_', ' ', '\'']) {
            " (write it without thousands separators)"
        } else {
            ""
        };
        return Err(format!("{} is not a whole number{hint}", shown(value)));
    }
    match value.parse::<T>() {
        Ok(n) => {
            let canonical = n.to_string();
            Ok(if canonical == value {
                Cow::Borrowed(value)
            } else {
                Cow::Owned(canonical)
            })
        }
        Err(_) => Err(format!(
            "{} is out of range ({} to {})",
            shown(value),
            T::MIN_TEXT,
            T::MAX_TEXT
        )),
    }
}

/// The two integer widths and their bounds, as text for the reasons.
mod num_bounds {
    pub(super) trait Bounded {
        const MIN_TEXT: &'static str;
        const MAX_TEXT: &'static str;
    }
    impl Bounded for i64 {
        const MIN_TEXT: &'static str = "-9223372036854775808";
        const MAX_TEXT: &'static str = "9223372036854775807";
    }
    impl Bounded for i32 {
        const MIN_TEXT: &'static str = "-2147483648";
        const MAX_TEXT: &'static str = "2147483647";
    }
}

/// `[+-]digits[.digits][e[+-]digits]` (or `.digits`), at most
/// `NUMERIC_MAX_DIGITS` digits and an exponent of at most `NUMERIC_MAX_EXPONENT`;
/// not NaN nor Infinity. Canonical: no `+`, leading zeros dropped, `0` before a
/// bare point, no trailing point, the exponent as `e[-]n`.
fn numeric(value: &str) -> Result<Cow<'_, str>, String> {
    let invalid = |hint: &str| Err(format!("{} is not a number{hint}", shown(value)));
    let lowered = value.to_ascii_lowercase();
    let unsigned = lowered.trim_start_matches(['+', '-']);
    if matches!(unsigned, "nan" | "inf" | "infinity") {
        return invalid(" (NaN and Infinity are not accepted)");
    }
    let (negative, rest) = match value.as_bytes().first() {
        Some(b'-') => (true, &value[1..]),
        Some(b'+') => (false, &value[1..]),
        _ => (false, value),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (mantissa, None),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || !fraction.is_none_or(all_digits) {
        let hint = if mantissa.contains(',') {
            " (use a point for decimals and no thousands separators)"
        } else {
            ""
        };
        return invalid(hint);
    }
    let fraction = fraction.unwrap_or("");
    if whole.is_empty() && fraction.is_empty() {
        return invalid("");
    }
    if whole.len() + fraction.len() > NUMERIC_MAX_DIGITS {
        return Err(format!("has more than {NUMERIC_MAX_DIGITS} digits"));
    }
    let exponent = match exponent {
        None => None,
        Some(e) => {
            let (sign, digits) = match e.as_bytes().first() {
                Some(b'-') => ("-", &e[1..]),
                Some(b'+') => ("", &e[1..]),
                _ => ("", e),
            };
            if digits.is_empty() || !all_digits(digits) {
                return invalid("");
            }
            let magnitude = digits.trim_start_matches('0');
            match magnitude.parse::<u32>() {
                Ok(n) if n <= NUMERIC_MAX_EXPONENT => Some(format!("e{sign}{n}")),
                _ if magnitude.is_empty() => None,
                _ => {
                    return Err(format!(
                        "{} has an exponent beyond ±{NUMERIC_MAX_EXPONENT}",
                        shown(value)
                    ))
                }
            }
        }
    };
    let whole = whole.trim_start_matches('0');
    let mut out = String::with_capacity(value.len() + 1);
    if negative {
        out.push('-');
    }
    out.push_str(if whole.is_empty() { "0" } else { whole });
    if !fraction.is_empty() {
        out.push('.');
        out.push_str(fraction);
    }
    if let Some(e) = exponent {
        out.push_str(&e);
    }
    Ok(if out == value {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(out)
    })
}

/// `true`/`false`, `t`/`f`, `yes`/`no`, `y`/`n`, `1`/`0`, any case.
fn boolean(value: &str) -> Result<&'static str, String> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" => Ok("true"),
        "false" | "f" | "no" | "n" | "0" => Ok("false"),
        _ => Err(format!(
            "{} is not a boolean (expected true or false, t/f, yes/no, y/n or 1/0)",
            shown(value)
        )),
    }
}

/// Two ASCII digits at `s[at..at + 2]`.
fn two_digits(s: &[u8], at: usize) -> Option<u32> {
    match s.get(at..at + 2)? {
        [a, b] if a.is_ascii_digit() && b.is_ascii_digit() => {
            Some(u32::from(a - b'0') * 10 + u32::from(b - b'0'))
        }
        _ => None,
    }
}

/// `YYYY-MM-DD`, a real calendar date from year 1 to 9999.
fn date(value: &str) -> Result<(), String> {
    let s = value.as_bytes();
    let invalid = || {
        format!(
            "{} is not a date (expected YYYY-MM-DD, like 2024-02-29)",
            shown(value)
        )
    };
    let shape = s.len() == 10 && s[4] == b'-' && s[7] == b'-';
    let (Some(century), Some(year), Some(month), Some(day)) = (
        two_digits(s, 0),
        two_digits(s, 2),
        two_digits(s, 5),
        two_digits(s, 8),
    ) else {
        return Err(invalid());
    };
    let year = century * 100 + year;
    if !shape {
        return Err(invalid());
    }
    if year == 0 {
        return Err(format!("{} is before year 1", shown(value)));
    }
    let year = i32::try_from(year).map_err(|_| invalid())?;
    NaiveDate::from_ymd_opt(year, month, day)
        .map(|_| ())
        .ok_or_else(|| format!("{} is not a calendar date", shown(value)))
}

/// `YYYY-MM-DD[T ]HH:MM[:SS[.ffffff]]`, and for `timestamptz` an offset (`Z`,
/// `±HH`, `±HHMM`, `±HH:MM`, at most 15:59), which a `timestamp` may not have.
/// Canonical: `YYYY-MM-DD HH:MM:SS[.f]` (+ `±HH:MM`).
fn timestamp(value: &str, with_zone: bool) -> Result<String, String> {
    let expected = if with_zone {
        "expected YYYY-MM-DD HH:MM:SS with an offset, like 2024-02-29T13:45:00Z or 2024-02-29 13:45:00+02:00"
    } else {
        "expected YYYY-MM-DD HH:MM:SS, like 2024-02-29 13:45:00"
    };
    let invalid = || format!("{} is not a timestamp ({expected})", shown(value));
    if value.len() < 16 || !value.is_char_boundary(10) {
        return Err(invalid());
    }
    let (day, rest) = value.split_at(10);
    date(day).map_err(|e| {
        if e.contains("calendar") || e.contains("year 1") {
            e
        } else {
            invalid()
        }
    })?;
    let rest = rest
        .strip_prefix(['T', 't', ' '])
        .ok_or_else(invalid)?
        .as_bytes();
    let (Some(hour), Some(minute)) = (two_digits(rest, 0), two_digits(rest, 3)) else {
        return Err(invalid());
    };
    if rest[2] != b':' {
        return Err(invalid());
    }
    let mut at = 5;
    let mut second = 0;
    let mut fraction = "";
    if rest.get(at) == Some(&b':') {
        second = two_digits(rest, at + 1).ok_or_else(invalid)?;
        at += 3;
        if rest.get(at) == Some(&b'.') {
            let digits = rest[at + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if digits == 0 {
                return Err(invalid());
            }
            if digits > 6 {
                return Err(format!(
                    "{} has more than 6 fractional digits (PostgreSQL keeps microseconds)",
                    shown(value)
                ));
            }
            fraction = std::str::from_utf8(&rest[at..=at + digits]).map_err(|_| invalid())?;
            at += 1 + digits;
        }
    }
    if NaiveTime::from_hms_opt(hour, minute, second).is_none() {
        return Err(format!("{} is not a time of day", shown(value)));
    }
    let zone = &rest[at..];
    let offset = match (zone, with_zone) {
        ([], false) => String::new(),
        ([], true) => {
            return Err(format!(
                "{} has no time zone offset (add Z for UTC, or the offset, like +02:00)",
                shown(value)
            ))
        }
        ([b'Z' | b'z' | b'+' | b'-', ..], false) => {
            return Err(format!(
                "{} has a time zone offset, but the column is a timestamp without time zone",
                shown(value)
            ))
        }
        ([b'Z' | b'z'], true) => "+00:00".into(),
        ([sign @ (b'+' | b'-'), digits @ ..], true) => {
            let (hours, minutes) = match digits {
                [_, _] => (two_digits(digits, 0), Some(0)),
                [_, _, _, _] => (two_digits(digits, 0), two_digits(digits, 2)),
                [_, _, b':', _, _] => (two_digits(digits, 0), two_digits(digits, 3)),
                _ => (None, None),
            };
            match (hours, minutes) {
                (Some(h), Some(m)) if h <= 15 && m <= 59 => {
                    format!("{}{h:02}:{m:02}", char::from(*sign))
                }
                (Some(_), Some(_)) => {
                    return Err(format!("{} has an offset beyond ±15:59", shown(value)))
                }
                _ => return Err(invalid()),
            }
        }
        _ => return Err(invalid()),
    };
    Ok(format!(
        "{day} {hour:02}:{minute:02}:{second:02}{fraction}{offset}"
    ))
}

/// Hyphenated (8-4-4-4-12 hex digits), any case; canonical in lower case.
fn uuid(value: &str) -> Result<Cow<'_, str>, String> {
    let s = value.as_bytes();
    let ok = s.len() == 36
        && s.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if !ok {
        return Err(format!(
            "{} is not a UUID (expected 8-4-4-4-12 hex digits, like 0190b2c4-3f1e-7c3a-9d2e-5b6f7a8c9d0e)",
            shown(value)
        ));
    }
    Ok(if s.iter().any(u8::is_ascii_uppercase) {
        Cow::Owned(value.to_ascii_lowercase())
    } else {
        Cow::Borrowed(value)
    })
}

#[cfg(test)]
mod tests;
