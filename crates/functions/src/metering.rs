//! Cost metering and budgets, the stateful part: usage per function, trigger, queue and
//! topic in hourly buckets (in memory for [`HOURS_KEPT`], persisted every tick), budgets
//! with their standing in the current period, and the admission check triggers make
//! before each invocation. Decisions are [`crate::budget`]'s.
//!
//! Keys of the `metering` keyspace: `u\0{hour_ms}{kind}\0{name}` → [`Usage`] (JSON),
//! `b\0{name}` → [`BudgetConfig`] (JSON).
//!
//! Usage reaches the store on the next tick (every second), not with each invocation:
//! after a crash up to a tick's usage is not counted, so a budget can be overshot by what
//! ran in that second. Invocation budgets count an invocation when it starts, so
//! concurrent triggers never overshoot them while the server runs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sluice_store::{Keyspace, Store, Ticket};
use tokio::sync::watch;

use crate::Result;
use crate::budget::{self, BudgetConfig, Kind, Limit, Prices, Standing, Usage};

const HOUR_MS: u64 = 3_600_000;
/// Hours of usage kept (in memory and in the store): a little over a month.
pub const HOURS_KEPT: u64 = 35 * 24;

type Bucket = (u64, Kind, String);

fn kind_byte(k: Kind) -> u8 {
    match k {
        Kind::Function => b'f',
        Kind::Trigger => b't',
        Kind::Queue => b'q',
        Kind::Topic => b'p',
    }
}

fn kind_of(b: u8) -> Option<Kind> {
    Some(match b {
        b'f' => Kind::Function,
        b't' => Kind::Trigger,
        b'q' => Kind::Queue,
        b'p' => Kind::Topic,
        _ => return None,
    })
}

fn usage_key((hour, kind, name): &Bucket) -> Vec<u8> {
    let mut k = b"u\0".to_vec();
    k.extend_from_slice(&hour.to_be_bytes());
    k.push(kind_byte(*kind));
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

fn budget_key(name: &str) -> Vec<u8> {
    [b"b\0".as_slice(), name.as_bytes()].concat()
}

/// A budget with where it stands now.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetInfo {
    pub name: String,
    #[serde(flatten)]
    pub config: BudgetConfig,
    pub period_start_ms: u64,
    pub period_end_ms: u64,
    /// Spent in the current period, in the limit's unit.
    pub spent: f64,
    pub limit: f64,
    pub standing: Standing,
    /// Triggers an operator resumed for the rest of this period.
    pub resumed_triggers: Vec<String>,
}

struct BudgetState {
    config: BudgetConfig,
    period_start: u64,
    /// Usage of the budget's scope in the current period, by kind.
    usage: BTreeMap<Kind, Usage>,
    /// Invocations admitted and not yet recorded.
    reserved: u64,
    standing: Standing,
    /// Triggers an operator resumed: not paused by this budget until the period ends.
    resumed: HashSet<String>,
}

impl BudgetState {
    fn spent(&self, prices: &Prices) -> f64 {
        let usage: Vec<(Kind, Usage)> = self.usage.iter().map(|(k, u)| (*k, *u)).collect();
        self.config.spent(&usage, prices)
    }

    fn reserved_value(&self) -> f64 {
        match self.config.limit {
            Limit::Invocations(_) => self.reserved as f64,
            _ => 0.0,
        }
    }
}

/// An alert to publish about a budget.
#[derive(Debug, Clone)]
pub struct BudgetAlert {
    pub kind: &'static str,
    pub budget: String,
    pub data: serde_json::Value,
}

struct State {
    hours: BTreeMap<Bucket, Usage>,
    dirty: HashSet<Bucket>,
    budgets: BTreeMap<String, BudgetState>,
    /// Broker counters at the last sample: queue operations and topic publishes.
    queue_ops: HashMap<String, u64>,
    topic_ops: HashMap<String, u64>,
    last_sample_ms: Option<u64>,
}

/// The meter of one server.
pub(crate) struct Metering {
    store: Store,
    ks: Keyspace,
    prices: Prices,
    state: Mutex<State>,
    /// Bumped whenever a budget may have let paused triggers go again.
    changed: watch::Sender<u64>,
}

/// An invocation admitted under the budgets governing its trigger. Its reservation ends
/// when its usage is recorded (under the same lock, so the budget never counts it twice
/// or not at all), or when it is dropped unused.
pub struct Admission {
    metering: Arc<Metering>,
    budgets: Vec<String>,
    used: AtomicBool,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("budgets", &self.budgets)
            .finish()
    }
}

impl Admission {
    /// Ends the reservation; true the first time.
    fn release(&self, st: &mut State) -> bool {
        if self.used.swap(true, Ordering::AcqRel) {
            return false;
        }
        for b in &self.budgets {
            if let Some(b) = st.budgets.get_mut(b) {
                b.reserved = b.reserved.saturating_sub(1);
            }
        }
        true
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut st = self.metering.state.lock().unwrap();
        self.release(&mut st);
    }
}

impl Metering {
    pub(crate) fn open(store: Store, prices: Prices, now_ms: u64) -> Result<Self> {
        let ks = store.keyspace("metering")?;
        let since = (now_ms / HOUR_MS).saturating_sub(HOURS_KEPT) * HOUR_MS;
        let mut start = b"u\0".to_vec();
        start.extend_from_slice(&since.to_be_bytes());
        let mut hours = BTreeMap::new();
        for (k, v) in ks.range(&start, b"u\x01", usize::MAX)? {
            let (Some(hour), Some(kind)) = (
                k.get(2..10)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes),
                k.get(10).copied().and_then(kind_of),
            ) else {
                continue;
            };
            let name = String::from_utf8_lossy(k.get(12..).unwrap_or_default()).into_owned();
            let usage: Usage =
                serde_json::from_slice(&v).map_err(|e| crate::Error::Corrupt(e.to_string()))?;
            hours.insert((hour, kind, name), usage);
        }
        let mut budgets = BTreeMap::new();
        for (k, v) in ks.range(b"b\0", b"b\x01", usize::MAX)? {
            let name = String::from_utf8_lossy(&k[2..]).into_owned();
            let config: BudgetConfig =
                serde_json::from_slice(&v).map_err(|e| crate::Error::Corrupt(e.to_string()))?;
            budgets.insert(name, new_budget(config, &hours, now_ms));
        }
        let (changed, _) = watch::channel(0);
        let this = Self {
            store,
            ks,
            prices,
            state: Mutex::new(State {
                hours,
                dirty: HashSet::new(),
                budgets,
                queue_ops: HashMap::new(),
                topic_ops: HashMap::new(),
                last_sample_ms: None,
            }),
            changed,
        };
        {
            let mut st = this.state.lock().unwrap();
            let names: Vec<String> = st.budgets.keys().cloned().collect();
            for n in names {
                let b = st.budgets.get_mut(&n).expect("listed");
                b.standing = budget::standing(&b.config, b.spent(&this.prices), 0.0);
            }
        }
        Ok(this)
    }

    pub(crate) fn prices(&self) -> Prices {
        self.prices
    }

    /// A receiver that changes whenever paused triggers should look at their budgets
    /// again.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Adds usage of `kind` `name` at `now_ms`; returns the alerts it makes due.
    fn add(
        &self,
        st: &mut State,
        kind: Kind,
        name: &str,
        usage: &Usage,
        now_ms: u64,
    ) -> Vec<BudgetAlert> {
        let mut alerts = Vec::new();
        for (bname, b) in st.budgets.iter_mut() {
            if !b.config.covers(kind, name) {
                continue;
            }
            // A new period sums the buckets without this usage, which is added next.
            roll_period(b, &st.hours, now_ms);
            b.usage.entry(kind).or_default().add(usage);
            alerts.extend(self.restand(bname, b));
        }
        let bucket = (now_ms / HOUR_MS * HOUR_MS, kind, name.to_owned());
        st.hours.entry(bucket.clone()).or_default().add(usage);
        st.dirty.insert(bucket);
        alerts
    }

    /// Re-evaluates a budget's standing; returns the alert the change makes due.
    fn restand(&self, name: &str, b: &mut BudgetState) -> Option<BudgetAlert> {
        let spent = b.spent(&self.prices);
        let after = budget::standing(&b.config, spent, 0.0);
        let before = std::mem::replace(&mut b.standing, after);
        if after != Standing::Exhausted && before == Standing::Exhausted {
            self.notify();
        }
        budget::alert_due(before, after).map(|kind| BudgetAlert {
            kind,
            budget: name.to_owned(),
            data: serde_json::json!({
                "budget": name,
                "scope": b.config.scope,
                "period": b.config.period,
                "period_start": sluice_types::format_rfc3339_ms(b.period_start),
                "limit": b.config.limit,
                "spent": spent,
            }),
        })
    }

    /// Records an invocation of `function` (through `trigger`, if any).
    pub(crate) fn record_invocation(
        &self,
        function: &str,
        trigger: Option<&str>,
        admission: Option<&Admission>,
        usage: &Usage,
        now_ms: u64,
    ) -> Vec<BudgetAlert> {
        let mut st = self.state.lock().unwrap();
        if let Some(a) = admission {
            a.release(&mut st);
        }
        let mut alerts = self.add(&mut st, Kind::Function, function, usage, now_ms);
        if let Some(t) = trigger {
            alerts.extend(self.add(&mut st, Kind::Trigger, t, usage, now_ms));
        }
        alerts
    }

    /// Whether trigger `trigger` of `function` may start an invocation now: `Err` names an
    /// exhausted budget governing it. When admitted, invocation budgets count it at once.
    pub(crate) fn admit(
        self: &Arc<Self>,
        trigger: &str,
        function: &str,
        now_ms: u64,
    ) -> std::result::Result<Admission, String> {
        let mut st = self.state.lock().unwrap();
        let State { budgets, hours, .. } = &mut *st;
        let mut governing = Vec::new();
        for (name, b) in budgets.iter_mut() {
            if !b.config.governs(trigger, function) {
                continue;
            }
            if roll_period(b, hours, now_ms) {
                b.standing = budget::standing(&b.config, b.spent(&self.prices), 0.0);
            }
            if b.resumed.contains(trigger) {
                continue;
            }
            // An invocation budget admits while spent + reserved < limit, so at most
            // `limit` invocations start; other budgets admit until they are spent.
            let spent = b.spent(&self.prices);
            if budget::standing(&b.config, spent, b.reserved_value()) == Standing::Exhausted {
                return Err(name.clone());
            }
            governing.push(name.clone());
        }
        for name in &governing {
            if let Some(b) = budgets.get_mut(name) {
                b.reserved += 1;
            }
        }
        Ok(Admission {
            metering: self.clone(),
            budgets: governing,
            used: AtomicBool::new(false),
        })
    }

    /// Lets trigger `trigger` run past the budgets now exhausted for it, until their
    /// periods end (an operator's resume).
    pub(crate) fn resume_trigger(&self, trigger: &str, function: &str) {
        let mut st = self.state.lock().unwrap();
        for b in st.budgets.values_mut() {
            if b.config.governs(trigger, function) && b.standing == Standing::Exhausted {
                b.resumed.insert(trigger.to_owned());
            }
        }
        drop(st);
        self.notify();
    }

    /// Creates or replaces budget `name`. Returns whether it was created, the alert its
    /// standing makes due, and the write to await before answering.
    pub(crate) fn put_budget(
        &self,
        name: &str,
        config: BudgetConfig,
        now_ms: u64,
    ) -> Result<(bool, Option<BudgetAlert>, Ticket)> {
        let mut batch = self.store.batch();
        batch.put(
            &self.ks,
            budget_key(name),
            serde_json::to_vec(&config).expect("serializes"),
        );
        let ticket = self.store.write(batch)?;
        let mut st = self.state.lock().unwrap();
        let mut fresh = new_budget(config, &st.hours, now_ms);
        let old = st.budgets.remove(name);
        let created = old.is_none();
        if let Some(old) = old {
            // A changed budget keeps what it already announced and reserved this period.
            if old.period_start == fresh.period_start && old.config.period == fresh.config.period {
                fresh.standing = old.standing;
                fresh.resumed = old.resumed;
            }
            fresh.reserved = old.reserved;
        }
        let alert = self.restand(name, &mut fresh);
        st.budgets.insert(name.to_owned(), fresh);
        drop(st);
        self.notify();
        Ok((created, alert, ticket))
    }

    /// Deletes budget `name`: whether it existed, and the write to await.
    pub(crate) fn delete_budget(&self, name: &str) -> Result<(bool, Ticket)> {
        let mut batch = self.store.batch();
        batch.delete(&self.ks, budget_key(name));
        let ticket = self.store.write(batch)?;
        let existed = self.state.lock().unwrap().budgets.remove(name).is_some();
        self.notify();
        Ok((existed, ticket))
    }

    pub(crate) fn budgets(&self, now_ms: u64) -> Vec<BudgetInfo> {
        let mut st = self.state.lock().unwrap();
        let State { budgets, hours, .. } = &mut *st;
        budgets
            .iter_mut()
            .map(|(name, b)| {
                if roll_period(b, hours, now_ms) {
                    b.standing = budget::standing(&b.config, b.spent(&self.prices), 0.0);
                }
                let (start, end) = budget::period_bounds(b.config.period, now_ms);
                let mut resumed: Vec<String> = b.resumed.iter().cloned().collect();
                resumed.sort();
                BudgetInfo {
                    name: name.clone(),
                    config: b.config.clone(),
                    period_start_ms: start,
                    period_end_ms: end,
                    spent: b.spent(&self.prices),
                    limit: b.config.limit_value(),
                    standing: b.standing,
                    resumed_triggers: resumed,
                }
            })
            .collect()
    }

    /// Usage since `since_ms`, summed per kind and name.
    pub(crate) fn usage_since(&self, since_ms: u64) -> BTreeMap<(Kind, String), Usage> {
        let st = self.state.lock().unwrap();
        let from = since_ms / HOUR_MS * HOUR_MS;
        let mut out: BTreeMap<(Kind, String), Usage> = BTreeMap::new();
        for ((hour, kind, name), u) in &st.hours {
            if *hour >= from {
                out.entry((*kind, name.clone())).or_default().add(u);
            }
        }
        out
    }

    /// Every tick: takes queue and topic usage from the broker's counters, rolls budget
    /// periods over, persists changed buckets and forgets old ones. Returns due alerts.
    pub(crate) fn tick(
        &self,
        broker: &sluice_broker::BrokerMetrics,
        now_ms: u64,
    ) -> Result<Vec<BudgetAlert>> {
        let mut alerts = Vec::new();
        let mut st = self.state.lock().unwrap();
        let elapsed_s = st
            .last_sample_ms
            .map_or(0.0, |last| now_ms.saturating_sub(last) as f64 / 1000.0);
        // The first sample (at open) only takes the counters as they were before this
        // process: what queues and topics did then was metered by the process before.
        let first = st.last_sample_ms.is_none();
        st.last_sample_ms = Some(now_ms);
        for q in &broker.queues {
            let a = &q.stats.activity;
            let ops = q.stats.sent_total + a.received + a.acked + a.nacked;
            let before = st.queue_ops.insert(q.name.clone(), ops);
            let requests = match before {
                Some(b) => ops.saturating_sub(b),
                None if first => 0,
                None => ops,
            };
            // A queue's storage is estimated: the messages it holds times the mean size
            // of those sent to it since start (a subscription's events are its topic's).
            let held = q.stats.visible + q.stats.leased + q.stats.delayed;
            let stored = match (q.subscription.is_none(), a.sent) {
                (true, sent) if sent > 0 => {
                    held as f64 * (a.sent_bytes as f64 / sent as f64) * elapsed_s
                }
                _ => 0.0,
            };
            if requests > 0 || stored > 0.0 {
                let u = Usage {
                    requests,
                    byte_seconds: stored,
                    ..Usage::default()
                };
                alerts.extend(self.add(&mut st, Kind::Queue, &q.name, &u, now_ms));
            }
        }
        for t in &broker.topics {
            let ops = t.stats.published_total;
            let before = st.topic_ops.insert(t.name.clone(), ops);
            let requests = match before {
                Some(b) => ops.saturating_sub(b),
                None if first => 0,
                None => ops,
            };
            let stored = t.stats.bytes as f64 * elapsed_s;
            if requests > 0 || stored > 0.0 {
                let u = Usage {
                    requests,
                    byte_seconds: stored,
                    ..Usage::default()
                };
                alerts.extend(self.add(&mut st, Kind::Topic, &t.name, &u, now_ms));
            }
        }
        let State { budgets, hours, .. } = &mut *st;
        let mut rolled = false;
        for b in budgets.values_mut() {
            if roll_period(b, hours, now_ms) {
                b.standing = budget::standing(&b.config, b.spent(&self.prices), 0.0);
                rolled = true;
            }
        }
        let dirty: Vec<Bucket> = st.dirty.drain().collect();
        let oldest = (now_ms / HOUR_MS).saturating_sub(HOURS_KEPT) * HOUR_MS;
        let old: Vec<Bucket> = st
            .hours
            .keys()
            .take_while(|(h, _, _)| *h < oldest)
            .cloned()
            .collect();
        let mut batch = self.store.batch();
        for b in &dirty {
            if let Some(u) = st.hours.get(b) {
                batch.put(
                    &self.ks,
                    usage_key(b),
                    serde_json::to_vec(u).expect("serializes"),
                );
            }
        }
        for b in &old {
            st.hours.remove(b);
            batch.delete(&self.ks, usage_key(b));
        }
        drop(st);
        if !dirty.is_empty() || !old.is_empty() {
            self.store.write(batch)?;
        }
        if rolled {
            self.notify();
        }
        Ok(alerts)
    }
}

fn new_budget(config: BudgetConfig, hours: &BTreeMap<Bucket, Usage>, now_ms: u64) -> BudgetState {
    let mut b = BudgetState {
        config,
        period_start: 0,
        usage: BTreeMap::new(),
        reserved: 0,
        standing: Standing::Ok,
        resumed: HashSet::new(),
    };
    roll_period(&mut b, hours, now_ms);
    b
}

/// Moves a budget into the period holding `now_ms` if it is not there yet, summing its
/// scope's usage in that period again. Returns whether it moved.
fn roll_period(b: &mut BudgetState, hours: &BTreeMap<Bucket, Usage>, now_ms: u64) -> bool {
    let (start, _) = budget::period_bounds(b.config.period, now_ms);
    if start == b.period_start {
        return false;
    }
    b.period_start = start;
    b.usage.clear();
    b.resumed.clear();
    b.standing = Standing::Ok;
    for ((hour, kind, name), u) in hours.range((start, Kind::Function, String::new())..) {
        debug_assert!(*hour >= start);
        if b.config.covers(*kind, name) {
            b.usage.entry(*kind).or_default().add(u);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use sluice_store::{Options, Store};

    use super::*;
    use crate::budget::{Period, Scope};

    fn open(dir: &tempfile::TempDir, now: u64) -> Arc<Metering> {
        let store = Store::open(&dir.path().join("store"), Options::default()).unwrap();
        Arc::new(Metering::open(store, Prices::default(), now).unwrap())
    }

    fn one() -> Usage {
        Usage::invocation(128 << 20, 1_000, 0)
    }

    #[tokio::test]
    async fn budgets_count_each_invocation_once_across_periods_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let hour = 500 * HOUR_MS;
        let m = open(&dir, hour);
        let config = BudgetConfig {
            scope: Scope::Function("f".into()),
            period: Period::Hour,
            limit: Limit::Invocations(3),
            soft_threshold: 0.5,
        };
        m.put_budget("b", config, hour).unwrap();
        // Admissions reserve: three fit, the fourth is refused while they run.
        let admitted: Vec<Admission> = (0..3).map(|_| m.admit("t", "f", hour).unwrap()).collect();
        assert_eq!(m.admit("t", "f", hour).unwrap_err(), "b");
        assert_eq!(
            m.admit("t", "other", hour).map(|_| ()),
            Ok(()),
            "not governed"
        );
        // Recording settles each reservation: still exactly three.
        let mut alerts = Vec::new();
        for a in &admitted {
            alerts.extend(m.record_invocation("f", Some("t"), Some(a), &one(), hour + 1));
        }
        drop(admitted);
        let kinds: Vec<&str> = alerts.iter().map(|a| a.kind).collect();
        assert_eq!(kinds, ["budget.warning", "budget.exhausted"]);
        let b = &m.budgets(hour + 2)[0];
        assert_eq!((b.spent, b.standing), (3.0, Standing::Exhausted));
        assert!(m.admit("t", "f", hour + 2).is_err());

        // The next hour starts from nothing; its first invocation counts once.
        let next = hour + HOUR_MS;
        let a = m.admit("t", "f", next).unwrap();
        m.record_invocation("f", Some("t"), Some(&a), &one(), next);
        drop(a);
        let b = &m.budgets(next)[0];
        assert_eq!((b.spent, b.standing), (1.0, Standing::Ok));

        // Usage persisted by a tick survives a restart; the budget is found again.
        m.tick(&sluice_broker_metrics(), next).unwrap();
        drop(m);
        let m = open(&dir, next + 1);
        assert_eq!(m.budgets(next + 1)[0].spent, 1.0);
        let usage = m.usage_since(hour);
        assert_eq!(usage[&(Kind::Function, "f".to_owned())].invocations, 4);
        assert_eq!(usage[&(Kind::Trigger, "t".to_owned())].invocations, 4);

        // An operator's resume lets the trigger past the spent budget this period.
        let exhausted = BudgetConfig {
            limit: Limit::Invocations(1),
            ..m.budgets(next + 1)[0].config.clone()
        };
        m.put_budget("b", exhausted, next + 1).unwrap();
        assert!(m.admit("t", "f", next + 1).is_err());
        m.resume_trigger("t", "f");
        assert!(m.admit("t", "f", next + 1).is_ok());
        assert!(
            m.admit("u", "f", next + 1).is_err(),
            "only the resumed trigger"
        );
    }

    fn sluice_broker_metrics() -> sluice_broker::BrokerMetrics {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s"), Options::default()).unwrap();
        sluice_broker::BrokerMetrics {
            queues: Vec::new(),
            topics: Vec::new(),
            streams: Default::default(),
            store: store.metrics(),
        }
    }
}
