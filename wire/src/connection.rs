//! The per-connection protocol state machine (sans-IO).
//!
//! A [`Connection`] is fed stream bytes, stream ends and time, and produces [`Transmit`]s
//! (bytes to write on a stream) and [`Event`]s (calls to run, results, cancellations).
//! It never touches a socket or a clock: the transport maps [`StreamId`]s to QUIC streams
//! and passes `now` in, as `quinn` does with `quinn-proto`.
//!
//! Streams (QUIC numbering, bidirectional only: `id = 4 * index + initiator`, initiator
//! 0 = client/dialer, 1 = server/acceptor):
//! - stream 0 (the client's first) is the control stream: hello both ways, error replies;
//! - every call runs on its own stream opened by the caller; either side may open calls.
//!
//! Invariants:
//! - Nothing the peer sends can panic this code or make it allocate beyond the configured
//!   limits: frame lengths are checked before buffering, every decode is bounded.
//! - Every blob received is re-hashed before it is stored or verified; a mismatch stores
//!   nothing, fails the call with `hash_mismatch`, and `max_offences` of them close the
//!   connection.
//! - An incoming call's closure is pinned in the store from the time its blobs are known
//!   until the node responds, the call is cancelled, or the connection closes.
//! - The known-held records (blobs and sidecars the peer holds) only grow on evidence: a
//!   blob on a successful response (or the peer pushing it to us); a sidecar when the peer
//!   sent it to us with the retain flag, or when it answered on (or finished) the stream
//!   that carried ours.
//! - An unknown or malformed message is answered with an error reply on its stream; it
//!   never closes the connection.
//! - A sidecar counts at least `SIDECAR_MIN_CHARGE` (1 KiB) against every sidecar budget
//!   (a call's `max_sidecar_bytes_per_call`, the two announced retain budgets), and one
//!   received under `SIDECAR_COPY_BELOW` is copied out of the buffer it arrived in: what a
//!   peer makes this side hold stays within those budgets, however small its sidecars.
//! - A sidecar's remembered hash is used only for the very buffer it was computed from,
//!   which the connection holds for as long as it remembers it.

use crate::arena::FrameArena;
use crate::frame::{decode_frame, FrameStatus, FrameType, HEADER_LEN};
use crate::idmap::IdMap;
use crate::limits::{check, Config, Limit, LimitExceeded};
use crate::message::{
    decode_message, encode_call_unhashed_into, encode_message, encode_message_unhashed_into,
    sidecar_frame_head, CallRef, CallRequest, CallResponse, ErrorKind, ErrorReply, Hello, Message,
    MessageError, RemoteError, Target, PROTOCOL_VERSION, SIDECAR_HEADER_LEN, SIDECAR_TRAILER_LEN,
};
use crate::names::NameCache;
use crate::pool::BufferPool;
use crate::store::{closure, missing_from, BlobSource, SharedStore, StoreError, Verifier};
use crate::value::{fill_refs, SidecarHash, SidecarHasher, UnhashedSidecar};
use bytes::{Buf, Bytes, BytesMut};
use skiff_vm::{BlobHash, FunctionId, Portable};
use smallvec::SmallVec;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Which end of the connection this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The dialer: opens the control stream and sends hello first.
    Client,
    /// The acceptor.
    Server,
}

/// An abstract bidirectional stream id, numbered as QUIC numbers bidirectional streams.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

impl StreamId {
    /// The `index`th bidirectional stream opened by `initiator`.
    pub fn new(initiator: Side, index: u64) -> StreamId {
        StreamId(index << 2 | matches!(initiator, Side::Server) as u64)
    }
    pub fn initiator(self) -> Side {
        if self.0 & 1 == 0 {
            Side::Client
        } else {
            Side::Server
        }
    }
    pub fn index(self) -> u64 {
        self.0 >> 2
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = match self.initiator() {
            Side::Client => "c",
            Side::Server => "s",
        };
        write!(f, "stream {}{}", who, self.index())
    }
}

/// The control stream (hello, connection-level error replies).
pub const CONTROL_STREAM: StreamId = StreamId(0);

/// A call is identified by the stream it runs on.
pub type CallId = StreamId;

/// Bytes to write on a stream, in order; `fin` finishes the send side afterwards.
#[derive(Clone, Debug, PartialEq)]
pub struct Transmit {
    pub stream: StreamId,
    pub data: Bytes,
    pub fin: bool,
    /// `data` is a large sidecar's data, not hashed yet: the transport hashes it while it
    /// writes it ([`SidecarHasher`]; `skiff-transport` does so on another thread, beside the
    /// write) and reports the hash with [`Connection::handle_sidecar_sent`]. The stream's
    /// later frames (the sidecar's hash, then the message referencing it) wait for that;
    /// other streams do not.
    pub report_hash: bool,
}

/// A sidecar's hash once it is known: at once for a sidecar hashed before it is sent, else
/// when the transport reports it. Shared by the frames that need it (the sidecar frame's
/// trailer, the references in the message body, a sealed call's copy kept for a resend).
type HashCell = Arc<OnceLock<SidecarHash>>;

/// An encoded frame on its way out. Cloning one shares its bytes.
#[derive(Clone)]
enum OutFrame {
    Whole(Bytes),
    /// A sidecar frame: its head (frame header and flags), the caller's bytes (their own
    /// [`Transmit`], never copied), then the hash.
    Sidecar {
        head: Bytes,
        data: Bytes,
        hash: HashCell,
    },
    /// A Call or Response whose references to sidecars hashed while sent are filled in when
    /// it is written: its sidecars precede it on the stream, so their hashes are known then.
    /// Each hole: the offsets of one sidecar's references, and its hash.
    Body {
        frame: Vec<u8>,
        holes: Vec<(Vec<usize>, HashCell)>,
    },
}

/// The frames of one message, or of a call's first flight: usually one.
type FrameList = SmallVec<[OutFrame; 1]>;

/// A stream whose sidecar data the transport is hashing as it sends it: the frames behind the
/// data wait for the hash (in order, with their `fin`).
struct Held {
    hash: HashCell,
    behind: VecDeque<(OutFrame, bool)>,
}

/// What a sidecar counts against a sidecar budget (a call's, a retain budget) at least:
/// holding one costs a few hundred bytes of bookkeeping whatever its size, so a budget
/// also bounds how many sidecars a peer can make this side hold (docs/protocol.md §5, §6).
const SIDECAR_MIN_CHARGE: u64 = 1 << 10;

/// A received sidecar smaller than this is copied out of the buffer it arrived in (a
/// frame, or a datagram's worth of stream data), which it would otherwise keep alive whole
/// for as long as it is held.
const SIDECAR_COPY_BELOW: usize = 64 << 10;

/// What a sidecar of `len` bytes counts against a sidecar budget.
fn sidecar_charge(len: usize) -> u64 {
    (len as u64).max(SIDECAR_MIN_CHARGE)
}

/// A sidecar of at least this many bytes is hashed while it is sent (by the transport) when
/// nothing needs its hash first: it will not be retained and no sidecar the peer may already
/// hold, nor another of the same message, has its length. Smaller ones are hashed at once.
const HASH_WHILE_SENDING: usize = 1 << 20;

/// What the peer said about itself at hello.
pub type PeerInfo = Hello;

/// A call for the node to run.
#[derive(Clone, Debug, PartialEq)]
pub struct IncomingCall {
    pub id: CallId,
    pub target: Target,
    pub context: Portable,
    pub args: Vec<Portable>,
    /// When the node must give up: now + min(caller's deadline, `max_call_duration`).
    pub deadline: Instant,
    pub caller: Arc<str>,
    pub hops: Vec<String>,
    /// The closure of the target and of every function in the arguments and context,
    /// dependencies first; all present (and pinned) in the store until the call ends.
    pub blobs: Vec<BlobHash>,
}

impl IncomingCall {
    /// The hop chain a nested call made while running this one should carry: `hops` (moved
    /// out, left empty), then `caller`.
    pub fn take_nested_hops(&mut self) -> Vec<String> {
        let mut hops = std::mem::take(&mut self.hops);
        hops.push(self.caller.to_string());
        hops
    }
}

/// What to call.
#[derive(Clone, Debug, PartialEq)]
pub struct CallOptions {
    pub target: Target,
    pub args: Vec<Portable>,
    pub context: Portable,
    /// Relative deadline; the call fails with `deadline_exceeded` after it.
    pub deadline: Option<Duration>,
    /// Hop chain (use [`IncomingCall::take_nested_hops`] for a call made inside a call).
    pub hops: Vec<String>,
    /// A number of the caller's choosing, given back with the call's result
    /// ([`Event::CallResult`]): a caller that knows its calls by its own ids needs no map
    /// from [`CallId`]s to them. Not sent to the peer.
    pub tag: u64,
}

impl CallOptions {
    /// A call of a function by hash with these arguments, no deadline.
    pub fn function(func: FunctionId, args: Vec<Portable>) -> CallOptions {
        CallOptions {
            target: Target::Function(func),
            args,
            context: Portable::Nil,
            deadline: None,
            hops: Vec::new(),
            tag: 0,
        }
    }

    /// A call of an exported name.
    pub fn named(name: impl Into<Arc<str>>, args: Vec<Portable>) -> CallOptions {
        CallOptions {
            target: Target::Name(name.into()),
            ..CallOptions::function(
                FunctionId {
                    blob: BlobHash([0; 32]),
                    member: 0,
                },
                args,
            )
        }
    }
}

/// Why the connection ended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CloseReason {
    #[error("protocol version mismatch: we speak {ours}, the peer {theirs}")]
    VersionMismatch { ours: u32, theirs: u32 },
    #[error("the peer refused the connection: {0}")]
    PeerRefused(String),
    #[error("{count} hash mismatches from the peer")]
    TooManyOffences { count: u32 },
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("closed locally: {0}")]
    Local(String),
    #[error("connection lost: {0}")]
    Lost(String),
}

/// Events for the node.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Hello exchanged; calls may flow.
    Connected(PeerInfo),
    /// Run this and [`Connection::respond`].
    IncomingCall(IncomingCall),
    /// An outgoing call finished.
    CallResult {
        id: CallId,
        /// The call's [`CallOptions::tag`].
        tag: u64,
        result: Result<Portable, RemoteError>,
    },
    /// Stop running an incoming call (`Cancelled`, `DeadlineExceeded` or `ConnectionLost`);
    /// a later `respond` for it is ignored.
    CallCancelled { id: CallId, reason: ErrorKind },
    /// The peer sent an error reply about something we sent.
    PeerError { stream: StreamId, reply: ErrorReply },
    /// The connection is finished; the transport should close it.
    Closed(CloseReason),
}

/// Errors starting a call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("the connection is closed")]
    Closed,
    #[error("blob {0} is not available locally")]
    MissingBlob(BlobHash),
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
}

/// Counters, for tests and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub blobs_sent: u64,
    pub blob_bytes_sent: u64,
    pub queries_sent: u64,
    pub wants_sent: u64,
    pub sidecars_sent: u64,
    pub sidecar_bytes_sent: u64,
    /// Bytes of outgoing sidecars hashed to send them (before, or by the transport while it
    /// sends them). A value sent again from a buffer kept for the connection (sent or
    /// received with the retain flag) is not hashed again.
    pub sidecar_bytes_hashed: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    pub blobs_received: u64,
    pub blob_bytes_received: u64,
    pub sidecar_bytes_received: u64,
    pub hash_mismatches: u64,
    pub error_replies_sent: u64,
}

/// What a stream has received and not yet handled. Small (it is part of every call's entry):
/// what only a large frame or a sidecar needs is boxed, and absent until needed.
#[derive(Default)]
struct RecvState {
    /// A partial frame (not a large one once its buffer of exact size exists).
    buf: BytesMut,
    /// Total bytes the partial frame needs (from its header; [`HEADER_LEN`] until the
    /// header is complete).
    need: usize,
    /// The partial frame, if it is a large one (see [`LARGE_FRAME`]).
    large: Option<Box<LargeFrame>>,
    sidecar_bytes: u64,
    /// The stream's sidecars until the message that references them is decoded. Boxed: a
    /// map is 48 bytes that every call's entry would carry and move, for the few calls with
    /// sidecars (which allocate for their data anyway).
    #[allow(clippy::box_collection)]
    sidecars: Option<Box<HashMap<SidecarHash, Bytes>>>,
}

/// The receive state of `stream` (`side` is ours), if it is read: the control stream's, or
/// the state kept with the call on it. A free function, so that the caller keeps its other
/// fields (the limits, the buffer pool) while it holds the state.
fn recv_state<'a>(
    side: Side,
    control: &'a mut RecvState,
    outgoing: &'a mut IdMap<StreamId, OutCall>,
    incoming: &'a mut IdMap<StreamId, InCall>,
    stream: StreamId,
) -> Option<&'a mut RecvState> {
    if stream == CONTROL_STREAM {
        Some(control)
    } else if stream.initiator() == side {
        outgoing.get_mut(&stream).map(|call| &mut call.recv)
    } else {
        incoming
            .get_mut(&stream)
            .and_then(|call| call.recv.as_mut())
    }
}

/// A large partial frame ([`LARGE_FRAME`]).
#[derive(Default)]
struct LargeFrame {
    /// All of the frame, once its buffer of exact size exists (from the [`BufferPool`]).
    whole: Vec<u8>,
    /// The frame's bytes as received, until its buffer is allocated.
    parts: Vec<Bytes>,
    parts_len: usize,
    /// SHA-256 of a sidecar frame's data, computed as the bytes arrive.
    digest: Option<SidecarHasher>,
}

/// A frame of at least this many bytes is received without regrowing a buffer. If the
/// config's [`BufferPool`] holds an idle buffer that fits, every chunk is copied into it as it
/// arrives. Otherwise the chunks are kept as they arrive until half of the frame is there,
/// then copied into a new buffer of its exact size, which the rest is copied into directly.
/// Either way every byte is copied once and a new allocation is never more than twice the
/// bytes received (a declared length alone allocates nothing: at most it takes an idle
/// buffer from the pool). A sidecar's data is hashed as it arrives. Smaller frames grow a
/// buffer geometrically.
const LARGE_FRAME: usize = 1 << 20;

/// Where a sidecar's data starts in its frame: frame header, then hash and flags.
const SIDECAR_DATA_AT: usize = HEADER_LEN + SIDECAR_HEADER_LEN;

impl RecvState {
    /// Bytes of the partial frame held.
    fn buffered(&self) -> usize {
        self.buf.len()
            + self
                .large
                .as_ref()
                .map_or(0, |l| l.parts_len + l.whole.len())
    }

    /// The part of `bytes` (starting at offset `at` in the frame) that is sidecar data: after
    /// the frame header and flags, before the hash that ends the frame.
    fn sidecar_data_in<'a>(&self, at: usize, bytes: &'a [u8]) -> &'a [u8] {
        let end = self.need.saturating_sub(SIDECAR_TRAILER_LEN);
        let from = SIDECAR_DATA_AT.clamp(at, at + bytes.len()) - at;
        let to = end.clamp(at, at + bytes.len()) - at;
        &bytes[from..to.max(from)]
    }

    /// The partial frame's bytes, once assembled.
    fn assembled(&self) -> &[u8] {
        match &self.large {
            Some(l) if !l.whole.is_empty() => &l.whole,
            _ => &self.buf,
        }
    }

    /// Adds bytes of the partial frame (never beyond `need`).
    fn add(&mut self, data: Bytes, pool: &BufferPool) {
        // `need` reaches LARGE_FRAME only once the header has been read.
        if self.need < LARGE_FRAME {
            append(&mut self.buf, self.need, &data);
            return;
        }
        let at = self.buffered();
        if self.large.is_none() {
            let mut large = Box::<LargeFrame>::default();
            // No parts yet: whatever arrived before is in `buf`.
            let ty = self.buf.first().or(data.first()).copied();
            if ty == Some(FrameType::Sidecar as u8) {
                let mut digest = SidecarHasher::new();
                digest.update(self.sidecar_data_in(0, &self.buf));
                large.digest = Some(digest);
            }
            // An idle buffer of the pool is already memory of this process: taken now, each
            // chunk is copied while it is fresh in the cache, instead of keeping the chunks
            // (and quinn's datagram buffers under them) until half the frame is there.
            if let Some(mut whole) = pool.take_idle(self.need) {
                whole.extend_from_slice(&self.buf);
                self.buf = BytesMut::new();
                large.whole = whole;
            }
            self.large = Some(large);
        }
        let part = self.sidecar_data_in(at, &data);
        let need = self.need;
        let Some(large) = &mut self.large else {
            return;
        };
        if let Some(digest) = &mut large.digest {
            digest.update(part);
        }
        if large.whole.capacity() >= need {
            large.whole.extend_from_slice(&data);
        } else {
            large.parts_len += data.len();
            large.parts.push(data);
            if self.buffered() * 2 >= need {
                self.assemble(pool);
            }
        }
    }

    /// Moves the collected parts of a large frame into a buffer of its exact size.
    fn assemble(&mut self, pool: &BufferPool) {
        let size = self.need.max(self.buffered());
        let Some(large) = self.large.as_mut().filter(|l| !l.parts.is_empty()) else {
            return;
        };
        let mut whole = pool.take(size);
        whole.extend_from_slice(&self.buf);
        for part in large.parts.drain(..) {
            whole.extend_from_slice(&part);
        }
        large.parts_len = 0;
        large.whole = whole;
        self.buf = BytesMut::new();
    }

    /// The complete frame held (its first `len` bytes), leaving the state empty for the next.
    fn take_frame(&mut self, len: usize, pool: &BufferPool) -> Bytes {
        match self.large.take() {
            Some(large) if !large.whole.is_empty() => {
                debug_assert_eq!(
                    large.whole.len(),
                    len,
                    "a large frame's buffer holds one frame"
                );
                pool.freeze(large.whole)
            }
            _ => self.buf.split_to(len).freeze(),
        }
    }

    /// The frame is complete: the hash of its sidecar data, if it was computed on arrival.
    fn finish_frame(&mut self) -> Option<SidecarHash> {
        let digest = self.large.as_mut()?.digest.take()?;
        Some(digest.finish())
    }
}

struct OutCall {
    /// The id the node knows the call by: the stream it started on.
    id: CallId,
    /// [`CallOptions::tag`].
    tag: u64,
    /// What arrived on the call's stream (its response), for as long as the call is out.
    recv: RecvState,
    call_id: u64,
    /// The blobs the call ships; `None` when it references no function (a call of an
    /// exported name with plain values), which keeps such a call's entry small.
    blobs: Option<Box<CallBlobs>>,
    deadline: Option<Instant>,
    /// The call's frames, held back until the hello exchange completes.
    queued: Option<Box<Queued>>,
    /// Sidecars sent with the retain flag, awaiting evidence of receipt.
    retained_pending: Vec<SidecarHash>,
    want_rounds: u32,
    /// The request finished our send side of the stream (nothing was offered).
    sealed: bool,
    /// For a sealed call that ships blobs and has not moved: its sidecar frames and request,
    /// to send again on a new stream if the callee lacks blobs (`move_sealed_call`). Empty
    /// otherwise (a call that references no function cannot lack any).
    resend: FrameList,
}

/// A call made before the hello exchange completed. Its request is framed once the peer's
/// retain budget is known, so that its sidecars can be sent with RETAIN.
struct Queued {
    /// Frames ahead of the request: blob pushes, the query.
    ahead: FrameList,
    /// The request's sidecars, not framed yet.
    sidecars: Vec<UnhashedSidecar>,
    /// The request's frame, referencing them.
    request: Vec<u8>,
}

/// An outgoing call's blobs: the closure of everything it references, and how far their
/// negotiation got.
struct CallBlobs {
    closure: Vec<BlobHash>,
    bytes: HashMap<BlobHash, Bytes>,
    deps: HashMap<BlobHash, Vec<BlobHash>>,
    /// Hashes offered in the `BlobQuery`.
    offered: HashSet<BlobHash>,
    /// Hashes pushed on this call.
    sent: HashSet<BlobHash>,
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum Phase {
    /// Frames before the call request.
    Receiving,
    /// Request received, waiting for wanted blobs.
    Waiting,
    /// Handed to the node.
    Running,
    /// Response sent; waiting for the caller's fin (sidecar evidence).
    Responded,
}

struct InCall {
    call_id: u64,
    phase: Phase,
    /// The request, while the call waits for blobs it wanted (a warm call never waits: its
    /// request goes straight to the node, so this is boxed to keep the entry small).
    request: Option<Box<CallRequest>>,
    /// Blobs asked for with `BlobWant` and not pushed yet. Boxed, and absent until the first
    /// is asked for: a warm call asks for none, and its entry is moved into the map.
    #[allow(clippy::box_collection)]
    wanted: Option<Box<HashSet<BlobHash>>>,
    pinned: Vec<BlobHash>,
    blobs_received: usize,
    blob_bytes_received: u64,
    want_rounds: u32,
    deadline: Option<Instant>,
    retained_pending: Vec<SidecarHash>,
    /// Over the in-flight limit: answer the request with this error.
    reject: Option<Box<RemoteError>>,
    /// The request was sealed, or the caller's fin came while the call ran: the response
    /// ends the call, with no evidence that it was read (docs/protocol.md §6).
    caller_finished: bool,
    /// What arrives on the call's stream, until the caller's fin (after which more data is
    /// ignored) or the call's end.
    recv: Option<RecvState>,
}

impl InCall {
    /// No blob asked for is still missing.
    fn wants_nothing(&self) -> bool {
        self.wanted.as_ref().is_none_or(|w| w.is_empty())
    }
}

/// The sans-IO protocol state of one connection.
pub struct Connection {
    side: Side,
    config: Config,
    store: SharedStore,
    verifier: Verifier,
    peer: Option<Hello>,
    next_local: u64,
    /// Every peer-opened stream index below this has been seen.
    remote_watermark: u64,
    /// Peer-opened stream indices at or above the watermark that have been seen (streams
    /// may be opened out of order).
    remote_seen: std::collections::BTreeSet<u64>,
    next_call_id: u64,
    /// The SHA-256 of the sidecar data in the frame being handled, when it was computed as
    /// the frame arrived; set only for the duration of that frame's `handle_message`.
    arrived_digest: Option<SidecarHash>,
    /// The names calls from the peer carry (its own, the functions it calls).
    names: NameCache,
    /// What arrives on the control stream. A call stream's is kept with its call
    /// ([`OutCall::recv`], [`InCall::recv`]): a stream without a call has nothing to read.
    control_recv: RecvState,
    outgoing: IdMap<StreamId, OutCall>,
    /// Sealed calls moved to a new stream: the call's id → the stream it runs on now.
    moved: IdMap<CallId, StreamId>,
    incoming: IdMap<StreamId, InCall>,
    /// How many of `incoming` are answered ([`Phase::Responded`]), kept until the caller's
    /// evidence of receipt: the others count against `max_calls_in_flight`. Kept by
    /// [`Connection::respond`] and [`Connection::remove_incoming`], the only places a call
    /// enters or leaves that phase.
    responded: usize,
    /// Deadlines of outgoing and incoming calls, earliest first. An entry whose call ended,
    /// moved or was answered stays until it reaches the top, where `poll_timeout` drops it;
    /// the heap is rebuilt from the live calls when such entries outnumber them.
    deadlines: BinaryHeap<Reverse<(Instant, StreamId)>>,
    /// Call ids the peer cancelled on the control stream before their request arrived
    /// (oldest first, at most `max_calls_in_flight`).
    cancelled_unseen: VecDeque<u64>,
    /// Data (`None`: the stream's fin) that arrived on call streams before the peer's hello.
    early: Vec<(StreamId, Option<Bytes>)>,
    early_bytes: u64,
    peer_blobs: HashSet<BlobHash>,
    peer_sidecars: HashSet<SidecarHash>,
    /// Sidecars kept for this connection: those received with the retain flag and those
    /// we sent with it (the peer may reference either).
    retained: HashMap<SidecarHash, Bytes>,
    /// The same sidecars by where their bytes are (address, length), with their hash: a
    /// value sent again from the same buffer (a large argument passed call after call) is
    /// not hashed again. Each entry holds its buffer, so an address names the same
    /// unchanged bytes for as long as the entry lives (with the connection, as `retained`'s
    /// do; no more bytes than the two retain budgets allow).
    retained_at: HashMap<(usize, usize), (SidecarHash, Bytes)>,
    retained_by_peer: HashSet<SidecarHash>,
    retained_by_peer_bytes: u64,
    retained_for_peer: HashSet<SidecarHash>,
    retained_for_peer_bytes: u64,
    /// Lengths of the sidecars in `peer_sidecars` and `retained_for_peer`: a sidecar of
    /// another length cannot be one of them, so it needs no hash before it is sent.
    dedup_lens: HashSet<usize>,
    /// Streams waiting for the hash of sidecar data being sent.
    held: IdMap<StreamId, Held>,
    offences: u32,
    closed: Option<CloseReason>,
    transmits: VecDeque<Transmit>,
    /// Where outgoing frames are encoded and kept.
    arena: FrameArena,
    events: VecDeque<Event>,
    stats: Stats,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("side", &self.side)
            .field("node", &self.config.node_name)
            .field("peer", &self.peer.as_ref().map(|p| &p.node))
            .field("outgoing", &self.outgoing.len())
            .field("incoming", &self.incoming.len())
            .field("closed", &self.closed)
            .finish()
    }
}

impl Connection {
    /// A new connection. The client queues its hello on the control stream at once.
    pub fn new(side: Side, config: Config, store: SharedStore, verifier: Verifier) -> Connection {
        let mut c = Connection {
            side,
            config,
            store,
            verifier,
            peer: None,
            // The client's stream 0 is the control stream.
            next_local: if side == Side::Client { 1 } else { 0 },
            // The server's first remote stream (the client's index 0) is the control stream.
            remote_watermark: if side == Side::Server { 1 } else { 0 },
            remote_seen: Default::default(),
            next_call_id: 1,
            control_recv: RecvState::default(),
            outgoing: IdMap::default(),
            moved: IdMap::default(),
            incoming: IdMap::default(),
            responded: 0,
            deadlines: BinaryHeap::new(),
            cancelled_unseen: VecDeque::new(),
            early: Vec::new(),
            early_bytes: 0,
            peer_blobs: HashSet::new(),
            peer_sidecars: HashSet::new(),
            arrived_digest: None,
            names: NameCache::default(),
            retained: HashMap::new(),
            retained_at: HashMap::new(),
            retained_by_peer: HashSet::new(),
            retained_by_peer_bytes: 0,
            retained_for_peer: HashSet::new(),
            retained_for_peer_bytes: 0,
            dedup_lens: HashSet::new(),
            held: IdMap::default(),
            offences: 0,
            closed: None,
            transmits: VecDeque::new(),
            arena: FrameArena::default(),
            events: VecDeque::new(),
            stats: Stats::default(),
        };
        if side == Side::Client {
            c.send_hello();
        }
        c
    }

    // -----------------------------------------------------------------------------------
    // Accessors

    pub fn side(&self) -> Side {
        self.side
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// The peer's hello, once received.
    pub fn peer(&self) -> Option<&Hello> {
        self.peer.as_ref()
    }
    /// Hello exchanged in both directions.
    pub fn is_established(&self) -> bool {
        self.peer.is_some() && self.closed.is_none()
    }
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.closed.as_ref()
    }
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// Whether the peer is known to hold a blob.
    pub fn peer_holds(&self, hash: &BlobHash) -> bool {
        self.peer_blobs.contains(hash)
    }
    /// Whether the peer is known to hold a sidecar.
    pub fn peer_holds_sidecar(&self, hash: &SidecarHash) -> bool {
        self.peer_sidecars.contains(hash)
    }
    /// Outgoing calls not yet finished.
    pub fn calls_in_flight(&self) -> usize {
        self.outgoing.len()
    }

    // -----------------------------------------------------------------------------------
    // Output

    /// The next bytes to write, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest time [`Connection::handle_timeout`] must be called.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, stream))) = self.deadlines.peek() {
            if self.live_deadline(stream) == Some(at) {
                return Some(at);
            }
            self.deadlines.pop();
        }
        None
    }

    /// The deadline of the call on `stream` while it still needs one.
    fn live_deadline(&self, stream: StreamId) -> Option<Instant> {
        match self.outgoing.get(&stream) {
            Some(c) => c.deadline,
            None => self
                .incoming
                .get(&stream)
                .filter(|c| c.phase != Phase::Responded)
                .and_then(|c| c.deadline),
        }
    }

    /// Puts the deadline of the call on `stream` (just set) in the heap.
    fn track_deadline(&mut self, stream: StreamId, deadline: Option<Instant>) {
        let Some(at) = deadline else { return };
        self.deadlines.push(Reverse((at, stream)));
        if self.deadlines.len() > 2 * (self.outgoing.len() + self.incoming.len()) + 64 {
            let live = self.outgoing.keys().chain(self.incoming.keys());
            let rebuilt = live
                .filter_map(|&s| self.live_deadline(s).map(|at| Reverse((at, s))))
                .collect();
            self.deadlines = rebuilt;
        }
    }

    fn emit(&mut self, stream: StreamId, data: Vec<u8>, fin: bool) {
        let data = self.arena.freeze(data);
        self.emit_frame(stream, OutFrame::Whole(data), fin);
    }

    fn emit_frame(&mut self, stream: StreamId, frame: OutFrame, fin: bool) {
        if !self.held.is_empty() {
            if let Some(held) = self.held.get_mut(&stream) {
                held.behind.push_back((frame, fin));
                return;
            }
        }
        match frame {
            OutFrame::Whole(data) => self.push_frame_bytes(stream, data, fin),
            OutFrame::Body { mut frame, holes } => {
                for (refs, hash) in holes {
                    // Its sidecar precedes it on the stream, so the stream was held until
                    // the hash came.
                    debug_assert!(hash.get().is_some(), "a body is written after its sidecars");
                    if let Some(hash) = hash.get() {
                        fill_refs(&mut frame, &refs, *hash);
                    }
                }
                self.push_frame_bytes(stream, frame.into(), fin);
            }
            OutFrame::Sidecar { head, data, hash } => {
                self.stats.frames_sent += 1;
                self.stats.bytes_sent += (head.len() + data.len() + SIDECAR_TRAILER_LEN) as u64;
                self.push_transmit(stream, head, false, false);
                match hash.get() {
                    Some(known) => {
                        self.push_transmit(stream, data, false, false);
                        let trailer = Bytes::copy_from_slice(&known.0);
                        self.push_transmit(stream, trailer, fin, false);
                    }
                    None => {
                        self.push_transmit(stream, data, false, true);
                        let mut behind = VecDeque::new();
                        if fin {
                            behind.push_back((OutFrame::Whole(Bytes::new()), true));
                        }
                        self.held.insert(stream, Held { hash, behind });
                    }
                }
            }
        }
    }

    fn push_frame_bytes(&mut self, stream: StreamId, data: Bytes, fin: bool) {
        if !data.is_empty() {
            self.stats.frames_sent += 1;
        }
        self.stats.bytes_sent += data.len() as u64;
        self.push_transmit(stream, data, fin, false);
    }

    fn push_transmit(&mut self, stream: StreamId, data: Bytes, fin: bool, report_hash: bool) {
        self.transmits.push_back(Transmit {
            stream,
            data,
            fin,
            report_hash,
        });
    }

    fn finish_stream(&mut self, stream: StreamId) {
        self.emit_frame(stream, OutFrame::Whole(Bytes::new()), true);
    }

    /// The transport wrote the data of a [`Transmit::report_hash`] transmit on `stream`:
    /// `Some` with its SHA-256, or `None` if the stream went away first. The sidecar's hash
    /// and the frames that waited for it follow (or, on `None`, are dropped).
    pub fn handle_sidecar_sent(&mut self, stream: StreamId, hash: Option<SidecarHash>) {
        let Some(held) = self.held.remove(&stream) else {
            return;
        };
        let Some(hash) = hash else {
            return;
        };
        let _ = held.hash.set(hash);
        self.push_transmit(stream, Bytes::copy_from_slice(&hash.0), false, false);
        for (frame, fin) in held.behind {
            self.emit_frame(stream, frame, fin);
        }
    }

    fn error_reply(&mut self, stream: StreamId, code: &str, message: String, frame_type: u8) {
        tracing::debug!(?stream, code, %message, "error reply");
        self.stats.error_replies_sent += 1;
        let frame = encode_message(
            &Message::Error(ErrorReply {
                code: code.to_owned(),
                message,
                frame_type,
            }),
            usize::MAX,
            &mut Vec::new(),
        );
        self.emit(stream, frame, false);
    }

    fn send_hello(&mut self) {
        let hello = Hello {
            version: PROTOCOL_VERSION,
            node: self.config.node_name.clone(),
            capabilities: self.config.capabilities.clone(),
            max_frame: self.config.limits.max_frame,
            sidecar_retain: self.config.sidecar_retain_bytes,
        };
        let frame = encode_message(&Message::Hello(hello), usize::MAX, &mut Vec::new());
        self.emit(CONTROL_STREAM, frame, false);
    }

    fn peer_max_frame(&self) -> u64 {
        self.peer.as_ref().map_or(u32::MAX, |p| p.max_frame) as u64
    }

    /// Appends to `frames` those of a Call or Response (`body`) whose values the encoder took
    /// `outs` out of: the sidecar frames, then the body. Sidecars the peer holds are skipped;
    /// the retain flag is set while the peer's announced budget allows; a large sidecar
    /// nothing needs the hash of first is hashed while it is sent ([`HASH_WHILE_SENDING`]),
    /// the others now.
    fn sidecar_frames(
        &mut self,
        outs: Vec<UnhashedSidecar>,
        mut body: Vec<u8>,
        pending: &mut Vec<SidecarHash>,
        frames: &mut FrameList,
    ) {
        if outs.is_empty() {
            frames.push(OutFrame::Whole(self.arena.freeze(body)));
            return;
        }
        let budget = self.peer.as_ref().map_or(0, |p| p.sidecar_retain);
        let mut holes = Vec::new();
        let mut hashed_now = HashSet::new();
        let mut same_len: HashMap<usize, usize> = HashMap::new();
        for s in &outs {
            *same_len.entry(s.data.len()).or_default() += 1;
        }
        for s in outs {
            let len = s.data.len();
            let memo = self.retained_hash(&s.data);
            let while_sending = memo.is_none()
                && len >= HASH_WHILE_SENDING
                && self.retained_for_peer_bytes + sidecar_charge(len) > budget
                && !self.dedup_lens.contains(&len)
                && same_len[&len] == 1;
            let hash = HashCell::default();
            if memo.is_none() {
                self.stats.sidecar_bytes_hashed += len as u64;
            }
            if while_sending {
                holes.push((s.refs, hash.clone()));
            } else {
                let known = memo.unwrap_or_else(|| SidecarHash::of(&s.data));
                s.fill(&mut body, known);
                if self.peer_sidecars.contains(&known) || !hashed_now.insert(known) {
                    continue;
                }
                let _ = hash.set(known);
            }
            let retain = match hash.get() {
                Some(h) if self.retained_for_peer.contains(h) => true,
                Some(h) if self.retained_for_peer_bytes + sidecar_charge(len) <= budget => {
                    self.retained_for_peer.insert(*h);
                    self.retained_for_peer_bytes += sidecar_charge(len);
                    self.dedup_lens.insert(len);
                    self.retain(*h, &s.data);
                    true
                }
                _ => false,
            };
            if retain {
                pending.extend(hash.get());
            }
            self.stats.sidecars_sent += 1;
            self.stats.sidecar_bytes_sent += len as u64;
            frames.push(OutFrame::Sidecar {
                head: sidecar_frame_head(retain, len).into(),
                data: s.data,
                hash,
            });
        }
        frames.push(if holes.is_empty() {
            OutFrame::Whole(self.arena.freeze(body))
        } else {
            OutFrame::Body { frame: body, holes }
        });
    }

    // -----------------------------------------------------------------------------------
    // Calls out

    /// Starts a call. Computes the closure of the target and of every function in the
    /// arguments and context from `source`, and sends (in one flight, on a new stream):
    /// eager pushes of small unknown blobs, a `BlobQuery` offering the other unknown ones,
    /// the sidecars, and the request. See docs/protocol.md, "Negotiation".
    pub fn start_call(
        &mut self,
        opts: CallOptions,
        source: &dyn BlobSource,
        now: Instant,
    ) -> Result<CallId, CallError> {
        if self.closed.is_some() {
            return Err(CallError::Closed);
        }
        let mut roots: Vec<FunctionId> = Vec::new();
        if let Target::Function(f) = &opts.target {
            roots.push(*f);
        }
        opts.context.functions(&mut roots);
        for a in &opts.args {
            a.functions(&mut roots);
        }
        let (mut frames, blobs) = self.negotiate(&roots, source)?;
        // Nothing offered: the callee will ask for nothing, so the request finishes the
        // stream (one flight, no trailing fin).
        let sealed = blobs.as_ref().is_none_or(|b| b.offered.is_empty());
        let max_frame = self.peer_max_frame();
        let call_id = self.next_call_id;
        let req = CallRef {
            call_id,
            target: &opts.target,
            deadline_ms: opts
                .deadline
                .map(|d| d.as_millis().min(u64::MAX as u128) as u64),
            caller: &self.config.node_name,
            hops: &opts.hops,
            context: &opts.context,
            args: &opts.args,
            sealed,
        };
        let mut outs = Vec::new();
        let mut call_frame = self.arena.buffer();
        encode_call_unhashed_into(
            &req,
            self.config.sidecar_threshold,
            &mut outs,
            &mut call_frame,
        );
        check(
            Limit::MaxFrame,
            max_frame,
            (call_frame.len() - HEADER_LEN) as u64,
        )?;
        self.next_call_id += 1;
        let stream = StreamId::new(self.side, self.next_local);
        self.next_local += 1;
        let mut call = OutCall {
            id: stream,
            tag: opts.tag,
            recv: RecvState::default(),
            call_id,
            blobs,
            deadline: opts.deadline.map(|d| now + d),
            queued: None,
            retained_pending: Vec::new(),
            want_rounds: 0,
            sealed,
            resend: FrameList::new(),
        };
        if self.is_established() {
            self.frame_request(&mut call, outs, call_frame, &mut frames);
            self.emit_frames(stream, frames, sealed);
        } else {
            // Framed once the peer's hello tells its retain budget.
            call.queued = Some(Box::new(Queued {
                ahead: frames,
                sidecars: outs,
                request: call_frame,
            }));
        }
        let deadline = call.deadline;
        self.outgoing.insert(stream, call);
        self.track_deadline(stream, deadline);
        Ok(stream)
    }

    /// The blob side of a new call whose code is `roots`: the frames that go ahead of its
    /// request (blobs pushed eagerly, a query offering the rest) and what the call keeps of
    /// its blobs while their negotiation lasts. A call of a function by name with plain
    /// values references no code: nothing to negotiate, nothing kept.
    fn negotiate(
        &mut self,
        roots: &[FunctionId],
        source: &dyn BlobSource,
    ) -> Result<(FrameList, Option<Box<CallBlobs>>), CallError> {
        if roots.is_empty() {
            return Ok((FrameList::new(), None));
        }
        let order = closure(roots.iter().map(|f| f.blob), |h| source.blob_deps(h))
            .map_err(CallError::MissingBlob)?;
        let mut bytes = HashMap::with_capacity(order.len());
        let mut deps = HashMap::with_capacity(order.len());
        for h in &order {
            let b = source.blob_bytes(h).ok_or(CallError::MissingBlob(*h))?;
            bytes.insert(*h, b);
            deps.insert(*h, source.blob_deps(h).unwrap_or_default());
        }

        // Negotiation: known-held → nothing; small unknown → eager push; rest → offered.
        let mut frames = FrameList::new();
        let mut offered = Vec::new();
        let mut sent = HashSet::new();
        let mut eager_total = 0usize;
        let unknown: Vec<BlobHash> = order
            .iter()
            .filter(|h| !self.peer_blobs.contains(h))
            .copied()
            .collect();
        for h in &unknown {
            let b = &bytes[h];
            if b.len() <= self.config.eager_push_max_blob
                && eager_total + b.len() <= self.config.eager_push_budget
            {
                eager_total += b.len();
                sent.insert(*h);
                frames.push(OutFrame::Whole(self.push_frame(*h, b.clone())));
            } else {
                offered.push(*h);
            }
        }
        let offered_set: HashSet<BlobHash> = offered.iter().copied().collect();
        if !offered.is_empty() {
            check(
                Limit::MaxNegotiationList,
                self.config.limits.max_negotiation_list as u64,
                offered.len() as u64,
            )?;
            self.stats.queries_sent += 1;
            frames.push(OutFrame::Whole(
                encode_message(&Message::BlobQuery(offered), usize::MAX, &mut Vec::new()).into(),
            ));
        }
        Ok((
            frames,
            Some(Box::new(CallBlobs {
                closure: order,
                bytes,
                deps,
                offered: offered_set,
                sent,
            })),
        ))
    }

    /// Appends to `frames` the request `body` of `call`, behind its sidecars: the call keeps
    /// those sent with RETAIN (until evidence that the peer read them) and, if it is sealed
    /// and ships blobs, the frames themselves (shared, not copied) in case the callee lacks
    /// blobs our record says it holds: the call then moves to a new stream
    /// (`move_sealed_call`).
    fn frame_request(
        &mut self,
        call: &mut OutCall,
        sidecars: Vec<UnhashedSidecar>,
        body: Vec<u8>,
        frames: &mut FrameList,
    ) {
        let first = frames.len();
        self.sidecar_frames(sidecars, body, &mut call.retained_pending, frames);
        if call.sealed && call.blobs.is_some() {
            call.resend = frames[first..].iter().cloned().collect();
        }
    }

    /// Writes `frames` on `stream`; the last one finishes the stream if `fin` (a sealed
    /// request, a response).
    fn emit_frames(&mut self, stream: StreamId, frames: FrameList, fin: bool) {
        let last = frames.len().saturating_sub(1);
        for (i, f) in frames.into_iter().enumerate() {
            self.emit_frame(stream, f, fin && i == last);
        }
    }

    /// The callee of a sealed call wants blobs our record said it held (it evicted them):
    /// that stream is finished, so the call goes again, sealed, on a new one, the wanted
    /// blobs (with their dependencies within the call's closure) pushed ahead of the
    /// request. The call keeps its id. It moves once: a want on the new stream is left
    /// unanswered, and the callee fails the call when it sees the stream finished. The
    /// callee fails the old stream's call too; that answer is ignored.
    fn move_sealed_call(&mut self, stream: StreamId, wanted: &[BlobHash]) {
        let Some(mut call) = self.outgoing.remove(&stream) else {
            return;
        };
        if call.resend.is_empty() {
            self.outgoing.insert(stream, call); // moved before
            return;
        }
        // What arrived on the old stream is dropped with it.
        call.recv = RecvState::default();
        let mut frames = FrameList::new();
        for h in wanted {
            self.peer_blobs.remove(h);
            let Some(blobs) = call.blobs.as_deref_mut() else {
                continue;
            };
            let Some(_) = blobs.bytes.get(h) else {
                continue;
            };
            let order = closure([*h], |x| blobs.deps.get(x).cloned()).unwrap_or_default();
            for x in order {
                if blobs.sent.insert(x) {
                    self.peer_blobs.remove(&x);
                    if let Some(b) = blobs.bytes.get(&x) {
                        frames.push(OutFrame::Whole(self.push_frame(x, b.clone())));
                    }
                }
            }
        }
        frames.extend(std::mem::take(&mut call.resend));
        call.want_rounds += 1;
        let moved = StreamId::new(self.side, self.next_local);
        self.next_local += 1;
        tracing::debug!(from = ?stream, to = ?moved, "sealed call moved: the callee lacked blobs");
        self.emit_frames(moved, frames, true);
        self.moved.insert(call.id, moved);
        let deadline = call.deadline;
        self.outgoing.insert(moved, call);
        self.track_deadline(moved, deadline);
    }

    /// Removes the outgoing call on `stream` (and its alias, if it moved there).
    fn take_outgoing(&mut self, stream: StreamId) -> Option<OutCall> {
        let call = self.outgoing.remove(&stream)?;
        if !self.moved.is_empty() {
            self.moved.remove(&call.id);
        }
        Some(call)
    }

    fn push_frame(&mut self, hash: BlobHash, blob: Bytes) -> Bytes {
        self.stats.blobs_sent += 1;
        self.stats.blob_bytes_sent += blob.len() as u64;
        let frame = encode_message(
            &Message::BlobPush { hash, blob },
            usize::MAX,
            &mut Vec::new(),
        );
        self.arena.freeze(frame)
    }

    /// Cancels an outgoing call: sends `Cancel`, and reports `CallResult(cancelled)`.
    pub fn cancel(&mut self, id: CallId) {
        self.abandon_outgoing(id, ErrorKind::Cancelled, "cancelled by the caller");
    }

    /// Ends the outgoing call `id`, if still open: sends `Cancel` (unless the request is still
    /// queued, never sent) and reports the call failed with `kind`. The `Cancel` goes on the
    /// call's stream, or on the control stream when the request sealed the call's stream.
    fn abandon_outgoing(&mut self, id: CallId, kind: ErrorKind, message: &str) {
        let stream = self.moved.get(&id).copied().unwrap_or(id);
        if let Some(call) = self.take_outgoing(stream) {
            if call.queued.is_none() {
                let f = encode_message(
                    &Message::Cancel {
                        call_id: call.call_id,
                    },
                    usize::MAX,
                    &mut Vec::new(),
                );
                if call.sealed {
                    self.emit(CONTROL_STREAM, f, false);
                } else {
                    self.emit(stream, f, true);
                }
            }
            self.call_failed(&call, RemoteError::new(kind, message));
        }
    }

    /// Reports to the node that the outgoing call `call` failed.
    fn call_failed(&mut self, call: &OutCall, error: RemoteError) {
        self.events.push_back(Event::CallResult {
            id: call.id,
            tag: call.tag,
            result: Err(error),
        });
    }

    // -----------------------------------------------------------------------------------
    // Calls in

    /// Answers an incoming call. Ignored if the call was cancelled or already answered.
    pub fn respond(&mut self, id: CallId, result: Result<Portable, RemoteError>) {
        let Some(call) = self.incoming.get_mut(&id) else {
            return;
        };
        if call.phase != Phase::Running {
            return;
        }
        let call_id = call.call_id;
        self.release_pins(id);
        let mut outs = Vec::new();
        let mut frame = self.arena.buffer();
        encode_message_unhashed_into(
            &Message::Response(CallResponse { call_id, result }),
            self.config.sidecar_threshold,
            &mut outs,
            &mut frame,
        );
        if let Err(e) = check(
            Limit::MaxFrame,
            self.peer_max_frame(),
            (frame.len() - HEADER_LEN) as u64,
        ) {
            outs.clear();
            frame = encode_message(
                &Message::Response(CallResponse {
                    call_id,
                    result: Err(RemoteError::limit(e)),
                }),
                usize::MAX,
                &mut Vec::new(),
            );
        }
        let mut pending = Vec::new();
        let mut frames = FrameList::new();
        self.sidecar_frames(outs, frame, &mut pending, &mut frames);
        self.emit_frames(id, frames, true);
        let caller_finished = self.incoming.get(&id).is_some_and(|c| c.caller_finished);
        if pending.is_empty() || caller_finished {
            self.remove_incoming(id);
        } else if let Some(call) = self.incoming.get_mut(&id) {
            call.phase = Phase::Responded;
            call.retained_pending = pending;
            self.responded += 1;
        }
    }

    /// Removes the incoming call `id`, keeping the count of answered ones.
    fn remove_incoming(&mut self, id: CallId) {
        if let Some(call) = self.incoming.remove(&id) {
            if call.phase == Phase::Responded {
                self.responded -= 1;
            }
        }
    }

    fn release_pins(&mut self, id: CallId) {
        if let Some(call) = self.incoming.get_mut(&id) {
            let pins = std::mem::take(&mut call.pinned);
            if pins.is_empty() {
                return;
            }
            if let Ok(mut store) = self.store.lock() {
                for h in &pins {
                    store.unpin(h);
                }
            }
        }
    }

    /// Fails an incoming call with a typed error response and finishes its stream.
    fn fail_incoming(&mut self, id: CallId, err: RemoteError) {
        let call_id = self.incoming.get(&id).map_or(0, |c| c.call_id);
        self.drop_incoming(id, err.kind.clone());
        let frame = encode_message(
            &Message::Response(CallResponse {
                call_id,
                result: Err(err),
            }),
            usize::MAX,
            &mut Vec::new(),
        );
        self.emit(id, frame, true);
    }

    /// Forgets the incoming call `id`, telling the node to stop it (for `reason`) if it is
    /// running.
    fn drop_incoming(&mut self, id: CallId, reason: ErrorKind) {
        let running = self
            .incoming
            .get(&id)
            .is_some_and(|c| c.phase == Phase::Running);
        self.release_pins(id);
        self.remove_incoming(id);
        if running {
            self.events.push_back(Event::CallCancelled { id, reason });
        }
    }

    // -----------------------------------------------------------------------------------
    // Input

    /// Bytes received on a stream. Frames may be split or coalesced arbitrarily.
    pub fn handle_stream_data(&mut self, stream: StreamId, data: Bytes, now: Instant) {
        if self.closed.is_some() || data.is_empty() {
            return;
        }
        self.stats.bytes_received += data.len() as u64;
        if self.peer.is_none() && stream != CONTROL_STREAM {
            // A call stream may overtake the control stream; hold it until hello.
            self.hold_early(stream, Some(data));
            return;
        }
        if !self.accept_stream(stream) {
            return;
        }
        let mut input = data;
        // With no input left there is nothing to do: a partial frame always needs more bytes
        // than it holds.
        while !input.is_empty() {
            let mut digest = None;
            let max_frame = self.config.limits.max_frame;
            let pool = &self.config.recv_buffers;
            let Some(st) = recv_state(
                self.side,
                &mut self.control_recv,
                &mut self.outgoing,
                &mut self.incoming,
                stream,
            ) else {
                return;
            };
            let max_sidecar = self
                .config
                .limits
                .max_sidecar_bytes_per_call
                .saturating_sub(st.sidecar_bytes);
            let (mut frame, ty, payload) = if st.buffered() == 0 {
                match decode_frame(&input, max_frame, max_sidecar) {
                    Err(e) => return self.stream_fatal(stream, e),
                    Ok(FrameStatus::NeedMore(total)) => {
                        // All of `input` belongs to this frame.
                        st.need = total;
                        st.add(input, pool);
                        return;
                    }
                    Ok(FrameStatus::Complete { ty, payload }) => {
                        // Usually the frame is all of `input`: taken, not split off (a
                        // split shares the buffer by its reference count).
                        let frame = if payload.end == input.len() {
                            std::mem::take(&mut input)
                        } else {
                            input.split_to(payload.end)
                        };
                        (frame, ty, payload)
                    }
                }
            } else {
                // Top the partial frame up with at most the bytes it still needs (what
                // follows belongs to the next frame).
                if st.buffered() < st.need {
                    let take = (st.need - st.buffered()).min(input.len());
                    st.add(input.split_to(take), pool);
                    if st.buffered() < st.need {
                        return;
                    }
                }
                st.assemble(pool);
                match decode_frame(st.assembled(), max_frame, max_sidecar) {
                    Err(e) => return self.stream_fatal(stream, e),
                    Ok(FrameStatus::NeedMore(total)) => {
                        // The header is complete now: it says how much the frame needs.
                        st.need = total;
                        continue;
                    }
                    Ok(FrameStatus::Complete { ty, payload }) => {
                        digest = st.finish_frame();
                        let frame = st.take_frame(payload.end, pool);
                        (frame, ty, payload)
                    }
                }
            };
            if ty == FrameType::Sidecar as u8 {
                let framing = SIDECAR_HEADER_LEN + SIDECAR_TRAILER_LEN;
                st.sidecar_bytes += sidecar_charge(payload.len().saturating_sub(framing));
            }
            self.stats.frames_received += 1;
            // The payload is the frame trimmed in place (no reference count taken).
            frame.truncate(payload.end);
            frame.advance(payload.start);
            let payload = frame;
            let decoded = {
                let local = st.sidecars.as_ref();
                let retained = &self.retained;
                let lookup = |h: &SidecarHash| {
                    local
                        .and_then(|m| m.get(h).cloned())
                        .or_else(|| retained.get(h).cloned())
                };
                decode_message(
                    ty,
                    &payload,
                    &self.config.limits,
                    &lookup,
                    Some(&mut self.names),
                )
            };
            if matches!(decoded, Ok(Message::Call(_) | Message::Response(_))) {
                // The one message of the stream that references its sidecars holds them now;
                // the stream's copies would only keep their buffers alive until it closes.
                st.sidecars = None;
            }
            self.arrived_digest = digest;
            self.handle_message(stream, ty, decoded, now);
            self.arrived_digest = None;
            if self.closed.is_some() {
                return;
            }
        }
    }

    /// Holds call-stream data (`None`: its fin) that overtook the peer's hello. What is held
    /// is bounded by `max_frame` bytes, a fin counting as one byte; beyond that the peer is
    /// misbehaving and the connection is closed.
    fn hold_early(&mut self, stream: StreamId, data: Option<Bytes>) {
        self.early_bytes += data.as_ref().map_or(1, |d| d.len() as u64);
        if self.early_bytes > self.config.limits.max_frame as u64 {
            self.close(CloseReason::Protocol(
                "too much call data before hello".into(),
            ));
            return;
        }
        self.early.push((stream, data));
    }

    /// The peer finished its send side of a stream.
    pub fn handle_stream_finished(&mut self, stream: StreamId, now: Instant) {
        let _ = now;
        if self.closed.is_none() && self.peer.is_none() && stream != CONTROL_STREAM {
            // After its early data (a sealed call may overtake hello, fin included).
            self.hold_early(stream, None);
            return;
        }
        if let Some(call) = self.incoming.get_mut(&stream) {
            match call.phase {
                Phase::Responded => {
                    // Evidence: the caller read our whole response, sidecars included.
                    if !call.retained_pending.is_empty() {
                        let pending = std::mem::take(&mut call.retained_pending);
                        self.peer_sidecars.extend(pending);
                    }
                    self.remove_incoming(stream);
                }
                Phase::Receiving | Phase::Waiting => self.fail_incoming(
                    stream,
                    RemoteError::new(
                        ErrorKind::MissingBlobs,
                        "the caller finished the stream before the call was complete",
                    ),
                ),
                Phase::Running => {
                    // Nothing more will arrive (a sealed call, or a caller that gave up
                    // waiting for its own reasons); the response then waits for nothing.
                    call.caller_finished = true;
                    call.recv = None;
                }
            }
        } else if let Some(call) = self.take_outgoing(stream) {
            self.call_failed(
                &call,
                RemoteError::new(
                    ErrorKind::Protocol,
                    "the callee finished the stream without a response",
                ),
            );
        }
    }

    /// The peer reset a stream (or stopped reading it): the call on it is over.
    pub fn handle_stream_reset(&mut self, stream: StreamId, now: Instant) {
        let _ = now;
        if self.incoming.contains_key(&stream) {
            self.drop_incoming(stream, ErrorKind::Cancelled);
        } else if let Some(call) = self.take_outgoing(stream) {
            self.call_failed(
                &call,
                RemoteError::new(
                    ErrorKind::ConnectionLost,
                    "the callee reset the call stream",
                ),
            );
        }
    }

    /// The transport lost the connection.
    pub fn handle_connection_lost(&mut self, reason: impl Into<String>) {
        self.close(CloseReason::Lost(reason.into()));
    }

    /// Closes the connection locally (the transport then closes the QUIC connection).
    pub fn close(&mut self, reason: CloseReason) {
        if self.closed.is_some() {
            return;
        }
        tracing::debug!(%reason, "closing");
        self.moved.clear();
        let calls: Vec<OutCall> = self.outgoing.drain().map(|(_, c)| c).collect();
        for call in calls {
            self.call_failed(
                &call,
                RemoteError::new(ErrorKind::ConnectionLost, reason.to_string()),
            );
        }
        let ids: Vec<StreamId> = self.incoming.keys().copied().collect();
        for id in ids {
            self.drop_incoming(id, ErrorKind::ConnectionLost);
        }
        self.control_recv = RecvState::default();
        self.held.clear();
        self.closed = Some(reason.clone());
        self.events.push_back(Event::Closed(reason));
    }

    /// Deadlines: expires outgoing calls (sending `Cancel`) and incoming ones (telling the
    /// node to stop and answering `deadline_exceeded`).
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<CallId> = self
            .outgoing
            .values()
            .filter(|c| c.deadline.is_some_and(|d| d <= now))
            .map(|c| c.id)
            .collect();
        for id in expired {
            self.abandon_outgoing(
                id,
                ErrorKind::DeadlineExceeded,
                "the call's deadline passed",
            );
        }
        let expired: Vec<StreamId> = self
            .incoming
            .iter()
            .filter(|(_, c)| c.phase != Phase::Responded && c.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.fail_incoming(
                id,
                RemoteError::new(ErrorKind::DeadlineExceeded, "the call's deadline passed"),
            );
        }
    }

    /// Registers a stream we have not seen; false if its data must be ignored.
    fn accept_stream(&mut self, stream: StreamId) -> bool {
        if stream == CONTROL_STREAM {
            return true;
        }
        if stream.initiator() == self.side {
            // One of ours: read while its call is out.
            return self.outgoing.contains_key(&stream);
        }
        if let Some(call) = self.incoming.get(&stream) {
            return call.recv.is_some();
        }
        let index = stream.index();
        if index < self.remote_watermark || self.remote_seen.contains(&index) {
            return false; // the peer's, finished
        }
        if index == self.remote_watermark {
            // In order, as streams usually come: the set is not touched unless it holds
            // streams that overtook this one.
            self.remote_watermark += 1;
            while self.remote_seen.remove(&self.remote_watermark) {
                self.remote_watermark += 1;
            }
        } else {
            self.remote_seen.insert(index);
        }
        let active = self.incoming.len() - self.responded;
        debug_assert_eq!(
            active,
            self.incoming
                .values()
                .filter(|c| c.phase != Phase::Responded)
                .count(),
            "the count of answered incoming calls"
        );
        let reject = check(
            Limit::MaxCallsInFlight,
            self.config.limits.max_calls_in_flight as u64,
            active as u64 + 1,
        )
        .err()
        .map(|e| Box::new(RemoteError::limit(e)));
        self.incoming.insert(
            stream,
            InCall {
                call_id: 0,
                phase: Phase::Receiving,
                request: None,
                wanted: None,
                pinned: Vec::new(),
                blobs_received: 0,
                blob_bytes_received: 0,
                want_rounds: 0,
                deadline: None,
                retained_pending: Vec::new(),
                reject,
                caller_finished: false,
                recv: Some(RecvState::default()),
            },
        );
        true
    }

    /// A framing error: the stream cannot be resynchronised. Reply and stop reading it.
    fn stream_fatal(&mut self, stream: StreamId, e: LimitExceeded) {
        if self.incoming.contains_key(&stream) {
            self.fail_incoming(stream, RemoteError::limit(e));
        } else if stream == CONTROL_STREAM {
            self.error_reply(stream, "limit", e.to_string(), 0);
            self.close(CloseReason::Protocol(e.to_string()));
        } else {
            self.error_reply(stream, "limit", e.to_string(), 0);
            if let Some(call) = self.take_outgoing(stream) {
                self.call_failed(&call, RemoteError::limit(e));
            }
            self.finish_stream(stream);
        }
    }

    /// A frame's message (or why it did not decode), dispatched by the stream it came on.
    fn handle_message(
        &mut self,
        stream: StreamId,
        ty: u8,
        decoded: Result<Message, MessageError>,
        now: Instant,
    ) {
        let msg = match decoded {
            Ok(m) => m,
            Err(e) => return self.decode_error(stream, ty, e),
        };
        if let Message::Error(reply) = msg {
            return self.on_error_reply(stream, reply);
        }
        if stream == CONTROL_STREAM {
            self.on_control(msg, now);
        } else if stream.initiator() == self.side {
            // Our calls run on streams we open, the peer's on streams it opens.
            if self.outgoing.contains_key(&stream) {
                self.on_outgoing(stream, msg);
            }
        } else {
            self.on_incoming(stream, msg, now);
        }
    }

    fn decode_error(&mut self, stream: StreamId, ty: u8, e: MessageError) {
        let code = match &e {
            MessageError::UnknownType(_) => "unknown_message",
            MessageError::Limit(_) => "limit",
            _ => "malformed",
        };
        let unknown = matches!(e, MessageError::UnknownType(_));
        if !unknown && self.incoming.contains_key(&stream) {
            let err = match e {
                MessageError::Limit(l) => RemoteError::limit(l),
                e => RemoteError::new(ErrorKind::Protocol, e.to_string()),
            };
            return self.fail_incoming(stream, err);
        }
        if ty == FrameType::Response as u8 {
            if let Some(call) = self.take_outgoing(stream) {
                self.finish_stream(stream);
                let err = match e {
                    MessageError::Limit(l) => RemoteError::limit(l),
                    e => RemoteError::new(ErrorKind::Protocol, format!("bad response: {e}")),
                };
                // By the call's id: a sealed call moved to a new stream keeps the first one's.
                self.call_failed(&call, err);
                return;
            }
        }
        self.error_reply(stream, code, e.to_string(), ty);
    }

    fn on_error_reply(&mut self, stream: StreamId, reply: ErrorReply) {
        if stream == CONTROL_STREAM && self.peer.is_none() {
            return self.close(CloseReason::PeerRefused(format!(
                "{}: {}",
                reply.code, reply.message
            )));
        }
        if let Some(call) = self.take_outgoing(stream) {
            if !call.sealed {
                self.finish_stream(stream);
            }
            self.call_failed(
                &call,
                RemoteError::new(
                    ErrorKind::Protocol,
                    format!("{}: {}", reply.code, reply.message),
                ),
            );
        }
        self.events.push_back(Event::PeerError { stream, reply });
    }

    fn on_control(&mut self, msg: Message, now: Instant) {
        match msg {
            Message::Hello(h) if self.peer.is_none() => {
                if h.version != PROTOCOL_VERSION {
                    let reason = CloseReason::VersionMismatch {
                        ours: PROTOCOL_VERSION,
                        theirs: h.version,
                    };
                    self.error_reply(CONTROL_STREAM, "version_mismatch", reason.to_string(), 1);
                    return self.close(reason);
                }
                if self.side == Side::Server {
                    self.send_hello();
                }
                self.peer = Some(h.clone());
                self.events.push_back(Event::Connected(h));
                // Flush calls queued before hello, then replay early call-stream data.
                let mut ids: Vec<StreamId> = self
                    .outgoing
                    .iter()
                    .filter(|(_, c)| c.queued.is_some())
                    .map(|(id, _)| *id)
                    .collect();
                ids.sort();
                for id in ids {
                    let Some(mut call) = self.outgoing.remove(&id) else {
                        continue;
                    };
                    if let Some(queued) = call.queued.take() {
                        let Queued {
                            ahead: mut frames,
                            sidecars,
                            request,
                        } = *queued;
                        self.frame_request(&mut call, sidecars, request, &mut frames);
                        self.emit_frames(id, frames, call.sealed);
                    }
                    self.outgoing.insert(id, call);
                }
                for (stream, data) in std::mem::take(&mut self.early) {
                    match data {
                        Some(data) => {
                            // Counted when it was held back.
                            self.stats.bytes_received -= data.len() as u64;
                            self.handle_stream_data(stream, data, now);
                        }
                        None => self.handle_stream_finished(stream, now),
                    }
                }
            }
            Message::Hello(_) => self.error_reply(
                CONTROL_STREAM,
                "unexpected",
                "hello was already received".into(),
                FrameType::Hello as u8,
            ),
            Message::Cancel { call_id } if self.peer.is_some() => self.cancel_by_call_id(call_id),
            other => {
                let ty = frame_type_of(&other);
                self.error_reply(
                    CONTROL_STREAM,
                    "unexpected",
                    format!("{ty:?} is not valid on the control stream"),
                    ty as u8,
                );
            }
        }
    }

    /// Keeps sidecar `data` (of hash `hash`) for the rest of the connection.
    fn retain(&mut self, hash: SidecarHash, data: &Bytes) {
        self.retained.insert(hash, data.clone());
        self.retained_at
            .insert((data.as_ptr() as usize, data.len()), (hash, data.clone()));
    }

    /// The hash of `data` if these very bytes (same buffer) are a sidecar kept for the
    /// connection.
    fn retained_hash(&self, data: &Bytes) -> Option<SidecarHash> {
        let (hash, _) = self
            .retained_at
            .get(&(data.as_ptr() as usize, data.len()))?;
        Some(*hash)
    }

    #[allow(clippy::result_large_err)] // private; the error becomes a response at once
    fn accept_sidecar(
        &mut self,
        stream: StreamId,
        hash: SidecarHash,
        retain: bool,
        data: Bytes,
    ) -> Result<(), RemoteError> {
        // Hashed as it arrived (a large frame), or now.
        let actual = match self.arrived_digest.take() {
            Some(h) => h,
            None => SidecarHash::of(&data),
        };
        if actual != hash {
            self.stats.hash_mismatches += 1;
            self.offence();
            return Err(RemoteError::new(
                ErrorKind::HashMismatch,
                format!("sidecar {hash:?} hashes to {actual:?}"),
            ));
        }
        self.stats.sidecar_bytes_received += data.len() as u64;
        let data = if data.len() < SIDECAR_COPY_BELOW {
            Bytes::copy_from_slice(&data)
        } else {
            data
        };
        if retain && !self.retained_by_peer.contains(&hash) {
            let budget = self.config.sidecar_retain_bytes;
            let charge = sidecar_charge(data.len());
            if self.retained_by_peer_bytes + charge > budget {
                return Err(RemoteError::new(
                    ErrorKind::Protocol,
                    format!("retained sidecars exceed the announced budget of {budget} bytes"),
                ));
            }
            self.retained_by_peer.insert(hash);
            self.retained_by_peer_bytes += charge;
            self.retain(hash, &data);
        }
        if retain {
            // The peer keeps what it sends with the retain flag.
            self.peer_sidecars.insert(hash);
            self.dedup_lens.insert(data.len());
        }
        if let Some(r) = recv_state(
            self.side,
            &mut self.control_recv,
            &mut self.outgoing,
            &mut self.incoming,
            stream,
        ) {
            r.sidecars.get_or_insert_default().insert(hash, data);
        }
        Ok(())
    }

    fn offence(&mut self) {
        self.offences += 1;
        if self.offences >= self.config.max_offences {
            let count = self.offences;
            self.error_reply(
                CONTROL_STREAM,
                "too_many_offences",
                format!("{count} hash mismatches"),
                0,
            );
            self.close(CloseReason::TooManyOffences { count });
        }
    }

    fn on_outgoing(&mut self, stream: StreamId, msg: Message) {
        match msg {
            Message::BlobWant(hashes) => {
                let Some(call) = self.outgoing.get_mut(&stream) else {
                    return;
                };
                if call.sealed {
                    return self.move_sealed_call(stream, &hashes);
                }
                call.want_rounds += 1;
                // An offered hash: push exactly it. A hash we did not offer means our
                // record of the peer was stale (it evicted the blob): push it with its
                // dependencies within this call's closure, except those the peer
                // confirmed or that are already on their way.
                let mut pushes = Vec::new();
                if let Some(blobs) = call.blobs.as_deref_mut() {
                    let mut order = Vec::new();
                    for h in &hashes {
                        if blobs.offered.contains(h) {
                            order.push(*h);
                        } else if blobs.bytes.contains_key(h) {
                            let sub =
                                closure([*h], |x| blobs.deps.get(x).cloned()).unwrap_or_default();
                            order.extend(
                                sub.into_iter()
                                    .filter(|x| x == h || !blobs.offered.contains(x)),
                            );
                        }
                    }
                    for h in order {
                        if blobs.sent.insert(h) {
                            if let Some(b) = blobs.bytes.get(&h) {
                                pushes.push((h, b.clone()));
                            }
                        }
                    }
                }
                for h in &hashes {
                    self.peer_blobs.remove(h);
                }
                for (h, b) in pushes {
                    self.peer_blobs.remove(&h);
                    let f = self.push_frame(h, b);
                    self.emit_frame(stream, OutFrame::Whole(f), false);
                }
            }
            Message::Sidecar { hash, retain, data } => {
                if let Err(e) = self.accept_sidecar(stream, hash, retain, data) {
                    if self.closed.is_none() {
                        self.error_reply(
                            stream,
                            "hash_mismatch",
                            e.message,
                            FrameType::Sidecar as u8,
                        );
                    }
                }
            }
            Message::Response(CallResponse { result, .. }) => {
                let Some(call) = self.take_outgoing(stream) else {
                    return;
                };
                let ran = match &result {
                    Ok(_) => true,
                    Err(e) => matches!(e.kind, ErrorKind::Thrown | ErrorKind::Runtime),
                };
                if let (true, Some(blobs)) = (ran, &call.blobs) {
                    self.peer_blobs.extend(blobs.closure.iter().copied());
                }
                // The callee answered on this stream: it read our sidecars.
                if !call.retained_pending.is_empty() {
                    self.peer_sidecars.extend(call.retained_pending);
                }
                if !call.sealed {
                    // Evidence for the callee that we read its response (§6).
                    self.finish_stream(stream);
                }
                self.events.push_back(Event::CallResult {
                    id: call.id,
                    tag: call.tag,
                    result,
                });
            }
            other => {
                let ty = frame_type_of(&other);
                self.error_reply(
                    stream,
                    "unexpected",
                    format!("{ty:?} is not valid from a callee"),
                    ty as u8,
                );
            }
        }
    }

    fn on_incoming(&mut self, stream: StreamId, msg: Message, now: Instant) {
        let phase = match self.incoming.get(&stream) {
            Some(c) => c.phase,
            None => return,
        };
        match msg {
            Message::BlobQuery(hashes) if phase == Phase::Receiving => {
                let Some(call) = self.incoming.get_mut(&stream) else {
                    return;
                };
                if call.reject.is_some() {
                    return;
                }
                let mut want = Vec::new();
                if let Ok(mut store) = self.store.lock() {
                    for h in hashes {
                        if store.pin(&h) {
                            call.pinned.push(h);
                        } else if call.wanted.get_or_insert_default().insert(h) {
                            want.push(h);
                        }
                    }
                }
                if !want.is_empty() {
                    call.want_rounds += 1;
                    self.stats.wants_sent += 1;
                    let f = encode_message(&Message::BlobWant(want), usize::MAX, &mut Vec::new());
                    self.emit(stream, f, false);
                }
            }
            Message::BlobPush { hash, blob }
                if matches!(phase, Phase::Receiving | Phase::Waiting) =>
            {
                self.on_push(stream, hash, blob, now)
            }
            Message::Sidecar { hash, retain, data } if phase == Phase::Receiving => {
                if let Err(e) = self.accept_sidecar(stream, hash, retain, data) {
                    if self.closed.is_none() {
                        self.fail_incoming(stream, e);
                    }
                }
            }
            Message::Call(req) if phase == Phase::Receiving => self.on_call(stream, req, now),
            Message::Cancel { .. } => {
                self.drop_incoming(stream, ErrorKind::Cancelled);
                if phase != Phase::Responded {
                    self.finish_stream(stream);
                }
            }
            other => {
                let ty = frame_type_of(&other);
                self.error_reply(
                    stream,
                    "unexpected",
                    format!("{ty:?} is not valid here (call phase {phase:?})"),
                    ty as u8,
                );
            }
        }
    }

    /// `Cancel` on the control stream: the caller sealed the call's stream, so the cancel
    /// names the call by its id. A call whose request has not arrived yet is remembered and
    /// dropped when it does.
    fn cancel_by_call_id(&mut self, call_id: u64) {
        let found = self
            .incoming
            .iter()
            .find(|(_, c)| c.call_id == call_id && c.phase != Phase::Receiving)
            .map(|(id, c)| (*id, c.phase));
        match found {
            Some((stream, phase)) => {
                self.drop_incoming(stream, ErrorKind::Cancelled);
                if phase != Phase::Responded {
                    self.finish_stream(stream);
                }
            }
            None => {
                if self.cancelled_unseen.len() >= self.config.limits.max_calls_in_flight {
                    self.cancelled_unseen.pop_front();
                }
                self.cancelled_unseen.push_back(call_id);
            }
        }
    }

    fn on_push(&mut self, stream: StreamId, hash: BlobHash, blob: Bytes, now: Instant) {
        let limits = self.config.limits.clone();
        let Some(call) = self.incoming.get_mut(&stream) else {
            return;
        };
        if call.reject.is_some() {
            return;
        }
        call.blobs_received += 1;
        call.blob_bytes_received += blob.len() as u64;
        let (n, b) = (call.blobs_received, call.blob_bytes_received);
        self.stats.blobs_received += 1;
        self.stats.blob_bytes_received += blob.len() as u64;
        let limit = check(
            Limit::MaxBlobsPerCall,
            limits.max_blobs_per_call as u64,
            n as u64,
        )
        .and_then(|_| {
            check(
                Limit::MaxBlobBytesPerCall,
                limits.max_blob_bytes_per_call,
                b,
            )
        });
        if let Err(e) = limit {
            return self.fail_incoming(stream, RemoteError::limit(e));
        }
        let verifier = self.verifier.clone();
        let max_size = self.config.max_blob_size;
        let result = match self.store.lock() {
            Ok(mut store) => store
                .insert_verified(hash, blob, max_size, &*verifier)
                .map(|()| store.pin(&hash)),
            Err(_) => Err(StoreError::Verify("blob store poisoned".into())),
        };
        match result {
            Ok(_) => {
                self.peer_blobs.insert(hash);
                if let Some(call) = self.incoming.get_mut(&stream) {
                    call.pinned.push(hash);
                    if let Some(wanted) = call.wanted.as_mut() {
                        wanted.remove(&hash);
                    }
                    if call.phase == Phase::Waiting && call.wants_nothing() {
                        if let Some(req) = call.request.take() {
                            self.try_start(stream, *req, now);
                        }
                    }
                }
            }
            Err(StoreError::HashMismatch { claimed, actual }) => {
                self.stats.hash_mismatches += 1;
                self.fail_incoming(
                    stream,
                    RemoteError::new(
                        ErrorKind::HashMismatch,
                        format!("blob claimed {claimed} but hashes to {actual}"),
                    ),
                );
                self.offence();
            }
            Err(StoreError::Full(e)) => self.fail_incoming(stream, RemoteError::limit(e)),
            Err(e) => self.fail_incoming(
                stream,
                RemoteError::new(ErrorKind::VerifyFailed, format!("blob {hash}: {e}")),
            ),
        }
    }

    fn on_call(&mut self, stream: StreamId, req: CallRequest, now: Instant) {
        let max_ms = self.config.max_call_duration;
        let Some(call) = self.incoming.get_mut(&stream) else {
            return;
        };
        call.call_id = req.call_id;
        call.caller_finished |= req.sealed;
        if let Some(err) = call.reject.take() {
            return self.fail_incoming(stream, *err);
        }
        if let Some(i) = self.cancelled_unseen.iter().position(|&c| c == req.call_id) {
            // Cancelled on the control stream before the request got here.
            self.cancelled_unseen.remove(i);
            self.drop_incoming(stream, ErrorKind::Cancelled);
            return self.finish_stream(stream);
        }
        let allowed = req
            .deadline_ms
            .map_or(max_ms, |ms| Duration::from_millis(ms).min(max_ms));
        call.deadline = Some(now + allowed);
        call.phase = Phase::Waiting;
        if call.wants_nothing() {
            self.track_deadline(stream, Some(now + allowed));
            self.try_start(stream, req, now);
        } else {
            call.request = Some(Box::new(req));
            self.track_deadline(stream, Some(now + allowed));
        }
    }

    /// All blobs of `req` present? Hand the call to the node. Otherwise keep the request
    /// and ask for what is missing (at most one extra round, for a peer record gone stale
    /// by eviction).
    fn try_start(&mut self, stream: StreamId, req: CallRequest, now: Instant) {
        let roots = call_roots(&req);
        let missing = if roots.is_empty() {
            Vec::new()
        } else {
            let Ok(store) = self.store.lock() else { return };
            missing_from(roots.iter().copied(), |h| store.deps(h).map(|d| d.to_vec()))
        };
        if !missing.is_empty() {
            let Some(call) = self.incoming.get_mut(&stream) else {
                return;
            };
            if call.want_rounds >= 2 {
                let list: Vec<String> = missing.iter().map(|h| h.to_hex()).collect();
                return self.fail_incoming(
                    stream,
                    RemoteError::new(
                        ErrorKind::MissingBlobs,
                        format!("blobs never supplied: {}", list.join(", ")),
                    ),
                );
            }
            if let Err(e) = check(
                Limit::MaxNegotiationList,
                self.config.limits.max_negotiation_list as u64,
                missing.len() as u64,
            ) {
                return self.fail_incoming(stream, RemoteError::limit(e));
            }
            call.want_rounds += 1;
            call.wanted
                .get_or_insert_default()
                .extend(missing.iter().copied());
            call.request = Some(Box::new(req));
            self.stats.wants_sent += 1;
            let f = encode_message(&Message::BlobWant(missing), usize::MAX, &mut Vec::new());
            self.emit(stream, f, false);
            return;
        }
        let order = if roots.is_empty() {
            Vec::new()
        } else {
            let Ok(mut store) = self.store.lock() else {
                return;
            };
            let order = closure(roots.iter().copied(), |h| store.deps(h).map(|d| d.to_vec()))
                .unwrap_or_default();
            for h in &order {
                store.pin(h);
            }
            order
        };
        let Some(call) = self.incoming.get_mut(&stream) else {
            return;
        };
        call.pinned.extend(order.iter().copied());
        call.phase = Phase::Running;
        let deadline = call.deadline.unwrap_or(now);
        self.events.push_back(Event::IncomingCall(IncomingCall {
            id: stream,
            target: req.target,
            context: req.context,
            args: req.args,
            deadline,
            caller: req.caller,
            hops: req.hops,
            blobs: order,
        }));
    }
}

/// Appends to a receive buffer without trusting the announced frame length for the
/// allocation: capacity grows geometrically with the bytes actually received, never past
/// what the current frame needs (callers add no bytes beyond it).
fn append(buf: &mut BytesMut, need: usize, data: &[u8]) {
    let want = buf.len() + data.len();
    if want > buf.capacity() {
        let cap = (buf.capacity() * 2).max(4096).min(need).max(want);
        let mut grown = BytesMut::with_capacity(cap);
        grown.extend_from_slice(buf);
        *buf = grown;
    }
    buf.extend_from_slice(data);
}

fn call_roots(req: &CallRequest) -> Vec<BlobHash> {
    let mut funcs = Vec::new();
    if let Target::Function(f) = &req.target {
        funcs.push(*f);
    }
    req.context.functions(&mut funcs);
    for a in &req.args {
        a.functions(&mut funcs);
    }
    let mut roots: Vec<BlobHash> = Vec::new();
    for f in funcs {
        if !roots.contains(&f.blob) {
            roots.push(f.blob);
        }
    }
    roots
}

fn frame_type_of(msg: &Message) -> FrameType {
    match msg {
        Message::Hello(_) => FrameType::Hello,
        Message::Call(_) => FrameType::Call,
        Message::Response(_) => FrameType::Response,
        Message::BlobQuery(_) => FrameType::BlobQuery,
        Message::BlobWant(_) => FrameType::BlobWant,
        Message::BlobPush { .. } => FrameType::BlobPush,
        Message::Sidecar { .. } => FrameType::Sidecar,
        Message::Cancel { .. } => FrameType::Cancel,
        Message::Error(_) => FrameType::Error,
    }
}
