//! Fuzzing without nightly: the plain `skiff_wire::fuzz::fuzz_*` targets driven over the
//! saved corpus (`wire/fuzz-corpus/`) and a bounded seeded loop of mutated and random
//! inputs, with a counting allocator asserting that no single allocation exceeds the frame
//! limit. Also: length bombs, nesting bombs on a 256 KiB stack, mutated blobs.
//!
//! Iterations: `SKIFF_FUZZ_ITERS` (default 100 000; the documented long run is
//! `SKIFF_FUZZ_ITERS=1000000 cargo test -p skiff-wire --release --test fuzz`).
#![allow(unsafe_code)] // the counting allocator

mod common;

use bytes::Bytes;
use skiff_vm::fuzz::Rng;
use skiff_wire::fuzz::{fuzz_connection, fuzz_frames, fuzz_limits, fuzz_value};
use skiff_wire::value::{decode_value, object_len};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;
use std::time::Instant;

struct Counting;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static MAX: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = TRACK.try_with(|t| {
        if t.get() {
            let _ = MAX.try_with(|m| m.set(m.get().max(size)));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns the largest single allocation it made on this thread.
fn max_alloc(f: impl FnOnce()) -> usize {
    MAX.with(|m| m.set(0));
    TRACK.with(|t| t.set(true));
    f();
    TRACK.with(|t| t.set(false));
    MAX.with(|m| m.get())
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus")
}

fn corpus() -> Vec<Vec<u8>> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir())
        .expect("wire/fuzz-corpus exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let out: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(out.len() >= 10, "corpus has {} files", out.len());
    out
}

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(8) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [
                    0x00, 0xff, 0x7f, 0x80, 0xc1, 0xdc, 0xdd, 0xde, 0xdf, 0xc6, 0xdb, 0xc9,
                ][rng.below(12)];
            }
            2 if !v.is_empty() => {
                let cut = rng.below(v.len());
                v.truncate(cut);
            }
            3 => {
                let i = rng.below(v.len() + 1);
                let b = rng.next_u64() as u8;
                v.insert(i, b);
            }
            4 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            5 if !other.is_empty() => {
                let i = rng.below(v.len() + 1);
                let j = rng.below(other.len());
                let k = j + rng.below(other.len() - j);
                v.splice(i..i, other[j..k].iter().copied());
            }
            6 if v.len() >= 5 => {
                // Rewrite the frame length.
                let n = [0u32, 1, 2, 0xffff, 0xffff_ffff, v.len() as u32 - 5][rng.below(6)];
                v[1..5].copy_from_slice(&n.to_be_bytes());
            }
            _ => {
                let n = rng.below(64);
                v = (0..n).map(|_| rng.next_u64() as u8).collect();
            }
        }
    }
    v
}

fn run_all(input: &[u8]) -> usize {
    max_alloc(|| {
        fuzz_frames(input);
        fuzz_value(input);
        // A frame's payload as a value too.
        if input.len() > 5 {
            fuzz_value(&input[5..]);
        }
    })
}

#[test]
fn corpus_replays_cleanly() {
    let limit = fuzz_limits().max_frame as usize;
    for input in corpus() {
        let m = run_all(&input);
        assert!(m <= limit, "allocation of {m} bytes");
        let m = max_alloc(|| fuzz_connection(&input));
        assert!(m <= limit + (1 << 20), "connection allocation of {m} bytes");
    }
}

#[test]
fn seeded_mutation_loop() {
    let iters: usize = std::env::var("SKIFF_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let seeds = corpus();
    let limit = fuzz_limits().max_frame as usize;
    let mut rng = Rng::for_loop(0x5eed_5eed_1234_5678);
    let t0 = Instant::now();
    let mut worst = 0;
    for i in 0..iters {
        let seed = &seeds[rng.below(seeds.len())];
        let other = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, seed, other);
        worst = worst.max(run_all(&input));
        if i % 64 == 0 {
            worst = worst.max(max_alloc(|| fuzz_connection(&input)));
        }
    }
    assert!(
        worst <= limit,
        "largest allocation {worst} > frame limit {limit}"
    );
    println!(
        "{iters} fuzz inputs in {:?}, largest allocation {worst} bytes",
        t0.elapsed()
    );
}

#[test]
fn length_bombs_are_rejected_quickly() {
    let bombs: [&[u8]; 8] = [
        &[0xdd, 0xff, 0xff, 0xff, 0xff],       // array32 of 4G items
        &[0xdf, 0xff, 0xff, 0xff, 0xff],       // map32 of 4G entries
        &[0xc6, 0xff, 0xff, 0xff, 0xff],       // bin32 of 4 GiB
        &[0xdb, 0xff, 0xff, 0xff, 0xff],       // str32 of 4 GiB
        &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x01], // ext32 of 4 GiB
        &[0xdc, 0xff, 0xff],                   // array16
        &[0xde, 0xff, 0xff],                   // map16
        &[0x01, 0xff, 0xff, 0xff, 0xff],       // a frame announcing 4 GiB
    ];
    std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || run_bombs(&bombs))
        .unwrap()
        .join()
        .expect("no stack overflow");
}

fn run_bombs(bombs: &[&[u8]]) {
    let t0 = Instant::now();
    for (i, b) in bombs.iter().enumerate() {
        let m = max_alloc(|| {
            assert!(decode_value(&Bytes::copy_from_slice(b), 64).is_err());
            if i < 7 {
                assert!(object_len(b, 64).is_err());
            }
            fuzz_frames(b);
            // As the value section of a Call frame.
            let mut frame = vec![0x02, 0, 0, 0, 0];
            frame.extend_from_slice(&[0x95, 0x01, 0xa1, b'f', 0xc0, 0xa1, b'c', 0x90, 0xc0]);
            frame.extend_from_slice(b);
            let len = (frame.len() - 5) as u32;
            frame[1..5].copy_from_slice(&len.to_be_bytes());
            fuzz_frames(&frame);
            fuzz_connection(&frame);
        });
        assert!(m < 2 << 20, "bomb {b:02x?} allocated {m} bytes");
    }
    assert!(t0.elapsed().as_secs() < 2);
}

#[test]
fn nesting_bombs_fit_a_small_stack() {
    let t = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(|| {
            let t0 = Instant::now();
            for opener in [0x91u8, 0x81] {
                let mut bomb = vec![opener; 100_000];
                bomb.push(0xc0);
                if opener == 0x81 {
                    // map key nil, value nested
                    bomb = std::iter::repeat_n([0x81, 0xc0], 100_000)
                        .flatten()
                        .chain([0xc0])
                        .collect();
                }
                let err = decode_value(&Bytes::from(bomb.clone()), 64).unwrap_err();
                assert!(err.to_string().contains("max_depth"), "{err}");
                assert!(object_len(&bomb, 64).is_err());
                fuzz_value(&bomb);
                // Inside a Call frame's args and inside a message header.
                for prefix in [
                    &[0x95, 0x01, 0xa1, b'f', 0xc0, 0xa1, b'c', 0x90, 0xc0][..],
                    &[][..],
                ] {
                    let mut frame = vec![0x02, 0, 0, 0, 0];
                    frame.extend_from_slice(prefix);
                    frame.extend_from_slice(&bomb);
                    let len = (frame.len() - 5) as u32;
                    frame[1..5].copy_from_slice(&len.to_be_bytes());
                    fuzz_frames(&frame);
                    fuzz_connection(&frame);
                }
                // A closure whose captures nest (ext inside ext).
                let mut v = vec![];
                for _ in 0..1000 {
                    let inner = std::mem::take(&mut v);
                    let mut payload = vec![0u8; 36];
                    payload.push(0x91);
                    payload.extend_from_slice(if inner.is_empty() { &[0xc0] } else { &inner });
                    v = vec![0xc9];
                    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                    v.push(1);
                    v.extend_from_slice(&payload);
                }
                assert!(decode_value(&Bytes::from(v), 64).is_err());
            }
            t0.elapsed()
        })
        .unwrap();
    let elapsed = t.join().expect("no stack overflow");
    assert!(elapsed.as_secs() < 5, "{elapsed:?}");
}

#[test]
fn ten_thousand_mutated_blobs_are_rejected() {
    use skiff_wire::{BlobStore, StoreError};
    let (set, _, closure) = common::program(9, 200);
    use skiff_wire::BlobSource;
    let original = set.blob_bytes(&closure[3]).unwrap().to_vec();
    let hash = closure[3];
    let mut store = BlobStore::new(1 << 20);
    let mut rng = Rng::for_loop(42);
    let mut n = 0;
    while n < 10_000 {
        let m = mutate(&mut rng, &original, &original);
        if m == original {
            continue;
        }
        n += 1;
        match store.insert_verified(hash, Bytes::from(m), 1 << 20, &|_| Ok(())) {
            Err(StoreError::HashMismatch { claimed, .. }) => assert_eq!(claimed, hash),
            other => panic!("mutated blob accepted: {other:?}"),
        }
    }
    assert!(store.is_empty());
}

/// Writes the seed corpus (run with SKIFF_WRITE_CORPUS=1 after changing message formats).
#[test]
fn write_corpus_when_asked() {
    if std::env::var("SKIFF_WRITE_CORPUS").is_err() {
        return;
    }
    use skiff_vm::{BlobHash, FunctionId, Portable};
    use skiff_wire::message::{encode_plain, encode_sidecar};
    use skiff_wire::*;
    let f = FunctionId {
        blob: BlobHash([7; 32]),
        member: 2,
    };
    let value = Portable::Map(vec![
        (
            Portable::Str("k".into()),
            Portable::List(vec![Portable::Int(-5), Portable::Float(1.5)]),
        ),
        (
            Portable::Int(3),
            Portable::Bytes(Bytes::from_static(b"abc")),
        ),
        (Portable::Nil, Portable::Range(1, 10)),
        (
            Portable::Bool(true),
            Portable::Function {
                func: f,
                captures: vec![Portable::Str("cap".into())],
            },
        ),
    ]);
    let msgs = vec![
        Message::Hello(Hello {
            version: 1,
            node: "alice".into(),
            capabilities: vec!["sidecar".into()],
            max_frame: 1 << 20,
            sidecar_retain: 0,
        }),
        Message::Call(CallRequest {
            call_id: 1,
            target: Target::Function(f),
            deadline_ms: Some(5000),
            caller: "alice".into(),
            hops: vec!["x".into()],
            context: Portable::Nil,
            args: vec![value.clone(), Portable::Int(1)],
            sealed: false,
        }),
        Message::Call(CallRequest {
            call_id: 2,
            target: Target::Name("main".into()),
            deadline_ms: None,
            caller: "alice".into(),
            hops: vec![],
            context: value.clone(),
            args: vec![],
            sealed: true,
        }),
        Message::Response(CallResponse {
            call_id: 1,
            result: Ok(value.clone()),
        }),
        Message::Response(CallResponse {
            call_id: 1,
            result: Err(RemoteError {
                kind: ErrorKind::Thrown,
                message: "boom".into(),
                trace: Box::new(["at f (a.skiff:1:2)".into()]),
                value: Portable::Str("boom".into()),
            }),
        }),
        Message::BlobQuery(vec![BlobHash([1; 32]), BlobHash([2; 32])]),
        Message::BlobWant(vec![BlobHash([1; 32])]),
        Message::BlobPush {
            hash: common::blob(1, 4, &[]).hash(),
            blob: Bytes::from(common::blob(1, 4, &[]).encode()),
        },
        Message::Cancel { call_id: 9 },
        Message::Error(ErrorReply {
            code: "unknown_message".into(),
            message: "what".into(),
            frame_type: 0x42,
        }),
    ];
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (i, m) in msgs.iter().enumerate() {
        std::fs::write(dir.join(format!("msg-{i:02}")), encode_plain(m)).unwrap();
    }
    std::fs::write(
        dir.join("sidecar"),
        encode_sidecar(SidecarHash::of(b"hello"), true, b"hello"),
    )
    .unwrap();
    let mut v = Vec::new();
    skiff_wire::value::encode_value(&value, &mut v);
    std::fs::write(dir.join("value"), v).unwrap();
    std::fs::write(dir.join("bomb-array32"), [0xdd, 0xff, 0xff, 0xff, 0xff]).unwrap();
    std::fs::write(dir.join("bomb-bin32"), [0xc6, 0xff, 0xff, 0xff, 0xff]).unwrap();
    std::fs::write(dir.join("bomb-frame"), [0x02, 0xff, 0xff, 0xff, 0xff]).unwrap();
    std::fs::write(dir.join("bomb-nest"), [0x91u8; 200]).unwrap();
}
