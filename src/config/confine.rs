//! Where `CSV_FILE` may be: inside `TABLES_DIR`, also through symlinks, and a
//! regular file (docs/configuration.md#variables, `CSV_FILE`); and a file's identity across runs.

use super::*;

/// `CSV_FILE` (or a path given for it) does not lie where it may: its own error
/// type, so the pipeline's errors hold no configuration error.
#[derive(Debug, thiserror::Error)]
#[error("{var}={value:?} is invalid: {rule}")]
pub struct ConfineError {
    var: &'static str,
    value: String,
    rule: String,
}

fn invalid(var: &'static str, value: &str, rule: impl Into<String>) -> ConfineError {
    ConfineError {
        var,
        value: value.to_owned(),
        rule: rule.into(),
    }
}

/// Resolves `file` (relative to `tables_dir`, or to the working directory when it
/// exists only there, or absolute) and requires it to lie inside `tables_dir`, also
/// after following symlinks. The file itself need not exist yet. Returns the path
/// as configured (a symlink stays a symlink, so repointing it is followed); each
/// run checks it again.
pub fn confine(var: &'static str, tables_dir: &Path, file: &Path) -> Result<PathBuf, ConfineError> {
    let shown = file.display().to_string();
    let dir = tables_dir.canonicalize().map_err(|e| {
        invalid(
            "TABLES_DIR",
            &tables_dir.display().to_string(),
            format!("must be an existing directory ({e})"),
        )
    })?;
    if !dir.is_dir() {
        return Err(invalid(
            "TABLES_DIR",
            &tables_dir.display().to_string(),
            "must be a directory, not a file",
        ));
    }
    if file.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(
            var,
            &shown,
            format!(
                "must lie inside TABLES_DIR ({}); '..' is not allowed",
                dir.display()
            ),
        ));
    }
    let candidate = if file.is_absolute() {
        file.to_path_buf()
    } else {
        let in_dir = dir.join(file);
        if !in_dir.exists() && file.exists() {
            std::env::current_dir()
                .map(|cwd| cwd.join(file))
                .unwrap_or(in_dir)
        } else {
            in_dir
        }
    };
    let resolved = match candidate.canonicalize() {
        Ok(p) => p,
        Err(_) => {
            let parent = candidate.parent().unwrap_or(&dir);
            let name = candidate
                .file_name()
                .ok_or_else(|| invalid(var, &shown, "must name a file"))?;
            parent
                .canonicalize()
                .map_err(|e| invalid(var, &shown, format!("its directory does not exist ({e})")))?
                .join(name)
        }
    };
    if !resolved.starts_with(&dir) || resolved == dir {
        return Err(invalid(
            var,
            &shown,
            format!(
                "must resolve to a file inside TABLES_DIR ({}), it resolves to {}",
                dir.display(),
                resolved.display()
            ),
        ));
    }
    if let Some(kind) = not_a_regular_file(&candidate) {
        return Err(invalid(
            var,
            &shown,
            format!("must be a regular file (after following symlinks); it is {kind}"),
        ));
    }
    Ok(candidate)
}

/// The identity of a configured CSV file, to tell whether two runs synced the
/// same file: the absolute path with its directory resolved (symlinks, `.`) but
/// the file name kept, so a symlink repointed to another file is the same
/// configured path, while another name in `TABLES_DIR` is another file.
pub fn file_identity(path: &Path) -> PathBuf {
    match (path.parent().map(Path::canonicalize), path.file_name()) {
        (Some(Ok(dir)), Some(name)) => dir.join(name),
        _ => path.to_path_buf(),
    }
}

/// What `path` is when it exists and is not a regular file (following symlinks):
/// reading a FIFO or a device blocks or never ends. `stat` does not open the file.
pub fn not_a_regular_file(path: &Path) -> Option<&'static str> {
    let file_type = std::fs::metadata(path).ok()?.file_type();
    if file_type.is_file() {
        return None;
    }
    if file_type.is_dir() {
        return Some("a directory");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return Some("a FIFO (named pipe), whose read would block until a writer appears");
        }
        if file_type.is_socket() {
            return Some("a socket");
        }
        if file_type.is_char_device() || file_type.is_block_device() {
            return Some("a device");
        }
    }
    Some("not a regular file")
}
