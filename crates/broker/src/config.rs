//! Queue configuration: every per-queue option with its default and its allowed range.

use serde::{Deserialize, Serialize};
use sluice_types::{ByteSize, HumanDuration, Name};

/// Retry backoff applied when a lease expires or a message is nacked without a delay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// Delay before the second delivery attempt.
    pub initial: HumanDuration,
    /// Factor applied to the delay for every further attempt (at least 1).
    pub multiplier: f64,
    /// Upper bound of the delay.
    pub max: HumanDuration,
    /// Fraction (0 to 1) of the delay that is randomized away, so retries of many messages
    /// failing together spread out.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: HumanDuration::from_secs(1),
            multiplier: 2.0,
            max: HumanDuration::from_secs(300),
            jitter: 0.2,
        }
    }
}

/// The configuration of one queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// How long a received message stays leased to its consumer before it is released.
    pub lease_timeout: HumanDuration,
    /// Delivery delay for messages sent without their own.
    pub delay: HumanDuration,
    /// How long a message is kept before it is dropped, delivered or not.
    pub retention: HumanDuration,
    /// Largest accepted message: body plus attributes, in bytes.
    pub max_message_size: ByteSize,
    /// Deliveries before a message moves to the dead-letter queue. Needs
    /// `dead_letter_queue`; without both, messages are retried until retention drops them.
    pub max_attempts: Option<u32>,
    /// The queue that receives messages which exhausted their attempts.
    pub dead_letter_queue: Option<Name>,
    /// Ordered delivery per group, one lease per group at a time. Fixed at creation.
    pub fifo: bool,
    /// FIFO queues only: when a message of a group is dead-lettered, hold the rest of the
    /// group until that message is redriven, instead of moving on.
    pub park_group_on_dead_letter: bool,
    /// How long a dedup id is remembered.
    pub dedup_window: HumanDuration,
    /// Most messages leased at once; receives beyond it get an `in_flight_limit` error.
    pub max_in_flight: u32,
    /// Retry backoff.
    pub backoff: Backoff,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            lease_timeout: HumanDuration::from_secs(30),
            delay: HumanDuration::ZERO,
            retention: HumanDuration::from_days(4),
            max_message_size: ByteSize(1 << 20),
            max_attempts: None,
            dead_letter_queue: None,
            fifo: false,
            park_group_on_dead_letter: false,
            dedup_window: HumanDuration::from_secs(300),
            max_in_flight: 120_000,
            backoff: Backoff::default(),
        }
    }
}

/// Bounds on configuration values.
pub mod limits {
    use sluice_types::HumanDuration;

    /// Shortest lease.
    pub const LEASE_MIN: HumanDuration = HumanDuration::from_secs(1);
    /// Longest lease.
    pub const LEASE_MAX: HumanDuration = HumanDuration::from_secs(12 * 3600);
    /// Longest delivery delay.
    pub const DELAY_MAX: HumanDuration = HumanDuration::from_days(7);
    /// Shortest retention.
    pub const RETENTION_MIN: HumanDuration = HumanDuration::from_secs(60);
    /// Longest retention.
    pub const RETENTION_MAX: HumanDuration = HumanDuration::from_days(365);
    /// Largest message.
    pub const MESSAGE_SIZE_MAX: u64 = 16 << 20;
    /// Most delivery attempts.
    pub const ATTEMPTS_MAX: u32 = 1_000;
    /// Shortest dedup window.
    pub const DEDUP_MIN: HumanDuration = HumanDuration::from_secs(1);
    /// Longest dedup window.
    pub const DEDUP_MAX: HumanDuration = HumanDuration::from_days(7);
    /// Most leased messages per queue.
    pub const IN_FLIGHT_MAX: u32 = 1_000_000;
    /// Longest backoff.
    pub const BACKOFF_MAX: HumanDuration = HumanDuration::from_days(1);
}

/// A configuration value out of its range; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The offending field, dotted for nested ones (`backoff.multiplier`).
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

pub(crate) fn check_range(
    field: &'static str,
    v: HumanDuration,
    min: HumanDuration,
    max: HumanDuration,
) -> Result<(), ConfigError> {
    if v < min || v > max {
        return Err(ConfigError {
            field,
            message: format!("{v} is outside {min}..={max}"),
        });
    }
    Ok(())
}

impl QueueConfig {
    /// Checks every value against its range and the rules between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use limits::*;
        check_range("lease_timeout", self.lease_timeout, LEASE_MIN, LEASE_MAX)?;
        check_range("delay", self.delay, HumanDuration::ZERO, DELAY_MAX)?;
        check_range("retention", self.retention, RETENTION_MIN, RETENTION_MAX)?;
        check_range("dedup_window", self.dedup_window, DEDUP_MIN, DEDUP_MAX)?;
        check_range(
            "backoff.initial",
            self.backoff.initial,
            HumanDuration::ZERO,
            BACKOFF_MAX,
        )?;
        check_range(
            "backoff.max",
            self.backoff.max,
            HumanDuration::ZERO,
            BACKOFF_MAX,
        )?;
        if self.max_message_size.0 == 0 || self.max_message_size.0 > MESSAGE_SIZE_MAX {
            return Err(ConfigError {
                field: "max_message_size",
                message: format!("must be 1..={MESSAGE_SIZE_MAX} bytes"),
            });
        }
        if let Some(n) = self.max_attempts {
            if n == 0 || n > ATTEMPTS_MAX {
                return Err(ConfigError {
                    field: "max_attempts",
                    message: format!("must be 1..={ATTEMPTS_MAX}"),
                });
            }
            if self.dead_letter_queue.is_none() {
                return Err(ConfigError {
                    field: "max_attempts",
                    message: "needs a dead_letter_queue to move exhausted messages to".into(),
                });
            }
        }
        if self.max_in_flight == 0 || self.max_in_flight > IN_FLIGHT_MAX {
            return Err(ConfigError {
                field: "max_in_flight",
                message: format!("must be 1..={IN_FLIGHT_MAX}"),
            });
        }
        if !(1.0..=100.0).contains(&self.backoff.multiplier) {
            return Err(ConfigError {
                field: "backoff.multiplier",
                message: "must be 1..=100".into(),
            });
        }
        if !(0.0..=1.0).contains(&self.backoff.jitter) {
            return Err(ConfigError {
                field: "backoff.jitter",
                message: "must be 0..=1".into(),
            });
        }
        if self.backoff.max < self.backoff.initial {
            return Err(ConfigError {
                field: "backoff.max",
                message: "must be at least backoff.initial".into(),
            });
        }
        if self.park_group_on_dead_letter && !self.fifo {
            return Err(ConfigError {
                field: "park_group_on_dead_letter",
                message: "applies to FIFO queues only".into(),
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
        QueueConfig::default().validate().unwrap();
    }

    #[test]
    fn each_out_of_range_value_names_its_field() {
        let dlq = || Some(Name::new("dlq").unwrap());
        type Mutation = Box<dyn Fn(&mut QueueConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "lease_timeout",
                Box::new(|c| c.lease_timeout = HumanDuration::from_millis(10)),
            ),
            (
                "lease_timeout",
                Box::new(|c| c.lease_timeout = HumanDuration::from_days(1)),
            ),
            ("delay", Box::new(|c| c.delay = HumanDuration::from_days(8))),
            (
                "retention",
                Box::new(|c| c.retention = HumanDuration::from_secs(1)),
            ),
            (
                "dedup_window",
                Box::new(|c| c.dedup_window = HumanDuration::from_days(8)),
            ),
            (
                "max_message_size",
                Box::new(|c| c.max_message_size = ByteSize(0)),
            ),
            (
                "max_message_size",
                Box::new(|c| c.max_message_size = ByteSize(17 << 20)),
            ),
            ("max_attempts", Box::new(|c| c.max_attempts = Some(3))),
            (
                "max_attempts",
                Box::new(move |c| {
                    c.max_attempts = Some(0);
                    c.dead_letter_queue = dlq();
                }),
            ),
            ("max_in_flight", Box::new(|c| c.max_in_flight = 0)),
            (
                "backoff.multiplier",
                Box::new(|c| c.backoff.multiplier = 0.5),
            ),
            ("backoff.jitter", Box::new(|c| c.backoff.jitter = 1.5)),
            (
                "backoff.max",
                Box::new(|c| c.backoff.max = HumanDuration::from_millis(1)),
            ),
            (
                "park_group_on_dead_letter",
                Box::new(|c| c.park_group_on_dead_letter = true),
            ),
        ];
        for (field, mutate) in cases {
            let mut c = QueueConfig::default();
            mutate(&mut c);
            assert_eq!(c.validate().unwrap_err().field, field);
        }
    }
}
