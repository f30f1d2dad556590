//! The atomic commit of a function invocation: its input's ack (and nack of
//! the events it failed), the events it published, the messages it sent and
//! its key-value writes, in one store batch, after every check has passed.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sluice_store::Ticket;

use super::Engine;
use crate::{Error, Nack, NewMessage, Result, Waker};

/// Longest key-value scope (a function name) plus key, in bytes.
const KV_KEY_MAX: usize = 1024;

/// Everything one invocation changes, committed all at once or not at all.
#[derive(Debug, Default)]
pub struct Commit {
    /// The queue the input came from (a queue, or a subscription's queue).
    pub input_queue: Option<String>,
    /// Receipts of the input messages that succeeded.
    pub ack: Vec<String>,
    /// Receipts of input messages that failed, each with its reason.
    pub nack: Vec<(String, String)>,
    /// Events to publish, in order, by topic.
    pub publish: Vec<(String, Map<String, Value>)>,
    /// Messages to send, in order, by queue.
    pub send: Vec<(String, NewMessage)>,
    /// Whose key-value state `writes` and `expected` are.
    pub kv_scope: String,
    /// Key-value writes: `None` deletes.
    pub writes: BTreeMap<String, Option<Vec<u8>>>,
    /// Values keys must still have (`None`: absent) for the commit to happen.
    pub expected: BTreeMap<String, Option<Vec<u8>>>,
    /// The caller's own records that commit with the rest, in its own keyspace (an
    /// invocation's lineage): one journal write instead of two.
    pub records: Option<(sluice_store::Keyspace, Vec<Record>)>,
}

/// A key and its value.
pub type Record = (Vec<u8>, Vec<u8>);

/// Key of `key` in the key-value keyspace under `scope`.
pub(crate) fn kv_key(scope: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(scope.len() + 1 + key.len());
    k.extend_from_slice(scope.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

impl Engine {
    /// The committed value of `key` in `scope`.
    pub(crate) fn kv_get(&self, scope: &str, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.ks.kv.get(&kv_key(scope, key))?.map(|v| v.to_vec()))
    }

    /// Keys of `scope` starting with `prefix`, after `after`, at most `limit`.
    pub(crate) fn kv_list(
        &self,
        scope: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let base = kv_key(scope, "");
        let start = match after {
            Some(a) if a >= prefix => {
                let mut k = kv_key(scope, a);
                k.push(0);
                k
            }
            _ => kv_key(scope, prefix),
        };
        let mut end = kv_key(scope, prefix);
        end.push(0xff);
        let keys = self.ks.kv.keys(&start, &end, limit)?;
        Ok(keys
            .iter()
            .filter_map(|k| {
                std::str::from_utf8(&k[base.len()..])
                    .ok()
                    .map(str::to_owned)
            })
            .filter(|k| k.starts_with(prefix))
            .collect())
    }

    /// Deletes all key-value state of `scope`.
    pub(crate) fn kv_drop(&mut self, scope: &str) -> Result<Ticket> {
        let mut batch = self.store.batch();
        let start = kv_key(scope, "");
        let mut end = start.clone();
        end.push(0xff);
        for k in self.ks.kv.keys(&start, &end, usize::MAX)? {
            batch.delete(&self.ks.kv, k);
        }
        self.write(batch)
    }

    /// Whether `message` could be sent to `queue` now.
    pub(crate) fn check_send(&self, queue: &str, message: &NewMessage) -> Result<()> {
        let q = self.queue(queue)?;
        if q.source.is_some() {
            return Err(Error::InvalidMessage(format!(
                "{queue:?} is a subscription's queue; publish to its topic instead"
            )));
        }
        super::validate_message(message, &q.config)
    }

    /// Commits `c` in one batch, or nothing if any receipt is no longer
    /// held, any expected key changed, or any effect became invalid.
    pub(crate) fn commit(&mut self, c: Commit, now: u64) -> Result<(Ticket, Vec<Waker>)> {
        // Every check first: nothing in memory or in the batch changes
        // unless the whole commit goes through.
        if let Some(q) = &c.input_queue {
            for receipt in c.ack.iter().chain(c.nack.iter().map(|(r, _)| r)) {
                self.check_receipt(q, receipt)?;
            }
        } else if !c.ack.is_empty() || !c.nack.is_empty() {
            return Err(Error::InvalidMessage("receipts without a queue".into()));
        }
        for (key, want) in &c.expected {
            if kv_key(&c.kv_scope, key).len() > KV_KEY_MAX {
                return Err(Error::InvalidMessage(format!("key {key:?} is too long")));
            }
            if self.kv_get(&c.kv_scope, key)? != *want {
                return Err(Error::KvConflict(key.clone()));
            }
        }
        for (topic, event) in &c.publish {
            self.check_publish(topic, event, now)?;
        }
        for (queue, message) in &c.send {
            self.check_send(queue, message)?;
        }

        let mut batch = self.store.batch();
        let mut woken = Vec::new();
        let mut by_topic: Vec<(String, Vec<Map<String, Value>>)> = Vec::new();
        for (topic, event) in c.publish {
            match by_topic.iter_mut().find(|(t, _)| *t == topic) {
                Some((_, events)) => events.push(event),
                None => by_topic.push((topic, vec![event])),
            }
        }
        for (topic, events) in by_topic {
            let (_, w) = self.publish_into(&mut batch, &topic, events, now)?;
            woken.extend(w);
        }
        let mut by_queue: Vec<(String, Vec<NewMessage>)> = Vec::new();
        for (queue, message) in c.send {
            match by_queue.iter_mut().find(|(q, _)| *q == queue) {
                Some((_, messages)) => messages.push(message),
                None => by_queue.push((queue, vec![message])),
            }
        }
        for (queue, messages) in by_queue {
            let (_, w) = self.send_into(&mut batch, &queue, messages, now)?;
            woken.push(w);
        }
        for (key, value) in &c.writes {
            let k = kv_key(&c.kv_scope, key);
            match value {
                Some(v) => batch.put(&self.ks.kv, k, v.clone()),
                None => batch.delete(&self.ks.kv, k),
            }
        }
        if let Some(q) = &c.input_queue {
            if !c.ack.is_empty() {
                let (_, w) = self.ack_into(&mut batch, q, &c.ack, now)?;
                woken.extend(w);
            }
            for (receipt, reason) in &c.nack {
                let nack = Nack {
                    delay: None,
                    reason: Some(reason.clone()),
                };
                let (_, w) =
                    self.nack_into(&mut batch, q, std::slice::from_ref(receipt), &nack, now)?;
                woken.extend(w);
            }
        }
        if let Some((ks, records)) = c.records {
            for (k, v) in records {
                batch.put(&ks, k, v);
            }
        }
        Ok((self.write(batch)?, woken))
    }
}
