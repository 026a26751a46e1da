//! Line endings: bare-CR (old Mac) files and stray carriage returns, read the same
//! way by `check` and `sync` (docs/sync.md#3-read).

use crate::helpers::*;

/// `check` and `sync` (MAX_REJECTS=0) on the test's CSV agree: `check` exits 1
/// with `totals` on stdout, `sync` is refused, and both name every `needle`.
fn both_find_invalid_rows(env: &TestEnv, totals: &str, needles: &[&str]) {
    let path = env.tables().join("followers.csv");
    let checked = env.run(&["check", path.to_str().unwrap()], &[]);
    assert!(
        checked.code == 1 && checked.stdout.contains(totals),
        "{checked:?}"
    );
    let refused = env.sync();
    assert_eq!(refused.outcome(), "refused", "{refused:?}");
    for needle in needles {
        assert!(checked.stderr.contains(needle), "{needle}: {checked:?}");
        assert!(refused.stderr.contains(needle), "{needle}: {refused:?}");
    }
}

#[tokio::test]
async fn a_bare_cr_file_syncs_like_its_lf_twin_with_true_line_numbers() {
    let env = TestEnv::new().await;
    // A duplicate too: equal line numbers for every row made the duplicate
    // resolution keep both copies, and the merge then failed as "lost".
    env.write_csv("email,full_name\ra@x.io,Ann\rb@x.io,Bob\r\rA@x.io,Ann Two\rbad,Bad\r");
    both_find_invalid_rows(
        &env,
        "4 rows, 3 valid, 1 invalid, 1 duplicates",
        &["line 6"],
    );
    let path = env.tables().join("followers.csv");
    let checked = env.run(&["check", path.to_str().unwrap()], &[]);
    assert!(checked.stderr.contains("[2, 5]"), "{checked:?}");
    let run = env.sync_with(&[], &[("MAX_REJECTS", "1")]);
    run.assert_ended(0, "synced");
    assert_eq!(
        (
            run.n("rows_read"),
            run.n("inserted"),
            run.n("duplicates"),
            run.n("rejected")
        ),
        (4, 2, 1, 1)
    );
    assert_eq!(
        env.followers().await,
        pairs(&[("a@x.io", "Ann Two"), ("b@x.io", "Bob")])
    );
    assert_eq!(env.staging_rows().await, 0);
}

#[tokio::test]
async fn a_stray_cr_rejects_its_row_in_check_and_sync_and_never_splits_it() {
    let env = TestEnv::migrated().await;
    for content in [
        "email,full_name\na@x.io,Ann\nb@x.io,Bo\rc@x.io,Cy\nd@x.io,Dee\n",
        "email,full_name\r\na@x.io,Ann\r\nb@x.io,Bo\rc@x.io,Cy\r\nd@x.io,Dee\r\n",
    ] {
        env.write_csv(content);
        both_find_invalid_rows(
            &env,
            "3 rows, 2 valid, 1 invalid",
            &["line 3", "carriage return"],
        );
        let run = env.sync_with(&["--force"], &[("MAX_REJECTS", "1")]);
        run.assert_ended(0, "synced");
        assert_eq!((run.n("rows_read"), run.n("rejected")), (3, 1));
        // c@x.io is inside line 3, not a row of its own.
        assert_eq!(
            env.followers().await,
            pairs(&[("a@x.io", "Ann"), ("d@x.io", "Dee")])
        );
    }
}

/// The root cause of the bare-CR failure, for any input: copies of an email with
/// equal line numbers still resolve to exactly one row.
#[tokio::test]
async fn duplicates_with_equal_line_numbers_resolve_to_one_row_each() {
    let env = TestEnv::migrated().await;
    assert_eq!(env.run(&["migrate"], &[]).code, 0);
    let load = followers_etl::domain::LoadId::new();
    env.exec(&format!(
        "INSERT INTO staging_followers VALUES
           ('a@x.io', 'A1', '{id}', 1), ('a@x.io', 'A2', '{id}', 1), ('a@x.io', 'A3', '{id}', 1),
           ('b@x.io', 'B', '{id}', 1)",
        id = load.uuid()
    ))
    .await;
    let db = sea_orm::Database::connect(&env.url).await.unwrap();
    let duplicates = followers_etl::pipeline::staging::resolve_duplicates(
        &db,
        load,
        10,
        &followers_etl::pipeline::dupes::Candidates::All,
    )
    .await
    .unwrap();
    assert_eq!(duplicates.extra_rows, 2);
    assert_eq!(
        env.scalar("SELECT count(DISTINCT email) * 10 + count(*) FROM staging_followers")
            .await,
        22
    );
}

/// The reader's candidates (`dupes.rs`) restrict the search: listed emails are
/// resolved, and an empty list means no duplicates and no statement at all.
#[tokio::test]
async fn duplicates_are_looked_for_among_the_candidates_only() {
    use followers_etl::pipeline::dupes::Candidates;
    let env = TestEnv::migrated().await;
    assert_eq!(env.run(&["migrate"], &[]).code, 0);
    let load = followers_etl::domain::LoadId::new();
    env.exec(&format!(
        "INSERT INTO staging_followers VALUES
           ('a@x.io', 'A1', '{id}', 1), ('a@x.io', 'A2', '{id}', 3), ('b@x.io', 'B', '{id}', 2)",
        id = load.uuid()
    ))
    .await;
    let db = sea_orm::Database::connect(&env.url).await.unwrap();
    let resolve = |c: Candidates| {
        let db = db.clone();
        async move {
            followers_etl::pipeline::staging::resolve_duplicates(&db, load, 10, &c)
                .await
                .unwrap()
        }
    };
    assert_eq!(resolve(Candidates::Only(vec![])).await.extra_rows, 0);
    assert_eq!(
        env.scalar("SELECT count(*) FROM staging_followers").await,
        3
    );
    let found = resolve(Candidates::Only(vec!["a@x.io".into(), "b@x.io".into()])).await;
    assert_eq!(found.extra_rows, 1);
    assert_eq!(found.examples, [("a@x.io".to_owned(), vec![1, 3])]);
    assert_eq!(
        env.scalar("SELECT count(*) FROM staging_followers WHERE full_name IN ('A2', 'B')")
            .await,
        2
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM staging_followers").await,
        2
    );
}
