//! The files people export (docs/sync.md#3-read and
//! docs/sync.md#rejects-report):
//! other encodings, compressed files, the rejects report, the ready marker.

use crate::helpers::*;
use std::io::Write;
use std::time::Duration;

/// Accented names as Windows-1252 writes them ("CSV" from Excel on Windows).
const ACCENTED: &[(&str, &str)] = &[
    ("zoe@example.com", "Zoë Çelik"),
    ("rene@example.com", "René Müller-Lüdenscheidt"),
    ("nuno@example.com", "Nuño Peña — € 5"),
];

fn windows_1252(text: &str) -> Vec<u8> {
    let (bytes, _, unmappable) = encoding_rs::WINDOWS_1252.encode(text);
    assert!(!unmappable);
    bytes.into_owned()
}

fn utf16le_with_bom(text: &str) -> Vec<u8> {
    [0xFF, 0xFE]
        .into_iter()
        .chain(text.encode_utf16().flat_map(u16::to_le_bytes))
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[tokio::test]
async fn a_windows_1252_file_loads_exactly_with_csv_encoding_and_is_refused_without() {
    let env = TestEnv::migrated().await;
    env.write_csv(windows_1252(&csv(ACCENTED)));
    // Read as UTF-8 it is refused, naming the line, the byte and CSV_ENCODING.
    let run = env.sync();
    run.expect(1, "refused");
    assert!(
        run.stderr.contains("line 2")
            // "email,full_name\n" + "zoe@example.com," + "Zo" = 34 bytes before "ë".
            && run.stderr.contains("byte 34")
            && run.stderr.contains("CSV_ENCODING"),
        "{}",
        run.stderr
    );
    assert!(env.followers().await.is_empty());
    let cp1252 = [("CSV_ENCODING", "windows-1252")];
    let run = env.sync_with(&[], &cp1252);
    run.expect(0, "synced");
    assert_eq!(env.followers().await, pairs(ACCENTED));
    // The hash skip works on the raw bytes; the latin1 label is the same encoding.
    assert_eq!(env.sync_with(&[], &cp1252).outcome(), "skipped");
    assert_eq!(
        env.sync_with(&[], &[("CSV_ENCODING", "latin1")]).outcome(),
        "skipped"
    );
    let bad = env.run(&["sync"], &[("CSV_ENCODING", "klingon")]);
    assert!(
        bad.code == 2 && bad.stderr.contains("CSV_ENCODING"),
        "{bad:?}"
    );
}

#[tokio::test]
async fn excel_unicode_text_utf16le_with_bom_and_tabs_loads_under_auto() {
    let env = TestEnv::migrated().await;
    let text: String = std::iter::once("email\tfull_name\r\n".to_string())
        .chain(ACCENTED.iter().map(|(e, n)| format!("{e}\t{n}\r\n")))
        .chain(std::iter::once(
            "kim@example.com\t김민준 😀\r\n".to_string(),
        ))
        .collect();
    env.write_csv(utf16le_with_bom(&text));
    let tab = [("CSV_DELIMITER", "tab")];
    let run = env.sync_with(&[], &tab);
    run.expect(0, "synced");
    let mut expected = pairs(ACCENTED);
    expected.push(("kim@example.com".into(), "김민준 😀".into()));
    expected.sort();
    assert_eq!(env.followers().await, expected);
    assert_eq!(env.sync_with(&[], &tab).outcome(), "skipped");
    // An unpaired surrogate is refused with its line and offset, nothing changed.
    let mut broken = utf16le_with_bom("email\tfull_name\r\nann@example.com\tA");
    broken.extend_from_slice(&[0x00, 0xD8, b'x', 0, b'\n', 0]);
    env.write_csv(broken);
    let run = env.sync_with(&[], &tab);
    run.expect(1, "refused");
    assert!(
        run.stderr.contains("line 2: byte 70 is not valid UTF-16LE")
            && run.stderr.contains("CSV_ENCODING"),
        "{}",
        run.stderr
    );
    assert_eq!(env.followers().await, expected);
}

#[tokio::test]
async fn gz_and_zst_files_load_exactly_and_an_unchanged_archive_is_skipped() {
    let env = TestEnv::migrated().await;
    let rows = many(3000);
    let text = csv_owned(&rows);
    let zst = zstd::encode_all(text.as_bytes(), 3).unwrap();
    let expected: Vec<Follower> = {
        let mut v = rows.clone();
        v.sort();
        v
    };
    assert_eq!(env.run(&["migrate"], &[]).code, 0);
    for (name, bytes) in [
        ("followers.csv.gz", gzip(text.as_bytes())),
        ("followers.csv.zst", zst),
    ] {
        env.exec("DELETE FROM followers; DELETE FROM etl_info_schema.table_status")
            .await;
        env.write_file(name, &bytes);
        let file = [("CSV_FILE", name)];
        let run = env.sync_with(&[], &file);
        run.expect(0, "synced");
        assert_eq!(run.n("rows_read"), 3000);
        assert_eq!(env.followers().await, expected, "{name}");
        assert_eq!(env.sync_with(&[], &file).outcome(), "skipped", "{name}");
        let check = env.run(&["check", name], &[]);
        assert!(
            check.code == 0 && check.stdout.contains("3000 rows"),
            "{check:?}"
        );
    }
    // Line numbers are the decompressed text's.
    env.write_file("bad.csv.gz", gzip(b"email,full_name\na@x.io,A\n\nnope,B\n"));
    let run = env.sync_with(
        &[],
        &[("CSV_FILE", "bad.csv.gz"), ("ALLOW_FILE_CHANGE", "true")],
    );
    assert!(run.stderr.contains("line 4"), "{run:?}");
}

/// An archive that unpacks to nothing is as empty as a file of 0 bytes
/// (docs/sync.md#empty-file): refused whatever MAX_DELETE_RATIO says.
#[tokio::test]
async fn an_archive_that_unpacks_to_nothing_is_refused_as_empty() {
    let env = TestEnv::migrated().await;
    let file = [
        ("CSV_FILE", "followers.csv.gz"),
        ("MAX_DELETE_RATIO", "1.0"),
    ];
    let rows = csv(&[("ann@example.com", "Ann"), ("bob@example.com", "Bob")]);
    env.write_file("followers.csv.gz", gzip(rows.as_bytes()));
    assert_eq!(env.sync_with(&[], &file).outcome(), "synced");
    let before = env.follower_versions().await;
    for (name, empty) in [
        ("followers.csv.gz", gzip(b"")),
        ("followers.csv.zst", zstd::encode_all(&b""[..], 3).unwrap()),
    ] {
        env.write_file(name, empty);
        let run = env.sync_with(
            &[],
            &[
                ("CSV_FILE", name),
                ("MAX_DELETE_RATIO", "1.0"),
                ("ALLOW_FILE_CHANGE", "true"),
            ],
        );
        run.assert_ended(1, "refused");
        assert!(
            run.stderr.contains("empty (0 bytes once unpacked)"),
            "{name}: {run:?}"
        );
        assert_eq!(env.follower_versions().await, before, "{name}");
    }
}

#[tokio::test]
async fn a_truncated_gz_is_refused_and_changes_nothing() {
    let env = TestEnv::migrated().await;
    let file = [("CSV_FILE", "followers.csv.gz")];
    env.write_file(
        "followers.csv.gz",
        gzip(csv(&[("ann@example.com", "Ann")]).as_bytes()),
    );
    assert_eq!(env.sync_with(&[], &file).outcome(), "synced");
    let before = env.follower_versions().await;
    // A complete file of 20,000 rows, cut before its end: every row that made it
    // is valid, but the archive's end-of-stream check fails.
    let full = gzip(csv_owned(&many(20_000)).as_bytes());
    for cut in [full.len() - 4, full.len() / 2] {
        env.write_file("followers.csv.gz", &full[..cut]);
        let run = env.sync_with(&[], &file);
        run.expect(1, "refused");
        assert!(
            run.stderr.contains("gzip archive is truncated or corrupt"),
            "{}",
            run.stderr
        );
        assert_eq!(env.follower_versions().await, before);
        assert_eq!(env.staging_rows().await, 0);
        let (outcome, _, error) = env.last_run().await;
        assert_eq!(outcome, "refused");
        assert!(error.unwrap().contains("truncated"));
    }
}

#[tokio::test]
async fn rejects_last_lists_each_invalid_line_of_a_refused_file() {
    let env = TestEnv::migrated().await;
    env.write_csv(
        "email,full_name\nann@example.com,Ann\nnot-an-email,Bob\ncy@example.com,Cy,extra\n\n\"dee@example.com\",\"Dee\"\nx@@y,\"Ed, Jr\"\n",
    );
    let run = env.sync();
    run.expect(1, "refused");
    let load_id = run.json()["load_id"].as_str().unwrap().to_owned();
    let text = env.run(&["rejects", "--last"], &[]);
    assert_eq!(text.code, 0, "{text:?}");
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", text.stdout);
    assert!(
        lines[0].contains(&load_id)
            && lines[0].contains("outcome=refused")
            && lines[0].contains("rejected=3"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("line 3: ") && lines[1].contains("\"not-an-email,Bob\""),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("line 4: expected 2 fields, found 3")
            && lines[2].contains("cy@example.com,Cy,extra"),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].starts_with("line 7: ") && lines[3].contains(r#"x@@y,\"Ed, Jr\""#),
        "{}",
        lines[3]
    );
    // By load_id, as JSON: the same.
    let json = env.run(&["rejects", &load_id, "--json"], &[]).json();
    assert_eq!(json["outcome"], "refused");
    let got: Vec<(u64, String)> = json["rejects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["raw"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (3, "not-an-email,Bob".into()),
            (4, "cy@example.com,Cy,extra".into()),
            (7, "x@@y,\"Ed, Jr\"".into())
        ]
    );
    assert!(json["rejects"][0]["reason"].as_str().unwrap().contains('@'));
    // A later skip (the file was refused earlier) does not hide them from --last;
    // retention's pruning of the runs removes them.
    env.sync().assert_ended(1, "skipped");
    // An approval reads it again (and refuses it again, with its rejects).
    env.sync_with(&["--force"], &[]).assert_ended(1, "refused");
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    env.synced(&[]);
    assert_eq!(env.sync().outcome(), "skipped");
    let last = env.run(&["rejects", "--last", "--json"], &[]).json();
    assert_eq!(last["outcome"], "synced");
    assert_eq!(last["rejects"], serde_json::json!([]));
    assert_eq!(
        env.scalar("SELECT count(*) FROM etl_info_schema.sync_rejects")
            .await,
        6
    );
    env.exec(&format!(
        "DELETE FROM etl_info_schema.sync_runs WHERE load_id = '{load_id}'"
    ))
    .await;
    assert_eq!(
        env.scalar("SELECT count(*) FROM etl_info_schema.sync_rejects")
            .await,
        3
    );
    // The runs' retention prunes the refused run, and its rejects with it.
    let bound = [("HISTORY_KEEP_RUNS", "1"), ("HISTORY_KEEP_DAYS", "0")];
    assert_eq!(env.sync_with(&[], &bound).outcome(), "skipped");
    eventually(30, "the pruned run's rejects gone", || async {
        (env.scalar("SELECT count(*) FROM etl_info_schema.sync_rejects")
            .await
            == 0)
            .then_some(())
    })
    .await;
    let missing = env.run(&["rejects", &load_id], &[]);
    assert_eq!(missing.code, 1, "{missing:?}");
    assert_eq!(env.run(&["rejects", "not-a-uuid"], &[]).code, 2);
}

#[tokio::test]
async fn a_sync_by_hand_waits_for_the_ready_marker_then_refuses_naming_it() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    let marker = [("READY_MARKER", ".done"), ("READY_TIMEOUT", "1s")];
    let run = env.sync_with(&[], &marker);
    run.expect(1, "refused");
    assert!(
        run.stderr.contains("followers.csv.done does not exist") && run.stderr.contains("1s"),
        "{}",
        run.stderr
    );
    assert!(env.followers().await.is_empty());
    // A marker older than the file is not one for this file.
    let done = env.write_file("followers.csv.done", "");
    std::fs::File::options()
        .write(true)
        .open(&done)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let run = env.sync_with(&[], &marker);
    assert!(run.stderr.contains("is older than the file"), "{run:?}");
    // A marker arriving while the run waits lets it through.
    std::fs::remove_file(&done).unwrap();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        std::fs::write(done, "").unwrap();
    });
    let run = env.sync_with(&[], &[("READY_MARKER", ".done"), ("READY_TIMEOUT", "60s")]);
    writer.join().unwrap();
    assert_eq!(run.outcome(), "synced", "{run:?}");
    assert_eq!(env.followers().await, pairs(&[("ann@example.com", "Ann")]));
}

#[tokio::test]
async fn serve_does_not_sync_a_new_file_until_its_marker_appears_then_syncs_it_once() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(&[("ann@example.com", "Ann")]));
    assert_eq!(env.run(&["migrate"], &[]).code, 0);
    let agent = env.spawn_agent(&[("READY_MARKER", ".done")]);
    // Start-up and a write of the file: both skipped, the file unread.
    eventually(30, "the start-up run skipped for the marker", || async {
        let runs = env.runs_by("start").await;
        (runs == vec![("skipped".to_string(), 0)]).then_some(())
    })
    .await;
    env.write_csv(csv(&[("bob@example.com", "Bob")]));
    eventually(30, "the watch run skipped for the marker", || async {
        let runs = env.runs_by("watch").await;
        (runs.first() == Some(&("skipped".to_string(), 0))).then_some(())
    })
    .await;
    assert!(env.followers().await.is_empty(), "{}", agent.log_text());
    let (_, _, reason) = env.last_run().await;
    assert!(reason
        .unwrap()
        .contains("followers.csv.done does not exist"));
    // The marker arrives: one sync.
    env.write_file("followers.csv.done", "");
    eventually(30, "the file synced after its marker", || async {
        (env.followers().await == pairs(&[("bob@example.com", "Bob")])).then_some(())
    })
    .await;
    // A marker written again re-checks the file, which is unchanged: skipped.
    env.write_file("followers.csv.done", "again");
    eventually(30, "a second marker event's run", || async {
        let runs = env.runs_by("watch").await;
        (runs.len() >= 3 && runs.last().unwrap().0 == "skipped").then_some(runs)
    })
    .await;
    let synced = env
        .scalar("SELECT count(*) FROM etl_info_schema.sync_runs WHERE outcome = 'synced'")
        .await;
    assert_eq!(synced, 1, "{}", agent.log_text());
}

#[tokio::test]
async fn serve_watches_a_compressed_file_and_skips_it_unchanged() {
    const AB: &[(&str, &str)] = &[("ann@example.com", "Ann"), ("bob@example.com", "Bob")];
    let env = TestEnv::migrated().await;
    env.write_file(
        "followers.csv.gz",
        gzip(csv(&[("ann@example.com", "Ann")]).as_bytes()),
    );
    assert_eq!(env.run(&["migrate"], &[]).code, 0);
    let agent = env.spawn_agent(&[("CSV_FILE", "followers.csv.gz")]);
    eventually(30, "the start-up sync of the archive", || async {
        (env.followers().await == pairs(&[("ann@example.com", "Ann")])).then_some(())
    })
    .await;
    env.write_file("followers.csv.gz", gzip(csv(AB).as_bytes()));
    eventually(30, "the watch sync of the new archive", || async {
        (env.followers().await == pairs(AB)).then_some(())
    })
    .await;
    // Rewritten with the same bytes: the raw hash is unchanged, every later run skips.
    env.write_file("followers.csv.gz", gzip(csv(AB).as_bytes()));
    let runs = eventually(30, "a skipped watch run", || async {
        let runs = env.runs_by("watch").await;
        (runs.len() >= 2 && runs.iter().all(|r| r.0 != "running")).then_some(runs)
    })
    .await;
    assert_eq!(runs[0], ("synced".to_string(), 2), "{}", agent.log_text());
    assert!(
        runs[1..].iter().all(|r| r == &("skipped".to_string(), 0)),
        "{runs:?}\n{}",
        agent.log_text()
    );
}
