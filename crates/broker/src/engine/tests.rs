//! Tests of the engine through the broker, on a real store and a manual clock.

use std::sync::Arc;

use sluice_store::{Durability, Options as StoreOptions, Store};
use sluice_types::{Clock, HumanDuration, ManualClock, Name};
use tokio_util::sync::CancellationToken;

use crate::{Broker, Delivery, Error, Nack, NewMessage, Options, QueueConfig, SendOutcome};

const T0: u64 = 1_700_000_000_000;

pub(crate) struct Fixture {
    dir: tempfile::TempDir,
    pub(crate) clock: ManualClock,
    broker: Option<Broker>,
}

fn open_broker(dir: &std::path::Path, clock: &ManualClock) -> Broker {
    let store = Store::open(
        dir,
        StoreOptions {
            durability: Durability::Relaxed,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    Broker::open(
        store,
        Arc::new(clock.clone()),
        &Options {
            seed: Some(7),
            ..Options::default()
        },
    )
    .unwrap()
}

impl Fixture {
    pub(crate) fn b(&self) -> &Broker {
        self.broker.as_ref().expect("broker is open")
    }

    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let broker = open_broker(dir.path(), &clock);
        Self {
            dir,
            clock,
            broker: Some(broker),
        }
    }

    /// Drops the broker and opens the same data directory again, as after a crash.
    pub(crate) fn reopen(&mut self) {
        self.broker = None;
        self.broker = Some(open_broker(self.dir.path(), &self.clock));
    }

    pub(crate) async fn queue(&self, name: &str, config: QueueConfig) {
        self.b()
            .put_queue(&Name::new(name).unwrap(), config)
            .await
            .unwrap();
    }

    pub(crate) async fn send(&self, queue: &str, bodies: &[&str]) -> Vec<String> {
        let msgs = bodies.iter().map(|b| msg(b)).collect();
        ids(self.b().send(queue, msgs).await.unwrap())
    }

    pub(crate) async fn receive(&self, queue: &str, max: usize) -> Vec<Delivery> {
        self.b()
            .receive(
                queue,
                max,
                HumanDuration::ZERO,
                None,
                &CancellationToken::new(),
            )
            .await
            .unwrap()
    }

    pub(crate) async fn advance(&self, ms: u64) {
        self.clock.advance(ms);
        self.b().tick().await.unwrap();
    }

    pub(crate) fn stats(&self, queue: &str) -> (u64, u64, u64, u64) {
        let s = self.b().get_queue(queue).unwrap().stats;
        (s.visible, s.leased, s.delayed, s.dead_lettered)
    }
}

pub(crate) fn msg(body: &str) -> NewMessage {
    NewMessage {
        body: format!("\"{body}\"").into_bytes(),
        attributes: b"{}".to_vec(),
        ..NewMessage::default()
    }
}

fn grouped(body: &str, group: &str) -> NewMessage {
    NewMessage {
        group: Some(group.into()),
        ..msg(body)
    }
}

fn ids(outcomes: Vec<SendOutcome>) -> Vec<String> {
    outcomes
        .into_iter()
        .map(|o| match o {
            SendOutcome::Sent(id) | SendOutcome::Duplicate(id) => id,
            SendOutcome::Failed(e) => panic!("send failed: {e}"),
        })
        .collect()
}

fn bodies(d: &[Delivery]) -> Vec<String> {
    d.iter()
        .map(|m| {
            String::from_utf8(m.body.clone())
                .unwrap()
                .trim_matches('"')
                .to_owned()
        })
        .collect()
}

pub(crate) fn receipts(d: &[Delivery]) -> Vec<String> {
    d.iter().map(|m| m.receipt.clone()).collect()
}

pub(crate) fn no_backoff() -> crate::Backoff {
    crate::Backoff {
        initial: HumanDuration::ZERO,
        max: HumanDuration::ZERO,
        ..crate::Backoff::default()
    }
}

#[tokio::test]
async fn send_receive_ack_in_order_and_acked_messages_are_gone() {
    let f = Fixture::new();
    f.queue("q", QueueConfig::default()).await;
    f.send("q", &["a", "b", "c"]).await;
    assert_eq!(f.stats("q"), (3, 0, 0, 0));
    let got = f.receive("q", 2).await;
    assert_eq!(bodies(&got), ["a", "b"]);
    assert_eq!(got[0].receive_count, 1);
    assert_eq!(got[0].first_receive_ms, T0);
    assert_eq!(f.stats("q"), (1, 2, 0, 0));
    let acked = f.b().ack("q", &receipts(&got)).await.unwrap();
    assert!(acked.iter().all(Result::is_ok));
    // Acking again is stale.
    let again = f.b().ack("q", &receipts(&got)).await.unwrap();
    assert!(matches!(again[0], Err(Error::ReceiptStale)));
    assert_eq!(bodies(&f.receive("q", 10).await), ["c"]);
    assert_eq!(f.stats("q"), (0, 1, 0, 0));
}

#[tokio::test]
async fn an_expired_lease_redelivers_after_backoff_and_the_old_receipt_is_stale() {
    let f = Fixture::new();
    let config = QueueConfig {
        lease_timeout: HumanDuration::from_secs(10),
        backoff: crate::Backoff {
            initial: HumanDuration::from_secs(2),
            jitter: 0.0,
            ..crate::Backoff::default()
        },
        ..QueueConfig::default()
    };
    f.queue("q", config).await;
    f.send("q", &["a"]).await;
    let first = f.receive("q", 1).await;
    f.advance(9_999).await;
    assert!(f.receive("q", 1).await.is_empty(), "lease still held");
    f.advance(1).await;
    assert_eq!(f.stats("q"), (0, 0, 1, 0), "released into backoff");
    f.advance(1_999).await;
    assert!(f.receive("q", 1).await.is_empty(), "still backing off");
    f.advance(1).await;
    let second = f.receive("q", 1).await;
    assert_eq!(second[0].receive_count, 2);
    assert_eq!(second[0].first_receive_ms, T0);
    let out = f.b().ack("q", &receipts(&first)).await.unwrap();
    assert!(
        matches!(out[0], Err(Error::ReceiptStale)),
        "old receipt must not ack the new lease"
    );
    assert_eq!(f.stats("q"), (0, 1, 0, 0));
    assert!(f.b().ack("q", &receipts(&second)).await.unwrap()[0].is_ok());
}

#[tokio::test]
async fn leases_survive_restart_and_expire_on_time() {
    let mut f = Fixture::new();
    f.queue(
        "q",
        QueueConfig {
            backoff: no_backoff(),
            ..QueueConfig::default()
        },
    )
    .await;
    f.send("q", &["a", "b"]).await;
    let got = f.receive("q", 1).await;
    f.reopen();
    assert_eq!(f.stats("q"), (1, 1, 0, 0));
    let b = f.receive("q", 10).await;
    assert_eq!(bodies(&b), ["b"]);
    f.b().ack("q", &receipts(&b)).await.unwrap();
    f.advance(29_000).await;
    assert!(
        f.receive("q", 10).await.is_empty(),
        "not earlier than the lease"
    );
    f.advance(1_000).await;
    let again = f.receive("q", 10).await;
    assert_eq!(bodies(&again), ["a"], "not never");
    assert_eq!(again[0].receive_count, 2);
    assert!(matches!(
        f.b().ack("q", &receipts(&got)).await.unwrap()[0],
        Err(Error::ReceiptStale)
    ));
}

#[tokio::test]
async fn exhausted_messages_move_to_the_dead_letter_queue_and_redrive_back() {
    let f = Fixture::new();
    f.queue("dlq", QueueConfig::default()).await;
    let config = QueueConfig {
        max_attempts: Some(2),
        dead_letter_queue: Some(Name::new("dlq").unwrap()),
        backoff: no_backoff(),
        ..QueueConfig::default()
    };
    f.queue("q", config).await;
    let sent = f.send("q", &["poison"]).await;
    for attempt in 1..=2 {
        let got = f.receive("q", 1).await;
        assert_eq!(bodies(&got), ["poison"], "attempt {attempt}");
        let nack = Nack {
            delay: Some(HumanDuration::ZERO),
            reason: Some("card declined".into()),
        };
        f.b().nack("q", &receipts(&got), nack).await.unwrap();
    }
    assert_eq!(f.stats("q"), (0, 0, 0, 1));
    f.send("q", &["fine"]).await;
    let dead = f.receive("dlq", 10).await;
    assert_eq!(dead[0].id, sent[0], "the id survives dead-lettering");
    let info = dead[0].dead_letter.clone().unwrap();
    assert_eq!(
        (info.source_queue.as_str(), info.reason.as_str()),
        ("q", "error")
    );
    assert_eq!(
        (info.error.as_deref(), info.attempts),
        (Some("card declined"), 2)
    );
    // Leased in the DLQ: redrive leaves it alone.
    assert_eq!(f.b().redrive("q", 10).await.unwrap().moved, 0);
    f.b()
        .nack(
            "dlq",
            &receipts(&dead),
            Nack {
                delay: Some(HumanDuration::ZERO),
                reason: None,
            },
        )
        .await
        .unwrap();
    let r = f.b().redrive("q", 10).await.unwrap();
    assert_eq!((r.moved, r.remaining), (1, 0));
    assert_eq!(f.stats("q"), (2, 0, 0, 0));
    assert_eq!(f.stats("dlq"), (0, 0, 0, 0));
    let back = f.receive("q", 10).await;
    assert_eq!(bodies(&back), ["fine", "poison"]);
    assert_eq!(
        back[1].receive_count, 1,
        "redrive starts the attempts afresh"
    );
}

#[tokio::test]
async fn a_lease_that_keeps_expiring_dead_letters_with_that_reason() {
    let f = Fixture::new();
    f.queue("dlq", QueueConfig::default()).await;
    let config = QueueConfig {
        max_attempts: Some(1),
        dead_letter_queue: Some(Name::new("dlq").unwrap()),
        lease_timeout: HumanDuration::from_secs(1),
        ..QueueConfig::default()
    };
    f.queue("q", config).await;
    f.send("q", &["slow"]).await;
    f.receive("q", 1).await;
    f.advance(1_000).await;
    let dead = f.receive("dlq", 1).await;
    assert_eq!(
        dead[0].dead_letter.as_ref().unwrap().reason,
        "lease_expired"
    );
    // The DLQ's own ack frees the source's dead-lettered count.
    assert_eq!(f.stats("q").3, 1);
    f.b().ack("dlq", &receipts(&dead)).await.unwrap();
    assert_eq!(f.stats("q").3, 0);
}

#[tokio::test]
async fn fifo_groups_deliver_in_order_one_lease_each_and_poison_blocks_only_its_group() {
    let f = Fixture::new();
    f.queue(
        "dlq",
        QueueConfig {
            fifo: true,
            ..QueueConfig::default()
        },
    )
    .await;
    let config = QueueConfig {
        fifo: true,
        max_attempts: Some(2),
        dead_letter_queue: Some(Name::new("dlq").unwrap()),
        backoff: crate::Backoff {
            jitter: 0.0,
            ..crate::Backoff::default()
        },
        ..QueueConfig::default()
    };
    f.queue("q", config).await;
    let msgs = vec![
        grouped("a1", "a"),
        grouped("a2", "a"),
        grouped("b1", "b"),
        grouped("b2", "b"),
    ];
    f.b().send("q", msgs).await.unwrap();
    let first = f.receive("q", 10).await;
    assert_eq!(bodies(&first), ["a1", "b1"], "one per group");
    assert!(f.receive("q", 10).await.is_empty(), "both groups leased");
    // a1 fails; b continues meanwhile.
    f.b()
        .nack("q", &receipts(&first[..1]), Nack::default())
        .await
        .unwrap();
    f.b().ack("q", &receipts(&first[1..])).await.unwrap();
    assert_eq!(bodies(&f.receive("q", 10).await), ["b2"]);
    f.advance(1_000).await;
    let retry = f.receive("q", 10).await;
    assert_eq!(bodies(&retry), ["a1"], "a1 again before a2");
    f.b()
        .nack("q", &receipts(&retry), Nack::default())
        .await
        .unwrap();
    // Exhausted: a1 goes to the DLQ and its group moves on.
    assert_eq!(bodies(&f.receive("q", 10).await), ["a2"]);
    assert_eq!(bodies(&f.receive("dlq", 10).await), ["a1"]);
}

#[tokio::test(start_paused = true)]
async fn acking_a_fifo_head_wakes_a_receive_waiting_for_its_group() {
    // A waiting receive also looks again every 250 ms on its own; on paused time, one that
    // the ack did not wake returns only after that.
    let f = Fixture::new();
    let config = QueueConfig {
        fifo: true,
        ..QueueConfig::default()
    };
    f.queue("q", config).await;
    f.b()
        .send("q", vec![grouped("a1", "a"), grouped("a2", "a")])
        .await
        .unwrap();
    let first = f.receive("q", 10).await;
    assert_eq!(bodies(&first), ["a1"]);
    let b = f.b().clone();
    let waiting = tokio::spawn(async move {
        let cancel = CancellationToken::new();
        let got = b
            .receive("q", 10, HumanDuration::from_secs(5), None, &cancel)
            .await
            .unwrap();
        (got, tokio::time::Instant::now())
    });
    // Let it find nothing and wait.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let acked_at = tokio::time::Instant::now();
    f.b().ack("q", &receipts(&first)).await.unwrap();
    let (got, at) = waiting.await.unwrap();
    assert_eq!(bodies(&got), ["a2"]);
    assert_eq!(at, acked_at, "woken by the ack, not by its own look again");
}

#[tokio::test]
async fn an_ack_wakes_receivers_only_when_it_can_let_a_message_through() {
    let cases = [
        // (fifo, max in flight, leased when acked, wakes)
        (false, 10, 1, false),
        (false, 2, 2, true),
        (true, 10, 1, true),
    ];
    for (fifo, max_in_flight, leased, wakes) in cases {
        let f = Fixture::new();
        let config = QueueConfig {
            fifo,
            max_in_flight,
            ..QueueConfig::default()
        };
        f.queue("q", config).await;
        let one = |i: u32| match fifo {
            true => grouped(&i.to_string(), &i.to_string()),
            false => msg(&i.to_string()),
        };
        f.b()
            .send("q", (0..leased).map(one).collect())
            .await
            .unwrap();
        let got = f.receive("q", 10).await;
        assert_eq!(got.len(), leased as usize);
        let now = f.clock.now_ms();
        let (_, _, waker) = f.b().lock().ack("q", &receipts(&got[..1]), now).unwrap();
        assert_eq!(
            waker.is_some(),
            wakes,
            "fifo {fifo}, {leased} of {max_in_flight} in flight"
        );
    }
}

#[tokio::test]
async fn fifo_parked_group_waits_for_redrive() {
    let mut f = Fixture::new();
    f.queue(
        "dlq",
        QueueConfig {
            fifo: true,
            ..QueueConfig::default()
        },
    )
    .await;
    let config = QueueConfig {
        fifo: true,
        max_attempts: Some(1),
        dead_letter_queue: Some(Name::new("dlq").unwrap()),
        park_group_on_dead_letter: true,
        ..QueueConfig::default()
    };
    f.queue("q", config).await;
    f.b()
        .send(
            "q",
            vec![grouped("a1", "a"), grouped("a2", "a"), grouped("b1", "b")],
        )
        .await
        .unwrap();
    let first = f.receive("q", 10).await;
    f.b()
        .nack("q", &receipts(&first[..1]), Nack::default())
        .await
        .unwrap();
    f.b().ack("q", &receipts(&first[1..])).await.unwrap();
    assert!(f.receive("q", 10).await.is_empty(), "group a is parked");
    f.reopen();
    assert!(
        f.receive("q", 10).await.is_empty(),
        "still parked after restart"
    );
    assert_eq!(f.b().redrive("q", 10).await.unwrap().moved, 1);
    assert_eq!(
        bodies(&f.receive("q", 10).await),
        ["a1"],
        "redriven head first"
    );
}

#[tokio::test]
async fn dedup_ids_suppress_repeats_within_the_window_only() {
    let f = Fixture::new();
    f.queue(
        "q",
        QueueConfig {
            dedup_window: HumanDuration::from_secs(60),
            ..QueueConfig::default()
        },
    )
    .await;
    let with_id = |b: &str| NewMessage {
        dedup_id: Some("order-1".into()),
        ..msg(b)
    };
    let out = f
        .b()
        .send("q", vec![with_id("x"), with_id("y")])
        .await
        .unwrap();
    assert!(matches!(&out[0], SendOutcome::Sent(_)));
    assert!(matches!(&out[1], SendOutcome::Duplicate(id) if *id == ids(out.clone())[0]));
    f.advance(59_999).await;
    assert!(matches!(
        &f.b().send("q", vec![with_id("z")]).await.unwrap()[0],
        SendOutcome::Duplicate(_)
    ));
    f.advance(1).await;
    assert!(matches!(
        &f.b().send("q", vec![with_id("w")]).await.unwrap()[0],
        SendOutcome::Sent(_)
    ));
    assert_eq!(bodies(&f.receive("q", 10).await), ["x", "w"]);
    assert_eq!(f.b().get_queue("q").unwrap().stats.dedup_hits_total, 2);
}

#[tokio::test]
async fn delayed_messages_appear_when_due_and_retention_drops_old_ones() {
    let f = Fixture::new();
    f.queue(
        "q",
        QueueConfig {
            retention: HumanDuration::from_secs(60),
            ..QueueConfig::default()
        },
    )
    .await;
    let delayed = NewMessage {
        delay: Some(HumanDuration::from_secs(5)),
        ..msg("later")
    };
    f.b().send("q", vec![delayed, msg("now")]).await.unwrap();
    assert_eq!(f.stats("q"), (1, 0, 1, 0));
    assert_eq!(bodies(&f.receive("q", 10).await), ["now"]);
    f.advance(5_000).await;
    assert_eq!(f.stats("q"), (1, 1, 0, 0));
    f.send("q", &["old"]).await;
    f.advance(61_000).await;
    let s = f.b().get_queue("q").unwrap().stats;
    assert_eq!((s.visible, s.leased, s.expired_total), (0, 0, 3), "{s:?}");
    assert_eq!(s.oldest_age_ms, None);
}

/// Takes the retention checks due now and reads them, as `Broker::tick` does off the
/// engine lock; the caller then acts "meanwhile" and finishes them.
fn read_retention_checks(f: &Fixture) -> Vec<(super::RetentionCheck, super::RetentionFound)> {
    let now = f.clock.now_ms();
    let (_, _, checks) = f.b().lock().tick(now).unwrap();
    let messages = f.b().lock().messages();
    checks
        .into_iter()
        .map(|c| {
            let found = c.read(&messages, now).unwrap();
            (c, found)
        })
        .collect()
}

fn finish_retention_checks(f: &Fixture, read: Vec<(super::RetentionCheck, super::RetentionFound)>) {
    let now = f.clock.now_ms();
    for (check, found) in read {
        f.b().lock().finish_retention(&check, found, now).unwrap();
    }
}

#[tokio::test]
async fn a_message_moved_in_under_an_older_number_during_a_retention_check_still_expires() {
    // Retention reads a queue's oldest records without the engine lock, then moves the
    // queue's hint up to the first live one it read. A message dead-lettered in meanwhile
    // keeps its older sequence number: the hint must stay below it.
    let f = Fixture::new();
    let retention = HumanDuration::from_secs(60);
    f.queue(
        "dlq",
        QueueConfig {
            retention,
            ..QueueConfig::default()
        },
    )
    .await;
    let config = QueueConfig {
        retention,
        max_attempts: Some(1),
        dead_letter_queue: Some(Name::new("dlq").unwrap()),
        ..QueueConfig::default()
    };
    f.queue("q", config).await;
    f.send("q", &["older"]).await;
    f.send("dlq", &["newer"]).await;
    let leased = f.receive("q", 1).await;
    let read = read_retention_checks(&f);
    let nack = Nack {
        delay: None,
        reason: None,
    };
    f.b().nack("q", &receipts(&leased), nack).await.unwrap();
    finish_retention_checks(&f, read);
    assert_eq!(f.stats("dlq"), (2, 0, 0, 0));
    f.advance(61_000).await;
    let dlq = f.b().get_queue("dlq").unwrap().stats;
    assert_eq!((dlq.visible, dlq.expired_total), (0, 2), "{dlq:?}");
    assert_eq!(dlq.oldest_age_ms, None);
}

#[tokio::test]
async fn a_message_acked_during_a_retention_check_is_acked_not_expired() {
    let f = Fixture::new();
    let config = QueueConfig {
        retention: HumanDuration::from_secs(60),
        lease_timeout: HumanDuration::from_secs(120),
        ..QueueConfig::default()
    };
    f.queue("q", config).await;
    f.send("q", &["x", "y"]).await;
    let leased = f.receive("q", 1).await;
    f.clock.advance(61_000);
    let read = read_retention_checks(&f);
    assert_eq!(
        read[0].1.expired.len(),
        2,
        "the read saw both past retention"
    );
    f.b().ack("q", &receipts(&leased)).await.unwrap()[0]
        .as_ref()
        .unwrap();
    finish_retention_checks(&f, read);
    let s = f.b().get_queue("q").unwrap().stats;
    assert_eq!((s.visible, s.leased, s.expired_total), (0, 0, 1), "{s:?}");
}

#[tokio::test]
async fn retention_checks_start_at_the_oldest_live_message_not_at_acked_ones() {
    // A busy queue acks thousands of messages between two checks; a read from the last
    // check's hint would step over each of them.
    let f = Fixture::new();
    let config = QueueConfig {
        retention: HumanDuration::from_secs(60),
        ..QueueConfig::default()
    };
    f.queue("q", config).await;
    let check_from = |f: &Fixture| {
        f.clock.advance(1_000);
        let read = read_retention_checks(f);
        let from = read[0].0.from;
        finish_retention_checks(f, read);
        from
    };
    f.send("q", &["a", "b", "c"]).await;
    let leased = f.receive("q", 3).await;
    assert_eq!(check_from(&f), leased[0].seq);
    f.b().ack("q", &receipts(&leased[..2])).await.unwrap();
    assert_eq!(check_from(&f), leased[2].seq, "a and b acked, c leased");
    f.b().ack("q", &receipts(&leased[2..])).await.unwrap();
    f.send("q", &["d"]).await;
    let d = f.receive("q", 1).await;
    f.b().ack("q", &receipts(&d)).await.unwrap();
    assert!(check_from(&f) > d[0].seq, "everything acked");
}

#[tokio::test]
async fn retention_finds_an_old_message_wherever_it_waits_behind_the_cursor() {
    // The newer message is delivered and acked, moving the cursor past the older one.
    #[derive(Debug, Clone, Copy)]
    enum Waits {
        Leased,
        ReadyAfterNack,
        Delayed,
    }
    for waits in [Waits::Leased, Waits::ReadyAfterNack, Waits::Delayed] {
        let f = Fixture::new();
        let config = QueueConfig {
            retention: HumanDuration::from_secs(60),
            lease_timeout: HumanDuration::from_secs(600),
            ..QueueConfig::default()
        };
        f.queue("q", config).await;
        let old = match waits {
            Waits::Delayed => NewMessage {
                delay: Some(HumanDuration::from_secs(600)),
                ..msg("old")
            },
            Waits::Leased | Waits::ReadyAfterNack => msg("old"),
        };
        f.b().send("q", vec![old, msg("new")]).await.unwrap();
        let newer = match waits {
            Waits::Leased => f.receive("q", 2).await.split_off(1),
            Waits::ReadyAfterNack => {
                let old = f.receive("q", 1).await;
                let nack = Nack {
                    delay: None,
                    reason: None,
                };
                f.b().nack("q", &receipts(&old), nack).await.unwrap();
                f.receive("q", 1).await
            }
            Waits::Delayed => f.receive("q", 1).await,
        };
        assert_eq!(bodies(&newer), ["new"], "{waits:?}");
        f.b().ack("q", &receipts(&newer)).await.unwrap();
        f.advance(1_000).await;
        f.advance(60_000).await;
        let s = f.b().get_queue("q").unwrap().stats;
        assert_eq!(
            (s.visible, s.leased, s.delayed, s.expired_total),
            (0, 0, 0, 1),
            "{waits:?}: {s:?}"
        );
        assert_eq!(s.oldest_age_ms, None, "{waits:?}");
    }
}

#[tokio::test]
async fn purge_and_delete_remove_everything() {
    let f = Fixture::new();
    f.queue("q", QueueConfig::default()).await;
    f.send("q", &["a", "b", "c"]).await;
    let leased = f.receive("q", 1).await;
    assert_eq!(f.b().purge("q").await.unwrap(), 3);
    assert_eq!(f.stats("q"), (0, 0, 0, 0));
    assert!(matches!(
        f.b().ack("q", &receipts(&leased)).await.unwrap()[0],
        Err(Error::ReceiptStale)
    ));
    f.send("q", &["d"]).await;
    assert_eq!(bodies(&f.receive("q", 10).await), ["d"]);
    f.b().delete_queue("q").await.unwrap();
    assert!(matches!(f.b().get_queue("q"), Err(Error::QueueNotFound(_))));
    f.queue("q", QueueConfig::default()).await;
    assert!(
        f.receive("q", 10).await.is_empty(),
        "a new queue of the same name starts empty"
    );
}

#[tokio::test]
async fn receipts_of_other_queues_and_garbage_are_told_apart() {
    let f = Fixture::new();
    f.queue("a", QueueConfig::default()).await;
    f.queue("b", QueueConfig::default()).await;
    f.send("a", &["x"]).await;
    let got = f.receive("a", 1).await;
    let out = f.b().ack("b", &receipts(&got)).await.unwrap();
    assert!(matches!(out[0], Err(Error::ReceiptForeign)));
    let out = f.b().ack("a", &["nonsense".to_owned()]).await.unwrap();
    assert!(matches!(out[0], Err(Error::ReceiptInvalid)));
    // Extending keeps the lease alive past its first deadline.
    f.b()
        .extend("a", &receipts(&got), HumanDuration::from_secs(60))
        .await
        .unwrap();
    f.advance(59_000).await;
    assert!(f.b().ack("a", &receipts(&got)).await.unwrap()[0].is_ok());
}

#[tokio::test]
async fn a_large_backlog_streams_through_the_ready_window_in_order() {
    let mut f = Fixture::new();
    f.queue("q", QueueConfig::default()).await;
    let n = 10_000;
    for chunk in 0..(n / 1_000) {
        let msgs = (0..1_000)
            .map(|i| msg(&format!("{}", chunk * 1_000 + i)))
            .collect();
        f.b().send("q", msgs).await.unwrap();
    }
    f.reopen();
    let mut seen = 0;
    loop {
        let got = f.receive("q", 1_000).await;
        if got.is_empty() {
            break;
        }
        for (i, b) in bodies(&got).iter().enumerate() {
            assert_eq!(b.parse::<usize>().unwrap(), seen + i);
        }
        seen += got.len();
        f.b().ack("q", &receipts(&got)).await.unwrap();
    }
    assert_eq!(seen, n);
    assert_eq!(f.stats("q"), (0, 0, 0, 0));
}

#[tokio::test]
async fn a_message_past_retention_is_dropped_at_receive_even_before_housekeeping() {
    let f = Fixture::new();
    let retention = HumanDuration::from_secs(60);
    f.queue(
        "std",
        QueueConfig {
            retention,
            ..QueueConfig::default()
        },
    )
    .await;
    f.queue(
        "fifo",
        QueueConfig {
            retention,
            fifo: true,
            ..QueueConfig::default()
        },
    )
    .await;
    f.send("std", &["old"]).await;
    f.b().send("fifo", vec![grouped("old", "g")]).await.unwrap();
    // The clock moves without a background tick, so only receive can notice the expiry.
    f.clock.advance(60_000);
    f.send("std", &["new"]).await;
    f.b().send("fifo", vec![grouped("new", "g")]).await.unwrap();
    for queue in ["std", "fifo"] {
        assert_eq!(bodies(&f.receive(queue, 10).await), ["new"], "{queue}");
        let s = f.b().get_queue(queue).unwrap().stats;
        assert_eq!(
            (s.visible, s.leased, s.expired_total),
            (0, 1, 1),
            "{queue}: {s:?}"
        );
    }
}

#[tokio::test]
async fn redriving_a_message_behind_a_leased_fifo_head_keeps_that_lease_alone() {
    // Two FIFO queues share a dead-letter queue and a group name, so the DLQ's group holds
    // messages of both; redriving one source's message must not disturb the other's lease.
    let f = Fixture::new();
    f.queue(
        "dlq",
        QueueConfig {
            fifo: true,
            ..QueueConfig::default()
        },
    )
    .await;
    let config = QueueConfig {
        fifo: true,
        max_attempts: Some(1),
        dead_letter_queue: Some(Name::new("dlq").unwrap()),
        ..QueueConfig::default()
    };
    f.queue("a", config.clone()).await;
    f.queue("b", config).await;
    for queue in ["a", "b"] {
        f.b().send(queue, vec![grouped(queue, "g")]).await.unwrap();
        let got = f.receive(queue, 1).await;
        f.b()
            .nack(queue, &receipts(&got), Nack::default())
            .await
            .unwrap();
    }
    let head = f.receive("dlq", 10).await;
    assert_eq!(bodies(&head), ["a"], "one lease per group in the DLQ too");
    assert_eq!(f.b().redrive("b", 10).await.unwrap().moved, 1);
    assert!(
        f.receive("dlq", 10).await.is_empty(),
        "group g's head is still leased"
    );
    assert!(f.b().ack("dlq", &receipts(&head)).await.unwrap()[0].is_ok());
    assert_eq!(bodies(&f.receive("b", 10).await), ["b"]);
    assert_eq!(f.stats("dlq"), (0, 0, 0, 0));
}

#[tokio::test]
async fn the_cursor_and_the_ready_index_deliver_in_enqueue_order_across_restarts() {
    let mut f = Fixture::new();
    let config = QueueConfig {
        backoff: no_backoff(),
        ..QueueConfig::default()
    };
    f.queue("q", config).await;
    f.send("q", &["a", "b", "c"]).await;
    let a = f.receive("q", 1).await;
    assert_eq!(bodies(&a), ["a"]);
    // Released after `c` was sent: it is delivered after `c` and before `d`.
    let nack = Nack {
        delay: Some(HumanDuration::ZERO),
        reason: None,
    };
    f.b().nack("q", &receipts(&a), nack.clone()).await.unwrap();
    let delayed = NewMessage {
        delay: Some(HumanDuration::from_secs(5)),
        ..msg("later")
    };
    f.b().send("q", vec![delayed, msg("d")]).await.unwrap();
    assert_eq!(f.stats("q"), (4, 0, 1, 0));
    f.reopen();
    assert_eq!(f.stats("q"), (4, 0, 1, 0));
    let got = f.receive("q", 2).await;
    assert_eq!(bodies(&got), ["b", "c"]);
    f.reopen();
    // `b` and `c` stay leased across the restart; the cursor is past them.
    assert_eq!(f.stats("q"), (2, 2, 1, 0));
    let rest = f.receive("q", 10).await;
    assert_eq!(bodies(&rest), ["a", "d"]);
    assert_eq!(
        rest.iter().map(|m| m.receive_count).collect::<Vec<_>>(),
        [2, 1]
    );
    // Promoted from delay after `e` was sent: after `e`, before `f`.
    f.send("q", &["e"]).await;
    f.advance(5_000).await;
    f.send("q", &["f"]).await;
    let last = f.receive("q", 10).await;
    assert_eq!(bodies(&last), ["e", "later", "f"]);
    assert_eq!(f.stats("q"), (0, 7, 0, 0));
    // Every lease, first or not, survives a restart and is acked once.
    f.reopen();
    assert_eq!(f.stats("q"), (0, 7, 0, 0));
    let leased: Vec<Delivery> = [got, rest, last].concat();
    let acked = f.b().ack("q", &receipts(&leased)).await.unwrap();
    assert!(acked.iter().all(Result::is_ok), "{acked:?}");
    assert_eq!(f.stats("q"), (0, 0, 0, 0));
    assert!(f.receive("q", 10).await.is_empty());
}

#[tokio::test]
async fn messages_past_the_cursor_windows_byte_budget_are_read_when_their_turn_comes() {
    let mut f = Fixture::new();
    f.queue("q", QueueConfig::default()).await;
    // 40 messages of 200 KB: about twice what the window keeps in memory.
    let big = |i: usize| NewMessage {
        body: format!("\"{i:03}{}\"", "x".repeat(200_000)).into_bytes(),
        attributes: b"{}".to_vec(),
        ..NewMessage::default()
    };
    for chunk in 0..4 {
        let msgs = (0..10).map(|i| big(chunk * 10 + i)).collect();
        f.b().send("q", msgs).await.unwrap();
    }
    let first = f.receive("q", 25).await;
    f.reopen();
    let second = f.receive("q", 100).await;
    let got: Vec<String> = first
        .iter()
        .chain(&second)
        .map(|m| String::from_utf8_lossy(&m.body[1..4]).into_owned())
        .collect();
    let want: Vec<String> = (0..40).map(|i| format!("{i:03}")).collect();
    assert_eq!(got, want);
    assert!(first.iter().chain(&second).all(|m| m.body.len() == 200_005));
}

#[tokio::test]
async fn purging_a_queue_empties_the_cursor_window_and_new_messages_still_arrive() {
    let f = Fixture::new();
    f.queue("q", QueueConfig::default()).await;
    f.send("q", &["a", "b", "c", "d"]).await;
    assert_eq!(bodies(&f.receive("q", 1).await), ["a"]);
    assert_eq!(f.b().purge("q").await.unwrap(), 4);
    assert_eq!(f.stats("q"), (0, 0, 0, 0));
    assert!(f.receive("q", 10).await.is_empty());
    f.send("q", &["e"]).await;
    assert_eq!(bodies(&f.receive("q", 10).await), ["e"]);
}

#[tokio::test]
async fn a_shared_lease_keeps_each_message_apart_across_restarts() {
    let mut f = Fixture::new();
    let config = QueueConfig {
        backoff: no_backoff(),
        ..QueueConfig::default()
    };
    f.queue("q", config).await;
    f.send("q", &["acked", "nacked", "extended", "left", "acked too"])
        .await;
    // One receive: one shared lease entry for all five first deliveries.
    let got = f.receive("q", 5).await;
    assert_eq!(got.len(), 5);
    let one = |i: usize| vec![got[i].receipt.clone()];
    f.b().ack("q", &one(0)).await.unwrap();
    let nack = Nack {
        delay: Some(HumanDuration::ZERO),
        reason: None,
    };
    f.b().nack("q", &one(1), nack).await.unwrap();
    let extended = f
        .b()
        .extend("q", &one(2), HumanDuration::from_secs(120))
        .await
        .unwrap();
    assert!(extended[0].is_ok());
    f.b().ack("q", &one(4)).await.unwrap();
    f.reopen();
    // Acked: gone; released: ready again; extended and untouched: still leased.
    assert_eq!(f.stats("q"), (1, 2, 0, 0));
    let again = f.receive("q", 10).await;
    assert_eq!(bodies(&again), ["nacked"]);
    assert_eq!(again[0].receive_count, 2);
    f.b().ack("q", &receipts(&again)).await.unwrap();
    f.advance(30_000).await;
    // The untouched lease ends at its deadline, the extended one keeps its own.
    let expired = f.receive("q", 10).await;
    assert_eq!(bodies(&expired), ["left"]);
    assert_eq!(expired[0].receive_count, 2);
    assert_eq!(expired[0].first_receive_ms, got[3].first_receive_ms);
    f.reopen();
    assert_eq!(f.stats("q"), (0, 2, 0, 0));
    let acked = f.b().ack("q", &[one(2), receipts(&expired)].concat()).await;
    assert!(acked.unwrap().iter().all(Result::is_ok));
    f.reopen();
    assert_eq!(f.stats("q"), (0, 0, 0, 0));
    f.advance(120_000).await;
    assert!(f.receive("q", 10).await.is_empty(), "acked means gone");
}

#[tokio::test]
async fn a_message_redriven_out_of_a_shared_lease_is_ready_after_a_restart() {
    let mut f = Fixture::new();
    f.queue("dlq", QueueConfig::default()).await;
    let config = QueueConfig {
        max_attempts: Some(1),
        dead_letter_queue: Some(Name::new("dlq").unwrap()),
        backoff: no_backoff(),
        ..QueueConfig::default()
    };
    f.queue("q", config).await;
    f.send("q", &["poison", "slow"]).await;
    let got = f.receive("q", 2).await;
    // `poison` leaves the shared lease for the DLQ and comes back by redrive, under the
    // same sequence number, while `slow` still holds the shared entry.
    let nack = Nack {
        delay: Some(HumanDuration::ZERO),
        reason: Some("boom".into()),
    };
    f.b()
        .nack("q", &[got[0].receipt.clone()], nack)
        .await
        .unwrap();
    assert_eq!(f.stats("dlq"), (1, 0, 0, 0));
    assert_eq!(f.b().redrive("q", 10).await.unwrap().moved, 1);
    f.reopen();
    assert_eq!(f.stats("q"), (1, 1, 0, 0));
    // Only `slow` is leased: when the shared lease ends, `slow` alone is released (to the
    // DLQ, its one attempt spent) and `poison` is not released a second time.
    f.advance(30_000).await;
    assert_eq!(f.stats("q"), (1, 0, 0, 1));
    let back = f.receive("q", 10).await;
    assert_eq!(bodies(&back), ["poison"]);
    assert_eq!(back[0].receive_count, 1);
    assert_eq!(back[0].id, got[0].id);
    f.b().ack("q", &receipts(&back)).await.unwrap();
    f.reopen();
    assert_eq!(f.stats("q"), (0, 0, 0, 1));
    assert!(f.receive("q", 10).await.is_empty());
    assert_eq!(bodies(&f.receive("dlq", 10).await), ["slow"]);
}
