//! `sync`: what a run does to `followers`, and what it refuses to do.

use crate::helpers::*;

const ABC: &[(&str, &str)] = &[
    ("ann@example.com", "Ann"),
    ("bob@example.com", "Bob"),
    ("cy@example.com", "Cy"),
];

#[tokio::test]
async fn first_load_inserts_every_row_and_records_the_sync() {
    let env = TestEnv::migrated_in_process().await;
    env.write_csv(csv(ABC));
    let run = env.synced(&[]);
    assert_eq!(
        (
            run.n("rows_read"),
            run.n("inserted"),
            run.n("updated"),
            run.n("deleted")
        ),
        (3, 3, 0, 0)
    );
    assert_eq!(env.followers().await, pairs(ABC));
    assert_eq!(env.staging_rows().await, 0);
    assert_eq!(
        env.last_run().await,
        ("synced".into(), "manual".into(), None)
    );
    let status = env
        .scalar("SELECT count(*) FROM etl_info_schema.table_status WHERE table_name = 'followers' AND last_activity IS NOT NULL AND content_hash IS NOT NULL")
        .await;
    assert_eq!(status, 1);
}

#[tokio::test]
async fn summary_json_has_exactly_the_specified_keys() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(ABC));
    let json = env.synced(&[]).json();
    let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "deleted",
            "duplicates",
            "duration",
            "inserted",
            "journaled",
            "load_id",
            "outcome",
            "rejected",
            "rows_read",
            "unchanged",
            "updated"
        ]
    );
    let text = env.run(&["sync", "--force"], &[]);
    assert_eq!(text.code, 0, "{text:?}");
    assert!(
        text.stdout.starts_with("synced load_id=") && text.stdout.contains(" unchanged=3 "),
        "{}",
        text.stdout
    );
}

#[tokio::test]
async fn identical_file_is_skipped_and_recorded_as_skipped() {
    let env = TestEnv::migrated_in_process().await;
    env.write_csv(csv(ABC));
    env.synced(&[]);
    let before = env.follower_versions().await;
    let run = env.sync();
    run.assert_ended(0, "skipped");
    assert_eq!(env.follower_versions().await, before);
    assert_eq!(env.last_run().await.0, "skipped");
}

#[tokio::test]
async fn force_on_an_identical_file_rewrites_no_row() {
    let env = TestEnv::migrated_in_process().await;
    env.write_csv(csv(ABC));
    env.synced(&[]);
    let before = env.follower_versions().await;
    let run = env.synced(&["--force"]);
    assert_eq!(
        (
            run.n("inserted"),
            run.n("updated"),
            run.n("deleted"),
            run.n("unchanged")
        ),
        (0, 0, 0, 3)
    );
    assert_eq!(
        env.follower_versions().await,
        before,
        "modified_at or the row version changed"
    );
}

#[tokio::test]
async fn a_mixed_change_inserts_updates_and_deletes_exactly_what_differs() {
    let env = TestEnv::migrated_in_process().await;
    let mut rows = many(10);
    env.write_csv(csv_owned(&rows));
    env.synced(&[]);
    let before = env.follower_versions().await;
    rows.remove(3); // deleted
    rows[0].1 = "Renamed".into(); // updated
    rows[5].1 = "Also renamed".into(); // updated
    rows.push(("new1@example.com".into(), "New".into())); // inserted
    rows.push(("new2@example.com".into(), "".into())); // inserted, empty name allowed
    env.write_csv(csv_owned(&rows));
    let run = env.synced(&[]);
    assert_eq!(
        (
            run.n("rows_read"),
            run.n("inserted"),
            run.n("updated"),
            run.n("deleted"),
            run.n("unchanged")
        ),
        (11, 2, 2, 1, 7)
    );
    let mut expected = rows.clone();
    expected.sort();
    assert_eq!(env.followers().await, expected);
    let after = env.follower_versions().await;
    let untouched = before.iter().filter(|b| after.contains(b)).count();
    assert_eq!(
        untouched, 7,
        "exactly the 7 unchanged rows keep modified_at and row version"
    );
}

#[tokio::test]
async fn emails_are_trimmed_and_lower_cased_and_the_last_duplicate_wins() {
    let env = TestEnv::migrated().await;
    env.write_csv("email,full_name\n  Ann@Example.COM ,Ann One\nbob@example.com,Bob\nANN@example.com,  Ann Two  \n");
    let run = env.synced(&[]);
    assert_eq!(
        (run.n("rows_read"), run.n("inserted"), run.n("duplicates")),
        (3, 2, 1)
    );
    assert_eq!(
        env.followers().await,
        pairs(&[("ann@example.com", "Ann Two"), ("bob@example.com", "Bob")])
    );
    assert!(
        run.stderr.contains("ann@example.com") && run.stderr.contains("[2, 4]"),
        "duplicate lines not reported: {}",
        run.stderr
    );
    // The old service failed every run on a duplicate, and stored case variants twice.
    let again = env.synced(&["--force"]);
    assert_eq!(again.n("unchanged"), 2);
}

#[tokio::test]
async fn header_bom_crlf_column_order_and_extra_columns_all_load_the_same_followers() {
    let expected = pairs(&[
        ("ann@example.com", "Ann, \"A\" Lee"),
        ("bob@example.com", "Бob 王"),
    ]);
    for (what, content, header) in [
        ("header", "email,full_name\nann@example.com,\"Ann, \"\"A\"\" Lee\"\nbob@example.com,Бob 王\n", "auto"),
        ("no header", "ann@example.com,\"Ann, \"\"A\"\" Lee\"\nbob@example.com,Бob 王\n", "auto"),
        ("forced no header", "ann@example.com,\"Ann, \"\"A\"\" Lee\"\nbob@example.com,Бob 王\n", "false"),
        ("BOM and CRLF", "\u{feff}email,full_name\r\nann@example.com,\"Ann, \"\"A\"\" Lee\"\r\n\r\nbob@example.com,Бob 王\r\n", "auto"),
        ("reordered, extra columns", "id,Full_Name,EMAIL,plan\n1,\"Ann, \"\"A\"\" Lee\",ann@example.com,pro\n2,Бob 王,bob@example.com,free\n", "true"),
    ] {
        let env = TestEnv::migrated_in_process().await;
        env.write_csv(content);
        let run = env.sync_with(&[], &[("CSV_HEADER", header)]);
        assert_eq!((run.code, run.outcome().as_str()), (0, "synced"), "{what}: {run:?}");
        assert_eq!(env.followers().await, expected, "{what}");
    }
}

#[tokio::test]
async fn semicolon_delimiter_is_honoured() {
    let env = TestEnv::migrated_in_process().await;
    env.write_csv("email;full_name\nann@example.com;Lee, Ann\n");
    let run = env.sync_with(&[], &[("CSV_DELIMITER", ";")]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        env.followers().await,
        pairs(&[("ann@example.com", "Lee, Ann")])
    );
}

#[tokio::test]
async fn each_invalid_row_refuses_the_file_naming_file_line_and_reason_and_changes_nothing() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(ABC));
    env.synced(&[]);
    let before = env.follower_versions().await;
    let long = "x".repeat(256);
    for (bad_line, reason) in [
        ("no-at-sign,Dan".to_string(), "has no '@'"),
        ("dan@example.com".to_string(), "expected 2 fields, found 1"),
        (
            "dan@example.com,Dan,extra".to_string(),
            "expected 2 fields, found 3",
        ),
        (format!("dan@example.com,{long}"), "at most 255"),
        ("dan @example.com,Dan".to_string(), "whitespace"),
        ("a@b@example.com,Dan".to_string(), "more than one '@'"),
        ("@example.com,Dan".to_string(), "empty local part"),
        (
            "dan@example.com,\"Dan\nerin@example.com,Erin".to_string(),
            "line break",
        ),
    ] {
        env.write_csv(format!("email,full_name\nann@example.com,Ann\nbob@example.com,Bob\n{bad_line}\ncy@example.com,Cy\n"));
        let run = env.sync();
        assert_eq!(
            (run.code, run.outcome().as_str()),
            (1, "refused"),
            "{bad_line}: {run:?}"
        );
        assert!(
            run.stderr.contains("followers.csv")
                && run.stderr.contains("line 4")
                && run.stderr.contains(reason),
            "{bad_line}: {}",
            run.stderr
        );
        assert_eq!(env.follower_versions().await, before);
        assert_eq!(env.staging_rows().await, 0);
        assert_eq!(env.last_run().await.0, "refused");
    }
    env.write_file(
        "followers.csv",
        b"email,full_name\nann@example.com,Ann\nbob@example.com,B\xffb\ncy@example.com,Cy\n",
    );
    let run = env.sync();
    assert!(
        run.code == 1 && run.stderr.contains("line 3") && run.stderr.contains("UTF-8"),
        "{run:?}"
    );
}

#[tokio::test]
async fn a_parse_error_mid_file_never_truncates_the_table() {
    // The old service stopped at a parse error and deleted everything after it.
    let env = TestEnv::migrated().await;
    let rows = many(10);
    env.write_csv(csv_owned(&rows));
    env.synced(&[]);
    let mut text = csv_owned(&rows);
    text = text.replacen("user2@example.com,User 2", "user2@example.com,\"User 2", 1);
    env.write_csv(&text);
    let run = env.sync();
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(env.followers().await.len(), 10);
    // Even where invalid rows may be skipped, a swallowed tail is not "one reject".
    let run = env.sync_with(&[], &[("MAX_REJECTS", "5"), ("MAX_DELETE_RATIO", "1.0")]);
    run.assert_ended(1, "refused");
    assert!(
        run.stderr.contains("line 4") && run.stderr.contains("unbalanced quote"),
        "{}",
        run.stderr
    );
    assert_eq!(env.followers().await.len(), 10);
    // A quote left open in an ignored column, or one that changes the field count.
    for text in [
        "email,full_name,note\nuser0@example.com,User 0,n\nuser1@example.com,User 1,\"n\nuser2@example.com,User 2,n\n",
        "user0@example.com,User 0\n\"user1@example.com,User 1\nuser2@example.com,User 2\n",
    ] {
        env.write_csv(text);
        let run = env.sync_with(&[], &[("MAX_REJECTS", "3"), ("MAX_DELETE_RATIO", "1.0")]);
        assert_eq!((run.code, run.outcome().as_str()), (1, "refused"), "{text:?}: {run:?}");
        assert_eq!(env.followers().await.len(), 10, "{text:?}");
    }
}

#[tokio::test]
async fn max_rejects_skips_bad_rows_but_keeps_their_followers() {
    let env = TestEnv::migrated_in_process().await;
    env.write_csv(csv(ABC));
    env.synced(&[]);
    let long = "x".repeat(300);
    env.write_csv(format!(
        "email,full_name\nann@example.com,Ann 2\nbob@example.com,{long}\nnot-an-email,Zed\n"
    ));
    let run = env.sync_with(&[], &[("MAX_REJECTS", "2"), ("MAX_DELETE_RATIO", "1.0")]);
    run.assert_ended(0, "synced");
    assert_eq!(
        (run.n("rejected"), run.n("updated"), run.n("deleted")),
        (2, 1, 1)
    );
    // bob's row was rejected: bob stays, unchanged; cy is absent: deleted.
    assert_eq!(
        env.followers().await,
        pairs(&[("ann@example.com", "Ann 2"), ("bob@example.com", "Bob")])
    );
    let refused = env.sync_with(&["--force"], &[("MAX_REJECTS", "1")]);
    refused.assert_ended(1, "refused");
}

#[tokio::test]
async fn a_truncated_file_is_refused_by_the_delete_guard() {
    let env = TestEnv::migrated().await;
    let rows = many(10);
    env.write_csv(csv_owned(&rows));
    env.synced(&[]);
    let before = env.follower_versions().await;
    env.write_csv(csv_owned(&rows[..4]));
    let run = env.sync();
    run.assert_ended(1, "refused");
    assert!(
        run.stderr.contains("MAX_DELETE_RATIO") && run.stderr.contains("6 of 10"),
        "{}",
        run.stderr
    );
    assert_eq!(env.follower_versions().await, before);
    assert_eq!(env.staging_rows().await, 0);
    assert_eq!(
        (run.n("rows_read"), run.n("deleted")),
        (4, 6),
        "a refused run reports what it would do"
    );
    // --allow-mass-delete overrides.
    let run = env.synced(&["--allow-mass-delete"]);
    assert_eq!(run.n("deleted"), 6);
    assert_eq!(env.followers().await.len(), 4);
    // Exactly at the ratio is allowed: 2 of 4 deleted.
    env.write_csv(csv_owned(&rows[..2]));
    assert_eq!(env.synced(&[]).n("deleted"), 2);
}

#[tokio::test]
async fn an_empty_file_never_wipes_the_table() {
    let env = TestEnv::migrated_in_process().await;
    env.write_csv(csv(ABC));
    env.synced(&[]);
    for empty in ["", "email,full_name\n", "\n\n"] {
        env.write_csv(empty);
        let run = env.sync();
        assert_eq!(
            (run.code, run.outcome().as_str()),
            (1, "refused"),
            "{empty:?}: {run:?}"
        );
        assert_eq!(env.followers().await, pairs(ABC));
    }
}

#[tokio::test]
async fn dry_run_reports_the_changes_and_changes_nothing() {
    let env = TestEnv::migrated_in_process().await;
    env.write_csv(csv(ABC));
    env.synced(&[]);
    let before = env.follower_versions().await;
    env.write_csv(csv(&[
        ("ann@example.com", "Ann"),
        ("bob@example.com", "Robert"),
        ("dee@example.com", "Dee"),
    ]));
    let run = env.sync_with(&["--dry-run"], &[]);
    run.assert_ended(0, "dry_run");
    assert_eq!(
        (
            run.n("inserted"),
            run.n("updated"),
            run.n("deleted"),
            run.n("unchanged")
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(env.follower_versions().await, before);
    assert_eq!(env.staging_rows().await, 0);
    // The dry run did not record the file as synced: the real run still happens.
    let real = env.synced(&[]);
    assert_eq!(
        (real.n("inserted"), real.n("updated"), real.n("deleted")),
        (1, 1, 1)
    );
}

/// Installs a trigger that makes `table`'s `when` statement fail.
/// `when` "COMMIT" installs a deferred constraint trigger: it raises while the
/// merge transaction commits; "TRUNCATE" a statement trigger (no condition).
async fn fail_on(env: &TestEnv, table: &str, when: &str, condition: &str) {
    let trigger = if when == "COMMIT" {
        format!("CREATE CONSTRAINT TRIGGER inject AFTER INSERT OR UPDATE OR DELETE ON {table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN ({condition}) EXECUTE FUNCTION fail_injected();")
    } else if when == "TRUNCATE" {
        format!("CREATE TRIGGER inject BEFORE TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION fail_injected();")
    } else {
        format!("CREATE TRIGGER inject BEFORE {when} ON {table} FOR EACH ROW WHEN ({condition}) EXECUTE FUNCTION fail_injected();")
    };
    env.exec(&format!(
        "CREATE OR REPLACE FUNCTION fail_injected() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'injected failure'; END $$;
         {trigger}"
    ))
    .await;
}

#[tokio::test]
async fn a_failure_at_any_saga_step_leaves_followers_unchanged_and_staging_empty() {
    for (step, table, when, condition) in [
        (
            "stage",
            "staging_followers",
            "INSERT",
            "NEW.email = 'new@example.com'",
        ),
        ("update", "followers", "UPDATE", "true"),
        ("insert", "followers", "INSERT", "true"),
        ("delete", "followers", "DELETE", "true"),
        ("status", "etl_info_schema.table_status", "UPDATE", "true"),
        (
            "record",
            "etl_info_schema.sync_runs",
            "UPDATE",
            "NEW.outcome = 'synced'",
        ),
        ("cleanup", "staging_followers", "TRUNCATE", "true"),
        ("commit", "followers", "COMMIT", "true"),
    ] {
        let env = TestEnv::migrated().await;
        let mut rows = many(8);
        env.write_csv(csv_owned(&rows));
        env.synced(&[]);
        let before = env.follower_versions().await;
        rows.remove(0);
        rows[1].1 = "Changed".into();
        rows.push(("new@example.com".into(), "New".into()));
        rows.push(("zed@example.com".into(), "Zed".into()));
        env.write_csv(csv_owned(&rows));
        fail_on(&env, table, when, condition).await;
        let run = env.sync();
        assert_eq!(
            (run.code, run.outcome().as_str()),
            (1, "failed"),
            "{step}: {run:?}"
        );
        assert!(
            run.stderr.contains("injected failure"),
            "{step}: {}",
            run.stderr
        );
        assert_eq!(
            env.follower_versions().await,
            before,
            "{step}: followers changed"
        );
        if step != "cleanup" {
            assert_eq!(env.staging_rows().await, 0, "{step}: staging rows left");
        }
        env.exec(&format!("DROP TRIGGER inject ON {table}")).await;
        let (outcome, _, error) = env.last_run().await;
        assert_eq!(outcome, "failed", "{step}");
        assert!(
            error.unwrap_or_default().contains("injected failure"),
            "{step}"
        );
        // Once the fault is gone the same file syncs.
        // (When deleting staging rows is what fails, the compensation cannot
        // delete them either: the next run's recovery does.)
        env.synced(&[]);
        assert_eq!(env.staging_rows().await, 0, "{step}");
        assert_eq!(env.followers().await.len(), 9, "{step}");
    }
}

#[tokio::test]
async fn a_failure_in_the_first_sync_into_an_empty_table_leaves_it_empty() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv_owned(&many(50)));
    env.run(&["migrate"], &[]);
    fail_on(
        &env,
        "followers",
        "INSERT",
        "NEW.email = 'user40@example.com'",
    )
    .await;
    let run = env.sync();
    assert_eq!((run.code, run.outcome().as_str()), (1, "failed"), "{run:?}");
    assert!(run.stderr.contains("injected failure"), "{}", run.stderr);
    assert!(env.followers().await.is_empty());
    assert_eq!(env.staging_rows().await, 0);
    env.exec("DROP TRIGGER inject ON followers").await;
    let run = env.synced(&[]);
    assert_eq!(run.n("inserted"), 50);
    assert_eq!(env.followers().await.len(), 50);
}

/// The first sync drops the primary key and builds it again after the insert
/// when it may (docs/performance.md#the-first-sync); when another session is reading the
/// table, or another table references the key, it inserts with the key in place.
/// Either way the table ends the same, with its key.
#[tokio::test]
async fn the_first_sync_rebuilds_the_primary_key_only_when_nothing_stands_in_the_way() {
    let key_oid = "SELECT coalesce((SELECT conindid::bigint FROM pg_constraint
                     WHERE conrelid = 'public.followers'::regclass AND contype = 'p'
                       AND conname = 'followers_pkey'
                       AND pg_get_constraintdef(oid) = 'PRIMARY KEY (email)'), 0)";
    let mut rows = many(300);
    rows.push((" USER7@example.com".into(), "Last wins".into()));
    let expected = {
        let mut e = rows.clone();
        e.remove(7);
        e.last_mut().unwrap().0 = "user7@example.com".into();
        e.sort();
        e
    };
    for case in ["free", "referenced", "in use"] {
        let env = TestEnv::in_process().await;
        env.write_csv(csv_owned(&rows));
        env.run(&["migrate"], &[]);
        let before = env.scalar(key_oid).await;
        assert_ne!(before, 0, "{case}");
        if case == "referenced" {
            env.exec("CREATE TABLE likes (email varchar(255) REFERENCES followers (email))")
                .await;
        }
        let mut reader = env.pool.begin().await.unwrap();
        if case == "in use" {
            sqlx::query("SELECT count(*) FROM followers")
                .execute(&mut *reader)
                .await
                .unwrap();
        }
        let run = env.synced(&[]);
        reader.commit().await.unwrap();
        assert_eq!(run.n("inserted"), 300, "{case}");
        let mut got = env.followers().await;
        got.sort();
        assert_eq!(got, expected, "{case}");
        let after = env.scalar(key_oid).await;
        assert_ne!(after, 0, "{case}: the primary key is gone or changed");
        assert_eq!(after != before, case == "free", "{case}: rebuilt?");
        // The key still holds.
        let duplicate = sqlx::query(
            "INSERT INTO followers (email, full_name, modified_at) VALUES ('user1@example.com', 'x', now())",
        )
        .execute(&env.pool)
        .await;
        assert!(duplicate.is_err(), "{case}");
    }
}

#[tokio::test]
async fn a_second_sync_while_one_holds_the_lock_is_skipped() {
    let env = TestEnv::new().await;
    env.write_csv(csv(ABC));
    let mut holder = env.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(followers_etl::db::RUN_LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    env.run(&["migrate"], &[]);
    let run = env.sync();
    run.assert_ended(0, "skipped");
    assert!(run.stderr.contains("another sync"), "{}", run.stderr);
    assert!(env.followers().await.is_empty());
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(followers_etl::db::RUN_LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    drop(holder);
    env.synced(&[]);
}

#[tokio::test]
async fn a_crashed_run_is_recovered_by_the_next_one() {
    let env = TestEnv::migrated_in_process().await;
    env.write_csv(csv(ABC));
    env.synced(&[]);
    let crashed = env.leave_a_crashed_run().await;
    env.synced(&["--force"]);
    assert_eq!(env.staging_rows().await, 0);
    let outcome: String =
        sqlx::query_scalar("SELECT outcome FROM etl_info_schema.sync_runs WHERE load_id = $1")
            .bind(crashed)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(outcome, "failed");
    assert!(!env
        .followers()
        .await
        .iter()
        .any(|(e, _)| e == "ghost@example.com"));
}

#[tokio::test]
async fn a_large_file_streams_through_many_batches_and_workers() {
    let env = TestEnv::migrated_in_process().await;
    let rows = many(25_000);
    env.write_csv(csv_owned(&rows));
    let run = env.sync_with(
        &[],
        &[("BATCH_SIZE", "1000"), ("WORKER_POOL_GOROUTINES", "4")],
    );
    assert_eq!((run.code, run.n("inserted")), (0, 25_000), "{run:?}");
    assert_eq!(env.scalar("SELECT count(*) FROM followers").await, 25_000);
}

#[tokio::test]
async fn a_dropped_connection_during_copy_is_compensated() {
    let env = TestEnv::migrated_in_process().await;
    let mut rows = many(50);
    env.write_csv(csv_owned(&rows));
    env.synced(&[]);
    let before = env.follower_versions().await;
    rows.push(("new@example.com".into(), "New".into()));
    rows.remove(0);
    env.write_csv(csv_owned(&rows));
    // The worker's own backend is terminated mid-COPY: a real connection drop.
    env.exec(
        "CREATE FUNCTION drop_connection() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$;
         CREATE TRIGGER inject BEFORE INSERT ON staging_followers FOR EACH ROW
         WHEN (NEW.email = 'new@example.com') EXECUTE FUNCTION drop_connection();",
    )
    .await;
    let run = env.sync_with(
        &[],
        &[("BATCH_SIZE", "10"), ("WORKER_POOL_GOROUTINES", "2")],
    );
    run.assert_ended(1, "failed");
    assert_eq!(env.follower_versions().await, before);
    assert_eq!(env.staging_rows().await, 0);
    assert!(
        env.last_run().await.2.unwrap_or_default().contains("COPY"),
        "{run:?}"
    );
}

#[tokio::test]
async fn when_the_last_occurrence_of_an_email_is_rejected_the_follower_is_left_as_it_is() {
    let env = TestEnv::migrated_in_process().await;
    env.write_csv(csv(ABC));
    env.synced(&[]);
    let long = "x".repeat(300);
    env.write_csv(format!(
        "email,full_name\nann@example.com,Ann Changed\nbob@example.com,Bob\ncy@example.com,Cy\nann@example.com,{long}\nnew@example.com,New\nnew@example.com,{long}\n"
    ));
    let run = env.sync_with(&[], &[("MAX_REJECTS", "2")]);
    run.assert_ended(0, "synced");
    // ann keeps "Ann" (line 5 wins and is invalid); new is not inserted from line 6.
    assert_eq!(env.followers().await, pairs(ABC));
    assert_eq!(
        (run.n("inserted"), run.n("updated"), run.n("deleted")),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn a_run_that_lost_its_lock_does_not_commit() {
    let env = TestEnv::migrated().await;
    let rows = many(3000);
    env.write_csv(csv_owned(&rows[..1000]));
    env.synced(&[]);
    let before = env.follower_versions().await;
    env.write_csv(csv_owned(&rows));
    // Slow staging down at one row, so the test can kill the lock's session.
    env.exec(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_sleep(2); RETURN NEW; END $$;
         CREATE TRIGGER slow BEFORE INSERT ON staging_followers FOR EACH ROW
         WHEN (NEW.email = 'user2500@example.com') EXECUTE FUNCTION slow();",
    )
    .await;
    let mut cmd = env.command();
    cmd.args(["sync", "--json"])
        .env("BATCH_SIZE", "100")
        .env("WORKER_POOL_GOROUTINES", "1");
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The run lock's key is split into classid (high half) and objid (low half);
    // only this test's database (tests run in parallel on one server).
    let key = followers_etl::db::RUN_LOCK;
    let run_lock = format!(
        "FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = {} AND objid = {}
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        key >> 32,
        key & 0xffff_ffff
    );
    eventually(30, "rows being staged under the run lock", || async {
        let held = env.scalar(&format!("SELECT count(*) {run_lock}")).await;
        (held == 1 && env.staging_rows().await > 0).then_some(())
    })
    .await;
    env.exec(&format!("SELECT pg_terminate_backend(pid) {run_lock}"))
        .await;
    let run: Run = child.wait_with_output().unwrap().into();
    run.assert_ended(1, "failed");
    assert!(run.stderr.contains("lost its lock"), "{}", run.stderr);
    assert_eq!(env.follower_versions().await, before);
    assert_eq!(env.staging_rows().await, 0);
}

#[tokio::test]
async fn a_database_of_the_old_service_is_taken_over() {
    let env = TestEnv::in_process().await;
    env.exec(
        "CREATE TABLE followers (email VARCHAR(255) PRIMARY KEY, full_name VARCHAR(255) NOT NULL, modified_at TIMESTAMP NOT NULL);
         CREATE TABLE staging_followers (email VARCHAR(255) NOT NULL, full_name VARCHAR(255) NOT NULL, load_id UUID NOT NULL);
         CREATE SCHEMA etl_info_schema;
         CREATE TABLE etl_info_schema.table_status (id SERIAL PRIMARY KEY, table_name VARCHAR(64) UNIQUE NOT NULL, last_activity TIMESTAMP);
         INSERT INTO followers VALUES ('ann@example.com', 'Ann', now()), ('old@example.com', 'Old', now());
         INSERT INTO etl_info_schema.table_status (table_name, last_activity) VALUES ('followers', now());",
    )
    .await;
    env.write_csv(csv(ABC));
    let run = env.synced(&[]);
    assert_eq!(
        (run.n("inserted"), run.n("deleted"), run.n("unchanged")),
        (2, 1, 1)
    );
    assert_eq!(env.followers().await, pairs(ABC));
}

#[tokio::test]
async fn a_symlinked_csv_file_is_followed_when_repointed_but_never_outside_tables_dir() {
    let env = TestEnv::migrated().await;
    env.write_file("a.csv", csv(ABC));
    let b = [
        ("ann@example.com", "Ann B"),
        ("bob@example.com", "Bob"),
        ("cy@example.com", "Cy"),
    ];
    env.write_file("b.csv", csv(&b));
    let link = env.tables().join("followers.csv");
    std::os::unix::fs::symlink("a.csv", &link).unwrap();
    env.synced(&[]);
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("b.csv", &link).unwrap();
    env.synced(&[]);
    assert_eq!(env.followers().await, pairs(&b));
    let outside = env.dir.path().join("outside.csv");
    std::fs::write(&outside, csv(&[("eve@example.com", "Eve")])).unwrap();
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let run = env.sync();
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("TABLES_DIR"), "{}", run.stderr);
    assert_eq!(env.followers().await, pairs(&b));
}
