//! The heap limit holds in real memory, not only in the VM's own accounting: allocation
//! bombs of every shape end in an uncatchable `MemoryLimit`, and the process's peak resident
//! memory (`VmHWM`, reset through `/proc/self/clear_refs` before each bomb) grows by no more
//! than a small multiple of the granted heap. Should the accounting miss a kind of object,
//! the bomb runs on to the fuel limit and the peak RSS check fails.
//!
//! Long-running executions that hop or spawn in a loop stay near what runs at once: the
//! in-process cluster reuses the slots of ended hops, the VM those of finished tasks nobody
//! can await.
//!
//! Linux only (it reads `/proc/self/status`); everything runs one at a time in one test so
//! the measure sees nothing else, the loops first (memory a bomb freed may stay with the
//! allocator and would hide their growth).

use skiff::{Engine, Error, Limits, Portable};

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

/// Resets the peak RSS; returns the RSS now.
fn reset_peak() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("peak RSS reset (Linux >= 4.0)");
    proc_status_bytes("VmRSS")
}

#[test]
fn memory_stays_bounded_in_real_memory() {
    loops_of_hops_and_tasks_run_in_bounded_memory();
    allocation_bombs_stop_at_the_heap_limit();
}

fn allocation_bombs_stop_at_the_heap_limit() {
    for (what, source) in BOMBS {
        let engine = Engine::new(Limits {
            max_heap: Some(HEAP),
            fuel: Some(2_000_000_000),
            ..Limits::default()
        });
        let module = engine.compile(source, "bomb.skiff").expect("compiles");
        let before = reset_peak();
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

/// Peak RSS growth allowed for a loop whose live state is a few values.
const LOOP_GROWTH_BOUND: u64 = 8 << 20;

fn loops_of_hops_and_tasks_run_in_bounded_memory() {
    let loops = [
        (
            "40,000 hops",
            "let t = 0\nfor i in 0..40000 { t += remote(\"w1\") [i] { i % 3 } }\nt\n",
            39999,
        ),
        (
            "160,000 tasks",
            "let t = 0\nfor r in 0..20000 {\n  let ts = []\n  for i in 0..8 { push(ts, spawn { i % 3 }) }\n  for x in ts { t += await x }\n}\nt\n",
            160000 / 8 * 7,
        ),
    ];
    for (what, source, expected) in loops {
        let engine = Engine::new(Limits::default());
        let module = engine.compile(source, "loop.skiff").expect("compiles");
        let before = reset_peak();
        let value = engine.run(&module, &["w1".to_owned()]);
        let growth = proc_status_bytes("VmHWM").saturating_sub(before);
        assert_eq!(value.ok(), Some(Portable::Int(expected)), "{what}");
        assert!(
            growth <= LOOP_GROWTH_BOUND,
            "{what}: peak RSS grew by {} MiB",
            growth >> 20
        );
        eprintln!("{what}: peak RSS growth {} KiB", growth >> 10);
    }
}
