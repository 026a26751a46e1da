//! A glob mirror (`files = "exports/part-*"`, docs/mirrors.md#source-files),
//! `sync_mirror` called directly against a fresh migrated database: three part
//! files (one gzipped, one with its header in another order) as one source; a
//! change in one part; a removed part refused by the guard, then approved; a
//! renamed part is a change; rejects naming their part and line, `MAX_REJECTS`
//! over the set; duplicates across parts; zero matches refused as empty; a
//! symlink escaping `TABLES_DIR` refused; temporary names ignored; and a file
//! rewritten between the hash and the read failing the run.

use crate::helpers::TestEnv;
use followers_etl::config::DatabaseUrl;
use followers_etl::mirror::run::{sync_mirror, MirrorRunError, MirrorRunOptions, MirrorSummary};
use followers_etl::mirror::{from_toml_str, MirrorSource, MirrorSpec};
use sea_orm::{Database, DatabaseConnection};
use sqlx::Row;
use std::io::Write;
use std::path::PathBuf;

const PARTS: &str = r#"
[[mirror]]
name = "parts"
files = "exports/part-*"
table = "crm.parts"
key = ["id"]
csv_header = true
columns = [
  { name = "id",   type = "integer" },
  { name = "name", type = "text" },
]
"#;

struct Env {
    env: TestEnv,
    db: DatabaseConnection,
    url: DatabaseUrl,
    spec: MirrorSpec,
}

async fn env() -> Env {
    let env = TestEnv::migrated().await;
    let db = Database::connect(env.url.as_str()).await.unwrap();
    let url = DatabaseUrl::parse("DATABASE_URL", &env.url).unwrap();
    std::fs::create_dir_all(env.tables().join("exports")).unwrap();
    let spec = from_toml_str(PARTS).unwrap().remove(0);
    Env { env, db, url, spec }
}

fn options() -> MirrorRunOptions {
    MirrorRunOptions::default()
}

/// `id,name` rows `ids`, named `Name {id}{suffix}`, with a header.
fn part(ids: std::ops::RangeInclusive<u32>, suffix: &str) -> String {
    let mut out = String::from("id,name\n");
    for id in ids {
        out += &format!("{id},Name {id}{suffix}\n");
    }
    out
}

fn gzip(text: &str) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap()
}

impl Env {
    async fn sync(&self, options: MirrorRunOptions) -> Result<MirrorSummary, MirrorRunError> {
        sync_mirror(&self.db, &self.url, &self.spec, &self.env.tables(), options).await
    }

    fn path(&self, name: &str) -> PathBuf {
        self.env.tables().join("exports").join(name)
    }

    fn write(&self, name: &str, content: impl AsRef<[u8]>) {
        std::fs::write(self.path(name), content).unwrap();
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.path(name)).unwrap();
    }

    /// Three parts of four rows: 1-4, 5-8 (the header in another order),
    /// 9-12 (gzipped); beside them, names no glob source includes.
    fn three_parts(&self) {
        self.write("part-1.csv", part(1..=4, ""));
        let reversed: String = part(5..=8, "")
            .lines()
            .map(|l| {
                let (a, b) = l.split_once(',').unwrap();
                format!("{b},{a}\n")
            })
            .collect();
        assert!(reversed.starts_with("name,id\n"));
        self.write("part-2.csv", reversed);
        self.write("part-3.csv.gz", gzip(&part(9..=12, "")));
        // rsync's temporary copy, an editor's backup, a download in progress.
        self.write(".part-4.csv.Xa81bQ", "not,csv\n\"broken");
        self.write("part-5.csv~", "junk");
        self.write("part-6.csv.part", "junk");
    }

    async fn rows(&self) -> Vec<(i32, String)> {
        sqlx::query("SELECT id, name FROM crm.parts ORDER BY id")
            .fetch_all(&self.env.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
}

fn named(ids: std::ops::RangeInclusive<u32>) -> Vec<(i32, String)> {
    ids.map(|i| (i32::try_from(i).unwrap(), format!("Name {i}")))
        .collect()
}

fn counts(s: &MirrorSummary) -> (u64, u64, u64, u64) {
    (s.rows_read, s.inserted, s.updated, s.deleted)
}

#[tokio::test]
async fn three_parts_are_one_source_and_a_change_in_one_part_or_a_rename_is_a_change() {
    let env = env().await;
    env.three_parts();
    let first = env.sync(options()).await.unwrap();
    assert_eq!(counts(&first), (12, 12, 0, 0), "{first:?}");
    let names: Vec<String> = first
        .files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["part-1.csv", "part-2.csv", "part-3.csv.gz"]);
    assert_eq!(env.rows().await, named(1..=12));
    let recorded: String = sqlx::query_scalar("SELECT file FROM etl_info_schema.mirror_runs")
        .fetch_one(&env.env.pool)
        .await
        .unwrap();
    assert!(recorded.ends_with("exports/part-*"), "{recorded}");

    let again = env.sync(options()).await.unwrap();
    assert!(again.skipped(), "{again:?}");
    assert_eq!(again.content_hash, first.content_hash);

    // One part changes: only its row is written.
    env.write("part-1.csv", part(1..=4, "").replace("Name 2", "Renamed 2"));
    let changed = env.sync(options()).await.unwrap();
    assert_eq!(counts(&changed), (12, 0, 1, 0), "{changed:?}");
    assert_eq!(changed.unchanged, 11);

    // A part renamed, its content unchanged: the set of names is part of the
    // hash, so the run is not skipped (and changes nothing).
    std::fs::rename(env.path("part-1.csv"), env.path("part-0.csv")).unwrap();
    let renamed = env.sync(options()).await.unwrap();
    assert!(!renamed.skipped(), "a renamed part is a change");
    assert_ne!(renamed.content_hash, changed.content_hash);
    assert_eq!(counts(&renamed), (12, 0, 0, 0), "{renamed:?}");
    assert!(renamed.files[0].ends_with("exports/part-0.csv"));

    // A key in two parts: the last part's line wins, reported with both places.
    env.write(
        "part-3.csv.gz",
        gzip(&(part(9..=12, "") + "2,From part 3\n")),
    );
    let dup = env.sync(options()).await.unwrap();
    assert_eq!((dup.duplicates, dup.updated), (1, 1), "{dup:?}");
    let (_, places) = &dup.duplicate_lines[0];
    let places: Vec<(String, u64)> = places
        .iter()
        .map(|p| {
            let name = p.file.file_name().unwrap().to_string_lossy().into_owned();
            (name, p.line)
        })
        .collect();
    assert_eq!(
        places,
        [
            ("part-0.csv".to_owned(), 3),
            ("part-3.csv.gz".to_owned(), 6)
        ]
    );
    assert!(
        dup.duplicate_lines[0].1[1]
            .to_string()
            .ends_with("exports/part-3.csv.gz: line 6"),
        "{:?}",
        dup.duplicate_lines
    );
    let mut expected = named(1..=12);
    expected[1].1 = "From part 3".into();
    assert_eq!(env.rows().await, expected);
}

#[tokio::test]
async fn a_removed_part_is_a_change_the_guard_refuses_and_zero_matches_are_the_empty_source() {
    let mut env = env().await;
    env.spec.overrides.max_delete_ratio = Some(0.2);
    env.three_parts();
    env.sync(options()).await.unwrap();

    // Part 3 gone: 4 of 12 rows would be deleted, more than 0.2.
    let part_3 = std::fs::read(env.path("part-3.csv.gz")).unwrap();
    env.remove("part-3.csv.gz");
    let e = env.sync(options()).await.unwrap_err();
    assert!(
        matches!(
            e,
            MirrorRunError::MassDelete {
                deleted: 4,
                current: 12,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(env.rows().await, named(1..=12), "refused: unchanged");
    // The same set again is refused again (a refused run records no hash).
    assert!(env.sync(options()).await.is_err());
    let allowed = MirrorRunOptions {
        allow_mass_delete: true,
        ..options()
    };
    let removed = env.sync(allowed).await.unwrap();
    assert_eq!(counts(&removed), (8, 0, 0, 4), "{removed:?}");
    assert_eq!(env.rows().await, named(1..=8));

    // Back again: the rows are inserted again.
    env.write("part-3.csv.gz", part_3);
    assert_eq!(env.sync(options()).await.unwrap().inserted, 4);

    // No file matches: the empty source, refused whatever max_delete_ratio says.
    for name in ["part-1.csv", "part-2.csv", "part-3.csv.gz"] {
        env.remove(name);
    }
    env.spec.overrides.max_delete_ratio = Some(1.0);
    let e = env.sync(options()).await.unwrap_err();
    assert!(
        matches!(&e, MirrorRunError::EmptySource { current: 12, what, .. } if what == "no file matches"),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        "mirror parts: files exports/part-*: no file matches, and the empty source would delete all 12 rows; an empty source is refused whatever max_delete_ratio says (use --allow-mass-delete if intended)"
    );
    assert_eq!(env.rows().await, named(1..=12));
    let emptied = env.sync(allowed).await.unwrap();
    assert_eq!(counts(&emptied), (0, 0, 0, 12), "{emptied:?}");
    assert!(emptied.files.is_empty());
    assert!(env.rows().await.is_empty());

    // Every matching file empty (0 bytes) is the empty source too.
    env.three_parts();
    env.sync(options()).await.unwrap();
    env.write("part-1.csv", "");
    env.write("part-2.csv", "");
    env.write("part-3.csv.gz", gzip(""));
    let e = env.sync(options()).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("files exports/part-*: its 3 files are all empty"),
        "{e}"
    );
    assert_eq!(env.rows().await, named(1..=12));
}

#[tokio::test]
async fn rejects_name_their_part_and_max_rejects_counts_over_the_set() {
    let mut env = env().await;
    env.three_parts();
    env.write(
        "part-1.csv",
        part(1..=4, "").replace("3,Name 3", "x3,Name 3"),
    );
    env.write(
        "part-2.csv",
        part(5..=8, "").replace("5,Name 5", "5.5,Name 5"),
    );
    let e = env.sync(options()).await.unwrap_err();
    assert!(
        matches!(
            e,
            MirrorRunError::TooManyRejects {
                max: 0,
                rejected: 2,
                ..
            }
        ),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("exports/part-1.csv: line 4: column id:"),
        "{text}"
    );

    env.spec.overrides.max_rejects = Some(1);
    let e = env.sync(options()).await.unwrap_err();
    assert!(
        matches!(&e, MirrorRunError::TooManyRejects { max: 1, rejected: 2, rejects, .. }
            if rejects[0].file.ends_with("exports/part-2.csv") && rejects[0].line == 2),
        "{e}"
    );

    env.spec.overrides.max_rejects = Some(2);
    let s = env.sync(options()).await.unwrap();
    assert_eq!((s.rejected, s.inserted), (2, 10), "{s:?}");
    let places: Vec<(String, u64, Option<&str>)> = s
        .rejects
        .iter()
        .map(|r| {
            let name = r.file.file_name().unwrap().to_string_lossy().into_owned();
            (name, r.line, r.column.as_deref())
        })
        .collect();
    assert_eq!(
        places,
        [
            ("part-1.csv".to_owned(), 4, Some("id")),
            ("part-2.csv".to_owned(), 2, Some("id"))
        ]
    );

    // Each part's header is matched on its own: one without `name` refuses
    // the source, naming that part.
    env.write("part-2.csv", part(5..=8, "").replace("id,name", "id,title"));
    let e = env.sync(options()).await.unwrap_err();
    assert!(matches!(e, MirrorRunError::MissingColumn { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("exports/part-2.csv: line 1: the header has no \"name\" column"),
        "{e}"
    );
}

#[tokio::test]
async fn a_symlink_escaping_tables_dir_is_refused() {
    let env = env().await;
    env.three_parts();
    env.sync(options()).await.unwrap();
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), part(1..=100, " outside")).unwrap();
    std::os::unix::fs::symlink(outside.path(), env.path("part-2b.csv")).unwrap();
    let e = env.sync(options()).await.unwrap_err();
    assert!(matches!(e, MirrorRunError::Source { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("exports/part-2b.csv") && text.contains("inside TABLES_DIR"),
        "{text}"
    );
    assert_eq!(env.rows().await, named(1..=12));

    // A symlink inside TABLES_DIR is followed, as for `file`.
    std::fs::remove_file(env.path("part-2b.csv")).unwrap();
    env.write("..inside.csv", part(13..=13, ""));
    std::os::unix::fs::symlink(env.path("..inside.csv"), env.path("part-2b.csv")).unwrap();
    let s = env.sync(options()).await.unwrap();
    assert_eq!((s.rows_read, s.inserted), (13, 1), "{s:?}");

    // A zstd part reads as a gzip one does.
    let zst = zstd::encode_all(part(14..=14, "").as_bytes(), 3).unwrap();
    env.write("part-4.csv.zst", zst);
    let s = env.sync(options()).await.unwrap();
    assert_eq!((s.rows_read, s.inserted), (14, 1), "{s:?}");

    // The glob's directory itself may not lead out of TABLES_DIR.
    let outside_dir = tempfile::tempdir().unwrap();
    std::fs::write(outside_dir.path().join("part-1.csv"), part(1..=1, "")).unwrap();
    std::os::unix::fs::symlink(outside_dir.path(), env.env.tables().join("elsewhere")).unwrap();
    let mut elsewhere = env.spec.clone();
    elsewhere.source = MirrorSource::Glob("elsewhere/part-*".into());
    let e = sync_mirror(&env.db, &env.url, &elsewhere, &env.env.tables(), options())
        .await
        .unwrap_err();
    assert!(matches!(e, MirrorRunError::GlobDir { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("mirror parts: files elsewhere/part-*: its directory resolves to"),
        "{e}"
    );
    assert!(e.to_string().contains("outside TABLES_DIR"), "{e}");
    assert_eq!(env.rows().await.len(), 14, "unchanged");
}

#[tokio::test]
async fn a_part_rewritten_between_the_hash_and_the_read_fails_the_run() {
    let env = env().await;
    env.three_parts();
    env.sync(options()).await.unwrap();
    env.write("part-2.csv", part(5..=8, " v2"));

    // The run drops its staging table after hashing: a session holding a lock
    // on it holds the run there, deterministically, while part 2 is rewritten.
    let hold = crate::helpers::StagingHold::take(&env.env, &env.spec).await;
    let rewrite = hold.release(|| {
        env.write("part-2.csv", part(5..=8, " v3"));
    });
    let (result, ()) = tokio::join!(env.sync(options()), rewrite);
    let e = result.unwrap_err();
    assert!(
        matches!(&e, MirrorRunError::FileChanged { file, .. } if file.ends_with("exports/part-2.csv")),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("the file changed while it was being read"),
        "{e}"
    );
    assert_eq!(env.rows().await, named(1..=12), "nothing merged");
    let staging: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(followers_etl::storage::mirror::MirrorSql::new(&env.spec).staging_table())
        .fetch_one(&env.env.pool)
        .await
        .unwrap();
    assert!(!staging, "staging is dropped");

    // The next run syncs the new content.
    let s = env.sync(options()).await.unwrap();
    assert_eq!(s.updated, 4, "{s:?}");
}

#[tokio::test]
async fn a_glob_whose_directory_is_missing_is_refused_naming_it() {
    let env = env().await;
    std::fs::remove_dir(env.env.tables().join("exports")).unwrap();
    let e = env.sync(options()).await.unwrap_err();
    assert!(matches!(e, MirrorRunError::GlobDir { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("mirror parts: files exports/part-*: its directory"),
        "{e}"
    );
    assert!(e.to_string().contains("cannot be listed"), "{e}");
}
