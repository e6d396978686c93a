//! Framing: `type:u8 length:u32-BE payload[length]`.
//!
//! Decoding is a pure function over a buffer ([`decode_frame`]): it reports how many bytes
//! are needed until a whole frame is present, and checks the declared length against the
//! limit for the frame's type *before* anyone allocates a byte for it (message frames:
//! `max_frame`; sidecar frames: the call's remaining sidecar budget plus the sidecar's
//! flags and hash, 33 bytes).
//!
//! Invariants:
//! - The 5-byte header alone decides whether a frame is acceptable; a rejected length is
//!   never reserved or read.
//! - Unknown frame types are framed like any other (so the stream stays in sync and the
//!   receiver can answer with an error reply instead of dropping the connection).

use crate::limits::{Limit, LimitExceeded};
use std::ops::Range;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 5;

/// Frame types (the first byte of every frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    Hello = 0x01,
    Call = 0x02,
    Response = 0x03,
    BlobQuery = 0x04,
    BlobWant = 0x05,
    BlobPush = 0x06,
    Sidecar = 0x07,
    Cancel = 0x08,
    Error = 0x09,
}

impl FrameType {
    /// The type for a byte, if known.
    pub fn from_u8(b: u8) -> Option<FrameType> {
        Some(match b {
            0x01 => FrameType::Hello,
            0x02 => FrameType::Call,
            0x03 => FrameType::Response,
            0x04 => FrameType::BlobQuery,
            0x05 => FrameType::BlobWant,
            0x06 => FrameType::BlobPush,
            0x07 => FrameType::Sidecar,
            0x08 => FrameType::Cancel,
            0x09 => FrameType::Error,
            _ => return None,
        })
    }
}

/// Result of looking at a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameStatus {
    /// Not a whole frame yet: the buffer must hold at least this many bytes in total.
    NeedMore(usize),
    /// A whole frame: its type byte and the payload's range in the buffer; the frame
    /// occupies `..payload.end`.
    Complete { ty: u8, payload: Range<usize> },
}

/// Decodes the frame at the start of `buf`. `max_frame` limits message frames,
/// `max_sidecar` limits sidecar payloads (data bytes, without the sidecar's flags and hash).
pub fn decode_frame(
    buf: &[u8],
    max_frame: u32,
    max_sidecar: u64,
) -> Result<FrameStatus, LimitExceeded> {
    if buf.len() < HEADER_LEN {
        return Ok(FrameStatus::NeedMore(HEADER_LEN));
    }
    let ty = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as u64;
    if ty == FrameType::Sidecar as u8 {
        use crate::message::{SIDECAR_HEADER_LEN, SIDECAR_TRAILER_LEN};
        let data = len.saturating_sub((SIDECAR_HEADER_LEN + SIDECAR_TRAILER_LEN) as u64);
        crate::limits::check(Limit::MaxSidecarBytesPerCall, max_sidecar, data)?;
    } else {
        crate::limits::check(Limit::MaxFrame, max_frame as u64, len)?;
    }
    let total = HEADER_LEN + len as usize;
    if buf.len() < total {
        return Ok(FrameStatus::NeedMore(total));
    }
    Ok(FrameStatus::Complete {
        ty,
        payload: HEADER_LEN..total,
    })
}

/// Appends a frame header for a payload of `len` bytes.
pub fn put_header(out: &mut Vec<u8>, ty: u8, len: usize) {
    out.push(ty);
    let len = u32::try_from(len).expect("frame payload longer than u32::MAX");
    out.extend_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_more_then_complete() {
        let frame = [0x08, 0, 0, 0, 2, 0x91, 0x07];
        for cut in 0..frame.len() {
            assert!(matches!(
                decode_frame(&frame[..cut], 100, 100),
                Ok(FrameStatus::NeedMore(_))
            ));
        }
        assert_eq!(
            decode_frame(&frame, 100, 100),
            Ok(FrameStatus::Complete {
                ty: 8,
                payload: 5..7
            })
        );
    }

    #[test]
    fn length_checked_first() {
        let e = decode_frame(&[0x02, 0xff, 0xff, 0xff, 0xff], 1024, 0).unwrap_err();
        assert_eq!(e.limit, Limit::MaxFrame);
        assert_eq!(e.seen, u32::MAX as u64);
    }
}
