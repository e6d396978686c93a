//! Wire messages: their Rust types, and their encoding as frame payloads.
//!
//! A message frame's payload is a *header* — a MessagePack array produced by rmp-serde from
//! a plain serde struct (structs serialise as arrays, fields in declaration order) —
//! followed, for the two messages that carry Skiff values (`Call`, `Response`), by the
//! values encoded with the hand-written codec in [`crate::value`], each one MessagePack
//! object. The payload must be consumed exactly: trailing bytes are an error.
//!
//! The sidecar frame is the one raw frame: `flags:u8 data[..] hash[32]` (the hash last, so a
//! sender can hash the data while it sends it).
//!
//! Invariants:
//! - Wire types are separate from VM types: only [`skiff_vm::Portable`] (the value codec's
//!   subject) and hashes/function ids appear here.
//! - Before serde sees a header, [`crate::value::object_len`] delimits it and checks its
//!   nesting depth and every container length against the bytes present, so serde never
//!   recurses deeply nor trusts a hostile length; sequences are pre-allocated at most
//!   [`PREALLOC_CAP`] elements.

use crate::arena::FRAME_START_CAPACITY;
use crate::frame::{put_header, FrameType, HEADER_LEN};
use crate::limits::{check, Limit, LimitExceeded, Limits};
use crate::names::NameCache;
use crate::pack;
use crate::value::{
    decode_list_at, decode_value_at, encode_value_unhashed, hash_sidecars, object_len, SidecarHash,
    SidecarLookup, SidecarOut, UnhashedSidecar, ValueError,
};
use bytes::Bytes;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use skiff_vm::{BlobHash, FunctionId, Portable};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// The protocol version this build speaks (checked at hello).
pub const PROTOCOL_VERSION: u32 = 2;
/// The ALPN protocol id.
pub const ALPN: &[u8] = b"skiff/2";
/// Bytes before the data in a sidecar frame payload: flags (1).
pub const SIDECAR_HEADER_LEN: usize = 1;
/// Bytes after the data in a sidecar frame payload: the data's SHA-256 (32). It comes last so
/// that a sender can hash the data while it sends it.
pub const SIDECAR_TRAILER_LEN: usize = 32;
/// Sidecar flag: the receiver retains this sidecar for the rest of the connection.
pub const SIDECAR_RETAIN: u8 = 0x01;
/// Largest pre-allocation of a decoded sequence, in elements.
pub const PREALLOC_CAP: usize = 1024;

/// Hello: first message on the control stream, both directions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub node: String,
    #[serde(deserialize_with = "bounded_vec")]
    pub capabilities: Vec<String>,
    /// The largest message frame this side accepts.
    pub max_frame: u32,
    /// Sidecar bytes this side retains on the peer's behalf (0: no sidecar dedup).
    pub sidecar_retain: u64,
}

/// What a call runs: a function by hash, or a function the callee exports by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Function(FunctionId),
    /// Shared: a connection decodes the same few names call after call ([`NameCache`]).
    Name(Arc<str>),
}

/// A call request (values decoded).
#[derive(Clone, Debug, PartialEq)]
pub struct CallRequest {
    pub call_id: u64,
    pub target: Target,
    /// Relative deadline in milliseconds, if the caller has one.
    pub deadline_ms: Option<u64>,
    /// The calling node's name (shared, as [`Target::Name`]'s).
    pub caller: Arc<str>,
    /// Nodes the call has already passed through, outermost first (excluding `caller`).
    pub hops: Vec<String>,
    /// Application-defined call context (e.g. trace ids); nil when unused.
    pub context: Portable,
    pub args: Vec<Portable>,
    /// The caller finished its send side of the stream with this request: nothing more
    /// comes on it (no blobs, no `Cancel`), and its fin is no evidence of anything.
    pub sealed: bool,
}

/// A call request's parts by reference: what a caller encodes without first moving them,
/// and a copy of its own name, into a [`CallRequest`].
#[derive(Clone, Copy, Debug)]
pub struct CallRef<'a> {
    pub call_id: u64,
    pub target: &'a Target,
    pub deadline_ms: Option<u64>,
    pub caller: &'a str,
    pub hops: &'a [String],
    pub context: &'a Portable,
    pub args: &'a [Portable],
    pub sealed: bool,
}

impl CallRequest {
    /// The request by reference.
    pub fn borrowed(&self) -> CallRef<'_> {
        CallRef {
            call_id: self.call_id,
            target: &self.target,
            deadline_ms: self.deadline_ms,
            caller: &self.caller,
            hops: &self.hops,
            context: &self.context,
            args: &self.args,
            sealed: self.sealed,
        }
    }
}

/// Typed error kinds of a failed call.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The script threw; `value` holds what it threw.
    Thrown,
    /// A runtime error in the callee's VM.
    Runtime,
    /// The callee's policy refused the call; nothing ran.
    Refused,
    /// An exported name that does not exist.
    NotFound,
    /// Blobs the call needs were never supplied.
    MissingBlobs,
    /// A pushed blob or sidecar did not match its hash.
    HashMismatch,
    /// A pushed blob failed to decode or verify.
    VerifyFailed,
    /// A limit was exceeded (the message names it and the size seen).
    Limit,
    Cancelled,
    DeadlineExceeded,
    /// The peer violated the protocol.
    Protocol,
    /// The connection closed before the call finished.
    ConnectionLost,
    /// A kind this build does not know (forward compatibility).
    Other(String),
}

impl ErrorKind {
    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorKind::Thrown => "thrown",
            ErrorKind::Runtime => "runtime",
            ErrorKind::Refused => "refused",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MissingBlobs => "missing_blobs",
            ErrorKind::HashMismatch => "hash_mismatch",
            ErrorKind::VerifyFailed => "verify_failed",
            ErrorKind::Limit => "limit",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::Protocol => "protocol",
            ErrorKind::ConnectionLost => "connection_lost",
            ErrorKind::Other(s) => s,
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> ErrorKind {
        match s {
            "thrown" => ErrorKind::Thrown,
            "runtime" => ErrorKind::Runtime,
            "refused" => ErrorKind::Refused,
            "not_found" => ErrorKind::NotFound,
            "missing_blobs" => ErrorKind::MissingBlobs,
            "hash_mismatch" => ErrorKind::HashMismatch,
            "verify_failed" => ErrorKind::VerifyFailed,
            "limit" => ErrorKind::Limit,
            "cancelled" => ErrorKind::Cancelled,
            "deadline_exceeded" => ErrorKind::DeadlineExceeded,
            "protocol" => ErrorKind::Protocol,
            "connection_lost" => ErrorKind::ConnectionLost,
            other => ErrorKind::Other(other.to_owned()),
        }
    }
}

/// A failed call, as the caller sees it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct RemoteError {
    pub kind: ErrorKind,
    pub message: String,
    /// The remote stack trace, innermost frame first, one line per frame.
    pub trace: Box<[String]>,
    /// The thrown value for [`ErrorKind::Thrown`], nil otherwise.
    pub value: Portable,
}

impl RemoteError {
    /// An error with no trace and no value.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> RemoteError {
        RemoteError {
            kind,
            message: message.into(),
            trace: Box::default(),
            value: Portable::Nil,
        }
    }

    /// A limit error.
    pub fn limit(e: LimitExceeded) -> RemoteError {
        RemoteError::new(ErrorKind::Limit, e.to_string())
    }
}

/// A call response (values decoded).
#[derive(Clone, Debug, PartialEq)]
pub struct CallResponse {
    pub call_id: u64,
    pub result: Result<Portable, RemoteError>,
}

/// An error reply: the peer could not handle a frame we sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Machine-readable: `unknown_message`, `malformed`, `unexpected`, `limit`,
    /// `version_mismatch`, `hash_mismatch`, `too_many_offences`.
    pub code: String,
    pub message: String,
    /// The type byte of the frame being complained about (0 when not about one frame).
    pub frame_type: u8,
}

/// Every message, decoded.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Hello(Hello),
    Call(CallRequest),
    Response(CallResponse),
    /// Negotiation request: "which of these blobs do you lack?"
    BlobQuery(Vec<BlobHash>),
    /// Negotiation response: "send me these".
    BlobWant(Vec<BlobHash>),
    BlobPush {
        hash: BlobHash,
        blob: Bytes,
    },
    Sidecar {
        hash: SidecarHash,
        retain: bool,
        data: Bytes,
    },
    Cancel {
        call_id: u64,
    },
    Error(ErrorReply),
}

/// Why a frame's payload could not be decoded as a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("unknown message type 0x{0:02x}")]
    UnknownType(u8),
    #[error("malformed {ty:?} message: {why}")]
    Malformed { ty: FrameType, why: String },
    #[error("in a {ty:?} message: {err}")]
    Value { ty: FrameType, err: ValueError },
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
    #[error("{n} trailing bytes after a {ty:?} message")]
    Trailing { ty: FrameType, n: usize },
}

// ---------------------------------------------------------------------------------------
// serde helpers

/// A 32-byte hash as MessagePack `bin 8` of length 32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HashBin([u8; 32]);

impl Serialize for HashBin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for HashBin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HashBin;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 32-byte bin")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<HashBin, E> {
                let arr: [u8; 32] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(HashBin(arr))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// A borrowed `bin` (sliced out of the frame afterwards, no copy).
struct BorrowedBin<'a>(&'a [u8]);

impl Serialize for BorrowedBin<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for BorrowedBin<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = BorrowedBin<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a bin")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
                Ok(BorrowedBin(v))
            }
        }
        d.deserialize_bytes(V(std::marker::PhantomData))
    }
}

/// [`bounded_vec`], as an owned `Cow`.
fn bounded_owned<'de, 'a, D, T>(d: D) -> Result<Cow<'a, [T]>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Clone,
{
    bounded_vec(d).map(Cow::Owned)
}

/// Deserialises a sequence with a bounded pre-allocation.
fn bounded_vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(PREALLOC_CAP));
            while let Some(x) = seq.next_element()? {
                out.push(x);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V(std::marker::PhantomData))
}

/// Wire form of [`Target`]: `[hash, member]` or a name string (borrowed from the payload
/// by the hand decoder).
#[derive(Debug, PartialEq)]
enum TargetWire<'a> {
    Function(HashBin, u32),
    Name(Cow<'a, str>),
}

#[cfg(test)]
impl Serialize for TargetWire<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        match self {
            TargetWire::Function(h, m) => {
                let mut t = s.serialize_tuple(2)?;
                t.serialize_element(h)?;
                t.serialize_element(m)?;
                t.end()
            }
            TargetWire::Name(n) => s.serialize_str(n),
        }
    }
}

impl<'de> Deserialize<'de> for TargetWire<'_> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TargetWire<'static>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[hash, member] or an exported name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TargetWire<'static>, E> {
                Ok(TargetWire::Name(Cow::Owned(v.to_owned())))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<TargetWire<'static>, A::Error> {
                let h: HashBin = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let m: u32 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                Ok(TargetWire::Function(h, m))
            }
        }
        d.deserialize_any(V)
    }
}

/// A call's header, as decoded. Encoding writes it by hand ([`put_call_header`]); its
/// serde encoding is what the tests hold that to.
#[derive(Debug, PartialEq, Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct CallHeader<'a> {
    call_id: u64,
    target: TargetWire<'a>,
    deadline_ms: Option<u64>,
    caller: Cow<'a, str>,
    #[serde(deserialize_with = "bounded_owned")]
    hops: Cow<'a, [String]>,
    /// Sent (as a sixth element) only when true.
    #[serde(default, skip_serializing_if = "is_false")]
    sealed: bool,
}

#[cfg(test)]
fn is_false(b: &bool) -> bool {
    !b
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct ErrorHeader {
    kind: String,
    message: String,
    #[serde(deserialize_with = "bounded_vec")]
    trace: Vec<String>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct ResponseHeader {
    call_id: u64,
    error: Option<ErrorHeader>,
}

#[derive(Serialize, Deserialize)]
struct HashList {
    #[serde(deserialize_with = "bounded_vec")]
    hashes: Vec<HashBin>,
}

#[derive(Serialize, Deserialize)]
struct PushHeader<'a> {
    hash: HashBin,
    #[serde(borrow)]
    blob: BorrowedBin<'a>,
}

impl<'a> PushHeader<'a> {
    fn blob(&self) -> &'a [u8] {
        self.blob.0
    }
}

#[derive(Serialize, Deserialize)]
struct CancelHeader {
    call_id: u64,
}

// ---------------------------------------------------------------------------------------
// Encoding

/// Starts a frame of type `ty` in `out` (emptied first) whose payload starts with `header`
/// (a struct: rmp-serde writes it as an array); more of the payload may follow, then
/// [`end_frame`] fills in its length.
fn begin_frame<T: Serialize>(out: &mut Vec<u8>, ty: FrameType, header: &T) {
    start_frame(out, ty);
    // Writing into a Vec cannot fail.
    let _ = rmp_serde::encode::write(out, header);
}

/// Empties `out` and writes the header of a frame of type `ty` whose length
/// [`end_frame`] sets.
fn start_frame(out: &mut Vec<u8>, ty: FrameType) {
    out.clear();
    put_header(out, ty as u8, 0);
}

/// The call header of `c` (a [`CallHeader`]) as its serde encoding writes it, written by
/// hand: a call's header is on every call's path.
fn put_call_header(out: &mut Vec<u8>, c: &CallRef<'_>) {
    pack::array_len(out, if c.sealed { 6 } else { 5 });
    pack::uint(out, c.call_id);
    match c.target {
        Target::Function(f) => {
            pack::array_len(out, 2);
            pack::bin(out, &f.blob.0);
            pack::uint(out, u64::from(f.member));
        }
        Target::Name(n) => pack::str(out, n),
    }
    match c.deadline_ms {
        Some(ms) => pack::uint(out, ms),
        None => pack::nil(out),
    }
    pack::str(out, c.caller);
    pack::array_len(out, c.hops.len());
    for hop in c.hops {
        pack::str(out, hop);
    }
    if c.sealed {
        pack::bool(out, true);
    }
}

/// Sets the length in the header [`begin_frame`] wrote to the payload that follows it.
fn end_frame(out: &mut [u8]) {
    let len = out.len() - HEADER_LEN;
    let len = u32::try_from(len).expect("frame payload longer than u32::MAX");
    out[1..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
}

/// A frame in `out` that is nothing but `header`.
fn header_frame<T: Serialize>(out: &mut Vec<u8>, ty: FrameType, header: &T) {
    begin_frame(out, ty, header);
    end_frame(out);
}

/// Encodes a message as one complete frame. Bytes values of at least `sidecar_threshold`
/// bytes in a `Call`/`Response` are replaced by sidecar references and appended to
/// `sidecars`; the caller must send those sidecar frames (see [`encode_sidecar`]) on the
/// same stream *before* this frame.
pub fn encode_message(
    msg: &Message,
    sidecar_threshold: usize,
    sidecars: &mut Vec<SidecarOut>,
) -> Vec<u8> {
    let mut unhashed = Vec::new();
    let mut out = encode_message_unhashed(msg, sidecar_threshold, &mut unhashed);
    hash_sidecars(unhashed, &mut out, sidecars);
    out
}

/// Like [`encode_message`], without hashing the sidecars: their references in the frame hold
/// zeros where the hash goes, at the offsets (in the returned frame) each
/// [`UnhashedSidecar`] lists. The frame is written into one buffer.
pub fn encode_message_unhashed(
    msg: &Message,
    sidecar_threshold: usize,
    sidecars: &mut Vec<UnhashedSidecar>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_START_CAPACITY);
    encode_message_unhashed_into(msg, sidecar_threshold, sidecars, &mut out);
    out
}

/// [`encode_message_unhashed`] into `out` (emptied first), so that a buffer can be reused.
pub fn encode_message_unhashed_into(
    msg: &Message,
    sidecar_threshold: usize,
    sidecars: &mut Vec<UnhashedSidecar>,
    out: &mut Vec<u8>,
) {
    match msg {
        Message::Hello(h) => header_frame(out, FrameType::Hello, h),
        Message::Call(c) => {
            encode_call_unhashed_into(&c.borrowed(), sidecar_threshold, sidecars, out)
        }
        Message::Response(r) => {
            let value = match &r.result {
                Ok(v) => {
                    // `[call_id, nil]`, a `ResponseHeader` without error, written by hand.
                    start_frame(out, FrameType::Response);
                    pack::array_len(out, 2);
                    pack::uint(out, r.call_id);
                    pack::nil(out);
                    v
                }
                Err(e) => {
                    let error = ErrorHeader {
                        kind: e.kind.as_str().to_owned(),
                        message: e.message.clone(),
                        trace: e.trace.to_vec(),
                    };
                    let header = ResponseHeader {
                        call_id: r.call_id,
                        error: Some(error),
                    };
                    begin_frame(out, FrameType::Response, &header);
                    &e.value
                }
            };
            encode_value_unhashed(value, out, sidecar_threshold, sidecars);
            end_frame(out)
        }
        Message::BlobQuery(hs) | Message::BlobWant(hs) => {
            let ty = if matches!(msg, Message::BlobQuery(_)) {
                FrameType::BlobQuery
            } else {
                FrameType::BlobWant
            };
            let list = HashList {
                hashes: hs.iter().map(|h| HashBin(h.0)).collect(),
            };
            header_frame(out, ty, &list)
        }
        Message::BlobPush { hash, blob } => header_frame(
            out,
            FrameType::BlobPush,
            &PushHeader {
                hash: HashBin(hash.0),
                blob: BorrowedBin(blob),
            },
        ),
        Message::Sidecar { hash, retain, data } => {
            *out = encode_sidecar(*hash, *retain, data);
        }
        Message::Cancel { call_id } => {
            header_frame(out, FrameType::Cancel, &CancelHeader { call_id: *call_id })
        }
        Message::Error(e) => header_frame(out, FrameType::Error, e),
    }
}

/// [`encode_message_unhashed_into`] of a `Call` given by reference.
pub fn encode_call_unhashed_into(
    c: &CallRef<'_>,
    sidecar_threshold: usize,
    sidecars: &mut Vec<UnhashedSidecar>,
    out: &mut Vec<u8>,
) {
    start_frame(out, FrameType::Call);
    put_call_header(out, c);
    encode_value_unhashed(c.context, out, sidecar_threshold, sidecars);
    // The args array is written directly (no intermediate Portable::List clone).
    pack::array_len(out, c.args.len());
    for a in c.args {
        encode_value_unhashed(a, out, sidecar_threshold, sidecars);
    }
    end_frame(out)
}

/// Encodes a sidecar frame. (The data is copied into the frame here; a transport wanting
/// zero-copy sends writes [`sidecar_frame_head`], `data`, then the hash.)
pub fn encode_sidecar(hash: SidecarHash, retain: bool, data: &[u8]) -> Vec<u8> {
    let mut out = sidecar_frame_head(retain, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(&hash.0);
    out
}

/// What precedes the data of a sidecar frame carrying `len` bytes: the frame header and
/// the flags (6 bytes). The data's hash follows the data.
pub fn sidecar_frame_head(retain: bool, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + SIDECAR_HEADER_LEN);
    put_header(
        &mut out,
        FrameType::Sidecar as u8,
        SIDECAR_HEADER_LEN + len + SIDECAR_TRAILER_LEN,
    );
    out.push(if retain { SIDECAR_RETAIN } else { 0 });
    out
}

// ---------------------------------------------------------------------------------------
// Decoding

fn malformed(ty: FrameType, why: impl fmt::Display) -> MessageError {
    MessageError::Malformed {
        ty,
        why: why.to_string(),
    }
}

/// Decodes the serde header at the start of `payload`, returning it and its length.
fn decode_header<'a, T: Deserialize<'a>>(
    ty: FrameType,
    payload: &'a [u8],
    limits: &Limits,
) -> Result<(T, usize), MessageError> {
    let n = object_len(payload, limits.max_depth).map_err(|err| match err {
        ValueError::Limit(l) => MessageError::Limit(l),
        err => MessageError::Value { ty, err },
    })?;
    let value = rmp_serde::from_slice(&payload[..n]).map_err(|e| malformed(ty, e))?;
    Ok((value, n))
}

// ---------------------------------------------------------------------------------------
// The two headers every call carries, in the encoding `encode_message` writes, are decoded
// by hand (rmp-serde's generic path costs more than the rest of a small call's decoding).
// Anything else — another valid encoding, an error response, a malformed header — returns
// `None`, and the serde decoder, which accepts every encoding and words the errors, decides.
// For what the hand decoders accept they give what the serde decoder gives (tested).

/// A call header `[call_id, target, deadline_ms, caller, hops(, sealed)]` and its length.
fn canonical_call_header<'a>(p: &'a [u8], limits: &Limits) -> Option<(CallHeader<'a>, usize)> {
    // Containers nest two deep (target and hops inside the header); a lower limit is the
    // serde path's to report.
    if limits.max_depth < 2 {
        return None;
    }
    let mut r = HeaderReader { buf: p, pos: 0 };
    let fields = r.array_len()?;
    if fields != 5 && fields != 6 {
        return None;
    }
    let call_id = r.uint()?;
    let target = if r.peek()? == 0x92 {
        r.pos += 1;
        let hash = r.hash()?;
        TargetWire::Function(hash, u32::try_from(r.uint()?).ok()?)
    } else {
        TargetWire::Name(Cow::Borrowed(r.str()?))
    };
    let deadline_ms = r.nil_or(HeaderReader::uint)?;
    let caller = Cow::Borrowed(r.str()?);
    let hop_count = r.array_len()?;
    if hop_count > limits.max_hops {
        return None;
    }
    let mut hops = Vec::with_capacity(hop_count);
    for _ in 0..hop_count {
        hops.push(r.str()?.to_owned());
    }
    let sealed = fields == 6 && r.bool()?;
    let header = CallHeader {
        call_id,
        target,
        deadline_ms,
        caller,
        hops: Cow::Owned(hops),
        sealed,
    };
    Some((header, r.pos))
}

/// A successful response's header `[call_id, nil]` and its length.
fn canonical_ok_header(p: &[u8], limits: &Limits) -> Option<(ResponseHeader, usize)> {
    if limits.max_depth < 1 {
        return None;
    }
    let mut r = HeaderReader { buf: p, pos: 0 };
    if r.array_len()? != 2 {
        return None;
    }
    let call_id = r.uint()?;
    if r.take(1)? != [pack::NIL] {
        return None;
    }
    Some((
        ResponseHeader {
            call_id,
            error: None,
        },
        r.pos,
    ))
}

/// Reads the MessagePack forms the header encoder writes; `None` for any other.
struct HeaderReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> HeaderReader<'a> {
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let bytes = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(bytes)
    }
    fn be(&mut self, n: usize) -> Option<u64> {
        Some(self.take(n)?.iter().fold(0, |acc, &b| acc << 8 | b as u64))
    }
    fn array_len(&mut self) -> Option<usize> {
        match self.take(1)?[0] {
            m @ 0x90..=0x9f => Some((m & 0x0f) as usize),
            0xdc => Some(self.be(2)? as usize),
            _ => None,
        }
    }
    fn uint(&mut self) -> Option<u64> {
        match self.take(1)?[0] {
            m @ 0x00..=0x7f => Some(m as u64),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            _ => None,
        }
    }
    fn str(&mut self) -> Option<&'a str> {
        let len = match self.take(1)?[0] {
            m @ 0xa0..=0xbf => (m & 0x1f) as usize,
            0xd9 => self.be(1)? as usize,
            0xda => self.be(2)? as usize,
            0xdb => self.be(4)? as usize,
            _ => return None,
        };
        std::str::from_utf8(self.take(len)?).ok()
    }
    fn hash(&mut self) -> Option<HashBin> {
        if self.take(2)? != [0xc4, 32] {
            return None;
        }
        Some(HashBin(self.take(32)?.try_into().ok()?))
    }
    fn bool(&mut self) -> Option<bool> {
        match self.take(1)?[0] {
            0xc2 => Some(false),
            0xc3 => Some(true),
            _ => None,
        }
    }
    /// `Some(None)` for nil, else what `read` makes of the value.
    fn nil_or<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.peek()? == pack::NIL {
            self.pos += 1;
            return Some(None);
        }
        read(self).map(Some)
    }
}

fn exact(ty: FrameType, payload: &[u8], used: usize) -> Result<(), MessageError> {
    match payload.len() - used {
        0 => Ok(()),
        n => Err(MessageError::Trailing { ty, n }),
    }
}

fn hashes(list: Vec<HashBin>, limits: &Limits) -> Result<Vec<BlobHash>, MessageError> {
    check(
        Limit::MaxNegotiationList,
        limits.max_negotiation_list as u64,
        list.len() as u64,
    )?;
    Ok(list.into_iter().map(|h| BlobHash(h.0)).collect())
}

/// Decodes a frame payload of type `ty`. Sidecar references in values are resolved with
/// `sidecars`; a call's target and caller names come from `names` when it holds them (a
/// connection's cache; `None` for a one-off decode, which a cache left cold would only
/// slow down). Pure but for `names`: no I/O, no panics, allocations bounded by the payload.
pub fn decode_message(
    ty: u8,
    payload: &Bytes,
    limits: &Limits,
    sidecars: SidecarLookup<'_>,
    mut names: Option<&mut NameCache>,
) -> Result<Message, MessageError> {
    let fty = FrameType::from_u8(ty).ok_or(MessageError::UnknownType(ty))?;
    let p: &[u8] = payload;
    let value_err = |err: ValueError| match err {
        ValueError::Limit(l) => MessageError::Limit(l),
        err => MessageError::Value { ty: fty, err },
    };
    match fty {
        FrameType::Hello => {
            let (h, n): (Hello, usize) = decode_header(fty, p, limits)?;
            exact(fty, p, n)?;
            Ok(Message::Hello(h))
        }
        FrameType::Call => {
            let (h, n): (CallHeader<'_>, usize) = match canonical_call_header(p, limits) {
                Some(fast) => fast,
                None => decode_header(fty, p, limits)?,
            };
            check(Limit::MaxHops, limits.max_hops as u64, h.hops.len() as u64)?;
            let (context, n) = decode_value_at(payload, n, p.len(), limits.max_depth, sidecars)
                .map_err(value_err)?;
            let (args, n) = decode_list_at(payload, n, p.len(), limits.max_depth, sidecars)
                .map_err(value_err)?
                .ok_or_else(|| malformed(fty, "args must be an array"))?;
            exact(fty, p, n)?;
            let mut name = |n: &str| match names.as_deref_mut() {
                Some(cache) => cache.get(n),
                None => Arc::from(n),
            };
            Ok(Message::Call(CallRequest {
                call_id: h.call_id,
                target: match h.target {
                    TargetWire::Function(hash, member) => Target::Function(FunctionId {
                        blob: BlobHash(hash.0),
                        member,
                    }),
                    TargetWire::Name(n) => Target::Name(name(&n)),
                },
                deadline_ms: h.deadline_ms,
                caller: name(&h.caller),
                hops: h.hops.into_owned(),
                sealed: h.sealed,
                context,
                args,
            }))
        }
        FrameType::Response => {
            let (h, n): (ResponseHeader, usize) = match canonical_ok_header(p, limits) {
                Some(fast) => fast,
                None => decode_header(fty, p, limits)?,
            };
            let (value, n) = decode_value_at(payload, n, p.len(), limits.max_depth, sidecars)
                .map_err(value_err)?;
            exact(fty, p, n)?;
            let result = match h.error {
                None => Ok(value),
                Some(e) => Err(RemoteError {
                    kind: ErrorKind::parse(&e.kind),
                    message: e.message,
                    trace: e.trace.into(),
                    value,
                }),
            };
            Ok(Message::Response(CallResponse {
                call_id: h.call_id,
                result,
            }))
        }
        FrameType::BlobQuery | FrameType::BlobWant => {
            let (h, n): (HashList, usize) = decode_header(fty, p, limits)?;
            exact(fty, p, n)?;
            let hs = hashes(h.hashes, limits)?;
            Ok(if fty == FrameType::BlobQuery {
                Message::BlobQuery(hs)
            } else {
                Message::BlobWant(hs)
            })
        }
        FrameType::BlobPush => {
            let (h, n): (PushHeader<'_>, usize) = decode_header(fty, p, limits)?;
            exact(fty, p, n)?;
            let blob = if h.blob.0.is_empty() {
                Bytes::new()
            } else {
                payload.slice_ref(h.blob())
            };
            Ok(Message::BlobPush {
                hash: BlobHash(h.hash.0),
                blob,
            })
        }
        FrameType::Sidecar => {
            if p.len() < SIDECAR_HEADER_LEN + SIDECAR_TRAILER_LEN {
                return Err(malformed(fty, "shorter than its flags and 32-byte hash"));
            }
            let end = p.len() - SIDECAR_TRAILER_LEN;
            let mut h = [0u8; 32];
            h.copy_from_slice(&p[end..]);
            let flags = p[0];
            if flags & !SIDECAR_RETAIN != 0 {
                return Err(malformed(fty, format!("unknown flags 0x{flags:02x}")));
            }
            Ok(Message::Sidecar {
                hash: SidecarHash(h),
                retain: flags & SIDECAR_RETAIN != 0,
                data: payload.slice(SIDECAR_HEADER_LEN..end),
            })
        }
        FrameType::Cancel => {
            let (h, n): (CancelHeader, usize) = decode_header(fty, p, limits)?;
            exact(fty, p, n)?;
            Ok(Message::Cancel { call_id: h.call_id })
        }
        FrameType::Error => {
            let (h, n): (ErrorReply, usize) = decode_header(fty, p, limits)?;
            exact(fty, p, n)?;
            Ok(Message::Error(h))
        }
    }
}

/// Encodes a message with no sidecar extraction (every bytes value inline).
pub fn encode_plain(msg: &Message) -> Vec<u8> {
    let mut none = Vec::new();
    encode_message(msg, usize::MAX, &mut none)
}

/// Decodes one complete frame (header included) that must span all of `frame`;
/// sidecar references fail. For tests, tools and fuzzing.
pub fn decode_frame_exact(frame: &Bytes, limits: &Limits) -> Result<Message, MessageError> {
    use crate::frame::{decode_frame, FrameStatus};
    match decode_frame(frame, limits.max_frame, limits.max_sidecar_bytes_per_call)? {
        FrameStatus::NeedMore(n) => Err(MessageError::Malformed {
            ty: FrameType::from_u8(frame.first().copied().unwrap_or(0)).unwrap_or(FrameType::Error),
            why: format!("incomplete frame: {} of {n} bytes", frame.len()),
        }),
        FrameStatus::Complete { ty, payload } => {
            let fty = FrameType::from_u8(ty).ok_or(MessageError::UnknownType(ty))?;
            if payload.end != frame.len() {
                return Err(MessageError::Trailing {
                    ty: fty,
                    n: frame.len() - payload.end,
                });
            }
            decode_message(ty, &frame.slice(payload), limits, &|_| None, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded<T: Serialize>(header: &T) -> Vec<u8> {
        let mut out = Vec::new();
        rmp_serde::encode::write(&mut out, header).unwrap();
        out
    }

    fn call_header() -> impl Strategy<Value = CallHeader<'static>> {
        let target = prop_oneof![
            (any::<[u8; 32]>(), any::<u32>())
                .prop_map(|(h, m)| TargetWire::Function(HashBin(h), m)),
            ".{0,40}".prop_map(|n| TargetWire::Name(Cow::Owned(n))),
        ];
        (
            any::<u64>(),
            target,
            proptest::option::of(any::<u64>()),
            ".{0,300}",
            proptest::collection::vec(".{0,12}", 0..40),
            any::<bool>(),
        )
            .prop_map(
                |(call_id, target, deadline_ms, caller, hops, sealed)| CallHeader {
                    call_id,
                    target,
                    deadline_ms,
                    caller: Cow::Owned(caller),
                    hops: Cow::Owned(hops),
                    sealed,
                },
            )
    }

    proptest! {
        // What the encoder writes, the hand decoder reads as the serde decoder does.
        #[test]
        fn canonical_call_header_agrees(h in call_header(), extra in any::<u8>()) {
            let limits = Limits::default();
            let mut p = encoded(&h);
            let n = p.len();
            p.push(extra);
            let serde: (CallHeader<'_>, usize) =
                decode_header(FrameType::Call, &p, &limits).unwrap();
            if h.hops.len() <= limits.max_hops {
                prop_assert_eq!(canonical_call_header(&p, &limits), Some((h, n)));
            }
            prop_assert_eq!(serde.1, n);
        }

        // Whatever else the hand decoder accepts, it reads as the serde decoder does.
        #[test]
        fn hand_decoders_never_disagree(
            h in call_header(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let limits = Limits::default();
            let mut p = encoded(&h);
            for (at, byte) in flips {
                let i = at.index(p.len());
                p[i] = byte;
            }
            if let Some(fast) = canonical_call_header(&p, &limits) {
                let serde = decode_header(FrameType::Call, &p, &limits);
                prop_assert_eq!(serde.ok(), Some(fast));
            }
            if let Some(fast) = canonical_ok_header(&p, &limits) {
                let serde = decode_header(FrameType::Response, &p, &limits);
                prop_assert_eq!(serde.ok(), Some(fast));
            }
        }

        #[test]
        fn canonical_ok_header_agrees(call_id in any::<u64>()) {
            let limits = Limits::default();
            let h = ResponseHeader { call_id, error: None };
            let p = encoded(&h);
            prop_assert_eq!(canonical_ok_header(&p, &limits), Some((h, p.len())));
        }

        // The headers written by hand are the serde encodings, byte for byte.
        #[test]
        fn hand_written_headers_are_the_serde_encodings(h in call_header()) {
            let target = match &h.target {
                TargetWire::Function(hash, member) => Target::Function(FunctionId {
                    blob: BlobHash(hash.0),
                    member: *member,
                }),
                TargetWire::Name(name) => Target::Name(name.as_ref().into()),
            };
            let call = CallRef {
                call_id: h.call_id,
                target: &target,
                deadline_ms: h.deadline_ms,
                caller: &h.caller,
                hops: &h.hops,
                context: &Portable::Nil,
                args: &[],
                sealed: h.sealed,
            };
            let mut ours = Vec::new();
            put_call_header(&mut ours, &call);
            prop_assert_eq!(ours, encoded(&h));

            let response = Message::Response(CallResponse {
                call_id: h.call_id,
                result: Ok(Portable::Nil),
            });
            let frame = encode_message(&response, usize::MAX, &mut Vec::new());
            let header = encoded(&ResponseHeader { call_id: h.call_id, error: None });
            prop_assert_eq!(&frame[HEADER_LEN..HEADER_LEN + header.len()], &header[..]);
        }
    }

    #[test]
    fn other_encodings_go_to_serde() {
        let limits = Limits::default();
        // An error response, and a call id written as a signed int: valid, not canonical.
        let failed = ResponseHeader {
            call_id: 7,
            error: Some(ErrorHeader {
                kind: "thrown".into(),
                message: "no".into(),
                trace: vec![],
            }),
        };
        assert_eq!(canonical_ok_header(&encoded(&failed), &limits), None);
        let signed = [0x92, 0xd0, 0x07, 0xc0];
        assert_eq!(canonical_ok_header(&signed, &limits), None);
        let serde: (ResponseHeader, usize) =
            decode_header(FrameType::Response, &signed, &limits).unwrap();
        assert_eq!(serde.0.call_id, 7);
    }
}
