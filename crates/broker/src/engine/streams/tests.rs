//! Tests of event-store streams through the broker, on a real store and a manual clock:
//! appends with expected versions and retries, reads of a stream, `$all`, categories and
//! types, metadata, deletion, scavenging, snapshots, and recovery after a reopen.

use serde_json::{Map, Value, json};
use sluice_types::HumanDuration;

use crate::engine::tests::Fixture;
use crate::{
    ALL, AppendResult, Direction, Error, ExpectedVersion, Index, RecordedEvent, StreamMetadata,
    StreamState,
};
use ExpectedVersion::{Any, Exact, Exists, NoStream};

fn ev(id: &str, ty: &str) -> Map<String, Value> {
    json!({"specversion": "1.0", "source": "/test", "type": ty, "id": id, "data": {"id": id}})
        .as_object()
        .unwrap()
        .clone()
}

fn evs(ids: &[&str]) -> Vec<Map<String, Value>> {
    ids.iter().map(|id| ev(id, "thing.happened")).collect()
}

fn ids(events: &[RecordedEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let v: Value = serde_json::from_slice(&e.event).unwrap();
            v["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn versions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.version).collect()
}

impl Fixture {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        ids: &[&str],
    ) -> Result<AppendResult, Error> {
        self.b().append(stream, expected, evs(ids)).await
    }

    fn forward(&self, stream: &str) -> Vec<RecordedEvent> {
        self.b()
            .read_stream(stream, None, Direction::Forward, 1_000)
            .unwrap()
            .events
    }
}

#[tokio::test]
async fn appends_check_the_expected_version_and_number_events_from_zero() {
    let f = Fixture::new();
    let r = f.append("order-1", NoStream, &["a", "b"]).await.unwrap();
    assert_eq!((r.first_version, r.last_version, r.appended), (0, 1, true));
    let r = f.append("order-1", Exact(1), &["c"]).await.unwrap();
    assert_eq!((r.first_version, r.last_version), (2, 2));
    let r = f.append("order-1", Exists, &["d"]).await.unwrap();
    assert_eq!(r.first_version, 3);
    let r = f.append("order-1", Any, &["e"]).await.unwrap();
    assert_eq!(r.first_version, 4);

    match f.append("order-1", Exact(2), &["x"]).await {
        Err(Error::WrongExpectedVersion { current, .. }) => assert_eq!(current, Some(4)),
        other => panic!("expected a version conflict, got {other:?}"),
    }
    match f.append("order-1", NoStream, &["x"]).await {
        Err(Error::WrongExpectedVersion { current, .. }) => assert_eq!(current, Some(4)),
        other => panic!("expected a version conflict, got {other:?}"),
    }
    match f.append("order-2", Exists, &["x"]).await {
        Err(Error::WrongExpectedVersion { current, .. }) => assert_eq!(current, None),
        other => panic!("expected a version conflict, got {other:?}"),
    }
    let events = f.forward("order-1");
    assert_eq!(versions(&events), vec![0, 1, 2, 3, 4]);
    assert_eq!(ids(&events), vec!["a", "b", "c", "d", "e"]);
    // The stream attributes are on the stored event.
    let first: Value = serde_json::from_slice(&events[0].event).unwrap();
    assert_eq!(first["stream"], "order-1");
    assert_eq!(first["streamversion"], 0);
}

#[tokio::test]
async fn a_retried_append_answers_as_before_and_writes_nothing() {
    let f = Fixture::new();
    let first = f.append("s-1", NoStream, &["a", "b"]).await.unwrap();
    f.append("s-1", Exact(1), &["c"]).await.unwrap();
    // The same append again, long after: recognised, not duplicated.
    let again = f.append("s-1", NoStream, &["a", "b"]).await.unwrap();
    assert_eq!(again.first_version, 0);
    assert_eq!(again.last_version, 1);
    assert_eq!(again.first_position, first.first_position);
    assert!(!again.appended);
    let again = f.append("s-1", Exact(1), &["c"]).await.unwrap();
    assert!(!again.appended);
    assert_eq!(again.first_version, 2);
    // The same id at another position is a conflict, as is a new event after old ones.
    match f.append("s-1", Exact(2), &["a"]).await {
        Err(Error::EventIdConflict { id, at, .. }) => assert_eq!((id.as_str(), at), ("a", 0)),
        other => panic!("expected an id conflict, got {other:?}"),
    }
    // The start of an earlier batch at its position is a retry of that much.
    assert!(!f.append("s-1", NoStream, &["a"]).await.unwrap().appended);
    assert!(matches!(
        f.append("s-1", Any, &["new", "c"]).await,
        Err(Error::EventIdConflict { .. })
    ));
    assert_eq!(ids(&f.forward("s-1")), vec!["a", "b", "c"]);
    // The same id in another stream is another event.
    assert!(f.append("s-2", NoStream, &["a"]).await.unwrap().appended);
}

#[tokio::test]
async fn reads_go_forward_backward_and_page() {
    let f = Fixture::new();
    let all: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    f.append("s-1", NoStream, &refs).await.unwrap();
    let b = f.b();
    let p = b
        .read_stream("s-1", Some(3), Direction::Forward, 4)
        .unwrap();
    assert_eq!(versions(&p.events), vec![3, 4, 5, 6]);
    assert_eq!(p.next, Some(7));
    let p = b
        .read_stream("s-1", Some(7), Direction::Forward, 4)
        .unwrap();
    assert_eq!(versions(&p.events), vec![7, 8, 9]);
    assert_eq!(p.next, None);
    let p = b.read_stream("s-1", None, Direction::Backward, 3).unwrap();
    assert_eq!(versions(&p.events), vec![9, 8, 7]);
    assert_eq!(p.next, Some(6));
    let p = b
        .read_stream("s-1", Some(1), Direction::Backward, 3)
        .unwrap();
    assert_eq!(versions(&p.events), vec![1, 0]);
    assert_eq!(p.next, None);
    let p = b
        .read_stream("s-1", Some(50), Direction::Forward, 3)
        .unwrap();
    assert!(p.events.is_empty());
    assert!(matches!(
        b.read_stream("nope", None, Direction::Forward, 3),
        Err(Error::StreamNotFound(_))
    ));
    assert!(matches!(
        b.read_stream("$all", None, Direction::Forward, 3),
        Err(Error::InvalidStream(_))
    ));
}

#[tokio::test]
async fn all_categories_and_types_are_in_commit_order() {
    let f = Fixture::new();
    f.b()
        .append("order-1", NoStream, vec![ev("o1a", "placed")])
        .await
        .unwrap();
    f.b()
        .append("cart-9", NoStream, vec![ev("c9a", "added")])
        .await
        .unwrap();
    f.b()
        .append(
            "order-2",
            NoStream,
            vec![ev("o2a", "placed"), ev("o2b", "paid")],
        )
        .await
        .unwrap();
    f.b()
        .append("order-1", Exact(0), vec![ev("o1b", "paid")])
        .await
        .unwrap();
    let b = f.b();
    let all = b.read_all(0, 100).unwrap();
    assert_eq!(ids(&all.events), vec!["o1a", "c9a", "o2a", "o2b", "o1b"]);
    let positions: Vec<u64> = all.events.iter().map(|e| e.position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert_eq!(all.next, positions[4] + 1);
    let page = b.read_all(positions[1], 2).unwrap();
    assert_eq!(ids(&page.events), vec!["c9a", "o2a"]);
    let orders = b.read_index(Index::Category("order"), 0, 100).unwrap();
    assert_eq!(ids(&orders.events), vec!["o1a", "o2a", "o2b", "o1b"]);
    let orders = b
        .read_index(Index::Category("order"), positions[3], 100)
        .unwrap();
    assert_eq!(ids(&orders.events), vec!["o2b", "o1b"]);
    let paid = b.read_index(Index::Type("paid"), 0, 100).unwrap();
    assert_eq!(ids(&paid.events), vec!["o2b", "o1b"]);
    assert_eq!(paid.events[1].stream, "order-1");
    assert_eq!(paid.events[1].version, 1);
    // A category is not a prefix match: "order" does not read "orders-1".
    f.b()
        .append("orders-1", NoStream, vec![ev("x", "placed")])
        .await
        .unwrap();
    let orders = f.b().read_index(Index::Category("order"), 0, 100).unwrap();
    assert_eq!(orders.events.len(), 4);
    // $all is not a topic users can publish to or delete.
    assert!(matches!(
        f.b().publish(ALL, vec![ev("p", "t")]).await,
        Err(Error::TopicNotFound(_))
    ));
    assert!(matches!(
        f.b().delete_topic(ALL).await,
        Err(Error::TopicNotFound(_))
    ));
    assert!(f.b().list_topics().is_empty());
}

#[tokio::test]
async fn soft_delete_hides_events_and_versions_continue() {
    let f = Fixture::new();
    f.append("s-1", NoStream, &["a", "b"]).await.unwrap();
    assert!(matches!(
        f.b().delete_stream("s-1", Exact(0), false).await,
        Err(Error::WrongExpectedVersion { .. })
    ));
    f.b().delete_stream("s-1", Exact(1), false).await.unwrap();
    assert!(matches!(
        f.b().read_stream("s-1", None, Direction::Forward, 10),
        Err(Error::StreamNotFound(_))
    ));
    assert!(f.b().read_all(0, 10).unwrap().events.is_empty());
    // Written again: versions continue, the old events stay gone.
    let r = f.append("s-1", NoStream, &["c"]).await.unwrap();
    assert_eq!(r.first_version, 2);
    assert_eq!(versions(&f.forward("s-1")), vec![2]);
    assert_eq!(ids(&f.b().read_all(0, 10).unwrap().events), vec!["c"]);
    // Scavenging removes the deleted events from the log for good.
    f.clock.advance(2_000);
    f.b().tick().await.unwrap();
    assert_eq!(f.b().get_topic(ALL).unwrap().stats.events, 1);
}

#[tokio::test]
async fn hard_delete_is_a_tombstone() {
    let f = Fixture::new();
    f.append("s-1", NoStream, &["a"]).await.unwrap();
    f.b().delete_stream("s-1", Any, true).await.unwrap();
    assert!(matches!(
        f.append("s-1", Any, &["b"]).await,
        Err(Error::StreamDeleted(_))
    ));
    assert!(matches!(
        f.append("s-1", NoStream, &["a"]).await,
        Err(Error::StreamDeleted(_))
    ));
    assert!(matches!(
        f.b().read_stream("s-1", None, Direction::Forward, 10),
        Err(Error::StreamDeleted(_))
    ));
    assert!(matches!(
        f.b()
            .set_stream_metadata("s-1", StreamMetadata::default())
            .await,
        Err(Error::StreamDeleted(_))
    ));
    assert_eq!(
        f.b().stream_info("s-1").unwrap().state,
        StreamState::Tombstoned
    );
    assert!(matches!(
        f.b().delete_stream("never", Any, false).await,
        Err(Error::StreamNotFound(_))
    ));
}

#[tokio::test]
async fn metadata_bounds_what_readers_see_and_scavenging_removes_it() {
    let mut f = Fixture::new();
    let names: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    f.append("s-1", NoStream, &refs).await.unwrap();
    let m = StreamMetadata {
        max_count: Some(3),
        ..StreamMetadata::default()
    };
    f.b().set_stream_metadata("s-1", m.clone()).await.unwrap();
    assert_eq!(versions(&f.forward("s-1")), vec![7, 8, 9]);
    assert_eq!(f.b().stream_info("s-1").unwrap().metadata, m);
    f.b()
        .set_stream_metadata(
            "s-1",
            StreamMetadata {
                truncate_before: Some(8),
                ..StreamMetadata::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(versions(&f.forward("s-1")), vec![8, 9]);
    assert_eq!(f.b().read_all(0, 100).unwrap().events.len(), 2);
    // Scavenged: gone from $all and the indexes, the stream keeps its versions, and the
    // removal outlives a restart.
    f.clock.advance(2_000);
    f.b().tick().await.unwrap();
    assert_eq!(f.b().get_topic(ALL).unwrap().stats.events, 2);
    f.reopen();
    assert_eq!(versions(&f.forward("s-1")), vec![8, 9]);
    assert_eq!(
        f.b()
            .read_index(crate::Index::Type("thing.happened"), 0, 100)
            .unwrap()
            .events
            .len(),
        2
    );
    let r = f.append("s-1", Exact(9), &["e10"]).await.unwrap();
    assert_eq!(r.first_version, 10);

    // Max age: events older than it disappear.
    f.b()
        .set_stream_metadata(
            "s-1",
            StreamMetadata {
                max_age: Some(HumanDuration::from_secs(60)),
                ..StreamMetadata::default()
            },
        )
        .await
        .unwrap();
    // Replacing the metadata dropped truncate-before, but versions 0..8 are scavenged.
    assert_eq!(versions(&f.forward("s-1")), vec![8, 9, 10]);
    f.clock.advance(61_000);
    f.append("s-1", Exact(10), &["e11"]).await.unwrap();
    assert_eq!(versions(&f.forward("s-1")), vec![11]);
    f.b().tick().await.unwrap();
    assert_eq!(f.b().get_topic(ALL).unwrap().stats.events, 1);
}

#[tokio::test]
async fn snapshots_keep_the_latest_version() {
    let mut f = Fixture::new();
    f.append("acct-1", NoStream, &["a", "b", "c"])
        .await
        .unwrap();
    let b = f.b();
    assert_eq!(b.load_snapshot("acct-1").unwrap(), None);
    b.save_snapshot("acct-1", 1, json!({"balance": 5}))
        .await
        .unwrap();
    assert!(matches!(
        b.save_snapshot("acct-1", 9, json!({})).await,
        Err(Error::InvalidSnapshot(_))
    ));
    assert!(matches!(
        b.save_snapshot("acct-1", 0, json!({})).await,
        Err(Error::SnapshotStale { current: 1, .. })
    ));
    assert!(matches!(
        b.save_snapshot("nope", 0, json!({})).await,
        Err(Error::StreamNotFound(_))
    ));
    f.reopen();
    let s = f.b().load_snapshot("acct-1").unwrap().unwrap();
    assert_eq!((s.version, s.data), (1, json!({"balance": 5})));
    // The snapshot plus the events after it.
    let rest = f
        .b()
        .read_stream("acct-1", Some(s.version + 1), Direction::Forward, 100)
        .unwrap();
    assert_eq!(ids(&rest.events), vec!["c"]);
}

#[tokio::test]
async fn bad_appends_are_refused_whole() {
    let f = Fixture::new();
    for bad in ["", "$all", "a b", "a/b", &"x".repeat(201)] {
        assert!(
            matches!(
                f.append(bad, Any, &["a"]).await,
                Err(Error::InvalidStream(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        f.append("s-1", Any, &[]).await,
        Err(Error::InvalidMessage(_))
    ));
    assert!(matches!(
        f.append("s-1", Any, &["a", "a"]).await,
        Err(Error::InvalidMessage(_))
    ));
    // One invalid event refuses the whole append.
    let mut events = evs(&["a"]);
    events.push(
        json!({"specversion": "1.0", "type": "t"})
            .as_object()
            .unwrap()
            .clone(),
    );
    match f.b().append("s-1", Any, events).await {
        Err(Error::InvalidEvent(e)) => assert_eq!(e.attribute, "events[1].source"),
        other => panic!("expected an invalid event, got {other:?}"),
    }
    let mut big = ev("big", "t");
    big.insert("data".into(), Value::String("x".repeat(1 << 20)));
    assert!(matches!(
        f.b().append("s-1", Any, vec![big]).await,
        Err(Error::EventTooLarge { .. })
    ));
    assert!(matches!(
        f.b().read_stream("s-1", None, Direction::Forward, 1),
        Err(Error::StreamNotFound(_))
    ));
    assert_eq!(f.b().read_all(0, 10).unwrap().events.len(), 0);
}

#[tokio::test]
async fn positions_and_versions_survive_a_reopen() {
    let mut f = Fixture::new();
    f.append("a-1", NoStream, &["1", "2"]).await.unwrap();
    f.append("b-1", NoStream, &["3"]).await.unwrap();
    f.reopen();
    let r = f.append("a-1", Exact(1), &["4"]).await.unwrap();
    assert_eq!((r.first_version, r.first_position), (2, 3));
    assert_eq!(
        ids(&f.b().read_all(0, 10).unwrap().events),
        vec!["1", "2", "3", "4"]
    );
}
