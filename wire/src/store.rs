//! The node's blob store, and the [`BlobSource`] a caller ships blobs from.
//!
//! Content-addressed (key = SHA-256 of the canonical bytes), bounded by bytes with LRU
//! eviction, optionally persisted to a directory (one file per hash, named by its hex; each
//! write goes to a temporary file that is then renamed, so a crash never leaves a partial
//! blob under a real name; every file is re-hashed and decoded on load, bad ones deleted).
//!
//! Invariants:
//! - A blob enters only through [`BlobStore::insert_verified`] (re-hash, decode, verifier)
//!   or [`BlobStore::insert_trusted`] (a blob this node compiled itself).
//! - Eviction never removes a pinned blob. Pins are counted; an execution in flight pins
//!   its whole closure until it finishes. When pinned blobs alone fill the store an insert
//!   fails with [`StoreError::Full`] rather than exceed the bound.
//! - `used_bytes() <= capacity()` always.

use crate::limits::{Limit, LimitExceeded};
use bytes::Bytes;
use skiff_vm::blob::BlobDecodeError;
use skiff_vm::{Blob, BlobHash, Module};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The verification hook: the VM's verifier, supplied by the node.
pub type Verifier = Arc<dyn Fn(&Blob) -> Result<(), String> + Send + Sync>;

/// A store shared by a node's connections.
pub type SharedStore = Arc<Mutex<BlobStore>>;

/// Why a blob was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("hash mismatch: claimed {claimed}, bytes hash to {actual}")]
    HashMismatch { claimed: BlobHash, actual: BlobHash },
    #[error("blob does not decode: {0}")]
    Decode(#[from] BlobDecodeError),
    #[error("blob failed verification: {0}")]
    Verify(String),
    #[error(transparent)]
    Full(LimitExceeded),
}

/// Where a caller gets the blobs it ships: canonical bytes and direct dependencies.
pub trait BlobSource {
    fn blob_bytes(&self, hash: &BlobHash) -> Option<Bytes>;
    fn blob_deps(&self, hash: &BlobHash) -> Option<Vec<BlobHash>>;
}

/// An in-memory set of blobs (e.g. a compiled module's), encoded once.
#[derive(Clone, Debug, Default)]
pub struct BlobSet {
    blobs: HashMap<BlobHash, (Bytes, Vec<BlobHash>)>,
}

impl BlobSet {
    pub fn new() -> BlobSet {
        BlobSet::default()
    }

    /// Adds a blob; returns its hash.
    pub fn insert(&mut self, blob: &Blob) -> BlobHash {
        let bytes = Bytes::from(blob.encode());
        let hash = BlobHash::of(&bytes);
        self.blobs.insert(hash, (bytes, blob.dependencies()));
        hash
    }

    /// All blobs of a module.
    pub fn from_module(module: &Module) -> BlobSet {
        let mut set = BlobSet::new();
        for blob in module.blobs.values() {
            set.insert(blob);
        }
        set
    }

    /// Adds every blob of `other`.
    pub fn merge(&mut self, other: &BlobSet) {
        for (h, v) in &other.blobs {
            self.blobs.insert(*h, v.clone());
        }
    }

    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }
}

impl BlobSource for BlobSet {
    fn blob_bytes(&self, hash: &BlobHash) -> Option<Bytes> {
        self.blobs.get(hash).map(|(b, _)| b.clone())
    }
    fn blob_deps(&self, hash: &BlobHash) -> Option<Vec<BlobHash>> {
        self.blobs.get(hash).map(|(_, d)| d.clone())
    }
}

impl BlobSource for BlobStore {
    fn blob_bytes(&self, hash: &BlobHash) -> Option<Bytes> {
        self.entries.get(hash).map(|e| e.bytes.clone())
    }
    fn blob_deps(&self, hash: &BlobHash) -> Option<Vec<BlobHash>> {
        self.entries.get(hash).map(|e| e.deps.to_vec())
    }
}

/// Tries `first`, then `second` (e.g. the node's modules, then its store).
pub struct Chain<'a>(pub &'a dyn BlobSource, pub &'a dyn BlobSource);

impl BlobSource for Chain<'_> {
    fn blob_bytes(&self, hash: &BlobHash) -> Option<Bytes> {
        self.0.blob_bytes(hash).or_else(|| self.1.blob_bytes(hash))
    }
    fn blob_deps(&self, hash: &BlobHash) -> Option<Vec<BlobHash>> {
        self.0.blob_deps(hash).or_else(|| self.1.blob_deps(hash))
    }
}

/// The transitive closure of `roots` over `deps`, dependencies first, in the same order
/// as `skiff_vm::transitive_closure`. `Err` names the first unavailable blob.
pub fn closure(
    roots: impl IntoIterator<Item = BlobHash>,
    deps: impl Fn(&BlobHash) -> Option<Vec<BlobHash>>,
) -> Result<Vec<BlobHash>, BlobHash> {
    skiff_vm::module::closure_by(roots, deps).map_err(|missing| missing.0)
}

/// Every blob reachable from `roots` that `have` lacks (walking through the blobs it has).
pub fn missing_from(
    roots: impl IntoIterator<Item = BlobHash>,
    deps: impl Fn(&BlobHash) -> Option<Vec<BlobHash>>,
) -> Vec<BlobHash> {
    let mut missing = Vec::new();
    let mut seen = HashSet::new();
    let mut todo: Vec<BlobHash> = roots.into_iter().collect();
    while let Some(h) = todo.pop() {
        if !seen.insert(h) {
            continue;
        }
        match deps(&h) {
            Some(ds) => todo.extend(ds),
            None => missing.push(h),
        }
    }
    missing.sort();
    missing
}

struct Entry {
    bytes: Bytes,
    deps: Arc<[BlobHash]>,
    tick: u64,
    pins: u32,
}

/// A content-addressed, byte-bounded, LRU blob store.
pub struct BlobStore {
    capacity: u64,
    used: u64,
    tick: u64,
    entries: HashMap<BlobHash, Entry>,
    lru: BTreeMap<u64, BlobHash>,
    dir: Option<PathBuf>,
    /// Blobs evicted so far (to make room).
    evictions: u64,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("capacity", &self.capacity)
            .field("used", &self.used)
            .field("blobs", &self.entries.len())
            .field("dir", &self.dir)
            .finish()
    }
}

/// What [`BlobStore::open`] found on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub loaded: usize,
    /// Files removed because they were corrupt, misnamed or failed verification.
    pub rejected: usize,
}

impl BlobStore {
    /// An in-memory store of at most `capacity` bytes.
    pub fn new(capacity: u64) -> BlobStore {
        BlobStore {
            capacity,
            used: 0,
            tick: 0,
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            dir: None,
            evictions: 0,
        }
    }

    /// A store persisted in `dir` (created if needed). Existing files are re-hashed,
    /// decoded and verified; bad ones are deleted; loading stops at `capacity`.
    pub fn open(
        dir: impl AsRef<Path>,
        capacity: u64,
        verify: &dyn Fn(&Blob) -> Result<(), String>,
    ) -> std::io::Result<(BlobStore, LoadReport)> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let mut store = BlobStore::new(capacity);
        let mut report = LoadReport::default();
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        for path in names {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with(".tmp-") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(hash) = BlobHash::from_hex(name) else {
                continue; // not ours
            };
            let ok = std::fs::read(&path).ok().and_then(|bytes| {
                if BlobHash::of(&bytes) != hash {
                    return None;
                }
                let blob = Blob::decode(&bytes, usize::MAX).ok()?;
                verify(&blob).ok()?;
                Some((Bytes::from(bytes), blob.dependencies()))
            });
            match ok {
                Some((bytes, deps)) if store.used + bytes.len() as u64 <= capacity => {
                    store.put(hash, bytes, deps);
                    report.loaded += 1;
                }
                Some(_) => {}
                None => {
                    let _ = std::fs::remove_file(&path);
                    report.rejected += 1;
                }
            }
        }
        store.dir = Some(dir);
        Ok((store, report))
    }

    /// Wraps the store for sharing between connections.
    pub fn shared(self) -> SharedStore {
        Arc::new(Mutex::new(self))
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn used_bytes(&self) -> u64 {
        self.used
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many blobs were evicted to make room since the store was made: a holder of
    /// copies (the node's VM code store) compares it to know when to look for stale ones.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn contains(&self, hash: &BlobHash) -> bool {
        self.entries.contains_key(hash)
    }

    /// The blob's canonical bytes; marks it recently used.
    pub fn get(&mut self, hash: &BlobHash) -> Option<Bytes> {
        self.touch(hash);
        self.entries.get(hash).map(|e| e.bytes.clone())
    }

    /// The decoded blob (decoding cannot fail for a stored blob; `None` if absent).
    pub fn get_blob(&mut self, hash: &BlobHash) -> Option<Blob> {
        let bytes = self.get(hash)?;
        Blob::decode(&bytes, usize::MAX).ok()
    }

    /// Direct dependencies of a stored blob.
    pub fn deps(&self, hash: &BlobHash) -> Option<Arc<[BlobHash]>> {
        self.entries.get(hash).map(|e| e.deps.clone())
    }

    /// Pins a blob against eviction; false if absent.
    pub fn pin(&mut self, hash: &BlobHash) -> bool {
        match self.entries.get_mut(hash) {
            Some(e) => {
                e.pins += 1;
                true
            }
            None => false,
        }
    }

    /// Releases one pin.
    pub fn unpin(&mut self, hash: &BlobHash) {
        if let Some(e) = self.entries.get_mut(hash) {
            e.pins = e.pins.saturating_sub(1);
        }
    }

    pub fn is_pinned(&self, hash: &BlobHash) -> bool {
        self.entries.get(hash).is_some_and(|e| e.pins > 0)
    }

    /// Re-hashes `bytes`, rejects a mismatch with `claimed`, decodes (at most `max_size`
    /// bytes), runs the verifier, then stores. Nothing is stored on any error.
    pub fn insert_verified(
        &mut self,
        claimed: BlobHash,
        bytes: Bytes,
        max_size: usize,
        verify: &dyn Fn(&Blob) -> Result<(), String>,
    ) -> Result<(), StoreError> {
        let actual = BlobHash::of(&bytes);
        if actual != claimed {
            return Err(StoreError::HashMismatch { claimed, actual });
        }
        if self.contains(&claimed) {
            self.touch(&claimed);
            return Ok(());
        }
        let blob = Blob::decode(&bytes, max_size)?;
        verify(&blob).map_err(StoreError::Verify)?;
        self.insert_bytes(claimed, bytes, blob.dependencies())
    }

    /// Stores a blob this node produced itself (no verification); returns its hash.
    pub fn insert_trusted(&mut self, blob: &Blob) -> Result<BlobHash, StoreError> {
        let bytes = Bytes::from(blob.encode());
        let hash = BlobHash::of(&bytes);
        if !self.contains(&hash) {
            self.insert_bytes(hash, bytes, blob.dependencies())?;
        }
        Ok(hash)
    }

    fn insert_bytes(
        &mut self,
        hash: BlobHash,
        bytes: Bytes,
        deps: Vec<BlobHash>,
    ) -> Result<(), StoreError> {
        let size = bytes.len() as u64;
        self.make_room(size)?;
        if let Some(dir) = &self.dir {
            // Best effort: a failed write leaves the store correct in memory.
            let _ = write_atomic(dir, &hash, &bytes);
        }
        self.put(hash, bytes, deps);
        Ok(())
    }

    fn put(&mut self, hash: BlobHash, bytes: Bytes, deps: Vec<BlobHash>) {
        self.tick += 1;
        self.used += bytes.len() as u64;
        self.lru.insert(self.tick, hash);
        self.entries.insert(
            hash,
            Entry {
                bytes,
                deps: deps.into(),
                tick: self.tick,
                pins: 0,
            },
        );
    }

    fn touch(&mut self, hash: &BlobHash) {
        if let Some(e) = self.entries.get_mut(hash) {
            self.lru.remove(&e.tick);
            self.tick += 1;
            e.tick = self.tick;
            self.lru.insert(self.tick, *hash);
        }
    }

    /// Evicts least recently used unpinned blobs until `size` more bytes fit.
    fn make_room(&mut self, size: u64) -> Result<(), StoreError> {
        let full = |used: u64| LimitExceeded {
            limit: Limit::StoreBytes,
            max: self.capacity,
            seen: used + size,
        };
        if size > self.capacity {
            return Err(StoreError::Full(full(0)));
        }
        let mut victims = Vec::new();
        let mut freed = 0u64;
        for (_, h) in self.lru.iter() {
            if self.used - freed + size <= self.capacity {
                break;
            }
            if let Some(e) = self.entries.get(h) {
                if e.pins == 0 {
                    freed += e.bytes.len() as u64;
                    victims.push(*h);
                }
            }
        }
        if self.used - freed + size > self.capacity {
            return Err(StoreError::Full(full(self.used)));
        }
        self.evictions += victims.len() as u64;
        for h in victims {
            self.remove(&h);
        }
        Ok(())
    }

    fn remove(&mut self, hash: &BlobHash) {
        if let Some(e) = self.entries.remove(hash) {
            self.lru.remove(&e.tick);
            self.used -= e.bytes.len() as u64;
            if let Some(dir) = &self.dir {
                let _ = std::fs::remove_file(dir.join(hash.to_hex()));
            }
        }
    }
}

fn write_atomic(dir: &Path, hash: &BlobHash, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!(".tmp-{}-{}", hash.to_hex(), std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(hash.to_hex()))
}
