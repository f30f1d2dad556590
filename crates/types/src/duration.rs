//! Durations as users write them: `"250ms"`, `"30s"`, `"5m"`, `"2h"`, `"7d"`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration with millisecond precision, written and read with a unit suffix.
///
/// Serialized as the shortest exact string (`30000` ms is `"30s"`); deserialized from such
/// a string. Bare numbers are rejected because their unit would be a guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration {
    ms: u64,
}

/// Why a duration string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationParseError {
    #[error("empty duration")]
    Empty,
    #[error("duration {0:?} needs a unit: ms, s, m, h or d (for example \"30s\")")]
    MissingUnit(String),
    #[error("duration {0:?} has an unknown unit; use ms, s, m, h or d")]
    UnknownUnit(String),
    #[error("duration {0:?} is not a whole non-negative number with a unit")]
    BadNumber(String),
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

impl HumanDuration {
    /// Zero.
    pub const ZERO: Self = Self { ms: 0 };

    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self { ms }
    }

    /// A duration of `s` seconds.
    pub const fn from_secs(s: u64) -> Self {
        Self { ms: s * 1_000 }
    }

    /// A duration of `d` days.
    pub const fn from_days(d: u64) -> Self {
        Self { ms: d * 86_400_000 }
    }

    /// The duration in milliseconds.
    pub const fn as_millis(self) -> u64 {
        self.ms
    }

    /// The duration as a standard library `Duration`.
    pub const fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.ms)
    }
}

const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

impl FromStr for HumanDuration {
    type Err = DurationParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.is_empty() {
            return Err(DurationParseError::Empty);
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(DurationParseError::BadNumber(s.to_owned()));
        }
        if unit.is_empty() {
            return Err(DurationParseError::MissingUnit(s.to_owned()));
        }
        let factor = UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, f)| *f)
            .ok_or_else(|| DurationParseError::UnknownUnit(s.to_owned()))?;
        let n: u64 = num
            .parse()
            .map_err(|_| DurationParseError::Overflow(s.to_owned()))?;
        n.checked_mul(factor)
            .map(Self::from_millis)
            .ok_or_else(|| DurationParseError::Overflow(s.to_owned()))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ms == 0 {
            return f.write_str("0s");
        }
        for (unit, factor) in UNITS {
            if self.ms.is_multiple_of(factor) {
                return write!(f, "{}{unit}", self.ms / factor);
            }
        }
        unreachable!("every duration is a whole number of milliseconds")
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string with a unit, such as \"30s\" or \"5m\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_unit() {
        let cases: &[(&str, u64, &str)] = &[
            ("0s", 0, "0s"),
            ("0ms", 0, "0s"),
            ("250ms", 250, "250ms"),
            ("1500ms", 1_500, "1500ms"),
            ("30s", 30_000, "30s"),
            ("60s", 60_000, "1m"),
            ("5m", 300_000, "5m"),
            ("2h", 7_200_000, "2h"),
            ("7d", 604_800_000, "7d"),
            (" 10s ", 10_000, "10s"),
        ];
        for (input, ms, shown) in cases {
            let d: HumanDuration = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(d.as_millis(), *ms, "{input}");
            assert_eq!(d.to_string(), *shown, "{input}");
        }
    }

    #[test]
    fn rejects_what_it_cannot_read_exactly() {
        let cases: &[(&str, DurationParseError)] = &[
            ("", DurationParseError::Empty),
            ("30", DurationParseError::MissingUnit("30".into())),
            ("30x", DurationParseError::UnknownUnit("30x".into())),
            ("-1s", DurationParseError::BadNumber("-1s".into())),
            ("1.5s", DurationParseError::UnknownUnit("1.5s".into())),
            ("s", DurationParseError::BadNumber("s".into())),
            (
                "99999999999999999999d",
                DurationParseError::Overflow("99999999999999999999d".into()),
            ),
            (
                "999999999999999999d",
                DurationParseError::Overflow("999999999999999999d".into()),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                input.parse::<HumanDuration>().unwrap_err(),
                *want,
                "{input}"
            );
        }
    }

    #[test]
    fn serde_round_trip_uses_strings() {
        let d: HumanDuration = serde_json::from_str("\"5m\"").unwrap();
        assert_eq!(d, HumanDuration::from_secs(300));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"5m\"");
        assert!(serde_json::from_str::<HumanDuration>("300").is_err());
    }
}
