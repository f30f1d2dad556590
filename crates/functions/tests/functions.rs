//! Functions over a real store and broker with WAT guests: versions and
//! aliases, invocation, and effects committed atomically with the input's ack.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use sluice_broker::{Broker, NewMessage, Options, QueueConfig, Start, TopicConfig};
use sluice_functions::{Error, Functions, Input, RuntimeConfig, Target, VersionSettings};
use sluice_runtime::{Failure, Outcome};
use sluice_store::Store;
use sluice_types::{HumanDuration, Name, SharedClock, SystemClock};
use tokio_util::sync::CancellationToken;

struct Fixture {
    broker: Broker,
    functions: Functions,
    store: Store,
    dir: tempfile::TempDir,
    _cancel: CancellationToken,
}

fn open_at(dir: tempfile::TempDir) -> Fixture {
    let store = Store::open(&dir.path().join("store"), sluice_store::Options::default()).unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let broker = Broker::open(store.clone(), clock.clone(), &Options::default()).unwrap();
    let cancel = CancellationToken::new();
    tokio::spawn(broker.clone().run(Options::default(), cancel.clone()));
    let functions = Functions::open(
        broker.clone(),
        store.clone(),
        &dir.path().join("functions"),
        clock,
        RuntimeConfig {
            max_instances: 16,
            ..RuntimeConfig::default()
        },
    )
    .unwrap();
    Fixture {
        broker,
        functions,
        store,
        dir,
        _cancel: cancel,
    }
}

fn fixture() -> Fixture {
    open_at(tempfile::tempdir().unwrap())
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn event(id: &str) -> Map<String, Value> {
    json!({"specversion":"1.0","id":id,"source":"test","type":"t","data":{"n":1}})
        .as_object()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_aliases_rollback_and_delete() {
    let f = fixture();
    let fx = &f.functions;
    let v1 = fx
        .deploy(&name("f"), sluice_guests::ok(), VersionSettings::default())
        .await
        .unwrap();
    let v2 = fx
        .deploy(
            &name("f"),
            sluice_guests::error(),
            VersionSettings::default(),
        )
        .await
        .unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    assert_eq!(fx.get("f").unwrap().meta.aliases["live"], 2);
    assert_eq!(fx.get("f").unwrap().versions.len(), 2);
    // live runs version 2 (errors), version 1 still runs by number.
    let r = fx
        .invoke("f", &Target::default(), &[event("e")], None)
        .await
        .unwrap();
    assert_eq!(r.outcome, Outcome::Failed(Failure::Error("boom".into())));
    let r = fx
        .invoke("f", &Target::Version(1), &[event("e")], None)
        .await
        .unwrap();
    assert_eq!(r.outcome, Outcome::Success);
    // Rollback moves live to 1; a version an alias points at cannot go.
    fx.rollback("f", "live", None).await.unwrap();
    assert_eq!(fx.resolve("f", &Target::default()).unwrap(), 1);
    assert!(matches!(
        fx.delete_version("f", 1).await,
        Err(Error::VersionInUse { .. })
    ));
    assert!(matches!(
        fx.rollback("f", "live", None).await,
        Err(Error::InvalidSettings(_))
    ));
    fx.set_alias("f", "canary", 2).await.unwrap();
    assert!(matches!(
        fx.set_alias("f", "7", 2).await,
        Err(Error::InvalidSettings(_))
    ));
    assert!(matches!(
        fx.set_alias("f", "x", 9).await,
        Err(Error::VersionNotFound { .. })
    ));
    fx.delete_alias("f", "canary").await.unwrap();
    fx.delete_version("f", 2).await.unwrap();
    assert!(matches!(
        fx.get_version("f", 2),
        Err(Error::VersionNotFound { .. })
    ));
    assert!(!f.dir.path().join("functions/f/2.cwasm").exists());
    // Bad settings and artifacts are refused without creating anything.
    let bad = VersionSettings {
        concurrency: 0,
        ..VersionSettings::default()
    };
    assert!(matches!(
        fx.deploy(&name("g"), sluice_guests::ok(), bad).await,
        Err(Error::InvalidSettings(_))
    ));
    assert!(matches!(
        fx.deploy(&name("g"), b"junk".to_vec(), VersionSettings::default())
            .await,
        Err(Error::Deploy(_))
    ));
    assert!(matches!(fx.get("g"), Err(Error::FunctionNotFound(_))));
    fx.delete("f").await.unwrap();
    assert!(fx.list().unwrap().is_empty());
    assert!(!f.dir.path().join("functions/f").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployed_functions_survive_a_restart_and_orphans_are_removed() {
    let f = fixture();
    f.functions
        .deploy(&name("f"), sluice_guests::ok(), VersionSettings::default())
        .await
        .unwrap();
    // A crash between writing an artifact and recording its version leaves a file.
    std::fs::write(f.dir.path().join("functions/f/9.cwasm"), b"partial").unwrap();
    std::fs::create_dir_all(f.dir.path().join("functions/ghost")).unwrap();
    let Fixture {
        dir,
        store,
        broker,
        functions,
        _cancel,
    } = f;
    drop((functions, broker, store));
    _cancel.cancel();
    let f = open_at(dir);
    assert!(!f.dir.path().join("functions/f/9.cwasm").exists());
    assert!(!f.dir.path().join("functions/ghost").exists());
    let r = f
        .functions
        .invoke("f", &Target::default(), &[event("e")], None)
        .await
        .unwrap();
    assert_eq!(r.outcome, Outcome::Success);
    assert!(r.cold);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_commit_with_the_ack_of_the_input() {
    let f = fixture();
    f.broker
        .put_topic(&name("t"), TopicConfig::default())
        .await
        .unwrap();
    f.broker
        .put_queue(&name("q"), QueueConfig::default())
        .await
        .unwrap();
    f.broker
        .put_queue(&name("in"), QueueConfig::default())
        .await
        .unwrap();
    f.functions
        .deploy(
            &name("fx"),
            sluice_guests::effects(),
            VersionSettings::default(),
        )
        .await
        .unwrap();
    let msg = NewMessage {
        body: br#"{"n":1}"#.to_vec(),
        attributes: b"{}".to_vec(),
        ..Default::default()
    };
    f.broker.send("in", vec![msg]).await.unwrap();
    let cancel = CancellationToken::new();
    let got = f
        .broker
        .receive("in", 1, HumanDuration::ZERO, None, &cancel)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let input = Input {
        queue: "in".into(),
        receipts: vec![got[0].receipt.clone()],
        trigger: None,
        attempt: 1,
        admission: None,
    };
    let r = f
        .functions
        .invoke("fx", &Target::default(), &[event("e")], Some(input))
        .await
        .unwrap();
    assert_eq!(r.outcome, Outcome::Success);
    assert_eq!(r.commit_error, None);
    // The input is acked, and every effect is there.
    let stats = f.broker.get_queue("in").unwrap().stats;
    assert_eq!((stats.visible, stats.leased), (0, 0));
    assert_eq!(f.broker.kv_get("fx", "k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(f.broker.kv_get("fx", "c").unwrap(), Some(b"1".to_vec()));
    assert_eq!(f.broker.get_queue("q").unwrap().stats.visible, 1);
    let page = f.broker.read_events("t", Start::Earliest, 10).unwrap();
    assert_eq!(page.events.len(), 1);
    let published: Value = serde_json::from_slice(&page.events[0].event).unwrap();
    assert_eq!(published["type"], "derived");
    assert_eq!(published["source"], "sluice://functions/fx");

    // Run again: the compare-and-set now finds `c` = "1" and writes nothing,
    // everything else commits again.
    let r = f
        .functions
        .invoke("fx", &Target::default(), &[event("e2")], None)
        .await
        .unwrap();
    assert_eq!(r.outcome, Outcome::Success);
    assert_eq!(r.commit_error, None);
    assert_eq!(
        f.broker
            .read_events("t", Start::Earliest, 10)
            .unwrap()
            .events
            .len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_input_or_a_missing_target_commits_nothing() {
    let f = fixture();
    f.broker
        .put_queue(&name("q"), QueueConfig::default())
        .await
        .unwrap();
    f.broker
        .put_queue(&name("in"), QueueConfig::default())
        .await
        .unwrap();
    // No topic `t`: the guest's publish is refused at the call and it returns the error.
    f.functions
        .deploy(
            &name("fx"),
            sluice_guests::effects(),
            VersionSettings::default(),
        )
        .await
        .unwrap();
    let r = f
        .functions
        .invoke("fx", &Target::default(), &[event("e")], None)
        .await
        .unwrap();
    match &r.outcome {
        Outcome::Failed(Failure::Error(m)) => {
            assert!(m.contains("topic \"t\" does not exist"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.broker.kv_get("fx", "k").unwrap(), None);
    assert_eq!(f.broker.get_queue("q").unwrap().stats.visible, 0);
    // With the topic, but a receipt that is no longer held: nothing commits.
    f.broker
        .put_topic(&name("t"), TopicConfig::default())
        .await
        .unwrap();
    let input = Input {
        queue: "in".into(),
        receipts: vec!["bogus".into()],
        trigger: None,
        attempt: 1,
        admission: None,
    };
    let r = f
        .functions
        .invoke("fx", &Target::default(), &[event("e")], Some(input))
        .await
        .unwrap();
    assert!(
        r.commit_error.as_deref().unwrap_or("").contains("receipt"),
        "{:?}",
        r.commit_error
    );
    assert!(r.failed().is_some());
    assert_eq!(f.broker.kv_get("fx", "k").unwrap(), None);
    assert_eq!(f.broker.get_queue("q").unwrap().stats.visible, 0);
    assert!(
        f.broker
            .read_events("t", Start::Earliest, 10)
            .unwrap()
            .events
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_failure_acks_the_rest_and_nacks_the_failed_event() {
    let f = fixture();
    let config = QueueConfig {
        max_attempts: Some(1),
        dead_letter_queue: Some(name("dlq")),
        ..QueueConfig::default()
    };
    f.broker
        .put_queue(&name("dlq"), QueueConfig::default())
        .await
        .unwrap();
    f.broker.put_queue(&name("in"), config).await.unwrap();
    f.functions
        .deploy(
            &name("p"),
            sluice_guests::fail_first(),
            VersionSettings::default(),
        )
        .await
        .unwrap();
    let msgs = (0..3)
        .map(|_| NewMessage {
            body: b"{}".to_vec(),
            attributes: b"{}".to_vec(),
            ..Default::default()
        })
        .collect();
    f.broker.send("in", msgs).await.unwrap();
    let cancel = CancellationToken::new();
    let got = f
        .broker
        .receive("in", 3, HumanDuration::ZERO, None, &cancel)
        .await
        .unwrap();
    let events: Vec<_> = got.iter().map(|d| event(&d.id)).collect();
    let input = Input {
        queue: "in".into(),
        receipts: got.iter().map(|d| d.receipt.clone()).collect(),
        trigger: None,
        attempt: 1,
        admission: None,
    };
    let r = f
        .functions
        .invoke("p", &Target::default(), &events, Some(input))
        .await
        .unwrap();
    assert!(matches!(r.outcome, Outcome::PartialFailure(ref v) if v.len() == 1));
    let stats = f.broker.get_queue("in").unwrap().stats;
    assert_eq!((stats.visible, stats.leased), (0, 0));
    let dlq = f
        .broker
        .receive("dlq", 10, HumanDuration::ZERO, None, &cancel)
        .await
        .unwrap();
    assert_eq!(dlq.len(), 1);
    let dl = dlq[0].dead_letter.as_ref().expect("dead-letter info");
    assert_eq!(dl.error.as_deref(), Some("poison"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_compare_and_set_key_refuses_the_whole_commit() {
    let f = fixture();
    f.broker
        .put_topic(&name("t"), TopicConfig::default())
        .await
        .unwrap();
    let event = json!({"specversion": "1.0", "source": "s", "type": "x"})
        .as_object()
        .unwrap()
        .clone();
    let commit = |expected: Option<Vec<u8>>| sluice_broker::Commit {
        kv_scope: "fx".into(),
        publish: vec![("t".into(), event.clone())],
        writes: [
            ("c".to_owned(), Some(b"2".to_vec())),
            ("other".to_owned(), Some(b"y".to_vec())),
        ]
        .into(),
        expected: [("c".to_owned(), expected)].into(),
        ..Default::default()
    };
    // The key was written after the invocation read it as absent: nothing commits.
    let first = sluice_broker::Commit {
        kv_scope: "fx".into(),
        writes: [("c".to_owned(), Some(b"1".to_vec()))].into(),
        ..Default::default()
    };
    f.broker.commit(first).await.unwrap();
    let err = f.broker.commit(commit(None)).await.unwrap_err();
    assert!(
        matches!(err, sluice_broker::Error::KvConflict(ref k) if k == "c"),
        "{err}"
    );
    assert_eq!(f.broker.kv_get("fx", "c").unwrap(), Some(b"1".to_vec()));
    assert_eq!(f.broker.kv_get("fx", "other").unwrap(), None);
    assert!(
        f.broker
            .read_events("t", Start::Earliest, 10)
            .unwrap()
            .events
            .is_empty()
    );
    // With the value it now has, the same commit goes through whole.
    f.broker.commit(commit(Some(b"1".to_vec()))).await.unwrap();
    assert_eq!(f.broker.kv_get("fx", "c").unwrap(), Some(b"2".to_vec()));
    assert_eq!(f.broker.kv_get("fx", "other").unwrap(), Some(b"y".to_vec()));
    assert_eq!(
        f.broker
            .read_events("t", Start::Earliest, 10)
            .unwrap()
            .events
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_versions_are_unloaded_and_load_again_cold() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store"), sluice_store::Options::default()).unwrap();
    let clock = Arc::new(sluice_types::ManualClock::new(1_000_000));
    let shared: SharedClock = clock.clone();
    let broker = Broker::open(store.clone(), shared.clone(), &Options::default()).unwrap();
    let functions = Functions::open(
        broker,
        store,
        &dir.path().join("functions"),
        shared,
        RuntimeConfig {
            max_instances: 4,
            ..RuntimeConfig::default()
        },
    )
    .unwrap();
    for f in ["a", "b"] {
        functions
            .deploy(&name(f), sluice_guests::ok(), VersionSettings::default())
            .await
            .unwrap();
        let r = functions
            .invoke(f, &Target::default(), &[event("e")], None)
            .await
            .unwrap();
        assert!(r.cold);
    }
    assert_eq!(functions.loaded_count(), 2);
    clock.advance(60_000);
    let r = functions
        .invoke("a", &Target::default(), &[event("e")], None)
        .await
        .unwrap();
    assert!(!r.cold, "still loaded");
    // `b` has been idle for 60 s, `a` for none: only `b` goes.
    assert_eq!(functions.unload_idle(std::time::Duration::from_secs(30)), 1);
    assert_eq!(functions.loaded_count(), 1);
    let r = functions
        .invoke("b", &Target::default(), &[event("e")], None)
        .await
        .unwrap();
    assert_eq!(r.outcome, Outcome::Success);
    assert!(r.cold, "loaded again");
}
