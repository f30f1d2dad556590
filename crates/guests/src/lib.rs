//! Tiny Sluice functions written as core WAT by hand and wrapped into
//! components of the `sluice:function` world, so that tests of the runtime and
//! the server have guests that build in milliseconds and do exactly one thing
//! (succeed, fail, trap, spin, grow memory, call every import).
//!
//! The core modules follow the canonical ABI by hand: `handle` takes the
//! event list as (pointer, length) and returns a pointer to the outcome,
//! whose discriminant is at offset 0 and payload at 4.

use std::path::PathBuf;

/// Wrap a core module (WAT text) into a component of the `function` world.
pub fn component(core_wat: &str) -> Vec<u8> {
    let mut module = wat::parse_str(core_wat).expect("guest WAT parses");
    let mut resolve = wit_parser::Resolve::default();
    let wit = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../wit");
    let (package, _) = resolve.push_dir(&wit).expect("the WIT package parses");
    let world = resolve
        .select_world(&[package], Some("function"))
        .expect("world `function`");
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
        false,
    )
    .expect("metadata embeds");
    wit_component::ComponentEncoder::default()
        .module(&module)
        .expect("module accepted")
        .validate(true)
        .encode()
        .expect("component encodes")
}

/// A core module with memory, a bump `cabi_realloc`, static data from
/// `data` at offset 1024, imports `imports` and a `handle` body that leaves
/// the outcome's address on the stack. The outcome area is at 16.
fn module(imports: &str, data: &str, body: &str) -> String {
    format!(
        r#"(module
  {imports}
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 65536))
  (data (i32.const 1024) "{data}")
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $p i32)
    ;; align the heap, then take new_size bytes, growing memory as needed
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get 2))))
    (global.set $heap (i32.add (local.get $p) (local.get 3)))
    (block $ok
      (loop $grow
        (br_if $ok (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
        (br $grow)))
    (local.get $p))
  (func (export "sluice:function/handler@0.1.0#handle") (param $events i32) (param $count i32) (result i32)
    {body})
)"#
    )
}

/// Succeeds without doing anything.
pub fn ok() -> Vec<u8> {
    component(&module(
        "",
        "",
        "(i32.store8 (i32.const 16) (i32.const 0)) (i32.const 16)",
    ))
}

/// Returns `error("boom")`.
pub fn error() -> Vec<u8> {
    component(&module(
        "",
        "boom",
        "(i32.store8 (i32.const 16) (i32.const 2))
         (i32.store (i32.const 20) (i32.const 1024))
         (i32.store (i32.const 24) (i32.const 4))
         (i32.const 16)",
    ))
}

/// Reports the first event of the batch as failed with reason "poison".
pub fn fail_first() -> Vec<u8> {
    // failed-event list of one at 32: id (ptr, len) copied from event 0, reason.
    component(&module(
        "",
        "poison",
        "(i32.store (i32.const 32) (i32.load (local.get $events)))
         (i32.store (i32.const 36) (i32.load offset=4 (local.get $events)))
         (i32.store (i32.const 40) (i32.const 1024))
         (i32.store (i32.const 44) (i32.const 6))
         (i32.store8 (i32.const 16) (i32.const 1))
         (i32.store (i32.const 20) (i32.const 32))
         (i32.store (i32.const 24) (i32.const 1))
         (i32.const 16)",
    ))
}

/// Executes `unreachable`.
pub fn trap() -> Vec<u8> {
    component(&module("", "", "unreachable"))
}

/// Loops forever.
pub fn spin() -> Vec<u8> {
    component(&module("", "", "(loop $l (br $l)) (i32.const 16)"))
}

/// Grows its memory by `bytes` (rounded up to 64 KiB pages) and traps if
/// the growth is refused; succeeds otherwise.
pub fn grow(bytes: u64) -> Vec<u8> {
    let pages = bytes.div_ceil(65_536);
    component(&module(
        "",
        "",
        &format!(
            "(if (i32.eq (memory.grow (i32.const {pages})) (i32.const -1)) (then unreachable))
             (i32.store8 (i32.const 16) (i32.const 0)) (i32.const 16)"
        ),
    ))
}

/// Calls every import once: logs `hello`, sets `k` to `v`, compare-and-sets
/// `c` from absent to `1`, sends `{}` to queue `q` in group `g`, publishes an
/// event of type `derived` to topic `t`, then succeeds (or returns the first
/// refused call's error).
pub fn effects() -> Vec<u8> {
    // Static data at 1024: "ctx"(1024) "hello"(1027) "k"(1032) "v"(1033)
    // "q"(1034) "{}"(1035) "g"(1037) "t"(1038) "derived"(1039) "c"(1046) "1"(1047)
    let imports = r#"
  (import "sluice:function/logging@0.1.0" "log" (func $log (param i32 i32 i32 i32 i32)))
  (import "sluice:function/keyvalue@0.1.0" "set" (func $set (param i32 i32 i32 i32 i32)))
  (import "sluice:function/keyvalue@0.1.0" "compare-and-set" (func $cas (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "sluice:function/messaging@0.1.0" "send" (func $send (param i32 i32 i32 i32 i32 i64 i32 i32 i32 i32 i32 i32 i32)))
  (import "sluice:function/messaging@0.1.0" "publish" (func $publish (param i32 i32)))"#;
    let body = r#"
    ;; log(info, "ctx", "hello")
    (call $log (i32.const 2) (i32.const 1024) (i32.const 3) (i32.const 1027) (i32.const 5))
    ;; set("k", "v") -> result<_, error> at 200
    (call $set (i32.const 1032) (i32.const 1) (i32.const 1033) (i32.const 1) (i32.const 200))
    (if (i32.load8_u (i32.const 200)) (then unreachable))
    ;; compare-and-set("c", none, "1") -> result<bool, error> at 200
    (call $cas (i32.const 1046) (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0)
               (i32.const 1047) (i32.const 1) (i32.const 200))
    (if (i32.load8_u (i32.const 200)) (then unreachable))
    ;; send("q", "{}", {delay-ms: none, group: some("g"), dedup-id: none}) -> result<_, string> at 200
    (call $send (i32.const 1034) (i32.const 1) (i32.const 1035) (i32.const 2)
                (i32.const 0) (i64.const 0)
                (i32.const 1) (i32.const 1037) (i32.const 1)
                (i32.const 0) (i32.const 0) (i32.const 0)
                (i32.const 200))
    (if (i32.load8_u (i32.const 200))
      (then
        (i32.store8 (i32.const 16) (i32.const 2))
        (i32.store (i32.const 20) (i32.load (i32.const 204)))
        (i32.store (i32.const 24) (i32.load (i32.const 208)))
        (return (i32.const 16))))
    ;; publish("t", {event-type: "derived", everything else none/empty}): args at 300
    (i32.store (i32.const 300) (i32.const 1038))
    (i32.store (i32.const 304) (i32.const 1))
    (i32.store (i32.const 308) (i32.const 1039))
    (i32.store (i32.const 312) (i32.const 7))
    (call $publish (i32.const 300) (i32.const 200))
    (if (i32.load8_u (i32.const 200))
      (then
        (i32.store8 (i32.const 16) (i32.const 2))
        (i32.store (i32.const 20) (i32.load (i32.const 204)))
        (i32.store (i32.const 24) (i32.load (i32.const 208)))
        (return (i32.const 16))))
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.const 16)"#;
    component(&module(imports, "ctxhellokvq{}gtderivedc1", body))
}
