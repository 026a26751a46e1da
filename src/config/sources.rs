//! The sources of the settings, layered into one map of raw values: the TOML
//! file, `.env` (the old service's syntax included), the process environment and
//! the command-line flags (docs/configuration.md#layering).

use super::*;
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Num, Value};
use figment::Figment;

/// The entries of a `.env` file, in file order, up to its first error (if any).
/// The old Go service's `.env` files may hold unquoted values with spaces
/// (`CRON_SCHEDULE=0 */6 * * *`) or backslashes (`CSV_DELIMITER=\t`), which its
/// loader accepted and dotenvy 0.15 rejects; such lines are made compatible
/// first (`compatible_line`), then dotenvy parses the file. An error names the
/// line and the key, never the value (it may be a password).
pub(super) fn read_dotenv(path: &Path) -> (Vec<(String, String)>, Option<ConfigError>) {
    let err = |reason: String| ConfigError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return (Vec::new(), Some(err(e.to_string()))),
    };
    let lines: Vec<String> = text.lines().map(compatible_line).collect();
    let compatible = lines.join("\n");
    let mut entries = Vec::new();
    for pair in dotenvy::from_read_iter(compatible.as_bytes()) {
        match pair {
            Ok(entry) => entries.push(entry),
            Err(e) => return (entries, Some(err(dotenv_error(&lines, &e)))),
        }
    }
    (entries, None)
}

/// The `.env` in the working directory (not its parents), without the variables
/// the process already has: `.env` never overrides them. Read into the layered
/// values, never into the process environment.
pub(super) fn dotenv_layer() -> (BTreeMap<String, String>, Option<ConfigError>) {
    let path = Path::new(".env");
    if !path.is_file() {
        return (BTreeMap::new(), None);
    }
    let (entries, error) = read_dotenv(path);
    let layer = entries
        .into_iter()
        .filter(|(key, _)| std::env::var_os(key).is_none())
        .collect();
    (layer, error)
}

/// dotenvy's error without the line's text: its line number and key.
pub(super) fn dotenv_error(lines: &[String], error: &dotenvy::Error) -> String {
    let dotenvy::Error::LineParse(bad, _) = error else {
        return error.to_string();
    };
    // dotenvy reports the (possibly multi-line) entry, or only its value: find
    // the line it starts on.
    let first = bad.lines().next().unwrap_or_default();
    let at = lines.iter().position(|l| l == first).or_else(|| {
        lines.iter().position(|l| {
            !l.trim().is_empty() && (bad.starts_with(l.as_str()) || l.ends_with(first))
        })
    });
    let Some(at) = at else {
        return "a line cannot be parsed (not shown)".into();
    };
    match lines[at].split_once('=') {
        Some((key, _)) => format!(
            "line {}: cannot parse the value of {} (not shown); quote it, e.g. KEY='value'",
            at + 1,
            key.trim().trim_start_matches("export ").trim()
        ),
        None => format!("line {}: not a KEY=value assignment (not shown)", at + 1),
    }
}

/// Rewrites one `.env` line so dotenvy reads it as the old loader did:
/// `KEY=a b c  # comment` → `KEY='a b c'`, `KEY=C:\x` → `KEY='C:\x'`, a value that
/// is only a tab stays a tab, and `\t` inside double quotes is a tab. Every other
/// line is left as it is.
pub(super) fn compatible_line(line: &str) -> String {
    let Some((key, raw_value)) = line.split_once('=') else {
        return line.to_owned();
    };
    if line.trim_start().starts_with('#') {
        return line.to_owned();
    }
    let value = raw_value.trim();
    if value.is_empty() && raw_value.contains('\t') {
        return format!("{key}='\t'");
    }
    if let Some(inner) = value.strip_prefix('"') {
        return format!("{key}=\"{}", expand_tab_escape(inner));
    }
    if value.starts_with('\'') {
        return line.to_owned();
    }
    let value = value.split(" #").next().unwrap_or_default().trim_end();
    if value.contains(|c: char| c.is_whitespace() || c == '\\') && !value.contains('\'') {
        format!("{key}='{value}'")
    } else {
        line.to_owned()
    }
}

/// `\t` → a tab, leaving `\\` and every other escape to dotenvy.
pub(super) fn expand_tab_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some(next) => {
                out.push('\\');
                out.push(next);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// A TOML file's syntax error by line, column and key, without the source
/// snippet the `toml` crate shows (it may hold a password).
pub(super) fn toml_error(text: &str, error: &toml::de::Error) -> String {
    let Some(span) = error.span() else {
        return error.message().to_owned();
    };
    let mut start = span.start.min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let before = &text[..start];
    let line_no = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .chars()
        .count()
        + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or_default();
    let key = line
        .split_once('=')
        .map(|(k, _)| format!(" (key {})", k.trim()))
        .unwrap_or_default();
    format!(
        "line {line_no}, column {column}{key}: {} (value not shown)",
        error.message().trim().replace('\n', "; ")
    )
}

/// Raw layered values by variable name; empty strings count as unset.
pub(super) struct Raw(pub(super) BTreeMap<String, String>);

impl Raw {
    /// A variable's value exactly as given, even if empty or only spaces.
    pub(super) fn untrimmed(&self, var: &str) -> Option<&str> {
        self.0.get(&var.to_ascii_lowercase()).map(String::as_str)
    }

    pub(super) fn get(&self, var: &str) -> Option<&str> {
        self.0
            .get(&var.to_ascii_lowercase())
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// A variable and its old name: either may be set; both set and different is an error.
    pub(super) fn aliased(
        &self,
        var: &'static str,
        old: &'static str,
    ) -> Result<Option<(&'static str, &str)>, ConfigError> {
        match (self.get(var), self.get(old)) {
            (Some(a), Some(b)) if a.trim() != b.trim() => Err(ConfigError::Conflict {
                a: var,
                b: old,
                va: redact_text(a),
                vb: redact_text(b),
            }),
            (Some(a), _) => Ok(Some((var, a))),
            (None, Some(b)) => Ok(Some((old, b))),
            (None, None) => Ok(None),
        }
    }
}

pub(super) fn value_to_string(value: &Value) -> Option<String> {
    match value {
        Value::String(_, s) => Some(s.clone()),
        Value::Char(_, c) => Some(c.to_string()),
        Value::Bool(_, b) => Some(b.to_string()),
        Value::Num(_, Num::F32(f)) => Some(f.to_string()),
        Value::Num(_, Num::F64(f)) => Some(f.to_string()),
        Value::Num(_, n) => n.to_i128().map(|i| i.to_string()),
        _ => None,
    }
}

/// The sources layered, lowest first: the TOML file, `.env` (never overriding a
/// variable the process has), the process environment, the command-line flags.
/// Also returns the libpq variables `.env` sets (and the process does not), for
/// `DatabaseUrl::with_libpq_defaults`: the driver reads only the process's.
/// The mirrors of the file's `[[mirror]]` tables come back apart, parsed and
/// validated (`mirrors::configured`); the variables' layer never sees that key.
pub(super) fn gather(
    overrides: &Overrides,
) -> Result<(Raw, LibpqDefaults, Vec<crate::mirror::MirrorSpec>), ConfigError> {
    let (dotenv, error) = dotenv_layer();
    if let Some(error) = error {
        return Err(error);
    }
    let config_file = overrides.config_file.clone().or_else(|| {
        std::env::var_os("CONFIG_FILE")
            .or_else(|| dotenv.get("CONFIG_FILE").map(Into::into))
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    let mut figment = Figment::new();
    let mut mirrors = Vec::new();
    if let Some(path) = &config_file {
        if !path.is_file() {
            return Err(ConfigError::File {
                path: path.clone(),
                reason: "no such file".into(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let table = toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::File {
            path: path.clone(),
            reason: toml_error(&text, &e),
        })?;
        mirrors = super::mirrors::configured(&table)?;
        figment = figment.merge(Toml::string(&text));
    }
    let file_error = |reason: String| ConfigError::File {
        path: config_file.clone().unwrap_or_default(),
        reason,
    };
    let unknown = |key: &str| {
        file_error(format!("unknown or non-scalar key {key:?} (the keys are the variables of docs/configuration.md#variables, in lower case)"))
    };
    // Keys are matched without regard to case (`csv_file`, or `CSV_FILE` as
    // copied from `.env`), but one variable is set once: two spellings of it are
    // refused rather than one winning silently. The TOML layer's struct
    // (`TomlLayer`, declared with the variables) refuses any other key.
    let dict: BTreeMap<String, Value> = figment.extract().map_err(|e| file_error(e.to_string()))?;
    let mut by_name = BTreeMap::new();
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in dict {
        if key == super::mirrors::MIRROR_KEY {
            continue;
        }
        if value_to_string(&value).is_none() {
            return Err(unknown(&key));
        }
        let name = key.to_ascii_uppercase();
        if let Some(first) = written.get(&name) {
            return Err(file_error(format!(
                "keys {first:?} and {key:?} both set {name} (keys are matched without regard to case); keep one"
            )));
        }
        by_name.insert(name.clone(), value);
        written.insert(name, key);
    }
    let layer: TomlLayer = Figment::from(Serialized::defaults(by_name))
        .extract()
        .map_err(|e| match &e.kind {
            figment::error::Kind::UnknownField(name, _) => {
                unknown(written.get(name).unwrap_or(name))
            }
            _ => file_error(e.to_string()),
        })?;
    let mut raw = BTreeMap::new();
    for (var, value) in layer.into_values() {
        if let Some(text) = value_to_string(&value) {
            raw.insert(var.to_ascii_lowercase(), text);
        }
    }
    // `.env` and the environment are read verbatim, so an error shows the value
    // exactly as the operator wrote it.
    for var in VARIABLES.iter().chain(LIBPQ_TARGET_VARIABLES) {
        if let Some(value) = std::env::var(var)
            .ok()
            .or_else(|| dotenv.get(*var).cloned())
        {
            raw.insert(var.to_ascii_lowercase(), value);
        }
    }
    let libpq = LIBPQ_VARIABLES
        .iter()
        .filter_map(|var| Some((*var, dotenv.get(*var)?.clone())))
        .filter(|(_, value)| !value.is_empty())
        .collect();
    let mut raw = Raw(raw);
    for (var, value) in [
        ("database_url", &overrides.database_url),
        ("log_level", &overrides.log_level),
        ("log_format", &overrides.log_format),
    ] {
        if let Some(value) = value {
            raw.0.insert(var.into(), value.clone());
            if var == "database_url" {
                raw.0.remove("dsn");
            }
        }
    }
    Ok((raw, LibpqDefaults(libpq), mirrors))
}

/// `LOG_FORMAT` before the settings are known (a configuration error): from the
/// environment, else from `.env` as far as it could be read.
pub fn early_log_format() -> Option<String> {
    std::env::var("LOG_FORMAT")
        .ok()
        .or_else(|| dotenv_layer().0.remove("LOG_FORMAT"))
}

/// The libpq variables set in `.env` only (docs/configuration.md#libpq-variables), by name.
#[derive(Debug, Default)]
pub(super) struct LibpqDefaults(pub(super) Vec<(&'static str, String)>);
