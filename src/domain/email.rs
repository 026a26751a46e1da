//! `Email`: a follower's address, trimmed and lower-cased, validated as the
//! docs/sync.md#4-validate describes: no invisible or format
//! characters, no quoted local part (nor a character that would need one), no
//! spreadsheet quotes around it, the local part in Unicode NFC, and the domain a
//! valid name by UTS #46 with the STD3 rules, the hyphen checks and the DNS
//! lengths, stored in its Unicode form (`xn--bcher-kva.de` → `bücher.de`, a root
//! dot dropped), so one address is one follower however it was written.

use super::MAX_FIELD_CHARS;
use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
use std::fmt;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};
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
    #[error("email {0:?}: the domain is not a valid domain name ({1})")]
    Idna(String, &'static str),
    #[error("email {0:?} is wrapped in {1:?} quotes (a spreadsheet artefact?); remove them")]
    Wrapped(String, char),
}

/// Quote characters a spreadsheet or a copy from a document leaves around a value.
const WRAPPING_QUOTES: &[(char, char)] = &[
    ('\'', '\''),
    ('`', '`'),
    ('\u{2018}', '\u{2019}'),
    ('\u{201C}', '\u{201D}'),
    ('\u{00AB}', '\u{00BB}'),
];

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

/// What is wrong with a domain, in words (the UTS #46 processing itself only
/// says that it failed).
fn domain_problem(domain: &str) -> &'static str {
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.iter().any(|l| l.is_empty()) {
        "an empty label: two dots in a row, or a dot at the start"
    } else if labels
        .iter()
        .any(|l| l.starts_with('-') || l.ends_with('-'))
    {
        "a label starts or ends with a hyphen"
    } else if labels
        .iter()
        .any(|l| l.get(2..4) == Some("--") && !l.starts_with("xn--"))
    {
        "a label has hyphens in its third and fourth positions"
    } else if domain.contains('_') {
        "an underscore, which host names may not hold"
    } else if domain
        .chars()
        .any(|c| c.is_ascii() && !c.is_ascii_alphanumeric() && !matches!(c, '-' | '.'))
    {
        "a character other than a letter, digit, hyphen or dot"
    } else if domain.split('.').any(|l| l.starts_with("xn--")) {
        "a Punycode label that does not decode to a valid label"
    } else if domain.is_ascii() {
        "a label longer than 63 characters, or a name longer than 253"
    } else {
        "a character or label UTS #46 does not allow (or a name too long in its ASCII form)"
    }
}

/// The domain in one form: UTS #46 processing (mapping, NFC, Punycode labels
/// decoded) with the STD3 ASCII rules (letters, digits, hyphens), the hyphen
/// checks (no hyphen first, last, or third and fourth) and the DNS lengths
/// (labels of 1 to 63 octets, at most 253 in all, in the ASCII form); one root
/// dot (`x.io.`) is dropped, as the same name. A domain literal (`[192.0.2.1]`)
/// is kept as written.
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
    if literal {
        return Ok(domain.to_owned());
    }
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if let Some(valid) = ascii_host_name(domain) {
        return if valid {
            Ok(domain.to_owned())
        } else {
            Err(EmailError::Idna(email.to_owned(), domain_problem(domain)))
        };
    }
    uts46_domain(email, domain)
}

/// The common case without an IDNA pass (measured in a release build on a
/// loaded 2-core machine: 107-160 ns a domain through UTS #46, 68-92 ns here,
/// memory access included): a domain of lower-case ASCII letters, digits, hyphens and dots and no
/// Punycode label, which UTS #46 maps to itself, is valid exactly when each
/// label has 1 to 63 characters and the hyphen checks pass, and the name has at
/// most 253. `None`: anything else, for `uts46_domain`. A test holds the two
/// to the same verdicts.
fn ascii_host_name(domain: &str) -> Option<bool> {
    if !domain
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.'))
    {
        return None;
    }
    let mut valid = domain.len() <= 253;
    for label in domain.split('.') {
        if label.starts_with("xn--") {
            return None;
        }
        valid &= !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.get(2..4) != Some("--");
    }
    Some(valid)
}

/// `canonical_domain` through the `idna` crate's UTS #46 processing.
fn uts46_domain(email: &str, domain: &str) -> Result<String, EmailError> {
    let uts46 = Uts46::new();
    let invalid = || EmailError::Idna(email.to_owned(), domain_problem(domain));
    let (unicode, result) =
        uts46.to_unicode(domain.as_bytes(), AsciiDenyList::STD3, Hyphens::Check);
    result.map_err(|_| invalid())?;
    // The lengths are those of the ASCII form: for an ASCII result it is the
    // result itself, else one more pass.
    let lengths_ok = if unicode.is_ascii() {
        idna::uts46::verify_dns_length(&unicode, false)
    } else {
        uts46
            .to_ascii(
                domain.as_bytes(),
                AsciiDenyList::STD3,
                Hyphens::Check,
                DnsLength::Verify,
            )
            .is_ok()
    };
    if !lengths_ok {
        return Err(invalid());
    }
    Ok(unicode.into_owned())
}

/// The local part in Unicode NFC: `josé` typed with a precomposed `é` or with
/// `e` + U+0301 is one address (ASCII is already NFC).
fn nfc(local: &str) -> std::borrow::Cow<'_, str> {
    if local.is_ascii() || is_nfc_quick(local.chars()) == IsNormalized::Yes {
        local.into()
    } else {
        local.nfc().collect::<String>().into()
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
        if let Some((open, _)) = WRAPPING_QUOTES.iter().find(|(open, close)| {
            email.len() > 2 && email.starts_with(*open) && email.ends_with(*close)
        }) {
            return Err(EmailError::Wrapped(email, *open));
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
        let email = format!("{}@{domain}", nfc(local));
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
                    u32::from(c)
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
    fn domains_follow_uts46_with_std3_hyphen_and_length_checks() {
        for (raw, why) in [
            ("q@x..io", "empty label"),
            ("q@.x.io", "empty label"),
            ("q@x.io..", "empty label"),
            ("x@-x.io", "hyphen"),
            ("x@x-.io", "hyphen"),
            ("x@x.io-", "hyphen"),
            ("x@ab--cd.io", "third and fourth"),
            ("w@exa_mple.com", "underscore"),
            ("ann@x.io'", "character other than"),
            ("a@x!.io", "character other than"),
        ] {
            match Email::parse(raw) {
                Err(EmailError::Idna(_, reason)) => {
                    assert!(reason.contains(why), "{raw}: {reason}")
                }
                other => panic!("{raw}: {other:?}"),
            }
        }
        let long_label = format!("a@{}.io", "x".repeat(64));
        assert!(matches!(
            Email::parse(&long_label),
            Err(EmailError::Idna(..))
        ));
        assert!(Email::parse(&format!("a@{}.io", "x".repeat(63))).is_ok());
        // Valid names, Punycode ones and hyphens inside labels, stay valid.
        for ok in [
            "a@my-host.example.com",
            "a@x1.io",
            "a@xn--bcher-kva.de",
            "a@1.2.3.4.example",
        ] {
            assert!(Email::parse(ok).is_ok(), "{ok}");
        }
        let e = Email::parse("q@x..io").unwrap_err().to_string();
        assert!(e.contains("q@x..io") && e.contains("empty label"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn the_ascii_fast_path_agrees_with_uts46(domain in "[a-z0-9.-]{0,12}|([a-z0-9-]{0,70}\\.){0,5}[a-z0-9-]{0,8}") {
            if let Some(fast) = ascii_host_name(&domain) {
                let full = uts46_domain("e", &domain).is_ok();
                proptest::prop_assert_eq!(fast, full, "{}", domain);
            }
        }
    }

    #[test]
    fn a_root_dot_is_the_same_domain() {
        assert_eq!(
            Email::parse("dee@x.io.").unwrap(),
            Email::parse("dee@x.io").unwrap()
        );
        assert_eq!(Email::parse("dee@x.io.").unwrap().as_str(), "dee@x.io");
        assert_eq!(
            Email::parse("u@bücher.de.").unwrap().as_str(),
            "u@bücher.de"
        );
    }

    #[test]
    fn spreadsheet_quotes_around_an_address_are_refused() {
        for raw in [
            "'ann@x.io'",
            "`ann@x.io`",
            "\u{2018}ann@x.io\u{2019}",
            "\u{201C}ann@x.io\u{201D}",
        ] {
            let e = Email::parse(raw).unwrap_err();
            assert!(matches!(e, EmailError::Wrapped(..)), "{raw}: {e:?}");
            assert!(e.to_string().contains("quotes"), "{e}");
        }
        // An apostrophe inside a local part is valid.
        assert!(Email::parse("o'brien@x.io").is_ok());
    }

    #[test]
    fn the_local_part_is_stored_in_nfc() {
        let nfc = Email::parse("jos\u{e9}@x.io").unwrap();
        let nfd = Email::parse("jose\u{301}@x.io").unwrap();
        assert_eq!(nfc, nfd);
        assert_eq!(nfd.as_str(), "jos\u{e9}@x.io");
        assert_eq!(Email::parse("JOSE\u{301}@x.io").unwrap(), nfc);
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
