//! `Email`: a follower's address, trimmed and lower-cased, validated per SPEC §5.3.

use super::MAX_FIELD_CHARS;
use std::fmt;

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
    fn length_limit_is_255_characters_not_bytes() {
        let ok = format!("{}@b.co", "é".repeat(250));
        assert_eq!(ok.chars().count(), 255);
        assert!(Email::parse(&ok).is_ok());
        let long = format!("{}@b.co", "é".repeat(251));
        assert_eq!(Email::parse(&long), Err(EmailError::TooLong(256)));
    }
}
