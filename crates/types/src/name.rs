//! Resource names (queues now; topics, functions and streams later) and their rules.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest accepted resource name, in bytes.
pub const NAME_LEN_MAX: usize = 128;

/// A validated resource name: 1 to 128 characters of `A-Z a-z 0-9 _ - .`, starting with a
/// letter or digit. The same rule everywhere keeps names safe in URLs, keys and file names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Name(String);

/// Why a string is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is longer than {NAME_LEN_MAX} bytes")]
    TooLong,
    #[error("name must start with a letter or digit")]
    BadStart,
    #[error("name contains {0:?}; only letters, digits, '_', '-' and '.' are allowed")]
    BadChar(char),
}

impl Name {
    /// Validates `s` as a name.
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        let first = s.chars().next().ok_or(NameError::Empty)?;
        if s.len() > NAME_LEN_MAX {
            return Err(NameError::TooLong);
        }
        if !first.is_ascii_alphanumeric() {
            return Err(NameError::BadStart);
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            return Err(NameError::BadChar(c));
        }
        Ok(Self(s))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects_by_the_rule() {
        let long = "a".repeat(NAME_LEN_MAX + 1);
        let max = "a".repeat(NAME_LEN_MAX);
        let cases: &[(&str, Result<(), NameError>)] = &[
            ("orders", Ok(())),
            ("orders-dlq", Ok(())),
            ("v1.orders_eu", Ok(())),
            ("0day", Ok(())),
            (&max, Ok(())),
            ("", Err(NameError::Empty)),
            (&long, Err(NameError::TooLong)),
            ("-x", Err(NameError::BadStart)),
            (".hidden", Err(NameError::BadStart)),
            ("a/b", Err(NameError::BadChar('/'))),
            ("a b", Err(NameError::BadChar(' '))),
            ("naïve", Err(NameError::BadChar('ï'))),
        ];
        for (input, want) in cases {
            assert_eq!(Name::new(*input).map(|_| ()), *want, "{input:?}");
        }
    }
}
