//! The effect buffer of one invocation: what a function published, sent and
//! wrote, held back until the invocation succeeds, with reads that see the
//! invocation's own writes.

use std::collections::BTreeMap;

/// Most keys a function may list in one call.
pub const MAX_LIST_KEYS: usize = 1_000;
/// Longest key-value key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest key-value value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Most effects (events, messages, distinct written keys) of one invocation.
pub const MAX_EFFECTS: usize = 10_000;
/// Most bytes of effects of one invocation (data, bodies, values).
pub const MAX_EFFECT_BYTES: usize = 64 << 20;

/// An event a function asked to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishEffect {
    /// The topic.
    pub topic: String,
    /// The event as the guest gave it.
    pub event: OutgoingEvent,
}

/// The event of a publish, before Sluice fills `id`, `source` and `time`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutgoingEvent {
    pub event_type: String,
    pub id: Option<String>,
    pub source: Option<String>,
    pub subject: Option<String>,
    pub datacontenttype: Option<String>,
    pub data: Option<Vec<u8>>,
    pub extensions: Vec<(String, String)>,
}

/// A message a function asked to send to a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendEffect {
    pub queue: String,
    /// JSON text.
    pub body: String,
    pub delay_ms: Option<u64>,
    pub group: Option<String>,
    pub dedup_id: Option<String>,
}

/// A key-value write: `Some` sets, `None` deletes.
pub type Write = Option<Vec<u8>>;

/// Everything an invocation asked to change, in order of the calls for events
/// and messages, by key for state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    pub published: Vec<PublishEffect>,
    pub sent: Vec<SendEffect>,
    /// The last write of each key.
    pub writes: BTreeMap<String, Write>,
    /// For each key written by compare-and-set, the value the function saw
    /// (`None`: no value). The commit must find the key still at this value.
    pub expected: BTreeMap<String, Write>,
    bytes: usize,
}

/// Why a buffered call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EffectError {
    #[error("the key is empty")]
    EmptyKey,
    #[error("the key is {0} bytes, over the limit of {MAX_KEY_BYTES}")]
    KeyTooLong(usize),
    #[error("the value is {0} bytes, over the limit of {MAX_VALUE_BYTES}")]
    ValueTooLarge(usize),
    #[error(
        "the invocation's effects are over the limit of {MAX_EFFECTS} or {MAX_EFFECT_BYTES} bytes"
    )]
    TooManyEffects,
}

impl Effects {
    /// Whether there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.published.is_empty() && self.sent.is_empty() && self.writes.is_empty()
    }

    fn charge(&mut self, bytes: usize) -> Result<(), EffectError> {
        let count = self.published.len() + self.sent.len() + self.writes.len();
        if count >= MAX_EFFECTS || self.bytes + bytes > MAX_EFFECT_BYTES {
            return Err(EffectError::TooManyEffects);
        }
        self.bytes += bytes;
        Ok(())
    }

    /// Buffer a publish.
    pub fn publish(&mut self, effect: PublishEffect) -> Result<(), EffectError> {
        let bytes = effect.event.data.as_ref().map_or(0, Vec::len) + effect.event.event_type.len();
        self.charge(bytes)?;
        self.published.push(effect);
        Ok(())
    }

    /// Buffer a send.
    pub fn send(&mut self, effect: SendEffect) -> Result<(), EffectError> {
        self.charge(effect.body.len())?;
        self.sent.push(effect);
        Ok(())
    }

    /// The buffered write of `key`, if any: `Some(None)` is a buffered delete.
    pub fn buffered(&self, key: &str) -> Option<&Write> {
        self.writes.get(key)
    }

    /// Buffer a write (`None` deletes).
    pub fn write(&mut self, key: &str, value: Write) -> Result<(), EffectError> {
        check_key(key)?;
        let len = value.as_ref().map_or(0, Vec::len);
        if len > MAX_VALUE_BYTES {
            return Err(EffectError::ValueTooLarge(len));
        }
        if !self.writes.contains_key(key) {
            self.charge(len + key.len())?;
        } else {
            self.bytes += len;
            if self.bytes > MAX_EFFECT_BYTES {
                return Err(EffectError::TooManyEffects);
            }
        }
        self.writes.insert(key.to_owned(), value);
        Ok(())
    }

    /// Compare-and-set against `current` (the committed value, which the
    /// caller read when the key has no buffered write). Returns whether the
    /// write was buffered.
    pub fn compare_and_set(
        &mut self,
        key: &str,
        current_committed: Option<&Write>,
        expected: Write,
        value: Vec<u8>,
    ) -> Result<bool, EffectError> {
        check_key(key)?;
        let current: Write = match self.writes.get(key) {
            Some(buffered) => buffered.clone(),
            None => current_committed.cloned().flatten(),
        };
        if current != expected {
            return Ok(false);
        }
        // The first read of a key from the store is what the commit checks;
        // later CAS calls on a key this invocation already wrote only check
        // the buffer.
        if !self.writes.contains_key(key) && !self.expected.contains_key(key) {
            self.expected.insert(key.to_owned(), expected);
        }
        self.write(key, Some(value))?;
        Ok(true)
    }

    /// Merge the committed keys of a listing with this invocation's writes:
    /// buffered sets appear, buffered deletes disappear, in key order, after
    /// `cursor`, at most `limit`.
    pub fn merge_keys(
        &self,
        committed: Vec<String>,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Vec<String> {
        let mut keys: std::collections::BTreeSet<String> = committed
            .into_iter()
            .filter(|k| !matches!(self.writes.get(k), Some(None)))
            .collect();
        for (key, write) in self.writes.range(prefix.to_owned()..) {
            if !key.starts_with(prefix) {
                break;
            }
            if write.is_some() && cursor.is_none_or(|c| key.as_str() > c) {
                keys.insert(key.clone());
            }
        }
        keys.into_iter().take(limit).collect()
    }
}

fn check_key(key: &str) -> Result<(), EffectError> {
    if key.is_empty() {
        return Err(EffectError::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(EffectError::KeyTooLong(key.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Write {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn compare_and_set_table() {
        // (committed, buffered write before, expected, succeeds, expectation recorded)
        type Case = (Write, Option<Write>, Write, bool, Option<Write>);
        let cases: &[Case] = &[
            (None, None, None, true, Some(None)),
            (v("1"), None, v("1"), true, Some(v("1"))),
            (v("1"), None, v("2"), false, None),
            (v("1"), None, None, false, None),
            (None, None, v("1"), false, None),
            // A buffered write is what CAS compares against, and no store
            // expectation is recorded since the key's value is this invocation's.
            (v("1"), Some(v("5")), v("5"), true, None),
            (v("1"), Some(v("5")), v("1"), false, None),
            (v("1"), Some(None), None, true, None),
        ];
        for (i, (committed, before, expected, ok, recorded)) in cases.iter().enumerate() {
            let mut fx = Effects::default();
            if let Some(b) = before {
                fx.write("k", b.clone()).unwrap();
            }
            let got = fx
                .compare_and_set("k", Some(committed), expected.clone(), b"new".to_vec())
                .unwrap();
            assert_eq!(got, *ok, "case {i}");
            assert_eq!(fx.expected.get("k").cloned(), *recorded, "case {i}");
            let want = if *ok {
                v("new")
            } else {
                before.clone().flatten()
            };
            assert_eq!(fx.writes.get("k").cloned().flatten(), want, "case {i}");
        }
    }

    #[test]
    fn key_and_value_limits() {
        let mut fx = Effects::default();
        assert_eq!(fx.write("", v("x")), Err(EffectError::EmptyKey));
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(
            fx.write(&long, v("x")),
            Err(EffectError::KeyTooLong(MAX_KEY_BYTES + 1))
        );
        let big = vec![0u8; MAX_VALUE_BYTES + 1];
        assert_eq!(
            fx.write("k", Some(big)),
            Err(EffectError::ValueTooLarge(MAX_VALUE_BYTES + 1))
        );
        assert!(fx.is_empty());
        for i in 0..MAX_EFFECTS {
            fx.write(&format!("k{i}"), v("x")).unwrap();
        }
        assert_eq!(
            fx.write("one-more", v("x")),
            Err(EffectError::TooManyEffects)
        );
        // Rewriting an existing key is not a new effect.
        fx.write("k0", v("y")).unwrap();
    }

    #[test]
    fn listing_merges_buffered_writes() {
        let mut fx = Effects::default();
        fx.write("a/2", v("x")).unwrap();
        fx.write("a/3", None).unwrap();
        fx.write("b/1", v("x")).unwrap();
        let committed = vec!["a/1".to_owned(), "a/3".to_owned(), "a/4".to_owned()];
        assert_eq!(
            fx.merge_keys(committed.clone(), "a/", None, 10),
            ["a/1", "a/2", "a/4"]
        );
        assert_eq!(
            fx.merge_keys(committed.clone(), "a/", None, 2),
            ["a/1", "a/2"]
        );
        let after: Vec<String> = committed
            .into_iter()
            .filter(|k| k.as_str() > "a/1")
            .collect();
        assert_eq!(fx.merge_keys(after, "a/", Some("a/1"), 10), ["a/2", "a/4"]);
    }
}
