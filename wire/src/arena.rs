//! Where a connection's outgoing frames live: each is encoded into one reused buffer, then
//! copied into a shared chunk, so that a small frame (a call, a response, a control
//! message) costs no allocation of its own — the chunk is allocated once per many frames,
//! and reused in place once every frame cut from it is gone.
//!
//! Invariants:
//! - A frame handed out ([`FrameArena::freeze`]) is never written again: it is split off
//!   the chunk, which only ever grows past it.
//! - Only frames of at most [`SHARED_MAX`] bytes share a chunk, so a frame kept alive (a
//!   sealed call's copy for a resend, until its answer) holds at most one chunk of
//!   [`CHUNK`] bytes alive; larger frames keep the buffer they were encoded in.

use bytes::{Bytes, BytesMut};

/// Bytes a chunk holds (a few dozen calls or responses); a new one is allocated when the
/// current one is full and frames cut from it are still alive.
const CHUNK: usize = 4 << 10;

/// Largest frame copied into a chunk.
const SHARED_MAX: usize = 512;

/// Room the encoding buffer starts with: a small message is written without it growing.
pub(crate) const FRAME_START_CAPACITY: usize = 256;

/// The encoding buffer and the current chunk of one connection.
#[derive(Default)]
pub(crate) struct FrameArena {
    /// Empty; its allocation is reused by the next frame.
    scratch: Vec<u8>,
    chunk: BytesMut,
}

impl FrameArena {
    /// An empty buffer to encode the next frame into (hand it to [`FrameArena::freeze`]).
    pub fn buffer(&mut self) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.reserve(FRAME_START_CAPACITY);
        buf
    }

    /// The encoded `frame` as shared bytes: a small one copied into the chunk (its buffer
    /// is kept for the next frame), a large one as it is.
    pub fn freeze(&mut self, mut frame: Vec<u8>) -> Bytes {
        if frame.len() > SHARED_MAX {
            return frame.into();
        }
        if self.chunk.capacity() < frame.len() {
            // Reclaims the chunk in place when no frame cut from it is alive any more.
            self.chunk.reserve(CHUNK);
        }
        self.chunk.extend_from_slice(&frame);
        frame.clear();
        if frame.capacity() >= self.scratch.capacity() {
            self.scratch = frame;
        }
        self.chunk.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_share_a_chunk_and_never_change() {
        let mut arena = FrameArena::default();
        let mut frames = Vec::new();
        for i in 0..100u8 {
            let mut buf = arena.buffer();
            buf.extend_from_slice(&[i; 100]);
            frames.push(arena.freeze(buf));
        }
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(&f[..], &[i as u8; 100][..]);
        }
        // Consecutive frames that fit one chunk are adjacent in it.
        assert_eq!(frames[1].as_ptr(), frames[0].as_ptr().wrapping_add(100));
    }

    #[test]
    fn a_large_frame_keeps_its_buffer() {
        let mut arena = FrameArena::default();
        let mut buf = arena.buffer();
        buf.resize(SHARED_MAX + 1, 7);
        let at = buf.as_ptr();
        let frame = arena.freeze(buf);
        assert_eq!(frame.as_ptr(), at);
        assert_eq!(frame.len(), SHARED_MAX + 1);
    }

    #[test]
    fn a_chunk_is_reused_once_its_frames_are_gone() {
        let mut arena = FrameArena::default();
        let mut buf = arena.buffer();
        buf.extend_from_slice(b"first");
        let first = arena.freeze(buf);
        let at = first.as_ptr();
        drop(first);
        // Fill the chunk so the next frame needs room: the same allocation is reclaimed.
        for _ in 0..CHUNK / SHARED_MAX + 1 {
            let mut buf = arena.buffer();
            buf.resize(SHARED_MAX, 1);
            drop(arena.freeze(buf));
        }
        let mut buf = arena.buffer();
        buf.extend_from_slice(b"again");
        let again = arena.freeze(buf);
        assert_eq!(&again[..], b"again");
        assert!(
            again.as_ptr() >= at && again.as_ptr() < at.wrapping_add(CHUNK),
            "the chunk was reclaimed, not replaced"
        );
    }
}
