//! The pure decision core of delivery: retry backoff, release after nack or lease expiry
//! (retry or dead-letter), dedup and retention checks, the lease table and the FIFO group
//! scheduler. No I/O and no clock reads: time and randomness come in as arguments.

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::config::{Backoff, QueueConfig};

/// The delay before attempt `receive_count + 1`, in milliseconds, after `receive_count`
/// deliveries. `jitter_sample` is uniform in `[0, 1)` and removes up to `jitter` of it.
pub fn backoff_delay_ms(backoff: &Backoff, receive_count: u32, jitter_sample: f64) -> u64 {
    let initial = backoff.initial.as_millis() as f64;
    let max = backoff.max.as_millis() as f64;
    let exponent = receive_count.saturating_sub(1).min(1_000) as i32;
    let base = (initial * backoff.multiplier.powi(exponent)).min(max);
    let jittered = base * (1.0 - backoff.jitter * jitter_sample.clamp(0.0, 1.0));
    jittered.max(0.0).round() as u64
}

/// Why a message was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// Its last lease ran out without an ack.
    LeaseExpired,
    /// Its consumer nacked it, without an error text.
    Nacked,
    /// Its consumer nacked it with this error text.
    Error(String),
    /// It had come more hops from its root event than a chain may take.
    LoopDetected,
}

impl DeadLetterReason {
    /// The reason's stable code, as shown to users.
    pub fn code(&self) -> &'static str {
        match self {
            DeadLetterReason::LeaseExpired => "lease_expired",
            DeadLetterReason::Nacked => "nacked",
            DeadLetterReason::Error(_) => "error",
            DeadLetterReason::LoopDetected => "loop_detected",
        }
    }
}

/// Why a leased message is being released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseCause {
    /// The lease deadline passed.
    LeaseExpired,
    /// The consumer nacked it; `delay_ms` overrides the backoff, `reason` is its error text.
    Nacked {
        delay_ms: Option<u64>,
        reason: Option<String>,
    },
    /// Handling it would extend an event chain past its hop limit.
    LoopDetected,
}

/// What happens to a released message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// Deliver it again, not before `at_ms`.
    Retry { at_ms: u64 },
    /// Move it to the dead-letter queue.
    DeadLetter(DeadLetterReason),
    /// Remove it: it may not be handled and there is no dead-letter queue to keep it.
    Discard,
}

/// Decides the fate of a message released after `receive_count` deliveries.
pub fn release(
    config: &QueueConfig,
    receive_count: u32,
    cause: ReleaseCause,
    now_ms: u64,
    jitter_sample: f64,
) -> Release {
    let exhausted = config.dead_letter_queue.is_some()
        && config.max_attempts.is_some_and(|max| receive_count >= max);
    match cause {
        // A loop is stopped at once: into the dead-letter queue if there is one, else out.
        ReleaseCause::LoopDetected if config.dead_letter_queue.is_some() => {
            Release::DeadLetter(DeadLetterReason::LoopDetected)
        }
        ReleaseCause::LoopDetected => Release::Discard,
        ReleaseCause::LeaseExpired if exhausted => {
            Release::DeadLetter(DeadLetterReason::LeaseExpired)
        }
        ReleaseCause::Nacked { reason, .. } if exhausted => Release::DeadLetter(match reason {
            Some(text) => DeadLetterReason::Error(text),
            None => DeadLetterReason::Nacked,
        }),
        ReleaseCause::Nacked {
            delay_ms: Some(d), ..
        } => Release::Retry {
            at_ms: now_ms.saturating_add(d),
        },
        ReleaseCause::LeaseExpired | ReleaseCause::Nacked { delay_ms: None, .. } => {
            Release::Retry {
                at_ms: now_ms.saturating_add(backoff_delay_ms(
                    &config.backoff,
                    receive_count,
                    jitter_sample,
                )),
            }
        }
    }
}

/// Whether a dedup id last seen with expiry `expires_ms` still suppresses a send at `now_ms`.
pub fn is_duplicate(expires_ms: Option<u64>, now_ms: u64) -> bool {
    expires_ms.is_some_and(|e| now_ms < e)
}

/// Whether a message sent at `sent_ms` is past its queue's retention at `now_ms`.
pub fn is_expired(sent_ms: u64, retention_ms: u64, now_ms: u64) -> bool {
    now_ms >= sent_ms.saturating_add(retention_ms)
}

/// One active lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// When it ends, in ms since the epoch.
    pub deadline_ms: u64,
    /// The delivery it belongs to (the message's receive count at lease time); a receipt
    /// carrying another epoch is stale.
    pub epoch: u32,
    /// The message's FIFO group, if any.
    pub group: Option<String>,
    /// Where the lease, and the message's delivery state while leased, are stored.
    pub entry: LeaseEntry,
}

/// How a lease is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEntry {
    /// A lease entry of its own, and the message's state record.
    Own,
    /// A lease entry of its own that carries the state of a first delivery (no state
    /// record): a first lease that was extended, or one stored before shared entries.
    Carried,
    /// Listed, with other first deliveries of the same receive, in one shared lease entry
    /// (this id) that carries their state. A queue's acks delete the messages' records,
    /// which tells the entry's stale members apart; a subscription's rewrite the entry.
    Shared(u64),
}

/// The leased messages of one queue, by message sequence number and by deadline.
#[derive(Debug, Default)]
pub struct LeaseTable {
    by_seq: HashMap<u64, Lease>,
    by_deadline: BTreeSet<(u64, u64)>,
}

impl LeaseTable {
    /// Records a lease on `seq`, replacing any earlier one.
    pub fn insert(&mut self, seq: u64, lease: Lease) {
        if let Some(old) = self.by_seq.insert(seq, lease.clone()) {
            self.by_deadline.remove(&(old.deadline_ms, seq));
        }
        self.by_deadline.insert((lease.deadline_ms, seq));
    }

    /// The lease on `seq`.
    pub fn get(&self, seq: u64) -> Option<&Lease> {
        self.by_seq.get(&seq)
    }

    /// Changes how the lease on `seq` is stored.
    pub fn set_entry(&mut self, seq: u64, entry: LeaseEntry) {
        if let Some(lease) = self.by_seq.get_mut(&seq) {
            lease.entry = entry;
        }
    }

    /// Ends the lease on `seq`.
    pub fn remove(&mut self, seq: u64) -> Option<Lease> {
        let lease = self.by_seq.remove(&seq)?;
        self.by_deadline.remove(&(lease.deadline_ms, seq));
        Some(lease)
    }

    /// Moves the deadline of the lease on `seq`.
    pub fn extend(&mut self, seq: u64, deadline_ms: u64) -> bool {
        let Some(lease) = self.by_seq.get_mut(&seq) else {
            return false;
        };
        self.by_deadline.remove(&(lease.deadline_ms, seq));
        lease.deadline_ms = deadline_ms;
        self.by_deadline.insert((deadline_ms, seq));
        true
    }

    /// Up to `limit` leases whose deadline is at or before `now_ms`, earliest first.
    pub fn expired(&self, now_ms: u64, limit: usize) -> Vec<u64> {
        self.by_deadline
            .iter()
            .take_while(|(d, _)| *d <= now_ms)
            .take(limit)
            .map(|(_, seq)| *seq)
            .collect()
    }

    /// The smallest leased sequence number (a scan of the table).
    pub fn min_seq(&self) -> Option<u64> {
        self.by_seq.keys().min().copied()
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<u64> {
        self.by_deadline.first().map(|(d, _)| *d)
    }

    /// Forgets every lease (after a purge).
    pub fn clear(&mut self) {
        self.by_seq.clear();
        self.by_deadline.clear();
    }

    /// Number of leases.
    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// Whether no message is leased.
    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }
}

#[derive(Debug, Default)]
struct GroupState {
    /// Messages of the group still in the queue, leased one included.
    pending: u64,
    /// The head message is leased.
    leased: bool,
    /// The head may not be delivered before this time.
    head_visible_at: u64,
    /// Held until a dead-lettered message of the group is redriven.
    parked: bool,
    /// In the ready ring.
    queued: bool,
    /// In the blocked set under this time.
    blocked_at: Option<u64>,
}

/// The FIFO group scheduler: which group delivers next. Groups take turns (round robin);
/// a group whose head is leased, delayed or parked is skipped, so it never blocks others.
#[derive(Debug, Default)]
pub struct GroupTable {
    groups: HashMap<String, GroupState>,
    ready: VecDeque<String>,
    blocked: BTreeSet<(u64, String)>,
}

impl GroupTable {
    /// A message joined `group`; it becomes the head if the group was empty.
    pub fn on_enqueue(&mut self, group: &str, visible_at: u64, now_ms: u64) {
        let state = self.groups.entry(group.to_owned()).or_default();
        state.pending += 1;
        if state.pending == 1 {
            state.head_visible_at = visible_at;
            self.schedule(group, now_ms);
        }
    }

    /// The next group whose head can be delivered at `now_ms`, marked as leased.
    pub fn lease_next(&mut self, now_ms: u64) -> Option<String> {
        self.unblock(now_ms);
        while let Some(group) = self.ready.pop_front() {
            let Some(state) = self.groups.get_mut(&group) else {
                continue;
            };
            state.queued = false;
            if state.leased || state.parked || state.pending == 0 {
                continue;
            }
            state.leased = true;
            return Some(group);
        }
        None
    }

    /// Gives back a lease taken by [`GroupTable::lease_next`] that was not used (its head
    /// was found gone or expired by retention).
    pub fn unlease(&mut self, group: &str, now_ms: u64) {
        if let Some(state) = self.groups.get_mut(group) {
            state.leased = false;
        }
        self.schedule(group, now_ms);
    }

    /// The head of `group` was released and may be delivered again from `visible_at`.
    pub fn on_release(&mut self, group: &str, visible_at: u64, now_ms: u64) {
        if let Some(state) = self.groups.get_mut(group) {
            state.leased = false;
            state.head_visible_at = visible_at;
        }
        self.schedule(group, now_ms);
    }

    /// The head of `group` left the queue (acked, dead-lettered or expired); the next
    /// message, if any, becomes the head from `next_visible_at`.
    pub fn on_remove_head(&mut self, group: &str, next_visible_at: Option<u64>, now_ms: u64) {
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        state.leased = false;
        state.pending = state.pending.saturating_sub(1);
        match next_visible_at {
            Some(at) if state.pending > 0 => {
                state.head_visible_at = at;
                self.schedule(group, now_ms);
            }
            _ => self.forget(group),
        }
    }

    /// Rebuilds a group's state after a restart.
    pub fn restore(
        &mut self,
        group: &str,
        pending: u64,
        head_visible_at: u64,
        leased: bool,
        parked: bool,
        now_ms: u64,
    ) {
        if pending == 0 {
            return;
        }
        self.groups.insert(
            group.to_owned(),
            GroupState {
                pending,
                leased,
                head_visible_at,
                parked,
                queued: false,
                blocked_at: None,
            },
        );
        self.schedule(group, now_ms);
    }

    /// Forgets every group (after a purge).
    pub fn clear(&mut self) {
        self.groups.clear();
        self.ready.clear();
        self.blocked.clear();
    }

    /// A message behind the head of `group` left the queue; the head and its lease stay.
    pub fn on_remove_behind_head(&mut self, group: &str) {
        if let Some(state) = self.groups.get_mut(group) {
            state.pending = state.pending.saturating_sub(1);
        }
    }

    /// Holds `group` until [`GroupTable::unpark`].
    pub fn park(&mut self, group: &str) {
        if let Some(state) = self.groups.get_mut(group) {
            state.parked = true;
        }
    }

    /// Releases a parked group.
    pub fn unpark(&mut self, group: &str, now_ms: u64) {
        if let Some(state) = self.groups.get_mut(group) {
            state.parked = false;
        }
        self.schedule(group, now_ms);
    }

    /// Whether `group` is parked.
    pub fn is_parked(&self, group: &str) -> bool {
        self.groups.get(group).is_some_and(|s| s.parked)
    }

    /// Whether the head of `group` is leased.
    pub fn is_leased(&self, group: &str) -> bool {
        self.groups.get(group).is_some_and(|s| s.leased)
    }

    /// The earliest time a blocked group's head becomes deliverable.
    pub fn next_unblock(&self) -> Option<u64> {
        self.blocked.first().map(|(t, _)| *t)
    }

    /// Number of groups whose head waits for its delay or backoff.
    pub fn delayed_heads(&self) -> u64 {
        self.blocked.len() as u64
    }

    /// Number of groups with messages.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether no group has messages.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    fn forget(&mut self, group: &str) {
        if let Some(state) = self.groups.remove(group)
            && let Some(at) = state.blocked_at
        {
            self.blocked.remove(&(at, group.to_owned()));
        }
    }

    fn schedule(&mut self, group: &str, now_ms: u64) {
        let Some(state) = self.groups.get_mut(group) else {
            return;
        };
        if let Some(at) = state.blocked_at.take() {
            self.blocked.remove(&(at, group.to_owned()));
        }
        if state.leased || state.parked || state.pending == 0 || state.queued {
            return;
        }
        if state.head_visible_at <= now_ms {
            state.queued = true;
            self.ready.push_back(group.to_owned());
        } else {
            state.blocked_at = Some(state.head_visible_at);
            self.blocked
                .insert((state.head_visible_at, group.to_owned()));
        }
    }

    fn unblock(&mut self, now_ms: u64) {
        while let Some((at, _)) = self.blocked.first() {
            if *at > now_ms {
                break;
            }
            let Some((_, group)) = self.blocked.pop_first() else {
                break;
            };
            if let Some(state) = self.groups.get_mut(&group) {
                state.blocked_at = None;
            }
            self.schedule(&group, now_ms);
        }
    }
}

#[cfg(test)]
mod tests;
