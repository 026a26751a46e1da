//! `check`, `history` and `revert` of a configured (`[[mirror]]`) mirror,
//! chosen by `--mirror NAME` (docs/mirrors.md#commands): the same output
//! shapes and exit codes as the built-in mirror's commands, in the mirror's
//! terms (its columns, its key).

use super::{config_failure, connect_and_migrate, failure, Out, Settings};
use crate::domain::Outcome;
use crate::errors::error_chain;
use crate::exit;
use crate::mirror::run::{
    check_mirror_file, key_from_args, mirror_history, revert_mirror_last_within, MirrorCheck,
    MirrorEvent, MirrorRevert, MirrorRunError,
};
use crate::mirror::MirrorSpec;
use crate::pipeline::revert::Target;
use crate::telemetry::{report, report_raw};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tracing::Level;

/// The file `check --mirror NAME [PATH]` reads: `PATH` as `check PATH` finds
/// it (relative to `TABLES_DIR` when it names a file there, else as given);
/// without it, the mirror's `file`, confined to `TABLES_DIR` as a sync reads it.
fn check_path(
    settings: &Settings,
    spec: &MirrorSpec,
    path: Option<PathBuf>,
) -> Result<PathBuf, ExitCode> {
    if path.is_some() {
        return super::check_path(settings, path).map_err(|e| config_failure(&e));
    }
    match spec.source.confined_file(&settings.csv.tables_dir) {
        Some(Ok(path)) => Ok(path),
        Some(Err(e)) => Err(config_failure(&e.into())),
        None => {
            report(
                Level::ERROR,
                &format!(
                    "mirror {}: its source is a glob ({}): pass the PATH of one file to check",
                    spec.name, spec.source
                ),
            );
            Err(exit::usage())
        }
    }
}

/// A key as `col=value, ...` (`key_json`'s object, in the key's order).
fn key_text(spec: &MirrorSpec, key: &serde_json::Value) -> String {
    spec.key
        .iter()
        .map(|k| {
            let value = key.get(k.as_str()).unwrap_or(&serde_json::Value::Null);
            match value.as_str() {
                Some(text) => format!("{k}={text}"),
                None => format!("{k}={value}"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a read error is the file's content at fault (exit 1), not the
/// system or the usage (exit 2: missing, a directory, unreadable).
fn is_content(e: &MirrorRunError) -> bool {
    match e {
        MirrorRunError::Read { source, .. } => source.is_content(),
        _ => true,
    }
}

/// `check --mirror NAME [PATH]`: as `check` (stderr: each invalid line with its
/// file, line, column and reason, then the repeated keys; stdout: the totals,
/// or `--json`'s one object streamed with its `rejects`), exit 0 valid, 1
/// invalid, 2 usage or an unreadable file.
pub(super) fn check(
    settings: &Settings,
    spec: &MirrorSpec,
    path: Option<PathBuf>,
    json: bool,
) -> ExitCode {
    let path = match check_path(settings, spec, path) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut out = Out::new();
    let mut tally = MirrorCheck::default();
    let mut line_shape = false;
    let mut opened = false;
    let open = |out: &mut Out, opened: &mut bool| {
        if !*opened {
            *opened = true;
            out.write(format_args!(
                "{{\"mirror\":{},\"file\":{},\"rejects\":[",
                serde_json::Value::from(spec.name.as_str()),
                serde_json::Value::from(path.display().to_string())
            ));
        }
    };
    let result = check_mirror_file(
        spec,
        &path,
        &settings.csv.format,
        &mut tally,
        |reject, raw| {
            report_raw(Level::WARN, &reject.to_string());
            line_shape |= reject.column.is_none();
            if json {
                let first = !opened;
                open(&mut out, &mut opened);
                let stored = serde_json::json!({
                    "line": reject.line,
                    "column": reject.column,
                    "reason": reject.reason,
                    "raw": String::from_utf8_lossy(raw),
                });
                out.write(format_args!("{}{stored}", if first { "" } else { "," }));
            }
        },
    );
    let error = match result {
        Ok(()) => None,
        Err(e) => {
            super::report_check_error(&error_chain(&e), is_content(&e));
            Some(e)
        }
    };
    if line_shape {
        if let Some(hint) = crate::pipeline::read::delimiter_hint(&path, &settings.csv.format) {
            report_raw(Level::WARN, &format!("{}: hint: {hint}", path.display()));
        }
    }
    for (key, lines) in &tally.duplicate_lines {
        report_raw(
            Level::WARN,
            &format!(
                "{}: warning: the key {} appears on lines {lines:?}; the last wins",
                path.display(),
                key_text(spec, key)
            ),
        );
    }
    if json {
        open(&mut out, &mut opened);
    }
    let end = super::CheckEnd {
        rows: tally.rows,
        valid: tally.valid,
        invalid: tally.invalid,
        duplicates: tally.duplicates,
        duplicate_lines: tally
            .duplicate_lines
            .iter()
            .map(|(key, lines)| serde_json::json!({ "key": key, "lines": lines }))
            .collect(),
        error: error.as_ref().map(|e| (error_chain(e), is_content(e))),
    };
    end.print(out, json, &path)
}

/// `history KEY… --mirror NAME`: every journaled change of the row with that
/// key, oldest first, one line each (when, what, load_id, file, and the
/// changed columns' values before → after); `--json` one object (`mirror`,
/// `key`, `events`). 0 (also when there is none); 1 database unreachable; 2 an
/// invalid key (naming the column).
pub(super) async fn history(
    settings: &Settings,
    spec: &MirrorSpec,
    args: &[String],
    json: bool,
) -> ExitCode {
    let key = match key_from_args(spec, args) {
        Ok(key) => key,
        Err(e) => {
            report(
                Level::ERROR,
                &format!("invalid key for mirror {}: {e}", spec.name),
            );
            return exit::usage();
        }
    };
    let db = match crate::db::connect(settings).await {
        Ok(db) => db,
        Err(e) => return failure("database", &e),
    };
    let events = match mirror_history(&db, spec, &key).await {
        Ok(events) => events,
        Err(e) => return failure("cannot read the journal (run `followers-etl migrate`?)", &e),
    };
    let mut out = Out::new();
    if json {
        out.line(format_args!(
            "{}",
            serde_json::json!({ "mirror": spec.name.as_str(), "key": key, "events": events })
        ));
        return out.finish(ExitCode::SUCCESS);
    }
    if events.is_empty() {
        out.line(format_args!(
            "{}: no journaled change (the journal keeps the newest journal_keep_runs runs of mirror {})",
            key_text(spec, &key),
            spec.name
        ));
    }
    for e in &events {
        out.line(format_args!("{}", event_line(e)));
    }
    out.finish(ExitCode::SUCCESS)
}

/// One event as text: `TIME ACTION load_id=… file=…` and the changed columns,
/// `col=VALUE` for an insert or a delete, `col: BEFORE -> AFTER` for an
/// update (values as JSON: strings quoted, `null`).
fn event_line(e: &MirrorEvent) -> String {
    let none = "unknown".to_owned();
    let mut line = format!(
        "{} {} load_id={} file={}",
        e.time.as_ref().unwrap_or(&none),
        e.action,
        e.load_id,
        e.file.as_ref().unwrap_or(&none)
    );
    for column in &e.changed {
        let (before, after) = e.values(column);
        let part = match e.action {
            "inserted" => format!(" {column}={after}"),
            "deleted" => format!(" {column}={before}"),
            _ => format!(" {column}: {before} -> {after}"),
        };
        line.push_str(&part);
    }
    if let Some(at) = &e.reverted_at {
        line.push_str(&format!(" (reverted at {at})"));
    }
    line
}

/// The revert of a configured mirror, the one call that does it: `--last`
/// (`revert_mirror_last`); `None` for what this version cannot do yet (a
/// `LOAD_ID`, `--dry-run`), refused as usage.
async fn undo(
    db: &sea_orm::DatabaseConnection,
    settings: &Settings,
    spec: &MirrorSpec,
    target: Target,
    dry_run: bool,
) -> Option<Result<MirrorRevert, MirrorRunError>> {
    match (target, dry_run) {
        (Target::Last, false) => Some(
            revert_mirror_last_within(
                db,
                &settings.database.url,
                spec,
                settings.database.lock_wait_timeout,
                Some(settings.database.timeout),
            )
            .await,
        ),
        _ => None,
    }
}

/// Whether `undo` can do this (checked before connecting).
fn supported(target: Target, dry_run: bool) -> bool {
    matches!((target, dry_run), (Target::Last, false))
}

/// The outcome of a revert that did not complete: refused where the state of
/// the mirror said no (nothing to revert, no journal, busy, a guard), failed
/// where the database did.
fn outcome_of(e: &MirrorRunError) -> Outcome {
    match e {
        MirrorRunError::Db { .. } | MirrorRunError::Lock { .. } | MirrorRunError::Copy { .. } => {
            Outcome::Failed
        }
        _ => Outcome::Refused,
    }
}

/// `revert --mirror NAME --last`: undoes the mirror's newest run that changed
/// its table, from its journal (docs/mirrors.md#commands). Prints
/// `OUTCOME mirror=… undone=N changed=N duration=…s` and `  undid LOAD_ID`,
/// or `--json` one object; 0 reverted, 1 refused or failed, 2 usage.
pub(super) async fn revert(
    settings: &Settings,
    spec: &MirrorSpec,
    target: Target,
    dry_run: bool,
    json: bool,
) -> ExitCode {
    if !supported(target, dry_run) {
        report(
            Level::ERROR,
            &format!(
                "mirror {}: revert of a configured mirror takes --last only in this version (no LOAD_ID, no --dry-run; docs/mirrors.md#commands)",
                spec.name
            ),
        );
        return exit::usage();
    }
    let started = Instant::now();
    let db = match connect_and_migrate(settings).await {
        Ok(db) => db,
        Err(code) => return code,
    };
    let Some(result) = undo(&db, settings, spec, target, dry_run).await else {
        return exit::usage();
    };
    let (outcome, done, reason) = match result {
        Ok(done) => (Outcome::Reverted, Some(done), None),
        Err(e) => (outcome_of(&e), None, Some(error_chain(&e))),
    };
    let code = print_revert(spec, outcome, done.as_ref(), started.elapsed(), json);
    if let Some(reason) = &reason {
        let level = crate::pipeline::finished_level(outcome);
        report(level, &format!("revert {outcome}: {reason}"));
    }
    if code == ExitCode::SUCCESS {
        exit::for_outcome(outcome)
    } else {
        code
    }
}

fn print_revert(
    spec: &MirrorSpec,
    outcome: Outcome,
    done: Option<&MirrorRevert>,
    duration: Duration,
    json: bool,
) -> ExitCode {
    let mut out = Out::new();
    let undone: Vec<uuid::Uuid> = done.map(|d| d.load_id).into_iter().collect();
    let changed = done.map_or(0, |d| d.changed);
    let seconds = (duration.as_secs_f64() * 1000.0).round() / 1000.0;
    if json {
        out.line(format_args!(
            "{}",
            serde_json::json!({
                "outcome": outcome,
                "mirror": spec.name.as_str(),
                "undone": undone.iter().map(|id| serde_json::json!({ "load_id": id })).collect::<Vec<_>>(),
                "changed": changed,
                "duration": seconds,
            })
        ));
        return out.finish(ExitCode::SUCCESS);
    }
    out.line(format_args!(
        "{outcome} mirror={} undone={} changed={changed} duration={:.3}s",
        spec.name,
        undone.len(),
        duration.as_secs_f64()
    ));
    for id in &undone {
        out.line(format_args!("  undid {id}"));
    }
    out.finish(ExitCode::SUCCESS)
}
