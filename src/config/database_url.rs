//! The connection string: a URL or libpq keyword/value form, the libpq variables
//! that replace parts of the default, and the password's redaction (docs/configuration.md#variables,
//! docs/configuration.md#libpq-variables).

use super::*;

/// A PostgreSQL connection string whose password never reaches a log: `Display`
/// and `Debug` print it redacted.
#[derive(Clone)]
pub struct DatabaseUrl {
    url: SecretString,
    redacted: String,
    /// libpq keywords the string sets that the driver does not implement: dropped
    /// from what the driver gets, named (never their values) in a warning.
    ignored: Vec<String>,
}

impl DatabaseUrl {
    /// Accepts a `postgres://` / `postgresql://` URL or a libpq keyword/value
    /// string (`host=db user=app password=secret dbname=app`), as the old service did.
    pub fn parse(var: &'static str, raw: &str) -> Result<Self, ConfigError> {
        let url_text = if raw.contains("://") {
            raw.to_owned()
        } else {
            keyword_value_to_url(raw).ok_or_else(|| {
                invalid(
                    var,
                    &redact_text(raw),
                    "expected postgres://user:password@host:port/dbname or host=… user=… dbname=…",
                )
            })?
        };
        // An unencoded '#', '/' or '?' in the password makes the URL parse with the
        // password cut off (into the port, path or fragment), or not parse at all
        // (`pa#ss` read as a port): refuse such a URL without echoing it, before
        // the parser's own message could.
        if let Some((_, rest)) = raw.split_once("://") {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            if rest.contains('@') && !authority.contains('@') {
                return Err(invalid(
                    var,
                    "(not shown: it may contain a password)",
                    "percent-encode '#', '/' and '?' in the user name and password",
                ));
            }
        }
        let mut url = url::Url::parse(&url_text).map_err(|e| {
            invalid(
                var,
                &redact_text(raw),
                format!("not a connection URL ({e})"),
            )
        })?;
        let ignored = check_parameters(var, &mut url)?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(invalid(
                var,
                &redact_text(raw),
                "the scheme must be postgres:// or postgresql://",
            ));
        }
        let redacted = redact_url(url.clone());
        if !ignored.is_empty() {
            let kept: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(k, _)| !ignored.iter().any(|i| i == k))
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            if kept.is_empty() {
                url.set_query(None);
            } else {
                url.query_pairs_mut().clear().extend_pairs(kept);
            }
        }
        let secret = SecretString::from(url.as_str().to_owned());
        Ok(Self {
            url: secret,
            redacted,
            ignored,
        })
    }

    /// Fills in what this connection string leaves out from the libpq variables
    /// `.env` sets, as the driver does from the process environment (docs/configuration.md#libpq-variables): the parts the URL names win, the password among them.
    /// What it shows (`Display`) stays the string as given.
    pub(super) fn with_libpq_defaults(self, libpq: &LibpqDefaults) -> Self {
        let Ok(mut url) = url::Url::parse(self.expose()) else {
            return self;
        };
        let get = |var: &str| {
            libpq
                .0
                .iter()
                .find(|(name, _)| *name == var)
                .map(|(_, value)| value.as_str())
        };
        let authority = [
            (
                "host",
                url.host_str().is_none_or(str::is_empty),
                get("PGHOSTADDR").or(get("PGHOST")),
            ),
            ("port", url.port().is_none(), get("PGPORT")),
            ("user", url.username().is_empty(), get("PGUSER")),
            ("password", url.password().is_none(), get("PGPASSWORD")),
            ("dbname", matches!(url.path(), "" | "/"), get("PGDATABASE")),
        ];
        let parameters = [
            ("sslmode", get("PGSSLMODE")),
            ("sslrootcert", get("PGSSLROOTCERT")),
            ("sslcert", get("PGSSLCERT")),
            ("sslkey", get("PGSSLKEY")),
            ("application_name", get("PGAPPNAME")),
            ("options", get("PGOPTIONS")),
        ];
        // The driver reads the query in order, a later value winning (`options`
        // adding): the defaults go first, the string's own parameters after.
        let mut query: Vec<(String, String)> = authority
            .into_iter()
            .filter_map(|(key, missing, value)| Some((key, value.filter(|_| missing)?)))
            .chain(
                parameters
                    .into_iter()
                    .filter_map(|(key, value)| Some((key, value?))),
            )
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect();
        query.extend(
            url.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned())),
        );
        // `PGPASSFILE` is read by the driver only when no password is given.
        let given = url.password().is_some()
            || std::env::var_os("PGPASSWORD").is_some()
            || query.iter().any(|(key, _)| key == "password");
        if let Some(file) = get("PGPASSFILE").filter(|_| !given) {
            let mut probe = url.clone();
            probe.query_pairs_mut().clear().extend_pairs(&query);
            if let Some(password) = pgpass_password(Path::new(file), probe.as_str()) {
                query.insert(0, ("password".to_owned(), password));
            }
        }
        if query.len() == url.query_pairs().count() {
            return self;
        }
        url.query_pairs_mut().clear().extend_pairs(query);
        Self {
            url: SecretString::from(url.as_str().to_owned()),
            redacted: self.redacted,
            ignored: self.ignored,
        }
    }

    /// The libpq keywords of the string that the driver does not implement and
    /// that are therefore ignored (docs/configuration.md#libpq-variables), for a start-up warning.
    pub fn ignored_keywords(&self) -> &[String] {
        &self.ignored
    }

    pub fn expose(&self) -> &str {
        self.url.expose_secret()
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted)
    }
}

/// A connection string with every password replaced by `***`; when it cannot be
/// parsed well enough to know where the password is, nothing of it is shown.
pub(super) fn redact_text(raw: &str) -> String {
    let url_text = if raw.contains("://") {
        Some(raw.to_owned())
    } else {
        keyword_value_to_url(raw)
    };
    match url_text.and_then(|u| url::Url::parse(&u).ok()) {
        Some(url) => redact_url(url),
        None => "(not shown: it may contain a password)".into(),
    }
}

/// The parameters (URL query keys, libpq keywords) the driver reads
/// (`sqlx-postgres`'s `PgConnectOptions::parse_from_url`).
const DRIVER_PARAMETERS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "application_name",
    "options",
];

/// libpq keywords the driver does not implement whose absence changes neither
/// what is connected to nor how safely: accepted (the old service's strings
/// carry them), dropped and named in a warning. Any other keyword is refused.
const IGNORED_LIBPQ_PARAMETERS: &[&str] = &[
    "connect_timeout",
    "client_encoding",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslcompression",
    "sslsni",
    "sslpassword",
    "gssencmode",
    "krbsrvname",
    "gsslib",
];

/// libpq keywords that change what is connected to or how safely, which the
/// driver would silently ignore: refused, naming them.
const UNSUPPORTED_LIBPQ_PARAMETERS: &[&str] = &[
    "target_session_attrs",
    "channel_binding",
    "require_auth",
    "requirepeer",
    "sslcrl",
    "sslcrldir",
    "sslcertmode",
    "sslnegotiation",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "load_balance_hosts",
    "replication",
    "service",
    "passfile",
    "gssdelegation",
];

/// Whether a parameter's value is to be hidden: a password, or anything whose
/// name suggests a secret (and every parameter the driver does not know, since a
/// misspelt `pasword=` holds one).
fn secret_parameter(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let known = DRIVER_PARAMETERS.contains(&key.as_str())
        || IGNORED_LIBPQ_PARAMETERS.contains(&key.as_str());
    !known
        || ["pass", "secret", "token", "pwd"]
            .iter()
            .any(|s| key.contains(s))
}

/// Refuses a parameter the driver would ignore with a warning showing its value
/// (a misspelt `pasword=S3cret` printed the password): an unknown one, or a libpq
/// keyword the driver cannot honour. Returns the harmless libpq keywords to drop.
/// Only keys are ever named, never values.
fn check_parameters(var: &'static str, url: &mut url::Url) -> Result<Vec<String>, ConfigError> {
    let hidden = "(not shown: it may contain a password)";
    let mut ignored = Vec::new();
    for (key, _) in url.query_pairs() {
        let key = key.into_owned();
        if DRIVER_PARAMETERS.contains(&key.as_str())
            || (key.starts_with("options[") && key.ends_with(']'))
        {
            continue;
        }
        if IGNORED_LIBPQ_PARAMETERS.contains(&key.as_str()) {
            if !ignored.contains(&key) {
                ignored.push(key);
            }
            continue;
        }
        let rule = if UNSUPPORTED_LIBPQ_PARAMETERS.contains(&key.as_str()) {
            format!("the libpq keyword `{key}` is not supported by the driver; remove it")
        } else {
            let hint = closest_parameter(&key)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            format!(
                "unknown connection parameter `{}`{hint}; known: {}",
                key.escape_debug(),
                DRIVER_PARAMETERS.join(", ")
            )
        };
        return Err(invalid(var, hidden, rule));
    }
    Ok(ignored)
}

/// The known parameter within two edits of `key`, if any.
fn closest_parameter(key: &str) -> Option<&'static str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let here = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb))
                    .min(row[j] + 1)
                    .min(here + 1);
                prev = here;
            }
        }
        row[b.len()]
    }
    let key = key.to_ascii_lowercase();
    DRIVER_PARAMETERS
        .iter()
        .chain(IGNORED_LIBPQ_PARAMETERS)
        .chain(UNSUPPORTED_LIBPQ_PARAMETERS)
        .map(|k| (distance(&key, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

/// Redacts the userinfo password and the value of every password-like or
/// unknown query parameter.
pub(super) fn redact_url(mut url: url::Url) -> String {
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    let secret = |k: &str| secret_parameter(k);
    if url.query_pairs().any(|(k, _)| secret(&k)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string().replace("%2A%2A%2A", "***")
}

/// `host=h port=5432 user=u password='p w' dbname=d sslmode=disable` → URL.
pub(super) fn keyword_value_to_url(raw: &str) -> Option<String> {
    pairs_to_url(&keyword_value_pairs(raw)?)
}

/// The pairs of a libpq keyword/value string, keys lower-cased.
pub(super) fn keyword_value_pairs(raw: &str) -> Option<BTreeMap<String, String>> {
    let mut pairs = BTreeMap::new();
    let mut chars = raw.trim().chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        chars.next_if_eq(&'=')?;
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next()? {
                    '\\' => value.push(chars.next()?),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next()?);
                } else {
                    value.push(c);
                }
            }
        }
        if key.is_empty() {
            return None;
        }
        pairs.insert(key.to_ascii_lowercase(), value);
    }
    (!pairs.is_empty()).then_some(pairs)
}

/// libpq keywords → URL. A `host` that is a directory (`/var/run/postgresql`)
/// means a Unix socket there; a URL cannot have a user without a host name, so
/// then every keyword but `dbname` goes into the query (`postgres:///app?host=…`),
/// which the driver reads the same way.
pub(super) fn pairs_to_url(pairs: &BTreeMap<String, String>) -> Option<String> {
    let socket = pairs.get("host").is_some_and(|h| h.starts_with('/'));
    let mut url = url::Url::parse(if socket {
        "postgres:///"
    } else {
        "postgres://localhost"
    })
    .ok()?;
    let mut query = Vec::new();
    for (key, value) in pairs {
        match key.as_str() {
            "dbname" => url.set_path(&format!("/{value}")),
            "port" => {
                let port: u16 = value.parse().ok()?;
                if socket {
                    query.push((key.clone(), port.to_string()));
                } else {
                    url.set_port(Some(port)).ok()?;
                }
            }
            _ if socket => query.push((key.clone(), value.clone())),
            "host" => url.set_host(Some(value)).ok()?,
            "user" => url.set_username(value).ok()?,
            "password" => url.set_password(Some(value)).ok()?,
            _ => query.push((key.clone(), value.clone())),
        }
    }
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    Some(url.to_string())
}

/// The built-in default connection, with each part a libpq variable sets
/// (`PGHOST`, else `PGHOSTADDR`; `PGPORT`; `PGUSER`; `PGDATABASE`) replacing it.
pub(super) fn default_database_url(raw: &Raw) -> Result<DatabaseUrl, ConfigError> {
    const VARS: &str = "PGHOST/PGPORT/PGUSER/PGDATABASE";
    if LIBPQ_TARGET_VARIABLES.iter().all(|v| raw.get(v).is_none()) {
        return DatabaseUrl::parse("DATABASE_URL", DEFAULT_DATABASE_URL);
    }
    let host = raw
        .get("PGHOST")
        .or_else(|| raw.get("PGHOSTADDR"))
        .unwrap_or("127.0.0.1");
    if host.contains(',') {
        return Err(invalid(
            "PGHOST",
            host,
            "one host only (several hosts are not supported)",
        ));
    }
    let port = raw.get("PGPORT").unwrap_or("5432");
    if !port.trim().parse::<u16>().is_ok_and(|p| p > 0) {
        return Err(invalid("PGPORT", port, "expected a port number, 1 … 65535"));
    }
    let pairs: BTreeMap<String, String> = [
        ("host", host),
        ("port", port.trim()),
        ("user", raw.get("PGUSER").unwrap_or("postgres")),
        ("dbname", raw.get("PGDATABASE").unwrap_or("postgres")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let url = pairs_to_url(&pairs)
        .ok_or_else(|| invalid(VARS, host, "not a usable host, user or database name"))?;
    DatabaseUrl::parse(VARS, &url)
}

/// The password a pgpass file (`PGPASSFILE` from `.env`) holds for the target the
/// driver resolves from this URL, as the driver would look it up (host, port,
/// database, user; `*` matches anything; `\:` and `\\` escaped). A file others
/// may read is ignored, as libpq does.
fn pgpass_password(file: &Path, url: &str) -> Option<String> {
    let options: sqlx::postgres::PgConnectOptions = url.parse().ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(file).ok()?.permissions().mode() & 0o77 != 0 {
            return None;
        }
    }
    let text = std::fs::read_to_string(file).ok()?;
    let port = options.get_port().to_string();
    let wanted = [
        options.get_host(),
        port.as_str(),
        options.get_database().unwrap_or_default(),
        options.get_username(),
    ];
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .find_map(|line| {
            let fields = pgpass_fields(line);
            let [host, port, db, user, password] = fields.as_slice() else {
                return None;
            };
            [host, port, db, user]
                .iter()
                .zip(wanted)
                .all(|(field, value)| *field == "*" || *field == value)
                .then(|| password.clone())
        })
}

/// A pgpass line's four target fields (split on `:` not escaped by `\\`, with
/// the escapes removed) and the rest of the line, the password, as it is.
fn pgpass_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut current = String::new();
    let mut chars = line.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '\\' => current.extend(chars.next().map(|(_, c)| c)),
            ':' => {
                fields.push(std::mem::take(&mut current));
                if fields.len() == 4 {
                    fields.push(line[at + 1..].to_owned());
                    return fields;
                }
            }
            _ => current.push(c),
        }
    }
    fields
}
