//! Topics and subscriptions inside the engine: the offset-addressed log each event is
//! stored in once, retention and compaction of that log, and subscriptions as queues of the
//! delivery engine whose messages are read from the log instead of stored per queue.
//!
//! A subscription is a [`QueueState`] with a [`LogSource`]: its cursor is the next topic
//! offset it has not taken yet. A standard subscription takes events straight from the log
//! into leases (the delivery state is written at the first receive), a FIFO one moves them
//! into its group index first, a forwarding one sends them into its target queue. Retries,
//! leases, dead-lettering and redrive are the queue engine's, unchanged.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_store::{Batch, Ticket};
use sluice_types::Name;
use tokio::sync::Notify;

use super::{Engine, QueueMeta, QueueState, WINDOW_MAX, not_found};
use crate::codec::{
    self, Corrupt, Counters, LogEntry, MessageRecord, Reader, Stateless, Writer, kind,
};
use crate::event::{self, EventError};
use crate::filter::Filter;
use crate::topic_config::{Start, SubscriptionConfig, Target, TopicConfig};
use crate::{
    Error, EventPage, PublishOutcome, Result, StoredEvent, SubscriptionInfo, TopicInfo, TopicStats,
    Waker,
};

/// Events a FIFO subscription moves from the log into its group index ahead of delivery.
const FIFO_AHEAD_MAX: u64 = 4_096;
/// Log entries examined per background step (forwarding, retention).
const STEP: usize = 1_000;
/// Log entries examined per compaction step.
const COMPACTION_STEP: usize = 10_000;
/// Log entries a receive examines for matches before it answers with what it found.
const SCAN_MAX: usize = 4 * WINDOW_MAX;
/// Bytes of scanned events a subscription keeps in memory ahead of delivery.
const WINDOW_BYTES_MAX: usize = 4 << 20;
/// How often retention and compaction run per topic.
const HOUSEKEEPING_MS: u64 = 1_000;

/// Matching events of a log scan, by offset, and the offset after the last one examined.
type Scanned = (Vec<(u64, LogEntry)>, u64);

fn topic_meta_key(name: &str) -> Vec<u8> {
    [b"topic/".as_slice(), name.as_bytes()].concat()
}

fn sub_meta_key(topic: &str, sub: &str) -> Vec<u8> {
    [b"sub/".as_slice(), topic.as_bytes(), b"/", sub.as_bytes()].concat()
}

pub(super) fn counters_key(tid: u64) -> Vec<u8> {
    [b"tcounters/".as_slice(), &tid.to_be_bytes()].concat()
}

fn table_key(tid: u64, key: &str) -> Vec<u8> {
    codec::index_key(tid, kind::TABLE, &[key.as_bytes()])
}

/// The engine's name of a subscription's queue. `/` never appears in a resource name.
pub(crate) fn subscription_queue(topic: &str, sub: &str) -> String {
    format!("{topic}/{sub}")
}

#[derive(Serialize, Deserialize)]
struct TopicMeta {
    id: u64,
    name: String,
    created_ms: u64,
    config: TopicConfig,
}

#[derive(Serialize, Deserialize)]
struct SubMeta {
    id: u64,
    topic: String,
    name: String,
    created_ms: u64,
    config: SubscriptionConfig,
}

/// Persisted per-topic counters, rewritten in every batch that changes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TopicCounters {
    /// No retained event has a smaller offset.
    pub first_offset: u64,
    /// The offset the next event gets.
    pub next_offset: u64,
    pub events: u64,
    pub bytes: u64,
    pub published_total: u64,
    pub dedup_hits_total: u64,
    pub expired_total: u64,
    pub compacted_total: u64,
    /// Publish times never go backwards, so a time maps to an offset by binary search.
    pub last_publish_ms: u64,
    /// Compacted topics: live keys.
    pub keys: u64,
    /// Compacted topics: where the running compaction pass is.
    pub compact_cursor: u64,
    /// Compacted topics: the end of the log when the running pass started.
    pub compact_pass_end: u64,
}

impl TopicCounters {
    fn fields(&mut self) -> [&mut u64; 12] {
        [
            &mut self.first_offset,
            &mut self.next_offset,
            &mut self.events,
            &mut self.bytes,
            &mut self.published_total,
            &mut self.dedup_hits_total,
            &mut self.expired_total,
            &mut self.compacted_total,
            &mut self.last_publish_ms,
            &mut self.keys,
            &mut self.compact_cursor,
            &mut self.compact_pass_end,
        ]
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut copy = *self;
        let mut w = Writer(Vec::with_capacity(96));
        for v in copy.fields() {
            w.u64(*v);
        }
        w.0
    }

    fn decode(buf: &[u8]) -> std::result::Result<Self, Corrupt> {
        let mut r = Reader::new(buf, "topic counters");
        let mut c = Self::default();
        for v in c.fields() {
            *v = r.u64()?;
        }
        r.finish()?;
        Ok(c)
    }
}

pub(crate) struct TopicState {
    pub(crate) tid: u64,
    name: String,
    created_ms: u64,
    config: TopicConfig,
    pub(crate) counters: TopicCounters,
    /// Bytes of events published since the server started, for metrics.
    pub(crate) published_bytes: u64,
    notify: Waker,
    housekeeping_next_check: u64,
}

/// What makes a queue a subscription: the topic it reads and how it selects events.
pub(crate) struct LogSource {
    pub(crate) tid: u64,
    topic: String,
    subscription: String,
    config: SubscriptionConfig,
    filter: Filter,
    /// Matching events scanned ahead of the cursor, in order; the first ones keep their
    /// entry (up to `WINDOW_BYTES_MAX` in total) so delivering them needs no second read.
    window: VecDeque<(u64, Option<LogEntry>)>,
    /// The next offset not yet scanned into the window.
    scan_next: u64,
}

impl LogSource {
    /// The FIFO group of an event: its group attribute, or the empty group.
    pub(crate) fn group_of(&self, event: &[u8]) -> String {
        serde_json::from_slice::<Map<String, Value>>(event)
            .ok()
            .and_then(|m| event::attribute_text(&m, &self.config.group_attribute))
            .unwrap_or_default()
    }

    /// The queue a forwarding subscription sends its events into.
    pub(crate) fn forward_target(&self) -> Option<&str> {
        match &self.config.target {
            Target::Queue { queue } => Some(queue.as_str()),
            Target::Pull => None,
        }
    }

    fn matches(&self, event: &[u8]) -> Result<bool> {
        Ok(self.filter.matches_json(event).map_err(|_| Corrupt {
            what: "stored event",
        })?)
    }
}

/// A log entry as the delivery engine's message record.
pub(super) fn record_of(entry: LogEntry, group: Option<String>) -> MessageRecord {
    MessageRecord {
        sent_ms: entry.published_ms,
        group,
        dedup_id: None,
        attributes: b"{}".to_vec(),
        body: entry.event,
        dead_letter: None,
        stateless: Stateless::No,
    }
}

pub(crate) fn new_event_id(rng: &mut impl Rng) -> String {
    let v: u128 = rng.random();
    // A version 4, variant 1 UUID.
    let v = (v & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Engine {
    // ---- loading ----

    pub(super) fn load_topics(&mut self) -> Result<()> {
        for meta in self.load_metas::<TopicMeta>(b"topic/", "topic")? {
            let counters = match self.ks.meta.get(&counters_key(meta.id))? {
                Some(v) => TopicCounters::decode(&v)?,
                None => TopicCounters::default(),
            };
            self.topics.insert(
                meta.name.clone(),
                TopicState {
                    tid: meta.id,
                    name: meta.name,
                    created_ms: meta.created_ms,
                    config: meta.config,
                    counters,
                    published_bytes: 0,
                    notify: Arc::new(Notify::new()),
                    housekeeping_next_check: 0,
                },
            );
        }
        Ok(())
    }

    pub(super) fn load_subscriptions(&mut self, now: u64) -> Result<()> {
        for meta in self.load_metas::<SubMeta>(b"sub/", "subscription")? {
            let counters = self.load_counters(meta.id)?;
            let q = self.subscription_state(meta, counters)?;
            self.install(q, now)?;
        }
        Ok(())
    }

    fn subscription_state(&self, meta: SubMeta, counters: Counters) -> Result<QueueState> {
        let tid = self.topic(&meta.topic)?.tid;
        let filter = Filter::compile(&meta.config.filter)?;
        let mut q = QueueState::new(
            QueueMeta {
                id: meta.id,
                name: subscription_queue(&meta.topic, &meta.name),
                created_ms: meta.created_ms,
                config: meta.config.queue_config(),
            },
            counters,
        );
        q.source = Some(LogSource {
            tid,
            topic: meta.topic,
            subscription: meta.name,
            config: meta.config,
            filter,
            window: VecDeque::new(),
            scan_next: counters.cursor,
        });
        Ok(q)
    }

    /// A topic users may write to or delete: internal topics (`$all`) are written only by
    /// the event store.
    fn user_topic(&self, name: &str) -> Result<&TopicState> {
        if name.starts_with('$') {
            return Err(Error::TopicNotFound(name.to_owned()));
        }
        self.topic(name)
    }

    pub(super) fn topic(&self, name: &str) -> Result<&TopicState> {
        self.topics
            .get(name)
            .ok_or_else(|| Error::TopicNotFound(name.to_owned()))
    }

    pub(super) fn topic_mut(&mut self, name: &str) -> Result<&mut TopicState> {
        self.topics
            .get_mut(name)
            .ok_or_else(|| Error::TopicNotFound(name.to_owned()))
    }

    fn source(&self, name: &str) -> Result<&LogSource> {
        self.queue(name)?
            .source
            .as_ref()
            .ok_or_else(|| not_found(name))
    }

    fn source_mut(&mut self, name: &str) -> Result<&mut LogSource> {
        self.queue_mut(name)?
            .source
            .as_mut()
            .ok_or_else(|| not_found(name))
    }

    // ---- topics ----

    pub(crate) fn put_topic(
        &mut self,
        name: &Name,
        config: TopicConfig,
        now: u64,
    ) -> Result<(bool, Ticket)> {
        self.put_topic_named(name.as_str(), config, now)
    }

    /// Creates topic `name` with `config` (the event store's internal `$all` topic, whose
    /// name is not a [`Name`]).
    pub(super) fn create_topic(
        &mut self,
        name: &str,
        config: TopicConfig,
        now: u64,
    ) -> Result<Ticket> {
        Ok(self.put_topic_named(name, config, now)?.1)
    }

    fn put_topic_named(
        &mut self,
        name: &str,
        config: TopicConfig,
        now: u64,
    ) -> Result<(bool, Ticket)> {
        let mut batch = self.store.batch();
        let created = match self.topics.get_mut(name) {
            Some(t) => {
                if t.config.compaction.is_some() != config.compaction.is_some() {
                    return Err(Error::CompactionImmutable);
                }
                t.config = config;
                false
            }
            None => {
                let tid = self.allocate_id(&mut batch);
                self.topics.insert(
                    name.to_string(),
                    TopicState {
                        tid,
                        name: name.to_string(),
                        created_ms: now,
                        config,
                        counters: TopicCounters::default(),
                        published_bytes: 0,
                        notify: Arc::new(Notify::new()),
                        housekeeping_next_check: 0,
                    },
                );
                self.dirty_topics.insert(name.to_string());
                true
            }
        };
        let t = &self.topics[name];
        let meta = TopicMeta {
            id: t.tid,
            name: t.name.clone(),
            created_ms: t.created_ms,
            config: t.config.clone(),
        };
        batch.put(
            &self.ks.meta,
            topic_meta_key(name),
            serde_json::to_vec(&meta).expect("topic meta serializes"),
        );
        Ok((created, self.write(batch)?))
    }

    fn subscriptions_of(&self, topic: &str) -> Vec<&LogSource> {
        let mut subs: Vec<&LogSource> = self
            .queues
            .values()
            .filter_map(|q| q.source.as_ref())
            .filter(|s| s.topic == topic)
            .collect();
        subs.sort_by(|a, b| a.subscription.cmp(&b.subscription));
        subs
    }

    fn topic_info(&self, t: &TopicState) -> TopicInfo {
        let c = &t.counters;
        TopicInfo {
            name: t.name.clone(),
            config: t.config.clone(),
            created_ms: t.created_ms,
            stats: TopicStats {
                first_offset: c.first_offset,
                next_offset: c.next_offset,
                events: c.events,
                bytes: c.bytes,
                keys: t.config.compaction.as_ref().map(|_| c.keys),
                published_total: c.published_total,
                published_bytes: t.published_bytes,
                dedup_hits_total: c.dedup_hits_total,
                expired_total: c.expired_total,
                compacted_total: c.compacted_total,
            },
            subscriptions: self
                .subscriptions_of(&t.name)
                .into_iter()
                .map(|s| s.subscription.clone())
                .collect(),
        }
    }

    pub(crate) fn get_topic(&self, name: &str) -> Result<TopicInfo> {
        Ok(self.topic_info(self.topic(name)?))
    }

    /// Every topic, internal ones included, by name: what `/metrics` reports.
    pub(crate) fn all_topics(&self) -> Vec<TopicInfo> {
        let mut names: Vec<&String> = self.topics.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|n| self.topic_info(&self.topics[n]))
            .collect()
    }

    /// The topic, subscription name and backlog (events after the cursor) of a
    /// subscription's queue; `None` for a queue.
    pub(super) fn subscription_of(&self, q: &QueueState) -> Option<(String, String, u64)> {
        let src = q.source.as_ref()?;
        let next = self
            .topics
            .get(&src.topic)
            .map_or(0, |t| t.counters.next_offset);
        Some((
            src.topic.clone(),
            src.subscription.clone(),
            next.saturating_sub(q.counters.cursor),
        ))
    }

    pub(crate) fn list_topics(&self) -> Vec<TopicInfo> {
        // Internal topics (`$all`) are not the user's.
        let mut names: Vec<&String> = self.topics.keys().filter(|n| !n.starts_with('$')).collect();
        names.sort();
        names
            .into_iter()
            .map(|n| self.topic_info(&self.topics[n]))
            .collect()
    }

    /// Deletes a topic with its log and its subscriptions.
    pub(crate) fn delete_topic(&mut self, name: &str) -> Result<(Ticket, Vec<Waker>)> {
        let tid = self.user_topic(name)?.tid;
        let mut woken = vec![self.topic(name)?.notify.clone()];
        let subs: Vec<String> = self
            .subscriptions_of(name)
            .into_iter()
            .map(|s| s.subscription.clone())
            .collect();
        for sub in subs {
            let (_, w) = self.delete_subscription(name, &sub)?;
            woken.push(w);
        }
        let prefix = codec::queue_prefix(tid);
        self.delete_prefix(&self.ks.log, &prefix)?;
        self.delete_prefix(&self.ks.index, &prefix)?;
        let mut batch = self.store.batch();
        batch.delete(&self.ks.meta, topic_meta_key(name));
        batch.delete(&self.ks.meta, counters_key(tid));
        self.topics.remove(name);
        self.dirty_topics.remove(name);
        Ok((self.write(batch)?, woken))
    }

    // ---- publish and read ----

    /// Appends events to topic `name`'s log. Returns the wakers of the topic's readers and
    /// subscriptions.
    /// Whether `event` could be published to topic `name` now: the checks of
    /// [`Self::publish_into`] that can refuse an event, without storing it.
    pub(crate) fn check_publish(
        &self,
        name: &str,
        event: &Map<String, Value>,
        now: u64,
    ) -> Result<()> {
        let config = &self.user_topic(name)?.config;
        let ev = event::normalize(event.clone(), now, || "unassigned".to_owned(), 1)
            .map_err(Error::InvalidEvent)?;
        let size = serde_json::to_vec(&ev.value)
            .expect("a JSON object serializes")
            .len();
        if size as u64 > config.max_event_size.0 {
            return Err(Error::EventTooLarge {
                size,
                max: config.max_event_size.0,
            });
        }
        compaction_key(config, &ev).map(|_| ())
    }

    pub(crate) fn publish(
        &mut self,
        name: &str,
        events: Vec<Map<String, Value>>,
        now: u64,
    ) -> Result<(Vec<PublishOutcome>, Ticket, Vec<Waker>)> {
        let mut batch = self.store.batch();
        let (outcomes, woken) = self.publish_into(&mut batch, name, events, now)?;
        Ok((outcomes, self.write(batch)?, woken))
    }

    /// [`Self::publish`] into a caller's batch, which the caller writes.
    pub(crate) fn publish_into(
        &mut self,
        batch: &mut Batch,
        name: &str,
        events: Vec<Map<String, Value>>,
        now: u64,
    ) -> Result<(Vec<PublishOutcome>, Vec<Waker>)> {
        let (tid, config) = {
            let t = self.user_topic(name)?;
            (t.tid, t.config.clone())
        };
        let mut outcomes = Vec::with_capacity(events.len());
        let mut batch_dedup: HashMap<Vec<u8>, u64> = HashMap::new();
        // Compacted topics: whether each key touched in this batch is live after it.
        let mut batch_keys: HashMap<String, bool> = HashMap::new();
        for obj in events {
            let random: u128 = self.rng.random();
            let rng = &mut self.rng;
            let ev = match event::normalize(obj, now, || new_event_id(rng), random) {
                Ok(ev) => ev,
                Err(e) => {
                    outcomes.push(PublishOutcome::Failed(Error::InvalidEvent(e)));
                    continue;
                }
            };
            let json = serde_json::to_vec(&ev.value).expect("a JSON object serializes");
            if json.len() as u64 > config.max_event_size.0 {
                outcomes.push(PublishOutcome::Failed(Error::EventTooLarge {
                    size: json.len(),
                    max: config.max_event_size.0,
                }));
                continue;
            }
            let (key, tombstone) = match compaction_key(&config, &ev) {
                Ok(k) => k,
                Err(e) => {
                    outcomes.push(PublishOutcome::Failed(e));
                    continue;
                }
            };
            let dedup_id = ev.client_id.then(|| {
                let mut k = ev.source.as_bytes().to_vec();
                k.push(0);
                k.extend_from_slice(ev.id.as_bytes());
                k
            });
            if let Some(d) = &dedup_id {
                let existing = match batch_dedup.get(d) {
                    Some(o) => Some(*o),
                    None => self.dedup_lookup(tid, d, now)?,
                };
                if let Some(offset) = existing {
                    self.topic_mut(name)?.counters.dedup_hits_total += 1;
                    self.dirty_topics.insert(name.to_owned());
                    outcomes.push(PublishOutcome::Duplicate { id: ev.id, offset });
                    continue;
                }
            }
            let t = self.topic_mut(name)?;
            let offset = t.counters.next_offset;
            t.counters.next_offset += 1;
            let published_ms = now.max(t.counters.last_publish_ms);
            t.counters.last_publish_ms = published_ms;
            t.counters.events += 1;
            t.counters.bytes += json.len() as u64;
            t.counters.published_total += 1;
            t.published_bytes += json.len() as u64;
            if let Some(d) = &dedup_id {
                self.remember_dedup(batch, tid, d, now + config.dedup_window.as_millis(), offset);
                batch_dedup.insert(d.clone(), offset);
            }
            if let Some(k) = &key {
                let was_live = match batch_keys.get(k) {
                    Some(live) => *live,
                    None => self.ks.index.contains(&table_key(tid, k))?,
                };
                if tombstone {
                    batch.delete(&self.ks.index, table_key(tid, k));
                } else {
                    batch.put(
                        &self.ks.index,
                        table_key(tid, k),
                        offset.to_le_bytes().to_vec(),
                    );
                }
                let t = self.topic_mut(name)?;
                match (was_live, tombstone) {
                    (true, true) => t.counters.keys -= 1,
                    (false, false) => t.counters.keys += 1,
                    _ => {}
                }
                batch_keys.insert(k.clone(), !tombstone);
            }
            let entry = LogEntry {
                published_ms,
                key,
                tombstone,
                event: json,
            };
            batch.put(&self.ks.log, codec::log_key(tid, offset), entry.encode());
            self.dirty_topics.insert(name.to_owned());
            outcomes.push(PublishOutcome::Published { id: ev.id, offset });
        }
        Ok((outcomes, self.topic_wakers(name)?))
    }

    /// Wakers of topic `name`'s live readers and of its subscriptions.
    pub(super) fn topic_wakers(&self, name: &str) -> Result<Vec<Waker>> {
        let t = self.topic(name)?;
        let mut woken = vec![t.notify.clone()];
        woken.extend(
            self.queues
                .values()
                .filter(|q| q.source.as_ref().is_some_and(|s| s.tid == t.tid))
                .map(|q| q.notify.clone()),
        );
        Ok(woken)
    }

    pub(crate) fn topic_notify(&self, name: &str) -> Result<Waker> {
        Ok(self.topic(name)?.notify.clone())
    }

    /// Up to `limit` events of topic `name` from offset `from`, and where the next page
    /// starts.
    pub(crate) fn read_events(&self, name: &str, from: u64, limit: usize) -> Result<EventPage> {
        let t = self.topic(name)?;
        let tid = t.tid;
        let from = from.max(t.counters.first_offset);
        let end = codec::prefix_end(&codec::queue_prefix(tid));
        let mut events = Vec::new();
        let mut next = from;
        for (k, v) in self.ks.log.range(&codec::log_key(tid, from), &end, limit)? {
            let offset = codec::u64_at(&k, 8)?;
            let e = LogEntry::decode(&v)?;
            next = offset + 1;
            events.push(StoredEvent {
                offset,
                published_ms: e.published_ms,
                event: e.event,
            });
        }
        if events.len() < limit {
            next = next.max(t.counters.next_offset);
        }
        Ok(EventPage { events, next })
    }

    /// The first offset of topic `name` whose event was published at or after `time_ms`.
    pub(crate) fn offset_at_time(&self, name: &str, time_ms: u64) -> Result<u64> {
        let t = self.topic(name)?;
        let tid = t.tid;
        let end = codec::prefix_end(&codec::queue_prefix(tid));
        let (mut lo, mut hi) = (t.counters.first_offset, t.counters.next_offset);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self
                .ks
                .log
                .range(&codec::log_key(tid, mid), &end, 1)?
                .first()
            {
                Some((k, v)) => {
                    let offset = codec::u64_at(k, 8)?;
                    if LogEntry::decode(v)?.published_ms >= time_ms {
                        hi = mid;
                    } else {
                        lo = offset + 1;
                    }
                }
                None => hi = mid,
            }
        }
        Ok(lo)
    }

    /// Resolves a position in topic `name` to an offset.
    fn position(&self, name: &str, at: Start) -> Result<u64> {
        let c = &self.topic(name)?.counters;
        match at {
            Start::Latest => Ok(c.next_offset),
            Start::Earliest => Ok(c.first_offset),
            Start::Offset(n) if n > c.next_offset => Err(Error::PositionOutOfRange(format!(
                "offset {n} is past the end of topic {name:?}, whose next offset is {}",
                c.next_offset
            ))),
            Start::Offset(n) => Ok(n.max(c.first_offset)),
            Start::Time(ms) => self.offset_at_time(name, ms),
        }
    }

    // ---- compacted topics ----

    fn compacted(&self, name: &str) -> Result<u64> {
        let t = self.topic(name)?;
        if t.config.compaction.is_none() {
            return Err(Error::NotCompacted(name.to_owned()));
        }
        Ok(t.tid)
    }

    /// The latest event of `key` in compacted topic `name`.
    pub(crate) fn table_get(&self, name: &str, key: &str) -> Result<StoredEvent> {
        let tid = self.compacted(name)?;
        let not_found = || Error::KeyNotFound {
            topic: name.to_owned(),
            key: key.to_owned(),
        };
        let v = self
            .ks
            .index
            .get(&table_key(tid, key))?
            .ok_or_else(not_found)?;
        self.table_event(tid, &v)
    }

    /// The event a key table entry points at.
    fn table_event(&self, tid: u64, entry: &[u8]) -> Result<StoredEvent> {
        let offset = codec::le_u64_at(entry, 0, "table entry")?;
        let e = self
            .ks
            .log
            .get(&codec::log_key(tid, offset))?
            .ok_or(Corrupt {
                what: "table entry without its event",
            })?;
        let e = LogEntry::decode(&e)?;
        Ok(StoredEvent {
            offset,
            published_ms: e.published_ms,
            event: e.event,
        })
    }

    /// Up to `limit` live keys of compacted topic `name` after `after`, in key order, each
    /// with its latest event.
    pub(crate) fn table_page(
        &self,
        name: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, StoredEvent)>> {
        let tid = self.compacted(name)?;
        let prefix = codec::index_key(tid, kind::TABLE, &[]);
        let start = match after {
            Some(a) => {
                let mut k = table_key(tid, a);
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for (k, v) in self
            .ks
            .index
            .range(&start, &codec::prefix_end(&prefix), limit)?
        {
            let key = String::from_utf8(k[prefix.len()..].to_vec())
                .map_err(|_| Corrupt { what: "table key" })?;
            out.push((key, self.table_event(tid, &v)?));
        }
        Ok(out)
    }

    // ---- subscriptions ----

    pub(crate) fn put_subscription(
        &mut self,
        topic: &str,
        sub: &Name,
        config: SubscriptionConfig,
        now: u64,
    ) -> Result<(bool, Ticket)> {
        let filter = Filter::compile(&config.filter)?;
        let tid = self.topic(topic)?.tid;
        if let Some(dlq) = &config.dead_letter_queue {
            let target = self
                .queues
                .get(dlq.as_str())
                .ok_or_else(|| Error::DeadLetterQueueNotFound(dlq.to_string()))?;
            if target.config.fifo != config.fifo {
                return Err(Error::DeadLetterQueueInvalid(format!(
                    "{dlq:?} must be {} like this subscription",
                    if config.fifo {
                        "FIFO"
                    } else {
                        "a standard queue"
                    }
                )));
            }
        }
        if let Target::Queue { queue } = &config.target
            && !self.queues.contains_key(queue.as_str())
        {
            return Err(Error::TargetQueueNotFound(queue.to_string()));
        }
        let qname = subscription_queue(topic, sub.as_str());
        let mut batch = self.store.batch();
        let created = match self.queues.get_mut(&qname) {
            Some(q) => {
                let src = q.source.as_mut().ok_or_else(|| not_found(&qname))?;
                if src.config.fifo != config.fifo {
                    return Err(Error::FifoImmutable);
                }
                // Events scanned ahead were matched with the old filter: scan them again.
                src.window.clear();
                src.scan_next = q.counters.cursor;
                q.config = config.queue_config();
                src.filter = filter;
                src.config = config;
                false
            }
            None => {
                let cursor = self.position(topic, config.start)?;
                let qid = self.allocate_id(&mut batch);
                let meta = SubMeta {
                    id: qid,
                    topic: topic.to_owned(),
                    name: sub.to_string(),
                    created_ms: now,
                    config,
                };
                let mut q = self.subscription_state(
                    meta,
                    Counters {
                        cursor,
                        ..Counters::default()
                    },
                )?;
                q.window_complete = true;
                debug_assert_eq!(q.source.as_ref().map(|s| s.tid), Some(tid));
                self.names.insert(qid, qname.clone());
                self.queues.insert(qname.clone(), q);
                self.dirty.insert(qid);
                true
            }
        };
        let q = &self.queues[&qname];
        let src = q.source.as_ref().expect("a subscription has a source");
        let meta = SubMeta {
            id: q.qid,
            topic: topic.to_owned(),
            name: sub.to_string(),
            created_ms: q.created_ms,
            config: src.config.clone(),
        };
        batch.put(
            &self.ks.meta,
            sub_meta_key(topic, sub.as_str()),
            serde_json::to_vec(&meta).expect("subscription meta serializes"),
        );
        Ok((created, self.write(batch)?))
    }

    fn subscription_info(&self, q: &QueueState, now: u64) -> Result<SubscriptionInfo> {
        let src = q.source.as_ref().ok_or_else(|| not_found(&q.name))?;
        let next = self.topic(&src.topic)?.counters.next_offset;
        Ok(SubscriptionInfo {
            topic: src.topic.clone(),
            name: src.subscription.clone(),
            config: src.config.clone(),
            created_ms: q.created_ms,
            cursor: q.counters.cursor,
            backlog: next.saturating_sub(q.counters.cursor),
            stats: q.stats(self.oldest_sent(q)?, now),
        })
    }

    pub(crate) fn get_subscription(
        &self,
        topic: &str,
        sub: &str,
        now: u64,
    ) -> Result<SubscriptionInfo> {
        self.topic(topic)?;
        self.subscription_info(self.queue(&subscription_queue(topic, sub))?, now)
    }

    pub(crate) fn list_subscriptions(
        &self,
        topic: &str,
        now: u64,
    ) -> Result<Vec<SubscriptionInfo>> {
        self.topic(topic)?;
        self.subscriptions_of(topic)
            .into_iter()
            .map(|s| {
                self.subscription_info(
                    self.queue(&subscription_queue(topic, &s.subscription))?,
                    now,
                )
            })
            .collect()
    }

    pub(crate) fn delete_subscription(
        &mut self,
        topic: &str,
        sub: &str,
    ) -> Result<(Ticket, Waker)> {
        self.topic(topic)?;
        let qname = subscription_queue(topic, sub);
        let q = self.queue(&qname)?;
        let (qid, notify) = (q.qid, q.notify.clone());
        self.reset_subscription(&qname)?;
        let mut batch = self.store.batch();
        batch.delete(&self.ks.meta, sub_meta_key(topic, sub));
        batch.delete(&self.ks.meta, super::counters_key(qid));
        self.queues.remove(&qname);
        self.names.remove(&qid);
        self.dirty.remove(&qid);
        Ok((self.write(batch)?, notify))
    }

    /// Moves a subscription to a position: what it had leased or waiting for a retry is
    /// forgotten, and delivery starts again from there.
    pub(crate) fn seek(
        &mut self,
        topic: &str,
        sub: &str,
        to: Start,
    ) -> Result<(u64, Ticket, Waker)> {
        self.topic(topic)?;
        let qname = subscription_queue(topic, sub);
        self.queue(&qname)?;
        let offset = self.position(topic, to)?;
        self.reset_subscription(&qname)?;
        let q = self.queue_mut(&qname)?;
        q.counters.cursor = offset;
        let (qid, notify) = (q.qid, q.notify.clone());
        let src = self.source_mut(&qname)?;
        src.scan_next = offset;
        src.window.clear();
        self.dirty.insert(qid);
        let ticket = self.write(self.store.batch())?;
        Ok((offset, ticket, notify))
    }

    /// Removes a subscription's delivery state (leases, retries, FIFO members, parked
    /// groups); the cursor stays. Returns how many events had state.
    pub(super) fn reset_subscription(&mut self, name: &str) -> Result<(u64, Ticket)> {
        let qid = self.queue(name)?.qid;
        let prefix = codec::queue_prefix(qid);
        let total = self.delete_prefix(&self.ks.state, &prefix)?;
        self.delete_prefix(&self.ks.index, &prefix)?;
        let q = self.queue_mut(name)?;
        q.counters = Counters {
            cursor: q.counters.cursor,
            dead_lettered: q.counters.dead_lettered,
            sent_total: q.counters.sent_total,
            expired_total: q.counters.expired_total,
            ..Counters::default()
        };
        q.window.clear();
        q.window_complete = true;
        q.window_scan_next = 0;
        q.delayed_next_due = None;
        q.leases.clear();
        q.shared.clear();
        q.groups.clear();
        self.dirty.insert(qid);
        Ok((total, self.write(self.store.batch())?))
    }

    /// Matching events of the log from `from`, examining at most `limit` entries; returns
    /// them with the offset after the last one examined.
    fn scan(&self, src: &LogSource, from: u64, limit: usize) -> Result<Scanned> {
        let end = codec::prefix_end(&codec::queue_prefix(src.tid));
        let mut next = from;
        let mut out = Vec::new();
        for (k, v) in self
            .ks
            .log
            .range(&codec::log_key(src.tid, from), &end, limit)?
        {
            let offset = codec::u64_at(&k, 8)?;
            next = offset + 1;
            let entry = LogEntry::decode(&v)?;
            if src.matches(&entry.event)? {
                out.push((offset, entry));
            }
        }
        Ok((out, next))
    }

    /// Scans up to `limit` log entries after subscription `name`'s scan position; `None`
    /// when it has seen the whole log. Returns the matching events and the new position.
    fn scan_on(&self, name: &str, limit: usize) -> Result<Option<Scanned>> {
        let src = self.source(name)?;
        let c = &self.topic(&src.topic)?.counters;
        if src.scan_next >= c.next_offset {
            return Ok(None);
        }
        let from = src.scan_next.max(c.first_offset);
        let (found, scan_next) = self.scan(src, from, limit)?;
        // Nothing left at or after `from`: the rest was removed from the log.
        let scan_next = if scan_next == from {
            c.next_offset
        } else {
            scan_next
        };
        Ok(Some((found, scan_next)))
    }

    /// Whether queue `q` has anything to deliver besides what is leased.
    pub(super) fn has_backlog(&self, q: &QueueState) -> bool {
        q.counters.ready > 0
            || q.source.as_ref().is_some_and(|s| {
                !s.window.is_empty()
                    || self
                        .topics
                        .get(&s.topic)
                        .is_some_and(|t| s.scan_next < t.counters.next_offset)
            })
    }

    /// Whether `name` is a subscription with log entries it has not examined yet.
    pub(crate) fn has_unscanned(&self, name: &str) -> bool {
        self.queues
            .get(name)
            .and_then(|q| q.source.as_ref())
            .is_some_and(|s| {
                self.topics
                    .get(&s.topic)
                    .is_some_and(|t| s.scan_next < t.counters.next_offset)
            })
    }

    /// The next matching event of a standard subscription's log, with its entry when the
    /// scan kept it; moves the cursor past it.
    pub(super) fn next_from_log(&mut self, name: &str) -> Result<Option<(u64, Option<LogEntry>)>> {
        let mut scanned = 0;
        loop {
            let qid = self.queue(name)?.qid;
            if self.source(name)?.window.is_empty() {
                if scanned >= SCAN_MAX {
                    return Ok(None);
                }
                let Some((found, scan_next)) = self.scan_on(name, WINDOW_MAX)? else {
                    return Ok(None);
                };
                scanned += WINDOW_MAX;
                let src = self.source_mut(name)?;
                let mut bytes = 0;
                src.window.extend(found.into_iter().map(|(o, e)| {
                    bytes += e.event.len();
                    (o, (bytes <= WINDOW_BYTES_MAX).then_some(e))
                }));
                src.scan_next = scan_next;
                if src.window.is_empty() {
                    let cursor = src.scan_next;
                    self.queue_mut(name)?.counters.cursor = cursor;
                    self.dirty.insert(qid);
                }
                continue;
            }
            let src = self.source_mut(name)?;
            let next = src.window.pop_front().expect("window is not empty");
            let cursor = src.window.front().map_or(src.scan_next, |(o, _)| *o);
            self.queue_mut(name)?.counters.cursor = cursor;
            self.dirty.insert(qid);
            return Ok(Some(next));
        }
    }

    /// Moves the next matching events of a FIFO subscription's log into its group index,
    /// keeping at most `FIFO_AHEAD_MAX` there. Writes its own batch. Returns whether it
    /// moved any.
    pub(super) fn pump_fifo(&mut self, name: &str, now: u64) -> Result<bool> {
        let q = self.queue(name)?;
        let qid = q.qid;
        let room = FIFO_AHEAD_MAX.saturating_sub(q.counters.ready);
        if room == 0 {
            return Ok(false);
        }
        let Some((found, scan_next)) = self.scan_on(name, STEP.min(room as usize))? else {
            return Ok(false);
        };
        let mut batch = self.store.batch();
        let moved = !found.is_empty();
        for (offset, entry) in found {
            let group = self.source(name)?.group_of(&entry.event);
            let record = record_of(entry, Some(group));
            self.insert_message(&mut batch, qid, offset, &record, now, 0, 0, now)?;
        }
        self.source_mut(name)?.scan_next = scan_next;
        self.queue_mut(name)?.counters.cursor = scan_next;
        self.dirty.insert(qid);
        self.flush(batch)?;
        Ok(moved)
    }

    /// Background step of a subscription: FIFO ones fill their group index, forwarding
    /// ones send matching events into their queue. Returns whom to wake.
    pub(super) fn pump_subscription(&mut self, name: &str, now: u64) -> Result<Option<Waker>> {
        let Some(src) = self.queue(name)?.source.as_ref() else {
            return Ok(None);
        };
        match &src.config.target {
            Target::Pull if src.config.fifo => Ok(self
                .pump_fifo(name, now)?
                .then(|| self.queues[name].notify.clone())),
            Target::Pull => Ok(None),
            Target::Queue { queue } => {
                let queue = queue.to_string();
                self.forward(name, &queue, now)
            }
        }
    }

    fn forward(&mut self, name: &str, target: &str, now: u64) -> Result<Option<Waker>> {
        let qid = self.queue(name)?.qid;
        let Some(tq) = self.queues.get(target) else {
            return Ok(None);
        };
        let (target_qid, delay, fifo, notify) = (
            tq.qid,
            tq.config.delay.as_millis(),
            tq.config.fifo,
            tq.notify.clone(),
        );
        let Some((found, scan_next)) = self.scan_on(name, STEP)? else {
            return Ok(None);
        };
        let topic = self.source(name)?.topic.clone();
        let mut batch = self.store.batch();
        let sent = !found.is_empty();
        for (offset, entry) in found {
            let group = fifo.then(|| self.source(name).map(|s| s.group_of(&entry.event)));
            let size = entry.event.len() as u64;
            let record = MessageRecord {
                sent_ms: now,
                group: group.transpose()?,
                dedup_id: None,
                attributes: serde_json::to_vec(&serde_json::json!({
                    "topic": topic,
                    "offset": offset,
                }))
                .expect("attributes serialize"),
                body: entry.event,
                dead_letter: None,
                stateless: Stateless::No,
            };
            let seq = super::take(&mut self.next_seq);
            self.insert_message(&mut batch, target_qid, seq, &record, now + delay, 0, 0, now)?;
            let t = self.queue_mut(target)?;
            t.counters.sent_total += 1;
            t.activity.sent += 1;
            t.activity.sent_bytes += size;
            self.queue_mut(name)?.counters.sent_total += 1;
        }
        self.source_mut(name)?.scan_next = scan_next;
        self.queue_mut(name)?.counters.cursor = scan_next;
        self.dirty.insert(qid);
        self.flush(batch)?;
        Ok(sent.then_some(notify))
    }

    /// Drops a subscription's message whose event left the log before it was delivered.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn drop_vanished(
        &mut self,
        batch: &mut Batch,
        name: &str,
        seq: u64,
        group: Option<&str>,
        fresh: bool,
        removed: &mut HashSet<u64>,
        now: u64,
    ) -> Result<()> {
        let qid = self.queue(name)?.qid;
        if !fresh {
            batch.delete(&self.ks.state, codec::msg_key(qid, seq));
            self.queue_mut(name)?.counters.ready -= 1;
        }
        if let Some(group) = group {
            batch.delete(&self.ks.index, codec::fifo_key(qid, group, seq));
            removed.insert(seq);
            let next = self.fifo_head_visible(qid, group, removed)?;
            self.queue_mut(name)?
                .groups
                .on_remove_head(group, next, now);
        }
        self.queue_mut(name)?.counters.expired_total += 1;
        self.dirty.insert(qid);
        Ok(())
    }

    /// Publish time of the oldest event a subscription has not finished with, among its
    /// leased events, the retries ready now and the event at its cursor. (Delivery state in
    /// the store is not scanned: acked entries leave tombstones a scan would step over.)
    pub(super) fn oldest_pending_event(&self, q: &QueueState) -> Result<Option<u64>> {
        let Some(src) = &q.source else {
            return Ok(None);
        };
        let t = self.topic(&src.topic)?;
        let candidates = [
            q.leases.min_seq(),
            q.window.front().map(|(_, seq)| *seq),
            (q.counters.cursor < t.counters.next_offset).then_some(q.counters.cursor),
        ];
        let Some(from) = candidates.into_iter().flatten().min() else {
            return Ok(None);
        };
        let end = codec::prefix_end(&codec::queue_prefix(src.tid));
        match self
            .ks
            .log
            .range(&codec::log_key(src.tid, from), &end, 1)?
            .first()
        {
            Some((_, v)) => Ok(Some(LogEntry::decode(v)?.published_ms)),
            None => Ok(None),
        }
    }

    /// Subscriptions that forward into queue `name`.
    pub(super) fn forwarding_subscriptions(&self, name: &str) -> Vec<String> {
        self.queues
            .values()
            .filter(|q| {
                q.source.as_ref().is_some_and(|s| {
                    matches!(&s.config.target, Target::Queue { queue } if queue.as_str() == name)
                })
            })
            .map(|q| q.name.clone())
            .collect()
    }

    // ---- background work ----

    /// Retention, compaction and dedup expiry of every topic, once a second each.
    pub(super) fn tick_topics(&mut self, now: u64) -> Result<Vec<Waker>> {
        let names: Vec<String> = self.topics.keys().cloned().collect();
        for name in names {
            if name == super::streams::ALL {
                // The event store's log: streams decide what it keeps (scavenging).
                continue;
            }
            let t = self.topic_mut(&name)?;
            if now < t.housekeeping_next_check {
                continue;
            }
            t.housekeeping_next_check = now + HOUSEKEEPING_MS;
            let (tid, compacted) = (t.tid, t.config.compaction.is_some());
            let mut batch = self.store.batch();
            if compacted {
                self.compact_step(&mut batch, &name, now)?;
            } else {
                self.retention_step(&mut batch, &name, now)?;
            }
            self.expire_dedup(&mut batch, tid, now)?;
            self.flush(batch)?;
            if compacted {
                // Compaction may have removed the first entries.
                let prefix = codec::queue_prefix(tid);
                let first = self
                    .ks
                    .log
                    .keys(&prefix, &codec::prefix_end(&prefix), 1)?
                    .first()
                    .map(|k| codec::u64_at(k, 8))
                    .transpose()?;
                let t = self.topic_mut(&name)?;
                let first = first.unwrap_or(t.counters.next_offset);
                if first != t.counters.first_offset {
                    t.counters.first_offset = first;
                    self.dirty_topics.insert(name.clone());
                }
            }
        }
        Ok(Vec::new())
    }

    /// Drops the oldest events past the topic's retention age or size.
    fn retention_step(&mut self, batch: &mut Batch, name: &str, now: u64) -> Result<()> {
        let t = self.topic(name)?;
        let (tid, first) = (t.tid, t.counters.first_offset);
        let retention = t.config.retention.as_millis();
        let max_bytes = t.config.max_bytes.map(|b| b.0);
        let end = codec::prefix_end(&codec::queue_prefix(tid));
        let entries = self.ks.log.range(&codec::log_key(tid, first), &end, STEP)?;
        let mut bytes = t.counters.bytes;
        let mut new_first = first;
        let mut more = false;
        for (k, v) in &entries {
            let offset = codec::u64_at(k, 8)?;
            let e = LogEntry::decode(v)?;
            let too_old = crate::delivery::is_expired(e.published_ms, retention, now);
            let too_big = max_bytes.is_some_and(|m| bytes > m);
            if !too_old && !too_big {
                new_first = offset;
                more = false;
                break;
            }
            batch.delete(&self.ks.log, k.to_vec());
            bytes -= e.event.len() as u64;
            new_first = offset + 1;
            more = true;
            let t = self.topic_mut(name)?;
            t.counters.events -= 1;
            t.counters.expired_total += 1;
        }
        let t = self.topic_mut(name)?;
        if entries.is_empty() {
            new_first = t.counters.next_offset;
        }
        if new_first != t.counters.first_offset || bytes != t.counters.bytes {
            t.counters.first_offset = new_first;
            t.counters.bytes = bytes;
            self.dirty_topics.insert(name.to_owned());
        }
        if more {
            // Possibly more to drop: look again on the next tick.
            self.topic_mut(name)?.housekeeping_next_check = now;
        }
        Ok(())
    }

    /// One step of a compaction pass: removes events superseded by a later event of their
    /// key, and tombstones past their retention. The latest event of a live key is what
    /// the table points at, written in the same batch as its publish, so a pass never
    /// removes it, whenever it stops.
    fn compact_step(&mut self, batch: &mut Batch, name: &str, now: u64) -> Result<()> {
        let t = self.topic(name)?;
        let tid = t.tid;
        let tombstone_ms = t
            .config
            .compaction
            .as_ref()
            .map_or(0, |c| c.tombstone_retention.as_millis());
        let mut c = t.counters;
        if c.compact_cursor >= c.compact_pass_end {
            if c.next_offset == c.compact_pass_end && c.compact_pass_end != 0 {
                // Nothing published since the last pass; a tombstone may have aged out.
                if c.events <= c.keys {
                    return Ok(());
                }
            }
            c.compact_cursor = c.first_offset;
            c.compact_pass_end = c.next_offset;
        }
        let end = codec::log_key(tid, c.compact_pass_end);
        let entries = self.ks.log.range(
            &codec::log_key(tid, c.compact_cursor),
            &end,
            COMPACTION_STEP,
        )?;
        for (k, v) in &entries {
            let offset = codec::u64_at(k, 8)?;
            c.compact_cursor = offset + 1;
            let e = LogEntry::decode(v)?;
            let live = match &e.key {
                Some(key) => {
                    self.ks
                        .index
                        .get(&table_key(tid, key))?
                        .map(|v| codec::le_u64_at(&v, 0, "table entry"))
                        .transpose()?
                        == Some(offset)
                }
                None => false,
            };
            let remove = if e.tombstone {
                e.published_ms + tombstone_ms <= now
            } else {
                !live
            };
            if remove {
                batch.delete(&self.ks.log, k.to_vec());
                c.events -= 1;
                c.bytes -= e.event.len() as u64;
                c.compacted_total += 1;
            }
        }
        if entries.len() < COMPACTION_STEP {
            c.compact_cursor = c.compact_pass_end;
        }
        let t = self.topic_mut(name)?;
        if t.counters != c {
            t.counters = c;
            self.dirty_topics.insert(name.to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

/// The compaction key of `ev` and whether it is a tombstone, on a compacted
/// topic; an error if the key attribute is missing.
fn compaction_key(config: &TopicConfig, ev: &event::Event) -> Result<(Option<String>, bool)> {
    let Some(c) = &config.compaction else {
        return Ok((None, false));
    };
    match ev.attribute(&c.key) {
        Some(k) => {
            let tombstone =
                ev.data_is_null() || c.tombstone_type.as_deref() == Some(ev.ty.as_str());
            Ok((Some(k), tombstone))
        }
        None => Err(Error::InvalidEvent(EventError {
            attribute: c.key.clone(),
            message: "is required: the topic is compacted by it".into(),
        })),
    }
}
