//! Invocation records: each invocation's outcome, timings, trigger, attempt
//! and captured log lines, kept per function up to a size cap (oldest first
//! out), for `sluice fn logs`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sluice_store::{Keyspace, Store};

use crate::Result;

/// Bytes of invocation records kept per function.
pub const RECORD_BYTES_MAX: u64 = 16 << 20;
/// Most records answered by one read.
pub const READ_MAX: usize = 1_000;

/// One line of an invocation's log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Line {
    pub at_ms: u64,
    pub level: String,
    pub context: String,
    pub message: String,
}

/// What is kept of one invocation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// Position in the function's records, from 1.
    #[serde(default)]
    pub seq: u64,
    pub invocation_id: String,
    pub version: u32,
    pub trigger: Option<String>,
    pub attempt: u32,
    pub events: usize,
    pub started_ms: u64,
    pub duration_us: u64,
    pub instantiate_us: u64,
    pub cold: bool,
    /// Fuel consumed, when the server meters it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// `success`, `partial_failure` or `failed`.
    pub outcome: String,
    pub error: Option<String>,
    pub lines: Vec<Line>,
}

/// Sizes of a function's records, oldest first, to enforce the cap.
#[derive(Default)]
struct Index {
    next: u64,
    bytes: u64,
    sizes: VecDeque<(u64, u64)>,
}

fn key(function: &str, seq: u64) -> Vec<u8> {
    let mut k = function.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The invocation records of every function.
pub(crate) struct Logs {
    store: Store,
    ks: Keyspace,
    index: Mutex<HashMap<String, Index>>,
}

impl Logs {
    pub(crate) fn open(store: Store) -> Result<Self> {
        let ks = store.keyspace("fnlogs")?;
        let mut index: HashMap<String, Index> = HashMap::new();
        for (k, v) in ks.range(b"", b"\xff", usize::MAX)? {
            let Some(split) = k.iter().position(|b| *b == 0) else {
                continue;
            };
            let Ok(seq) = <[u8; 8]>::try_from(&k[split + 1..]) else {
                continue;
            };
            let seq = u64::from_be_bytes(seq);
            let function = String::from_utf8_lossy(&k[..split]).into_owned();
            let i = index.entry(function).or_default();
            i.next = i.next.max(seq + 1);
            i.bytes += v.len() as u64;
            i.sizes.push_back((seq, v.len() as u64));
        }
        Ok(Self {
            store,
            ks,
            index: Mutex::new(index),
        })
    }

    /// Appends a record, dropping the oldest past the cap. Not waited for:
    /// records are kept best-effort and never slow an invocation down by an fsync.
    pub(crate) fn append(&self, function: &str, mut record: Record) -> Result<()> {
        let mut index = self.index.lock().unwrap();
        let i = index.entry(function.to_owned()).or_default();
        i.next = i.next.max(1);
        record.seq = i.next;
        i.next += 1;
        let value = serde_json::to_vec(&record).expect("records serialize");
        let mut batch = self.store.batch();
        batch.put(&self.ks, key(function, record.seq), value.clone());
        i.bytes += value.len() as u64;
        i.sizes.push_back((record.seq, value.len() as u64));
        while i.bytes > RECORD_BYTES_MAX && i.sizes.len() > 1 {
            let (seq, size) = i.sizes.pop_front().expect("not empty");
            batch.delete(&self.ks, key(function, seq));
            i.bytes -= size;
        }
        self.store.write(batch)?;
        Ok(())
    }

    /// Records of `function` after `after`, at most `limit`.
    pub(crate) fn read(&self, function: &str, after: u64, limit: usize) -> Result<Vec<Record>> {
        let start = key(function, after.saturating_add(1));
        let end = key(function, u64::MAX);
        self.ks
            .range(&start, &end, limit.min(READ_MAX))?
            .into_iter()
            .map(|(_, v)| {
                serde_json::from_slice(&v).map_err(|e| crate::Error::Corrupt(e.to_string()))
            })
            .collect()
    }

    /// Deletes every record of `function`.
    pub(crate) fn drop_function(&self, function: &str) -> Result<()> {
        let mut index = self.index.lock().unwrap();
        let mut batch = self.store.batch();
        if let Some(i) = index.remove(function) {
            for (seq, _) in i.sizes {
                batch.delete(&self.ks, key(function, seq));
            }
        }
        self.store.write(batch)?;
        Ok(())
    }
}
