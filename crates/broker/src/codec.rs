//! Binary layout of the broker's keys and records in the store, with length checks on read.
//!
//! Keyspaces: `meta` (queue definitions, counters, the message sequence), `msg` (immutable
//! message records), `state` (small mutable delivery state per message) and `index` (every
//! ordering index: ready, delayed, leased, FIFO groups, dedup ids). Keys start with the
//! queue id, big-endian, so one queue's entries are contiguous and ordered.

use std::fmt;

/// A record or key that does not decode: the store holds something this version did not
/// write. Reported, never silently skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt {what} record")]
pub struct Corrupt {
    pub what: &'static str,
}

/// Index kinds, the byte after the queue id in `index` keys.
pub mod kind {
    /// Ready messages of a standard queue: `rseq -> seq`.
    pub const READY: u8 = b'R';
    /// Delayed messages of a standard queue: `due, seq -> ()`.
    pub const DELAYED: u8 = b'D';
    /// Leases: `deadline, seq -> ()`, or the first receive time when the entry carries
    /// the state of a first delivery.
    pub const LEASE: u8 = b'L';
    /// Leases shared by the first deliveries of one receive (from a standard queue or
    /// subscription): `deadline, id -> receive time, seqs` ([`SharedLease`]).
    pub const SHARED_LEASE: u8 = b'S';
    /// FIFO group members: `group, seq -> ()`.
    pub const FIFO: u8 = b'F';
    /// Dedup ids: `id -> expires, seq`.
    pub const DEDUP: u8 = b'U';
    /// Dedup expiry order: `expires, id -> ()`.
    pub const DEDUP_EXPIRY: u8 = b'X';
    /// Parked FIFO groups: `group -> ()`.
    pub const PARKED: u8 = b'P';
    /// Compacted topics, the latest offset of each live key: `key -> offset`.
    pub const TABLE: u8 = b'K';
}

/// `qid` as a key prefix.
pub fn queue_prefix(qid: u64) -> [u8; 8] {
    qid.to_be_bytes()
}

/// The exclusive upper bound of all keys starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// `qid ‖ seq`, the key of a message in `msg` and `state`.
pub fn msg_key(qid: u64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&qid.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `qid ‖ kind ‖ parts…` for the `index` keyspace.
pub fn index_key(qid: u64, kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len = 9 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut k = Vec::with_capacity(len);
    k.extend_from_slice(&qid.to_be_bytes());
    k.push(kind);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

/// Ready-index key of a standard queue's entry `rseq`.
pub fn ready_key(qid: u64, rseq: u64) -> Vec<u8> {
    index_key(qid, kind::READY, &[&rseq.to_be_bytes()])
}

/// Delayed-index key of message `seq`, due at `due`.
pub fn delayed_key(qid: u64, due: u64, seq: u64) -> Vec<u8> {
    index_key(
        qid,
        kind::DELAYED,
        &[&due.to_be_bytes(), &seq.to_be_bytes()],
    )
}

/// Key of shared lease entry `id`, whose messages are leased until `deadline`.
pub fn shared_lease_key(qid: u64, deadline: u64, id: u64) -> Vec<u8> {
    index_key(
        qid,
        kind::SHARED_LEASE,
        &[&deadline.to_be_bytes(), &id.to_be_bytes()],
    )
}

/// The value of a shared lease entry: when its messages were received (their first
/// delivery), and which they are. A queue's entry may still list messages since acked
/// (their records are gone); a subscription's lists exactly those still leased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedLease {
    pub received_ms: u64,
    pub seqs: Vec<u64>,
}

impl SharedLease {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(8 + 8 * self.seqs.len()));
        w.u64(self.received_ms);
        for s in &self.seqs {
            w.u64(*s);
        }
        w.0
    }

    pub fn decode(buf: &[u8]) -> Result<Self, Corrupt> {
        let mut r = Reader::new(buf, "shared lease");
        let received_ms = r.u64()?;
        let mut seqs = Vec::with_capacity(buf.len() / 8);
        while !r.is_empty() {
            seqs.push(r.u64()?);
        }
        Ok(Self { received_ms, seqs })
    }
}

/// Lease-index key of message `seq`, leased until `deadline`.
pub fn lease_key(qid: u64, deadline: u64, seq: u64) -> Vec<u8> {
    index_key(
        qid,
        kind::LEASE,
        &[&deadline.to_be_bytes(), &seq.to_be_bytes()],
    )
}

/// FIFO-index key of message `seq` in `group`.
pub fn fifo_key(qid: u64, group: &str, seq: u64) -> Vec<u8> {
    index_key(qid, kind::FIFO, &[&group_part(group), &seq.to_be_bytes()])
}

/// The `group` part of a FIFO key: length byte and bytes, so groups never share a prefix.
pub fn group_part(group: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(group.len() + 1);
    p.push(group.len() as u8);
    p.extend_from_slice(group.as_bytes());
    p
}

/// Reads a big-endian u64 at `at` in `key`.
pub fn u64_at(key: &[u8], at: usize) -> Result<u64, Corrupt> {
    key.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or(Corrupt { what: "index key" })
}

/// Reads a little-endian u64 at `at` in a stored value.
pub fn le_u64_at(value: &[u8], at: usize, what: &'static str) -> Result<u64, Corrupt> {
    value
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or(Corrupt { what })
}

/// A little encoder for records.
#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
        self
    }
    pub fn opt_str(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(s) => self.u8(1).bytes(s.as_bytes()),
            None => self.u8(0),
        }
    }
}

/// The matching decoder; every read checks the remaining length.
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Corrupt> {
        if self.buf.len() < n {
            return Err(Corrupt { what: self.what });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    pub fn u8(&mut self) -> Result<u8, Corrupt> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, Corrupt> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, Corrupt> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], Corrupt> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn string(&mut self) -> Result<String, Corrupt> {
        let what = self.what;
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| Corrupt { what })
    }
    pub fn opt_string(&mut self) -> Result<Option<String>, Corrupt> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            _ => Err(Corrupt { what: self.what }),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn finish(self) -> Result<(), Corrupt> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Corrupt { what: self.what })
        }
    }
}

/// Where a message was dead-lettered from and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub source_qid: u64,
    pub source_queue: String,
    pub reason: String,
    pub error: Option<String>,
    pub attempts: u32,
    pub at_ms: u64,
    /// The message's sequence number in its source when it differs from the one it has in
    /// the dead-letter queue (events of a subscription are addressed by topic offset).
    pub source_seq: Option<u64>,
}

/// The immutable part of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub sent_ms: u64,
    pub group: Option<String>,
    pub dedup_id: Option<String>,
    /// JSON object text.
    pub attributes: Vec<u8>,
    /// JSON text.
    pub body: Vec<u8>,
    pub dead_letter: Option<DeadLetter>,
    /// Standard queues: how the message is found while it has no state record of its own
    /// (enqueued ready, never delivered).
    pub stateless: Stateless,
}

/// How a standard queue finds a message that was enqueued ready and has no state record;
/// its first lease entry carries its state from then on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stateless {
    /// It has a state record, or is not a standard queue's message.
    #[default]
    No,
    /// In the ready index under this ready sequence number.
    Indexed(u64),
    /// In no index: the queue's cursor reaches it in sequence order (it was enqueued at
    /// or after the cursor's scan position).
    Cursor,
}

/// Version 2 added the ready sequence (`Stateless::Indexed`), tag 2 of that field is
/// `Stateless::Cursor`; version 1 records are still read.
const MESSAGE_VERSION: u8 = 2;

impl MessageRecord {
    pub fn encode(&self) -> Vec<u8> {
        self.encode_as(self.stateless)
    }

    /// Encodes the record with `stateless` in place of its own.
    pub fn encode_as(&self, stateless: Stateless) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(
            64 + self.body.len() + self.attributes.len(),
        ));
        w.u8(MESSAGE_VERSION)
            .u64(self.sent_ms)
            .opt_str(self.group.as_deref())
            .opt_str(self.dedup_id.as_deref())
            .bytes(&self.attributes)
            .bytes(&self.body);
        match &self.dead_letter {
            None => {
                w.u8(0);
            }
            Some(d) => {
                w.u8(if d.source_seq.is_some() { 2 } else { 1 })
                    .u64(d.source_qid)
                    .bytes(d.source_queue.as_bytes())
                    .bytes(d.reason.as_bytes())
                    .opt_str(d.error.as_deref())
                    .u32(d.attempts)
                    .u64(d.at_ms);
                if let Some(seq) = d.source_seq {
                    w.u64(seq);
                }
            }
        }
        match stateless {
            Stateless::No => {
                w.u8(0);
            }
            Stateless::Indexed(r) => {
                w.u8(1).u64(r);
            }
            Stateless::Cursor => {
                w.u8(2);
            }
        }
        w.0
    }

    pub fn decode(buf: &[u8]) -> Result<Self, Corrupt> {
        let mut r = Reader::new(buf, "message");
        let version = r.u8()?;
        if version != 1 && version != MESSAGE_VERSION {
            return Err(Corrupt { what: "message" });
        }
        let sent_ms = r.u64()?;
        let group = r.opt_string()?;
        let dedup_id = r.opt_string()?;
        let attributes = r.bytes()?.to_vec();
        let body = r.bytes()?.to_vec();
        let dead_letter = match r.u8()? {
            0 => None,
            tag @ (1 | 2) => Some(DeadLetter {
                source_qid: r.u64()?,
                source_queue: r.string()?,
                reason: r.string()?,
                error: r.opt_string()?,
                attempts: r.u32()?,
                at_ms: r.u64()?,
                source_seq: if tag == 2 { Some(r.u64()?) } else { None },
            }),
            _ => return Err(Corrupt { what: "message" }),
        };
        let stateless = match (version, if version == 1 { 0 } else { r.u8()? }) {
            (1, _) | (_, 0) => Stateless::No,
            (_, 1) => Stateless::Indexed(r.u64()?),
            (_, 2) => Stateless::Cursor,
            _ => return Err(Corrupt { what: "message" }),
        };
        r.finish()?;
        Ok(Self {
            sent_ms,
            group,
            dedup_id,
            attributes,
            body,
            dead_letter,
            stateless,
        })
    }
}

/// Which index currently holds a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// Standard queue, ready under this ready sequence number.
    Ready(u64),
    /// Standard queue, delayed until this time.
    Delayed(u64),
    /// Leased until this deadline.
    Leased(u64),
    /// FIFO queue, waiting in its group.
    Fifo,
}

/// The mutable delivery state of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageState {
    pub receive_count: u32,
    pub first_receive_ms: u64,
    /// Not deliverable before this time.
    pub visible_at: u64,
    pub location: Location,
}

impl MessageState {
    pub fn encode(&self) -> Vec<u8> {
        let (tag, at) = match self.location {
            Location::Ready(r) => (0, r),
            Location::Delayed(d) => (1, d),
            Location::Leased(d) => (2, d),
            Location::Fifo => (3, 0),
        };
        let mut w = Writer(Vec::with_capacity(29));
        w.u32(self.receive_count)
            .u64(self.first_receive_ms)
            .u64(self.visible_at)
            .u8(tag)
            .u64(at);
        w.0
    }

    pub fn decode(buf: &[u8]) -> Result<Self, Corrupt> {
        let mut r = Reader::new(buf, "message state");
        let receive_count = r.u32()?;
        let first_receive_ms = r.u64()?;
        let visible_at = r.u64()?;
        let tag = r.u8()?;
        let at = r.u64()?;
        r.finish()?;
        let location = match tag {
            0 => Location::Ready(at),
            1 => Location::Delayed(at),
            2 => Location::Leased(at),
            3 => Location::Fifo,
            _ => {
                return Err(Corrupt {
                    what: "message state",
                });
            }
        };
        Ok(Self {
            receive_count,
            first_receive_ms,
            visible_at,
            location,
        })
    }
}

/// Persisted per-queue counters, rewritten in every batch that changes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Standard: messages in the ready index. FIFO: messages not leased.
    pub ready: u64,
    /// Standard: messages in the delayed index. FIFO: unused (delayed heads are derived).
    pub delayed: u64,
    pub leased: u64,
    /// Messages of this queue now in its dead-letter queue.
    pub dead_lettered: u64,
    pub next_rseq: u64,
    pub sent_total: u64,
    pub expired_total: u64,
    pub dedup_hits_total: u64,
    /// Subscriptions: the next topic offset not yet taken from the log. Standard queues:
    /// every message at or after it whose record is `Stateless::Cursor` is ready.
    pub cursor: u64,
}

impl Counters {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(64));
        for v in [
            self.ready,
            self.delayed,
            self.leased,
            self.dead_lettered,
            self.next_rseq,
            self.sent_total,
            self.expired_total,
            self.dedup_hits_total,
            self.cursor,
        ] {
            w.u64(v);
        }
        w.0
    }

    pub fn decode(buf: &[u8]) -> Result<Self, Corrupt> {
        let mut r = Reader::new(buf, "queue counters");
        let c = Self {
            ready: r.u64()?,
            delayed: r.u64()?,
            leased: r.u64()?,
            dead_lettered: r.u64()?,
            next_rseq: r.u64()?,
            sent_total: r.u64()?,
            expired_total: r.u64()?,
            dedup_hits_total: r.u64()?,
            cursor: 0,
        };
        // Counters written before subscriptions existed end here.
        let c = if r.is_empty() {
            c
        } else {
            Counters {
                cursor: r.u64()?,
                ..c
            }
        };
        r.finish()?;
        Ok(c)
    }
}

/// An event in a topic's log: key `tid ‖ offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// When the topic accepted it; never less than an earlier offset's.
    pub published_ms: u64,
    /// The compaction key, on compacted topics.
    pub key: Option<String>,
    /// Whether it deletes its key (compacted topics).
    pub tombstone: bool,
    /// The event as structured-mode CloudEvents JSON.
    pub event: Vec<u8>,
}

const LOG_VERSION: u8 = 1;

impl LogEntry {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(32 + self.event.len()));
        w.u8(LOG_VERSION)
            .u64(self.published_ms)
            .opt_str(self.key.as_deref())
            .u8(u8::from(self.tombstone))
            .bytes(&self.event);
        w.0
    }

    pub fn decode(buf: &[u8]) -> Result<Self, Corrupt> {
        let mut r = Reader::new(buf, "log entry");
        if r.u8()? != LOG_VERSION {
            return Err(Corrupt { what: "log entry" });
        }
        let e = Self {
            published_ms: r.u64()?,
            key: r.opt_string()?,
            tombstone: r.u8()? != 0,
            event: r.bytes()?.to_vec(),
        };
        r.finish()?;
        Ok(e)
    }
}

/// Key of a topic's log entry.
pub fn log_key(tid: u64, offset: u64) -> Vec<u8> {
    msg_key(tid, offset)
}

/// A receipt: which delivery of which message of which queue. Shown to users as 40 hex
/// digits; anything else is not a receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub qid: u64,
    pub seq: u64,
    pub epoch: u32,
}

impl fmt::Display for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl Receipt {
    /// The receipt as users see it (one per delivered message, so written without the
    /// formatting machinery).
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(40);
        push_hex(&mut s, self.qid, 16);
        push_hex(&mut s, self.seq, 16);
        push_hex(&mut s, u64::from(self.epoch), 8);
        s
    }

    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 40 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(Self {
            qid: u64::from_str_radix(&s[0..16], 16).ok()?,
            seq: u64::from_str_radix(&s[16..32], 16).ok()?,
            epoch: u32::from_str_radix(&s[32..40], 16).ok()?,
        })
    }
}

/// A message id as shown to users: its global sequence number in 16 hex digits.
pub fn message_id(seq: u64) -> String {
    let mut s = String::with_capacity(16);
    push_hex(&mut s, seq, 16);
    s
}

/// Appends the last `digits` hex digits of `v`, lowercase and zero-padded.
fn push_hex(out: &mut String, v: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(char::from(HEX[((v >> (i * 4)) & 0xf) as usize]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_truncation_is_caught() {
        let m = MessageRecord {
            sent_ms: 7,
            group: Some("g".into()),
            dedup_id: None,
            attributes: b"{}".to_vec(),
            body: b"{\"a\":1}".to_vec(),
            dead_letter: Some(DeadLetter {
                source_qid: 3,
                source_queue: "orders".into(),
                reason: "error".into(),
                error: Some("boom".into()),
                attempts: 5,
                at_ms: 9,
                source_seq: Some(11),
            }),
            stateless: Stateless::Indexed(12),
        };
        for stateless in [Stateless::No, Stateless::Indexed(12), Stateless::Cursor] {
            let m = MessageRecord {
                stateless,
                ..m.clone()
            };
            let enc = m.encode();
            assert_eq!(MessageRecord::decode(&enc).unwrap(), m);
            for cut in 0..enc.len() {
                assert!(MessageRecord::decode(&enc[..cut]).is_err(), "cut at {cut}");
            }
        }
        let s = MessageState {
            receive_count: 2,
            first_receive_ms: 5,
            visible_at: 6,
            location: Location::Leased(99),
        };
        assert_eq!(MessageState::decode(&s.encode()).unwrap(), s);
        let c = Counters {
            ready: 1,
            next_rseq: 8,
            cursor: 12,
            ..Counters::default()
        };
        assert_eq!(Counters::decode(&c.encode()).unwrap(), c);
        let old = &c.encode()[..64];
        assert_eq!(Counters::decode(old).unwrap().cursor, 0);
        let shared = SharedLease {
            received_ms: 5,
            seqs: vec![1, u64::MAX, 7],
        };
        let enc = shared.encode();
        assert_eq!(SharedLease::decode(&enc).unwrap(), shared);
        for cut in [0, 7, 9, 17, enc.len() - 1] {
            assert!(SharedLease::decode(&enc[..cut]).is_err(), "cut at {cut}");
        }
        let l = LogEntry {
            published_ms: 3,
            key: Some("k".into()),
            tombstone: true,
            event: b"{}".to_vec(),
        };
        let enc = l.encode();
        assert_eq!(LogEntry::decode(&enc).unwrap(), l);
        for cut in 0..enc.len() {
            assert!(LogEntry::decode(&enc[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn receipts_parse_only_their_own_shape() {
        let r = Receipt {
            qid: 1,
            seq: u64::MAX,
            epoch: 3,
        };
        assert_eq!(Receipt::parse(&r.to_string()), Some(r));
        for (qid, seq, epoch) in [(0, 0, 0), (1, 0xabc, 7), (u64::MAX, 1 << 63, u32::MAX)] {
            let r = Receipt { qid, seq, epoch };
            assert_eq!(r.encode(), format!("{qid:016x}{seq:016x}{epoch:08x}"));
            assert_eq!(message_id(seq), format!("{seq:016x}"));
        }
        for bad in ["", "xyz", &"0".repeat(39), &"g".repeat(40), &"0".repeat(41)] {
            assert_eq!(Receipt::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn prefix_end_bounds_every_key_with_the_prefix() {
        assert_eq!(prefix_end(&[1, 2]), vec![1, 3]);
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
        assert_eq!(prefix_end(&[0xff]), vec![0xff, 0xff]);
    }
}
