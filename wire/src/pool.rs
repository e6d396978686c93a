//! Receive buffers for large frames, reused across frames and connections.
//!
//! A large frame (a big sidecar, blob or inline value) is copied once into a buffer of its
//! exact size (`connection.rs`). A fresh buffer of that size costs the kernel a page fault
//! and a page of zeroes for every 4 KiB of it, which for a 256 MiB sidecar is a larger share
//! of the receiver's CPU than the copy itself. The buffer is handed to the node inside the
//! frame's [`Bytes`]; when the last reference to it is dropped (on whatever thread), it comes
//! back here cleared and is reused for the next large frame of a similar size, which takes it
//! as soon as its header is read and copies each chunk into it as the chunk arrives.
//!
//! Invariants:
//! - The idle buffers' capacities sum to at most the pool's bound; a buffer that would
//!   exceed it evicts the oldest idle ones, and one larger than the bound is freed.
//! - A buffer is handed out empty (`len() == 0`): nothing of an earlier frame is readable.
//! - A buffer is reused only for a frame needing at least half its capacity, so a small
//!   frame never pins a large allocation.
//! - Clones share one pool.

use bytes::Bytes;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

/// A bounded pool of receive buffers; cheap to clone, clones share the pool.
#[derive(Clone)]
pub struct BufferPool(Arc<Shared>);

struct Shared {
    max_idle_bytes: usize,
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    /// Oldest first.
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

impl BufferPool {
    /// A pool keeping at most `max_idle_bytes` of idle buffers (0: none, every buffer is
    /// freed when its frame is dropped).
    pub fn new(max_idle_bytes: usize) -> BufferPool {
        BufferPool(Arc::new(Shared {
            max_idle_bytes,
            idle: Mutex::new(Idle::default()),
        }))
    }

    /// Bytes of idle buffers held now.
    pub fn idle_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// An empty buffer with room for at least `len` bytes: the newest idle one that fits
    /// (and is at most twice `len`), else a new allocation.
    pub fn take(&self, len: usize) -> Vec<u8> {
        self.take_idle(len)
            .unwrap_or_else(|| Vec::with_capacity(len))
    }

    /// The newest idle buffer that fits `len` (and is at most twice `len`), if any: never a
    /// new allocation.
    pub fn take_idle(&self, len: usize) -> Option<Vec<u8>> {
        let mut idle = self.lock();
        let i = idle
            .buffers
            .iter()
            .rposition(|b| b.capacity() >= len && b.capacity() / 2 <= len)?;
        let buf = idle.buffers.remove(i);
        idle.bytes -= buf.capacity();
        Some(buf)
    }

    /// `buf` as [`Bytes`] that give the buffer back to this pool when the last reference to
    /// them is dropped.
    pub fn freeze(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        })
    }

    fn put(&self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        if cap == 0 || cap > self.0.max_idle_bytes {
            return;
        }
        buf.clear();
        let mut idle = self.lock();
        while idle.bytes + cap > self.0.max_idle_bytes {
            let oldest = idle.buffers.remove(0);
            idle.bytes -= oldest.capacity();
        }
        idle.bytes += cap;
        idle.buffers.push(buf);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        // The critical sections cannot panic half-way; a poisoned lock holds a whole list.
        self.0.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("max_idle_bytes", &self.0.max_idle_bytes)
            .field("idle_bytes", &self.idle_bytes())
            .finish()
    }
}

/// A pooled buffer inside [`Bytes`].
struct Pooled {
    buf: Vec<u8>,
    pool: BufferPool,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(pool: &BufferPool, len: usize, byte: u8) -> Bytes {
        let mut buf = pool.take(len);
        assert!(buf.is_empty());
        buf.resize(len, byte);
        pool.freeze(buf)
    }

    #[test]
    fn a_dropped_frame_buffer_is_reused_empty() {
        let pool = BufferPool::new(1 << 20);
        let frame = filled(&pool, 4096, 7);
        let slice = frame.slice(100..200);
        drop(frame);
        assert_eq!(pool.idle_bytes(), 0, "a slice still holds the buffer");
        assert_eq!(&slice[..], &[7u8; 100][..]);
        drop(slice);
        assert!(pool.idle_bytes() >= 4096);
        let again = pool.take(3000);
        assert!(again.is_empty() && again.capacity() >= 4096);
        assert_eq!(pool.idle_bytes(), 0);
    }

    #[test]
    fn the_bound_holds_and_small_frames_do_not_take_large_buffers() {
        let pool = BufferPool::new(10_000);
        let (a, b) = (filled(&pool, 6000, 1), filled(&pool, 5000, 2));
        drop(a);
        drop(b); // evicts the 6000-byte buffer
        let idle = pool.idle_bytes();
        assert!((5000..6000).contains(&idle), "{idle}");
        let small = pool.take(1000);
        assert!(
            small.capacity() < 5000,
            "a 1000-byte frame took a large buffer"
        );
        drop(filled(&pool, 20_000, 3)); // above the bound: freed
        assert!(pool.idle_bytes() <= 10_000);
        assert_eq!(BufferPool::new(0).take(10).capacity(), 10);
    }
}
