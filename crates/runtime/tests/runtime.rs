//! The runtime against real wasmtime with WAT guests: deploy checks, outcomes,
//! limits (timeout, memory), and the effect buffer seen through real imports.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_runtime::{
    DeployError, Event, Failure, Host, Limits, Loaded, Outcome, OutgoingEvent, Runtime,
    RuntimeConfig, SendEffect,
};

#[derive(Default)]
struct TestHost {
    kv: Mutex<BTreeMap<String, Vec<u8>>>,
    refuse_send: bool,
}

impl Host for TestHost {
    fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.kv.lock().unwrap().get(key).cloned())
    }
    fn kv_list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, String> {
        let kv = self.kv.lock().unwrap();
        Ok(kv
            .keys()
            .filter(|k| k.starts_with(prefix) && after.is_none_or(|a| k.as_str() > a))
            .take(limit)
            .cloned()
            .collect())
    }
    fn check_publish(&self, topic: &str, _event: &OutgoingEvent) -> Result<(), String> {
        if topic == "t" {
            Ok(())
        } else {
            Err(format!("topic `{topic}` not found"))
        }
    }
    fn check_send(&self, message: &SendEffect) -> Result<(), String> {
        if self.refuse_send {
            return Err(format!("queue `{}` not found", message.queue));
        }
        Ok(())
    }
}

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        max_instances: 8,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

fn load(rt: &Runtime, wasm: &[u8]) -> (Loaded, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("artifact");
    std::fs::write(&path, rt.compile(wasm).expect("deploys")).unwrap();
    (rt.load(&path, vec![("K".into(), "V".into())]).unwrap(), dir)
}

fn event(id: &str) -> Event {
    Event {
        id: id.into(),
        source: "test".into(),
        event_type: "t".into(),
        subject: None,
        time: None,
        datacontenttype: Some("application/json".into()),
        dataschema: None,
        data: Some(b"{}".to_vec()),
        extensions: vec![],
    }
}

fn limits() -> Limits {
    Limits {
        memory: 128 << 20,
        timeout: Duration::from_secs(5),
    }
}

#[test]
fn bad_artifacts_are_refused_with_what_is_wrong() {
    let rt = runtime();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("random bytes", b"this is not wasm at all".to_vec(), "not WebAssembly"),
        ("empty", vec![], "not WebAssembly"),
        ("core module", wat::parse_str("(module)").unwrap(), "core WebAssembly module"),
        (
            "truncated component",
            sluice_guests::ok()[..100].to_vec(),
            "not a valid component",
        ),
        (
            "component of another world",
            wat::parse_str("(component (import \"acme:other/api@1.0.0\" (instance)))").unwrap(),
            "does not export `sluice:function/handler@0.1.0`",
        ),
        (
            "handler without handle",
            wat::parse_str(
                "(component (instance $i) (export \"sluice:function/handler@0.1.0\" (instance $i)))",
            )
            .unwrap(),
            "no function `handle`",
        ),
        (
            "handle of the wrong type",
            wat::parse_str(
                r#"(component
                  (core module $m (func (export "f")))
                  (core instance $m (instantiate $m))
                  (func $f (canon lift (core func $m "f")))
                  (instance $i (export "handle" (func $f)))
                  (export "sluice:function/handler@0.1.0" (instance $i)))"#,
            )
            .unwrap(),
            "does not match",
        ),
        (
            "import Sluice does not provide",
            wat::parse_str(
                r#"(component
                  (import "acme:net/raw@1.0.0" (instance $net (export "open" (func))))
                  (core module $m (func (export "f")))
                  (core instance $m (instantiate $m))
                  (func $f (canon lift (core func $m "f")))
                  (instance $i (export "handle" (func $f)))
                  (export "sluice:function/handler@0.1.0" (instance $i)))"#,
            )
            .unwrap(),
            "acme:net/raw@1.0.0",
        ),
    ];
    for (name, wasm, want) in cases {
        let Err(err) = rt.compile(&wasm) else {
            panic!("{name}: deployed")
        };
        let text = err.to_string();
        assert!(
            text.contains(want),
            "{name}: {text:?} should mention {want:?}"
        );
        if name == "core module" {
            assert!(matches!(err, DeployError::CoreModule));
        }
    }
}

#[test]
fn outcomes_of_guests() {
    let rt = runtime();
    let host: Arc<dyn Host> = Arc::new(TestHost::default());
    let batch = [event("e1"), event("e2")];

    let (ok, _d1) = load(&rt, &sluice_guests::ok());
    let first = rt.invoke(&ok, &batch, host.clone(), &limits());
    assert_eq!(first.outcome, Outcome::Success);
    assert!(first.cold, "the first instance of a loaded version is cold");
    assert!(first.instantiate <= first.duration);
    let second = rt.invoke(&ok, &batch, host.clone(), &limits());
    assert!(!second.cold);

    let (error, _d2) = load(&rt, &sluice_guests::error());
    let got = rt.invoke(&error, &batch, host.clone(), &limits());
    assert_eq!(got.outcome, Outcome::Failed(Failure::Error("boom".into())));

    let (trap, _d3) = load(&rt, &sluice_guests::trap());
    let got = rt.invoke(&trap, &batch, host.clone(), &limits());
    match got.outcome {
        Outcome::Failed(Failure::Trap(m)) => assert!(m.contains("unreachable"), "{m}"),
        other => panic!("expected a trap, got {other:?}"),
    }

    let (partial, _d4) = load(&rt, &sluice_guests::fail_first());
    let got = rt.invoke(&partial, &batch, host.clone(), &limits());
    match got.outcome {
        Outcome::PartialFailure(failed) => {
            assert_eq!(failed.len(), 1);
            assert_eq!(failed[0].id, "e1");
            assert_eq!(failed[0].reason, "poison");
        }
        other => panic!("expected a partial failure, got {other:?}"),
    }
}

#[test]
fn an_infinite_loop_times_out_and_the_runtime_keeps_working() {
    let rt = runtime();
    let host: Arc<dyn Host> = Arc::new(TestHost::default());
    let (spin, _d) = load(&rt, &sluice_guests::spin());
    let limits = Limits {
        memory: 16 << 20,
        timeout: Duration::from_millis(100),
    };
    let got = rt.invoke(&spin, &[event("e")], host.clone(), &limits);
    assert_eq!(
        got.outcome,
        Outcome::Failed(Failure::Timeout(Duration::from_millis(100)))
    );
    assert!(
        got.duration >= Duration::from_millis(100),
        "{:?}",
        got.duration
    );
    assert!(
        got.duration < Duration::from_secs(5),
        "the timeout stops it: {:?}",
        got.duration
    );
    let (ok, _d2) = load(&rt, &sluice_guests::ok());
    assert_eq!(
        rt.invoke(&ok, &[event("e")], host, &limits).outcome,
        Outcome::Success
    );
}

#[test]
fn memory_is_limited_over_the_whole_instance() {
    let rt = runtime();
    let host: Arc<dyn Host> = Arc::new(TestHost::default());
    let (big, _d) = load(&rt, &sluice_guests::grow(1 << 30));
    let got = rt.invoke(&big, &[event("e")], host.clone(), &limits());
    assert_eq!(
        got.outcome,
        Outcome::Failed(Failure::MemoryLimit(128 << 20))
    );
    let (small, _d2) = load(&rt, &sluice_guests::grow(8 << 20));
    assert_eq!(
        rt.invoke(&small, &[event("e")], host.clone(), &limits())
            .outcome,
        Outcome::Success
    );
    // The initial 64 KiB page counts too: a limit below it refuses instantiation.
    let tiny = Limits {
        memory: 1024,
        timeout: Duration::from_secs(5),
    };
    let got = rt.invoke(&small, &[event("e")], host, &tiny);
    assert!(
        matches!(got.outcome, Outcome::Failed(_)),
        "{:?}",
        got.outcome
    );
}

#[test]
fn imports_are_buffered_as_effects() {
    let rt = runtime();
    let host = Arc::new(TestHost::default());
    host.kv.lock().unwrap().insert("k".into(), b"old".to_vec());
    let (guest, _d) = load(&rt, &sluice_guests::effects());
    let got = rt.invoke(&guest, &[event("e")], host.clone(), &limits());
    assert_eq!(got.outcome, Outcome::Success);
    let fx = &got.effects;
    assert_eq!(fx.writes.get("k"), Some(&Some(b"v".to_vec())));
    assert_eq!(fx.writes.get("c"), Some(&Some(b"1".to_vec())));
    assert_eq!(
        fx.expected.get("c"),
        Some(&None),
        "CAS from absent is checked at commit"
    );
    assert!(
        !fx.expected.contains_key("k"),
        "a plain set has no expectation"
    );
    assert_eq!(fx.sent.len(), 1);
    assert_eq!(fx.sent[0].queue, "q");
    assert_eq!(fx.sent[0].body, "{}");
    assert_eq!(fx.sent[0].group.as_deref(), Some("g"));
    assert_eq!(fx.published.len(), 1);
    assert_eq!(fx.published[0].topic, "t");
    assert_eq!(fx.published[0].event.event_type, "derived");
    assert_eq!(got.logs.len(), 1);
    assert_eq!(got.logs[0].message, "hello");
    assert_eq!(got.logs[0].context, "ctx");
    // Nothing reached the host's state: writes are the caller's to commit.
    assert_eq!(host.kv.lock().unwrap().get("k"), Some(&b"old".to_vec()));

    // A refused send is an error the guest sees; a failed invocation has no effects.
    let refusing = Arc::new(TestHost {
        refuse_send: true,
        ..TestHost::default()
    });
    let got = rt.invoke(&guest, &[event("e")], refusing, &limits());
    assert_eq!(
        got.outcome,
        Outcome::Failed(Failure::Error("queue `q` not found".into()))
    );
    assert!(got.effects.is_empty());
}

#[test]
fn a_compare_and_set_on_a_changed_key_writes_nothing() {
    let rt = runtime();
    let host = Arc::new(TestHost::default());
    host.kv
        .lock()
        .unwrap()
        .insert("c".into(), b"taken".to_vec());
    let (guest, _d) = load(&rt, &sluice_guests::effects());
    // The guest traps when its CAS returns an error, but a CAS that finds a
    // different value returns false: the guest goes on and `c` is not written.
    let got = rt.invoke(&guest, &[event("e")], host, &limits());
    assert_eq!(got.outcome, Outcome::Success);
    assert!(!got.effects.writes.contains_key("c"));
}

#[test]
fn many_invocations_reuse_pooled_slots() {
    let rt = runtime();
    let host: Arc<dyn Host> = Arc::new(TestHost::default());
    let (ok, _d) = load(&rt, &sluice_guests::ok());
    // More invocations than pool slots: each instance is freed when its store drops.
    for _ in 0..100 {
        assert_eq!(
            rt.invoke(&ok, &[event("e")], host.clone(), &limits())
                .outcome,
            Outcome::Success
        );
    }
}
