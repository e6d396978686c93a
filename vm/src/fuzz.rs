//! Fuzz targets as plain functions (no nightly toolchain needed): `cargo test` drives them
//! over the saved corpus in `vm/fuzz-corpus/` and a bounded seeded loop; an external fuzzer
//! can call them too. [`Rng`] is the generator of every crate's seeded loops.
//!
//! Invariants: for any input, a target returns normally — decoding, verifying and running
//! hostile bytes never panics, and running is bounded by small fuel, heap and depth limits —
//! except on a finding: [`fuzz_blob`] panics when [`Execution::run_quick`] and an
//! execution's start and runs disagree, [`fuzz_fused_ops`] when the interpreter's fused ops
//! and fast paths did something the same instructions run one at a time would not.

use crate::blob::{Blob, FunctionId};
use crate::interp::program::{LinkCache, LinkError, Linked};
use crate::interp::{
    Engine, ExecIo, Execution, Limits, QuickRun, RemoteFailure, Status, DEFAULT_SLICE,
};
use crate::native::NodeInfo;
use crate::portable::Portable;
use crate::store::CodeStore;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fuel of each run of a fuzz target.
const FUZZ_FUEL: u64 = 20_000;

/// Decodes `bytes` as a blob, verifies it and, if it verifies, runs every member with `nil`
/// arguments under small limits, twice: started as an execution, and with
/// [`Execution::run_quick`]. Panics if the two differ in a status, in what was printed, or
/// (when the quick start built an execution) in the fuel left.
pub fn fuzz_blob(bytes: &[u8]) {
    for_each_member(bytes, |engine, store, linked, arity| {
        let args = vec![Portable::Nil; arity as usize];
        let full = run(
            engine,
            store,
            linked.clone(),
            args.clone(),
            FUZZ_FUEL,
            None,
            Start::Execution,
        );
        let quick = run(engine, store, linked, args, FUZZ_FUEL, None, Start::Quick);
        match (full, quick) {
            (Some(mut full), Some(quick)) => {
                if quick.fuel_left.is_none() {
                    // Ended at once as one task: no execution to ask.
                    full.fuel_left = None;
                }
                assert_eq!(full, quick, "run_quick and an execution disagree");
            }
            (full, quick) => assert_eq!(full.is_some(), quick.is_some(), "one of them started"),
        }
    });
}

/// Like [`fuzz_blob`], but runs each member as [`check_fused_ops`] does, with a slice size
/// taken from the input.
pub fn fuzz_fused_ops(bytes: &[u8]) {
    let slice = 1 + bytes
        .iter()
        .fold(0u64, |h, &b| h.wrapping_mul(31) ^ u64::from(b))
        % 64;
    for_each_member(bytes, |engine, store, linked, arity| {
        let args = vec![Portable::Nil; arity as usize];
        compare_fused(engine, store, linked, args, FUZZ_FUEL, slice);
    });
}

/// Runs `func(args)` from `store` twice, with at most `fuel` instructions in slices of
/// `slice`: as the interpreter links it (fused ops, fast paths) and with every instruction
/// run alone by the general loop. Panics if the two differ in anything observable: a status
/// [`Execution::run`] returned (values, errors with their traces), what was printed, or
/// the fuel left. A small `slice` puts slice boundaries inside fused ops too.
pub fn check_fused_ops(
    store: &CodeStore,
    func: FunctionId,
    args: Vec<Portable>,
    fuel: u64,
    slice: u64,
) -> Result<(), LinkError> {
    let engine = Engine::new();
    let linked = LinkCache::new().get(&engine, store, func)?;
    compare_fused(&engine, store, linked, args, fuel, slice);
    Ok(())
}

fn compare_fused(
    engine: &Engine,
    store: &CodeStore,
    linked: Linked,
    args: Vec<Portable>,
    fuel: u64,
    slice: u64,
) {
    let fused = run(
        engine,
        store,
        linked.clone(),
        args.clone(),
        fuel,
        Some(slice),
        Start::Execution,
    );
    let alone = run(
        engine,
        store,
        linked.unfused(),
        args,
        fuel,
        Some(slice),
        Start::Execution,
    );
    assert_eq!(
        fused, alone,
        "fused ops and single instructions disagree (slice {slice})"
    );
}

/// Calls `each` with every member (the first eight) of the blob `bytes` decodes to, if it
/// verifies, linked from a store holding it.
fn for_each_member(bytes: &[u8], mut each: impl FnMut(&Engine, &CodeStore, Linked, u16)) {
    let Ok(blob) = Blob::decode(bytes, 1 << 16) else {
        return;
    };
    let arities: Vec<u16> = blob.functions.iter().map(|f| f.arity).collect();
    let mut store = CodeStore::new();
    let Ok(hash) = store.insert(Arc::new(blob), None) else {
        return;
    };
    let engine = Engine::new();
    let mut links = LinkCache::new();
    for (member, &arity) in arities.iter().enumerate().take(8) {
        let func = FunctionId {
            blob: hash,
            member: member as u32,
        };
        if let Ok(linked) = links.get(&engine, &store, func) {
            each(&engine, &store, linked, arity);
        }
    }
}

/// What one run showed: each status but `Yielded` in order (with the yields before it
/// counted), then the output and the fuel left.
#[derive(Debug, PartialEq)]
struct Observed {
    statuses: Vec<String>,
    output: String,
    fuel_left: Option<u64>,
}

/// How a fuzz run starts its call.
#[derive(Clone, Copy)]
enum Start {
    /// [`Execution::start_linked`], then [`Execution::run`].
    Execution,
    /// [`Execution::run_quick`], then [`Execution::run`] if it built an execution.
    Quick,
}

/// Runs `linked` with `args` under small depth and heap limits until it ends, for at most
/// as many slices as its fuel allows (64 more for sleeps and remote calls); a remote
/// request fails as unreachable, and a sleep is over at the next slice. `fuel_left` is
/// `None` only when a quick start ended the call without an execution.
fn run(
    engine: &Engine,
    store: &CodeStore,
    linked: Linked,
    args: Vec<Portable>,
    fuel: u64,
    slice: Option<u64>,
    start: Start,
) -> Option<Observed> {
    let limits = Limits {
        fuel: Some(fuel),
        max_depth: 64,
        max_heap: Some(1 << 20),
        deadline: None,
    };
    let (io, out, err) = ExecIo::capture();
    let node = NodeInfo::default();
    let mut slices = 64 + slice.map_or(0, |slice| fuel / slice);
    // One clock for every run, so statuses that carry a wake time compare equal.
    let start_at = Instant::now();
    let mut now = start_at;
    let (mut exec, mut status) = match start {
        Start::Execution => {
            let mut exec =
                Execution::start_linked(engine, store, linked, &args, node, limits, io).ok()?;
            if let Some(slice) = slice {
                exec.set_slice(slice);
            }
            let status = exec.run(now);
            (Some(Box::new(exec)), status)
        }
        Start::Quick => {
            let slice = slice.unwrap_or(DEFAULT_SLICE);
            match Execution::run_quick(engine, store, linked, &args, &node, limits, io, slice, now)
                .ok()?
            {
                QuickRun::Done(value) => (None, Status::Done(value)),
                QuickRun::Started(status, exec) => (Some(exec), status),
            }
        }
    };
    let mut statuses = Vec::new();
    let mut yields = 0u64;
    loop {
        // `Debug`, not `==`: a NaN result must equal itself.
        match &status {
            Status::Yielded => yields += 1,
            Status::Blocked { wake_at } => statuses.push(format!(
                "{yields} yields, blocked until {:?}",
                wake_at.map(|w| w.duration_since(start_at))
            )),
            ended => statuses.push(format!("{yields} yields, {ended:?}")),
        }
        slices -= 1;
        let Some(exec) = exec.as_mut().filter(|_| slices > 0) else {
            break;
        };
        match status {
            Status::Done(_) | Status::Failed(_) => break,
            Status::Yielded => {}
            Status::Blocked { .. } => {
                for r in exec.take_requests() {
                    exec.resolve(r.id, Err(RemoteFailure::new("Unreachable", "fuzz")));
                }
                now += Duration::from_secs(3600);
            }
        }
        status = exec.run(now);
    }
    Some(Observed {
        statuses,
        output: out.text() + &err.text(),
        fuel_left: exec.and_then(|exec| exec.fuel_left()),
    })
}

/// The generator of the seeded fuzz loops of every crate (splitmix64: small, fast, and good
/// from any seed, zero included). Each loop draws from a stream of its own; the environment
/// variable `SKIFF_FUZZ_SEED` (an unsigned integer) moves every stream elsewhere, so that a
/// long run can look at inputs the default runs never see. A failure is reproduced by
/// running again with the same value.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// The generator for the loop whose stream is `stream`: `stream` itself, moved by
    /// `SKIFF_FUZZ_SEED` when that is set and not empty. Panics if it is neither empty nor an
    /// unsigned integer.
    pub fn for_loop(stream: u64) -> Rng {
        let seed = std::env::var("SKIFF_FUZZ_SEED").unwrap_or_default();
        let moved = match seed.trim() {
            "" => 0,
            seed => {
                let seed: u64 = seed.parse().unwrap_or_else(|_| {
                    panic!("SKIFF_FUZZ_SEED must be an unsigned integer, not `{seed}`")
                });
                Rng::new(seed).next_u64()
            }
        };
        Rng::new(stream ^ moved)
    }

    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}
