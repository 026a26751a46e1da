//! The `[[mirror]]` shape and its rules (docs/mirrors.md#rules).

use super::*;

/// The issue's example, as docs/mirrors.md#configuration shows it.
const EXAMPLE: &str = r#"
database_url = "postgres://u:secret@db/x"

[[mirror]]
name = "subscribers"
file = "subscribers.csv"
table = "crm.subscribers"
key = ["account_id", "email"]
schedule = "0 */6 * * *"
max_delete_ratio = 0.2
modified_column = "modified_at"
columns = [
  { name = "account_id", type = "bigint" },
  { name = "email",      type = "email" },
  { name = "full_name",  type = "text", max_length = 255, source = "Full Name" },
  { name = "plan",       type = "text", nullable = true },
  { name = "signed_up",  type = "date" },
  { name = "opted_in",   type = "boolean" },
  { name = "balance",    type = "numeric", nullable = true },
]

[[mirror]]
name = "parts"
files = "exports/part-*.csv.gz"
table = 'crm."Sub Scribers"'
key = ["id"]
csv_header = false
csv_delimiter = "\t"
csv_encoding = "windows-1252"
ready_marker = ".done"
max_rejects = 10
journal_keep_runs = 0
columns = [{ name = "id", type = "uuid" }, { name = "seen", type = "timestamptz" }]
"#;

/// `EXAMPLE`'s first mirror with `edit` applied to its text.
fn one(edit: impl Fn(&str) -> String) -> Result<Vec<MirrorSpec>, MirrorError> {
    let first = EXAMPLE.split("[[mirror]]").nth(1).unwrap();
    from_toml_str(&format!("[[mirror]]{}", edit(first)))
}

/// The error of `one(edit)`, as displayed.
fn error(edit: impl Fn(&str) -> String) -> String {
    one(edit).unwrap_err().to_string()
}

#[test]
fn the_example_parses() {
    let specs = from_toml_str(EXAMPLE).unwrap();
    let [s, p] = &specs[..] else { panic!() };
    assert_eq!(s.name.as_str(), "subscribers");
    assert_eq!(s.source, MirrorSource::File("subscribers.csv".into()));
    assert_eq!(s.table.sql(), "\"crm\".\"subscribers\"");
    assert_eq!(
        s.key.iter().map(ColumnName::as_str).collect::<Vec<_>>(),
        ["account_id", "email"]
    );
    assert_eq!(s.columns.len(), 7);
    let full_name = &s.columns[2];
    assert_eq!(full_name.source, "Full Name");
    assert_eq!(full_name.max_length(), Some(255));
    assert_eq!(s.columns[0].source, "account_id");
    assert!(s.columns[3].nullable && !s.columns[0].nullable);
    assert_eq!(s.schedule.as_ref().unwrap().to_string(), "0 */6 * * *");
    assert_eq!(s.modified_column.as_ref().unwrap().as_str(), "modified_at");
    assert_eq!(s.overrides.max_delete_ratio, Some(0.2));
    assert_eq!(s.overrides.max_rejects, None);
    assert_eq!(
        s.value_columns()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["full_name", "plan", "signed_up", "opted_in", "balance"]
    );

    assert_eq!(p.source, MirrorSource::Glob("exports/part-*.csv.gz".into()));
    assert_eq!(p.source.glob_parts(), Some(("exports", "part-*.csv.gz")));
    assert_eq!(p.table.table(), "Sub Scribers");
    assert_eq!(p.table.sql(), r#""crm"."Sub Scribers""#);
    assert_eq!(p.overrides.csv_header, Some(HeaderMode::Absent));
    assert_eq!(p.overrides.csv_delimiter, Some(b'\t'));
    assert_eq!(
        p.overrides.csv_encoding,
        Some(Some(encoding_rs::WINDOWS_1252))
    );
    assert_eq!(p.overrides.ready_marker.as_deref(), Some(".done"));
    assert_eq!(p.overrides.max_rejects, Some(10));
    assert_eq!(p.overrides.journal_keep_runs, Some(0));
    assert!(p.schedule.is_none());
}

#[test]
fn a_whole_ratio_is_a_number() {
    let specs = one(|m| m.replace("max_delete_ratio = 0.2", "max_delete_ratio = 1")).unwrap();
    assert_eq!(specs[0].overrides.max_delete_ratio, Some(1.0));
}

#[test]
fn no_mirror_is_none() {
    assert!(from_toml_str("batch_size = 5\n").unwrap().is_empty());
}

#[test]
fn a_misspelt_key_names_the_mirror_and_the_key() {
    let e = error(|m| m.replace("schedule =", "schedul ="));
    assert!(
        e.contains("[[mirror]] subscribers: unknown key \"schedul\""),
        "{e}"
    );
    let e = error(|m| m.replace("nullable = true", "nulable = true"));
    assert!(
        e.contains("subscribers: unknown key \"columns[4] (\\\"plan\\\").nulable\""),
        "{e}"
    );
}

#[test]
fn errors_never_quote_a_value() {
    // A wrong kind is named by its key, not by what it holds.
    let e = error(|m| m.replace("max_delete_ratio = 0.2", "max_delete_ratio = \"hunter2\""));
    assert!(e.contains("max_delete_ratio: expected a number"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    // TOML that does not parse: the line, never its text.
    let e = from_toml_str("database_url = \"postgres://u:hunter2@x\nfoo")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not valid TOML (line"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
    // Nor the other keys of the file.
    let e = error(|m| m.replace("bigint", "bigints"));
    assert!(!e.contains("secret"), "{e}");
}

/// (text of the example, replaced by, part of the error).
const RULE_CASES: &[(&str, &str, &str)] = &[
    (
        "name = \"subscribers\"",
        "name = \"Sub\"",
        "#1: name: may hold only",
    ),
    (
        "name = \"subscribers\"",
        "name = \"followers\"",
        "name: followers is the built-in",
    ),
    ("file = \"subscribers.csv\"", "", "file: is required"),
    (
        "file = \"subscribers.csv\"",
        "file = \"a.csv\"\nfiles = \"b-*.csv\"",
        "not both",
    ),
    ("subscribers.csv", "../x.csv", "'..' is not allowed"),
    ("subscribers.csv", "/etc/x.csv", "must be relative"),
    ("subscribers.csv", "sub*.csv", "files = "),
    (
        "file = \"subscribers.csv\"",
        "files = \"a.csv\"",
        "holds no wildcard",
    ),
    (
        "file = \"subscribers.csv\"",
        "files = \"a*/b-*.csv\"",
        "only in the file name",
    ),
    (
        "file = \"subscribers.csv\"",
        "files = \"b-**x.csv\"",
        "files: is not a valid pattern: recursive wildcards must form a single path component",
    ),
    (
        "crm.subscribers",
        "subscribers",
        "table: must be schema-qualified",
    ),
    (
        "crm.subscribers",
        "pg_catalog.x",
        "table: the schema pg_catalog",
    ),
    (
        "crm.subscribers",
        "etl_info_schema.x",
        "table: the schema etl_info_schema",
    ),
    (
        "key = [\"account_id\", \"email\"]",
        "key = []",
        "key: must name at least one",
    ),
    (
        "\"account_id\", \"email\"]",
        "\"account\", \"email\"]",
        "key: \"account\" is not one of the columns (account_id, email,",
    ),
    (
        "\"account_id\", \"email\"]",
        "\"email\", \"email\"]",
        "key: \"email\" is named twice",
    ),
    (
        "\"account_id\", \"email\"]",
        "\"plan\"]",
        "key: \"plan\" is nullable",
    ),
    (
        "type = \"bigint\"",
        "type = \"int8\"",
        "columns[1] (\"account_id\").type: unknown type; expected one of text, email",
    ),
    (
        "type = \"date\"",
        "type = \"date\", max_length = 3",
        "columns[5] (\"signed_up\").max_length: applies to text columns only, this one is date",
    ),
    (
        "max_length = 255",
        "max_length = 0",
        "max_length: expected a whole number from 1",
    ),
    (
        "name = \"plan\"",
        "name = \"email\"",
        "columns[4] (\"email\").name: names a column a second time",
    ),
    (
        "source = \"Full Name\"",
        "source = \" EMAIL \"",
        "reads the same header as \"email\"",
    ),
    (
        "modified_column = \"modified_at\"",
        "modified_column = \"plan\"",
        "modified_column: \"plan\" is also in columns",
    ),
    ("0 */6 * * *", "every day", "schedule: "),
    (
        "max_delete_ratio = 0.2",
        "max_delete_ratio = 1.5",
        "max_delete_ratio: expected a number from 0.0 to 1.0",
    ),
    (
        "max_delete_ratio = 0.2",
        "max_rejects = -1",
        "max_rejects: expected a whole number ≥ 0",
    ),
    (
        "max_delete_ratio = 0.2",
        "csv_delimiter = \";;\"",
        "csv_delimiter: expected one ASCII character",
    ),
    (
        "max_delete_ratio = 0.2",
        "csv_header = \"yes\"",
        "csv_header: expected true, false or \"auto\"",
    ),
    (
        "max_delete_ratio = 0.2",
        "csv_encoding = \"klingon\"",
        "csv_encoding: expected auto",
    ),
    (
        "max_delete_ratio = 0.2",
        "ready_marker = \"a/b\"",
        "ready_marker: expected a suffix",
    ),
    ("table = \"crm.subscribers\"", "", "table: is required"),
    (
        "{ name = \"plan\",       type = \"text\", nullable = true }",
        "{ name = \"plan\" }",
        "columns[4] (\"plan\").type: is required",
    ),
    (
        "key = [\"account_id\", \"email\"]",
        "key = \"email\"",
        "key: expected an array of strings",
    ),
];

#[test]
fn each_rule_names_the_mirror_the_field_and_the_rule() {
    for (from, to, expected) in RULE_CASES {
        let e = error(|m| {
            assert!(m.contains(from), "{from}");
            m.replacen(from, to, 1)
        });
        assert!(e.contains(expected), "{from} → {to}: {e}");
        assert!(e.starts_with("config file: [[mirror]] "), "{e}");
    }
}

#[test]
fn names_and_tables_are_unique_across_mirrors() {
    let second = |name: &str, table: &str| {
        format!(
            "{EXAMPLE}\n[[mirror]]\nname = \"{name}\"\nfile = \"x.csv\"\ntable = \"{table}\"\nkey = [\"id\"]\ncolumns = [{{ name = \"id\", type = \"integer\" }}]\n"
        )
    };
    assert!(from_toml_str(&second("other", "crm.other")).is_ok());
    let e = from_toml_str(&second("subscribers", "crm.other"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("subscribers: name: another mirror has this name"),
        "{e}"
    );
    let e = from_toml_str(&second("other", "crm.subscribers"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("other: table: mirror subscribers already writes crm.subscribers"),
        "{e}"
    );
    // The built-in mirror takes public.followers.
    let mut specs = from_toml_str(&second("other", "public.followers")).unwrap();
    specs.push(MirrorSpec::followers(Path::new("followers.csv")));
    let e = validate_set(&specs).unwrap_err().to_string();
    assert!(e.contains("already writes public.followers"), "{e}");
}

#[test]
fn the_built_in_mirror() {
    let f = MirrorSpec::followers(Path::new("/data/tables/followers.csv"));
    assert_eq!(f.name.as_str(), "followers");
    assert_eq!(f.table.sql(), "\"public\".\"followers\"");
    assert_eq!(f.key, [ColumnName::parse("email").unwrap()]);
    assert_eq!(f.columns[0].ty, ColumnType::Email);
    assert_eq!(f.columns[1].rule, ValueRule::FollowersFullName);
    assert_eq!(f.columns[1].max_length(), Some(255));
    assert_eq!(f.modified_column.unwrap().as_str(), "modified_at");
    assert_eq!(f.overrides, SettingOverrides::default());
    assert!(validate_set(&[MirrorSpec::followers(Path::new("f.csv"))]).is_ok());
}

#[test]
fn a_file_is_confined_to_tables_dir() {
    let dir = tempfile::tempdir().unwrap();
    let specs = from_toml_str(EXAMPLE).unwrap();
    let confined = specs[0].source.confined_file(dir.path()).unwrap().unwrap();
    assert_eq!(
        confined,
        dir.path().canonicalize().unwrap().join("subscribers.csv")
    );
    assert!(specs[1].source.confined_file(dir.path()).is_none());
}

#[test]
fn headers_match_trimmed_and_without_regard_to_case() {
    let specs = from_toml_str(EXAMPLE).unwrap();
    let full_name = &specs[0].columns[2];
    assert!(full_name.matches_header("  full NAME "));
    assert!(!full_name.matches_header("full_name"));
    assert!(specs[0].columns[0].matches_header("ACCOUNT_ID"));
}

#[test]
fn the_resolved_definitions_as_json() {
    let specs = from_toml_str(EXAMPLE).unwrap();
    let s = specs[0].to_json();
    assert_eq!(s["name"], "subscribers");
    assert_eq!(s["file"], "subscribers.csv");
    assert!(s["files"].is_null());
    assert_eq!(s["key"], serde_json::json!(["account_id", "email"]));
    assert_eq!(
        s["columns"][2],
        serde_json::json!({"name": "full_name", "type": "text", "max_length": 255, "nullable": false, "source": "Full Name"})
    );
    assert_eq!(s["schedule"], "0 */6 * * *");
    assert_eq!(s["max_delete_ratio"], 0.2);
    assert!(s["max_rejects"].is_null());
    let p = specs[1].to_json();
    assert_eq!(p["table"], r#"crm."Sub Scribers""#);
    assert_eq!(p["files"], "exports/part-*.csv.gz");
    assert_eq!(p["csv_delimiter"], "\t");
    assert_eq!(p["csv_header"], "false");
    assert_eq!(p["csv_encoding"], "windows-1252");
}
