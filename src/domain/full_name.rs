//! `FullName`: a follower's name, trimmed, at most 255 characters, no NUL; may be empty.

use super::MAX_FIELD_CHARS;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FullName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FullNameError {
    #[error("full_name contains a NUL character")]
    Nul,
    #[error("full_name is {0} characters long, at most 255 are allowed")]
    TooLong(usize),
}

impl FullName {
    pub fn parse(raw: &str) -> Result<Self, FullNameError> {
        let name = raw.trim();
        if name.contains('\0') {
            return Err(FullNameError::Nul);
        }
        let chars = name.chars().count();
        if chars > MAX_FIELD_CHARS {
            return Err(FullNameError::TooLong(chars));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_keeps_inner_text() {
        assert_eq!(
            FullName::parse("  Zoë, \"Z\" 王  ").unwrap().as_str(),
            "Zoë, \"Z\" 王"
        );
        assert_eq!(FullName::parse("").unwrap().as_str(), "");
    }

    #[test]
    fn rejects_nul_and_overlong_names() {
        assert_eq!(FullName::parse("a\0b"), Err(FullNameError::Nul));
        assert!(FullName::parse(&"名".repeat(255)).is_ok());
        assert_eq!(
            FullName::parse(&"名".repeat(256)),
            Err(FullNameError::TooLong(256))
        );
    }
}
