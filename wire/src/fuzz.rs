//! Fuzz targets: plain functions over arbitrary bytes, driven by `cargo test` over the saved
//! corpus in `wire/fuzz-corpus/` and a bounded seeded loop (see `tests/fuzz.rs`). No
//! nightly toolchain or cargo-fuzz needed; each target must never panic.
//!
//! Invariant: for any input, every target returns normally, and no allocation exceeds the
//! frame limit configured in [`fuzz_limits`] (the test harness checks this with a counting
//! allocator).

use crate::connection::{Connection, Side, StreamId};
use crate::frame::{decode_frame, FrameStatus};
use crate::limits::{Config, Limits};
use crate::message::{decode_message, encode_plain, Hello, Message, PROTOCOL_VERSION};
use crate::names::NameCache;
use crate::store::BlobStore;
use crate::value::{decode_value, encode_value};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;

/// The limits the fuzz targets decode under (1 MiB frames, depth 64).
pub fn fuzz_limits() -> Limits {
    Limits {
        max_frame: 1 << 20,
        max_sidecar_bytes_per_call: 1 << 20,
        ..Limits::default()
    }
}

/// Decodes a buffer as a sequence of frames and messages.
pub fn fuzz_frames(bytes: &[u8]) {
    let limits = fuzz_limits();
    let buf = Bytes::copy_from_slice(bytes);
    // One cache for the whole input, as a connection keeps one: names decoded again (the
    // re-encoded message's, a later frame's) come from it.
    let mut names = NameCache::default();
    let mut pos = 0;
    while pos < buf.len() {
        match decode_frame(
            &buf[pos..],
            limits.max_frame,
            limits.max_sidecar_bytes_per_call,
        ) {
            Ok(FrameStatus::Complete { ty, payload }) => {
                let p = buf.slice(pos + payload.start..pos + payload.end);
                if let Ok(msg) = decode_message(ty, &p, &limits, &|_| None, Some(&mut names)) {
                    // Whatever decodes must re-encode and decode to the same message.
                    let again = encode_plain(&msg);
                    let f = Bytes::from(again);
                    if let Ok(FrameStatus::Complete { ty, payload }) =
                        decode_frame(&f, u32::MAX, u64::MAX)
                    {
                        let m2 = decode_message(
                            ty,
                            &f.slice(payload),
                            &limits,
                            &|_| None,
                            Some(&mut names),
                        );
                        if !matches!(msg, Message::Call(_) | Message::Response(_)) {
                            assert_eq!(m2.as_ref().ok(), Some(&msg), "re-encode differs");
                        }
                    }
                }
                pos += payload.end;
            }
            _ => break,
        }
    }
}

/// Decodes a buffer as one value; a value that decodes must round-trip.
pub fn fuzz_value(bytes: &[u8]) {
    let buf = Bytes::copy_from_slice(bytes);
    if let Ok(v) = decode_value(&buf, fuzz_limits().max_depth) {
        let mut out = Vec::new();
        encode_value(&v, &mut out);
        let again = decode_value(&Bytes::from(out), fuzz_limits().max_depth);
        // NaN != NaN; compare encodings instead of values.
        if let Ok(again) = again {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            encode_value(&v, &mut a);
            encode_value(&again, &mut b);
            assert_eq!(a, b, "value did not round-trip");
        } else {
            panic!("re-encoded value failed to decode");
        }
    }
}

/// Feeds a buffer to a server connection: a valid hello, then the bytes split across the
/// control stream and a call stream.
pub fn fuzz_connection(bytes: &[u8]) {
    let mut config = Config::new("fuzz");
    config.limits = fuzz_limits();
    let store = BlobStore::new(1 << 20).shared();
    let mut conn = Connection::new(Side::Server, config, store, Arc::new(|_| Ok(())));
    let now = Instant::now();
    let hello = encode_plain(&Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        node: "peer".into(),
        capabilities: vec![],
        max_frame: 1 << 20,
        sidecar_retain: 1 << 20,
    }));
    conn.handle_stream_data(StreamId(0), Bytes::from(hello), now);
    let split = bytes
        .first()
        .map_or(0, |b| *b as usize % (bytes.len().max(1)));
    let data = Bytes::copy_from_slice(bytes);
    conn.handle_stream_data(StreamId(4), data.slice(..split), now);
    conn.handle_stream_data(StreamId(4), data.slice(split..), now);
    conn.handle_stream_data(StreamId(0), data.clone(), now);
    conn.handle_stream_finished(StreamId(4), now);
    while conn.poll_transmit().is_some() {}
    while conn.poll_event().is_some() {}
}
