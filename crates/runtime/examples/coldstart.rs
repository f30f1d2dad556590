//! Measures invocation latency of components in-process: for each component
//! given, the time to load its artifact, to instantiate a fresh instance
//! (every invocation gets one: this is the cold start), to run the call
//! alone, and both together. Prints one JSON object per component.
//!
//! `cargo run --release -p sluice-runtime --example coldstart -- a.wasm b.wasm`

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_runtime::{
    Event, Host, Limits, Outcome, OutgoingEvent, Runtime, RuntimeConfig, SendEffect,
};

struct NoState;

impl Host for NoState {
    fn kv_get(&self, _key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }
    fn kv_list(&self, _p: &str, _a: Option<&str>, _l: usize) -> Result<Vec<String>, String> {
        Ok(Vec::new())
    }
    fn check_publish(&self, _t: &str, _e: &OutgoingEvent) -> Result<(), String> {
        Ok(())
    }
    fn check_send(&self, _m: &SendEffect) -> Result<(), String> {
        Ok(())
    }
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e6
}

fn main() {
    let rt = Runtime::new(RuntimeConfig::default()).expect("runtime");
    let dir = std::env::temp_dir().join(format!("sluice-coldstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let event = Event {
        id: "1".into(),
        source: "bench".into(),
        event_type: "bench".into(),
        subject: None,
        time: None,
        datacontenttype: Some("application/json".into()),
        dataschema: None,
        data: Some(br#"{"n":1}"#.to_vec()),
        extensions: vec![],
    };
    let limits = Limits {
        memory: 128 << 20,
        timeout: Duration::from_secs(10),
    };
    let host: Arc<dyn Host> = Arc::new(NoState);
    for path in std::env::args().skip(1) {
        let wasm = std::fs::read(&path).expect("component");
        let t = Instant::now();
        let artifact = rt.compile(&wasm).expect("compiles");
        let compile = t.elapsed();
        let file = dir.join("artifact");
        std::fs::write(&file, &artifact).unwrap();
        // Loading the artifact from disk: once per version after a deploy or restart.
        let mut load = Vec::new();
        for _ in 0..20 {
            load.push(rt.load(&file, vec![]).expect("loads").load_time);
        }
        let loaded = rt.load(&file, vec![]).unwrap();
        let (mut start, mut call, mut total) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..2_000 {
            let inv = rt.invoke(&loaded, std::slice::from_ref(&event), host.clone(), &limits);
            assert_eq!(inv.outcome, Outcome::Success, "{path}");
            if i >= 100 {
                start.push(inv.instantiate);
                call.push(inv.duration - inv.instantiate);
                total.push(inv.duration);
            }
        }
        println!(
            "{}",
            serde_json::json!({
                "component": path,
                "size_bytes": wasm.len(),
                "artifact_bytes": artifact.len(),
                "compile_ms": compile.as_secs_f64() * 1e3,
                "load_us": {"p50": pct(&mut load, 0.5), "p99": pct(&mut load, 0.99)},
                "instantiate_us": {"p50": pct(&mut start, 0.5), "p99": pct(&mut start, 0.99)},
                "call_us": {"p50": pct(&mut call, 0.5), "p99": pct(&mut call, 0.99)},
                "instantiate_and_call_us": {"p50": pct(&mut total, 0.5), "p99": pct(&mut total, 0.99)},
            })
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
