//! The documentation against the code: every variable the agent reads (the
//! `variables!` list in `src/config/mod.rs`, `VARIABLES`) is described in
//! docs/configuration.md#variables and listed in `.env.example`, and every libpq
//! variable it or its driver reads in docs/configuration.md#libpq-variables. A
//! variable added to the code but not to either file fails here.

use followers_etl::config::{LIBPQ_VARIABLES, VARIABLES};

fn read(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// The body of the `## {heading}` section of a Markdown text, up to the next
/// heading of the same or a higher level.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("no section \"## {heading}\""))
        + heading.len()
        + 5;
    let rest = &text[start..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

/// Whether a table row of `table` names `variable` in its first column (as
/// `` `NAME` ``, possibly beside others, as in `` `LOG_FORMAT` / `LOG_LEVEL` ``
/// or `` `DATABASE_URL` (alias `DSN`) ``).
fn in_first_column(table: &str, variable: &str) -> bool {
    let quoted = format!("`{variable}`");
    table
        .lines()
        .filter_map(|line| line.strip_prefix('|'))
        .filter_map(|row| row.split('|').next())
        .any(|first| first.contains(&quoted))
}

#[test]
fn every_variable_of_the_code_is_in_docs_configuration_md() {
    let doc = read("docs/configuration.md");
    let table = section(&doc, "Variables");
    let missing: Vec<_> = VARIABLES
        .iter()
        .filter(|v| !in_first_column(table, v))
        .collect();
    assert!(
        missing.is_empty(),
        "variables the code reads but docs/configuration.md#variables does not describe: {missing:?}"
    );

    let libpq = section(&doc, "libpq variables");
    let missing: Vec<_> = LIBPQ_VARIABLES
        .iter()
        .filter(|v| !libpq.contains(&format!("`{v}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "libpq variables the agent reads but docs/configuration.md#libpq-variables does not name: {missing:?}"
    );
}

#[test]
fn every_variable_of_the_code_is_in_env_example() {
    let example = read(".env.example");
    // `NAME=value`, or commented out as `# NAME=value`.
    let listed = |variable: &str| {
        example.lines().any(|line| {
            let line = line.trim_start_matches('#').trim_start();
            line.strip_prefix(variable)
                .is_some_and(|rest| rest.starts_with('='))
        })
    };
    let missing: Vec<_> = VARIABLES.iter().filter(|v| !listed(v)).collect();
    assert!(
        missing.is_empty(),
        "variables the code reads but .env.example does not list (as NAME= or # NAME=): {missing:?}"
    );
}

#[test]
fn the_checks_would_see_a_missing_variable() {
    // The helpers above, on a table and a file without the variable.
    let table =
        "| Variable | Default |\n|---|---|\n| `CSV_FILE` | x |\n| `B` | mentions `TABLES_DIR` |\n";
    assert!(in_first_column(table, "CSV_FILE"));
    assert!(!in_first_column(table, "TABLES_DIR"));
    assert!(!in_first_column(table, "CSV"));
}
