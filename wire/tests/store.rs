//! The blob store: LRU bound, pinning, persistence (atomic files, verified on load).

mod common;

use bytes::Bytes;
use common::*;
use skiff_wire::{BlobSource, BlobStore, StoreError};
use std::path::PathBuf;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("skiff-wire-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn lru_eviction_spares_pinned_and_recent() {
    let (set, _, closure) = program(1, 1000);
    let sizes: Vec<u64> = closure.iter().map(|h| size_of(&set, &[*h])).collect();
    let mut store = BlobStore::new(sizes[0] + sizes[1] + sizes[2].max(sizes[3]) + 10);
    for h in &closure[..3] {
        store
            .insert_verified(*h, set.blob_bytes(h).unwrap(), 1 << 20, &|_| Ok(()))
            .unwrap();
    }
    store.pin(&closure[0]);
    store.get(&closure[1]); // recently used
    store
        .insert_verified(
            closure[3],
            set.blob_bytes(&closure[3]).unwrap(),
            1 << 20,
            &|_| Ok(()),
        )
        .unwrap();
    assert!(store.contains(&closure[0]), "pinned");
    assert!(store.contains(&closure[1]), "recent");
    assert!(
        !store.contains(&closure[2]),
        "least recently used, unpinned"
    );
    assert!(store.used_bytes() <= store.capacity());
}

#[test]
fn persisted_store_survives_restart_and_rejects_corrupt_files() {
    let dir = temp_dir("persist");
    let (set, _, closure) = program(2, 500);
    {
        let (mut store, report) = BlobStore::open(&dir, 1 << 20, &|_| Ok(())).unwrap();
        assert_eq!(report.loaded, 0);
        for h in &closure {
            store
                .insert_verified(*h, set.blob_bytes(h).unwrap(), 1 << 20, &|_| Ok(()))
                .unwrap();
        }
    }
    // Corrupt one file, misname another, leave a stale temp file.
    std::fs::write(dir.join(closure[0].to_hex()), b"garbage").unwrap();
    let moved = set.blob_bytes(&closure[1]).unwrap();
    std::fs::write(dir.join(closure[2].to_hex()), &moved).unwrap();
    std::fs::write(dir.join(".tmp-partial"), b"half").unwrap();
    let (store, report) = BlobStore::open(&dir, 1 << 20, &|_| Ok(())).unwrap();
    assert_eq!(report.loaded, 2);
    assert_eq!(report.rejected, 2);
    assert!(store.contains(&closure[1]) && store.contains(&closure[3]));
    assert!(!store.contains(&closure[0]) && !store.contains(&closure[2]));
    assert!(!dir.join(".tmp-partial").exists());
    assert!(!dir.join(closure[0].to_hex()).exists());
    // A verifier that rejects everything loads nothing.
    let (store, report) = BlobStore::open(&dir, 1 << 20, &|_| Err("no".into())).unwrap();
    assert!(store.is_empty());
    assert_eq!(report.rejected, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn eviction_removes_the_file_too() {
    let dir = temp_dir("evict");
    let (set, _, closure) = program(3, 2000);
    let cap = size_of(&set, &closure[..1]) + size_of(&set, &closure[1..2]);
    let (mut store, _) = BlobStore::open(&dir, cap, &|_| Ok(())).unwrap();
    for h in &closure[..3] {
        store
            .insert_verified(*h, set.blob_bytes(h).unwrap(), 1 << 20, &|_| Ok(()))
            .unwrap();
    }
    assert!(!dir.join(closure[0].to_hex()).exists());
    assert!(dir.join(closure[2].to_hex()).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rejections_store_nothing() {
    let (set, _, closure) = program(4, 10);
    let mut store = BlobStore::new(1 << 20);
    let bytes = set.blob_bytes(&closure[0]).unwrap();
    assert!(matches!(
        store.insert_verified(closure[1], bytes.clone(), 1 << 20, &|_| Ok(())),
        Err(StoreError::HashMismatch { .. })
    ));
    assert!(matches!(
        store.insert_verified(closure[0], bytes.clone(), 1 << 20, &|_| Err("bad".into())),
        Err(StoreError::Verify(_))
    ));
    let junk = Bytes::from_static(b"not a blob");
    let h = skiff_vm::BlobHash::of(&junk);
    assert!(matches!(
        store.insert_verified(h, junk, 1 << 20, &|_| Ok(())),
        Err(StoreError::Decode(_))
    ));
    assert!(store.is_empty());
}
