//! Writes one of the WAT test guests as a component to stdout, for benchmarks
//! and manual tries: `cargo run -p sluice-guests --bin guest -- ok > ok.wasm`.

use std::io::Write;

fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "ok".into());
    let wasm = match name.as_str() {
        "ok" => sluice_guests::ok(),
        "error" => sluice_guests::error(),
        "trap" => sluice_guests::trap(),
        "spin" => sluice_guests::spin(),
        "effects" => sluice_guests::effects(),
        "fail-first" => sluice_guests::fail_first(),
        other => {
            eprintln!("unknown guest {other}: ok, error, trap, spin, effects, fail-first");
            std::process::exit(2);
        }
    };
    std::io::stdout()
        .write_all(&wasm)
        .expect("writing to stdout");
}
