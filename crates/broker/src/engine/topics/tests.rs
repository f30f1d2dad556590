//! Tests of topics and subscriptions through the broker, on a real store and a manual clock.

use serde_json::{Map, Value, json};
use sluice_types::{ByteSize, Clock, HumanDuration, Name};

use crate::engine::tests::{Fixture, no_backoff, receipts};
use crate::{
    Compaction, Delivery, Error, Nack, PublishOutcome, QueueConfig, Start, SubscriptionConfig,
    Target, TopicConfig,
};

fn ev(ty: &str, subject: &str, data: Value) -> Map<String, Value> {
    json!({"specversion": "1.0", "source": "/test", "type": ty, "subject": subject, "data": data})
        .as_object()
        .unwrap()
        .clone()
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

impl Fixture {
    async fn topic(&self, t: &str, config: TopicConfig) {
        self.b().put_topic(&name(t), config).await.unwrap();
    }

    async fn sub(&self, t: &str, s: &str, config: SubscriptionConfig) {
        self.b()
            .put_subscription(t, &name(s), config)
            .await
            .unwrap();
    }

    async fn publish(&self, t: &str, events: Vec<Map<String, Value>>) -> Vec<u64> {
        self.b()
            .publish(t, events)
            .await
            .unwrap()
            .into_iter()
            .map(|o| match o {
                PublishOutcome::Published { offset, .. } => offset,
                other => panic!("publish: {other:?}"),
            })
            .collect()
    }

    /// Publishes `n` events `order.placed` with `data.n = i` and subject `order-{i % groups}`.
    async fn publish_n(&self, t: &str, range: std::ops::Range<u64>, groups: u64) {
        let events = range
            .map(|i| {
                ev(
                    "order.placed",
                    &format!("order-{}", i % groups),
                    json!({"n": i}),
                )
            })
            .collect();
        self.publish(t, events).await;
    }

    async fn recv_sub(&self, t: &str, s: &str, max: usize) -> Vec<Delivery> {
        self.receive(&crate::Broker::subscription_queue(t, s), max)
            .await
    }

    async fn ack_sub(&self, t: &str, s: &str, d: &[Delivery]) {
        let outcomes = self
            .b()
            .ack(&crate::Broker::subscription_queue(t, s), &receipts(d))
            .await
            .unwrap();
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    }

    /// Topic `t` with subscription `s`: 10 s leases, retries without backoff.
    async fn short_lease_subscription(&self) {
        self.topic("t", TopicConfig::default()).await;
        let config = SubscriptionConfig {
            lease_timeout: HumanDuration::from_secs(10),
            backoff: no_backoff(),
            ..SubscriptionConfig::default()
        };
        self.sub("t", "s", config).await;
    }

    /// Receives and acks everything the subscription has now; returns `data.n` in order.
    async fn drain(&self, t: &str, s: &str) -> Vec<u64> {
        let mut out = Vec::new();
        loop {
            let d = self.recv_sub(t, s, 1000).await;
            if d.is_empty() {
                return out;
            }
            out.extend(ns(&d));
            self.ack_sub(t, s, &d).await;
        }
    }
}

fn event_of(d: &Delivery) -> Value {
    serde_json::from_slice(&d.body).unwrap()
}

fn ns(d: &[Delivery]) -> Vec<u64> {
    d.iter()
        .map(|m| event_of(m)["data"]["n"].as_u64().unwrap())
        .collect()
}

fn with_filter(filter: Value) -> SubscriptionConfig {
    SubscriptionConfig {
        filter,
        ..SubscriptionConfig::default()
    }
}

#[tokio::test]
async fn events_are_stored_once_and_read_by_offset_and_time() {
    let f = Fixture::new();
    f.topic("orders", TopicConfig::default()).await;
    let offsets = f
        .publish(
            "orders",
            vec![ev("a", "s", json!(1)), ev("b", "s", json!(2))],
        )
        .await;
    assert_eq!(offsets, vec![0, 1]);
    f.clock.advance(5_000);
    f.publish("orders", vec![ev("c", "s", json!(3))]).await;
    let page = f.b().read_events("orders", Start::Offset(1), 10).unwrap();
    assert_eq!(
        page.events.iter().map(|e| e.offset).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(page.next, 3);
    let stored: Value = serde_json::from_slice(&page.events[0].event).unwrap();
    assert_eq!(stored["type"], "b");
    assert!(
        stored["id"].as_str().is_some_and(|id| id.len() == 36),
        "{stored}"
    );
    assert!(stored["time"].is_string());
    let t = f.clock.now_ms();
    let page = f.b().read_events("orders", Start::Time(t), 10).unwrap();
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.events[0].offset, 2);
    let info = f.b().get_topic("orders").unwrap();
    assert_eq!((info.stats.events, info.stats.next_offset), (3, 3));
}

#[tokio::test]
async fn fan_out_to_filtered_subscriptions_delivers_each_its_matches_in_order() {
    let mut f = Fixture::new();
    f.topic("orders", TopicConfig::default()).await;
    f.sub("orders", "all", SubscriptionConfig::default()).await;
    f.sub(
        "orders",
        "big",
        with_filter(json!({"data": {"n": [{"numeric": [">=", 50]}]}})),
    )
    .await;
    f.sub("orders", "g0", with_filter(json!({"subject": ["order-0"]})))
        .await;
    f.publish_n("orders", 0..100, 4).await;
    f.publish(
        "orders",
        vec![ev("order.paid", "order-0", json!({"n": 1000}))],
    )
    .await;
    // Half of `all` now, the rest after a restart: the cursor survives.
    let first = f.recv_sub("orders", "all", 60).await;
    f.ack_sub("orders", "all", &first).await;
    f.reopen();
    let mut all = ns(&first);
    all.extend(f.drain("orders", "all").await);
    assert_eq!(all, (0..100).chain([1000]).collect::<Vec<_>>());
    assert_eq!(
        f.drain("orders", "big").await,
        (50..100).chain([1000]).collect::<Vec<_>>()
    );
    assert_eq!(
        f.drain("orders", "g0").await,
        (0..100).step_by(4).chain([1000]).collect::<Vec<_>>()
    );
    let info = f.b().get_subscription("orders", "big").unwrap();
    assert_eq!((info.cursor, info.backlog), (101, 0));
    assert_eq!(info.stats.leased, 0);
    // The log holds each event once, however many subscriptions matched it.
    assert_eq!(f.b().get_topic("orders").unwrap().stats.events, 101);
}

#[tokio::test]
async fn start_positions_and_seek_redeliver_exactly_from_there() {
    let f = Fixture::new();
    f.topic("t", TopicConfig::default()).await;
    f.publish_n("t", 0..10, 1).await;
    f.clock.advance(60_000);
    let t1 = f.clock.now_ms();
    f.publish_n("t", 10..20, 1).await;
    for (sub, start, want) in [
        ("latest", Start::Latest, vec![]),
        ("earliest", Start::Earliest, (0..20).collect::<Vec<u64>>()),
        ("offset", Start::Offset(15), (15..20).collect()),
        ("time", Start::Time(t1), (10..20).collect()),
    ] {
        f.sub(
            "t",
            sub,
            SubscriptionConfig {
                start,
                ..SubscriptionConfig::default()
            },
        )
        .await;
        assert_eq!(f.drain("t", sub).await, want, "{sub}");
    }
    // An event leased at seek time is forgotten; delivery restarts at the position.
    let leased = f.recv_sub("t", "earliest", 1).await;
    assert!(leased.is_empty());
    f.b().seek("t", "earliest", Start::Offset(7)).await.unwrap();
    let d = f.recv_sub("t", "earliest", 2).await;
    assert_eq!(ns(&d), vec![7, 8]);
    f.b().seek("t", "earliest", Start::Time(t1)).await.unwrap();
    let stale = f
        .b()
        .ack(
            &crate::Broker::subscription_queue("t", "earliest"),
            &receipts(&d),
        )
        .await
        .unwrap();
    assert!(matches!(stale[0], Err(Error::ReceiptStale)));
    assert_eq!(f.drain("t", "earliest").await, (10..20).collect::<Vec<_>>());
    let e = f
        .b()
        .seek("t", "earliest", Start::Offset(21))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::PositionOutOfRange(_)), "{e}");
}

#[tokio::test]
async fn nacked_events_retry_then_dead_letter_with_reason_and_redrive_back() {
    let f = Fixture::new();
    f.topic("t", TopicConfig::default()).await;
    f.queue("dlq", QueueConfig::default()).await;
    f.sub(
        "t",
        "s",
        SubscriptionConfig {
            max_attempts: Some(2),
            dead_letter_queue: Some(name("dlq")),
            backoff: no_backoff(),
            ..SubscriptionConfig::default()
        },
    )
    .await;
    f.publish_n("t", 0..3, 3).await;
    let sq = crate::Broker::subscription_queue("t", "s");
    let nack = Nack {
        delay: None,
        reason: Some("boom".into()),
    };
    let d = f.recv_sub("t", "s", 10).await;
    let mut got = ns(&d);
    got.sort();
    assert_eq!(got, vec![0, 1, 2]);
    assert!(d.iter().all(|m| m.receive_count == 1));
    let (done, failed): (Vec<_>, Vec<_>) =
        d.into_iter().partition(|m| event_of(m)["data"]["n"] == 2);
    f.ack_sub("t", "s", &done).await;
    f.b()
        .nack(&sq, &receipts(&failed), nack.clone())
        .await
        .unwrap();
    let d = f.recv_sub("t", "s", 10).await;
    let mut got = ns(&d);
    got.sort();
    assert_eq!(got, vec![0, 1]);
    assert!(d.iter().all(|m| m.receive_count == 2));
    f.b().nack(&sq, &receipts(&d), nack).await.unwrap();
    // Both remaining events have now been delivered twice and nacked: dead-lettered.
    assert!(f.recv_sub("t", "s", 10).await.is_empty());
    let info = f.b().get_subscription("t", "s").unwrap();
    assert_eq!(info.stats.dead_lettered, 2);
    let dead = f.receive("dlq", 10).await;
    assert_eq!(dead.len(), 2);
    let dl = dead[0].dead_letter.as_ref().unwrap();
    assert_eq!((dl.source_queue.as_str(), dl.attempts), ("t/s", 2));
    assert_eq!(dl.error.as_deref(), Some("boom"));
    assert_eq!(event_of(&dead[0])["type"], "order.placed");
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
    let r = f.b().redrive(&sq, 100).await.unwrap();
    assert_eq!((r.moved, r.remaining), (2, 0));
    let mut again = f.drain("t", "s").await;
    again.sort();
    assert_eq!(again, vec![0, 1]);
}

#[tokio::test]
async fn fifo_subscription_keeps_group_order_with_one_lease_per_group() {
    let mut f = Fixture::new();
    f.topic("t", TopicConfig::default()).await;
    f.sub(
        "t",
        "s",
        SubscriptionConfig {
            fifo: true,
            backoff: no_backoff(),
            ..SubscriptionConfig::default()
        },
    )
    .await;
    f.publish_n("t", 0..12, 3).await;
    let d = f.recv_sub("t", "s", 10).await;
    assert_eq!(ns(&d), vec![0, 1, 2], "one head per group");
    assert_eq!(d[0].group.as_deref(), Some("order-0"));
    // Group order-0's head fails: its group waits, the others move on.
    let sq = crate::Broker::subscription_queue("t", "s");
    f.b()
        .nack(&sq, &receipts(&d[..1]), Nack::default())
        .await
        .unwrap();
    f.ack_sub("t", "s", &d[1..]).await;
    f.reopen();
    let d = f.recv_sub("t", "s", 10).await;
    let mut got = ns(&d);
    got.sort();
    assert_eq!(got, vec![0, 4, 5]);
    f.ack_sub("t", "s", &d).await;
    let rest = f.drain("t", "s").await;
    for g in 0..3u64 {
        let order: Vec<u64> = rest.iter().copied().filter(|n| n % 3 == g).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "group {g} out of order");
    }
    assert_eq!(rest.len(), 7);
}

#[tokio::test]
async fn a_forwarding_subscription_sends_matching_events_into_its_queue() {
    let f = Fixture::new();
    f.topic("t", TopicConfig::default()).await;
    f.queue("big", QueueConfig::default()).await;
    f.sub(
        "t",
        "fwd",
        SubscriptionConfig {
            filter: json!({"data": {"n": [{"numeric": [">", 6]}]}}),
            target: Target::Queue { queue: name("big") },
            ..SubscriptionConfig::default()
        },
    )
    .await;
    f.publish_n("t", 0..10, 1).await;
    f.advance(10).await;
    let d = f.receive("big", 10).await;
    assert_eq!(ns(&d), vec![7, 8, 9]);
    let attrs: Value = serde_json::from_slice(&d[0].attributes).unwrap();
    assert_eq!(attrs, json!({"topic": "t", "offset": 7}));
    let e = f.b().delete_queue("big").await.unwrap_err();
    assert!(matches!(e, Error::QueueInUse { .. }), "{e}");
}

#[tokio::test]
async fn compaction_keeps_exactly_the_latest_event_per_key_across_restarts() {
    let mut f = Fixture::new();
    f.topic(
        "customers",
        TopicConfig {
            compaction: Some(Compaction {
                tombstone_type: Some("customer.deleted".into()),
                tombstone_retention: HumanDuration::from_secs(60),
                ..Compaction::default()
            }),
            ..TopicConfig::default()
        },
    )
    .await;
    for round in 0..3 {
        let events = (0..5)
            .map(|k| {
                ev(
                    "customer.updated",
                    &format!("c{k}"),
                    json!({"round": round}),
                )
            })
            .collect();
        f.publish("customers", events).await;
    }
    f.publish("customers", vec![ev("customer.updated", "c1", json!(null))])
        .await;
    f.publish("customers", vec![ev("customer.deleted", "c2", json!({}))])
        .await;
    let missing = f
        .b()
        .publish(
            "customers",
            vec![
                json!({"specversion": "1.0", "source": "/x", "type": "t"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ],
        )
        .await
        .unwrap();
    assert!(
        matches!(&missing[0], PublishOutcome::Failed(Error::InvalidEvent(e)) if e.attribute == "subject")
    );
    f.advance(1_000).await;
    f.reopen();
    f.advance(1_000).await;
    let info = f.b().get_topic("customers").unwrap();
    // 3 live keys, each with its latest event, plus 2 tombstones still in retention.
    assert_eq!(info.stats.keys, Some(3));
    assert_eq!(info.stats.events, 5, "{:?}", info.stats);
    let table = f.b().table_page("customers", None, 100).unwrap();
    let keys: Vec<&str> = table.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, vec!["c0", "c3", "c4"]);
    for (_, e) in &table {
        let v: Value = serde_json::from_slice(&e.event).unwrap();
        assert_eq!(v["data"]["round"], 2);
    }
    let page = f.b().table_page("customers", Some("c0"), 1).unwrap();
    assert_eq!(page[0].0, "c3");
    assert!(matches!(
        f.b().table_get("customers", "c1"),
        Err(Error::KeyNotFound { .. })
    ));
    // Tombstones go once their retention ends.
    f.advance(60_000).await;
    f.advance(1_000).await;
    let info = f.b().get_topic("customers").unwrap();
    assert_eq!(info.stats.events, 3, "{:?}", info.stats);
    assert_eq!(info.stats.first_offset, 10);
    // A key published again after its tombstone is live again.
    f.publish(
        "customers",
        vec![ev("customer.updated", "c1", json!({"round": 9}))],
    )
    .await;
    let v: Value =
        serde_json::from_slice(&f.b().table_get("customers", "c1").unwrap().event).unwrap();
    assert_eq!(v["data"]["round"], 9);
}

#[tokio::test]
async fn retention_by_age_and_size_drops_the_oldest_events() {
    let f = Fixture::new();
    f.topic(
        "t",
        TopicConfig {
            retention: HumanDuration::from_secs(60),
            ..TopicConfig::default()
        },
    )
    .await;
    f.sub(
        "t",
        "s",
        SubscriptionConfig {
            start: Start::Earliest,
            ..SubscriptionConfig::default()
        },
    )
    .await;
    f.publish_n("t", 0..5, 1).await;
    f.clock.advance(30_000);
    f.publish_n("t", 5..8, 1).await;
    f.advance(31_000).await;
    let info = f.b().get_topic("t").unwrap();
    assert_eq!((info.stats.first_offset, info.stats.events), (5, 3));
    assert_eq!(f.drain("t", "s").await, vec![5, 6, 7]);
    let size = f.b().read_events("t", Start::Earliest, 1).unwrap().events[0]
        .event
        .len() as u64;
    f.b()
        .put_topic(
            &name("t"),
            TopicConfig {
                max_bytes: Some(ByteSize(2 * size)),
                max_event_size: ByteSize(size),
                ..TopicConfig::default()
            },
        )
        .await
        .unwrap();
    f.advance(1_000).await;
    let info = f.b().get_topic("t").unwrap();
    assert_eq!((info.stats.first_offset, info.stats.events), (6, 2));
}

#[tokio::test]
async fn a_repeated_source_and_id_is_stored_once_within_the_dedup_window() {
    let f = Fixture::new();
    f.topic("t", TopicConfig::default()).await;
    let mut e = ev("a", "s", json!(1));
    e.insert("id".into(), json!("evt-1"));
    let mut other_source = e.clone();
    other_source.insert("source".into(), json!("/other"));
    let out = f
        .b()
        .publish("t", vec![e.clone(), e.clone(), other_source])
        .await
        .unwrap();
    assert!(matches!(
        out[0],
        PublishOutcome::Published { offset: 0, .. }
    ));
    assert!(matches!(
        out[1],
        PublishOutcome::Duplicate { offset: 0, .. }
    ));
    assert!(matches!(
        out[2],
        PublishOutcome::Published { offset: 1, .. }
    ));
    f.advance(301_000).await;
    let out = f.b().publish("t", vec![e]).await.unwrap();
    assert!(matches!(
        out[0],
        PublishOutcome::Published { offset: 2, .. }
    ));
    assert_eq!(f.b().get_topic("t").unwrap().stats.dedup_hits_total, 1);
}

#[tokio::test]
async fn bad_subscriptions_and_unknown_names_are_refused() {
    let f = Fixture::new();
    f.topic("t", TopicConfig::default()).await;
    let e = f
        .b()
        .put_subscription("t", &name("s"), with_filter(json!({"type": "x"})))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("filter.type"), "{e}");
    let e = f
        .b()
        .put_subscription("nope", &name("s"), SubscriptionConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::TopicNotFound(_)), "{e}");
    let e = f
        .b()
        .receive(
            &crate::Broker::subscription_queue("t", "missing"),
            1,
            HumanDuration::ZERO,
            None,
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::SubscriptionNotFound { .. }), "{e}");
    f.sub("t", "s", SubscriptionConfig::default()).await;
    let e = f
        .b()
        .put_subscription(
            "t",
            &name("s"),
            SubscriptionConfig {
                fifo: true,
                ..SubscriptionConfig::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::FifoImmutable), "{e}");
    // Deleting the topic deletes its subscriptions.
    f.b().delete_topic("t").await.unwrap();
    assert!(f.b().list_topics().is_empty());
    f.topic("t", TopicConfig::default()).await;
    assert!(f.b().list_subscriptions("t").unwrap().is_empty());
}

#[tokio::test]
async fn first_delivery_leases_keep_their_state_across_extend_restart_and_expiry() {
    let mut f = Fixture::new();
    f.short_lease_subscription().await;
    f.publish_n("t", 0..3, 1).await;
    let sq = crate::Broker::subscription_queue("t", "s");
    let d = f.recv_sub("t", "s", 3).await;
    let first_receive = d[0].first_receive_ms;
    assert_eq!(first_receive, f.clock.now_ms());
    assert!(d.iter().all(|m| m.receive_count == 1));
    // Extend one lease to 60s, then restart: every lease is recovered with its deadline.
    f.b()
        .extend(&sq, &receipts(&d[..1]), HumanDuration::from_secs(60))
        .await
        .unwrap();
    f.clock.advance(5_000);
    f.reopen();
    assert!(
        f.recv_sub("t", "s", 10).await.is_empty(),
        "all three still leased"
    );
    // The receipt of the middle event still acks it after the restart.
    f.ack_sub("t", "s", &d[1..2]).await;
    // Past 10s the third lease ends: redelivered as the second attempt.
    f.advance(6_000).await;
    let again = f.recv_sub("t", "s", 10).await;
    assert_eq!(ns(&again), vec![2]);
    assert_eq!(again[0].receive_count, 2);
    assert_eq!(again[0].first_receive_ms, first_receive);
    f.ack_sub("t", "s", &again).await;
    // The extended one ends at 60s.
    f.advance(50_000).await;
    let last = f.recv_sub("t", "s", 10).await;
    assert_eq!(ns(&last), vec![0]);
    assert_eq!(last[0].receive_count, 2);
    f.ack_sub("t", "s", &last).await;
    let info = f.b().get_subscription("t", "s").unwrap();
    assert_eq!((info.stats.leased, info.stats.visible), (0, 0));
}

#[tokio::test]
async fn acked_events_of_shared_leases_stay_acked_across_restarts() {
    let mut f = Fixture::new();
    f.short_lease_subscription().await;
    f.publish_n("t", 0..150, 1).await;
    let sq = crate::Broker::subscription_queue("t", "s");
    // One receive, more events than one shared entry lists.
    let d = f.recv_sub("t", "s", 150).await;
    assert_eq!(d.len(), 150);
    // Acks one at a time and in runs, across the entries; a nack in between.
    for m in d.iter().step_by(3) {
        f.ack_sub("t", "s", std::slice::from_ref(m)).await;
    }
    let run: Vec<Delivery> = (100..110)
        .filter(|i| i % 3 != 0)
        .map(|i| d[i].clone())
        .collect();
    f.ack_sub("t", "s", &run).await;
    let nack = Nack {
        delay: Some(HumanDuration::from_secs(60)),
        reason: None,
    };
    f.b().nack(&sq, &receipts(&d[1..2]), nack).await.unwrap();
    let acked: std::collections::HashSet<u64> = (0..150)
        .filter(|i| i % 3 == 0 || (100..110).contains(i))
        .collect();
    let leased = 150 - acked.len() as u64 - 1;
    f.reopen();
    let info = f.b().get_subscription("t", "s").unwrap();
    assert_eq!(
        (info.stats.leased, info.stats.visible, info.stats.delayed),
        (leased, 0, 1)
    );
    assert!(f.recv_sub("t", "s", 1000).await.is_empty());
    // When the leases end, exactly the unacked events come back, once each.
    f.advance(10_000).await;
    let back = f.drain("t", "s").await;
    let want: Vec<u64> = (0..150).filter(|i| !acked.contains(i) && *i != 1).collect();
    assert_eq!(back, want);
    f.reopen();
    f.advance(60_000).await;
    assert_eq!(f.drain("t", "s").await, vec![1]);
    f.reopen();
    f.advance(60_000).await;
    assert!(f.recv_sub("t", "s", 1000).await.is_empty());
}
