//! Table-driven tests of the delivery core on a hand-driven clock (times are plain numbers).

use super::*;
use sluice_types::{HumanDuration, Name};

fn backoff(initial_ms: u64, multiplier: f64, max_ms: u64, jitter: f64) -> Backoff {
    Backoff {
        initial: HumanDuration::from_millis(initial_ms),
        multiplier,
        max: HumanDuration::from_millis(max_ms),
        jitter,
    }
}

#[test]
fn backoff_grows_caps_and_jitters() {
    // (backoff, receive_count, jitter_sample, expected delay ms)
    let cases = [
        (backoff(1_000, 2.0, 60_000, 0.0), 1, 0.0, 1_000),
        (backoff(1_000, 2.0, 60_000, 0.0), 2, 0.0, 2_000),
        (backoff(1_000, 2.0, 60_000, 0.0), 5, 0.0, 16_000),
        (backoff(1_000, 2.0, 60_000, 0.0), 7, 0.0, 60_000),
        (backoff(1_000, 2.0, 60_000, 0.0), 900, 0.0, 60_000),
        (backoff(1_000, 1.0, 60_000, 0.0), 9, 0.0, 1_000),
        (backoff(1_000, 2.0, 60_000, 0.5), 1, 1.0, 500),
        (backoff(1_000, 2.0, 60_000, 0.5), 1, 0.5, 750),
        (backoff(1_000, 2.0, 60_000, 1.0), 3, 0.25, 3_000),
        (backoff(0, 2.0, 0, 0.2), 4, 0.3, 0),
        // receive_count 0 can only come from bad bookkeeping; it is treated as the first.
        (backoff(1_000, 3.0, 60_000, 0.0), 0, 0.0, 1_000),
    ];
    for (b, count, sample, want) in cases {
        assert_eq!(
            backoff_delay_ms(&b, count, sample),
            want,
            "{b:?} count={count} sample={sample}"
        );
    }
}

fn queue(max_attempts: Option<u32>, with_dlq: bool) -> QueueConfig {
    QueueConfig {
        max_attempts,
        dead_letter_queue: with_dlq.then(|| Name::new("dlq").unwrap()),
        backoff: backoff(1_000, 2.0, 10_000, 0.0),
        ..QueueConfig::default()
    }
}

fn nack(delay_ms: Option<u64>, reason: Option<&str>) -> ReleaseCause {
    ReleaseCause::Nacked {
        delay_ms,
        reason: reason.map(str::to_owned),
    }
}

#[test]
fn release_retries_until_attempts_run_out_then_dead_letters() {
    let now = 100_000;
    let cases = [
        // Lease expiry retries after the backoff for that attempt.
        (
            queue(None, false),
            1,
            ReleaseCause::LeaseExpired,
            Release::Retry { at_ms: now + 1_000 },
        ),
        (
            queue(None, false),
            3,
            ReleaseCause::LeaseExpired,
            Release::Retry { at_ms: now + 4_000 },
        ),
        // Without a limit, attempts never run out.
        (
            queue(None, true),
            500,
            ReleaseCause::LeaseExpired,
            Release::Retry {
                at_ms: now + 10_000,
            },
        ),
        // A nack's own delay wins over the backoff, including zero ("release now").
        (
            queue(None, false),
            1,
            nack(Some(0), None),
            Release::Retry { at_ms: now },
        ),
        (
            queue(None, false),
            2,
            nack(Some(5_000), None),
            Release::Retry { at_ms: now + 5_000 },
        ),
        (
            queue(None, false),
            2,
            nack(None, Some("boom")),
            Release::Retry { at_ms: now + 2_000 },
        ),
        // Attempts left: retry.
        (
            queue(Some(3), true),
            2,
            ReleaseCause::LeaseExpired,
            Release::Retry { at_ms: now + 2_000 },
        ),
        // Attempts exhausted: dead-letter with the reason.
        (
            queue(Some(3), true),
            3,
            ReleaseCause::LeaseExpired,
            Release::DeadLetter(DeadLetterReason::LeaseExpired),
        ),
        (
            queue(Some(1), true),
            1,
            nack(Some(0), None),
            Release::DeadLetter(DeadLetterReason::Nacked),
        ),
        (
            queue(Some(2), true),
            2,
            nack(None, Some("payment declined")),
            Release::DeadLetter(DeadLetterReason::Error("payment declined".into())),
        ),
        // More deliveries than the limit (limit lowered after delivery) also dead-letters.
        (
            queue(Some(2), true),
            5,
            ReleaseCause::LeaseExpired,
            Release::DeadLetter(DeadLetterReason::LeaseExpired),
        ),
        // A loop is stopped on its first delivery, attempts left or not.
        (
            queue(Some(5), true),
            1,
            ReleaseCause::LoopDetected,
            Release::DeadLetter(DeadLetterReason::LoopDetected),
        ),
        (
            queue(None, true),
            1,
            ReleaseCause::LoopDetected,
            Release::DeadLetter(DeadLetterReason::LoopDetected),
        ),
        // Without a dead-letter queue it is removed.
        (
            queue(None, false),
            1,
            ReleaseCause::LoopDetected,
            Release::Discard,
        ),
    ];
    for (config, count, cause, want) in cases {
        let got = release(&config, count, cause.clone(), now, 0.0);
        assert_eq!(
            got, want,
            "max={:?} count={count} cause={cause:?}",
            config.max_attempts
        );
    }
}

#[test]
fn dedup_window_and_retention_boundaries() {
    let cases = [
        (None, 10, false),
        (Some(11), 10, true),
        (Some(10), 10, false),
        (Some(9), 10, false),
    ];
    for (expires, now, want) in cases {
        assert_eq!(
            is_duplicate(expires, now),
            want,
            "expires={expires:?} now={now}"
        );
    }
    let cases = [
        (1_000, 500, 1_499, false),
        (1_000, 500, 1_500, true),
        (0, u64::MAX, 5, false),
    ];
    for (sent, retention, now, want) in cases {
        assert_eq!(
            is_expired(sent, retention, now),
            want,
            "sent={sent} ret={retention} now={now}"
        );
    }
}

fn lease(deadline_ms: u64, epoch: u32) -> Lease {
    Lease {
        deadline_ms,
        epoch,
        group: None,
        entry: LeaseEntry::Own,
    }
}

#[test]
fn lease_table_expires_in_deadline_order_and_follows_extensions() {
    let mut t = LeaseTable::default();
    t.insert(1, lease(300, 1));
    t.insert(2, lease(100, 1));
    t.insert(3, lease(200, 2));
    assert_eq!(t.next_deadline(), Some(100));
    assert_eq!(t.expired(99, 10), Vec::<u64>::new());
    assert_eq!(t.expired(200, 10), vec![2, 3]);
    assert_eq!(t.expired(1_000, 2), vec![2, 3]);
    assert!(t.extend(2, 500));
    assert_eq!(t.expired(300, 10), vec![3, 1]);
    assert!(!t.extend(9, 500));
    // A new lease on the same message replaces the old deadline.
    t.insert(3, lease(50, 3));
    assert_eq!(t.expired(60, 10), vec![3]);
    assert_eq!(t.get(3).map(|l| l.epoch), Some(3));
    assert_eq!(t.remove(3).map(|l| l.deadline_ms), Some(50));
    assert_eq!(t.expired(1_000, 10), vec![1, 2]);
    assert_eq!(t.len(), 2);
}

/// Steps of a FIFO scheduling scenario.
enum Step {
    Enqueue(&'static str, u64),
    /// Expect `lease_next` at this time to give this group (or none).
    Next(u64, Option<&'static str>),
    Release(&'static str, u64),
    /// Remove the head; the next head (if any) is visible from the time given.
    RemoveHead(&'static str, Option<u64>),
    /// Remove a message behind the head.
    RemoveBehind(&'static str),
    Park(&'static str),
    Unpark(&'static str),
    /// Expect this many delayed heads.
    Delayed(u64),
}

fn run(name: &str, steps: &[Step]) {
    use Step::*;
    let mut t = GroupTable::default();
    let mut now = 0;
    for (i, step) in steps.iter().enumerate() {
        match step {
            Enqueue(g, at) => t.on_enqueue(g, *at, now),
            Next(at, want) => {
                now = *at;
                assert_eq!(t.lease_next(now).as_deref(), *want, "{name}: step {i}");
            }
            Release(g, at) => t.on_release(g, *at, now),
            RemoveHead(g, next) => t.on_remove_head(g, *next, now),
            RemoveBehind(g) => t.on_remove_behind_head(g),
            Park(g) => t.park(g),
            Unpark(g) => t.unpark(g, now),
            Delayed(n) => assert_eq!(t.delayed_heads(), *n, "{name}: step {i}"),
        }
    }
}

#[test]
fn fifo_groups_take_turns_one_lease_each() {
    use Step::*;
    run(
        "round robin",
        &[
            Enqueue("a", 0),
            Enqueue("a", 0),
            Enqueue("b", 0),
            Next(0, Some("a")),
            // a is leased: b goes next, then nothing.
            Next(0, Some("b")),
            Next(0, None),
            RemoveHead("a", Some(0)),
            Next(1, Some("a")),
            RemoveHead("a", None),
            RemoveHead("b", None),
            Next(2, None),
        ],
    );
}

#[test]
fn fifo_released_head_waits_for_its_backoff_and_blocks_only_its_group() {
    use Step::*;
    run(
        "backoff",
        &[
            Enqueue("poison", 0),
            Enqueue("poison", 0),
            Enqueue("ok", 0),
            Next(0, Some("poison")),
            Release("poison", 1_000),
            Delayed(1),
            Next(10, Some("ok")),
            Next(999, None),
            Next(1_000, Some("poison")),
            Delayed(0),
        ],
    );
}

#[test]
fn fifo_dead_lettered_head_moves_the_group_on_or_parks_it() {
    use Step::*;
    run(
        "continue",
        &[
            Enqueue("g", 0),
            Enqueue("g", 0),
            Next(0, Some("g")),
            RemoveHead("g", Some(0)),
            Next(0, Some("g")),
        ],
    );
    run(
        "park",
        &[
            Enqueue("g", 0),
            Enqueue("g", 0),
            Enqueue("h", 0),
            Next(0, Some("g")),
            Park("g"),
            RemoveHead("g", Some(0)),
            Next(0, Some("h")),
            Next(0, None),
            Unpark("g"),
            Next(0, Some("g")),
        ],
    );
}

#[test]
fn fifo_removing_behind_a_leased_head_keeps_the_lease() {
    use Step::*;
    run(
        "behind",
        &[
            Enqueue("g", 0),
            Enqueue("g", 0),
            Enqueue("g", 0),
            Next(0, Some("g")),
            RemoveBehind("g"),
            Next(0, None),
            RemoveHead("g", Some(0)),
            Next(0, Some("g")),
            RemoveHead("g", None),
            Next(0, None),
        ],
    );
}

#[test]
fn fifo_delayed_send_into_an_empty_group_delays_the_group() {
    use Step::*;
    run(
        "delayed head",
        &[
            Enqueue("g", 500),
            Enqueue("g", 0),
            Delayed(1),
            Next(100, None),
            Next(500, Some("g")),
        ],
    );
}

#[test]
fn fifo_scheduler_simulation_keeps_its_invariants() {
    // A seeded random walk over the scheduler; after every step: at most one lease per
    // group, and every group with a deliverable head is reachable.
    use rand::{Rng, SeedableRng, rngs::StdRng};
    for seed in 0..20u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut t = GroupTable::default();
        let mut pending: HashMap<String, u64> = HashMap::new();
        let mut leased: BTreeSet<String> = BTreeSet::new();
        let mut now = 0u64;
        for step in 0..2_000 {
            now += rng.random_range(0..20);
            let g = format!("g{}", rng.random_range(0..5));
            match rng.random_range(0..4) {
                0 => {
                    t.on_enqueue(&g, now + rng.random_range(0..30), now);
                    *pending.entry(g).or_default() += 1;
                }
                1 => {
                    if let Some(got) = t.lease_next(now) {
                        assert!(
                            leased.insert(got.clone()),
                            "seed {seed} step {step}: {got} leased twice"
                        );
                    }
                }
                2 => {
                    if leased.remove(&g) {
                        t.on_release(&g, now + rng.random_range(0..30), now);
                    }
                }
                _ => {
                    if leased.remove(&g) {
                        let left = pending.get_mut(&g).expect("leased group has messages");
                        *left -= 1;
                        let next = (*left > 0).then_some(now);
                        if *left == 0 {
                            pending.remove(&g);
                        }
                        t.on_remove_head(&g, next, now);
                    }
                }
            }
            assert_eq!(t.len(), pending.len(), "seed {seed} step {step}");
        }
        // Drain: far in the future every unleased group must come out exactly once.
        let mut drained = BTreeSet::new();
        while let Some(g) = t.lease_next(u64::MAX / 2) {
            assert!(drained.insert(g.clone()), "seed {seed}: {g} twice");
        }
        let expected: BTreeSet<String> = pending
            .keys()
            .filter(|g| !leased.contains(*g))
            .cloned()
            .collect();
        assert_eq!(drained, expected, "seed {seed}");
    }
}
