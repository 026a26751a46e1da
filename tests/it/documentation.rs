//! The documentation against the code: every variable the agent reads (the
//! `variables!` list in `src/config/mod.rs`, `VARIABLES`) is described in
//! docs/configuration.md#variables and listed in `.env.example`, and every libpq
//! variable it or its driver reads in docs/configuration.md#libpq-variables;
//! README.md#the-ten-variables-people-set-first names every one. A variable
//! added to the code but not to these files fails here. Also: the library's
//! process-wide statics are the ones in-process syncs know of
//! (docs/development.md#tests).

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

/// The backquoted names of README.md's hand-kept list of the other variables,
/// the paragraph after the first-ten table that starts "The others".
fn readme_others(readme: &str) -> Vec<&str> {
    let list = readme
        .lines()
        .find(|line| line.starts_with("The others"))
        .expect("README.md#the-ten-variables-people-set-first has a line \"The others, …\"");
    list.split('`').skip(1).step_by(2).collect()
}

#[test]
fn every_variable_of_the_code_is_in_readme() {
    let readme = read("README.md");
    let first_ten = section(&readme, "The ten variables people set first");
    let others = readme_others(first_ten);
    let missing: Vec<_> = VARIABLES
        .iter()
        .filter(|v| !in_first_column(first_ten, v) && !others.contains(v))
        .collect();
    assert!(
        missing.is_empty(),
        "variables the code reads but README.md#the-ten-variables-people-set-first names neither \
         in its table nor in \"The others\": {missing:?}"
    );
    // CONFIG_FILE is read before the others (it names the TOML layer).
    let unknown: Vec<_> = others
        .iter()
        .filter(|v| **v != "CONFIG_FILE" && !VARIABLES.contains(v))
        .collect();
    assert!(
        unknown.is_empty(),
        "README.md's \"The others\" names variables the code does not read: {unknown:?}"
    );
}

/// The process-wide once-cells and statics of the library (`src/`), as `FILE
/// NAME`, with the variable each holds: `helpers::PROCESS_WIDE` must name every
/// one, or an in-process sync would run with another sync's value.
const ONCE_CELLS: &[(&str, &str)] = &[
    ("src/db.rs CONNECT_TIMEOUT", "DB_CONNECT_TIMEOUT"),
    ("src/telemetry.rs FORMAT", "LOG_FORMAT"),
];

/// Every `static` item and once-cell declared in the `.rs` files under `dir`.
fn statics(dir: &std::path::Path, root: &std::path::Path, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            statics(&path, root, found);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path.strip_prefix(root).unwrap().display().to_string();
        for line in text.lines().map(str::trim_start) {
            if line.starts_with("//") {
                continue;
            }
            let item = line
                .strip_prefix("pub ")
                .or_else(|| line.strip_prefix("pub(crate) "))
                .or_else(|| line.strip_prefix("pub(super) "))
                .unwrap_or(line);
            if let Some(rest) = item.strip_prefix("static ") {
                let name = rest.trim_start_matches("mut ");
                let name = &name[..name.find(':').unwrap_or(name.len())];
                found.push(format!("{file} {}", name.trim()));
            } else if [
                "OnceCell",
                "LazyLock",
                "LazyCell",
                "thread_local!",
                "lazy_static!",
            ]
            .iter()
            .any(|cell| line.contains(cell))
            {
                found.push(format!("{file}: {line}"));
            }
        }
    }
}

#[test]
fn process_wide_settings_are_known() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    statics(&root.join("src"), root, &mut found);
    found.sort();
    let known: Vec<_> = ONCE_CELLS
        .iter()
        .map(|(item, _)| (*item).to_owned())
        .collect();
    assert_eq!(
        found, known,
        "the library's statics changed: a value in one is fixed for the whole test process; \
         add the variable it holds to helpers::PROCESS_WIDE and the item to ONCE_CELLS"
    );
    let vars: Vec<_> = ONCE_CELLS.iter().map(|(_, var)| *var).collect();
    assert_eq!(crate::helpers::PROCESS_WIDE, vars.as_slice());
}

#[test]
fn the_checks_would_see_a_missing_variable() {
    // The helpers above, on a table and a file without the variable.
    let table =
        "| Variable | Default |\n|---|---|\n| `CSV_FILE` | x |\n| `B` | mentions `TABLES_DIR` |\n";
    assert!(in_first_column(table, "CSV_FILE"));
    assert!(!in_first_column(table, "TABLES_DIR"));
    assert!(!in_first_column(table, "CSV"));
    let readme = "| `CSV_FILE` | x |\n\nThe others, each explained: `BATCH_SIZE`, `DB_TIMEOUT`.\n";
    assert_eq!(readme_others(readme), ["BATCH_SIZE", "DB_TIMEOUT"]);
}
