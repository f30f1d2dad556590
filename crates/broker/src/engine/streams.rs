//! Event-store streams inside the engine: appends decided by `sluice_eventstore` and written
//! in one batch with their `$all` log entries and indexes; reads of a stream, of `$all`, of
//! a category and of an event type; stream metadata, deletion, scavenging and snapshots.
//!
//! `$all` is an internal topic: an event's global position is its offset in that topic's
//! log, and the event is stored once, there. Subscriptions of the topic machinery (filters,
//! leases, retries, dead-lettering) therefore work on the event store unchanged; the
//! `stream` and `streamversion` extension attributes the store adds to every event are what
//! their filters select on.
//!
//! Keys of the `streams` keyspace (a stream name never contains `\0`):
//! - `h{stream}` → the stream's record (head, state, metadata), JSON
//! - `e{stream}\0{version:be}` → position
//! - `i{stream}\0{event id}` → version (idempotent retries)
//! - `c{category}\0{position:be}` and `t{type}\0{position:be}` → nothing (indexes)
//! - `s{stream}` → the latest snapshot, JSON
//! - `x{stream}` → nothing: events below the visible range are still to be scavenged

use rand::Rng as _;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sluice_eventstore::{
    self as es, AppendError, Decision, ExpectedVersion, StreamHead, StreamState, Visibility,
};
use sluice_store::{Batch, Ticket};
use sluice_types::HumanDuration;

use super::Engine;
use crate::codec::{self, LogEntry};
use crate::event::{self, EventError};
use crate::topic_config::TopicConfig;
use crate::{BATCH_MAX, Error, Result, Waker};

/// The internal topic whose log is the event store's global order.
pub const ALL: &str = "$all";
/// The extension attribute naming an event's stream.
pub const STREAM_ATTRIBUTE: &str = "stream";
/// The extension attribute holding an event's version in its stream.
pub const VERSION_ATTRIBUTE: &str = "streamversion";
/// Largest event, as stored (structured-mode JSON with the stream attributes).
pub const EVENT_SIZE_MAX: usize = 1 << 20;
/// Largest snapshot `data`, as JSON.
pub const SNAPSHOT_SIZE_MAX: usize = 4 << 20;
/// Most events one read returns.
pub const READ_MAX: usize = 1_000;
/// Events removed per scavenging step.
const SCAVENGE_STEP: usize = 1_000;
/// How often streams with a max age are scavenged.
const AGING_MS: u64 = 60_000;

/// The metadata of a stream: what bounds the events it keeps, and the application's own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamMetadata {
    /// Events older than this are no longer visible, and are scavenged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_age: Option<HumanDuration>,
    /// Only the latest this many events are visible; older ones are scavenged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u64>,
    /// Versions below this are no longer visible, and are scavenged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncate_before: Option<u64>,
    /// Anything the application keeps with the stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Lifecycle {
    Live,
    SoftDeleted,
    Tombstoned,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StreamRecord {
    last: Option<u64>,
    state: Lifecycle,
    /// Versions below this were deleted.
    deleted_before: u64,
    metadata: StreamMetadata,
    created_ms: u64,
    updated_ms: u64,
}

impl StreamRecord {
    fn new(now: u64) -> Self {
        Self {
            last: None,
            state: Lifecycle::Live,
            deleted_before: 0,
            metadata: StreamMetadata::default(),
            created_ms: now,
            updated_ms: now,
        }
    }

    fn head(&self) -> StreamHead {
        StreamHead {
            last: self.last,
            state: self.stream_state(),
        }
    }

    fn stream_state(&self) -> StreamState {
        match self.state {
            Lifecycle::Live => StreamState::Live,
            Lifecycle::SoftDeleted => StreamState::SoftDeleted,
            Lifecycle::Tombstoned => StreamState::Tombstoned,
        }
    }

    fn visibility(&self) -> Visibility {
        Visibility {
            last: self.last,
            deleted_before: self.deleted_before,
            truncate_before: self.metadata.truncate_before,
            max_count: self.metadata.max_count,
        }
    }

    fn max_age_ms(&self) -> Option<u64> {
        self.metadata.max_age.map(|d| d.as_millis())
    }

    /// Whether this stream has events below what readers see, or ages them out.
    fn needs_scavenging(&self) -> bool {
        self.last.is_some()
            && (self.visibility().first_visible() > 0 || self.metadata.max_age.is_some())
    }
}

/// What a reader learns of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    pub stream: String,
    pub state: StreamState,
    /// The last version ever appended.
    pub last_version: Option<u64>,
    /// The first version readers see (`last_version + 1` when none is visible).
    pub first_visible: u64,
    pub metadata: StreamMetadata,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// An event as the event store recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub stream: String,
    pub version: u64,
    /// Its place in `$all`.
    pub position: u64,
    pub recorded_ms: u64,
    /// Structured-mode CloudEvents JSON, with the `stream` and `streamversion` attributes.
    pub event: Vec<u8>,
}

/// The outcome of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    pub first_version: u64,
    pub last_version: u64,
    /// The `$all` position of the first event.
    pub first_position: u64,
    /// False when this was a retry of an append that already happened: nothing was written.
    pub appended: bool,
}

/// Event-store appends since the server started, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamActivity {
    /// Appends that wrote events.
    pub appends: u64,
    pub appended_events: u64,
    /// Retries of appends that had already happened: answered, nothing written.
    pub idempotent_retries: u64,
    /// Appends refused for a wrong expected version or an event id seen elsewhere.
    pub conflicts: u64,
}

/// Which way a stream is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// A page of a stream.
#[derive(Debug, Clone)]
pub struct StreamPage {
    pub events: Vec<RecordedEvent>,
    /// The version the next page starts at, in the same direction; `None` at the end.
    pub next: Option<u64>,
    /// The stream's last version when read.
    pub last_version: Option<u64>,
}

/// A page of `$all`, a category or an event type, in global order.
#[derive(Debug, Clone)]
pub struct GlobalPage {
    pub events: Vec<RecordedEvent>,
    /// The position the next page starts at.
    pub next: u64,
}

/// The latest snapshot of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The version the snapshot folds events up to (inclusive).
    pub version: u64,
    pub data: Value,
    pub saved_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    version: u64,
    data: Value,
    saved_ms: u64,
}

/// What an event-store subscription selects: one stream, a category, or every stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamSelector<'a> {
    Stream(&'a str),
    Category(&'a str),
    All,
}

impl StreamSelector<'_> {
    /// Checks the stream or category name.
    pub fn validate(&self) -> Result<()> {
        match self {
            StreamSelector::Stream(s) => es::validate_name(s).map_err(Error::InvalidStream),
            StreamSelector::Category(c) => es::validate_category(c).map_err(Error::InvalidStream),
            StreamSelector::All => Ok(()),
        }
    }

    /// The filter condition on the `stream` attribute that selects it (a category is the
    /// prefix `category-`).
    pub fn condition(&self) -> Value {
        match self {
            StreamSelector::Stream(s) => json!([s]),
            StreamSelector::Category(c) => json!([{ "prefix": format!("{c}-") }]),
            StreamSelector::All => json!([{ "exists": true }]),
        }
    }
}

/// Which global index a read uses.
#[derive(Debug, Clone, Copy)]
pub enum Index<'a> {
    Category(&'a str),
    Type(&'a str),
}

fn keyed(tag: u8, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len() + 9);
    k.push(tag);
    k.extend_from_slice(name.as_bytes());
    k
}

fn head_key(stream: &str) -> Vec<u8> {
    keyed(b'h', stream)
}

fn snapshot_key(stream: &str) -> Vec<u8> {
    keyed(b's', stream)
}

fn scavenge_key(stream: &str) -> Vec<u8> {
    keyed(b'x', stream)
}

fn event_prefix(stream: &str) -> Vec<u8> {
    let mut k = keyed(b'e', stream);
    k.push(0);
    k
}

fn event_key(stream: &str, version: u64) -> Vec<u8> {
    let mut k = event_prefix(stream);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn id_key(stream: &str, id: &str) -> Vec<u8> {
    let mut k = keyed(b'i', stream);
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn index_prefix(index: Index<'_>) -> Vec<u8> {
    let mut k = match index {
        Index::Category(c) => keyed(b'c', c),
        Index::Type(t) => keyed(b't', t),
    };
    k.push(0);
    k
}

fn index_key(index: Index<'_>, position: u64) -> Vec<u8> {
    let mut k = index_prefix(index);
    k.extend_from_slice(&position.to_be_bytes());
    k
}

/// The stream attributes of a stored event.
#[derive(Deserialize)]
struct Placed {
    stream: String,
    streamversion: u64,
    id: String,
    #[serde(rename = "type")]
    ty: String,
}

fn placed(event: &[u8]) -> Result<Placed> {
    serde_json::from_slice(event).map_err(|_| {
        codec::Corrupt {
            what: "event store entry without its stream",
        }
        .into()
    })
}

fn append_error(stream: &str, e: AppendError) -> Error {
    match e {
        AppendError::Empty => Error::InvalidMessage("an append needs at least one event".into()),
        AppendError::DuplicateId(id) => {
            Error::InvalidMessage(format!("event id {id:?} appears twice in the append"))
        }
        AppendError::WrongExpectedVersion { expected, current } => Error::WrongExpectedVersion {
            stream: stream.to_owned(),
            expected: expected.to_string(),
            current,
        },
        AppendError::IdElsewhere { id, at } => Error::EventIdConflict {
            stream: stream.to_owned(),
            id,
            at,
        },
        AppendError::Tombstoned => Error::StreamDeleted(stream.to_owned()),
    }
}

impl Engine {
    /// Creates the `$all` topic on first start.
    pub(super) fn ensure_all_topic(&mut self, now: u64) -> Result<()> {
        if self.topics.contains_key(ALL) {
            return Ok(());
        }
        // Durable with the first write after it: the store's journal is in order, and
        // nothing refers to the topic before an append, which waits for its own write.
        self.create_topic(ALL, TopicConfig::default(), now)?;
        Ok(())
    }

    /// Streams whose scavenging was pending at the last stop.
    pub(super) fn load_scavenging(&mut self, now: u64) -> Result<()> {
        let start = [b'x'];
        let end = codec::prefix_end(&start);
        for k in self.ks.streams.keys(&start, &end, usize::MAX)? {
            let name = String::from_utf8_lossy(&k[1..]).into_owned();
            self.scavenge.insert(name, now);
        }
        Ok(())
    }

    fn stream_record(&self, stream: &str) -> Result<Option<StreamRecord>> {
        match self.ks.streams.get(&head_key(stream))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v).map_err(|_| {
                codec::Corrupt {
                    what: "stream record",
                }
            })?)),
            None => Ok(None),
        }
    }

    fn put_record(&mut self, batch: &mut Batch, stream: &str, rec: &StreamRecord) {
        batch.put(
            &self.ks.streams,
            head_key(stream),
            serde_json::to_vec(rec).expect("a stream record serializes"),
        );
        if rec.needs_scavenging() {
            // Due now: whatever changed may have hidden events.
            if self.scavenge.insert(stream.to_owned(), 0).is_none() {
                batch.put(&self.ks.streams, scavenge_key(stream), Vec::new());
            }
        }
    }

    /// A readable stream's record: refused if never written, soft-deleted or tombstoned.
    fn readable(&self, stream: &str) -> Result<StreamRecord> {
        es::validate_name(stream).map_err(Error::InvalidStream)?;
        let rec = self
            .stream_record(stream)?
            .filter(|r| r.last.is_some())
            .ok_or_else(|| Error::StreamNotFound(stream.to_owned()))?;
        match rec.state {
            Lifecycle::Live => Ok(rec),
            Lifecycle::SoftDeleted => Err(Error::StreamNotFound(stream.to_owned())),
            Lifecycle::Tombstoned => Err(Error::StreamDeleted(stream.to_owned())),
        }
    }

    /// Appends `events` to `stream` if `expected` holds, into `batch`; a retry of an
    /// append that already happened answers as it did and writes nothing.
    pub(crate) fn append_into(
        &mut self,
        batch: &mut Batch,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<Map<String, Value>>,
        now: u64,
    ) -> Result<(AppendResult, Vec<Waker>)> {
        es::validate_name(stream).map_err(Error::InvalidStream)?;
        if events.len() > BATCH_MAX {
            return Err(Error::BatchTooLarge(events.len()));
        }
        let mut normalized = Vec::with_capacity(events.len());
        for (i, obj) in events.into_iter().enumerate() {
            let random: u128 = self.rng.random();
            let rng = &mut self.rng;
            let mut ev = event::normalize(obj, now, || super::topics::new_event_id(rng), random)
                .map_err(|e| {
                    Error::InvalidEvent(EventError {
                        attribute: format!("events[{i}].{}", e.attribute),
                        message: e.message,
                    })
                })?;
            ev.value
                .insert(STREAM_ATTRIBUTE.into(), Value::String(stream.to_owned()));
            normalized.push(ev);
        }
        let mut rec = self
            .stream_record(stream)?
            .unwrap_or_else(|| StreamRecord::new(now));
        let mut existing = HashMap::new();
        for ev in &normalized {
            if let Some(v) = self.ks.streams.get(&id_key(stream, &ev.id))? {
                existing.insert(ev.id.as_str(), codec::le_u64_at(&v, 0, "stream version")?);
            }
        }
        let ids: Vec<&str> = normalized.iter().map(|e| e.id.as_str()).collect();
        let n = ids.len() as u64;
        let decision = es::decide(expected, rec.head(), &ids, |id| existing.get(id).copied())
            .map_err(|e| append_error(stream, e))?;
        let first = match decision {
            Decision::AlreadyAppended { first } => {
                let first_position = self.position_of(stream, first)?.unwrap_or(0);
                let result = AppendResult {
                    first_version: first,
                    last_version: first + n - 1,
                    first_position,
                    appended: false,
                };
                return Ok((result, Vec::new()));
            }
            Decision::Append { first } => first,
        };
        // Every event as stored, each checked before anything changes.
        let mut stored = Vec::with_capacity(normalized.len());
        for (i, mut ev) in normalized.into_iter().enumerate() {
            ev.value
                .insert(VERSION_ATTRIBUTE.into(), Value::from(first + i as u64));
            let json = serde_json::to_vec(&ev.value).expect("a JSON object serializes");
            if json.len() > EVENT_SIZE_MAX {
                return Err(Error::EventTooLarge {
                    size: json.len(),
                    max: EVENT_SIZE_MAX as u64,
                });
            }
            stored.push((ev, json));
        }
        let category = es::category(stream);
        let tid = self.topic(ALL)?.tid;
        let mut first_position = 0;
        for (i, (ev, json)) in stored.into_iter().enumerate() {
            let version = first + i as u64;
            let t = self.topic_mut(ALL)?;
            let position = t.counters.next_offset;
            t.counters.next_offset += 1;
            let recorded_ms = now.max(t.counters.last_publish_ms);
            t.counters.last_publish_ms = recorded_ms;
            t.counters.events += 1;
            t.counters.bytes += json.len() as u64;
            t.counters.published_total += 1;
            t.published_bytes += json.len() as u64;
            if i == 0 {
                first_position = position;
            }
            let ks = &self.ks.streams;
            batch.put(
                ks,
                event_key(stream, version),
                position.to_le_bytes().to_vec(),
            );
            batch.put(ks, id_key(stream, &ev.id), version.to_le_bytes().to_vec());
            if let Some(c) = category {
                batch.put(ks, index_key(Index::Category(c), position), Vec::new());
            }
            batch.put(ks, index_key(Index::Type(&ev.ty), position), Vec::new());
            let entry = LogEntry {
                published_ms: recorded_ms,
                key: None,
                tombstone: false,
                event: json,
            };
            batch.put(&self.ks.log, codec::log_key(tid, position), entry.encode());
        }
        self.dirty_topics.insert(ALL.to_owned());
        rec.last = Some(first + n - 1);
        if rec.state == Lifecycle::SoftDeleted {
            rec.state = Lifecycle::Live;
        }
        rec.updated_ms = now;
        self.put_record(batch, stream, &rec);
        let result = AppendResult {
            first_version: first,
            last_version: first + n - 1,
            first_position,
            appended: true,
        };
        Ok((result, self.topic_wakers(ALL)?))
    }

    pub(crate) fn append(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<Map<String, Value>>,
        now: u64,
    ) -> Result<(AppendResult, Ticket, Vec<Waker>)> {
        let mut batch = self.store.batch();
        let n = events.len() as u64;
        let outcome = self.append_into(&mut batch, stream, expected, events, now);
        let a = &mut self.stream_activity;
        match &outcome {
            Ok((r, _)) if r.appended => {
                a.appends += 1;
                a.appended_events += n;
            }
            Ok(_) => a.idempotent_retries += 1,
            Err(Error::WrongExpectedVersion { .. } | Error::EventIdConflict { .. }) => {
                a.conflicts += 1
            }
            Err(_) => {}
        }
        let (result, woken) = outcome?;
        Ok((result, self.write(batch)?, woken))
    }

    fn position_of(&self, stream: &str, version: u64) -> Result<Option<u64>> {
        self.ks
            .streams
            .get(&event_key(stream, version))?
            .map(|v| codec::le_u64_at(&v, 0, "position"))
            .transpose()
            .map_err(Error::from)
    }

    fn entry_at(&self, position: u64) -> Result<Option<LogEntry>> {
        let tid = self.topic(ALL)?.tid;
        self.ks
            .log
            .get(&codec::log_key(tid, position))?
            .map(|v| LogEntry::decode(&v))
            .transpose()
            .map_err(Error::from)
    }

    /// Up to `limit` visible events of `stream` from version `from` (default: the first,
    /// or the last going backward).
    pub(crate) fn read_stream(
        &self,
        stream: &str,
        from: Option<u64>,
        direction: Direction,
        limit: usize,
        now: u64,
    ) -> Result<StreamPage> {
        let rec = self.readable(stream)?;
        let last = rec.last.expect("readable streams have events");
        let first = rec.visibility().first_visible();
        let limit = limit.clamp(1, READ_MAX);
        let max_age = rec.max_age_ms();
        let mut page = StreamPage {
            events: Vec::new(),
            next: None,
            last_version: Some(last),
        };
        let entries = match direction {
            Direction::Forward => {
                let start = from.unwrap_or(0).max(first);
                if start > last {
                    return Ok(page);
                }
                self.ks.streams.range(
                    &event_key(stream, start),
                    &event_key(stream, last + 1),
                    limit,
                )?
            }
            Direction::Backward => {
                let start = from.unwrap_or(last).min(last);
                if start < first {
                    return Ok(page);
                }
                self.ks.streams.range_rev(
                    &event_key(stream, first),
                    &event_key(stream, start + 1),
                    limit,
                )?
            }
        };
        let full = entries.len() == limit;
        let prefix_len = event_prefix(stream).len();
        let mut last_read = None;
        for (k, v) in entries {
            let version = codec::u64_at(&k, prefix_len)?;
            last_read = Some(version);
            let position = codec::le_u64_at(&v, 0, "position")?;
            let Some(entry) = self.entry_at(position)? else {
                continue;
            };
            if es::stream::is_expired(entry.published_ms, max_age, now) {
                continue;
            }
            page.events.push(RecordedEvent {
                stream: stream.to_owned(),
                version,
                position,
                recorded_ms: entry.published_ms,
                event: entry.event,
            });
        }
        page.next = match (direction, last_read) {
            (Direction::Forward, Some(v)) if full && v < last => Some(v + 1),
            (Direction::Backward, Some(v)) if full && v > first => Some(v - 1),
            _ => None,
        };
        Ok(page)
    }

    /// Whether the event at `placed` is visible to readers now; `records` caches streams.
    fn globally_visible(
        &self,
        records: &mut HashMap<String, Option<StreamRecord>>,
        placed: &Placed,
        recorded_ms: u64,
        now: u64,
    ) -> Result<bool> {
        if !records.contains_key(&placed.stream) {
            let rec = self.stream_record(&placed.stream)?;
            records.insert(placed.stream.clone(), rec);
        }
        let Some(rec) = &records[&placed.stream] else {
            return Ok(false);
        };
        Ok(rec.state == Lifecycle::Live
            && rec.visibility().is_visible(placed.streamversion)
            && !es::stream::is_expired(recorded_ms, rec.max_age_ms(), now))
    }

    /// Up to `limit` visible events of `$all` from position `from`.
    pub(crate) fn read_all(&self, from: u64, limit: usize, now: u64) -> Result<GlobalPage> {
        let page = self.read_events(ALL, from, limit.clamp(1, READ_MAX))?;
        let mut records = HashMap::new();
        let mut events = Vec::with_capacity(page.events.len());
        for e in page.events {
            let p = placed(&e.event)?;
            if self.globally_visible(&mut records, &p, e.published_ms, now)? {
                events.push(RecordedEvent {
                    stream: p.stream,
                    version: p.streamversion,
                    position: e.offset,
                    recorded_ms: e.published_ms,
                    event: e.event,
                });
            }
        }
        Ok(GlobalPage {
            events,
            next: page.next,
        })
    }

    /// Up to `limit` visible events of a category or an event type from position `from`.
    pub(crate) fn read_index(
        &self,
        index: Index<'_>,
        from: u64,
        limit: usize,
        now: u64,
    ) -> Result<GlobalPage> {
        let limit = limit.clamp(1, READ_MAX);
        let prefix = index_prefix(index);
        let keys =
            self.ks
                .streams
                .keys(&index_key(index, from), &codec::prefix_end(&prefix), limit)?;
        let full = keys.len() == limit;
        let mut records = HashMap::new();
        let mut events = Vec::with_capacity(keys.len());
        let mut next = from;
        for k in keys {
            let position = codec::u64_at(&k, prefix.len())?;
            next = position + 1;
            let Some(entry) = self.entry_at(position)? else {
                continue;
            };
            let p = placed(&entry.event)?;
            if self.globally_visible(&mut records, &p, entry.published_ms, now)? {
                events.push(RecordedEvent {
                    stream: p.stream,
                    version: p.streamversion,
                    position,
                    recorded_ms: entry.published_ms,
                    event: entry.event,
                });
            }
        }
        if !full {
            next = next.max(self.topic(ALL)?.counters.next_offset);
        }
        Ok(GlobalPage { events, next })
    }

    /// What is known of `stream`: also answers for a stream that only has metadata.
    pub(crate) fn stream_info(&self, stream: &str) -> Result<StreamInfo> {
        es::validate_name(stream).map_err(Error::InvalidStream)?;
        let rec = self
            .stream_record(stream)?
            .ok_or_else(|| Error::StreamNotFound(stream.to_owned()))?;
        Ok(StreamInfo {
            stream: stream.to_owned(),
            state: rec.stream_state(),
            last_version: rec.last,
            first_visible: rec.visibility().first_visible(),
            metadata: rec.metadata.clone(),
            created_ms: rec.created_ms,
            updated_ms: rec.updated_ms,
        })
    }

    /// Replaces the metadata of `stream` (which need not have events yet).
    pub(crate) fn set_metadata(
        &mut self,
        stream: &str,
        metadata: StreamMetadata,
        now: u64,
    ) -> Result<Ticket> {
        es::validate_name(stream).map_err(Error::InvalidStream)?;
        let mut rec = self
            .stream_record(stream)?
            .unwrap_or_else(|| StreamRecord::new(now));
        if rec.state == Lifecycle::Tombstoned {
            return Err(Error::StreamDeleted(stream.to_owned()));
        }
        rec.metadata = metadata;
        rec.updated_ms = now;
        let mut batch = self.store.batch();
        self.put_record(&mut batch, stream, &rec);
        self.write(batch)
    }

    /// Deletes `stream` if `expected` holds: soft (appends continue its versions) or hard
    /// (a tombstone: appends are refused for good). Its events are scavenged afterwards.
    pub(crate) fn delete_stream(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        hard: bool,
        now: u64,
    ) -> Result<Ticket> {
        es::validate_name(stream).map_err(Error::InvalidStream)?;
        let mut rec = self
            .stream_record(stream)?
            .filter(|r| r.last.is_some())
            .ok_or_else(|| Error::StreamNotFound(stream.to_owned()))?;
        es::check_expected(expected, rec.head()).map_err(|e| append_error(stream, e))?;
        if !hard && rec.state == Lifecycle::SoftDeleted {
            return Err(Error::StreamNotFound(stream.to_owned()));
        }
        rec.deleted_before = rec.head().next();
        rec.state = if hard {
            Lifecycle::Tombstoned
        } else {
            Lifecycle::SoftDeleted
        };
        rec.updated_ms = now;
        let mut batch = self.store.batch();
        batch.delete(&self.ks.streams, snapshot_key(stream));
        self.put_record(&mut batch, stream, &rec);
        self.write(batch)
    }

    /// Saves the snapshot of `stream` at `version`, replacing an older one.
    pub(crate) fn save_snapshot(
        &mut self,
        stream: &str,
        version: u64,
        data: Value,
        now: u64,
    ) -> Result<Ticket> {
        let rec = self.readable(stream)?;
        let last = rec.last.expect("readable streams have events");
        if version > last {
            return Err(Error::InvalidSnapshot(format!(
                "version {version} is past the stream's last version {last}"
            )));
        }
        let json = serde_json::to_vec(&data).expect("JSON serializes");
        if json.len() > SNAPSHOT_SIZE_MAX {
            return Err(Error::InvalidSnapshot(format!(
                "data is {} bytes, more than {SNAPSHOT_SIZE_MAX}",
                json.len()
            )));
        }
        if let Some(current) = self.load_snapshot(stream)?
            && current.version > version
        {
            return Err(Error::SnapshotStale {
                stream: stream.to_owned(),
                version,
                current: current.version,
            });
        }
        let stored = StoredSnapshot {
            version,
            data,
            saved_ms: now,
        };
        let mut batch = self.store.batch();
        batch.put(
            &self.ks.streams,
            snapshot_key(stream),
            serde_json::to_vec(&stored).expect("a snapshot serializes"),
        );
        self.write(batch)
    }

    /// The latest snapshot of `stream`, if any.
    pub(crate) fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        self.readable(stream)?;
        let Some(v) = self.ks.streams.get(&snapshot_key(stream))? else {
            return Ok(None);
        };
        let s: StoredSnapshot =
            serde_json::from_slice(&v).map_err(|_| codec::Corrupt { what: "snapshot" })?;
        Ok(Some(Snapshot {
            version: s.version,
            data: s.data,
            saved_ms: s.saved_ms,
        }))
    }

    /// One scavenging step for every stream that is due: removes events below the visible
    /// range (and past the max age) from `$all`, the stream and the indexes, a bounded
    /// number at a time.
    pub(super) fn tick_streams(&mut self, now: u64) -> Result<()> {
        let mut due: Vec<String> = self
            .scavenge
            .iter()
            .filter(|(_, next)| **next <= now)
            .map(|(name, _)| name.clone())
            .collect();
        due.sort();
        for name in due {
            let mut batch = self.store.batch();
            match self.scavenge_step(&mut batch, &name, now)? {
                Scavenged::More => {}
                Scavenged::Later => {
                    self.scavenge.insert(name, now + AGING_MS);
                }
                Scavenged::Done => {
                    self.scavenge.remove(&name);
                    batch.delete(&self.ks.streams, scavenge_key(&name));
                }
            }
            self.flush(batch)?;
        }
        Ok(())
    }

    /// Removes up to a step of `stream`'s invisible events.
    fn scavenge_step(&mut self, batch: &mut Batch, stream: &str, now: u64) -> Result<Scavenged> {
        let Some(rec) = self.stream_record(stream)? else {
            return Ok(Scavenged::Done);
        };
        let first_visible = rec.visibility().first_visible();
        let max_age = rec.max_age_ms();
        let prefix = event_prefix(stream);
        let entries = self
            .ks
            .streams
            .range(&prefix, &codec::prefix_end(&prefix), SCAVENGE_STEP)?;
        let tid = self.topic(ALL)?.tid;
        let mut removed = 0;
        for (k, v) in &entries {
            let version = codec::u64_at(k, prefix.len())?;
            let position = codec::le_u64_at(v, 0, "position")?;
            let entry = self.entry_at(position)?;
            let expired = entry
                .as_ref()
                .is_some_and(|e| es::stream::is_expired(e.published_ms, max_age, now));
            if version >= first_visible && !expired {
                break;
            }
            batch.delete(&self.ks.streams, k.to_vec());
            if let Some(e) = entry {
                let p = placed(&e.event)?;
                batch.delete(&self.ks.streams, id_key(stream, &p.id));
                if let Some(c) = es::category(stream) {
                    batch.delete(&self.ks.streams, index_key(Index::Category(c), position));
                }
                batch.delete(&self.ks.streams, index_key(Index::Type(&p.ty), position));
                batch.delete(&self.ks.log, codec::log_key(tid, position));
                let t = self.topic_mut(ALL)?;
                t.counters.events -= 1;
                t.counters.bytes -= e.event.len() as u64;
                t.counters.expired_total += 1;
            }
            removed += 1;
        }
        if removed > 0 {
            self.dirty_topics.insert(ALL.to_owned());
        }
        Ok(if removed == SCAVENGE_STEP {
            Scavenged::More
        } else if max_age.is_some() && rec.state != Lifecycle::Tombstoned {
            // Later events age out too.
            Scavenged::Later
        } else {
            Scavenged::Done
        })
    }
}

/// Where a stream's scavenging stands after a step.
enum Scavenged {
    /// More to remove now.
    More,
    /// Nothing more now; events age out later.
    Later,
    Done,
}

#[cfg(test)]
mod tests;
