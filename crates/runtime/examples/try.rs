use sluice_runtime::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct H;
impl Host for H {
    fn kv_get(&self, _key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(Some(b"41".to_vec()))
    }
    fn kv_list(&self, _p: &str, _a: Option<&str>, _l: usize) -> Result<Vec<String>, String> {
        Ok(vec![])
    }
    fn check_publish(&self, _t: &str, _e: &OutgoingEvent) -> Result<(), String> {
        Ok(())
    }
    fn check_send(&self, _m: &SendEffect) -> Result<(), String> {
        Ok(())
    }
}

fn main() {
    let path = std::env::args().nth(1).unwrap();
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let wasm = std::fs::read(&path).unwrap();
    let t = Instant::now();
    let art = match rt.compile(&wasm) {
        Ok(a) => a,
        Err(e) => {
            println!("deploy error: {e}");
            return;
        }
    };
    println!("compile {:?}, artifact {} bytes", t.elapsed(), art.len());
    std::fs::write("/tmp/art.bin", &art).unwrap();
    let loaded = rt
        .load(std::path::Path::new("/tmp/art.bin"), vec![])
        .unwrap();
    println!("load {:?}", loaded.load_time);
    let ev = Event {
        id: "1".into(),
        source: "s".into(),
        event_type: "t".into(),
        subject: None,
        time: None,
        datacontenttype: Some("application/json".into()),
        dataschema: None,
        data: Some(b"{}".to_vec()),
        extensions: vec![],
    };
    let limits = Limits {
        memory: 128 << 20,
        timeout: Duration::from_secs(5),
    };
    for i in 0..5 {
        let inv = rt.invoke(&loaded, std::slice::from_ref(&ev), Arc::new(H), &limits);
        println!(
            "{i}: {:?} cold={} inst={:?} dur={:?} effects={:?} logs={:?}",
            inv.outcome, inv.cold, inv.instantiate, inv.duration, inv.effects.writes, inv.logs
        );
    }
}
