//! The canonical form of a follower's email, as the agent stores it: trimmed of
//! Unicode white space and lower-cased (Rust's `str::trim` and
//! `str::to_lowercase`), exactly what `followers_etl::domain::Email::parse` does to
//! a file's rows, plus the SQL that applies the same rule set-based where it is
//! exact (ASCII values) and checks validity. A test of the main crate
//! (`tests/it/takeover.rs`, `sql_and_rust_email_rules_agree`) compares all three
//! with `Email::parse` on every character that has a case mapping, every white
//! space and control character, and invisible and non-ASCII look-alikes, so a
//! change to one side that is not made to the other fails it.

/// Trim + lower-case, as `Email::parse` does before validating.
pub fn canonical(raw: &str) -> String {
    raw.trim().to_lowercase()
}

/// Unicode White_Space: what `str::trim` removes and `char::is_whitespace` tests.
pub const WHITE_SPACE: &[char] = &[
    '\u{9}', '\u{a}', '\u{b}', '\u{c}', '\u{d}', ' ', '\u{85}', '\u{a0}', '\u{1680}', '\u{2000}',
    '\u{2001}', '\u{2002}', '\u{2003}', '\u{2004}', '\u{2005}', '\u{2006}', '\u{2007}', '\u{2008}',
    '\u{2009}', '\u{200a}', '\u{2028}', '\u{2029}', '\u{202f}', '\u{205f}', '\u{3000}',
];

/// Whether `value` (an SQL expression of type text) is ASCII only: then the SQL
/// rule below is exact. Other values are canonicalised by [`canonical`] in Rust,
/// so the result never depends on the server's locale, ICU or Unicode version.
pub fn is_ascii_sql(value: &str) -> String {
    format!("(octet_length({value}) = char_length({value}))")
}

/// The canonical form of an ASCII-only `value` (an SQL expression of type text),
/// NULL for any other value: ASCII white space trimmed, A-Z lower-cased.
pub fn ascii_canonical_sql(value: &str) -> String {
    format!(
        "CASE WHEN {} THEN lower(btrim({value}, E' \\t\\n\\u000b\\f\\r') COLLATE \"C\") END",
        is_ascii_sql(value)
    )
}

/// Why the canonical `email` (an SQL expression of type text) is not a valid
/// follower email under `Email::parse`'s rules, or NULL when it is valid.
pub fn invalid_reason_sql(email: &str) -> String {
    let mut class = String::from("[\\u0001-\\u001f\\u007f-\\u009f");
    for c in WHITE_SPACE {
        class.push_str(&format!("\\u{:04x}", *c as u32));
    }
    class.push(']');
    format!(
        "CASE
           WHEN {email} IS NULL THEN 'the email is NULL'
           WHEN {email} = '' THEN 'the email is empty'
           WHEN char_length({email}) > 255 THEN 'longer than 255 characters'
           WHEN {email} ~ '{class}' THEN 'contains white space or a control character'
           WHEN {email} NOT LIKE '%@%' THEN 'has no ''@'''
           WHEN {email} LIKE '%@%@%' THEN 'has more than one ''@'''
           WHEN {email} LIKE '@%' THEN 'has an empty local part'
           WHEN {email} LIKE '%@' THEN 'has an empty domain'
         END"
    )
}
