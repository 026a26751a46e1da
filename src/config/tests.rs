//! The settings' unit tests: defaults, each rule's message, redaction, `describe`.

use super::csv::parse_delimiter;
use super::*;

fn raw(pairs: &[(&str, &str)]) -> Raw {
    Raw(pairs
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect())
}

fn err_of(pairs: &[(&str, &str)]) -> String {
    Settings::from_raw(&raw(pairs)).unwrap_err().to_string()
}

#[test]
fn defaults_match_the_spec() {
    let s = Settings::from_raw(&raw(&[])).unwrap();
    assert_eq!(s.database.url.expose(), DEFAULT_DATABASE_URL);
    assert_eq!(s.csv.tables_dir, PathBuf::from("./tables"));
    assert_eq!(s.triggers.cron_schedule.to_string(), "@every 24h");
    assert_eq!(s.csv.workers, 4);
    assert_eq!((s.database.min_conns, s.database.max_conns), (0, 30));
    assert!(s.triggers.run_on_start && s.triggers.watch && !s.triggers.watch_poll);
    assert_eq!(s.triggers.watch_debounce, Duration::from_secs(2));
    assert_eq!(s.guard.max_delete_ratio, 0.5);
    assert_eq!(s.guard.max_update_ratio, 0.5);
    assert_eq!(s.database.run_lock_wait, Duration::from_secs(300));
    assert_eq!(
        s.service.retry,
        RetryPolicy {
            max_attempts: 5,
            backoff: Duration::from_secs(5)
        }
    );
    assert_eq!(s.guard.max_rejects, 0);
    assert_eq!(s.csv.format, CsvFormat::default());
    assert_eq!(s.service.http_addr, Some("127.0.0.1:9188".parse().unwrap()));
    assert_eq!(s.service.shutdown_timeout, Duration::from_secs(30));
    assert!(!s.guard.allow_file_change);
    assert_eq!(
        s.retention.journal,
        JournalRetention {
            keep_runs: 100,
            keep_days: 30
        }
    );
}

#[test]
fn dotenv_values_with_spaces_need_no_quotes() {
    assert_eq!(
        compatible_line("CRON_SCHEDULE=0 */6 * * *"),
        "CRON_SCHEDULE='0 */6 * * *'"
    );
    assert_eq!(
        compatible_line("CRON_SCHEDULE=@every 1h # nightly"),
        "CRON_SCHEDULE='@every 1h'"
    );
    assert_eq!(
        compatible_line("CRON_SCHEDULE=\"@every 1h\""),
        "CRON_SCHEDULE=\"@every 1h\""
    );
    assert_eq!(compatible_line("# A=b c"), "# A=b c");
    assert_eq!(compatible_line("BATCH_SIZE=5000"), "BATCH_SIZE=5000");
}

#[test]
fn dotenv_tabs_and_backslashes_read_as_the_old_loader_did() {
    assert_eq!(compatible_line("CSV_DELIMITER=\\t"), "CSV_DELIMITER='\\t'");
    assert_eq!(
        compatible_line("CSV_DELIMITER=\"\\t\""),
        "CSV_DELIMITER=\"\t\""
    );
    assert_eq!(compatible_line("CSV_DELIMITER=\t"), "CSV_DELIMITER='\t'");
    assert_eq!(
        compatible_line("CSV_DELIMITER='\\t'"),
        "CSV_DELIMITER='\\t'"
    );
    assert_eq!(compatible_line("A=\"x\\\\t\""), "A=\"x\\\\t\"");
    assert_eq!(compatible_line("A=C:\\dir"), "A='C:\\dir'");
}

#[test]
fn csv_delimiter_accepts_every_tab_form() {
    for v in [
        "\\t", "tab", "TAB", "\t", "\"\\t\"", "'\\t'", "\"\t\"", " \\t ", "'tab'",
    ] {
        assert_eq!(parse_delimiter(v).unwrap(), b'\t', "{v:?}");
    }
    assert_eq!(parse_delimiter(";").unwrap(), b';');
    assert_eq!(parse_delimiter("\";\"").unwrap(), b';');
    assert_eq!(parse_delimiter("' '").unwrap(), b' ');
    assert_eq!(parse_delimiter("").unwrap(), b',');
    for v in ["\"", "ab", "é", "\\n"] {
        assert!(parse_delimiter(v).is_err(), "{v:?}");
    }
}

#[test]
fn toml_syntax_errors_name_line_and_key_not_value() {
    let text = "batch_size = 1\ndatabase_url = \"postgres://u:s3cr3t@h/x\n";
    let e = toml::from_str::<toml::Table>(text).unwrap_err();
    let msg = toml_error(text, &e);
    assert!(
        msg.contains("line 2") && msg.contains("database_url") && !msg.contains("s3cr3t"),
        "{msg}"
    );
}

#[test]
fn workers_default_is_capped_by_max_conns_and_explicit_excess_is_refused() {
    let s = Settings::from_raw(&raw(&[("DB_MAX_CONNS", "2")])).unwrap();
    assert_eq!(s.csv.workers, 2);
    let e = err_of(&[("DB_MAX_CONNS", "4"), ("WORKER_POOL_SIZE", "5")]);
    assert!(
        e.contains("WORKER_POOL_SIZE") && e.contains("DB_MAX_CONNS"),
        "{e}"
    );
}

#[test]
fn a_socket_directory_host_is_accepted_in_keyword_and_url_form() {
    let url = DatabaseUrl::parse(
        "DSN",
        "host=/var/run/postgresql user=app password='p w' dbname=app port=5433",
    )
    .unwrap();
    assert_eq!(
        url.expose(),
        "postgres:///app?host=%2Fvar%2Frun%2Fpostgresql&password=p+w&port=5433&user=app"
    );
    assert!(!url.to_string().contains("p+w"), "{url}");
    let url =
        DatabaseUrl::parse("DATABASE_URL", "postgres:///app?host=/var/run/postgresql").unwrap();
    assert_eq!(url.expose(), "postgres:///app?host=/var/run/postgresql");
}

#[test]
fn libpq_variables_replace_the_built_in_default_only() {
    let url = |pairs: &[(&str, &str)]| {
        Settings::from_raw(&raw(pairs))
            .unwrap()
            .database
            .url
            .expose()
            .to_owned()
    };
    assert_eq!(
        url(&[("PGHOST", "db"), ("PGPORT", "6543"), ("PGDATABASE", "f")]),
        "postgres://postgres@db:6543/f"
    );
    assert_eq!(
        url(&[("PGHOST", "/var/run/postgresql"), ("PGUSER", "app")]),
        "postgres:///postgres?host=%2Fvar%2Frun%2Fpostgresql&port=5432&user=app"
    );
    assert_eq!(
        url(&[("PGHOSTADDR", "10.0.0.5")]),
        "postgres://postgres@10.0.0.5:5432/postgres"
    );
    // DATABASE_URL or DSN, when set, win whole.
    assert_eq!(
        url(&[("DSN", "postgres://u@x/y"), ("PGHOST", "db")]),
        "postgres://u@x/y"
    );
    assert_eq!(url(&[("PGPASSWORD", "s3cret")]), DEFAULT_DATABASE_URL);
    let e = err_of(&[("PGPORT", "54x")]);
    assert!(e.contains("PGPORT") && e.contains("54x"), "{e}");
    let e = err_of(&[("PGHOST", "a,b")]);
    assert!(e.contains("PGHOST"), "{e}");
}

#[test]
fn dsn_is_the_old_name_and_a_conflict_is_an_error() {
    let s = Settings::from_raw(&raw(&[("DSN", "postgres://u:pw@db/x")])).unwrap();
    assert_eq!(s.database.url.expose(), "postgres://u:pw@db/x");
    let e = err_of(&[
        ("DSN", "postgres://u:pw@db/x"),
        ("DATABASE_URL", "postgres://u:pw@db/y"),
    ]);
    assert!(e.contains("DSN") && e.contains("DATABASE_URL"), "{e}");
    assert!(!e.contains("pw"), "password leaked: {e}");
}

#[test]
fn default_database_url_applies_only_when_neither_database_url_nor_dsn_is_set() {
    let bundled = ("DEFAULT_DATABASE_URL", "postgres://f:pw@db:5432/f");
    let s = Settings::from_raw(&raw(&[bundled])).unwrap();
    assert_eq!(s.database.url.expose(), "postgres://f:pw@db:5432/f");
    let s = Settings::from_raw(&raw(&[bundled, ("DSN", "postgres://o@pg/old")])).unwrap();
    assert_eq!(s.database.url.expose(), "postgres://o@pg/old");
    let s = Settings::from_raw(&raw(&[bundled, ("DATABASE_URL", "postgres://a@x/y")])).unwrap();
    assert_eq!(s.database.url.expose(), "postgres://a@x/y");
    let s = Settings::from_raw(&raw(&[("DEFAULT_DATABASE_URL", "")])).unwrap();
    assert_eq!(s.database.url.expose(), DEFAULT_DATABASE_URL);
    // libpq variables are the user's own choice: they win over the compose default.
    let s = Settings::from_raw(&raw(&[bundled, ("PGHOST", "own-db")])).unwrap();
    assert!(
        s.database.url.expose().contains("own-db"),
        "{}",
        s.database.url
    );
    let e = err_of(&[("DEFAULT_DATABASE_URL", "mysql://u:s3cret@db/x")]);
    assert!(
        e.contains("DEFAULT_DATABASE_URL") && !e.contains("s3cret"),
        "{e}"
    );
}

#[test]
fn run_retention_defaults_and_zero_disables() {
    let s = Settings::from_raw(&raw(&[])).unwrap();
    assert_eq!(
        s.retention.runs,
        RunRetention {
            keep_days: Some(DEFAULT_HISTORY_KEEP_DAYS),
            keep_runs: Some(DEFAULT_HISTORY_KEEP_RUNS),
        }
    );
    let s = Settings::from_raw(&raw(&[
        ("HISTORY_KEEP_DAYS", "0"),
        ("HISTORY_KEEP_RUNS", "25"),
    ]))
    .unwrap();
    assert_eq!(s.retention.runs.keep_days, None);
    assert_eq!(s.retention.runs.keep_runs, Some(25));
    let e = err_of(&[("HISTORY_KEEP_RUNS", "-1")]);
    assert!(e.contains("HISTORY_KEEP_RUNS"), "{e}");
}

#[test]
fn password_is_redacted_everywhere() {
    let url = DatabaseUrl::parse("DATABASE_URL", "postgres://app:s3cret@db:5432/app").unwrap();
    assert_eq!(url.to_string(), "postgres://app:***@db:5432/app");
    assert!(!format!("{url:?}").contains("s3cret"));
    let e = err_of(&[("DATABASE_URL", "mysql://app:s3cret@db/app")]);
    assert!(!e.contains("s3cret") && e.contains("DATABASE_URL"), "{e}");
    let url = DatabaseUrl::parse(
        "DATABASE_URL",
        "postgres://app@db/app?sslmode=disable&password=s3cret",
    )
    .unwrap();
    assert_eq!(
        url.to_string(),
        "postgres://app@db/app?sslmode=disable&password=***"
    );
    let e = err_of(&[
        ("DSN", "host=db password='my s3cret pw' dbname=a"),
        ("DATABASE_URL", "postgres://app@db/b"),
    ]);
    assert!(!e.contains("s3cret") && !e.contains(" pw"), "{e}");
    let e = err_of(&[("DATABASE_URL", "host=db password='unterminated s3cret")]);
    assert!(!e.contains("s3cret"), "{e}");
    let e = err_of(&[("DATABASE_URL", "postgres://app:2024#Summer!@127.0.0.1/db")]);
    assert!(!e.contains("Summer") && e.contains("percent-encode"), "{e}");
    let url =
        DatabaseUrl::parse("DATABASE_URL", "postgres://app@db/app?sslpassword=s3cret").unwrap();
    assert!(!url.to_string().contains("s3cret"));
}

#[test]
fn an_unknown_connection_parameter_is_refused_without_its_value() {
    // A misspelt keyword: the driver would ignore it and log its value.
    for (var, dsn) in [
        ("DSN", "host=127.0.0.1 user=bob pasword=S3cretPw dbname=x"),
        (
            "DATABASE_URL",
            "postgres://bob@127.0.0.1/x?pasword=S3cretPw",
        ),
        (
            "DATABASE_URL",
            "postgres://bob@db/x?sslmode=disable&SSLMODE=S3cretPw",
        ),
        ("DSN", "host=db dbname=x target_session_attrs=S3cretPw"),
    ] {
        let e = err_of(&[(var, dsn)]);
        assert!(
            !e.contains("S3cretPw") && e.contains(var) && e.contains('`'),
            "{dsn}: {e}"
        );
    }
    let e = err_of(&[("DSN", "host=db user=bob pasword=S3cretPw dbname=x")]);
    assert!(
        e.contains("`pasword`") && e.contains("did you mean `password`"),
        "{e}"
    );
    // A harmless libpq keyword the driver lacks is accepted, dropped from what the
    // driver gets, and named for a warning; a secret one is never shown.
    let url = DatabaseUrl::parse(
        "DSN",
        "host=db user=bob dbname=x connect_timeout=10 sslpassword=S3cretPw sslmode=disable",
    )
    .unwrap();
    assert_eq!(url.ignored_keywords(), ["connect_timeout", "sslpassword"]);
    assert!(!url.expose().contains("connect_timeout") && !url.expose().contains("S3cretPw"));
    assert!(url.expose().contains("sslmode=disable"), "{}", url.expose());
    assert!(!url.to_string().contains("S3cretPw"), "{url}");
    assert!(url.to_string().contains("connect_timeout=10"), "{url}");
}

#[test]
fn a_url_password_with_a_hash_that_breaks_the_port_gets_the_hint() {
    for dsn in [
        "postgres://app:pa#ss@db/app",
        "postgres://app:S3cr#etPw@db:5432/app",
        "postgres://app:x/S3cretPw@db/app",
    ] {
        let e = err_of(&[("DATABASE_URL", dsn)]);
        assert!(
            e.contains("percent-encode") && !e.contains("ss@") && !e.contains("S3cr"),
            "{dsn}: {e}"
        );
    }
}

#[test]
fn libpq_variables_from_dotenv_fill_in_only_what_the_string_leaves_out() {
    let defaults = LibpqDefaults(vec![
        ("PGPASSWORD", "s3cret".into()),
        ("PGSSLMODE", "require".into()),
        ("PGHOST", "other".into()),
    ]);
    let url = DatabaseUrl::parse("DATABASE_URL", "postgres://app@db/x?sslmode=disable")
        .unwrap()
        .with_libpq_defaults(&defaults);
    assert_eq!(
        url.expose(),
        "postgres://app@db/x?password=s3cret&sslmode=require&sslmode=disable"
    );
    assert_eq!(url.to_string(), "postgres://app@db/x?sslmode=disable");
    let url = DatabaseUrl::parse("DATABASE_URL", "postgres://app:own@db/x")
        .unwrap()
        .with_libpq_defaults(&defaults);
    assert_eq!(url.expose(), "postgres://app:own@db/x?sslmode=require");
    let url = DatabaseUrl::parse("DATABASE_URL", "postgres:///x")
        .unwrap()
        .with_libpq_defaults(&defaults);
    assert_eq!(
        url.expose(),
        "postgres:///x?host=other&password=s3cret&sslmode=require"
    );
}

#[cfg(unix)]
#[test]
fn a_pgpass_file_from_dotenv_supplies_a_missing_password_as_the_driver_would() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgpass");
    std::fs::write(
        &file,
        "# comment\nother:5432:x:app:no\ndb:5432:x:app:p:w\\:x\n*:*:*:*:any\n",
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let defaults = LibpqDefaults(vec![("PGPASSFILE", file.to_str().unwrap().into())]);
    let with = |text: &str| {
        DatabaseUrl::parse("DATABASE_URL", text)
            .unwrap()
            .with_libpq_defaults(&defaults)
            .expose()
            .to_owned()
    };
    assert_eq!(
        with("postgres://app@db/x"),
        "postgres://app@db/x?password=p%3Aw%5C%3Ax"
    );
    assert_eq!(with("postgres://app:own@db/x"), "postgres://app:own@db/x");
    assert_eq!(
        with("postgres://app@elsewhere/y"),
        "postgres://app@elsewhere/y?password=any"
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(with("postgres://app@db/x"), "postgres://app@db/x");
}

#[test]
fn keyword_value_dsn_of_the_old_service_is_accepted() {
    let url = DatabaseUrl::parse(
        "DSN",
        "host=db port=5433 user=app password='p w' dbname=followers sslmode=disable",
    )
    .unwrap();
    assert_eq!(
        url.expose(),
        "postgres://app:p%20w@db:5433/followers?sslmode=disable"
    );
    assert!(!url.to_string().contains("p%20w"));
}

#[test]
fn each_invalid_value_names_variable_value_and_rule() {
    for (var, value, rule) in [
        ("BATCH_SIZE", "0", "≥ 1"),
        ("BATCH_SIZE", "many", "whole number"),
        ("DB_MAX_CONNS", "0", "≥ 1"),
        ("WATCH", "maybe", "true or false"),
        ("WATCH_DEBOUNCE", "2 seconds", "Go duration"),
        ("MAX_DELETE_RATIO", "1.5", "0.0 to 1.0"),
        ("MAX_UPDATE_RATIO", "-0.1", "rename guard"),
        ("RUN_LOCK_WAIT", "soon", "Go duration"),
        ("RETRY_MAX_ATTEMPTS", "-1", "whole number"),
        ("RETRY_BACKOFF", "5", "Go duration"),
        ("MAX_REJECTS", "-1", "whole number"),
        ("JOURNAL_KEEP_RUNS", "-1", "whole number"),
        ("JOURNAL_KEEP_DAYS", "0", "≥ 1"),
        ("CSV_DELIMITER", ";;", "one ASCII character"),
        ("CSV_HEADER", "yes", "auto, true or false"),
        ("HTTP_ADDR", "localhost", "IP:port"),
        ("LOG_FORMAT", "xml", "text or json"),
        ("LOG_LEVEL", "loud", "trace, debug"),
        ("ALLOW_FILE_CHANGE", "maybe", "true or false"),
        ("CRON_SCHEDULE", "61 * * * *", "robfig"),
    ] {
        let e = err_of(&[(var, value)]);
        assert!(
            e.contains(var) && e.contains(value) && e.contains(rule),
            "{var}={value}: {e}"
        );
    }
    let e = err_of(&[("DB_MIN_CONNS", "5"), ("DB_MAX_CONNS", "2")]);
    assert!(e.contains("DB_MIN_CONNS"), "{e}");
}

#[test]
fn a_file_is_the_same_under_every_spelling_and_a_symlink_keeps_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let tables = dir.path().canonicalize().unwrap().join("tables");
    std::fs::create_dir(&tables).unwrap();
    std::fs::write(tables.join("a.csv"), "x").unwrap();
    let id = file_identity(&tables.join("a.csv"));
    assert_eq!(id, tables.join("a.csv"));
    assert_eq!(file_identity(&tables.join(".").join("a.csv")), id);
    assert_ne!(file_identity(&tables.join("b.csv")), id);
    #[cfg(unix)]
    {
        // A directory reached through a symlink is the same directory...
        std::os::unix::fs::symlink(&tables, dir.path().join("alias")).unwrap();
        assert_eq!(file_identity(&dir.path().join("alias/a.csv")), id);
        // ...but a symlinked file is its own name, whatever it points to.
        std::os::unix::fs::symlink("a.csv", tables.join("link.csv")).unwrap();
        assert_eq!(
            file_identity(&tables.join("link.csv")),
            tables.join("link.csv")
        );
    }
}

#[test]
fn csv_file_must_stay_inside_tables_dir() {
    let dir = tempfile::tempdir().unwrap();
    let tables = dir.path().join("tables");
    std::fs::create_dir(&tables).unwrap();
    std::fs::write(dir.path().join("secret.csv"), "x").unwrap();
    std::fs::write(tables.join("f.csv"), "x").unwrap();
    assert_eq!(
        confine("CSV_FILE", &tables, Path::new("f.csv")).unwrap(),
        tables.canonicalize().unwrap().join("f.csv")
    );
    assert!(
        confine("CSV_FILE", &tables, Path::new("new.csv")).is_ok(),
        "a file not yet written is fine"
    );
    assert!(confine("CSV_FILE", &tables, Path::new("../secret.csv"))
        .unwrap_err()
        .to_string()
        .contains("TABLES_DIR"));
    assert!(confine("CSV_FILE", &tables, &dir.path().join("secret.csv")).is_err());
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(dir.path().join("secret.csv"), tables.join("link.csv")).unwrap();
        let e = confine("CSV_FILE", &tables, Path::new("link.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("resolves to"), "{e}");
    }
}

#[test]
fn describe_names_every_variable() {
    let shown = Settings::from_raw(&raw(&[])).unwrap().describe();
    for var in VARIABLES {
        assert!(
            shown.starts_with(&format!("{var}=")) || shown.contains(&format!(" {var}=")),
            "{var} missing from: {shown}"
        );
    }
}

#[test]
fn describe_shows_effective_values_and_no_secret() {
    let s = Settings::from_raw(&raw(&[
        (
            "DSN",
            "host=db user=bob password=s3cret dbname=x connect_timeout=10 sslpassword=S3cretPw",
        ),
        ("CRON_SCHEDULE", "0 */6 * * *"),
        ("CSV_DELIMITER", "\\t"),
        ("WORKER_POOL_SIZE", "2"),
        ("HISTORY_KEEP_DAYS", "0"),
        ("HTTP_ADDR", "off"),
    ]))
    .unwrap();
    let shown = s.describe();
    assert!(
        !shown.contains("s3cret") && !shown.contains("S3cretPw"),
        "{shown}"
    );
    let url = s.database.url.to_string();
    assert!(
        shown.starts_with(&format!(
            "DATABASE_URL={url} DSN={url} DEFAULT_DATABASE_URL= DB_MIN_CONNS=0 DB_MAX_CONNS=30 "
        )),
        "{shown}"
    );
    for part in [
        " CRON_SCHEDULE=\"0 */6 * * *\" ",
        " CSV_DELIMITER=\"\\t\" CSV_HEADER=auto CSV_ENCODING=auto ",
        " WORKER_POOL_GOROUTINES=2 WORKER_POOL_SIZE=2 ",
        " HISTORY_KEEP_DAYS=0 HISTORY_KEEP_RUNS=10000 ",
        " HTTP_ADDR=off SHUTDOWN_TIMEOUT=30s ",
        " WATCH_DEBOUNCE=2s ",
        " CSV_FILE= ",
    ] {
        assert!(shown.contains(part), "{part:?} not in: {shown}");
    }
    assert!(
        shown.ends_with(" LOG_FORMAT=text LOG_LEVEL=info"),
        "{shown}"
    );
    let shown = Settings::from_raw(&raw(&[])).unwrap().describe();
    assert!(
        shown.contains(" WORKER_POOL_GOROUTINES=4 WORKER_POOL_SIZE= "),
        "{shown}"
    );
    assert!(shown.contains(" DSN= DEFAULT_DATABASE_URL= "), "{shown}");
}

#[test]
fn a_described_delimiter_reads_back_as_itself() {
    for delimiter in [b',', b'\t', b' ', b';', b'|', b'\''] {
        let shown = csv::show_delimiter(delimiter);
        assert_eq!(parse_delimiter(&shown).unwrap(), delimiter, "{shown}");
    }
}

#[test]
fn the_config_files_mirrors_follow_the_builtin_one_and_keep_its_table() {
    let table = |text: &str| text.parse::<toml::Table>().unwrap();
    assert!(mirrors::configured(&table("batch_size = 5\n"))
        .unwrap()
        .is_empty());
    let one = "[[mirror]]\nname = \"subs\"\nfile = \"s.csv\"\ntable = \"crm.subs\"\nkey = [\"id\"]\ncolumns = [{ name = \"id\", type = \"bigint\" }]\n";
    let specs = mirrors::configured(&table(one)).unwrap();
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].name.as_str(), "subs");
    // public.followers is the built-in mirror's, also with CSV_FILE unset.
    let clash = one.replace("crm.subs", "public.followers");
    let e = mirrors::configured(&table(&clash)).unwrap_err().to_string();
    assert!(
        e.contains("subs")
            && e.contains("table")
            && e.contains("mirror followers already writes public.followers"),
        "{e}"
    );
    // The built-in mirror exactly when CSV_FILE is set, first.
    let s = Settings::from_raw(&raw(&[])).unwrap();
    assert!(s.mirrors.is_empty());
    let s = Settings::from_raw(&raw(&[("CSV_FILE", "f.csv")])).unwrap();
    assert_eq!(s.mirrors.len(), 1);
    assert_eq!(s.mirrors[0].name.as_str(), "followers");
    let effective = s.effective(&specs[0]);
    assert!(effective.iter().all(|e| !e.from_mirror));
    assert_eq!(effective[0].key, "schedule");
    assert_eq!(effective[0].value, "@every 24h");
}
