//! Guest functions built for tests with `scripts/build-guest` (componentize-py,
//! componentize-js, or clang with the C helper), cached under `target/guests` by a hash of everything
//! that goes into the build, so each is built once per change.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Serializes builds within a test binary (the tools use all cores); a file lock does
/// the same across test processes.
static BUILDING: Mutex<()> = Mutex::new(());

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// Builds `source` (relative to the workspace root) as a `python`, `js` or `c`
/// guest and returns the component's path.
pub fn build_guest(lang: &str, source: &str) -> PathBuf {
    let root = workspace();
    let src = root.join(source);
    let helpers: &[&str] = match lang {
        "python" => &["guests/python/sluice.py"],
        "js" => &["guests/js/sluice.js"],
        "c" => &["guests/c/sluice.h", "guests/c/sluice.c"],
        other => panic!("unknown guest language {other}"),
    };
    let mut h = DefaultHasher::new();
    let inputs = [
        "wit/function.wit",
        "scripts/build-guest",
        "tools/python-requirements.txt",
        "tools/js/package-lock.json",
        "tools/c-packages.txt",
    ];
    for input in
        std::iter::once(src.clone()).chain(helpers.iter().chain(&inputs).map(|p| root.join(p)))
    {
        std::fs::read(&input)
            .unwrap_or_else(|e| panic!("{}: {e}", input.display()))
            .hash(&mut h);
    }
    let stem = src.file_stem().expect("a file name").to_string_lossy();
    let out = root
        .join("target/guests")
        .join(format!("{stem}-{lang}-{:016x}.wasm", h.finish()));
    let _building = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    if out.exists() {
        return out;
    }
    std::fs::create_dir_all(out.parent().expect("a folder")).expect("target/guests");
    // Test binaries run in parallel processes: one builds, the others wait and reuse it.
    let lock = std::fs::File::create(out.with_extension("lock")).expect("a lock file");
    lock.lock().expect("locking the guest build");
    if out.exists() {
        return out;
    }
    let tmp = out.with_extension(format!("{}.tmp", std::process::id()));
    let status = Command::new(root.join("scripts/build-guest"))
        .args([
            lang,
            src.to_str().expect("UTF-8 path"),
            tmp.to_str().expect("UTF-8 path"),
        ])
        .status()
        .expect("running scripts/build-guest");
    assert!(status.success(), "building {source} as {lang} failed");
    std::fs::rename(&tmp, &out).expect("moving the built guest into place");
    out
}
