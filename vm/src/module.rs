//! Modules (compiled scripts) and the transitive blob closure of a call.
//!
//! A [`Module`] is a set of blobs plus its exports (name → [`FunctionId`]) and the entry
//! function that runs the script's top level. [`transitive_closure`] computes the minimal
//! set of blobs a call needs, dependencies first, deterministically.
//!
//! Invariants:
//! - Every blob in `blobs` is stored under its own hash; debug info is keyed the same way.
//! - The closure order is a depth-first post-order that visits dependencies in the order
//!   the blob first references them: same roots, same blobs → same order on every machine.

use crate::blob::{Blob, BlobDebug, BlobHash, FunctionId};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// A compiled script: its blobs, their debug info, its exports and its entry function.
#[derive(Clone, Debug)]
pub struct Module {
    pub blobs: BTreeMap<BlobHash, Arc<Blob>>,
    /// Debug info by blob, ordered like `blobs` (a lookup compares hashes, it does not
    /// hash them).
    pub debug: BTreeMap<BlobHash, Arc<BlobDebug>>,
    /// Top-level functions by name.
    pub exports: BTreeMap<String, FunctionId>,
    /// The function holding the script's top-level statements (arity 0).
    pub entry: FunctionId,
}

/// A blob named by a reference but not available.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("blob {0} is not available")]
pub struct MissingBlob(pub BlobHash);

/// The blobs `roots` need, each once, dependencies before dependents.
pub fn transitive_closure<'a>(
    roots: impl IntoIterator<Item = BlobHash>,
    lookup: impl Fn(&BlobHash) -> Option<&'a Blob>,
) -> Result<Vec<BlobHash>, MissingBlob> {
    closure_by(roots, |h| lookup(h).map(Blob::dependencies))
}

/// [`transitive_closure`] over any source of dependency lists (a store that keeps them
/// beside the bytes, say), with the same order.
pub fn closure_by(
    roots: impl IntoIterator<Item = BlobHash>,
    deps: impl Fn(&BlobHash) -> Option<Vec<BlobHash>>,
) -> Result<Vec<BlobHash>, MissingBlob> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // Explicit stack of (blob, its dependencies, next dependency to visit): no recursion,
    // so a long dependency chain cannot overflow the Rust stack.
    let mut stack: Vec<(BlobHash, Vec<BlobHash>, usize)> = Vec::new();
    for root in roots {
        if !seen.insert(root) {
            continue;
        }
        stack.push((root, deps(&root).ok_or(MissingBlob(root))?, 0));
        while let Some((hash, pending, next)) = stack.last_mut() {
            if let Some(&dep) = pending.get(*next) {
                *next += 1;
                if seen.insert(dep) {
                    let dep_deps = deps(&dep).ok_or(MissingBlob(dep))?;
                    stack.push((dep, dep_deps, 0));
                }
            } else {
                order.push(*hash);
                stack.pop();
            }
        }
    }
    Ok(order)
}

impl Module {
    /// The blobs needed to run `roots`, dependencies first.
    pub fn closure_of(&self, roots: &[FunctionId]) -> Result<Vec<BlobHash>, MissingBlob> {
        transitive_closure(roots.iter().map(|f| f.blob), |h| {
            self.blobs.get(h).map(|b| &**b)
        })
    }
}
