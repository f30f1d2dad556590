//! Deployed functions as stored: each function's aliases and next version
//! number, and each immutable version's settings, with their keys and the
//! checks on settings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_types::{ByteSize, HumanDuration};

/// The alias a deploy moves and an invoke uses by default.
pub const LIVE: &str = "live";
/// Most aliases of one function.
pub const ALIASES_MAX: usize = 32;
/// Most configuration values of one version.
pub const ENV_MAX: usize = 64;
/// Longest configuration value, in bytes.
pub const ENV_VALUE_MAX: usize = 4096;

/// Limits on a version's settings.
pub mod limits {
    use sluice_types::{ByteSize, HumanDuration};
    pub const MEMORY_MIN: ByteSize = ByteSize(1 << 20);
    pub const MEMORY_MAX: ByteSize = ByteSize(4 << 30);
    pub const TIMEOUT_MIN: HumanDuration = HumanDuration::from_millis(1);
    pub const TIMEOUT_MAX: HumanDuration = HumanDuration::from_millis(15 * 60 * 1000);
    pub const CONCURRENCY_MAX: u32 = 1_000;
}

/// What a deploy sets on its version; immutable afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VersionSettings {
    /// Memory limit, summed over the instance's memories.
    pub memory: ByteSize,
    /// Time limit of one invocation.
    pub timeout: HumanDuration,
    /// Configuration values, read by the function through `config.get`.
    pub env: BTreeMap<String, String>,
    /// Most invocations of this version running at once.
    pub concurrency: u32,
}

impl Default for VersionSettings {
    fn default() -> Self {
        Self {
            memory: ByteSize(128 << 20),
            timeout: HumanDuration::from_millis(30_000),
            env: BTreeMap::new(),
            concurrency: 10,
        }
    }
}

impl VersionSettings {
    /// Checks every setting against its limits; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.memory < limits::MEMORY_MIN || self.memory > limits::MEMORY_MAX {
            return Err(format!(
                "memory {} is outside {}..={}",
                self.memory,
                limits::MEMORY_MIN,
                limits::MEMORY_MAX
            ));
        }
        if self.timeout < limits::TIMEOUT_MIN || self.timeout > limits::TIMEOUT_MAX {
            return Err(format!(
                "timeout {} is outside {}..={}",
                self.timeout,
                limits::TIMEOUT_MIN,
                limits::TIMEOUT_MAX
            ));
        }
        if self.concurrency == 0 || self.concurrency > limits::CONCURRENCY_MAX {
            return Err(format!(
                "concurrency {} is outside 1..={}",
                self.concurrency,
                limits::CONCURRENCY_MAX
            ));
        }
        if self.env.len() > ENV_MAX {
            return Err(format!("{} env values; at most {ENV_MAX}", self.env.len()));
        }
        for (k, v) in &self.env {
            let valid = !k.is_empty()
                && k.len() <= 128
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
            if !valid {
                return Err(format!(
                    "env name {k:?} must be 1-128 characters of letters, digits, '_', '.', '-'"
                ));
            }
            if v.len() > ENV_VALUE_MAX {
                return Err(format!(
                    "env {k} is {} bytes; at most {ENV_VALUE_MAX}",
                    v.len()
                ));
            }
        }
        Ok(())
    }
}

/// A function: its aliases and the number its next version gets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionMeta {
    pub name: String,
    pub created_ms: u64,
    pub next_version: u32,
    /// Alias name → version.
    pub aliases: BTreeMap<String, u32>,
}

/// One immutable version of a function.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionMeta {
    pub version: u32,
    pub created_ms: u64,
    /// SHA-256 of the deployed component, hex.
    pub sha256: String,
    /// Size of the deployed component, bytes.
    pub size: u64,
    pub settings: VersionSettings,
}

/// Key of a function's record.
pub fn function_key(name: &str) -> Vec<u8> {
    let mut k = b"f\0".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// Key of a version's record; versions of a function sort by number.
pub fn version_key(name: &str, version: u32) -> Vec<u8> {
    let mut k = version_prefix(name);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// Prefix of every version key of `name`.
pub fn version_prefix(name: &str) -> Vec<u8> {
    let mut k = b"v\0".to_vec();
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

/// Whether `alias` is a valid alias name: like a resource name, but not all digits
/// (those are version numbers).
pub fn check_alias(alias: &str) -> Result<(), String> {
    let valid = !alias.is_empty()
        && alias.len() <= 64
        && alias
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !alias.chars().all(|c| c.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "alias {alias:?} must be 1-64 letters, digits, '-' or '_', and not a number"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_limits() {
        let ok = VersionSettings::default();
        assert_eq!(ok.validate(), Ok(()));
        let cases: Vec<(VersionSettings, &str)> = vec![
            (
                VersionSettings {
                    memory: ByteSize(1000),
                    ..ok.clone()
                },
                "memory",
            ),
            (
                VersionSettings {
                    memory: ByteSize(5 << 30),
                    ..ok.clone()
                },
                "memory",
            ),
            (
                VersionSettings {
                    timeout: HumanDuration::ZERO,
                    ..ok.clone()
                },
                "timeout",
            ),
            (
                VersionSettings {
                    timeout: HumanDuration::from_millis(3_600_000),
                    ..ok.clone()
                },
                "timeout",
            ),
            (
                VersionSettings {
                    concurrency: 0,
                    ..ok.clone()
                },
                "concurrency",
            ),
            (
                VersionSettings {
                    concurrency: 5000,
                    ..ok.clone()
                },
                "concurrency",
            ),
            (
                VersionSettings {
                    env: [("A B".to_owned(), "x".to_owned())].into(),
                    ..ok.clone()
                },
                "env name",
            ),
            (
                VersionSettings {
                    env: [("A".to_owned(), "x".repeat(5000))].into(),
                    ..ok.clone()
                },
                "env A",
            ),
        ];
        for (s, want) in cases {
            let err = s.validate().unwrap_err();
            assert!(err.starts_with(want), "{err:?} should start with {want:?}");
        }
    }

    #[test]
    fn aliases_are_names_not_numbers() {
        for good in ["live", "canary", "v2", "blue_green"] {
            assert_eq!(check_alias(good), Ok(()), "{good}");
        }
        for bad in ["", "12", "a b", "x/y", &"a".repeat(65)] {
            assert!(check_alias(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn version_keys_sort_by_number() {
        assert!(version_key("f", 2) < version_key("f", 10));
        assert!(version_key("f", 1).starts_with(&version_prefix("f")));
        assert!(!version_key("fg", 1).starts_with(&version_prefix("f")));
    }
}
