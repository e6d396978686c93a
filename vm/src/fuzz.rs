//! Fuzz targets as plain functions (no nightly toolchain needed): `cargo test` drives them
//! over the saved corpus in `vm/fuzz-corpus/` and a bounded seeded loop; an external fuzzer
//! can call them too.
//!
//! Invariant: for any input, a target returns normally — decoding, verifying and running
//! hostile bytes never panics, and running is bounded by small fuel, heap and depth limits.

use crate::blob::{Blob, FunctionId};
use crate::interp::{Engine, ExecIo, Execution, Limits, RemoteFailure, Status};
use crate::native::NodeInfo;
use crate::portable::Portable;
use crate::store::CodeStore;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Decodes `bytes` as a blob, verifies it and, if it verifies, runs every member with `nil`
/// arguments under small limits.
pub fn fuzz_blob(bytes: &[u8]) {
    let Ok(blob) = Blob::decode(bytes, 1 << 16) else {
        return;
    };
    let arities: Vec<u16> = blob.functions.iter().map(|f| f.arity).collect();
    let mut store = CodeStore::new();
    let Ok(hash) = store.insert(Arc::new(blob), None) else {
        return;
    };
    let engine = Engine::new();
    for (member, &arity) in arities.iter().enumerate().take(8) {
        let limits = Limits {
            fuel: Some(20_000),
            max_depth: 64,
            max_heap: Some(1 << 20),
            deadline: None,
        };
        let args = vec![Portable::Nil; arity as usize];
        let func = FunctionId {
            blob: hash,
            member: member as u32,
        };
        let Ok(mut exec) = Execution::start(
            &engine,
            &store,
            func,
            args,
            NodeInfo::default(),
            limits,
            ExecIo::null(),
        ) else {
            continue;
        };
        let mut now = Instant::now();
        for _ in 0..64 {
            match exec.run(now) {
                Status::Done(_) | Status::Failed(_) => break,
                Status::Yielded => {}
                Status::Blocked { .. } => {
                    for r in exec.take_requests() {
                        exec.resolve(r.id, Err(RemoteFailure::new("Unreachable", "fuzz")));
                    }
                    now += Duration::from_secs(3600);
                }
            }
        }
    }
}
