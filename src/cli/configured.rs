//! `check`, `history` and `revert` of a configured (`[[mirror]]`) mirror,
//! chosen by `--mirror NAME` (docs/mirrors.md#commands): the same output
//! shapes and exit codes as the built-in mirror's commands, in the mirror's
//! terms (its columns, its key).

use super::{config_failure, connect_and_migrate, failure, Out, Settings};
use crate::domain::LoadId;
use crate::domain::Outcome;
use crate::errors::error_chain;
use crate::exit;
use crate::mirror::run::{
    check_mirror_file, key_from_args, mirror_history, revert_mirror, MirrorCheck, MirrorEvent,
    MirrorRevert, MirrorRevertOptions, MirrorRunError, MirrorUndoneRun, RevertTarget,
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

/// `revert (LOAD_ID | --last) --mirror NAME [--dry-run] [--allow-mass-delete]`:
/// undoes the mirror's runs from their journal as the built-in mirror's revert
/// does (docs/mirrors.md#revert): `--last` its newest run that changed its
/// table, `LOAD_ID` every run from the newest back to and including that one;
/// `--dry-run` does it all and rolls back. Prints `OUTCOME mirror=… undone=N
/// changed=N duration=…s`, one `  undid LOAD_ID` (`  would undo LOAD_ID`) per
/// run and the content held back, or `--json` one object; 0 reverted or dry
/// run, 1 refused or failed, 2 usage.
pub(super) async fn revert(
    settings: &Settings,
    spec: &MirrorSpec,
    target: Target,
    dry_run: bool,
    allow_mass_delete: bool,
    json: bool,
) -> ExitCode {
    let started = Instant::now();
    let connected = if dry_run {
        super::connect_for_dry_run(settings, "revert --dry-run")
            .await
            .map_err(|(code, _)| code)
    } else {
        connect_and_migrate(settings).await
    };
    let db = match connected {
        Ok(db) => db,
        Err(code) => return code,
    };
    let options = MirrorRevertOptions {
        target: match target {
            Target::Last => RevertTarget::Last,
            Target::Run(id) => RevertTarget::Run(id),
        },
        dry_run,
        max_delete_ratio: settings.guard.max_delete_ratio,
        allow_mass_delete,
        lock_wait: settings.database.lock_wait_timeout,
        db_timeout: Some(settings.database.timeout),
        load_id: LoadId::new(),
    };
    let result = revert_mirror(&db, &settings.database.url, spec, options).await;
    let (outcome, done, reason) = match result {
        Ok(done) if done.dry_run => (Outcome::DryRun, Some(done), None),
        Ok(done) => (Outcome::Reverted, Some(done), None),
        Err(e) => (e.revert_outcome(), None, Some(error_chain(&e))),
    };
    let summary = RevertLine {
        spec,
        outcome,
        load_id: options.load_id,
        done: done.as_ref(),
        duration: started.elapsed(),
    };
    let code = summary.print(json);
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

/// What `revert --mirror NAME` prints.
struct RevertLine<'a> {
    spec: &'a MirrorSpec,
    outcome: Outcome,
    /// The revert's own run record.
    load_id: LoadId,
    done: Option<&'a MirrorRevert>,
    duration: Duration,
}

impl RevertLine<'_> {
    fn print(&self, json: bool) -> ExitCode {
        let mut out = Out::new();
        let undone: &[MirrorUndoneRun] = self.done.map_or(&[], |d| d.undone.as_slice());
        let n = |f: fn(&MirrorRevert) -> u64| self.done.map_or(0, f);
        let held_back = self.done.and_then(|d| d.held_back.as_deref());
        if json {
            let seconds = (self.duration.as_secs_f64() * 1000.0).round() / 1000.0;
            out.line(format_args!(
                "{}",
                serde_json::json!({
                    "outcome": self.outcome,
                    "mirror": self.spec.name.as_str(),
                    "load_id": self.load_id.uuid(),
                    "undone": undone,
                    "changed": n(|d| d.changed),
                    "inserted": n(|d| d.inserted),
                    "updated": n(|d| d.updated),
                    "deleted": n(|d| d.deleted),
                    "held_back": held_back,
                    "duration": seconds,
                })
            ));
            return out.finish(ExitCode::SUCCESS);
        }
        out.line(format_args!(
            "{} mirror={} undone={} changed={} duration={:.3}s",
            self.outcome,
            self.spec.name,
            undone.len(),
            n(|d| d.changed),
            self.duration.as_secs_f64(),
        ));
        let verb = if self.outcome == Outcome::DryRun {
            "would undo"
        } else {
            "undid"
        };
        for r in undone {
            out.line(format_args!("  {verb} {}", r.load_id));
        }
        if let Some(file) = held_back {
            out.line(format_args!(
                "  held back: {file} (sync skips this content until it changes, or use sync --force)"
            ));
        }
        out.finish(ExitCode::SUCCESS)
    }
}
