//! What a file may hold (docs/sync.md#3-read, docs/sync.md#4-validate): quotes as
//! written, strict emails, a headerless first line naming a follower "Email".

use crate::helpers::*;

const SEED: &[(&str, &str)] = &[("ann@x.io", "Ann"), ("bob@x.io", "Bob")];

#[tokio::test]
async fn a_quote_still_open_at_the_end_of_the_file_is_refused_and_changes_nothing() {
    let env = TestEnv::migrated().await;
    env.write_csv(csv(SEED));
    env.synced(&[]);
    env.write_csv("email,full_name\nann@x.io,Ann\nbob@x.io,Bob\ndee@x.io,\"Dee, Jr. (truncat");
    let run = env.sync_with(&[], &[("MAX_REJECTS", "100")]);
    run.assert_ended(1, "refused");
    assert!(
        run.stderr.contains("line 4") && run.stderr.contains("still open at the end of the file"),
        "{}",
        run.stderr
    );
    assert_eq!(env.followers().await, pairs(SEED));
    let check = env.run(&["check"], &[]);
    assert!(
        check.code == 1 && check.stderr.contains("line 4") && check.stderr.contains("truncated"),
        "{check:?}"
    );
}

#[tokio::test]
async fn text_after_a_closing_quote_is_kept_as_written() {
    let env = TestEnv::migrated_in_process().await;
    env.write_csv("bob@x.io,\"Bob\" Jones\ncy@x.io,\"Cy, Jr\" Smith\ndee@x.io, \"Dee\"  \n");
    env.synced(&[]);
    assert_eq!(
        env.followers().await,
        pairs(&[
            ("bob@x.io", "\"Bob\" Jones"),
            ("cy@x.io", "\"Cy, Jr\" Smith"),
            // A quote after a space is text, and whitespace after a closing
            // quote is padding: both as before.
            ("dee@x.io", "\"Dee\""),
        ])
    );
}

#[tokio::test]
async fn invalid_domains_and_quoted_addresses_are_rejects_naming_the_reason() {
    let env = TestEnv::migrated().await;
    env.write_csv(
        "email,full_name\nann@x.io,Ann\nq@x..io,Q\nx@-x.io,X\n'ann@x.io',A2\nw@exa_mple.com,W\n",
    );
    let run = env.sync();
    run.assert_ended(1, "refused");
    assert_eq!(run.n("rejected"), 4, "{run:?}");
    let rejects = env.run(&["rejects", "--last", "--json"], &[]).json();
    let reasons: Vec<(u64, String)> = rejects["rejects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for ((line, reason), (want_line, want)) in reasons.iter().zip([
        (3, "empty label"),
        (4, "hyphen"),
        (5, "quotes"),
        (6, "underscore"),
    ]) {
        assert!(
            *line == want_line && reason.contains(want),
            "{line}: {reason}"
        );
    }
    assert!(env.followers().await.is_empty());
    let check = env.run(&["check"], &[]);
    assert!(
        check.code == 1 && check.stderr.contains("exa_mple.com"),
        "{check:?}"
    );
}

#[tokio::test]
async fn a_root_dot_and_an_nfd_local_part_are_the_same_follower() {
    let env = TestEnv::migrated_in_process().await;
    env.write_csv(
        "dee@x.io,Dee\ndee@x.io.,Dee Dot\njos\u{e9}@x.io,Jose NFC\njose\u{301}@x.io,Jose NFD\n",
    );
    let run = env.synced(&[]);
    assert_eq!((run.n("inserted"), run.n("duplicates")), (2, 2), "{run:?}");
    assert_eq!(
        env.followers().await,
        pairs(&[("dee@x.io", "Dee Dot"), ("jos\u{e9}@x.io", "Jose NFD")])
    );
}

#[tokio::test]
async fn a_headerless_file_whose_first_follower_is_named_email_is_data() {
    let env = TestEnv::migrated_in_process().await;
    env.write_csv("info@x.io,Email\nbob@x.io,Bob\n");
    env.synced(&[]);
    assert_eq!(
        env.followers().await,
        pairs(&[("info@x.io", "Email"), ("bob@x.io", "Bob")])
    );
}
