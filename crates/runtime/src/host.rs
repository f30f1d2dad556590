//! The imports a function calls: the [`Host`] trait the embedder implements
//! for reads and checks, and the buffering, logging and configuration that
//! the runtime does itself.

use std::time::Duration;

use crate::State;
use crate::bindings::sluice::function::{config, keyvalue, logging, messaging, types};
use crate::effects::{MAX_LIST_KEYS, OutgoingEvent, PublishEffect, SendEffect};

/// Most log lines kept per invocation.
pub const MAX_LOG_LINES: usize = 1_000;
/// Most log bytes kept per invocation.
pub const MAX_LOG_BYTES: usize = 256 << 10;

/// What the runtime asks of its embedder while a function runs. Writes never
/// come here: they are buffered and returned with the invocation.
pub trait Host: Send + Sync {
    /// The committed value of the function's `key`.
    fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Committed keys starting with `prefix`, after `after`, at most `limit`, in order.
    fn kv_list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, String>;
    /// Whether `event` may be published to `topic` (it exists, the event is valid).
    fn check_publish(&self, topic: &str, event: &OutgoingEvent) -> Result<(), String>;
    /// Whether the message may be sent (the queue exists, the body is JSON).
    fn check_send(&self, message: &SendEffect) -> Result<(), String>;
}

/// The level of a log line, as `wasi:logging`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

impl LogLevel {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
        }
    }
}

/// One line of an invocation's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Milliseconds since the invocation started.
    pub at_ms: u64,
    pub level: LogLevel,
    /// The guest's context, or `stdout` / `stderr` for captured output.
    pub context: String,
    pub message: String,
}

/// Append captured output as lines (stdout at info, stderr at warn).
pub(crate) fn push_output(logs: &mut Vec<LogLine>, stream: &str, bytes: &[u8], at: Duration) {
    if bytes.is_empty() {
        return;
    }
    let level = if stream == "stderr" {
        LogLevel::Warn
    } else {
        LogLevel::Info
    };
    let text = String::from_utf8_lossy(bytes);
    for line in text.lines().take(MAX_LOG_LINES) {
        logs.push(LogLine {
            at_ms: at.as_millis() as u64,
            level,
            context: stream.to_owned(),
            message: line.to_owned(),
        });
    }
}

impl State {
    fn refuse(&mut self, e: crate::EffectError) -> String {
        let message = e.to_string();
        if e == crate::EffectError::TooManyEffects {
            self.effect_error = Some(message.clone());
        }
        message
    }
}

impl types::Host for State {}

impl messaging::Host for State {
    fn publish(&mut self, topic: String, event: messaging::OutgoingEvent) -> Result<(), String> {
        let event = OutgoingEvent {
            event_type: event.event_type,
            id: event.id,
            source: event.source,
            subject: event.subject,
            datacontenttype: event.datacontenttype,
            data: event.data,
            extensions: event.extensions,
        };
        self.host.check_publish(&topic, &event)?;
        self.effects
            .publish(PublishEffect { topic, event })
            .map_err(|e| self.refuse(e))
    }

    fn send(
        &mut self,
        queue: String,
        body: String,
        options: messaging::SendOptions,
    ) -> Result<(), String> {
        let message = SendEffect {
            queue,
            body,
            delay_ms: options.delay_ms,
            group: options.group,
            dedup_id: options.dedup_id,
        };
        self.host.check_send(&message)?;
        self.effects.send(message).map_err(|e| self.refuse(e))
    }
}

fn kv_error(e: impl std::fmt::Display) -> keyvalue::Error {
    keyvalue::Error::Other(e.to_string())
}

impl State {
    fn committed(&self, key: &str) -> Result<Option<Vec<u8>>, keyvalue::Error> {
        self.host.kv_get(key).map_err(keyvalue::Error::Other)
    }

    fn current(&self, key: &str) -> Result<Option<Vec<u8>>, keyvalue::Error> {
        match self.effects.buffered(key) {
            Some(write) => Ok(write.clone()),
            None => self.committed(key),
        }
    }

    fn kv_write(&mut self, key: &str, value: Option<Vec<u8>>) -> Result<(), keyvalue::Error> {
        match self.effects.write(key, value) {
            Ok(()) => Ok(()),
            Err(e @ crate::EffectError::TooManyEffects) => Err(kv_error(self.refuse(e))),
            Err(_) => Err(keyvalue::Error::AccessDenied),
        }
    }
}

impl keyvalue::Host for State {
    fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, keyvalue::Error> {
        self.current(&key)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), keyvalue::Error> {
        self.kv_write(&key, Some(value))
    }

    fn delete(&mut self, key: String) -> Result<(), keyvalue::Error> {
        self.kv_write(&key, None)
    }

    fn exists(&mut self, key: String) -> Result<bool, keyvalue::Error> {
        Ok(self.current(&key)?.is_some())
    }

    fn list_keys(
        &mut self,
        prefix: String,
        cursor: Option<String>,
    ) -> Result<Vec<String>, keyvalue::Error> {
        // Ask for enough committed keys that buffered deletes cannot leave
        // the page short.
        let deletes = self.effects.writes.values().filter(|w| w.is_none()).count();
        let committed = self
            .host
            .kv_list(&prefix, cursor.as_deref(), MAX_LIST_KEYS + deletes)
            .map_err(keyvalue::Error::Other)?;
        Ok(self
            .effects
            .merge_keys(committed, &prefix, cursor.as_deref(), MAX_LIST_KEYS))
    }

    fn compare_and_set(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool, keyvalue::Error> {
        let committed = match self.effects.buffered(&key) {
            Some(_) => None,
            None => Some(self.committed(&key)?),
        };
        match self
            .effects
            .compare_and_set(&key, committed.as_ref(), expected, value)
        {
            Ok(done) => Ok(done),
            Err(e @ crate::EffectError::TooManyEffects) => Err(kv_error(self.refuse(e))),
            Err(_) => Err(keyvalue::Error::AccessDenied),
        }
    }
}

impl config::Host for State {
    fn get(&mut self, key: String) -> Result<Option<String>, config::Error> {
        Ok(self
            .config
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone()))
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, config::Error> {
        Ok(self.config.as_ref().clone())
    }
}

impl logging::Host for State {
    fn log(&mut self, level: logging::Level, context: String, message: String) {
        if self.logs.len() >= MAX_LOG_LINES || self.log_bytes >= MAX_LOG_BYTES {
            return;
        }
        self.log_bytes += context.len() + message.len();
        let level = match level {
            logging::Level::Trace => LogLevel::Trace,
            logging::Level::Debug => LogLevel::Debug,
            logging::Level::Info => LogLevel::Info,
            logging::Level::Warn => LogLevel::Warn,
            logging::Level::Error => LogLevel::Error,
            logging::Level::Critical => LogLevel::Critical,
        };
        let at_ms = self.started.elapsed().as_millis() as u64;
        self.logs.push(LogLine {
            at_ms,
            level,
            context,
            message,
        });
        if self.logs.len() == MAX_LOG_LINES || self.log_bytes >= MAX_LOG_BYTES {
            self.logs.push(LogLine {
                at_ms,
                level: LogLevel::Warn,
                context: "sluice".into(),
                message: "log limit reached; later lines of this invocation are dropped".into(),
            });
        }
    }
}
