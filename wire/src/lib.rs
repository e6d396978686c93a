//! # skiff-wire: the Skiff protocol without I/O
//!
//! The one decision everything here follows from: **the protocol is a deterministic state
//! machine that never touches a socket or a clock.** A [`Connection`] takes stream bytes,
//! stream ends and the current time, and gives back bytes to write ([`Transmit`]) and
//! things that happened ([`Event`]). The transport crate owns QUIC (quinn) and TLS and does
//! nothing but move bytes between QUIC streams and this machine; this is how `quinn-proto`
//! relates to `quinn`.
//!
//! What that buys: every protocol property — a warm call costs one round trip and zero
//! blob bytes, a cold call at most two round trips and exactly the missing blobs, a bad
//! hash is rejected and punished, every limit holds, an unknown message gets an error
//! reply — is tested in-memory with a simulated pair and a virtual clock (`tests/pair.rs`),
//! byte for byte and round trip for round trip, with no sockets, threads or flakiness. The
//! decoders are pure functions over buffers, so the same code is fuzzed by plain tests.
//!
//! Layers, bottom up:
//! - [`limits`]: every configurable limit, each with a named error.
//! - [`frame`]: `type:u8 length:u32 payload`; lengths checked before allocation.
//! - [`value`]: the hand-written Portable ↔ MessagePack codec (bin for bytes, ext for
//!   closures, ranges and sidecar references, depth-limited).
//! - [`message`]: the message types; serde headers (rmp-serde arrays) + value sections.
//! - [`pool`]: receive buffers for large frames, reused once the received value is dropped.
//! - [`store`]: the content-addressed, LRU, pinning, optionally persisted blob store.
//! - [`idmap`]: maps keyed by sequentially allocated ids, with a multiplicative hash.
//! - [`names`]: the names a connection decodes call after call, shared instead of copied.
//! - [`connection`]: hello, negotiation, sidecars, calls both ways, cancellation, deadlines.
//! - [`fuzz`]: fuzz targets as plain functions.
//!
//! The byte-level specification is `docs/protocol.md`.
//!
//! ## Driving a connection
//!
//! A transport owns one [`Connection`] per QUIC connection and loops: feed what arrived
//! ([`Connection::handle_stream_data`], [`Connection::handle_stream_finished`],
//! [`Connection::handle_stream_reset`], [`Connection::handle_timeout`] at
//! [`Connection::poll_timeout`]), then drain [`Connection::poll_transmit`] (open a QUIC
//! bidirectional stream the first time it names a locally-initiated [`StreamId`]; write
//! `data`; finish the stream if `fin`; if [`Transmit::report_hash`], hash `data` with a
//! [`SidecarHasher`] while writing it and report the hash with
//! [`Connection::handle_sidecar_sent`]) and [`Connection::poll_event`]. Here the "network"
//! is two in-memory queues:
//!
//! ```
//! use skiff_wire::*;
//! use skiff_vm::Portable;
//! use std::{sync::Arc, time::Instant};
//!
//! let store = || BlobStore::new(64 << 20).shared();
//! let accept = || -> Verifier { Arc::new(|_: &skiff_vm::Blob| Ok(())) };
//! let mut a = Connection::new(Side::Client, Config::new("a"), store(), accept());
//! let mut b = Connection::new(Side::Server, Config::new("b"), store(), accept());
//! let now = Instant::now();
//! let call = a
//!     .start_call(CallOptions::named("echo", vec![Portable::Int(1)]), &BlobSet::new(), now)
//!     .unwrap();
//! let mut result = None;
//! for _ in 0..10 {
//!     while let Some(t) = a.poll_transmit() {
//!         if t.report_hash {
//!             a.handle_sidecar_sent(t.stream, Some(SidecarHash::of(&t.data)));
//!         }
//!         b.handle_stream_data(t.stream, t.data, now);
//!         if t.fin { b.handle_stream_finished(t.stream, now) }
//!     }
//!     while let Some(e) = b.poll_event() {
//!         if let Event::IncomingCall(c) = e {
//!             b.respond(c.id, Ok(Portable::List(c.args)));
//!         }
//!     }
//!     while let Some(t) = b.poll_transmit() {
//!         if t.report_hash {
//!             b.handle_sidecar_sent(t.stream, Some(SidecarHash::of(&t.data)));
//!         }
//!         a.handle_stream_data(t.stream, t.data, now);
//!         if t.fin { a.handle_stream_finished(t.stream, now) }
//!     }
//!     while let Some(e) = a.poll_event() {
//!         if let Event::CallResult { id, result: r, .. } = e {
//!             assert_eq!(id, call);
//!             result = Some(r);
//!         }
//!     }
//! }
//! assert_eq!(result.unwrap().unwrap(), Portable::List(vec![Portable::Int(1)]));
//! ```

mod arena;
pub mod connection;
pub mod frame;
pub mod fuzz;
pub mod idmap;
pub mod limits;
pub mod message;
pub mod names;
mod pack;
pub mod pool;
pub mod store;
pub mod value;

pub use connection::{
    CallError, CallId, CallOptions, CloseReason, Connection, Event, IncomingCall, PeerInfo, Side,
    Stats, StreamId, Transmit, CONTROL_STREAM,
};
pub use frame::{decode_frame, FrameStatus, FrameType};
pub use limits::{Config, Limit, LimitExceeded, Limits};
pub use message::{
    decode_message, encode_message, CallRequest, CallResponse, ErrorKind, ErrorReply, Hello,
    Message, MessageError, RemoteError, Target, ALPN, PROTOCOL_VERSION,
};
pub use pool::BufferPool;
pub use store::{BlobSet, BlobSource, BlobStore, SharedStore, StoreError, Verifier};
pub use value::{SidecarHash, SidecarHasher, ValueError};
