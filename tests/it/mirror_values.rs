//! Mirror field values against the real PostgreSQL (docs/mirrors.md#types): every
//! value `mirror::value` accepts is read by PostgreSQL as the same value as the
//! field it came from, and loads into a column of the type a created table gets,
//! so COPY never sees an invalid value.

use crate::helpers::TestEnv;
use followers_etl::mirror::value::parse_value;
use followers_etl::mirror::ColumnType;

/// Edge cases per type (accepted or refused; only the accepted ones are sent).
fn edge_cases(ty: ColumnType) -> Vec<String> {
    let fixed: &[&str] = match ty {
        ColumnType::Text { .. } => &[
            "Ann \"Lee\"\nline two",
            "\\N",
            "a\\b",
            "x,y;z\t",
            "äöü 𝄞",
            "'; DROP TABLE t; --",
        ],
        ColumnType::Email => &["Ann@X.io", "a@xn--bcher-kva.de", "o'neil@x.io", "a+b@x.io"],
        ColumnType::Bigint => &[
            "42",
            "+42",
            "-007",
            "-0",
            "-9223372036854775808",
            "9223372036854775807",
            "9223372036854775808",
        ],
        ColumnType::Integer => &["-2147483648", "2147483647", "2147483648", "+0"],
        ColumnType::Numeric => &[
            "12.50", "+12.5", "-0.001", ".5", "5.", "007", "1e3", "1.5E-07", "2e+0", "1e1000",
            "1e-1000", "-1e0000",
        ],
        ColumnType::Boolean => &["TRUE", "t", "Yes", "y", "1", "False", "f", "no", "N", "0"],
        ColumnType::Date => &["2024-02-29", "0001-01-01", "9999-12-31", "2023-02-29"],
        ColumnType::Timestamp => &[
            "2024-02-29 13:45:00",
            "2024-02-29T13:45",
            "2024-02-29t13:45:07.123456",
            "0001-01-01 00:00:00",
            "9999-12-31 23:59:59.999999",
        ],
        ColumnType::Timestamptz => &[
            "2024-02-29T13:45:00Z",
            "2024-02-29 13:45:00.25+02",
            "2024-02-29 13:45-0530",
            "0001-01-01 00:00:00+15:59",
            "9999-12-31 23:59:59.999999-15:59",
        ],
        ColumnType::Uuid => &[
            "0190B2C4-3F1E-7C3A-9D2E-5B6F7A8C9D0E",
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
        ],
    };
    let mut out: Vec<String> = fixed.iter().map(|s| (*s).to_owned()).collect();
    out.extend(generated(ty));
    out
}

/// Pseudo-random candidates from the characters each type is made of.
fn generated(ty: ColumnType) -> Vec<String> {
    let alphabet: &[u8] = match ty {
        ColumnType::Bigint | ColumnType::Integer => b"0123456789+-",
        ColumnType::Numeric => b"0123456789.e-+0",
        ColumnType::Date => b"0123456789-",
        ColumnType::Timestamp | ColumnType::Timestamptz => b"0123456789-: T.Z+",
        _ => return Vec::new(),
    };
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let templates: &[&str] = match ty {
        ColumnType::Date => &["dddd-dd-dd"],
        ColumnType::Timestamp => &["dddd-dd-dd dd:dd:dd", "dddd-dd-ddTdd:dd:dd.ddd"],
        ColumnType::Timestamptz => &[
            "dddd-dd-dd dd:dd:dd+dd:dd",
            "dddd-dd-ddTdd:dd:dd.ddddddZ",
            "dddd-dd-dd dd:dd-dddd",
        ],
        _ => &[],
    };
    let pick =
        |n: u64, from: &[u8]| char::from(from[usize::try_from(n % from.len() as u64).unwrap()]);
    (0..1000)
        .map(|i| {
            if let Some(t) = templates
                .get(i % templates.len().max(1))
                .filter(|_| i % 4 != 0)
            {
                t.chars()
                    .map(|c| {
                        if c == 'd' {
                            pick(next(), b"0123456789")
                        } else {
                            c
                        }
                    })
                    .collect()
            } else {
                let len = 1 + next() % 24;
                (0..len).map(|_| pick(next(), alphabet)).collect()
            }
        })
        .collect()
}

const TYPES: [ColumnType; 11] = [
    ColumnType::Text { max_length: None },
    ColumnType::Text {
        max_length: Some(20),
    },
    ColumnType::Email,
    ColumnType::Bigint,
    ColumnType::Integer,
    ColumnType::Numeric,
    ColumnType::Boolean,
    ColumnType::Date,
    ColumnType::Timestamp,
    ColumnType::Timestamptz,
    ColumnType::Uuid,
];

#[tokio::test]
async fn every_accepted_value_is_the_same_value_to_postgresql() {
    let env = TestEnv::new().await;
    let mut accepted = 0;
    for ty in TYPES {
        let sql_type = ty.create_sql();
        env.exec(&format!(
            "DROP TABLE IF EXISTS v; CREATE TABLE v (x {sql_type})"
        ))
        .await;
        for raw in edge_cases(ty) {
            let Ok(canonical) = parse_value(ty, raw.trim()) else {
                continue;
            };
            accepted += 1;
            // Loads into the column a created table gets.
            sqlx::query(&format!("INSERT INTO v VALUES ($1::text::{sql_type})"))
                .bind(canonical.as_ref())
                .execute(&env.pool)
                .await
                .unwrap_or_else(|e| panic!("{ty} {raw:?} → {canonical:?}: {e}"));
            // Where PostgreSQL reads the field itself, it reads the same value
            // (text and email are normalised by the agent on purpose).
            if matches!(ty, ColumnType::Text { .. } | ColumnType::Email) {
                continue;
            }
            let same: Result<bool, _> = sqlx::query_scalar(&format!(
                "SELECT $1::text::{sql_type} IS NOT DISTINCT FROM $2::text::{sql_type}"
            ))
            .bind(canonical.as_ref())
            .bind(raw.trim())
            .fetch_one(&env.pool)
            .await;
            if let Ok(same) = same {
                assert!(same, "{ty} {raw:?} → {canonical:?} reads as another value");
            }
        }
    }
    assert!(accepted > 500, "only {accepted} values accepted");
}

/// A table created with each type's `create_sql` passes the start-up check of an
/// existing table against what the catalog reports (`format_type`, and the
/// `information_schema` names), and a narrower one does not.
#[tokio::test]
async fn a_created_table_passes_its_own_compatibility_check() {
    let env = TestEnv::new().await;
    let columns: Vec<String> = TYPES
        .iter()
        .enumerate()
        .map(|(i, ty)| format!("c{i} {}", ty.create_sql()))
        .collect();
    env.exec(&format!(
        "CREATE TABLE t ({}, narrow varchar(10), money numeric(12,2), stamp timestamp)",
        columns.join(", ")
    ))
    .await;
    let catalog: Vec<(String, String, String, Option<i32>)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), c.data_type::text,
                c.character_maximum_length::int
           FROM pg_attribute a
           JOIN information_schema.columns c
             ON c.table_name = 't' AND c.column_name = a.attname
          WHERE a.attrelid = 't'::regclass AND a.attnum > 0
          ORDER BY a.attnum",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    for (i, ty) in TYPES.iter().enumerate() {
        let (_, formatted, data_type, max) = &catalog[i];
        assert_eq!(
            ty.compatible(formatted, None),
            Ok(()),
            "{ty} as {formatted}"
        );
        let limit = max.map(|n| u32::try_from(n).unwrap());
        if *ty != ColumnType::Numeric {
            assert_eq!(
                ty.compatible(data_type, limit),
                Ok(()),
                "{ty} as {data_type}"
            );
        }
    }
    let find = |name: &str| {
        catalog
            .iter()
            .find(|c| c.0 == name)
            .map(|c| c.1.clone())
            .unwrap()
    };
    assert!(ColumnType::Email.compatible(&find("narrow"), None).is_err());
    assert!(ColumnType::Numeric
        .compatible(&find("money"), None)
        .is_err());
    assert!(followers_etl::mirror::modified_column_compatible(&find("stamp")).is_ok());
}
