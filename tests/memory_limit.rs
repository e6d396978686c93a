//! The heap limit holds in real memory, not only in the VM's own accounting: allocation
//! bombs of every shape end in an uncatchable `MemoryLimit`, and the process's peak resident
//! memory (`VmHWM`, reset through `/proc/self/clear_refs` before each bomb) grows by no more
//! than a small multiple of the granted heap. Should the accounting miss a kind of object,
//! the bomb runs on to the fuel limit and the peak RSS check fails.
//!
//! Linux only (it reads `/proc/self/status`); the bombs run one at a time in one test so the
//! measure sees nothing else.

use skiff::{Engine, Error, Limits};

/// The heap each bomb is granted.
const HEAP: usize = 16 << 20;
/// How far the peak RSS may grow past what it was before the bomb.
const RSS_GROWTH_BOUND: u64 = 8 * HEAP as u64;

const BOMBS: &[(&str, &str)] = &[
    (
        "nested lists",
        "fn bomb() { let x = nil; while true { x = [x, x, x, x] } }",
    ),
    (
        "string doubling",
        "fn bomb() { let s = \"ab\"; while true { s = s + s } }",
    ),
    (
        "one huge repeat",
        "fn bomb() { repeat(\"x\", 1099511627776) }",
    ),
    (
        "list growth",
        "fn bomb() { let l = []; while true { push(l, [len(l)]) } }",
    ),
    (
        "map growth",
        "fn bomb() { let m = {}; let i = 0; while true { m[i] = str(i); i += 1 } }",
    ),
    (
        "bytes doubling",
        "fn bomb() { let b = b\"\\x00\"; while true { b = b + b } }",
    ),
    (
        "kept closures",
        "fn bomb() { let fs = []; while true { let v = [1, 2, 3]; push(fs, fn() { v }) } }",
    ),
];

/// A `/proc/self/status` field (`VmRSS`, `VmHWM`) in bytes.
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: u64 = line[field.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("a number of kB");
    kib << 10
}

#[test]
fn allocation_bombs_stop_at_the_heap_limit_in_real_memory() {
    for (what, source) in BOMBS {
        let engine = Engine::new(Limits {
            max_heap: Some(HEAP),
            fuel: Some(2_000_000_000),
            ..Limits::default()
        });
        let module = engine.compile(source, "bomb.skiff").expect("compiles");
        std::fs::write("/proc/self/clear_refs", "5").expect("peak RSS reset (Linux >= 4.0)");
        let before = proc_status_bytes("VmRSS");
        let outcome = engine.call::<skiff::Portable>(&module, "bomb", ());
        let growth = proc_status_bytes("VmHWM").saturating_sub(before);
        match outcome {
            Err(Error::Runtime(e)) => assert_eq!(e.kind, "MemoryLimit", "{what}: {e:?}"),
            other => panic!("{what}: expected MemoryLimit, got {other:?}"),
        }
        assert!(
            growth <= RSS_GROWTH_BOUND,
            "{what}: peak RSS grew by {} MiB for a {} MiB heap",
            growth >> 20,
            HEAP >> 20
        );
        eprintln!("{what}: peak RSS growth {} KiB", growth >> 10);
    }
}
