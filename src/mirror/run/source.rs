//! A mirror's source (docs/mirrors.md#source-files): its `file`, or the files
//! its `files` glob matches, sorted by name, each confined to `TABLES_DIR` as
//! `file` is (symlinks included); and the source's content hash.
//!
//! A glob matches file names only (its directory is fixed). A name starting
//! with `.` matches only a pattern starting with `.` (as in a shell: rsync's
//! temporary `.part-1.csv.XXXXXX` never matches `part-*.csv`); a name ending in
//! a temporary suffix (`TEMPORARY_SUFFIXES`, or the mirror's `ready_marker`)
//! matches only a pattern ending in that suffix.

use super::MirrorRunError;
use crate::config::CsvFormat;
use crate::domain::ContentHash;
use crate::mirror::{MirrorSource, MirrorSpec};
use crate::pipeline::merge::Emptiness;
use std::path::{Path, PathBuf};

/// Names in-progress copies get from common tools (editors, curl/wget/lftp,
/// browsers, `mktemp`-style writers): never a part of the source unless the
/// pattern asks for them by name.
const TEMPORARY_SUFFIXES: &[&str] = &["~", ".tmp", ".part", ".partial"];

/// How a glob's name pattern matches: case-sensitive, and a leading `.` only
/// by a literal `.`.
const MATCH: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: true,
};

/// The mirror's source files, in the order they are read: for `file`, its one
/// path confined to `tables_dir` (a file that does not exist yet is returned
/// too: reading it says so, as for `CSV_FILE`); for `files`, every match in
/// the glob's directory, sorted by the bytes of the file name, each confined.
/// No match: an empty list (the empty source, which the guard refuses unless
/// approved). Called again by every run, so a file added or removed since the
/// last run is seen.
#[tracing::instrument(skip_all, fields(mirror = %spec.name))]
pub(crate) fn source_files(
    spec: &MirrorSpec,
    tables_dir: &Path,
) -> Result<Vec<PathBuf>, MirrorRunError> {
    let mirror = || spec.name.to_string();
    match &spec.source {
        MirrorSource::File(file) => crate::config::confine("file", tables_dir, file)
            .map(|path| vec![path])
            .map_err(|source| MirrorRunError::Source {
                mirror: mirror(),
                source,
            }),
        MirrorSource::Glob(pattern) => glob_files(spec, tables_dir, pattern),
    }
}

fn glob_files(
    spec: &MirrorSpec,
    tables_dir: &Path,
    pattern: &str,
) -> Result<Vec<PathBuf>, MirrorRunError> {
    let (dir, name) = pattern.rsplit_once('/').unwrap_or(("", pattern));
    let glob_dir = |reason: String| MirrorRunError::GlobDir {
        mirror: spec.name.to_string(),
        pattern: pattern.to_owned(),
        reason,
    };
    let matcher = glob::Pattern::new(name).map_err(|e| glob_dir(format!("{e}")))?;
    let root = tables_dir
        .canonicalize()
        .map_err(|e| glob_dir(format!("TABLES_DIR {} ({e})", tables_dir.display())))?;
    let in_dir = root.join(dir);
    let resolved = in_dir.canonicalize().map_err(|e| {
        glob_dir(format!(
            "its directory {} cannot be listed ({e})",
            in_dir.display()
        ))
    })?;
    if !resolved.starts_with(&root) {
        return Err(glob_dir(format!(
            "its directory resolves to {}, outside TABLES_DIR ({})",
            resolved.display(),
            root.display()
        )));
    }
    let entries = std::fs::read_dir(&in_dir).map_err(|e| {
        glob_dir(format!(
            "its directory {} cannot be listed ({e})",
            in_dir.display()
        ))
    })?;
    let marker = spec.overrides.ready_marker.as_deref();
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            glob_dir(format!(
                "its directory {} cannot be listed ({e})",
                in_dir.display()
            ))
        })?;
        let file_name = entry.file_name();
        // A name that is not UTF-8 is matched with its invalid bytes as U+FFFD
        // (only a wildcard matches them); it is read by its real name.
        let text = file_name.to_string_lossy();
        if matcher.matches_with(&text, MATCH) && !temporary(&text, name, marker) {
            names.push(file_name);
        }
    }
    names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    names
        .into_iter()
        .map(|file_name| {
            // Absolute: confined as listed, never looked up in the working directory.
            crate::config::confine("files", tables_dir, &in_dir.join(file_name)).map_err(|source| {
                MirrorRunError::Source {
                    mirror: spec.name.to_string(),
                    source,
                }
            })
        })
        .collect()
}

/// Whether `name` is an in-progress copy or a ready marker the pattern does
/// not name literally.
fn temporary(name: &str, pattern: &str, marker: Option<&str>) -> bool {
    TEMPORARY_SUFFIXES
        .iter()
        .copied()
        .chain(marker)
        .any(|suffix| name.ends_with(suffix) && !pattern.ends_with(suffix))
}

/// The content hash of a source, and of each of its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SourceHash {
    /// Each file's hash (`hash_file`'s), in the order of the files.
    pub parts: Vec<ContentHash>,
    /// The source's: for `file`, its file's hash (as the followers run's);
    /// for `files`, `combine`d.
    pub combined: ContentHash,
}

/// Hashes every file of the source (`hash_file`, one streaming pass each).
#[tracing::instrument(skip_all, fields(mirror = %spec.name, files = files.len()))]
pub(super) fn hash_source(
    spec: &MirrorSpec,
    files: &[PathBuf],
    format: &CsvFormat,
) -> Result<SourceHash, MirrorRunError> {
    let parts = files
        .iter()
        .map(|path| crate::pipeline::read::hash_file(path, format))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| MirrorRunError::Read {
            mirror: spec.name.to_string(),
            source,
        })?;
    Ok(SourceHash {
        combined: combine(spec, files, &parts),
        parts,
    })
}

/// The source's hash from its files' hashes. For `file`, the file's own (a
/// mirror switched between `file` and the followers' run keeps its hash). For
/// `files`, blake3 over every file's name and hash, in order: a file added,
/// removed or renamed changes it, as a changed byte does.
pub(super) fn combine(spec: &MirrorSpec, files: &[PathBuf], parts: &[ContentHash]) -> ContentHash {
    if let (MirrorSource::File(_), [one]) = (&spec.source, parts) {
        return one.clone();
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"followers-etl/files/v1\0");
    for (path, hash) in files.iter().zip(parts) {
        let name = path.file_name().unwrap_or(path.as_os_str());
        hasher.update(name.as_encoded_bytes());
        hasher.update(b"\0");
        hasher.update(hash.as_str().as_bytes());
        hasher.update(b"\0");
    }
    ContentHash::from_hasher(&hasher)
}

/// Whether the source holds no data (docs/sync.md#empty-file): no file at all
/// (reported as `NoBytes`; the run names the glob), or every file empty.
pub(super) fn emptiness(files: &[PathBuf]) -> Option<Emptiness> {
    let mut kinds = files.iter().map(|f| crate::pipeline::read::emptiness(f));
    match kinds.next() {
        None => Some(Emptiness::NoBytes),
        Some(first) => kinds.try_fold(first?, |kind, next| next.map(|_| kind)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_match_only_when_the_pattern_names_their_suffix() {
        assert!(temporary("part-1.csv.tmp", "part-*", None));
        assert!(temporary("part-1.csv~", "part-*", None));
        assert!(!temporary("part-1.csv.tmp", "part-*.tmp", None));
        assert!(temporary("part-1.csv.done", "part-*", Some(".done")));
        assert!(!temporary("part-1.csv", "part-*", Some(".done")));
        let leading = glob::Pattern::new("*.csv").unwrap();
        assert!(!leading.matches_with(".part-1.csv", MATCH));
        assert!(glob::Pattern::new(".*.csv")
            .unwrap()
            .matches_with(".part-1.csv", MATCH));
        assert!(!glob::Pattern::new("part-*.csv")
            .unwrap()
            .matches_with("PART-1.csv", MATCH));
    }

    #[test]
    fn a_glob_hash_covers_the_names_and_a_file_hash_is_the_file_s() {
        let glob = crate::mirror::from_toml_str(
            "[[mirror]]\nname = \"p\"\nfiles = \"p-*.csv\"\ntable = \"s.p\"\nkey = [\"id\"]\ncolumns = [{ name = \"id\", type = \"integer\" }]\n",
        )
        .unwrap()
        .remove(0);
        let mut file = glob.clone();
        file.source = MirrorSource::File("p.csv".into());
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("p-1.csv"), dir.path().join("p-2.csv"));
        std::fs::write(&a, "id\n1\n").unwrap();
        std::fs::write(&b, "id\n2\n").unwrap();
        let format = CsvFormat::default();
        let one = hash_source(&file, std::slice::from_ref(&a), &format).unwrap();
        assert_eq!(
            one.combined,
            crate::pipeline::read::hash_file(&a, &format).unwrap()
        );
        let both = hash_source(&glob, &[a.clone(), b.clone()], &format).unwrap();
        let renamed = dir.path().join("p-3.csv");
        std::fs::rename(&b, &renamed).unwrap();
        let moved = hash_source(&glob, &[a.clone(), renamed], &format).unwrap();
        assert_eq!(both.parts, moved.parts, "the same bytes");
        assert_ne!(both.combined, moved.combined, "another name");
        let fewer = hash_source(&glob, &[a], &format).unwrap();
        assert_ne!(fewer.combined, both.combined);
        assert_ne!(
            hash_source(&glob, &[], &format).unwrap().combined,
            fewer.combined
        );
    }
}
