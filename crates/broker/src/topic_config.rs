//! Topic and subscription configuration: every option with its default and allowed range,
//! and how a subscription's delivery settings map onto the queue delivery engine.

use serde::{Deserialize, Serialize};
use sluice_types::{ByteSize, HumanDuration, Name};

use crate::config::{Backoff, ConfigError, QueueConfig, check_range, limits};

/// Longest CloudEvent attribute name used as a compaction or group key.
const ATTRIBUTE_LEN_MAX: usize = 64;

/// Compaction by key: the topic keeps the latest event of every key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Compaction {
    /// The CloudEvent attribute that holds the key.
    pub key: String,
    /// An event of this type deletes its key (as does an event whose `data` is `null`).
    pub tombstone_type: Option<String>,
    /// How long a tombstone stays in the log so subscribers see the deletion.
    pub tombstone_retention: HumanDuration,
}

impl Default for Compaction {
    fn default() -> Self {
        Self {
            key: "subject".into(),
            tombstone_type: None,
            tombstone_retention: HumanDuration::from_days(1),
        }
    }
}

/// The configuration of one topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicConfig {
    /// How long an event stays in the log. Not applied to compacted topics, which keep the
    /// latest event of every live key.
    pub retention: HumanDuration,
    /// Upper bound on the log's total size; the oldest events go first. Not applied to
    /// compacted topics.
    pub max_bytes: Option<ByteSize>,
    /// Largest accepted event, as structured-mode JSON, in bytes.
    pub max_event_size: ByteSize,
    /// How long a client-supplied (`source`, `id`) pair is remembered: a repeat publish
    /// within it is acknowledged without storing the event again.
    pub dedup_window: HumanDuration,
    /// Compaction by key. Fixed at creation.
    pub compaction: Option<Compaction>,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            retention: HumanDuration::from_days(7),
            max_bytes: None,
            max_event_size: ByteSize(1 << 20),
            dedup_window: HumanDuration::from_secs(300),
            compaction: None,
        }
    }
}

fn check_attribute(field: &'static str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > ATTRIBUTE_LEN_MAX
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(ConfigError {
            field,
            message: format!(
                "{name:?} is not a CloudEvent attribute name (1..={ATTRIBUTE_LEN_MAX} of a-z, 0-9)"
            ),
        });
    }
    Ok(())
}

impl TopicConfig {
    /// Checks every value against its range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_range(
            "retention",
            self.retention,
            limits::RETENTION_MIN,
            limits::RETENTION_MAX,
        )?;
        check_range(
            "dedup_window",
            self.dedup_window,
            limits::DEDUP_MIN,
            limits::DEDUP_MAX,
        )?;
        if self.max_event_size.0 == 0 || self.max_event_size.0 > limits::MESSAGE_SIZE_MAX {
            return Err(ConfigError {
                field: "max_event_size",
                message: format!("must be 1..={} bytes", limits::MESSAGE_SIZE_MAX),
            });
        }
        if let Some(b) = self.max_bytes
            && b.0 < self.max_event_size.0
        {
            return Err(ConfigError {
                field: "max_bytes",
                message: "must be at least max_event_size".into(),
            });
        }
        if let Some(c) = &self.compaction {
            check_attribute("compaction.key", &c.key)?;
            check_range(
                "compaction.tombstone_retention",
                c.tombstone_retention,
                HumanDuration::ZERO,
                limits::RETENTION_MAX,
            )?;
            if self.max_bytes.is_some() {
                return Err(ConfigError {
                    field: "max_bytes",
                    message: "does not apply to compacted topics, which keep every live key".into(),
                });
            }
        }
        Ok(())
    }
}

/// Where a new subscription starts reading its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// Only events published after the subscription was created.
    #[default]
    Latest,
    /// The oldest retained event.
    Earliest,
    /// The event at this offset, or the first retained one after it.
    Offset(u64),
    /// The first event published at or after this time (Unix milliseconds).
    Time(u64),
}

impl Start {
    /// Parses `latest`, `earliest`, `offset:N` or `time:RFC3339`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "latest" => Some(Self::Latest),
            "earliest" => Some(Self::Earliest),
            _ => {
                if let Some(n) = s.strip_prefix("offset:") {
                    n.parse().ok().map(Self::Offset)
                } else {
                    s.strip_prefix("time:")
                        .and_then(sluice_types::parse_rfc3339_ms)
                        .map(Self::Time)
                }
            }
        }
    }
}

impl std::fmt::Display for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Latest => f.write_str("latest"),
            Self::Earliest => f.write_str("earliest"),
            Self::Offset(n) => write!(f, "offset:{n}"),
            Self::Time(ms) => write!(f, "time:{}", sluice_types::format_rfc3339_ms(*ms)),
        }
    }
}

impl Serialize for Start {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Start {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{s:?} is not a position: use latest, earliest, offset:N or time:RFC3339"
            ))
        })
    }
}

/// Where a subscription's events go.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    /// Consumers receive and ack over the API, exactly as from a queue.
    #[default]
    Pull,
    /// Every matching event is sent into this queue, atomically with the subscription's
    /// cursor moving past it.
    Queue { queue: Name },
}

/// The configuration of one subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// An EventBridge-style event pattern; `null` delivers every event.
    pub filter: serde_json::Value,
    /// Where a new subscription starts. Ignored on update; use seek to move.
    pub start: Start,
    pub target: Target,
    /// Ordered delivery per group, one lease per group at a time. Fixed at creation.
    pub fifo: bool,
    /// The CloudEvent attribute whose value is the FIFO group key. Events without it form
    /// one group with the empty key.
    pub group_attribute: String,
    pub lease_timeout: HumanDuration,
    /// Deliveries before an event moves to the dead-letter queue (needs one).
    pub max_attempts: Option<u32>,
    pub dead_letter_queue: Option<Name>,
    pub park_group_on_dead_letter: bool,
    pub max_in_flight: u32,
    pub backoff: Backoff,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        let q = QueueConfig::default();
        Self {
            filter: serde_json::Value::Null,
            start: Start::Latest,
            target: Target::Pull,
            fifo: false,
            group_attribute: "subject".into(),
            lease_timeout: q.lease_timeout,
            max_attempts: None,
            dead_letter_queue: None,
            park_group_on_dead_letter: false,
            max_in_flight: q.max_in_flight,
            backoff: q.backoff,
        }
    }
}

impl SubscriptionConfig {
    /// The delivery settings as the delivery engine sees them.
    pub fn queue_config(&self) -> QueueConfig {
        QueueConfig {
            lease_timeout: self.lease_timeout,
            delay: HumanDuration::ZERO,
            retention: limits::RETENTION_MAX,
            max_message_size: ByteSize(limits::MESSAGE_SIZE_MAX),
            max_attempts: self.max_attempts,
            dead_letter_queue: self.dead_letter_queue.clone(),
            fifo: self.fifo,
            park_group_on_dead_letter: self.park_group_on_dead_letter,
            dedup_window: QueueConfig::default().dedup_window,
            max_in_flight: self.max_in_flight,
            backoff: self.backoff.clone(),
        }
    }

    /// Checks every value; the filter is compiled by the caller.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_attribute("group_attribute", &self.group_attribute)?;
        self.queue_config().validate()?;
        if !matches!(self.target, Target::Pull)
            && (self.fifo || self.dead_letter_queue.is_some() || self.max_attempts.is_some())
        {
            return Err(ConfigError {
                field: "target",
                message: "a queue target delivers through that queue; set fifo, max_attempts and dead_letter_queue on the queue".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        TopicConfig::default().validate().unwrap();
        SubscriptionConfig::default().validate().unwrap();
    }

    #[test]
    fn positions_parse_and_print() {
        for (s, want) in [
            ("latest", Some(Start::Latest)),
            ("earliest", Some(Start::Earliest)),
            ("offset:42", Some(Start::Offset(42))),
            ("time:1970-01-01T00:00:01Z", Some(Start::Time(1000))),
            ("offset:-1", None),
            ("offset:", None),
            ("time:yesterday", None),
            ("newest", None),
        ] {
            assert_eq!(Start::parse(s), want, "{s}");
            if let Some(p) = want {
                assert_eq!(Start::parse(&p.to_string()), Some(p));
            }
        }
    }

    #[test]
    fn each_bad_value_names_its_field() {
        type Mutation = Box<dyn Fn(&mut TopicConfig)>;
        let topic: Vec<(&str, Mutation)> = vec![
            ("retention", Box::new(|c| c.retention = HumanDuration::ZERO)),
            (
                "dedup_window",
                Box::new(|c| c.dedup_window = HumanDuration::from_days(30)),
            ),
            (
                "max_event_size",
                Box::new(|c| c.max_event_size = ByteSize(0)),
            ),
            ("max_bytes", Box::new(|c| c.max_bytes = Some(ByteSize(10)))),
            (
                "compaction.key",
                Box::new(|c| {
                    c.compaction = Some(Compaction {
                        key: "Subject".into(),
                        ..Compaction::default()
                    })
                }),
            ),
            (
                "max_bytes",
                Box::new(|c| {
                    c.compaction = Some(Compaction::default());
                    c.max_bytes = Some(ByteSize(1 << 30));
                }),
            ),
        ];
        for (field, mutate) in topic {
            let mut c = TopicConfig::default();
            mutate(&mut c);
            assert_eq!(c.validate().unwrap_err().field, field);
        }
        type SubMutation = Box<dyn Fn(&mut SubscriptionConfig)>;
        let sub: Vec<(&str, SubMutation)> = vec![
            (
                "group_attribute",
                Box::new(|c| c.group_attribute = "".into()),
            ),
            ("max_attempts", Box::new(|c| c.max_attempts = Some(3))),
            (
                "target",
                Box::new(|c| {
                    c.target = Target::Queue {
                        queue: Name::new("q").unwrap(),
                    };
                    c.fifo = true;
                }),
            ),
        ];
        for (field, mutate) in sub {
            let mut c = SubscriptionConfig::default();
            mutate(&mut c);
            assert_eq!(c.validate().unwrap_err().field, field);
        }
    }
}
