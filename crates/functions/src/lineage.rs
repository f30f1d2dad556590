//! Event lineage: which invocation handled which event, what it produced, and where events
//! were dead-lettered, kept for a bounded time and size, so `sluice trace EVENT_ID` can
//! show the causal tree of a chain from its root event.
//!
//! Keys of the `lineage` keyspace (ids are never empty and contain no NUL):
//! - `i\0{invocation}`: the [`Invocation`] record;
//! - `h\0{event}\0{started_ms}{invocation}`: `event` was an input of `invocation`; for a
//!   root event (one no invocation or saga produced) the value holds its [`RootInfo`], so
//!   roots need no record of their own;
//! - `o\0{producer}\0{event}`: `event` was sent to a queue by invocation `producer` (the
//!   message id is known only once it is delivered, so the consumer writes this edge);
//! - `e\0{event}`: the [`EventRecord`] of an event an invocation or saga produced (its
//!   root, type, where it went);
//! - `x\0{event}`: where the event was dead-lettered ([`DeadLettered`]);
//! - `c\0{cause}\0{event}`: `event` was caused by `cause` directly, with no invocation
//!   between them: a saga's step commands, caused by the saga (`saga-{id}`);
//! - `t\0{started_ms}{invocation}`: every key above written with that invocation, for
//!   retention.
//!
//! A committed invocation's records go in its commit's own batch ([`Entries`]); one that
//! committed nothing writes them in a batch of its own, not waited for: lineage explains
//! what happened, it never holds up the work.

use std::collections::HashSet;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_broker::context::{CORRELATION_ID, INVOCATION_ID};
use sluice_store::{Keyspace, Store};

use crate::Result;

/// Most events and invocations in one answered tree.
pub const TREE_NODES_MAX: usize = 10_000;
/// Deepest chain followed (the hop limit is usually far lower).
pub const TREE_DEPTH_MAX: usize = 256;

/// Lineage settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineageConfig {
    /// Record lineage at all.
    pub enabled: bool,
    /// Records older than this are removed.
    pub retention_ms: u64,
    /// Records beyond this many bytes are removed, oldest first.
    pub bytes_max: u64,
}

impl Default for LineageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            retention_ms: 24 * 3600 * 1000,
            bytes_max: 256 << 20,
        }
    }
}

/// An event as lineage knows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventRecord {
    /// The id of the chain's root event.
    pub correlation_id: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub ty: Option<String>,
    /// The topic it was published to (for an invocation's output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The invocation that produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ms: Option<u64>,
}

/// What lineage keeps of a root event, in its handled-by edges.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RootInfo {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub ty: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ms: Option<u64>,
}

/// One produced event: published to a topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Output {
    pub id: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub topic: String,
}

/// One invocation as lineage keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Invocation {
    pub id: String,
    pub function: String,
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// The queue or subscription (`topic/subscription`) its inputs came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub attempt: u32,
    /// `success`, `partial_failure` or `failed`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_ms: u64,
    pub duration_us: u64,
    /// Its input event ids (a batch has several).
    pub inputs: Vec<String>,
    /// What it published (empty unless its effects were committed).
    pub outputs: Vec<Output>,
    /// Queues it sent messages to.
    pub sent_to: Vec<String>,
}

/// Where an event was dead-lettered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeadLettered {
    pub queue: String,
    /// `None` when it was removed for lack of a dead-letter queue.
    pub dead_letter_queue: Option<String>,
    pub reason: String,
    pub attempts: u32,
    pub at_ms: u64,
}

/// An event in a causal tree.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventNode {
    pub id: String,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub ty: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_ms: Option<u64>,
    /// Every invocation that had it as input, attempts in order.
    pub handled_by: Vec<InvocationNode>,
    /// Events it caused directly: a saga's step commands.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub caused: Vec<EventNode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_lettered: Option<DeadLettered>,
}

/// An invocation in a causal tree, with the events it produced.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InvocationNode {
    #[serde(flatten)]
    pub invocation: Invocation,
    /// Published events and delivered sent messages it caused.
    pub caused: Vec<EventNode>,
}

/// A causal tree from a chain's root event.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Tree {
    /// The event asked about.
    pub event: String,
    pub correlation_id: String,
    pub root: EventNode,
    /// Whether the tree was cut at [`TREE_NODES_MAX`] nodes.
    pub truncated: bool,
}

fn key(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = vec![tag, 0];
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    end.push(0xff);
    end
}

/// What retention needs of one write: its keys and their size. Encoded compactly as the
/// size (8 bytes) then each key as a 2-byte length and its bytes.
struct Written {
    keys: Vec<Vec<u8>>,
    bytes: u64,
}

impl Written {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.keys.iter().map(|k| k.len() + 2).sum::<usize>());
        out.extend_from_slice(&self.bytes.to_be_bytes());
        for k in &self.keys {
            out.extend_from_slice(&(k.len().min(u16::MAX as usize) as u16).to_be_bytes());
            out.extend_from_slice(&k[..k.len().min(u16::MAX as usize)]);
        }
        out
    }

    fn decode(v: &[u8]) -> Option<Self> {
        let bytes = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
        let mut keys = Vec::new();
        let mut rest = &v[8..];
        while !rest.is_empty() {
            let n = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
            keys.push(rest.get(2..2 + n)?.to_vec());
            rest = &rest[2 + n..];
        }
        Some(Self { keys, bytes })
    }
}

/// An invocation's lineage writes, built before its commit so they can be written in the
/// commit's own batch.
pub(crate) struct Entries {
    pub(crate) puts: Vec<(Vec<u8>, Vec<u8>)>,
    bytes: u64,
}

impl Entries {
    fn new() -> Self {
        Self {
            puts: Vec::new(),
            bytes: 0,
        }
    }

    fn put(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.bytes += (k.len() + v.len()) as u64;
        self.puts.push((k, v));
    }

    /// Adds the retention record `t_key`, naming every key put so far.
    fn retained(mut self, t_key: Vec<u8>) -> Self {
        let written = Written {
            keys: self.puts.iter().map(|(k, _)| k.clone()).collect(),
            bytes: self.bytes,
        };
        self.puts.push((t_key, written.encode()));
        self
    }

    /// Bytes these writes add to lineage, for the size cap.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The lineage store.
pub(crate) struct Lineage {
    store: Store,
    ks: Keyspace,
    config: LineageConfig,
    /// Bytes of lineage records kept, for the size cap.
    bytes: Mutex<u64>,
}

/// The ids an input event is known by: its own, and for a queue message that carries a
/// forwarded CloudEvent, that event's id too.
fn ids_of(event: &Map<String, Value>) -> Vec<String> {
    let mut ids: Vec<String> = event
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .into_iter()
        .collect();
    if event.get("type").and_then(Value::as_str) == Some("sluice.queue.message")
        && let Some(Value::Object(data)) = event.get("data")
        && data.contains_key("specversion")
        && let Some(id) = data.get("id").and_then(Value::as_str)
    {
        ids.push(id.to_owned());
    }
    ids
}

fn text(event: &Map<String, Value>, k: &str) -> Option<String> {
    event.get(k).and_then(Value::as_str).map(str::to_owned)
}

impl Lineage {
    pub(crate) fn open(store: Store, config: LineageConfig) -> Result<Self> {
        let ks = store.keyspace("lineage")?;
        let mut bytes = 0;
        for (_, v) in ks.range(b"t\0", b"t\x01", usize::MAX)? {
            if let Some(w) = Written::decode(&v) {
                bytes += w.bytes;
            }
        }
        Ok(Self {
            store,
            ks,
            config,
            bytes: Mutex::new(bytes),
        })
    }

    /// The keyspace lineage lives in, for writes that ride in another batch.
    pub(crate) fn keyspace(&self) -> &Keyspace {
        &self.ks
    }

    /// The writes that record an invocation of `inputs` with what it produced; `None`
    /// when lineage is off. Nothing is read: an input produced by an invocation (or a
    /// saga) already has its event record, written by its producer.
    pub(crate) fn entries(
        &self,
        inv: &Invocation,
        inputs: &[Map<String, Value>],
    ) -> Option<Entries> {
        if !self.config.enabled {
            return None;
        }
        let mut e = Entries::new();
        let started = inv.started_ms.to_be_bytes();
        let edge = [started.as_slice(), inv.id.as_bytes()].concat();
        for event in inputs {
            let ids = ids_of(event);
            let Some(own) = ids.first() else { continue };
            let producer = text(event, INVOCATION_ID);
            let correlation = text(event, CORRELATION_ID).unwrap_or_else(|| own.clone());
            let root = producer.is_none() && !event.contains_key("sagaid");
            let info = if root {
                let info = RootInfo {
                    ty: text(event, "type"),
                    time_ms: text(event, "time").and_then(|t| sluice_types::parse_rfc3339_ms(&t)),
                };
                serde_json::to_vec(&info).expect("serializes")
            } else {
                Vec::new()
            };
            for id in &ids {
                e.put(key(b'h', &[id.as_bytes(), &edge]), info.clone());
            }
            // A root that is not its chain's root (it names another correlation id) still
            // needs a record to find the tree from.
            if root && correlation != *own {
                let record = EventRecord {
                    correlation_id: correlation.clone(),
                    ty: text(event, "type"),
                    topic: None,
                    producer: None,
                    time_ms: None,
                };
                e.put(
                    key(b'e', &[own.as_bytes()]),
                    serde_json::to_vec(&record).expect("serializes"),
                );
            }
            // A message a function sent: its producer learns its id only now.
            if let Some(producer) = producer
                && event.get("type").and_then(Value::as_str) == Some("sluice.queue.message")
            {
                e.put(
                    key(b'o', &[producer.as_bytes(), own.as_bytes()]),
                    Vec::new(),
                );
                let record = EventRecord {
                    correlation_id: correlation.clone(),
                    ty: Some("sluice.queue.message".into()),
                    topic: None,
                    producer: Some(producer.clone()),
                    time_ms: text(event, "time").and_then(|t| sluice_types::parse_rfc3339_ms(&t)),
                };
                e.put(
                    key(b'e', &[own.as_bytes()]),
                    serde_json::to_vec(&record).expect("serializes"),
                );
            }
        }
        let correlation = inputs
            .first()
            .and_then(|e| text(e, CORRELATION_ID).or_else(|| text(e, "id")))
            .unwrap_or_default();
        for out in &inv.outputs {
            let record = EventRecord {
                correlation_id: correlation.clone(),
                ty: Some(out.ty.clone()),
                topic: Some(out.topic.clone()),
                producer: Some(inv.id.clone()),
                time_ms: Some(inv.started_ms + inv.duration_us / 1000),
            };
            e.put(
                key(b'e', &[out.id.as_bytes()]),
                serde_json::to_vec(&record).expect("serializes"),
            );
        }
        e.put(
            key(b'i', &[inv.id.as_bytes()]),
            serde_json::to_vec(inv).expect("serializes"),
        );
        Some(e.retained(key(b't', &[&edge])))
    }

    /// Writes lineage entries in a batch of their own (those of an invocation that
    /// committed nothing, a dead-letter move, a saga step), without waiting for them to be
    /// durable.
    pub(crate) fn write(&self, entries: Entries) -> Result<()> {
        let mut batch = self.store.batch();
        let bytes = entries.bytes;
        for (k, v) in entries.puts {
            batch.put(&self.ks, k, v);
        }
        self.store.write(batch)?;
        self.written(bytes);
        Ok(())
    }

    /// Counts lineage written (in another batch) against the size cap.
    pub(crate) fn written(&self, bytes: u64) {
        *self.bytes.lock().unwrap() += bytes;
    }

    /// Records that `event` left `queue` for its dead-letter queue (or was removed).
    pub(crate) fn dead_lettered(&self, event: &Map<String, Value>, d: &DeadLettered) -> Result<()> {
        if !self.config.enabled {
            return Ok(());
        }
        let value = serde_json::to_vec(d).expect("serializes");
        let mut e = Entries::new();
        let ids = ids_of(event);
        for id in &ids {
            e.put(key(b'x', &[id.as_bytes()]), value.clone());
        }
        let first = ids.first().map_or(&[][..], |id| id.as_bytes());
        let t_key = key(
            b't',
            &[&[d.at_ms.to_be_bytes().as_slice(), b"x", first].concat()],
        );
        self.write(e.retained(t_key))
    }

    /// Removes records older than the retention, then the oldest until under the size
    /// cap. Returns how many invocations' records were removed.
    pub(crate) fn prune(&self, now_ms: u64) -> Result<u64> {
        let cutoff = now_ms.saturating_sub(self.config.retention_ms);
        let mut removed = 0;
        loop {
            let page = self.ks.range(b"t\0", b"t\x01", 1_000)?;
            if page.is_empty() {
                return Ok(removed);
            }
            let mut batch = self.store.batch();
            let mut freed = 0;
            let mut done = false;
            for (k, v) in &page {
                let at = k
                    .get(2..10)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, u64::from_be_bytes);
                let over = *self.bytes.lock().unwrap() > self.config.bytes_max + freed;
                if at >= cutoff && !over {
                    done = true;
                    break;
                }
                if let Some(w) = Written::decode(v) {
                    for key in w.keys {
                        batch.delete(&self.ks, key);
                    }
                    freed += w.bytes;
                }
                batch.delete(&self.ks, k.clone());
                removed += 1;
            }
            self.store.write(batch)?;
            let mut bytes = self.bytes.lock().unwrap();
            *bytes = bytes.saturating_sub(freed);
            if done || page.len() < 1_000 {
                return Ok(removed);
            }
        }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, k: &[u8]) -> Result<Option<T>> {
        match self.ks.get(k)? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| crate::Error::Corrupt(e.to_string())),
            None => Ok(None),
        }
    }

    /// The causal tree of the chain `event` belongs to, from its root. `None` if lineage
    /// knows nothing of the event.
    pub(crate) fn tree(&self, event: &str) -> Result<Option<Tree>> {
        let correlation = match self.get::<EventRecord>(&key(b'e', &[event.as_bytes()]))? {
            Some(known) => known.correlation_id,
            // A root event is its own chain's root; it is known if something handled it.
            None if self.root_info(event)?.is_some() => event.to_owned(),
            None => return Ok(None),
        };
        let mut budget = TREE_NODES_MAX;
        let mut seen = HashSet::new();
        let root = self.event_node(&correlation, 0, &mut budget, &mut seen)?;
        Ok(Some(Tree {
            event: event.to_owned(),
            correlation_id: correlation,
            root,
            truncated: budget == 0,
        }))
    }

    /// What the first handled-by edge of a root event says of it.
    fn root_info(&self, id: &str) -> Result<Option<RootInfo>> {
        let prefix = [key(b'h', &[id.as_bytes()]), vec![0]].concat();
        Ok(self
            .ks
            .range(&prefix, &prefix_end(&prefix), 1)?
            .into_iter()
            .next()
            .map(|(_, v)| {
                serde_json::from_slice(&v).unwrap_or(RootInfo {
                    ty: None,
                    time_ms: None,
                })
            }))
    }

    fn event_node(
        &self,
        id: &str,
        depth: usize,
        budget: &mut usize,
        seen: &mut HashSet<String>,
    ) -> Result<EventNode> {
        *budget = budget.saturating_sub(1);
        seen.insert(id.to_owned());
        let record: Option<EventRecord> = self.get(&key(b'e', &[id.as_bytes()]))?;
        let root = match &record {
            Some(_) => None,
            None => self.root_info(id)?,
        };
        let mut node = EventNode {
            id: id.to_owned(),
            ty: record
                .as_ref()
                .and_then(|r| r.ty.clone())
                .or_else(|| root.as_ref().and_then(|r| r.ty.clone())),
            topic: record.as_ref().and_then(|r| r.topic.clone()),
            time_ms: record
                .as_ref()
                .and_then(|r| r.time_ms)
                .or_else(|| root.as_ref().and_then(|r| r.time_ms)),
            handled_by: Vec::new(),
            caused: Vec::new(),
            dead_lettered: self.get(&key(b'x', &[id.as_bytes()]))?,
        };
        if depth >= TREE_DEPTH_MAX {
            return Ok(node);
        }
        let prefix = [key(b'h', &[id.as_bytes()]), vec![0]].concat();
        for (k, _) in self.ks.range(&prefix, &prefix_end(&prefix), *budget)? {
            if *budget == 0 {
                break;
            }
            let Some(inv_id) = k.get(prefix.len() + 8..) else {
                continue;
            };
            let Some(invocation) = self.get::<Invocation>(&key(b'i', &[inv_id]))? else {
                continue;
            };
            *budget = budget.saturating_sub(1);
            let mut caused_ids: Vec<String> =
                invocation.outputs.iter().map(|o| o.id.clone()).collect();
            let sent = [key(b'o', &[invocation.id.as_bytes()]), vec![0]].concat();
            for (k, _) in self.ks.range(&sent, &prefix_end(&sent), *budget)? {
                caused_ids.push(String::from_utf8_lossy(&k[sent.len()..]).into_owned());
            }
            let mut caused = Vec::new();
            for c in caused_ids {
                if *budget == 0 {
                    break;
                }
                if seen.contains(&c) {
                    continue;
                }
                caused.push(self.event_node(&c, depth + 1, budget, seen)?);
            }
            node.handled_by.push(InvocationNode { invocation, caused });
        }
        let direct = [key(b'c', &[id.as_bytes()]), vec![0]].concat();
        for (k, _) in self.ks.range(&direct, &prefix_end(&direct), *budget)? {
            let child = String::from_utf8_lossy(&k[direct.len()..]).into_owned();
            if *budget == 0 {
                break;
            }
            if seen.contains(&child) {
                continue;
            }
            node.caused
                .push(self.event_node(&child, depth + 1, budget, seen)?);
        }
        Ok(node)
    }

    /// Records a saga step's command event, caused by its saga (`saga`, the saga's stream
    /// name, is the chain's root): the invocations that handle it hang below it.
    pub(crate) fn saga_step(
        &self,
        saga: &str,
        event: &str,
        ty: &str,
        target: Option<&str>,
        at_ms: u64,
    ) -> Result<()> {
        if !self.config.enabled {
            return Ok(());
        }
        let mut e = Entries::new();
        let root = EventRecord {
            correlation_id: saga.to_owned(),
            ty: Some("sluice.saga".into()),
            topic: None,
            producer: None,
            time_ms: None,
        };
        e.put(
            key(b'e', &[saga.as_bytes()]),
            serde_json::to_vec(&root).expect("serializes"),
        );
        let step = EventRecord {
            correlation_id: saga.to_owned(),
            ty: Some(ty.to_owned()),
            topic: target.map(str::to_owned),
            producer: None,
            time_ms: Some(at_ms),
        };
        e.put(
            key(b'e', &[event.as_bytes()]),
            serde_json::to_vec(&step).expect("serializes"),
        );
        e.put(key(b'c', &[saga.as_bytes(), event.as_bytes()]), Vec::new());
        let t_key = key(
            b't',
            &[&[at_ms.to_be_bytes().as_slice(), b"s", event.as_bytes()].concat()],
        );
        self.write(e.retained(t_key))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn forwarded_events_are_known_by_both_ids() {
        let wrapper = event(json!({"id": "m-1", "type": "sluice.queue.message",
            "data": {"specversion": "1.0", "id": "e-1", "type": "x"}}));
        assert_eq!(ids_of(&wrapper), vec!["m-1", "e-1"]);
        let plain = event(json!({"id": "m-2", "type": "sluice.queue.message", "data": {"id": 3}}));
        assert_eq!(ids_of(&plain), vec!["m-2"]);
        assert_eq!(ids_of(&event(json!({"type": "x"}))), Vec::<String>::new());
    }

    #[test]
    fn retention_records_round_trip() {
        let w = Written {
            keys: vec![b"h\0a\0x".to_vec(), Vec::new(), vec![0xff; 300]],
            bytes: 12_345,
        };
        let back = Written::decode(&w.encode()).unwrap();
        assert_eq!((back.keys, back.bytes), (w.keys, w.bytes));
        assert!(Written::decode(&[0; 7]).is_none());
        assert!(Written::decode(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 5, b'a']).is_none());
    }

    #[test]
    fn keys_sort_by_prefix_then_time() {
        let a = key(b'h', &[b"ev", &[0, 0, 0, 0, 0, 0, 0, 1]]);
        let b = key(b'h', &[b"ev", &[0, 0, 0, 0, 0, 0, 1, 0]]);
        let other = key(b'h', &[b"ev2", &[0; 8]]);
        assert!(a < b);
        let prefix = [key(b'h', &[b"ev"]), vec![0]].concat();
        assert!(a.starts_with(&prefix) && b.starts_with(&prefix));
        assert!(!other.starts_with(&prefix));
        assert!(b < prefix_end(&prefix));
    }
}
