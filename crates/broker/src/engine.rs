//! The delivery engine: the in-memory delivery state of every queue and the store batches
//! that make each change durable. Callers hold the broker's lock around every method and
//! await the returned ticket after releasing it.
//!
//! Memory holds only what is bounded: leases (at most `max_in_flight` per queue), windows
//! of the next ready messages, FIFO group heads and counters. Message bodies, the ready
//! backlog and delayed messages live in the store.
//!
//! A standard queue finds a message that was sent ready and never delivered by its cursor
//! (`Counters::cursor`), which walks the queue's own records in sequence order: such a
//! message costs no index entry and no state record until its first lease. Messages that
//! become ready again (released, promoted from delay, moved in behind the cursor) go
//! through the ready index; a receive takes from the two in the order they were enqueued.
//! The first deliveries of one receive share one lease entry (`LeaseEntry::Shared`).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use sluice_store::{Batch, Keyspace, Store, Ticket};
use sluice_types::{HumanDuration, Name};
use tokio::sync::Notify;

use crate::codec::{
    self, Corrupt, Counters, DeadLetter, Location, LogEntry, MessageRecord, MessageState, Receipt,
    Stateless, kind,
};
use crate::delivery::{
    self, DeadLetterReason, GroupTable, Lease, LeaseEntry, LeaseTable, Release, ReleaseCause,
};
use crate::{
    DeadLetterInfo, Delivery, Error, KEY_LEN_MAX, Nack, NewMessage, QueueActivity, QueueConfig,
    QueueInfo, QueueStats, ReceiptOutcome, Redrive, Result, SendOutcome, Waker, config,
};

/// Ready entries kept in memory per standard queue, in each of its two windows.
const WINDOW_MAX: usize = 4_096;
/// Bytes of message records a standard queue keeps in memory ahead of its cursor.
const AHEAD_BYTES_MAX: usize = 4 << 20;
/// Records a receive examines ahead of the cursor before it answers with what it found.
const AHEAD_SCAN_MAX: usize = 4 * WINDOW_MAX;
/// Messages listed in one shared lease entry of a subscription, whose entries are rewritten
/// at every ack (a queue's are not: an ack deletes the message's record, which tells).
const SHARED_SUBSCRIPTION_MAX: usize = 64;
/// Entries handled per queue per background tick, per kind of work.
const TICK_BATCH: usize = 1_000;
/// Messages removed per batch by purge and delete.
const PURGE_CHUNK: usize = 10_000;
/// Leases a retention check scans, under the engine lock, for a queue's oldest live
/// message (more, and the check reads from its hint instead, off the lock).
const FLOOR_LEASES_MAX: usize = 16_384;

/// How often retention and dedup expiry are checked per queue.
const HOUSEKEEPING_MS: u64 = 1_000;

const SEQ_KEY: &[u8] = b"seq";
const QID_KEY: &[u8] = b"qid";

fn queue_meta_key(name: &str) -> Vec<u8> {
    [b"queue/".as_slice(), name.as_bytes()].concat()
}

fn counters_key(qid: u64) -> Vec<u8> {
    [b"counters/".as_slice(), &qid.to_be_bytes()].concat()
}

#[derive(Serialize, Deserialize)]
struct QueueMeta {
    id: u64,
    name: String,
    created_ms: u64,
    config: QueueConfig,
}

struct Keyspaces {
    meta: Keyspace,
    msg: Keyspace,
    state: Keyspace,
    index: Keyspace,
    log: Keyspace,
    kv: Keyspace,
    streams: Keyspace,
}

/// A shared lease entry in memory (`LeaseEntry::Shared`).
struct Shared {
    deadline_ms: u64,
    /// The stored entry: its messages' first receive time and their sequence numbers.
    stored: codec::SharedLease,
    /// Messages still leased under it.
    outstanding: usize,
    /// A message left it in a way that keeps its record (anything but a queue's ack): the
    /// stored list must drop it.
    released: bool,
}

struct QueueState {
    qid: u64,
    name: String,
    created_ms: u64,
    config: QueueConfig,
    counters: Counters,
    /// Counts since start, for metrics.
    activity: QueueActivity,
    /// Next ready entries of a standard queue, in ready order: `(rseq, seq)`.
    window: VecDeque<(u64, u64)>,
    /// The next ready sequence number not yet scanned into the window.
    window_scan_next: u64,
    /// Every ready entry in the store is in the window.
    window_complete: bool,
    /// Standard queues: the next messages the cursor reaches (`Stateless::Cursor`), in
    /// sequence order; the first ones keep their record (up to `AHEAD_BYTES_MAX` in total)
    /// so delivering them needs no read.
    ahead: VecDeque<(u64, Option<MessageRecord>)>,
    /// Bytes of the records `ahead` keeps.
    ahead_bytes: usize,
    /// The next sequence number not yet scanned into `ahead`.
    ahead_scan_next: u64,
    /// Every message the cursor has yet to reach is in `ahead`.
    ahead_complete: bool,
    /// Earliest due time in the delayed index, if any.
    delayed_next_due: Option<u64>,
    leases: LeaseTable,
    /// Shared lease entries with messages still leased under them, by id.
    shared: HashMap<u64, Shared>,
    groups: GroupTable,
    /// No message of this queue has a smaller sequence number.
    retention_hint: u64,
    /// The smallest sequence number enqueued since the running retention check read the
    /// queue (`u64::MAX`: none): the check's new hint may not pass it.
    retention_low: u64,
    housekeeping_next_check: u64,
    notify: Waker,
    /// Subscriptions: the topic log this queue takes its messages from.
    source: Option<topics::LogSource>,
}

impl QueueState {
    fn new(meta: QueueMeta, counters: Counters) -> Self {
        Self {
            qid: meta.id,
            name: meta.name,
            created_ms: meta.created_ms,
            config: meta.config,
            counters,
            activity: QueueActivity::default(),
            window: VecDeque::new(),
            window_scan_next: 0,
            window_complete: false,
            ahead: VecDeque::new(),
            ahead_bytes: 0,
            ahead_scan_next: counters.cursor,
            ahead_complete: false,
            delayed_next_due: None,
            leases: LeaseTable::default(),
            shared: HashMap::new(),
            groups: GroupTable::default(),
            retention_hint: 0,
            retention_low: u64::MAX,
            housekeeping_next_check: 0,
            notify: Arc::new(Notify::new()),
            source: None,
        }
    }

    fn meta(&self) -> QueueMeta {
        QueueMeta {
            id: self.qid,
            name: self.name.clone(),
            created_ms: self.created_ms,
            config: self.config.clone(),
        }
    }

    /// Appends `seq` to the cursor window, with its record while the window's byte budget
    /// allows.
    fn hold_ahead(&mut self, seq: u64, record: Cow<'_, MessageRecord>) {
        let size = record_size(&record);
        let keep = self.ahead_bytes + size <= AHEAD_BYTES_MAX;
        if keep {
            self.ahead_bytes += size;
        }
        self.ahead
            .push_back((seq, keep.then(|| record.into_owned())));
    }

    /// Standard queues: no live record has a smaller sequence number (`None`: not known
    /// without reading). A record before the cursor is leased, ready in the index or
    /// delayed; with none of the last two, it is leased. (Records moved in under an older
    /// number, by dead-lettering or redrive, are ready in the index.)
    fn live_floor(&self) -> Option<u64> {
        if self.source.is_some()
            || self.config.fifo
            || self.counters.ready > 0
            || self.counters.delayed > 0
            || self.leases.len() > FLOOR_LEASES_MAX
        {
            return None;
        }
        let cursor = self.counters.cursor;
        Some(self.leases.min_seq().map_or(cursor, |seq| seq.min(cursor)))
    }

    /// Takes entry `i` out of the cursor window.
    fn release_ahead(&mut self, i: usize) -> Option<(u64, Option<MessageRecord>)> {
        let entry = self.ahead.remove(i)?;
        if let Some(r) = &entry.1 {
            self.ahead_bytes -= record_size(r);
        }
        Some(entry)
    }

    fn lease_ms(&self, lease_timeout: Option<HumanDuration>) -> u64 {
        lease_timeout
            .unwrap_or(self.config.lease_timeout)
            .as_millis()
    }

    fn stats(&self, oldest_sent_ms: Option<u64>, now: u64) -> QueueStats {
        let c = &self.counters;
        let (visible, delayed) = if self.config.fifo {
            let heads = self.groups.delayed_heads();
            (c.ready.saturating_sub(heads), heads)
        } else {
            (c.ready, c.delayed)
        };
        QueueStats {
            visible,
            leased: c.leased,
            delayed,
            dead_lettered: c.dead_lettered,
            oldest_age_ms: oldest_sent_ms.map(|s| now.saturating_sub(s)),
            sent_total: c.sent_total,
            expired_total: c.expired_total,
            dedup_hits_total: c.dedup_hits_total,
            activity: self.activity,
        }
    }
}

/// The engine.
pub(crate) struct Engine {
    store: Store,
    ks: Keyspaces,
    queues: HashMap<String, QueueState>,
    names: HashMap<u64, String>,
    next_seq: u64,
    /// The sequence counter as last written: batches that take no sequence skip the key.
    persisted_seq: u64,
    next_qid: u64,
    rng: StdRng,
    /// Queues whose counters changed in the batch being built.
    dirty: HashSet<u64>,
    /// Shared lease entries (queue id, entry id) that a message left in the batch being
    /// built: deleted when none is left, rewritten when one was released.
    dirty_shared: HashSet<(u64, u64)>,
    topics: HashMap<String, topics::TopicState>,
    /// Topics whose counters changed in the batch being built.
    dirty_topics: HashSet<String>,
    /// Streams with events to scavenge, and when to look at each next.
    scavenge: HashMap<String, u64>,
    /// Event-store appends since start.
    stream_activity: streams::StreamActivity,
}

fn read_u64(ks: &Keyspace, key: &[u8]) -> Result<u64> {
    Ok(match ks.get(key)? {
        Some(v) => codec::le_u64_at(&v, 0, "sequence")?,
        None => 1,
    })
}

impl Engine {
    /// A new random CloudEvent id from the engine's random source.
    pub(crate) fn new_event_id(&mut self) -> String {
        topics::new_event_id(&mut self.rng)
    }

    pub(crate) fn random(&mut self) -> u128 {
        self.rng.random()
    }

    pub(crate) fn open(store: Store, now: u64, seed: Option<u64>) -> Result<Self> {
        let ks = Keyspaces {
            meta: store.keyspace("meta")?,
            msg: store.keyspace("msg")?,
            state: store.keyspace("state")?,
            index: store.keyspace("index")?,
            log: store.keyspace("log")?,
            kv: store.keyspace("kv")?,
            streams: store.keyspace("streams")?,
        };
        let next_seq = read_u64(&ks.meta, SEQ_KEY)?;
        let next_qid = read_u64(&ks.meta, QID_KEY)?;
        let mut engine = Self {
            store,
            ks,
            queues: HashMap::new(),
            names: HashMap::new(),
            next_seq,
            persisted_seq: next_seq,
            next_qid,
            rng: match seed {
                Some(s) => StdRng::seed_from_u64(s),
                None => StdRng::from_os_rng(),
            },
            dirty: HashSet::new(),
            dirty_shared: HashSet::new(),
            topics: HashMap::new(),
            dirty_topics: HashSet::new(),
            scavenge: HashMap::new(),
            stream_activity: streams::StreamActivity::default(),
        };
        engine.load_topics()?;
        engine.ensure_all_topic(now)?;
        engine.load_scavenging(now)?;
        for meta in engine.load_metas::<QueueMeta>(b"queue/", "queue")? {
            let counters = engine.load_counters(meta.id)?;
            engine.install(QueueState::new(meta, counters), now)?;
        }
        engine.load_subscriptions(now)?;
        // Ready sequences were numbered per queue before they came from the message
        // sequence counter: new ones must follow every one in use.
        let rseq_max = engine.queues.values().map(|q| q.counters.next_rseq);
        engine.next_seq = engine.next_seq.max(rseq_max.max().unwrap_or(0));
        Ok(engine)
    }

    /// Every definition stored in `meta` under `prefix`.
    fn load_metas<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
        what: &'static str,
    ) -> Result<Vec<T>> {
        self.ks
            .meta
            .range(prefix, &codec::prefix_end(prefix), usize::MAX)?
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v).map_err(|_| Error::Corrupt(Corrupt { what })))
            .collect()
    }

    /// The persisted counters of queue `qid`.
    fn load_counters(&self, qid: u64) -> Result<Counters> {
        Ok(match self.ks.meta.get(&counters_key(qid))? {
            Some(v) => Counters::decode(&v)?,
            None => Counters::default(),
        })
    }

    /// Recovers a loaded queue's delivery state and makes it known by id and name.
    fn install(&mut self, mut q: QueueState, now: u64) -> Result<()> {
        self.recover_queue(&mut q, now)?;
        // Shared lease entries left with no message leased go with the next write.
        for (id, s) in &q.shared {
            if s.outstanding == 0 {
                self.dirty_shared.insert((q.qid, *id));
            }
        }
        self.names.insert(q.qid, q.name.clone());
        self.queues.insert(q.name.clone(), q);
        Ok(())
    }

    /// Rebuilds the in-memory delivery state of `q` from its indexes.
    fn recover_queue(&self, q: &mut QueueState, now: u64) -> Result<()> {
        let qid = q.qid;
        let lease_prefix = codec::index_key(qid, kind::LEASE, &[]);
        for key in
            self.ks
                .index
                .keys(&lease_prefix, &codec::prefix_end(&lease_prefix), usize::MAX)?
        {
            let deadline = codec::u64_at(&key, 9)?;
            let seq = codec::u64_at(&key, 17)?;
            let stored = self.ks.state.get(&codec::msg_key(qid, seq))?;
            let state = match &stored {
                Some(v) => MessageState::decode(v)?,
                None => self.lease_state(qid, seq, deadline)?,
            };
            let group = if q.config.fifo {
                match self.read_record_of(q, seq)? {
                    Some(r) => r.group,
                    None => Some(self.find_fifo_group(qid, seq)?),
                }
            } else {
                None
            };
            q.leases.insert(
                seq,
                Lease {
                    deadline_ms: deadline,
                    epoch: state.receive_count,
                    group,
                    entry: if stored.is_some() {
                        LeaseEntry::Own
                    } else {
                        LeaseEntry::Carried
                    },
                },
            );
        }
        // Shared lease entries: a listed message is still leased under one unless it has a
        // state record (a second guard: an entry is rewritten when a message leaves it
        // other than by an ack) or, in a queue, its record is gone (acked). A subscription's
        // entries are rewritten at every ack.
        let owns_records = q.source.is_none();
        let shared_prefix = codec::index_key(qid, kind::SHARED_LEASE, &[]);
        for (key, value) in self.ks.index.range(
            &shared_prefix,
            &codec::prefix_end(&shared_prefix),
            usize::MAX,
        )? {
            let deadline = codec::u64_at(&key, 9)?;
            let id = codec::u64_at(&key, 17)?;
            let mut stored = codec::SharedLease::decode(&value)?;
            let mut leased = Vec::with_capacity(stored.seqs.len());
            for &seq in &stored.seqs {
                let key = codec::msg_key(qid, seq);
                if q.leases.get(seq).is_none()
                    && (!owns_records || self.ks.msg.get(&key)?.is_some())
                    && self.ks.state.get(&key)?.is_none()
                {
                    leased.push(seq);
                }
            }
            for &seq in &leased {
                q.leases.insert(
                    seq,
                    Lease {
                        deadline_ms: deadline,
                        epoch: 1,
                        group: None,
                        entry: LeaseEntry::Shared(id),
                    },
                );
            }
            let outstanding = leased.len();
            stored.seqs = leased;
            q.shared.insert(
                id,
                Shared {
                    deadline_ms: deadline,
                    stored,
                    outstanding,
                    released: false,
                },
            );
        }
        let delayed_prefix = codec::index_key(qid, kind::DELAYED, &[]);
        q.delayed_next_due = self
            .ks
            .index
            .keys(&delayed_prefix, &codec::prefix_end(&delayed_prefix), 1)?
            .first()
            .map(|k| codec::u64_at(k, 9))
            .transpose()?;
        if q.config.fifo {
            let parked_prefix = codec::index_key(qid, kind::PARKED, &[]);
            let parked: HashSet<Vec<u8>> = self
                .ks
                .index
                .keys(
                    &parked_prefix,
                    &codec::prefix_end(&parked_prefix),
                    usize::MAX,
                )?
                .into_iter()
                .map(|k| k[9..].to_vec())
                .collect();
            let fifo_prefix = codec::index_key(qid, kind::FIFO, &[]);
            let keys =
                self.ks
                    .index
                    .keys(&fifo_prefix, &codec::prefix_end(&fifo_prefix), usize::MAX)?;
            let mut i = 0;
            while i < keys.len() {
                let (group_part, head_seq) = split_fifo_key(&keys[i])?;
                let mut pending = 0u64;
                while i < keys.len() && split_fifo_key(&keys[i])?.0 == group_part {
                    pending += 1;
                    i += 1;
                }
                let group = group_from_part(group_part)?;
                let head = self.read_state(qid, head_seq)?;
                q.groups.restore(
                    &group,
                    pending,
                    head.visible_at,
                    matches!(head.location, Location::Leased(_)),
                    parked.contains(group_part),
                    now,
                );
            }
        }
        Ok(())
    }

    fn read_state(&self, qid: u64, seq: u64) -> Result<MessageState> {
        let q = self.names.get(&qid).and_then(|n| self.queues.get(n));
        let lease = q.and_then(|q| q.leases.get(seq));
        // A first delivery keeps its state in its lease entry, shared or its own.
        if let (Some(q), Some(lease)) = (q, lease)
            && let LeaseEntry::Shared(id) = lease.entry
        {
            let received = q.shared.get(&id).ok_or(Corrupt {
                what: "shared lease (missing)",
            })?;
            return Ok(MessageState {
                receive_count: 1,
                first_receive_ms: received.stored.received_ms,
                visible_at: received.stored.received_ms,
                location: Location::Leased(lease.deadline_ms),
            });
        }
        if let Some(v) = self.ks.state.get(&codec::msg_key(qid, seq))? {
            return Ok(MessageState::decode(&v)?);
        }
        let lease = lease
            .filter(|l| l.entry == LeaseEntry::Carried)
            .ok_or(Corrupt {
                what: "message state (missing)",
            })?;
        self.lease_state(qid, seq, lease.deadline_ms)
    }

    /// Takes `seq` out of the lease entry of its lease `lease` in the batch being built (the
    /// caller takes it out of the lease table or changes its entry before the batch is
    /// written); `acked`: its record is deleted in the same batch.
    fn drop_lease_entry(
        &mut self,
        batch: &mut Batch,
        qid: u64,
        seq: u64,
        lease: &Lease,
        acked: bool,
    ) {
        match lease.entry {
            LeaseEntry::Own | LeaseEntry::Carried => batch.delete(
                &self.ks.index,
                codec::lease_key(qid, lease.deadline_ms, seq),
            ),
            LeaseEntry::Shared(id) => {
                let q = self.names.get(&qid).and_then(|n| self.queues.get_mut(n));
                if let Some(s) = q.and_then(|q| q.shared.get_mut(&id)) {
                    s.outstanding = s.outstanding.saturating_sub(1);
                    s.released |= !acked;
                    self.dirty_shared.insert((qid, id));
                }
            }
        }
    }

    /// The state of a first delivery kept in its lease entry, whose value is the receive
    /// time.
    fn lease_state(&self, qid: u64, seq: u64, deadline: u64) -> Result<MessageState> {
        let v = self
            .ks
            .index
            .get(&codec::lease_key(qid, deadline, seq))?
            .ok_or(Corrupt {
                what: "message state (missing)",
            })?;
        let first_receive_ms = codec::le_u64_at(&v, 0, "lease entry")?;
        Ok(MessageState {
            receive_count: 1,
            first_receive_ms,
            visible_at: first_receive_ms,
            location: Location::Leased(deadline),
        })
    }

    fn read_message(&self, qid: u64, seq: u64) -> Result<MessageRecord> {
        self.read_record(qid, seq)?.ok_or(Error::Corrupt(Corrupt {
            what: "message (missing)",
        }))
    }

    /// A message's record: from the queue's own records, or for a subscription from its
    /// topic's log, where retention or compaction may have removed it (`None`).
    fn read_record(&self, qid: u64, seq: u64) -> Result<Option<MessageRecord>> {
        match self.names.get(&qid).and_then(|n| self.queues.get(n)) {
            Some(q) => self.read_record_of(q, seq),
            None => Err(Error::Corrupt(Corrupt { what: "queue id" })),
        }
    }

    fn read_record_of(&self, q: &QueueState, seq: u64) -> Result<Option<MessageRecord>> {
        let Some(src) = &q.source else {
            return match self.ks.msg.get(&codec::msg_key(q.qid, seq))? {
                Some(v) => Ok(Some(MessageRecord::decode(&v)?)),
                None => Ok(None),
            };
        };
        let Some(v) = self.ks.log.get(&codec::log_key(src.tid, seq))? else {
            return Ok(None);
        };
        let entry = LogEntry::decode(&v)?;
        let group = q.config.fifo.then(|| src.group_of(&entry.event));
        Ok(Some(topics::record_of(entry, group)))
    }

    /// The group of a FIFO member found by its key alone (its event is gone from the log).
    fn find_fifo_group(&self, qid: u64, seq: u64) -> Result<String> {
        let prefix = codec::index_key(qid, kind::FIFO, &[]);
        for key in self
            .ks
            .index
            .keys(&prefix, &codec::prefix_end(&prefix), usize::MAX)?
        {
            let (part, s) = split_fifo_key(&key)?;
            if s == seq {
                return group_from_part(part);
            }
        }
        Ok(String::new())
    }

    /// Whether queue `qid` keeps its own message records (subscriptions read their topic's).
    fn owns_records(&self, qid: u64) -> bool {
        self.names
            .get(&qid)
            .and_then(|n| self.queues.get(n))
            .is_some_and(|q| q.source.is_none())
    }

    fn queue(&self, name: &str) -> Result<&QueueState> {
        self.queues.get(name).ok_or_else(|| not_found(name))
    }

    fn queue_mut(&mut self, name: &str) -> Result<&mut QueueState> {
        self.queues.get_mut(name).ok_or_else(|| not_found(name))
    }

    /// A new queue, topic or subscription id; `batch` persists the counter.
    fn allocate_id(&mut self, batch: &mut Batch) -> u64 {
        let id = self.next_qid;
        self.next_qid += 1;
        batch.put(
            &self.ks.meta,
            QID_KEY.to_vec(),
            self.next_qid.to_le_bytes().to_vec(),
        );
        id
    }

    /// Deletes every key under `prefix` in `ks`, a chunk per batch, each scan starting after
    /// the last deleted key so no tombstone is stepped over twice. Returns how many.
    fn delete_prefix(&self, ks: &Keyspace, prefix: &[u8]) -> Result<u64> {
        let end = codec::prefix_end(prefix);
        let mut start = prefix.to_vec();
        let mut total = 0;
        loop {
            let keys = ks.keys(&start, &end, PURGE_CHUNK)?;
            let Some(last) = keys.last() else {
                return Ok(total);
            };
            start = [last.as_ref(), &[0]].concat();
            total += keys.len() as u64;
            let mut batch = self.store.batch();
            for k in keys {
                batch.delete(ks, k);
            }
            self.store.write(batch)?;
        }
    }

    /// Writes the batch with every dirty queue's and topic's counters and, if it moved, the
    /// message sequence counter.
    fn write(&mut self, mut batch: Batch) -> Result<Ticket> {
        for (qid, id) in self.dirty_shared.drain() {
            let Some(q) = self.names.get(&qid).and_then(|n| self.queues.get_mut(n)) else {
                continue;
            };
            let Some(s) = q.shared.get_mut(&id) else {
                continue;
            };
            let key = codec::shared_lease_key(qid, s.deadline_ms, id);
            if s.outstanding == 0 {
                batch.delete(&self.ks.index, key);
                q.shared.remove(&id);
            } else if s.released {
                let leases = &q.leases;
                s.stored.seqs.retain(|seq| {
                    leases
                        .get(*seq)
                        .is_some_and(|l| l.entry == LeaseEntry::Shared(id))
                });
                s.released = false;
                batch.put(&self.ks.index, key, s.stored.encode());
            }
        }
        for qid in self.dirty.drain() {
            if let Some(q) = self.names.get(&qid).and_then(|n| self.queues.get(n)) {
                batch.put(&self.ks.meta, counters_key(qid), q.counters.encode());
            }
        }
        for name in self.dirty_topics.drain() {
            if let Some(t) = self.topics.get(&name) {
                batch.put(
                    &self.ks.meta,
                    topics::counters_key(t.tid),
                    t.counters.encode(),
                );
            }
        }
        let seq_changed = self.next_seq != self.persisted_seq;
        if seq_changed {
            batch.put(
                &self.ks.meta,
                SEQ_KEY.to_vec(),
                self.next_seq.to_le_bytes().to_vec(),
            );
        }
        let ticket = self.store.write(batch)?;
        if seq_changed {
            self.persisted_seq = self.next_seq;
        }
        Ok(ticket)
    }

    pub(crate) fn notify_handle(&self, name: &str) -> Result<Waker> {
        Ok(self.queue(name)?.notify.clone())
    }

    pub(crate) fn all_notifies(&self) -> Vec<Waker> {
        self.queues.values().map(|q| q.notify.clone()).collect()
    }

    fn oldest_sent(&self, q: &QueueState) -> Result<Option<u64>> {
        if q.source.is_some() {
            return self.oldest_pending_event(q);
        }
        let start = codec::msg_key(q.qid, q.retention_hint);
        let end = codec::prefix_end(&codec::queue_prefix(q.qid));
        match self.ks.msg.range(&start, &end, 1)?.first() {
            Some((_, v)) => Ok(Some(MessageRecord::decode(v)?.sent_ms)),
            None => Ok(None),
        }
    }

    fn info(&self, q: &QueueState, now: u64) -> Result<QueueInfo> {
        Ok(QueueInfo {
            name: q.name.clone(),
            config: q.config.clone(),
            created_ms: q.created_ms,
            stats: q.stats(self.oldest_sent(q)?, now),
        })
    }

    pub(crate) fn queue_info(&self, name: &str, now: u64) -> Result<QueueInfo> {
        self.info(self.queue(name)?, now)
    }

    pub(crate) fn list(&self, now: u64) -> Result<Vec<QueueInfo>> {
        let mut names: Vec<&String> = self
            .queues
            .iter()
            .filter(|(_, q)| q.source.is_none())
            .map(|(n, _)| n)
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|n| self.info(&self.queues[n], now))
            .collect()
    }

    /// Every queue and subscription with its counts, by name, and the event store's
    /// append counts: what `/metrics` reports. `oldest_age` reads each queue's oldest
    /// message from the store; without it the counts are in memory only.
    pub(crate) fn metrics(
        &self,
        now: u64,
        oldest_age: bool,
    ) -> Result<(Vec<crate::QueueMetrics>, streams::StreamActivity)> {
        let mut names: Vec<&String> = self.queues.keys().collect();
        names.sort();
        let mut queues = Vec::with_capacity(names.len());
        for n in names {
            let q = &self.queues[n];
            let (subscription, backlog) = match self.subscription_of(q) {
                Some((topic, sub, backlog)) => (Some((topic, sub)), backlog),
                None => (None, 0),
            };
            queues.push(crate::QueueMetrics {
                name: q.name.clone(),
                subscription,
                backlog,
                stats: q.stats(
                    if oldest_age {
                        self.oldest_sent(q)?
                    } else {
                        None
                    },
                    now,
                ),
            });
        }
        Ok((queues, self.stream_activity))
    }

    fn dead_letter_users(&self, name: &str) -> Vec<String> {
        let mut users: Vec<String> = self
            .queues
            .values()
            .filter(|q| {
                q.config
                    .dead_letter_queue
                    .as_ref()
                    .is_some_and(|d| d.as_str() == name)
            })
            .map(|q| q.name.clone())
            .collect();
        users.sort();
        users
    }

    pub(crate) fn put_queue(
        &mut self,
        name: &Name,
        config: QueueConfig,
        now: u64,
    ) -> Result<(bool, Ticket)> {
        if let Some(dlq) = &config.dead_letter_queue {
            if dlq == name {
                return Err(Error::DeadLetterQueueInvalid(
                    "must be another queue than the queue itself".into(),
                ));
            }
            let target = self
                .queues
                .get(dlq.as_str())
                .ok_or_else(|| Error::DeadLetterQueueNotFound(dlq.to_string()))?;
            if target.config.fifo != config.fifo {
                return Err(Error::DeadLetterQueueInvalid(format!(
                    "{dlq:?} must be {} like this queue",
                    if config.fifo {
                        "FIFO"
                    } else {
                        "a standard queue"
                    }
                )));
            }
        }
        let mut batch = self.store.batch();
        let created = match self.queues.get_mut(name.as_str()) {
            Some(q) => {
                if q.config.fifo != config.fifo {
                    return Err(Error::FifoImmutable);
                }
                q.config = config;
                false
            }
            None => {
                let qid = self.allocate_id(&mut batch);
                let meta = QueueMeta {
                    id: qid,
                    name: name.to_string(),
                    created_ms: now,
                    config,
                };
                let mut q = QueueState::new(meta, Counters::default());
                q.window_complete = true;
                q.ahead_complete = true;
                self.names.insert(qid, q.name.clone());
                self.queues.insert(q.name.clone(), q);
                self.dirty.insert(qid);
                true
            }
        };
        let q = &self.queues[name.as_str()];
        let meta = serde_json::to_vec(&q.meta()).expect("queue meta serializes");
        batch.put(&self.ks.meta, queue_meta_key(name.as_str()), meta);
        let ticket = self.write(batch)?;
        Ok((created, ticket))
    }

    pub(crate) fn delete_queue(&mut self, name: &str) -> Result<(Ticket, Waker)> {
        let q = self.queue(name)?;
        let mut users: Vec<String> = self
            .dead_letter_users(name)
            .into_iter()
            .filter(|u| u != name)
            .collect();
        users.extend(self.forwarding_subscriptions(name));
        if !users.is_empty() {
            return Err(Error::QueueInUse {
                queue: name.to_owned(),
                used_by: users,
            });
        }
        let qid = q.qid;
        let notify = q.notify.clone();
        self.purge(name)?;
        // Remove whatever is left under the queue's id: dedup ids, parked groups.
        self.delete_prefix(&self.ks.index, &codec::queue_prefix(qid))?;
        let mut batch = self.store.batch();
        batch.delete(&self.ks.meta, queue_meta_key(name));
        batch.delete(&self.ks.meta, counters_key(qid));
        self.queues.remove(name);
        self.names.remove(&qid);
        let ticket = self.write(batch)?;
        Ok((ticket, notify))
    }

    // ---- send ----

    pub(crate) fn send(
        &mut self,
        name: &str,
        messages: Vec<NewMessage>,
        now: u64,
    ) -> Result<(Vec<SendOutcome>, Ticket, Waker)> {
        let mut batch = self.store.batch();
        let (outcomes, notify) = self.send_into(&mut batch, name, messages, now)?;
        Ok((outcomes, self.write(batch)?, notify))
    }

    /// [`Self::send`] into a caller's batch, which the caller writes.
    pub(crate) fn send_into(
        &mut self,
        batch: &mut Batch,
        name: &str,
        messages: Vec<NewMessage>,
        now: u64,
    ) -> Result<(Vec<SendOutcome>, Waker)> {
        let (qid, config, notify) = {
            let q = self.queue(name)?;
            (q.qid, q.config.clone(), q.notify.clone())
        };
        let mut outcomes = Vec::with_capacity(messages.len());
        let mut batch_dedup: HashMap<String, u64> = HashMap::new();
        for m in messages {
            if let Err(e) = validate_message(&m, &config) {
                outcomes.push(SendOutcome::Failed(e));
                continue;
            }
            if let Some(id) = &m.dedup_id {
                let existing = match batch_dedup.get(id) {
                    Some(seq) => Some(*seq),
                    None => self.dedup_lookup(qid, id.as_bytes(), now)?,
                };
                if let Some(seq) = existing {
                    let q = self.queue_mut(name)?;
                    q.counters.dedup_hits_total += 1;
                    self.dirty.insert(qid);
                    outcomes.push(SendOutcome::Duplicate(codec::message_id(seq)));
                    continue;
                }
            }
            let seq = take(&mut self.next_seq);
            if let Some(id) = &m.dedup_id {
                let expires = now + config.dedup_window.as_millis();
                self.remember_dedup(batch, qid, id.as_bytes(), expires, seq);
                batch_dedup.insert(id.clone(), seq);
            }
            let delay = m.delay.unwrap_or(config.delay).as_millis();
            let size = (m.body.len() + m.attributes.len()) as u64;
            let record = MessageRecord {
                sent_ms: now,
                group: m.group,
                dedup_id: m.dedup_id,
                attributes: m.attributes,
                body: m.body,
                dead_letter: None,
                stateless: Stateless::No,
            };
            self.insert_message(batch, qid, seq, &record, now + delay, 0, 0, now)?;
            let q = self.queue_mut(name)?;
            q.counters.sent_total += 1;
            q.activity.sent += 1;
            q.activity.sent_bytes += size;
            outcomes.push(SendOutcome::Sent(codec::message_id(seq)));
        }
        Ok((outcomes, notify))
    }

    /// Remembers dedup id `id` of queue or topic `qid` for `seq` until `expires`.
    fn remember_dedup(&self, batch: &mut Batch, qid: u64, id: &[u8], expires: u64, seq: u64) {
        let mut v = expires.to_le_bytes().to_vec();
        v.extend_from_slice(&seq.to_le_bytes());
        batch.put(&self.ks.index, codec::index_key(qid, kind::DEDUP, &[id]), v);
        batch.put(
            &self.ks.index,
            codec::index_key(qid, kind::DEDUP_EXPIRY, &[&expires.to_be_bytes(), id]),
            Vec::new(),
        );
    }

    /// The sequence number (or offset) remembered for a live dedup id of `qid`.
    fn dedup_lookup(&self, qid: u64, id: &[u8], now: u64) -> Result<Option<u64>> {
        let Some(v) = self
            .ks
            .index
            .get(&codec::index_key(qid, kind::DEDUP, &[id]))?
        else {
            return Ok(None);
        };
        let expires = codec::le_u64_at(&v, 0, "dedup entry")?;
        let seq = codec::le_u64_at(&v, 8, "dedup entry")?;
        Ok(delivery::is_duplicate(Some(expires), now).then_some(seq))
    }

    /// Puts a message into queue `qid`: record, state and the index its visibility calls for.
    #[allow(clippy::too_many_arguments)]
    fn insert_message(
        &mut self,
        batch: &mut Batch,
        qid: u64,
        seq: u64,
        record: &MessageRecord,
        visible_at: u64,
        receive_count: u32,
        first_receive_ms: u64,
        now: u64,
    ) -> Result<()> {
        let name = self
            .names
            .get(&qid)
            .cloned()
            .ok_or(Corrupt { what: "queue id" })?;
        let q = self
            .queues
            .get_mut(&name)
            .ok_or(Corrupt { what: "queue id" })?;
        // A standard queue's message that is ready now and has never been delivered needs
        // no state record: the cursor reaches it, or its record carries its ready sequence.
        let unstated = q.source.is_none() && receive_count == 0;
        q.retention_hint = q.retention_hint.min(seq);
        q.retention_low = q.retention_low.min(seq);
        let (location, stateless) = if q.config.fifo {
            let group = record.group.as_deref().unwrap_or("");
            batch.put(&self.ks.index, codec::fifo_key(qid, group, seq), Vec::new());
            q.counters.ready += 1;
            q.groups.on_enqueue(group, visible_at, now);
            (Some(Location::Fifo), Stateless::No)
        } else if visible_at > now {
            let location = push_delayed(&self.ks.index, batch, q, seq, visible_at);
            (Some(location), Stateless::No)
        } else if unstated && seq + 1 == self.next_seq && seq >= q.ahead_scan_next {
            // Numbered just now: nothing enqueued earlier comes after it.
            push_ahead(q, seq, record);
            (None, Stateless::Cursor)
        } else {
            let rseq = push_ready(&self.ks.index, batch, q, take(&mut self.next_seq), seq);
            if unstated {
                (None, Stateless::Indexed(rseq))
            } else {
                (Some(Location::Ready(rseq)), Stateless::No)
            }
        };
        if q.source.is_none() {
            batch.put(
                &self.ks.msg,
                codec::msg_key(qid, seq),
                record.encode_as(stateless),
            );
        }
        self.dirty.insert(qid);
        if let Some(location) = location {
            let state = MessageState {
                receive_count,
                first_receive_ms,
                visible_at,
                location,
            };
            batch.put(&self.ks.state, codec::msg_key(qid, seq), state.encode());
        }
        Ok(())
    }

    // ---- receive ----

    pub(crate) fn receive(
        &mut self,
        name: &str,
        max: usize,
        lease_timeout: Option<HumanDuration>,
        now: u64,
    ) -> Result<(Vec<Delivery>, Ticket)> {
        let q = self.queue(name)?;
        let (qid, fifo, lease_ms, retention_ms, in_flight_max) = (
            q.qid,
            q.config.fifo,
            q.lease_ms(lease_timeout),
            q.config.retention.as_millis(),
            q.config.max_in_flight as usize,
        );
        if let Some(queue) = q
            .source
            .as_ref()
            .and_then(topics::LogSource::forward_target)
        {
            return Err(Error::NotPull {
                subscription: name.to_owned(),
                queue: queue.to_owned(),
            });
        }
        if q.leases.len() >= in_flight_max && self.has_backlog(q) {
            return Err(Error::InFlightLimit(in_flight_max as u32));
        }
        if fifo && q.source.is_some() {
            self.pump_fifo(name, now)?;
        }
        let owns_records = self.queue(name)?.source.is_none();
        let mut batch = self.store.batch();
        let mut out = Vec::new();
        let mut removed: HashSet<u64> = HashSet::new();
        let mut shared: Vec<(u64, Vec<u64>)> = Vec::new();
        while out.len() < max {
            let q = self.queue_mut(name)?;
            if q.leases.len() >= in_flight_max {
                break;
            }
            // `from_log`: taken from a subscription's topic log for the first time;
            // `unstated`: known to have no state record (taken from the log or by the cursor).
            let (seq, group, from_log, unstated, known) = if fifo {
                let Some(group) = q.groups.lease_next(now) else {
                    break;
                };
                let Some(seq) = self.fifo_head(qid, &group, &removed)? else {
                    // The scheduler believed the group had messages; trust the store.
                    let q = self.queue_mut(name)?;
                    q.groups.on_remove_head(&group, None, now);
                    continue;
                };
                (seq, Some(group), false, false, None)
            } else {
                match self.next_ready(name)? {
                    None => break,
                    Some(Ready::Indexed { rseq, seq }) => {
                        batch.delete(&self.ks.index, codec::ready_key(qid, rseq));
                        // Enqueued ready under this very entry: no state record.
                        let record = self.read_record(qid, seq)?;
                        let unstated = record
                            .as_ref()
                            .is_some_and(|r| r.stateless == Stateless::Indexed(rseq));
                        (seq, None, false, unstated, Some(record))
                    }
                    Some(Ready::Ahead(seq, record)) => (seq, None, false, true, record.map(Some)),
                    Some(Ready::Log(offset, entry)) => (
                        offset,
                        None,
                        true,
                        true,
                        entry.map(|e| Some(topics::record_of(e, None))),
                    ),
                }
            };
            let record = match known {
                Some(record) => record,
                None => self.read_record(qid, seq)?,
            };
            let Some(record) = record else {
                // A subscription's event that left its topic's log before delivery.
                self.drop_vanished(
                    &mut batch,
                    name,
                    seq,
                    group.as_deref(),
                    from_log,
                    &mut removed,
                    now,
                )?;
                continue;
            };
            // `fresh`: never delivered and without a state record (taken from the log, or
            // enqueued ready); its first lease carries its state.
            let stored = if unstated {
                None
            } else {
                self.ks.state.get(&codec::msg_key(qid, seq))?
            };
            let fresh = stored.is_none();
            let mut state = match stored {
                Some(v) => MessageState::decode(&v)?,
                None => MessageState {
                    receive_count: 0,
                    first_receive_ms: 0,
                    visible_at: now,
                    location: Location::Fifo,
                },
            };
            if delivery::is_expired(record.sent_ms, retention_ms, now) {
                // Past retention: dropped instead of delivered.
                if from_log {
                    self.queue_mut(name)?.counters.expired_total += 1;
                    self.dirty.insert(qid);
                } else {
                    self.remove_message(&mut batch, name, seq, &mut removed, now)?;
                    self.queue_mut(name)?.counters.expired_total += 1;
                }
                continue;
            }
            state.receive_count += 1;
            if state.first_receive_ms == 0 {
                state.first_receive_ms = now;
            }
            let deadline = now + lease_ms;
            state.location = Location::Leased(deadline);
            let entry = if !fresh {
                batch.put(&self.ks.state, codec::msg_key(qid, seq), state.encode());
                batch.put(
                    &self.ks.index,
                    codec::lease_key(qid, deadline, seq),
                    Vec::new(),
                );
                LeaseEntry::Own
            } else {
                // Listed in one of this receive's shared lease entries, which carry the
                // state (receive count 1, received now).
                let chunk_max = if owns_records {
                    usize::MAX
                } else {
                    SHARED_SUBSCRIPTION_MAX
                };
                match shared.last_mut() {
                    Some((_, seqs)) if seqs.len() < chunk_max => seqs.push(seq),
                    _ => shared.push((take(&mut self.next_seq), vec![seq])),
                }
                LeaseEntry::Shared(shared.last().expect("just pushed").0)
            };
            let q = self.queue_mut(name)?;
            if !from_log {
                q.counters.ready -= 1;
            }
            q.counters.leased += 1;
            q.activity.received += 1;
            if state.receive_count > 1 {
                q.activity.redelivered += 1;
            }
            q.leases.insert(
                seq,
                Lease {
                    deadline_ms: deadline,
                    epoch: state.receive_count,
                    group: group.clone(),
                    entry,
                },
            );
            self.dirty.insert(qid);
            out.push(Delivery {
                id: codec::message_id(seq),
                seq,
                receipt: Receipt {
                    qid,
                    seq,
                    epoch: state.receive_count,
                }
                .encode(),
                receive_count: state.receive_count,
                first_receive_ms: state.first_receive_ms,
                sent_ms: record.sent_ms,
                lease_deadline_ms: deadline,
                group: record.group,
                dead_letter: record.dead_letter.map(|d| DeadLetterInfo {
                    source_queue: d.source_queue,
                    reason: d.reason,
                    error: d.error,
                    attempts: d.attempts,
                    at_ms: d.at_ms,
                }),
                body: record.body,
                attributes: record.attributes,
            });
        }
        for (id, seqs) in shared {
            let deadline = now + lease_ms;
            let stored = codec::SharedLease {
                received_ms: now,
                seqs,
            };
            batch.put(
                &self.ks.index,
                codec::shared_lease_key(qid, deadline, id),
                stored.encode(),
            );
            let shared = Shared {
                deadline_ms: deadline,
                outstanding: stored.seqs.len(),
                stored,
                released: false,
            };
            self.queue_mut(name)?.shared.insert(id, shared);
        }
        let ticket = self.flush(batch)?;
        Ok((out, ticket))
    }

    /// A message that was dead-lettered from another queue leaves this one: that queue's
    /// `dead_lettered` count goes down.
    fn release_dead_letter_count(&mut self, record: &MessageRecord) -> Result<()> {
        if let Some(d) = &record.dead_letter
            && let Some(name) = self.names.get(&d.source_qid).cloned()
            && let Some(src) = self.queues.get_mut(&name)
        {
            src.counters.dead_lettered = src.counters.dead_lettered.saturating_sub(1);
            self.dirty.insert(d.source_qid);
        }
        Ok(())
    }

    /// Pops the next ready message of a standard queue. A queue takes whichever of its
    /// ready index and its cursor holds the message enqueued first (ready sequences and
    /// message sequences come from one counter); a subscription drains its ready index
    /// (redeliveries) before it takes the next matching event from its topic's log.
    fn next_ready(&mut self, name: &str) -> Result<Option<Ready>> {
        let indexed = self.fill_window(name)?;
        if self.queue(name)?.source.is_some() {
            return match indexed {
                Some(_) => Ok(self.pop_indexed(name)?),
                None => Ok(self
                    .next_from_log(name)?
                    .map(|(offset, entry)| Ready::Log(offset, entry))),
            };
        }
        match (indexed, self.fill_ahead(name)?) {
            (Some(rseq), Some(seq)) if seq < rseq => self.pop_ahead(name),
            (Some(_), _) => self.pop_indexed(name),
            (None, Some(_)) => self.pop_ahead(name),
            (None, None) => Ok(None),
        }
    }

    /// The ready sequence at the front of the ready window, refilled from the index when
    /// empty.
    fn fill_window(&mut self, name: &str) -> Result<Option<u64>> {
        let q = self.queue_mut(name)?;
        if let Some((rseq, _)) = q.window.front() {
            return Ok(Some(*rseq));
        }
        if q.window_complete || q.counters.ready == 0 {
            return Ok(None);
        }
        let (qid, from) = (q.qid, q.window_scan_next);
        let start = codec::index_key(qid, kind::READY, &[&from.to_be_bytes()]);
        let end = codec::prefix_end(&codec::index_key(qid, kind::READY, &[]));
        let entries = self.ks.index.range(&start, &end, WINDOW_MAX)?;
        let q = self.queue_mut(name)?;
        q.window_complete = entries.len() < WINDOW_MAX;
        for (k, v) in &entries {
            let rseq = codec::u64_at(k, 9)?;
            let seq = codec::le_u64_at(v, 0, "ready entry")?;
            q.window.push_back((rseq, seq));
            q.window_scan_next = rseq + 1;
        }
        Ok(q.window.front().map(|(rseq, _)| *rseq))
    }

    fn pop_indexed(&mut self, name: &str) -> Result<Option<Ready>> {
        Ok(self
            .queue_mut(name)?
            .window
            .pop_front()
            .map(|(rseq, seq)| Ready::Indexed { rseq, seq }))
    }

    /// The sequence number of the next message the cursor of standard queue `name`
    /// reaches, scanning the queue's records ahead when the window is empty.
    fn fill_ahead(&mut self, name: &str) -> Result<Option<u64>> {
        let mut scanned = 0;
        loop {
            let q = self.queue_mut(name)?;
            let qid = q.qid;
            if let Some((seq, _)) = q.ahead.front() {
                return Ok(Some(*seq));
            }
            if q.ahead_complete || scanned >= AHEAD_SCAN_MAX {
                return Ok(None);
            }
            let start = codec::msg_key(qid, q.ahead_scan_next);
            let end = codec::prefix_end(&codec::queue_prefix(qid));
            let entries = self.ks.msg.range(&start, &end, WINDOW_MAX)?;
            scanned += WINDOW_MAX;
            let q = self.queue_mut(name)?;
            q.ahead_complete = entries.len() < WINDOW_MAX;
            for (k, v) in &entries {
                let seq = codec::u64_at(k, 8)?;
                q.ahead_scan_next = seq + 1;
                let record = MessageRecord::decode(v)?;
                // Others are found through their state record or the ready index.
                if record.stateless == Stateless::Cursor {
                    q.hold_ahead(seq, Cow::Owned(record));
                }
            }
            if q.ahead.is_empty() {
                // Nothing to deliver up to here: the cursor moves past what was examined.
                q.counters.cursor = q.ahead_scan_next;
                self.dirty.insert(qid);
            }
        }
    }

    /// Takes the message at the cursor and moves the cursor past it.
    fn pop_ahead(&mut self, name: &str) -> Result<Option<Ready>> {
        let q = self.queue_mut(name)?;
        let Some((seq, record)) = q.release_ahead(0) else {
            return Ok(None);
        };
        q.counters.cursor = q.ahead.front().map_or(q.ahead_scan_next, |(s, _)| *s);
        let qid = q.qid;
        self.dirty.insert(qid);
        Ok(Some(Ready::Ahead(seq, record)))
    }

    /// The first message of `group` not in `skip`.
    fn fifo_head(&self, qid: u64, group: &str, skip: &HashSet<u64>) -> Result<Option<u64>> {
        let prefix = codec::index_key(qid, kind::FIFO, &[&codec::group_part(group)]);
        let end = codec::prefix_end(&prefix);
        for key in self.ks.index.keys(&prefix, &end, skip.len() + 1)? {
            let seq = codec::u64_at(&key, prefix.len())?;
            if !skip.contains(&seq) {
                return Ok(Some(seq));
            }
        }
        Ok(None)
    }

    fn fifo_head_visible(&self, qid: u64, group: &str, skip: &HashSet<u64>) -> Result<Option<u64>> {
        match self.fifo_head(qid, group, skip)? {
            Some(seq) => Ok(Some(self.read_state(qid, seq)?.visible_at)),
            None => Ok(None),
        }
    }

    // ---- ack, nack, extend ----

    /// Checks a receipt against queue `name`'s leases; returns the message's sequence number.
    fn check_receipt(&self, name: &str, receipt: &str) -> std::result::Result<u64, Error> {
        let q = self.queue(name)?;
        let r = Receipt::parse(receipt).ok_or(Error::ReceiptInvalid)?;
        if r.qid != q.qid {
            // Every queue id ever issued is below `next_qid`, deleted queues' included.
            return Err(if r.qid < self.next_qid {
                Error::ReceiptForeign
            } else {
                Error::ReceiptInvalid
            });
        }
        match q.leases.get(r.seq) {
            Some(lease) if lease.epoch == r.epoch => Ok(r.seq),
            _ => Err(Error::ReceiptStale),
        }
    }

    pub(crate) fn ack(
        &mut self,
        name: &str,
        receipts: &[String],
        now: u64,
    ) -> Result<(Vec<ReceiptOutcome>, Ticket, Option<Waker>)> {
        let mut batch = self.store.batch();
        let (outcomes, notify) = self.ack_into(&mut batch, name, receipts, now)?;
        Ok((outcomes, self.write(batch)?, notify))
    }

    /// [`Self::ack`] into a caller's batch, which the caller writes. Returns the queue's
    /// waker when the acks may let a waiting receive take a message: the next of a FIFO
    /// group, or one held back by the in-flight limit. (Waking receivers on every ack
    /// would send each idle one back to the queue for nothing.)
    pub(crate) fn ack_into(
        &mut self,
        batch: &mut Batch,
        name: &str,
        receipts: &[String],
        now: u64,
    ) -> Result<(Vec<ReceiptOutcome>, Option<Waker>)> {
        let (qid, notify) = {
            let q = self.queue(name)?;
            let frees = q.config.fifo || q.leases.len() >= q.config.max_in_flight as usize;
            (q.qid, frees.then(|| q.notify.clone()))
        };
        let is_dead_letter_queue = self.has_dead_letter_sources(name);
        let owns_records = self.owns_records(qid);
        let mut outcomes = Vec::with_capacity(receipts.len());
        let mut removed = HashSet::new();
        for receipt in receipts {
            let seq = match self.check_receipt(name, receipt) {
                Ok(seq) => seq,
                Err(e) => {
                    outcomes.push(Err(e));
                    continue;
                }
            };
            let q = self.queue_mut(name)?;
            let lease = q.leases.remove(seq).ok_or(Error::ReceiptStale)?;
            q.counters.leased -= 1;
            q.activity.acked += 1;
            self.dirty.insert(qid);
            self.drop_lease_entry(batch, qid, seq, &lease, owns_records);
            if lease.entry == LeaseEntry::Own {
                batch.delete(&self.ks.state, codec::msg_key(qid, seq));
            }
            if owns_records {
                batch.delete(&self.ks.msg, codec::msg_key(qid, seq));
            }
            removed.insert(seq);
            if let Some(group) = &lease.group {
                batch.delete(&self.ks.index, codec::fifo_key(qid, group, seq));
                let next = self.fifo_head_visible(qid, group, &removed)?;
                self.queue_mut(name)?
                    .groups
                    .on_remove_head(group, next, now);
            }
            if is_dead_letter_queue {
                let record = self.read_message(qid, seq)?;
                self.release_dead_letter_count(&record)?;
            }
            outcomes.push(Ok(()));
        }
        Ok((outcomes, notify))
    }

    fn has_dead_letter_sources(&self, name: &str) -> bool {
        self.queues.values().any(|q| {
            q.config
                .dead_letter_queue
                .as_ref()
                .is_some_and(|d| d.as_str() == name)
        })
    }

    pub(crate) fn nack(
        &mut self,
        name: &str,
        receipts: &[String],
        nack: &Nack,
        now: u64,
    ) -> Result<(Vec<ReceiptOutcome>, Ticket, Vec<Waker>)> {
        let mut batch = self.store.batch();
        let (outcomes, woken) = self.nack_into(&mut batch, name, receipts, nack, now)?;
        Ok((outcomes, self.write(batch)?, woken))
    }

    /// [`Self::nack`] into a caller's batch, which the caller writes.
    pub(crate) fn nack_into(
        &mut self,
        batch: &mut Batch,
        name: &str,
        receipts: &[String],
        nack: &Nack,
        now: u64,
    ) -> Result<(Vec<ReceiptOutcome>, Vec<Waker>)> {
        self.release_into(batch, name, receipts, now, || ReleaseCause::Nacked {
            delay_ms: nack.delay.map(HumanDuration::as_millis),
            reason: nack.reason.clone(),
        })
    }

    /// Stops leased messages that would extend an event chain past its hop limit: each
    /// moves to the dead-letter queue with reason `loop_detected`, or is removed if the
    /// queue has none.
    pub(crate) fn stop_loops(
        &mut self,
        name: &str,
        receipts: &[String],
        now: u64,
    ) -> Result<(Vec<ReceiptOutcome>, Ticket, Vec<Waker>)> {
        let mut batch = self.store.batch();
        let (outcomes, woken) = self.release_into(&mut batch, name, receipts, now, || {
            ReleaseCause::LoopDetected
        })?;
        Ok((outcomes, self.write(batch)?, woken))
    }

    fn release_into(
        &mut self,
        batch: &mut Batch,
        name: &str,
        receipts: &[String],
        now: u64,
        cause: impl Fn() -> ReleaseCause,
    ) -> Result<(Vec<ReceiptOutcome>, Vec<Waker>)> {
        let mut outcomes = Vec::with_capacity(receipts.len());
        let mut woken = vec![self.queue(name)?.notify.clone()];
        let mut removed = HashSet::new();
        for receipt in receipts {
            let seq = match self.check_receipt(name, receipt) {
                Ok(seq) => seq,
                Err(e) => {
                    outcomes.push(Err(e));
                    continue;
                }
            };
            if let Some(w) = self.release_lease(batch, name, seq, cause(), &mut removed, now)? {
                woken.push(w);
            }
            outcomes.push(Ok(()));
        }
        Ok((outcomes, woken))
    }

    /// Ends the lease on `seq` for `cause`: the message is retried or dead-lettered. Returns
    /// the dead-letter queue's waker when a message moved there.
    fn release_lease(
        &mut self,
        batch: &mut Batch,
        name: &str,
        seq: u64,
        cause: ReleaseCause,
        removed: &mut HashSet<u64>,
        now: u64,
    ) -> Result<Option<Waker>> {
        let jitter: f64 = self.rng.random();
        let q = self.queue(name)?;
        let qid = q.qid;
        if q.leases.get(seq).is_none() {
            return Err(Error::ReceiptStale);
        }
        // Read while the lease is known: a first delivery keeps its state in the lease.
        let mut state = self.read_state(qid, seq)?;
        let q = self.queue_mut(name)?;
        let lease = q.leases.remove(seq).ok_or(Error::ReceiptStale)?;
        q.counters.leased -= 1;
        match cause {
            ReleaseCause::LeaseExpired => q.activity.lease_expired += 1,
            ReleaseCause::Nacked { .. } => q.activity.nacked += 1,
            ReleaseCause::LoopDetected => {}
        }
        let config = q.config.clone();
        self.dirty.insert(qid);
        self.drop_lease_entry(batch, qid, seq, &lease, false);
        match delivery::release(&config, state.receive_count, cause, now, jitter) {
            Release::Retry { at_ms } => {
                state.visible_at = at_ms;
                let q = self
                    .queues
                    .get_mut(name)
                    .ok_or_else(|| Error::QueueNotFound(name.to_owned()))?;
                state.location = if let Some(group) = &lease.group {
                    q.counters.ready += 1;
                    q.groups.on_release(group, at_ms, now);
                    Location::Fifo
                } else if at_ms > now {
                    push_delayed(&self.ks.index, batch, q, seq, at_ms)
                } else {
                    let rseq = take(&mut self.next_seq);
                    Location::Ready(push_ready(&self.ks.index, batch, q, rseq, seq))
                };
                batch.put(&self.ks.state, codec::msg_key(qid, seq), state.encode());
                Ok(None)
            }
            decision @ (Release::DeadLetter(_) | Release::Discard) => {
                let dlq_name = match &decision {
                    Release::DeadLetter(_) => Some(
                        config
                            .dead_letter_queue
                            .as_ref()
                            .map(|n| n.to_string())
                            .ok_or_else(|| Error::NoDeadLetterQueue(name.to_owned()))?,
                    ),
                    _ => None,
                };
                let owns_records = self.owns_records(qid);
                let record = self.read_record(qid, seq)?;
                if owns_records {
                    batch.delete(&self.ks.msg, codec::msg_key(qid, seq));
                }
                batch.delete(&self.ks.state, codec::msg_key(qid, seq));
                removed.insert(seq);
                if let Some(group) = &lease.group {
                    batch.delete(&self.ks.index, codec::fifo_key(qid, group, seq));
                    if config.park_group_on_dead_letter {
                        batch.put(
                            &self.ks.index,
                            codec::index_key(qid, kind::PARKED, &[&codec::group_part(group)]),
                            Vec::new(),
                        );
                        self.queue_mut(name)?.groups.park(group);
                    }
                    let next = self.fifo_head_visible(qid, group, removed)?;
                    self.queue_mut(name)?
                        .groups
                        .on_remove_head(group, next, now);
                }
                let Some(mut record) = record else {
                    // A subscription's event already gone from its topic's log.
                    self.queue_mut(name)?.counters.expired_total += 1;
                    return Ok(None);
                };
                let (Some(dlq_name), Release::DeadLetter(reason)) = (dlq_name, decision) else {
                    // Discarded: removed like an ack; nothing else keeps it.
                    self.release_dead_letter_count(&record)?;
                    return Ok(None);
                };
                let dlq_qid = self.queue(&dlq_name)?.qid;
                // A message dead-lettered twice (from a DLQ with its own DLQ) frees its
                // first source's count.
                self.release_dead_letter_count(&record)?;
                let (error, reason_code) = match &reason {
                    DeadLetterReason::Error(text) => (Some(text.clone()), reason.code()),
                    _ => (None, reason.code()),
                };
                record.dead_letter = Some(DeadLetter {
                    source_qid: qid,
                    source_queue: name.to_owned(),
                    reason: reason_code.to_owned(),
                    error,
                    attempts: state.receive_count,
                    at_ms: now,
                    source_seq: (!owns_records).then_some(seq),
                });
                let q = self.queue_mut(name)?;
                q.counters.dead_lettered += 1;
                q.activity.dead_letter_moves += 1;
                // A subscription's events are numbered by topic offset, which another
                // source's message may share: the copy gets a sequence number of its own.
                let dlq_seq = if owns_records {
                    seq
                } else {
                    take(&mut self.next_seq)
                };
                self.insert_message(batch, dlq_qid, dlq_seq, &record, now, 0, 0, now)?;
                tracing::debug!(queue = name, dead_letter_queue = %dlq_name, reason = reason_code, "message dead-lettered");
                Ok(Some(self.queue(&dlq_name)?.notify.clone()))
            }
        }
    }

    pub(crate) fn extend(
        &mut self,
        name: &str,
        receipts: &[String],
        lease_timeout: HumanDuration,
        now: u64,
    ) -> Result<(Vec<ReceiptOutcome>, Ticket)> {
        let qid = self.queue(name)?.qid;
        let mut batch = self.store.batch();
        let mut outcomes = Vec::with_capacity(receipts.len());
        let deadline = now + lease_timeout.as_millis();
        for receipt in receipts {
            let seq = match self.check_receipt(name, receipt) {
                Ok(seq) => seq,
                Err(e) => {
                    outcomes.push(Err(e));
                    continue;
                }
            };
            let lease = self
                .queue(name)?
                .leases
                .get(seq)
                .cloned()
                .ok_or(Error::ReceiptStale)?;
            let mut state = self.read_state(qid, seq)?;
            self.drop_lease_entry(&mut batch, qid, seq, &lease, false);
            let q = self.queue_mut(name)?;
            q.leases.extend(seq, deadline);
            if lease.entry == LeaseEntry::Own {
                batch.put(
                    &self.ks.index,
                    codec::lease_key(qid, deadline, seq),
                    Vec::new(),
                );
                state.location = Location::Leased(deadline);
                batch.put(&self.ks.state, codec::msg_key(qid, seq), state.encode());
            } else {
                // The state moves with the lease into an entry of its own.
                q.leases.set_entry(seq, LeaseEntry::Carried);
                batch.put(
                    &self.ks.index,
                    codec::lease_key(qid, deadline, seq),
                    state.first_receive_ms.to_le_bytes().to_vec(),
                );
            }
            outcomes.push(Ok(()));
        }
        let ticket = self.write(batch)?;
        Ok((outcomes, ticket))
    }

    // ---- removal: purge, retention, redrive ----

    /// Removes message `seq` from queue `name` wherever it is (ready, delayed, leased or
    /// in its FIFO group), with its counters; returns its record.
    fn remove_message(
        &mut self,
        batch: &mut Batch,
        name: &str,
        seq: u64,
        removed: &mut HashSet<u64>,
        now: u64,
    ) -> Result<MessageRecord> {
        let q = self.queue(name)?;
        let (qid, fifo, owns_records) = (q.qid, q.config.fifo, q.source.is_none());
        let record = match self.read_record(qid, seq)? {
            Some(r) => r,
            None if !owns_records => MessageRecord {
                sent_ms: 0,
                group: fifo.then(|| self.find_fifo_group(qid, seq)).transpose()?,
                dedup_id: None,
                attributes: Vec::new(),
                body: Vec::new(),
                dead_letter: None,
                stateless: Stateless::No,
            },
            None => {
                return Err(Error::Corrupt(Corrupt {
                    what: "message (missing)",
                }));
            }
        };
        // Enqueued ready and never delivered: no state record; its record says how it is
        // found (`None`: by the cursor).
        let location = match (self.read_state(qid, seq), record.stateless) {
            (Ok(state), _) => Some(state.location),
            (Err(Error::Corrupt(_)), Stateless::Indexed(rseq)) => Some(Location::Ready(rseq)),
            (Err(Error::Corrupt(_)), Stateless::Cursor) => None,
            (Err(e), _) => return Err(e),
        };
        let group = record.group.clone().unwrap_or_default();
        // Usually the oldest message of its group, but redrive from a dead-letter queue
        // shared by several sources can take one from behind the head.
        let was_head = fifo && self.fifo_head(qid, &group, removed)? == Some(seq);
        if owns_records {
            batch.delete(&self.ks.msg, codec::msg_key(qid, seq));
        }
        batch.delete(&self.ks.state, codec::msg_key(qid, seq));
        removed.insert(seq);
        let Some(location) = location else {
            let q = self.queue_mut(name)?;
            q.counters.ready -= 1;
            // The window is in sequence order; removals are usually at its front.
            if let Ok(i) = q.ahead.binary_search_by_key(&seq, |(s, _)| *s) {
                q.release_ahead(i);
            }
            self.dirty.insert(qid);
            self.release_dead_letter_count(&record)?;
            return Ok(record);
        };
        match location {
            Location::Ready(rseq) => {
                batch.delete(&self.ks.index, codec::ready_key(qid, rseq));
                let q = self.queue_mut(name)?;
                q.counters.ready -= 1;
                q.window.retain(|(r, _)| *r != rseq);
            }
            Location::Delayed(due) => {
                batch.delete(&self.ks.index, codec::delayed_key(qid, due, seq));
                self.queue_mut(name)?.counters.delayed -= 1;
            }
            Location::Leased(deadline) => {
                let q = self.queue_mut(name)?;
                q.counters.leased -= 1;
                let lease = q.leases.remove(seq).unwrap_or(Lease {
                    deadline_ms: deadline,
                    epoch: 0,
                    group: None,
                    entry: LeaseEntry::Own,
                });
                self.drop_lease_entry(batch, qid, seq, &lease, owns_records);
            }
            Location::Fifo => {
                self.queue_mut(name)?.counters.ready -= 1;
            }
        }
        if fifo {
            batch.delete(&self.ks.index, codec::fifo_key(qid, &group, seq));
            if was_head {
                let next = self.fifo_head_visible(qid, &group, removed)?;
                self.queue_mut(name)?
                    .groups
                    .on_remove_head(&group, next, now);
            } else {
                self.queue_mut(name)?.groups.on_remove_behind_head(&group);
            }
        }
        self.dirty.insert(qid);
        self.release_dead_letter_count(&record)?;
        Ok(record)
    }

    pub(crate) fn purge(&mut self, name: &str) -> Result<(u64, Ticket)> {
        if self.queue(name)?.source.is_some() {
            return self.reset_subscription(name);
        }
        let qid = self.queue(name)?.qid;
        let mut total = 0;
        let mut start = codec::msg_key(qid, 0);
        let end = codec::prefix_end(&codec::queue_prefix(qid));
        loop {
            let keys = self.ks.msg.keys(&start, &end, PURGE_CHUNK)?;
            let Some(last) = keys.last() else {
                break;
            };
            // Go on after the last key: the deleted ones stay behind as tombstones that a
            // scan from the start would have to step over again.
            start = [last.as_ref(), &[0]].concat();
            let mut batch = self.store.batch();
            let mut removed = HashSet::new();
            for k in &keys {
                let seq = codec::u64_at(k, 8)?;
                self.remove_message(&mut batch, name, seq, &mut removed, 0)?;
                total += 1;
            }
            self.write(batch)?;
        }
        let q = self.queue_mut(name)?;
        q.window.clear();
        q.window_complete = true;
        q.ahead.clear();
        q.ahead_bytes = 0;
        q.ahead_complete = true;
        q.delayed_next_due = None;
        q.leases.clear();
        q.shared.clear();
        q.groups.clear();
        self.dirty.insert(qid);
        let ticket = self.write(self.store.batch())?;
        Ok((total, ticket))
    }

    pub(crate) fn redrive(
        &mut self,
        name: &str,
        max: u64,
        now: u64,
    ) -> Result<(Redrive, Ticket, Waker)> {
        let q = self.queue(name)?;
        let (qid, notify) = (q.qid, q.notify.clone());
        let dlq_name = q
            .config
            .dead_letter_queue
            .as_ref()
            .map(|n| n.to_string())
            .ok_or_else(|| Error::NoDeadLetterQueue(name.to_owned()))?;
        let dlq_qid = self.queue(&dlq_name)?.qid;
        let mut batch = self.store.batch();
        let mut moved = 0u64;
        let mut removed = HashSet::new();
        let mut from = 0u64;
        let end = codec::prefix_end(&codec::queue_prefix(dlq_qid));
        'scan: while moved < max {
            let entries = self
                .ks
                .msg
                .range(&codec::msg_key(dlq_qid, from), &end, 1_000)?;
            if entries.is_empty() {
                break;
            }
            for (k, v) in &entries {
                if moved >= max {
                    break 'scan;
                }
                let seq = codec::u64_at(k, 8)?;
                from = seq + 1;
                let record = MessageRecord::decode(v)?;
                if record
                    .dead_letter
                    .as_ref()
                    .is_none_or(|d| d.source_qid != qid)
                {
                    continue;
                }
                if self.queue(&dlq_name)?.leases.get(seq).is_some() {
                    // Someone is inspecting it in the dead-letter queue; leave it there.
                    continue;
                }
                let target_seq = record
                    .dead_letter
                    .as_ref()
                    .and_then(|d| d.source_seq)
                    .unwrap_or(seq);
                if self.queue(name)?.source.is_some()
                    && self.read_record(qid, target_seq)?.is_none()
                {
                    // The event left its topic's log; only the copy here remains.
                    continue;
                }
                let mut record =
                    self.remove_message(&mut batch, &dlq_name, seq, &mut removed, now)?;
                if let Some(group) = &record.group
                    && self.queue(name)?.config.fifo
                {
                    batch.delete(
                        &self.ks.index,
                        codec::index_key(qid, kind::PARKED, &[&codec::group_part(group)]),
                    );
                    self.queue_mut(name)?.groups.unpark(group, now);
                }
                record.dead_letter = None;
                self.insert_message(&mut batch, qid, target_seq, &record, now, 0, 0, now)?;
                moved += 1;
            }
        }
        let ticket = self.write(batch)?;
        let remaining = self.queue(name)?.counters.dead_lettered;
        Ok((Redrive { moved, remaining }, ticket, notify))
    }

    // ---- background work ----

    pub(crate) fn tick(&mut self, now: u64) -> Result<(Ticket, Vec<Waker>, Vec<RetentionCheck>)> {
        // Each kind of work writes its own batch: later work reads what earlier work wrote.
        let mut woken = Vec::new();
        let mut ticket = self.flush(self.store.batch())?;
        woken.extend(self.tick_topics(now)?);
        self.tick_streams(now)?;
        let names: Vec<String> = self.queues.keys().cloned().collect();
        let mut checks = Vec::new();
        for name in names {
            let mut wake = false;
            if let Some(w) = self.pump_subscription(&name, now)? {
                woken.push(w);
                wake = true;
            }
            let mut batch = self.store.batch();
            wake |= self.promote_delayed(&mut batch, &name, now)?;
            self.flush(batch)?;
            let mut batch = self.store.batch();
            let mut removed = HashSet::new();
            let expired = self.queue(&name)?.leases.expired(now, TICK_BATCH);
            for seq in expired {
                if let Some(w) = self.release_lease(
                    &mut batch,
                    &name,
                    seq,
                    ReleaseCause::LeaseExpired,
                    &mut removed,
                    now,
                )? {
                    woken.push(w);
                }
                wake = true;
            }
            self.flush(batch)?;
            if self.queue(&name)?.config.fifo
                && self
                    .queue(&name)?
                    .groups
                    .next_unblock()
                    .is_some_and(|t| t <= now)
            {
                wake = true;
            }
            let mut batch = self.store.batch();
            checks.extend(self.housekeeping(&mut batch, &name, now)?);
            ticket = self.flush(batch)?;
            if wake {
                woken.push(self.queue(&name)?.notify.clone());
            }
        }
        Ok((ticket, woken, checks))
    }

    /// Writes `batch` (with counters) if anything changed; the ticket covers all writes so far.
    fn flush(&mut self, batch: Batch) -> Result<Ticket> {
        if batch.is_empty() && self.dirty.is_empty() && self.dirty_shared.is_empty() {
            Ok(self.store.write(batch)?)
        } else {
            self.write(batch)
        }
    }

    fn promote_delayed(&mut self, batch: &mut Batch, name: &str, now: u64) -> Result<bool> {
        let q = self.queue(name)?;
        let qid = q.qid;
        if q.config.fifo || q.delayed_next_due.is_none_or(|d| d > now) {
            return Ok(false);
        }
        let start = codec::index_key(qid, kind::DELAYED, &[]);
        let due_end = codec::index_key(qid, kind::DELAYED, &[&(now + 1).to_be_bytes()]);
        let keys = self.ks.index.keys(&start, &due_end, TICK_BATCH)?;
        for key in &keys {
            let seq = codec::u64_at(key, 17)?;
            batch.delete(&self.ks.index, key.to_vec());
            let mut state = self.read_state(qid, seq)?;
            let q = self
                .queues
                .get_mut(name)
                .ok_or_else(|| Error::QueueNotFound(name.to_owned()))?;
            q.counters.delayed -= 1;
            let rseq = take(&mut self.next_seq);
            state.location = Location::Ready(push_ready(&self.ks.index, batch, q, rseq, seq));
            batch.put(&self.ks.state, codec::msg_key(qid, seq), state.encode());
        }
        self.dirty.insert(qid);
        let next_due = if keys.len() == TICK_BATCH {
            Some(now)
        } else {
            let end = codec::prefix_end(&start);
            self.ks
                .index
                .keys(&due_end, &end, 1)?
                .first()
                .map(|k| codec::u64_at(k, 9))
                .transpose()?
        };
        self.queue_mut(name)?.delayed_next_due = next_due;
        Ok(!keys.is_empty())
    }

    /// Forgets expired dedup ids, once a second per queue; returns the queue's retention
    /// check when one is due (at the same pace, sooner again while retention still finds
    /// expired messages). Dedup lookups check the expiry themselves, so forgetting late
    /// changes no answer.
    fn housekeeping(
        &mut self,
        batch: &mut Batch,
        name: &str,
        now: u64,
    ) -> Result<Option<RetentionCheck>> {
        let q = self.queue_mut(name)?;
        if now < q.housekeeping_next_check {
            return Ok(None);
        }
        q.housekeeping_next_check = now + HOUSEKEEPING_MS;
        // A subscription's events are kept, and dropped, by its topic.
        let check = q.source.is_none().then(|| {
            // Past every record acked since the last check, when the queue can tell where
            // its oldest live record is.
            if let Some(floor) = q.live_floor() {
                q.retention_hint = q.retention_hint.max(floor);
            }
            q.retention_low = u64::MAX;
            RetentionCheck {
                name: name.to_owned(),
                qid: q.qid,
                from: q.retention_hint,
                retention_ms: q.config.retention.as_millis(),
            }
        });
        let qid = q.qid;
        self.expire_dedup(batch, qid, now)?;
        Ok(check)
    }

    /// The message keyspace, for reading retention checks without the engine.
    pub(crate) fn messages(&self) -> Keyspace {
        self.ks.msg.clone()
    }

    /// Drops the messages `found` expired that are still there, and moves the queue's
    /// retention hint up to what the check read, short of anything enqueued since.
    pub(crate) fn finish_retention(
        &mut self,
        check: &RetentionCheck,
        found: RetentionFound,
        now: u64,
    ) -> Result<Ticket> {
        let mut batch = self.store.batch();
        let Some(q) = self.queues.get(&check.name).filter(|q| q.qid == check.qid) else {
            // Deleted (or deleted and made anew) meanwhile.
            return self.flush(batch);
        };
        let (qid, name) = (q.qid, check.name.as_str());
        let mut removed = HashSet::new();
        for &seq in &found.expired {
            // Acked, or removed some other way, since the check read it.
            if self.read_record(qid, seq)?.is_none() {
                continue;
            }
            self.remove_message(&mut batch, name, seq, &mut removed, now)?;
            self.queue_mut(name)?.counters.expired_total += 1;
        }
        let q = self.queue_mut(name)?;
        if !found.expired.is_empty() {
            q.housekeeping_next_check = now;
        }
        q.retention_hint = found.hint.min(q.retention_low);
        q.retention_low = u64::MAX;
        self.flush(batch)
    }

    /// Forgets expired dedup ids of queue or topic `qid`.
    fn expire_dedup(&mut self, batch: &mut Batch, qid: u64, now: u64) -> Result<()> {
        let start = codec::index_key(qid, kind::DEDUP_EXPIRY, &[]);
        let end = codec::index_key(qid, kind::DEDUP_EXPIRY, &[&(now + 1).to_be_bytes()]);
        for key in self.ks.index.keys(&start, &end, TICK_BATCH)? {
            let expires = codec::u64_at(&key, 9)?;
            let id = &key[17..];
            let dedup_key = codec::index_key(qid, kind::DEDUP, &[id]);
            // The id may have been reused after expiry; only its own entry goes.
            if let Some(v) = self.ks.index.get(&dedup_key)?
                && codec::le_u64_at(&v, 0, "dedup entry")? == expires
            {
                batch.delete(&self.ks.index, dedup_key);
            }
            batch.delete(&self.ks.index, key.to_vec());
        }
        Ok(())
    }
}

/// A queue's retention check: its oldest records, read without the engine lock (unless
/// the check starts at the queue's oldest live message, the read walks past whatever was
/// deleted since the last check, which on a busy queue is every message acked since).
pub(crate) struct RetentionCheck {
    name: String,
    qid: u64,
    /// The queue's retention hint when the check was taken.
    from: u64,
    retention_ms: u64,
}

/// What a [`RetentionCheck`] read: records past retention, and the new hint.
pub(crate) struct RetentionFound {
    expired: Vec<u64>,
    hint: u64,
}

impl RetentionCheck {
    /// Reads the queue's records from the hint on: those past retention, up to the first
    /// one that is not (records are appended in the order they are sent), at most
    /// `TICK_BATCH`. Needs no engine: the engine writes each batch atomically.
    pub(crate) fn read(&self, messages: &Keyspace, now: u64) -> Result<RetentionFound> {
        let end = codec::prefix_end(&codec::queue_prefix(self.qid));
        let entries = messages.range(&codec::msg_key(self.qid, self.from), &end, TICK_BATCH)?;
        let mut expired = Vec::new();
        for (k, v) in &entries {
            let seq = codec::u64_at(k, 8)?;
            if !delivery::is_expired(MessageRecord::decode(v)?.sent_ms, self.retention_ms, now) {
                return Ok(RetentionFound { expired, hint: seq });
            }
            expired.push(seq);
        }
        // All expired: the hint moves past them when the read saw the queue's last record;
        // otherwise the next check reads on from the first.
        let hint = match entries.last() {
            Some((k, _)) if entries.len() < TICK_BATCH => codec::u64_at(k, 8)? + 1,
            _ => self.from,
        };
        Ok(RetentionFound { expired, hint })
    }
}

/// Appends `seq` to the ready index of standard queue `q` under ready sequence `rseq`, a
/// number taken from the message sequence counter (so a queue can tell which of its index
/// and its cursor holds the earlier message); returns it.
fn push_ready(index: &Keyspace, batch: &mut Batch, q: &mut QueueState, rseq: u64, seq: u64) -> u64 {
    q.counters.next_rseq = rseq + 1;
    batch.put(
        index,
        codec::ready_key(q.qid, rseq),
        seq.to_le_bytes().to_vec(),
    );
    q.counters.ready += 1;
    if q.window_complete && q.window.len() < WINDOW_MAX {
        q.window.push_back((rseq, seq));
        q.window_scan_next = rseq + 1;
    } else {
        q.window_complete = false;
    }
    rseq
}

/// The next number of `counter`.
fn take(counter: &mut u64) -> u64 {
    *counter += 1;
    *counter - 1
}

/// Counts `seq` ready for the cursor of standard queue `q`, keeping it (and its record, if
/// room is left) in the window when the window holds everything scanned so far; otherwise
/// the next scan finds it.
fn push_ahead(q: &mut QueueState, seq: u64, record: &MessageRecord) {
    q.counters.ready += 1;
    if q.ahead_complete && q.ahead.len() < WINDOW_MAX {
        q.hold_ahead(seq, Cow::Borrowed(record));
        q.ahead_scan_next = seq + 1;
    } else {
        q.ahead_complete = false;
    }
}

/// The bytes a message record holds in memory, near enough.
fn record_size(r: &MessageRecord) -> usize {
    64 + r.body.len() + r.attributes.len()
}

/// Puts `seq` into the delayed index of standard queue `q` until `due`.
fn push_delayed(
    index: &Keyspace,
    batch: &mut Batch,
    q: &mut QueueState,
    seq: u64,
    due: u64,
) -> Location {
    batch.put(index, codec::delayed_key(q.qid, due, seq), Vec::new());
    q.counters.delayed += 1;
    q.delayed_next_due = Some(q.delayed_next_due.map_or(due, |d| d.min(due)));
    Location::Delayed(due)
}

/// Where the next message of a standard queue comes from.
enum Ready {
    /// The ready index.
    Indexed { rseq: u64, seq: u64 },
    /// A queue's cursor, with the record if the scan kept it.
    Ahead(u64, Option<MessageRecord>),
    /// A subscription's topic log, at this offset, with the entry if the scan kept it.
    Log(u64, Option<LogEntry>),
}

fn not_found(name: &str) -> Error {
    match name.split_once('/') {
        Some((topic, subscription)) => Error::SubscriptionNotFound {
            topic: topic.to_owned(),
            subscription: subscription.to_owned(),
        },
        None => Error::QueueNotFound(name.to_owned()),
    }
}

fn split_fifo_key(key: &[u8]) -> Result<(&[u8], u64)> {
    let len = *key.get(9).ok_or(Corrupt { what: "fifo key" })? as usize;
    let part = key.get(9..10 + len).ok_or(Corrupt { what: "fifo key" })?;
    let seq = codec::u64_at(key, 10 + len)?;
    Ok((part, seq))
}

fn group_from_part(part: &[u8]) -> Result<String> {
    String::from_utf8(part[1..].to_vec()).map_err(|_| Error::Corrupt(Corrupt { what: "group" }))
}

fn valid_key(field: &str, v: &str) -> Result<()> {
    if v.is_empty() || v.len() > KEY_LEN_MAX || v.chars().any(|c| c.is_control()) {
        return Err(Error::InvalidMessage(format!(
            "{field} must be 1..={KEY_LEN_MAX} bytes without control characters"
        )));
    }
    Ok(())
}

fn validate_message(m: &NewMessage, config: &QueueConfig) -> Result<()> {
    let size = m.body.len() + m.attributes.len();
    if size as u64 > config.max_message_size.0 {
        return Err(Error::MessageTooLarge {
            size,
            max: config.max_message_size.0,
        });
    }
    if let Some(g) = &m.group {
        valid_key("group", g)?;
    }
    if let Some(d) = &m.dedup_id {
        valid_key("dedup_id", d)?;
    }
    if let Some(d) = m.delay
        && d > config::limits::DELAY_MAX
    {
        return Err(Error::OutOfRange {
            field: "delay",
            value: d,
            min: HumanDuration::ZERO,
            max: config::limits::DELAY_MAX,
        });
    }
    Ok(())
}

mod commit;
pub(crate) mod streams;
mod topics;

pub use commit::Commit;

pub(crate) use topics::subscription_queue;

#[cfg(test)]
mod tests;
