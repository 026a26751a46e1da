//! `Email`: a follower's address, trimmed and lower-cased, validated as the
//! docs/sync.md#4-validate describes: no invisible or format
//! characters, no quoted local part (nor a character that would need one), and
//! the domain stored in its Unicode form (`xn--bcher-kva.de` → `bücher.de`), so
//! one address is one follower however its domain was written.

use super::MAX_FIELD_CHARS;
use std::fmt;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Email(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("email is empty")]
    Empty,
    #[error("email {0:?} has no '@'")]
    NoAt(String),
    #[error("email {0:?} has more than one '@'")]
    ManyAt(String),
    #[error("email {0:?} has an empty local part")]
    EmptyLocal(String),
    #[error("email {0:?} has an empty domain")]
    EmptyDomain(String),
    #[error("email {0:?} contains whitespace or a control character")]
    BadChar(String),
    #[error("email is {0} characters long, at most 255 are allowed")]
    TooLong(usize),
    #[error("email {0:?} contains the invisible or format character U+{1:04X}")]
    Invisible(String, u32),
    #[error("email {0:?} has a quoted local part or a character ({1:?}) only a quoted local part may hold; quoted local parts are not supported")]
    Quoted(String, char),
    #[error("email {0:?} has a character ({1:?}) not allowed in a domain")]
    DomainChar(String, char),
    #[error("email {0:?}: the domain is not a valid internationalised domain name ({1})")]
    Idna(String, String),
}

/// Characters RFC 5322 allows in a local part only inside quotes, and never in
/// a domain name (space and controls are refused separately).
const NEEDS_QUOTES: &[char] = &['"', '(', ')', ',', ':', ';', '<', '>', '[', ']', '\\', '@'];

/// Characters that show nothing (or change how their neighbours show) and so
/// make two different addresses look identical: the format characters
/// (general category Cf: zero-width space and joiners, BOM, bidi controls, soft
/// hyphen, …), private-use and unassigned code points, and the other
/// default-ignorable code points (Hangul fillers, variation selectors, the
/// combining grapheme joiner, Khmer and Mongolian invisible marks) plus the
/// Braille blank.
fn is_invisible(c: char) -> bool {
    // No ASCII character is one of them (ASCII controls are refused as controls);
    // the table lookup below costs more than the rest of a row's validation.
    if c.is_ascii() {
        return false;
    }
    matches!(
        c.general_category(),
        GeneralCategory::Format | GeneralCategory::PrivateUse | GeneralCategory::Unassigned
    ) || matches!(
        c,
        '\u{034F}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FFA0}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// The domain in one form: IDNA (UTS 46) mapping and normalisation, Punycode
/// labels decoded. A domain literal (`[192.0.2.1]`) is kept as written.
fn canonical_domain(email: &str, domain: &str) -> Result<String, EmailError> {
    let literal = domain.starts_with('[') && domain.ends_with(']') && domain.len() > 2;
    let checked = if literal {
        &domain[1..domain.len() - 1]
    } else {
        domain
    };
    if let Some(c) = checked.chars().find(|c| NEEDS_QUOTES.contains(c)) {
        return Err(EmailError::DomainChar(email.to_owned(), c));
    }
    // ASCII without Punycode labels is already in its one form (the common case,
    // and no IDNA pass per row).
    let punycode = domain.split('.').any(|label| label.starts_with("xn--"));
    if literal || (domain.is_ascii() && !punycode) {
        return Ok(domain.to_owned());
    }
    let (unicode, result) = idna::domain_to_unicode(domain);
    match result {
        Ok(()) => Ok(unicode),
        Err(e) => Err(EmailError::Idna(email.to_owned(), e.to_string())),
    }
}

impl Email {
    /// Trims, lower-cases and validates `raw`.
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let email = raw.trim().to_lowercase();
        if email.is_empty() {
            return Err(EmailError::Empty);
        }
        let chars = email.chars().count();
        if chars > MAX_FIELD_CHARS {
            return Err(EmailError::TooLong(chars));
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(EmailError::BadChar(email));
        }
        if let Some(c) = email.chars().find(|c| is_invisible(*c)) {
            return Err(EmailError::Invisible(email, c.into()));
        }
        if email.starts_with('"') {
            return Err(EmailError::Quoted(email, '"'));
        }
        // The last '@' separates the domain; an '@' before it can only be quoted.
        let local = email.rsplit_once('@').map_or("", |(l, _)| l);
        if let Some(c) = local
            .chars()
            .find(|c| NEEDS_QUOTES.contains(c) && *c != '@')
        {
            return Err(EmailError::Quoted(email, c));
        }
        let mut parts = email.split('@');
        let (local, domain) = match (parts.next(), parts.next(), parts.next()) {
            (Some(l), Some(d), None) => (l, d),
            (_, None, _) => return Err(EmailError::NoAt(email)),
            _ => return Err(EmailError::ManyAt(email)),
        };
        if local.is_empty() {
            return Err(EmailError::EmptyLocal(email));
        }
        if domain.is_empty() {
            return Err(EmailError::EmptyDomain(email));
        }
        let domain = canonical_domain(&email, domain)?;
        let email = format!("{local}@{domain}");
        let chars = email.chars().count();
        if chars > MAX_FIELD_CHARS {
            return Err(EmailError::TooLong(chars));
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_surrounding_space() {
        assert_eq!(
            Email::parse("  Ann@Example.COM\t").unwrap().as_str(),
            "ann@example.com"
        );
    }

    #[test]
    fn rejects_each_invalid_form() {
        assert_eq!(Email::parse("   "), Err(EmailError::Empty));
        assert!(matches!(
            Email::parse("ann.example.com"),
            Err(EmailError::NoAt(_))
        ));
        assert!(matches!(Email::parse("a@b@c"), Err(EmailError::ManyAt(_))));
        assert!(matches!(
            Email::parse("@b.com"),
            Err(EmailError::EmptyLocal(_))
        ));
        assert!(matches!(
            Email::parse("ann@"),
            Err(EmailError::EmptyDomain(_))
        ));
        assert!(matches!(
            Email::parse("an n@b.com"),
            Err(EmailError::BadChar(_))
        ));
        assert!(matches!(
            Email::parse("ann@b\u{7}.com"),
            Err(EmailError::BadChar(_))
        ));
        assert!(matches!(
            Email::parse("ann@b\u{a0}.com"),
            Err(EmailError::BadChar(_))
        ));
    }

    #[test]
    fn invisible_and_format_characters_are_refused() {
        for c in [
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{2060}',
            '\u{FEFF}',
            '\u{202E}',
            '\u{2066}',
            '\u{00AD}',
            '\u{034F}',
            '\u{3164}',
            '\u{FE0F}',
            '\u{E000}',
            '\u{E0041}',
            '\u{2800}',
        ] {
            for raw in [format!("a{c}@x.com"), format!("a@x{c}.com")] {
                assert_eq!(
                    Email::parse(&raw),
                    Err(EmailError::Invisible(raw.to_lowercase(), c.into())),
                    "U+{:04X}",
                    c as u32
                );
            }
        }
        let e = Email::parse("a\u{200b}@x.com").unwrap_err().to_string();
        assert!(e.contains("U+200B") && e.contains("invisible"), "{e}");
        // Visible non-ASCII letters stay valid.
        assert!(Email::parse("zoë@example.com").is_ok());
    }

    #[test]
    fn quoted_local_parts_and_what_needs_quotes_are_refused() {
        for raw in [
            "\"a,b\"@example.com",
            "a,b@example.com",
            "\"a b\"@example.com",
            "a;b@x.io",
            "a:b@x.io",
            "<a>@x.io",
            "a\\b@x.io",
            "\"a@b\"@x.io",
        ] {
            assert!(
                matches!(
                    Email::parse(raw),
                    Err(EmailError::Quoted(..) | EmailError::BadChar(_) | EmailError::ManyAt(_))
                ),
                "{raw}: {:?}",
                Email::parse(raw)
            );
        }
        let e = Email::parse("a,b@example.com").unwrap_err().to_string();
        assert!(e.contains("quoted local parts are not supported"), "{e}");
        assert!(matches!(
            Email::parse("a@x,y.com"),
            Err(EmailError::DomainChar(_, ','))
        ));
        // Characters RFC 5322 allows unquoted stay valid.
        assert!(Email::parse("o'brien+tag!#$%&*/=?^_`{|}~-x@example.com").is_ok());
    }

    #[test]
    fn domains_are_stored_in_their_unicode_form() {
        let unicode = Email::parse("user@bücher.de").unwrap();
        assert_eq!(unicode.as_str(), "user@bücher.de");
        assert_eq!(Email::parse("user@xn--bcher-kva.de").unwrap(), unicode);
        assert_eq!(Email::parse("User@XN--BCHER-KVA.DE").unwrap(), unicode);
        // Decomposed ü (u + U+0308) and full-width letters normalise to the same.
        assert_eq!(Email::parse("user@bu\u{308}cher.de").unwrap(), unicode);
        assert_eq!(
            Email::parse("a@ｅｘａｍｐｌｅ.com").unwrap().as_str(),
            "a@example.com"
        );
        assert!(matches!(
            Email::parse("a@xn--zz.de"),
            Err(EmailError::Idna(..))
        ));
        assert_eq!(
            Email::parse("a@[192.0.2.1]").unwrap().as_str(),
            "a@[192.0.2.1]"
        );
        // The local part is left as written (lower-cased).
        assert_eq!(Email::parse("Ü@x.io").unwrap().as_str(), "ü@x.io");
    }

    #[test]
    fn length_limit_is_255_characters_not_bytes() {
        let ok = format!("{}@b.co", "é".repeat(250));
        assert_eq!(ok.chars().count(), 255);
        assert!(Email::parse(&ok).is_ok());
        let long = format!("{}@b.co", "é".repeat(251));
        assert_eq!(Email::parse(&long), Err(EmailError::TooLong(256)));
    }
}
