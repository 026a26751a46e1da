//! Each type's edge cases, and properties: what a type accepts, its canonical
//! text reads back as the same value.

use super::*;
use crate::mirror::{ColumnName, ColumnSpec};
use proptest::prelude::*;

fn column(ty: ColumnType, nullable: bool) -> ColumnSpec {
    ColumnSpec {
        name: ColumnName::parse("col").unwrap(),
        ty,
        nullable,
        source: "col".into(),
        rule: ValueRule::Standard,
    }
}

/// The canonical text of `raw` as a non-nullable `ty`, or the reason.
fn value(ty: ColumnType, raw: &str) -> Result<String, String> {
    parse_field(&column(ty, false), raw).map(|v| v.unwrap().into_owned())
}

fn accepts(ty: ColumnType, raw: &str, canonical: &str) {
    assert_eq!(value(ty, raw).as_deref(), Ok(canonical), "{ty} {raw:?}");
}

fn refuses(ty: ColumnType, raw: &str, reason: &str) {
    let e = value(ty, raw).unwrap_err();
    assert!(e.contains(reason), "{ty} {raw:?}: {e}");
    assert!(e.starts_with("col "), "{e}");
}

const TEXT: ColumnType = ColumnType::Text { max_length: None };

#[test]
fn empty_is_null_only_where_nullable() {
    for ty in [
        TEXT,
        ColumnType::Bigint,
        ColumnType::Date,
        ColumnType::Email,
    ] {
        assert_eq!(parse_field(&column(ty, true), "  "), Ok(None));
    }
    for ty in [TEXT, ColumnType::Bigint, ColumnType::Date] {
        refuses(ty, "", "col is empty (the column is not nullable)");
        refuses(ty, " \t", "is empty");
    }
    // An email keeps the followers rule's reason, word for word.
    let mut email = column(ColumnType::Email, false);
    assert_eq!(parse_field(&email, " ").unwrap_err(), "col: email is empty");
    email.name = ColumnName::parse("email").unwrap();
    assert_eq!(parse_field(&email, "").unwrap_err(), "email is empty");
}

#[test]
fn text() {
    accepts(
        TEXT,
        "  Ann \"Lee\"\nline two\r\n ",
        "Ann \"Lee\"\nline two",
    );
    accepts(TEXT, "x,y;z", "x,y;z");
    refuses(TEXT, "a\0b", "contains a NUL character");
    let short = ColumnType::Text {
        max_length: Some(3),
    };
    accepts(short, " äöü ", "äöü");
    refuses(short, "abcd", "is 4 characters long, at most 3 are allowed");
}

#[test]
fn the_followers_full_name_rule() {
    let mut c = column(
        ColumnType::Text {
            max_length: Some(255),
        },
        false,
    );
    c.rule = ValueRule::FollowersFullName;
    assert_eq!(parse_field(&c, "  ").unwrap().as_deref(), Some(""));
    assert_eq!(parse_field(&c, " Ann ").unwrap().as_deref(), Some("Ann"));
    let e = parse_field(&c, &"x".repeat(256)).unwrap_err();
    assert_eq!(
        e,
        "full_name is 256 characters long, at most 255 are allowed"
    );
}

#[test]
fn email() {
    let mut c = column(ColumnType::Email, false);
    assert_eq!(
        parse_field(&c, " Ann@X.io ").unwrap().as_deref(),
        Some("ann@x.io")
    );
    assert_eq!(
        parse_field(&c, "a@xn--bcher-kva.de").unwrap().as_deref(),
        Some("a@bücher.de")
    );
    assert_eq!(
        parse_field(&c, "ann").unwrap_err(),
        "col: email \"ann\" has no '@'"
    );
    c.name = ColumnName::parse("email").unwrap();
    assert_eq!(
        parse_field(&c, "ann").unwrap_err(),
        "email \"ann\" has no '@'"
    );
}

#[test]
fn integers() {
    for ty in [ColumnType::Bigint, ColumnType::Integer] {
        accepts(ty, "42", "42");
        accepts(ty, "+42", "42");
        accepts(ty, "-007", "-7");
        accepts(ty, "-0", "0");
        refuses(
            ty,
            "1.0",
            "\"1.0\" is not a whole number (a whole number has no decimal point",
        );
        refuses(ty, "1e3", "no decimal point or exponent");
        refuses(ty, "1,000", "without thousands separators");
        refuses(ty, "1_000", "without thousands separators");
        refuses(ty, "-", "is not a whole number");
        refuses(ty, "+-1", "is not a whole number");
        refuses(ty, "٣", "is not a whole number");
        refuses(ty, "0x10", "is not a whole number");
    }
    let big = ColumnType::Bigint;
    accepts(big, "-9223372036854775808", "-9223372036854775808");
    accepts(big, "9223372036854775807", "9223372036854775807");
    refuses(
        big,
        "9223372036854775808",
        "is out of range (-9223372036854775808 to 9223372036854775807)",
    );
    let int = ColumnType::Integer;
    accepts(int, "-2147483648", "-2147483648");
    accepts(int, "2147483647", "2147483647");
    refuses(
        int,
        "2147483648",
        "is out of range (-2147483648 to 2147483647)",
    );
    refuses(int, &"9".repeat(100), "\"… is out of range");
}

#[test]
fn numeric() {
    let n = ColumnType::Numeric;
    accepts(n, "12.50", "12.50");
    accepts(n, "+12.5", "12.5");
    accepts(n, "-0.001", "-0.001");
    accepts(n, ".5", "0.5");
    accepts(n, "5.", "5");
    accepts(n, "007", "7");
    accepts(n, "1e3", "1e3");
    accepts(n, "1.5E-07", "1.5e-7");
    accepts(n, "2e+0", "2");
    accepts(n, "1e1000", "1e1000");
    refuses(n, "1e1001", "has an exponent beyond ±1000");
    refuses(
        n,
        "NaN",
        "is not a number (NaN and Infinity are not accepted)",
    );
    refuses(n, "-Infinity", "NaN and Infinity");
    refuses(n, "inf", "NaN and Infinity");
    refuses(n, "1,5", "use a point for decimals");
    refuses(n, "1.000,50", "use a point for decimals");
    refuses(n, ".", "is not a number");
    refuses(n, "e5", "is not a number");
    refuses(n, "1e", "is not a number");
    refuses(n, "1.2.3", "is not a number");
    refuses(n, "- 1", "is not a number");
    refuses(n, "0x1f", "is not a number");
    refuses(n, &"1".repeat(1001), "has more than 1000 digits");
}

#[test]
fn boolean() {
    let b = ColumnType::Boolean;
    for t in ["true", "TRUE", "t", "T", "yes", "Yes", "y", "1"] {
        accepts(b, t, "true");
    }
    for f in ["false", "False", "f", "no", "NO", "n", "0"] {
        accepts(b, f, "false");
    }
    for bad in ["2", "on", "off", "tru", "ja", "-1"] {
        refuses(b, bad, "is not a boolean (expected true or false");
    }
}

#[test]
fn date() {
    let d = ColumnType::Date;
    accepts(d, "2024-02-29", "2024-02-29");
    accepts(d, "0001-01-01", "0001-01-01");
    accepts(d, "9999-12-31", "9999-12-31");
    refuses(d, "2023-02-29", "is not a calendar date");
    refuses(d, "2024-13-01", "is not a calendar date");
    refuses(d, "0000-01-01", "is before year 1");
    for bad in [
        "2024-2-29",
        "29.02.2024",
        "02/29/2024",
        "20240229",
        "2024-02-29T00:00",
        "+2024-02-29",
        "２０２４-02-29",
    ] {
        refuses(d, bad, "is not a date (expected YYYY-MM-DD");
    }
}

#[test]
fn timestamp() {
    let t = ColumnType::Timestamp;
    accepts(t, "2024-02-29 13:45:00", "2024-02-29 13:45:00");
    accepts(t, "2024-02-29T13:45", "2024-02-29 13:45:00");
    accepts(
        t,
        "2024-02-29t13:45:07.123456",
        "2024-02-29 13:45:07.123456",
    );
    accepts(t, "2024-02-29 00:00:00.5", "2024-02-29 00:00:00.5");
    refuses(
        t,
        "2024-02-29 13:45:00Z",
        "has a time zone offset, but the column is a timestamp without time zone",
    );
    refuses(t, "2024-02-29 13:45:00+02:00", "without time zone");
    refuses(t, "2024-02-29 24:00:00", "is not a time of day");
    refuses(t, "2024-02-29 23:59:60", "is not a time of day");
    refuses(t, "2024-02-29 13:60", "is not a time of day");
    refuses(
        t,
        "2024-02-29 13:45:00.1234567",
        "more than 6 fractional digits",
    );
    refuses(t, "2023-02-29 13:45:00", "is not a calendar date");
    for bad in [
        "2024-02-29",
        "2024-02-29 1:45",
        "2024-02-29 13:45:",
        "2024-02-29 13:45:00.",
        "2024-02-29_13:45",
        "2024-02-29 13h45",
        "2024-02-29 13:45:00 PM",
    ] {
        refuses(t, bad, "is not a timestamp (expected YYYY-MM-DD HH:MM:SS");
    }
}

#[test]
fn timestamptz_needs_an_offset() {
    let t = ColumnType::Timestamptz;
    accepts(t, "2024-02-29T13:45:00Z", "2024-02-29 13:45:00+00:00");
    accepts(t, "2024-02-29 13:45:00z", "2024-02-29 13:45:00+00:00");
    accepts(
        t,
        "2024-02-29 13:45:00.25+02",
        "2024-02-29 13:45:00.25+02:00",
    );
    accepts(t, "2024-02-29 13:45-0530", "2024-02-29 13:45:00-05:30");
    accepts(t, "2024-02-29 13:45:00+14:00", "2024-02-29 13:45:00+14:00");
    accepts(t, "0001-01-01 00:00:00+15:59", "0001-01-01 00:00:00+15:59");
    refuses(
        t,
        "2024-02-29 13:45:00",
        "has no time zone offset (add Z for UTC, or the offset, like +02:00)",
    );
    refuses(
        t,
        "2024-02-29 13:45:00+16:00",
        "has an offset beyond ±15:59",
    );
    refuses(t, "2024-02-29 13:45:00+02:60", "beyond ±15:59");
    for bad in [
        "2024-02-29 13:45:00 +02:00",
        "2024-02-29 13:45:00+2",
        "2024-02-29 13:45:00 UTC",
        "2024-02-29 13:45:00+02:00:00",
        "2024-02-29 13:45:00Europe/Berlin",
    ] {
        refuses(
            t,
            bad,
            "is not a timestamp (expected YYYY-MM-DD HH:MM:SS with an offset",
        );
    }
}

#[test]
fn uuid() {
    let u = ColumnType::Uuid;
    accepts(
        u,
        "0190B2C4-3F1E-7C3A-9D2E-5B6F7A8C9D0E",
        "0190b2c4-3f1e-7c3a-9d2e-5b6f7a8c9d0e",
    );
    accepts(
        u,
        "00000000-0000-0000-0000-000000000000",
        "00000000-0000-0000-0000-000000000000",
    );
    for bad in [
        "0190b2c43f1e7c3a9d2e5b6f7a8c9d0e",
        "{0190b2c4-3f1e-7c3a-9d2e-5b6f7a8c9d0e}",
        "0190b2c4-3f1e-7c3a-9d2e-5b6f7a8c9d0",
        "0190b2c4-3f1e-7c3a-9d2e_5b6f7a8c9d0e",
        "g190b2c4-3f1e-7c3a-9d2e-5b6f7a8c9d0e",
    ] {
        refuses(u, bad, "is not a UUID");
    }
}

#[test]
fn a_long_field_is_cut_in_the_reason() {
    let e = value(ColumnType::Uuid, &"z".repeat(10_000)).unwrap_err();
    assert!(e.len() < 200, "{e}");
}

const ALL: [ColumnType; 10] = [
    TEXT,
    ColumnType::Text {
        max_length: Some(5),
    },
    ColumnType::Email,
    ColumnType::Bigint,
    ColumnType::Integer,
    ColumnType::Numeric,
    ColumnType::Boolean,
    ColumnType::Date,
    ColumnType::Timestamp,
    ColumnType::Timestamptz,
];

proptest! {
    #[test]
    fn never_panics_and_canonical_is_a_fixed_point(raw in "\\PC{0,40}|[-+0-9.eE:TZ ]{0,30}") {
        for ty in ALL.into_iter().chain([ColumnType::Uuid]) {
            if let Ok(canonical) = value(ty, &raw) {
                // The canonical text is accepted again as itself.
                prop_assert_eq!(value(ty, &canonical), Ok(canonical.clone()), "{} {:?}", ty, raw);
            }
        }
    }

    #[test]
    fn bigint_is_every_i64(n in any::<i64>()) {
        prop_assert_eq!(value(ColumnType::Bigint, &n.to_string()), Ok(n.to_string()));
        let plus = format!("+{n}");
        prop_assert_eq!(value(ColumnType::Integer, &plus).is_ok(), i32::try_from(n).is_ok());
    }

    #[test]
    fn accepted_integers_are_rust_integers(raw in "[-+]?[0-9]{1,22}") {
        match value(ColumnType::Bigint, &raw) {
            Ok(c) => prop_assert_eq!(c.parse::<i64>().ok(), raw.parse::<i64>().ok()),
            Err(_) => prop_assert!(raw.parse::<i64>().is_err()),
        }
    }

    #[test]
    fn numerics_keep_their_value(whole in "[0-9]{1,30}", fraction in "[0-9]{0,20}", exp in -300i32..300, neg in any::<bool>()) {
        let raw = format!("{}{whole}.{fraction}e{exp}", if neg { "-" } else { "" });
        let canonical = value(ColumnType::Numeric, &raw).unwrap();
        let (a, b) = (raw.parse::<f64>().unwrap(), canonical.parse::<f64>().unwrap());
        prop_assert_eq!(a, b, "{} → {}", raw, canonical);
    }

    #[test]
    fn dates_and_timestamps_read_back(days in 0i64..3_652_058, secs in 0u32..86_400, micros in 0u32..1_000_000) {
        let date = NaiveDate::from_ymd_opt(1, 1, 1).unwrap() + chrono::Days::new(days.unsigned_abs());
        let text = date.format("%Y-%m-%d").to_string();
        prop_assert_eq!(value(ColumnType::Date, &text), Ok(text.clone()));
        let at = date.and_time(NaiveTime::from_num_seconds_from_midnight_opt(secs, micros * 1000).unwrap());
        let iso = at.format("%Y-%m-%dT%H:%M:%S%.6f").to_string();
        let canonical = value(ColumnType::Timestamp, &iso).unwrap();
        let back = chrono::NaiveDateTime::parse_from_str(&canonical, "%Y-%m-%d %H:%M:%S%.f").unwrap();
        prop_assert_eq!(back, at);
        let canonical = value(ColumnType::Timestamptz, &format!("{iso}-03:30")).unwrap();
        let back = chrono::DateTime::parse_from_str(&canonical, "%Y-%m-%d %H:%M:%S%.f%:z").unwrap();
        prop_assert_eq!(back.naive_local(), at);
        prop_assert_eq!(back.offset().local_minus_utc(), -(3 * 3600 + 1800));
    }

    #[test]
    fn uuids_are_lower_case(n in any::<u128>()) {
        let u = ::uuid::Uuid::from_u128(n);
        let upper = u.hyphenated().to_string().to_uppercase();
        prop_assert_eq!(value(ColumnType::Uuid, &upper), Ok(u.hyphenated().to_string()));
    }
}
