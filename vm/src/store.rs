//! The code store: verified blobs (and their debug info) keyed by hash.
//!
//! [`CodeStore::insert`] is the only way code enters a store, and it verifies: the blob on
//! its own ([`verify_blob`]) and its links to blobs already present ([`verify_links`]), so
//! dependencies must be inserted first (`Module` closures and wire blob sets come in
//! dependency order). Executions link functions out of a store; they never see an
//! unverified blob.
//!
//! Invariants:
//! - Every blob in the store passed the verifier and is stored under the SHA-256 of its
//!   canonical encoding (computed here, never taken from the caller).
//! - Every external reference of a stored blob names a blob in the store: removing a blob
//!   ([`CodeStore::remove_with_dependents`]) removes every blob that depends on it too.
//! - Cloning a store is cheap (the map is shared copy-on-write), so an execution keeps its own
//!   snapshot and later insertions do not disturb it.

use crate::blob::{Blob, BlobDebug, BlobHash};
use crate::module::Module;
use crate::verify::{verify_blob, verify_links, BlobInfo, VerifyError};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A verified blob with what the verifier computed and its optional debug info.
#[derive(Debug, Clone)]
pub struct StoredBlob {
    pub blob: Arc<Blob>,
    pub debug: Option<Arc<BlobDebug>>,
    pub info: Arc<BlobInfo>,
}

/// Verified blobs keyed by hash.
#[derive(Debug, Clone, Default)]
pub struct CodeStore {
    blobs: Arc<HashMap<BlobHash, StoredBlob>>,
}

impl CodeStore {
    pub fn new() -> CodeStore {
        CodeStore::default()
    }

    /// Verifies and stores `blob`; its dependencies must already be present. Re-inserting a
    /// stored blob only fills in missing debug info.
    pub fn insert(
        &mut self,
        blob: Arc<Blob>,
        debug: Option<Arc<BlobDebug>>,
    ) -> Result<BlobHash, VerifyError> {
        let hash = blob.hash();
        if let Some(existing) = self.blobs.get(&hash) {
            if existing.debug.is_none() && debug.is_some() {
                let map = Arc::make_mut(&mut self.blobs);
                if let Some(entry) = map.get_mut(&hash) {
                    entry.debug = debug;
                }
            }
            return Ok(hash);
        }
        let info = verify_blob(&blob)?;
        verify_links(&blob, |h| self.blobs.get(h).map(|s| &*s.blob))?;
        Arc::make_mut(&mut self.blobs).insert(
            hash,
            StoredBlob {
                blob,
                debug,
                info: Arc::new(info),
            },
        );
        Ok(hash)
    }

    /// Inserts every blob of a module, dependencies first.
    pub fn add_module(&mut self, module: &Module) -> Result<(), VerifyError> {
        let roots: Vec<BlobHash> = module.blobs.keys().copied().collect();
        let order = crate::module::transitive_closure(roots, |h| {
            module
                .blobs
                .get(h)
                .map(|b| &**b)
                .or_else(|| self.blobs.get(h).map(|s| &*s.blob))
        })
        .map_err(|missing| VerifyError {
            function: 0,
            pc: None,
            kind: crate::verify::VerifyErrorKind::MissingBlob(missing.0),
        })?;
        for hash in order {
            if let Some(blob) = module.blobs.get(&hash) {
                self.insert(blob.clone(), module.debug.get(&hash).cloned())?;
            }
        }
        Ok(())
    }

    pub fn contains(&self, hash: &BlobHash) -> bool {
        self.blobs.contains_key(hash)
    }

    /// Removes the blobs `gone` and every stored blob that depends on one of them, directly
    /// or through others; returns what was removed. Executions already started keep their
    /// own snapshot (the map is copy-on-write) and are not disturbed.
    pub fn remove_with_dependents(&mut self, gone: &HashSet<BlobHash>) -> HashSet<BlobHash> {
        let mut removed: HashSet<BlobHash> = gone
            .iter()
            .filter(|h| self.blobs.contains_key(h))
            .copied()
            .collect();
        if removed.is_empty() {
            return removed;
        }
        loop {
            let dependents: Vec<BlobHash> = self
                .blobs
                .iter()
                .filter(|(h, s)| {
                    !removed.contains(h)
                        && s.blob.dependencies().iter().any(|d| removed.contains(d))
                })
                .map(|(h, _)| *h)
                .collect();
            if dependents.is_empty() {
                break;
            }
            removed.extend(dependents);
        }
        Arc::make_mut(&mut self.blobs).retain(|h, _| !removed.contains(h));
        removed
    }

    pub fn get(&self, hash: &BlobHash) -> Option<&Arc<Blob>> {
        self.blobs.get(hash).map(|s| &s.blob)
    }

    pub fn debug(&self, hash: &BlobHash) -> Option<&Arc<BlobDebug>> {
        self.blobs.get(hash).and_then(|s| s.debug.as_ref())
    }

    /// The stored entry: blob, verifier info, debug info.
    pub fn stored(&self, hash: &BlobHash) -> Option<&StoredBlob> {
        self.blobs.get(hash)
    }

    /// Every stored hash, sorted.
    pub fn hashes(&self) -> Vec<BlobHash> {
        let mut out: Vec<BlobHash> = self.blobs.keys().copied().collect();
        out.sort();
        out
    }

    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::{FnRef, FunctionCode, FunctionId};
    use crate::opcodes::Instr;

    /// A one-function blob returning nil, or returning the function of `dep`.
    fn blob(dep: Option<BlobHash>, tag: i64) -> Arc<Blob> {
        let (code, refs) = match dep {
            Some(blob) => (
                vec![Instr::Function { func: 0 }, Instr::Return {}],
                vec![FnRef::External(FunctionId { blob, member: 0 })],
            ),
            None => (vec![Instr::Nil {}, Instr::Return {}], Vec::new()),
        };
        Arc::new(Blob {
            functions: vec![FunctionCode {
                arity: 0,
                locals: 0,
                upvals: 0,
                cells: Vec::new(),
                code,
                consts: vec![crate::blob::Const::Int(tag)],
                refs,
                natives: Vec::new(),
            }],
        })
    }

    #[test]
    fn removing_a_blob_removes_what_depends_on_it() {
        let mut store = CodeStore::new();
        let c = store.insert(blob(None, 0), None).unwrap();
        let b = store.insert(blob(Some(c), 1), None).unwrap();
        let a = store.insert(blob(Some(b), 2), None).unwrap();
        let other = store.insert(blob(None, 3), None).unwrap();
        let snapshot = store.clone();
        let removed = store.remove_with_dependents(&HashSet::from([b]));
        assert_eq!(removed, HashSet::from([a, b]));
        assert_eq!(store.hashes().len(), 2);
        assert!(store.contains(&c) && store.contains(&other));
        // A snapshot taken before (an execution's) still has everything.
        assert!(snapshot.contains(&a) && snapshot.contains(&b));
        // Nothing to remove: nothing changes.
        assert!(store.remove_with_dependents(&HashSet::from([a])).is_empty());
        assert_eq!(store.len(), 2);
    }
}
