//! `followers-etl mirrors` (docs/mirrors.md): the resolved definitions, so an
//! operator sees what the agent understood; and `--mirror NAME`: the mirrors
//! `sync` and `status` run over (`to_sync`), and the one mirror of `check`,
//! `rejects`, `revert` and `history` (`choose`; docs/mirrors.md#commands).

use super::{Out, Settings};
use crate::exit;
use crate::mirror::{MirrorName, MirrorSource, MirrorSpec, ValueRule};
use crate::telemetry::report;
use std::process::ExitCode;
use tracing::Level;

/// Prints every mirror: its source, table, key, columns (type, nullable,
/// source), `modified_column`, and each setting it may override with its
/// effective value and where that comes from; `--json`: one object with a
/// `mirrors` array (`MirrorSpec::to_json` plus `builtin` and `effective`).
pub(super) fn mirrors(settings: &Settings, json: bool) -> ExitCode {
    let mut out = Out::new();
    if json {
        let list: Vec<_> = settings
            .mirrors
            .iter()
            .map(|spec| {
                let mut value = spec.to_json();
                value["builtin"] = is_builtin(spec).into();
                value["effective"] = settings
                    .effective(spec)
                    .into_iter()
                    .map(|s| (s.key.to_owned(), s.value))
                    .collect::<serde_json::Map<_, _>>()
                    .into();
                value
            })
            .collect();
        out.line(format_args!("{}", serde_json::json!({ "mirrors": list })));
        return out.finish(ExitCode::SUCCESS);
    }
    if settings.mirrors.is_empty() {
        out.line(format_args!(
            "no mirrors: set CSV_FILE (the built-in mirror followers) or add [[mirror]] tables to the config file (docs/mirrors.md)"
        ));
    }
    for (i, spec) in settings.mirrors.iter().enumerate() {
        if i > 0 {
            out.line(format_args!(""));
        }
        describe(&mut out, settings, spec);
    }
    out.finish(ExitCode::SUCCESS)
}

fn describe(out: &mut Out, settings: &Settings, spec: &MirrorSpec) {
    let source = match &spec.source {
        MirrorSource::File(path) if is_builtin(spec) => {
            format!("file {} (CSV_FILE)", path.display())
        }
        source => source.to_string(),
    };
    let builtin = if is_builtin(spec) { " (built-in)" } else { "" };
    out.line(format_args!("mirror {}{builtin}", spec.name));
    out.line(format_args!("  source: {source}, relative to TABLES_DIR"));
    out.line(format_args!("  table: {}", spec.table));
    let key: Vec<&str> = spec.key.iter().map(|k| k.as_str()).collect();
    out.line(format_args!("  key: {}", key.join(", ")));
    out.line(format_args!("  columns:"));
    for c in &spec.columns {
        let ty = match c.max_length() {
            Some(n) => format!("{}(max_length {n})", c.ty.name()),
            None => c.ty.name().to_owned(),
        };
        let rule = match c.rule {
            ValueRule::Standard => "",
            ValueRule::FollowersFullName => {
                ", the followers rule (an empty field is the empty name)"
            }
        };
        out.line(format_args!(
            "    {} {ty}, {}, source {:?}{rule}",
            c.name,
            if c.nullable {
                "nullable"
            } else {
                "not nullable"
            },
            c.source
        ));
    }
    match &spec.modified_column {
        Some(column) => out.line(format_args!("  modified_column: {column}")),
        None => out.line(format_args!("  modified_column: none")),
    }
    for s in settings.effective(spec) {
        let from = if s.from_mirror {
            "the mirror's own"
        } else {
            s.var
        };
        let value = if s.value.is_null() {
            "none".to_owned()
        } else {
            s.value.to_string()
        };
        out.line(format_args!("  {}: {value} ({from})", s.key));
    }
}

fn is_builtin(spec: &MirrorSpec) -> bool {
    spec.name.as_str() == MirrorName::FOLLOWERS
}

/// Every mirror's name, the built-in one first when it runs or is the only one
/// (`--mirror followers` is always accepted: with `CSV_FILE` unset the command
/// then says so, as it always has).
fn names(settings: &Settings) -> Vec<&str> {
    // The built-in mirror is listed when it runs (CSV_FILE set), or is the only one.
    let builtin = settings.csv.file.is_some() || !settings.has_configured_mirrors();
    let mut names: Vec<&str> = builtin
        .then_some(MirrorName::FOLLOWERS)
        .into_iter()
        .collect();
    names.extend(
        settings
            .mirrors
            .iter()
            .map(|m| m.name.as_str())
            .filter(|n| *n != MirrorName::FOLLOWERS),
    );
    names
}

/// Whether `[[mirror]]` tables are configured (then every summary, event and
/// metric names its mirror; docs/mirrors.md#commands).
pub(super) fn configured(settings: &Settings) -> bool {
    settings.has_configured_mirrors()
}

/// The mirrors `sync` runs, in their order: those `--mirror` names (each
/// once), or every mirror without it; an unknown name is refused listing the
/// mirrors (exit 2). `None` for `followers`, the built-in mirror, also when
/// `CSV_FILE` is unset (its run then says so, as it always has).
pub(super) fn to_sync<'a>(
    settings: &'a Settings,
    selected: &[String],
) -> Result<Vec<Option<&'a MirrorSpec>>, ExitCode> {
    let find = |name: &str| settings.mirrors.iter().find(|m| m.name.as_str() == name);
    if selected.is_empty() {
        if settings.mirrors.is_empty() {
            return Ok(vec![None]);
        }
        return Ok(settings
            .mirrors
            .iter()
            .map(|m| (!is_builtin(m)).then_some(m))
            .collect());
    }
    let mut chosen: Vec<Option<&MirrorSpec>> = Vec::new();
    for name in selected {
        let spec = if name == MirrorName::FOLLOWERS {
            None
        } else {
            match find(name) {
                Some(spec) => Some(spec),
                None => return Err(unknown(settings, name)),
            }
        };
        let same =
            |c: &Option<&MirrorSpec>| c.map(|m| m.name.as_str()) == spec.map(|m| m.name.as_str());
        if !chosen.iter().any(same) {
            chosen.push(spec);
        }
    }
    Ok(chosen)
}

/// The mirror a command acts on (`choose`).
#[derive(Clone, Copy, Debug)]
pub(super) enum Chosen<'a> {
    /// The built-in mirror `followers`: the command as it has always been
    /// (also with `CSV_FILE` unset: the command then says so as today).
    Followers,
    /// A configured (`[[mirror]]`) mirror.
    Configured(&'a MirrorSpec),
}

/// The `--mirror` rule of `check`, `rejects`, `revert` and `history`
/// (docs/mirrors.md#commands): `--mirror followers`, or no flag with no
/// `[[mirror]]` configured, is the built-in mirror; `--mirror NAME` a configured
/// one; no flag while there is more than one mirror is refused (exit 2) listing
/// them, and so is an unknown name. With `CSV_FILE` unset and exactly one
/// `[[mirror]]`, that one is the only mirror and needs no flag.
pub(super) fn choose<'a>(
    settings: &'a Settings,
    flag: Option<&str>,
) -> Result<Chosen<'a>, ExitCode> {
    let configured: Vec<&MirrorSpec> = settings.mirrors.iter().filter(|m| !is_builtin(m)).collect();
    match flag {
        Some(MirrorName::FOLLOWERS) => Ok(Chosen::Followers),
        Some(name) => match configured.iter().find(|m| m.name.as_str() == name) {
            Some(spec) => Ok(Chosen::Configured(spec)),
            None => Err(unknown(settings, name)),
        },
        None if configured.is_empty() => Ok(Chosen::Followers),
        None if settings.mirrors.len() == 1 => Ok(Chosen::Configured(configured[0])),
        None => {
            report(
                Level::ERROR,
                &format!(
                    "more than one mirror is configured: pass --mirror NAME (the mirrors are: {})",
                    names(settings).join(", ")
                ),
            );
            Err(exit::usage())
        }
    }
}

fn unknown(settings: &Settings, name: &str) -> ExitCode {
    report(
        Level::ERROR,
        &format!(
            "no mirror named {name:?}; the mirrors are: {} (followers-etl mirrors shows them)",
            names(settings).join(", ")
        ),
    );
    exit::usage()
}
