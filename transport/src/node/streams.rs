//! The quinn streams of one connection, owned and polled by the connection's driver task.
//!
//! Every read (but the watched stream's, below), and every write quinn cannot take at once,
//! is a future in one of two `FuturesUnordered` sets that the driver polls beside its other
//! inputs: a stream costs no task of its own and a chunk no channel hop, and only the
//! futures whose stream was woken are polled again. A write that fits quinn's buffers (most
//! calls and responses) is made in place, and a read first takes what is already there.
//! Each future owns its stream and hands it back when it completes. A stream of ours opens
//! at once while quinn has stream credit; else opening it is a future too, so a driver
//! waiting for credit from the peer still reads the responses that free it.
//!
//! Invariants:
//! - Streams of ours are opened one at a time, in the order the wire numbers them, so the
//!   stream ids both sides see agree; bytes for a stream not open yet wait in `unopened`.
//! - A stream has at most one read and one write in flight; bytes queued for a stream are
//!   written in the order they were queued, and its `fin` after every byte queued before it.
//! - A stream whose write failed (the peer stopped or reset it, the connection went away) is
//!   forgotten: nothing more is written to it, and its read side reports the end to the wire.
//! - Dropping a `SendStream` finishes it (quinn), so a forgotten idle stream is finished.
//! - The reads of one stream may be watched ([`Streams::watch`]): polled with a waker of
//!   their own, so that its arrivals can wake someone other than the driver task (the
//!   caller awaiting the answer on it). Every other read, write and open wakes the task.
//! - The other reads' set is polled only when one of them woke or a read joined it since it
//!   was last polled ([`Due`]): a connection's control stream is read all its life,
//!   so the set is never empty, and a call's reads rarely wait there. The watched read
//!   likewise is polled only when its stream woke or it was not polled with its waker yet.
//! - Sidecar data the wire wants hashed ([`Transmit::report_hash`]) is hashed on tokio's
//!   blocking pool while it is written ([`BackgroundHash`]), and exactly one
//!   [`Input::SidecarSent`] reports it: its hash, or `None` if not all of it was written (or
//!   the stream was gone). Hashed in the driver, between its writes, it kept cores idler
//!   (`benches/README.md`, twenty-fifth session): each write wakes quinn's connection task,
//!   which tokio then runs next on the same worker (its LIFO slot, which no other worker
//!   takes from), after the driver's poll, hash and all. The pool's thread runs on whichever
//!   core is free.

use super::due::Due;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use skiff_wire::idmap::IdMap;
use skiff_wire::{Side, SidecarHash, SidecarHasher, StreamId, Transmit};
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a stream delivered.
pub(super) enum Input {
    Data(StreamId, Bytes),
    Fin(StreamId),
    Reset(StreamId),
    /// Opening a stream failed: the connection is gone (the reason).
    Lost(String),
    /// Sidecar data to hash was written (its hash) or could not all be (`None`).
    SidecarSent(StreamId, Option<SidecarHash>),
}

/// A background hash takes sidecar data in pieces of this size, looking between pieces
/// whether its write was given up.
const HASH_PIECE: usize = 1 << 20;

/// A stream of ours, opened (or why not).
type Opened = Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>;

/// Most chunks one read takes from a stream (quinn hands them over under one lock; a bulk
/// transfer arrives as one chunk per datagram).
const READ_BATCH: usize = 32;

/// Reads a stream makes in place, without waiting, before it reads through a future.
const READS_AT_ONCE: usize = 4;

/// A completed read: the stream back, and what it gave (`Some(n)`: the first `n` chunks of
/// the buffer, which the next read of the stream reuses: a read future stays small).
type Read = (
    StreamId,
    quinn::RecvStream,
    Vec<Bytes>,
    Result<Option<usize>, ()>,
);

/// A stream waiting for its next read: its id, the stream, and the buffer the read fills.
type Reading = (StreamId, quinn::RecvStream, Vec<Bytes>);

/// A completed write: the stream back, and whether every byte was accepted.
struct Written {
    id: StreamId,
    send: quinn::SendStream,
    ok: bool,
    /// The write carried sidecar data to hash: its hash, or `None` if not all was written.
    sidecar: Option<Option<SidecarHash>>,
}

/// The send side of one stream.
struct Outbox {
    /// `None` while a write is in flight (its future holds the stream).
    send: Option<quinn::SendStream>,
    queue: VecDeque<Transmit>,
    /// Finish the stream once the queue is written.
    fin: bool,
}

pub(super) struct Streams {
    conn: quinn::Connection,
    /// The side whose streams are opened here.
    side: Side,
    reads: FuturesUnordered<Boxed<Read>>,
    /// What `reads` is polled with (as a waker): whether the set may have a read ready, set
    /// by their wake-ups and by a read joining the set, cleared when the set is polled.
    reads_due: Arc<Due>,
    /// The stream whose reads are watched, if any, and its read in flight (polled with the
    /// watcher's waker). Not a future in a set: a `FuturesUnordered` that polled all its
    /// futures wakes its waker to yield, which for a set of one would be a wake-up per
    /// poll. Nor a future at all: quinn's read keeps nothing between polls, so each poll
    /// makes one in place, and a call's stream costs no allocation for its reads.
    watched: Option<StreamId>,
    watched_read: Option<Reading>,
    /// `watched_read` has not been polled with the watcher's waker to `Pending` since it
    /// was set (a read made in place is polled with no waker), so no wake-up will say
    /// when it has something.
    watched_fresh: bool,
    writes: FuturesUnordered<Boxed<Written>>,
    outboxes: IdMap<StreamId, Outbox>,
    /// The stream of ours being opened, if any.
    opening: Option<Boxed<(StreamId, Opened)>>,
    /// What waits for streams of ours not open yet, in order.
    unopened: VecDeque<Transmit>,
    /// Streams of ours below this index were opened (or lost with the connection).
    opened_below: u64,
    /// Index of the next stream of ours the wire will name.
    next_new: u64,
    /// Chunk buffers of streams whose reads ended (all slots empty), for the next streams:
    /// at most one per stream read at once.
    spare_chunks: Vec<Vec<Bytes>>,
    /// What the first reads of streams adopted by [`Streams::add`] found already there
    /// (handed out by the next `poll_inputs`, before anything else).
    ready: Vec<Input>,
    /// Something was queued since the last `poll_inputs` that must be polled before it can
    /// wake the driver (a new read, write or open future, or `ready` inputs).
    unpolled: bool,
}

impl Streams {
    pub fn new(conn: quinn::Connection, side: Side) -> Streams {
        Streams {
            conn,
            side,
            reads: FuturesUnordered::new(),
            reads_due: Due::new(false),
            watched: None,
            watched_read: None,
            watched_fresh: false,
            writes: FuturesUnordered::new(),
            outboxes: IdMap::default(),
            opening: None,
            unopened: VecDeque::new(),
            opened_below: 0,
            next_new: 0,
            spare_chunks: Vec::new(),
            ready: Vec::new(),
            unpolled: false,
        }
    }

    /// Adopts a stream the peer opened: starts reading it (what is already there is handed
    /// out by the next [`Streams::poll_inputs`]); [`Streams::write`] writes to it.
    pub fn add(&mut self, id: StreamId, send: quinn::SendStream, recv: quinn::RecvStream) {
        let mut ready = std::mem::take(&mut self.ready);
        self.adopt(id, send, recv, &mut ready);
        self.unpolled |= !ready.is_empty();
        self.ready = ready;
    }

    /// From its next read on, stream `id` is read apart, its arrivals waking the waker
    /// [`Streams::poll_inputs`] is given for it (`None`: no stream). A stream stays watched
    /// until another is (or none): what is left of an answered call's stream (its end)
    /// then still wakes the caller reading, if any, rather than the task.
    pub fn watch(&mut self, id: Option<StreamId>) {
        if id == self.watched {
            return;
        }
        self.watched = id;
        // A read of the stream watched before goes on with the others.
        if let Some(reading) = self.watched_read.take() {
            self.push_read(read_future(reading));
        }
    }

    /// The driver task's waker, for the wake-ups of reads in the set.
    pub fn set_task(&self, waker: &Waker) {
        self.reads_due.set_task(waker);
    }

    /// Adds `read` to the reads' set, to be polled by the next [`Streams::poll_inputs`].
    fn push_read(&mut self, read: Boxed<Read>) {
        self.reads.push(read);
        self.reads_due.mark();
        self.unpolled = true;
    }

    /// Whether [`Streams::poll_inputs`] has work it was not polled for yet (then it must be
    /// polled again: nothing would wake the driver for it).
    pub fn has_unpolled(&self) -> bool {
        self.unpolled
    }

    /// [`Streams::has_unpolled`], clearing the mark.
    pub fn take_unpolled(&mut self) -> bool {
        std::mem::take(&mut self.unpolled)
    }

    /// Starts reading stream `id` and makes it writable.
    fn adopt(
        &mut self,
        id: StreamId,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        out: &mut Vec<Input>,
    ) {
        self.start_reading(id, recv, out);
        self.outboxes.insert(id, Outbox::new(send));
    }

    /// Starts reading stream `id`. A stream the peer opened may hold data already, which
    /// goes to `out`; one of ours cannot before we write to it (the peer has not seen it),
    /// so its read waits at once.
    fn start_reading(&mut self, id: StreamId, recv: quinn::RecvStream, out: &mut Vec<Input>) {
        let chunks = self
            .spare_chunks
            .pop()
            .unwrap_or_else(|| vec![Bytes::new(); READ_BATCH]);
        if id.initiator() == self.side {
            self.read_later(id, recv, chunks);
        } else {
            self.read_into(id, recv, chunks, out);
        }
    }

    /// Queues `t.data` for `t.stream`, then finishes it if `t.fin`. A stream of ours named
    /// for the first time is opened first. For a stream that is finished or gone, nothing
    /// is written and `false` returned.
    pub fn write(&mut self, t: Transmit) -> bool {
        let id = t.stream;
        if id.initiator() == self.side && id.index() >= self.opened_below {
            if id.index() > self.next_new {
                return false;
            }
            self.next_new = self.next_new.max(id.index() + 1);
            self.unopened.push_back(t);
            self.start_open();
            return true;
        }
        let Some(outbox) = self.outboxes.get_mut(&id).filter(|o| !o.fin) else {
            return false;
        };
        outbox.fin = t.fin;
        let next = (!t.data.is_empty()).then_some(t);
        let step = outbox.write(id, next);
        self.wrote(id, step);
        true
    }

    /// What [`Outbox::write`] of stream `id`'s outbox (in `outboxes`) left to do.
    fn wrote(&mut self, id: StreamId, step: WriteStep) {
        match step {
            WriteStep::Open => {}
            WriteStep::Done => {
                self.outboxes.remove(&id);
            }
            WriteStep::Wait(write) => self.wait_for(write),
        }
    }

    fn wait_for(&mut self, write: Boxed<Written>) {
        self.writes.push(write);
        self.unpolled = true;
    }

    /// Collects the inputs that are ready (at least one, else `Pending`; once `max` or more
    /// are collected, no further stream is read), completing the writes that are ready on
    /// the way. The watched stream's reads are polled with `watcher`, and only if it woke
    /// since it was last polled (`watched_woke`, which the watcher's waker records) or was
    /// not polled with it yet; the other reads with their own waker ([`Due`]); all else
    /// with `cx`. (A quinn read takes the connection's lock, which quinn's connection task
    /// holds while it handles packets: polled at every turn of a driver that a long write
    /// keeps waking, the watched read made the driver's thread sleep on that lock.)
    pub fn poll_inputs(
        &mut self,
        cx: &mut Context<'_>,
        watcher: &mut Context<'_>,
        watched_woke: bool,
        out: &mut Vec<Input>,
        max: usize,
    ) -> Poll<()> {
        while let Some(Poll::Ready((id, opened))) =
            self.opening.as_mut().map(|f| f.as_mut().poll(cx))
        {
            self.opening = None;
            self.opened(id, opened, out);
            self.start_open();
        }
        // Most writes complete in place, so this set is usually empty: skip it then (polling
        // an empty set costs a waker registration).
        while !self.writes.is_empty() {
            let Poll::Ready(Some(written)) = self.writes.poll_next_unpin(cx) else {
                break;
            };
            self.written(written, out);
        }
        out.append(&mut self.ready);
        if std::mem::take(&mut self.watched_fresh) || watched_woke {
            while let Some((_, recv, chunks)) = &mut self.watched_read {
                if out.len() >= max {
                    // Not polled to `Pending`: it may have more.
                    self.watched_fresh = true;
                    break;
                }
                let Poll::Ready(result) = std::pin::pin!(recv.read_chunks(chunks)).poll(watcher)
                else {
                    // Polled to `Pending` (also a read that `read_done` just set).
                    self.watched_fresh = false;
                    break;
                };
                if let Some((id, recv, chunks)) = self.watched_read.take() {
                    self.read_done((id, recv, chunks, result.map_err(|_| ())), out);
                }
            }
        }
        if out.len() < max && self.reads_due.take() {
            let waker = Waker::from(self.reads_due.clone());
            let mut reads_cx = Context::from_waker(&waker);
            while let Poll::Ready(Some(read)) = self.reads.poll_next_unpin(&mut reads_cx) {
                self.read_done(read, out);
                if out.len() >= max {
                    // More may be ready.
                    self.reads_due.mark();
                    break;
                }
            }
        }
        // Everything queued while polling was polled in turn (reads unless `max` stopped
        // them, which the caller sees).
        self.unpolled = false;
        if out.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Writes what is still queued or in flight (the connection is being closed), without
    /// reading any more.
    pub async fn flush_writes(mut self) {
        self.reads.clear();
        self.watched_read = None;
        // The wire is gone: nothing is waiting for a hash.
        let mut unreported = Vec::new();
        while let Some(written) = self.writes.next().await {
            self.written(written, &mut unreported);
        }
    }

    /// Opens the streams that `unopened` waits for, in order, unless an open is under way:
    /// at once while quinn has stream credit (what that gives is handed out by the next
    /// `poll_inputs`), else through the `opening` future.
    fn start_open(&mut self) {
        while self.opening.is_none() {
            let Some(id) = self.unopened.front().map(|t| t.stream) else {
                return;
            };
            let mut cx = Context::from_waker(Waker::noop());
            let polled = std::pin::pin!(self.conn.open_bi()).poll(&mut cx);
            match polled {
                Poll::Ready(opened) => {
                    let mut ready = std::mem::take(&mut self.ready);
                    self.opened(id, opened, &mut ready);
                    self.unpolled |= !ready.is_empty();
                    self.ready = ready;
                }
                Poll::Pending => {
                    let conn = self.conn.clone();
                    self.opening = Some(Box::pin(async move { (id, conn.open_bi().await) }));
                    self.unpolled = true;
                }
            }
        }
    }

    /// Stream `id` of ours is open (or the connection is gone): writes what waited for it.
    /// The next stream is the caller's to open.
    fn opened(&mut self, id: StreamId, opened: Opened, out: &mut Vec<Input>) {
        match opened {
            Ok((send, recv)) => {
                debug_assert_eq!(send.id().index(), id.index(), "streams open in order");
                self.opened_below = id.index() + 1;
                self.start_reading(id, recv, out);
                // What waited for the stream is written before its outbox is kept: most
                // often a call's request and the stream's end, and then it needs none.
                let mut outbox = Outbox::new(send);
                let mut next = None;
                while self.unopened.front().is_some_and(|t| t.stream == id) {
                    let Some(t) = self.unopened.pop_front() else {
                        break;
                    };
                    // Nothing is written after the stream's end.
                    if !outbox.fin {
                        outbox.fin = t.fin;
                        if !t.data.is_empty() {
                            if let Some(earlier) = next.replace(t) {
                                outbox.queue.push_back(earlier);
                            }
                        }
                    }
                }
                match outbox.write(id, next) {
                    WriteStep::Done => {}
                    WriteStep::Open => {
                        self.outboxes.insert(id, outbox);
                    }
                    WriteStep::Wait(write) => {
                        self.outboxes.insert(id, outbox);
                        self.wait_for(write);
                    }
                }
            }
            Err(e) => {
                // Nothing more opens on a lost connection.
                self.opened_below = self.next_new;
                for t in self.unopened.drain(..).filter(|t| t.report_hash) {
                    out.push(Input::SidecarSent(t.stream, None));
                }
                out.push(Input::Lost(e.to_string()));
            }
        }
    }

    /// A read completed: what it gave goes to `out`, and the stream is read on if it has more.
    fn read_done(&mut self, (id, recv, mut chunks, result): Read, out: &mut Vec<Input>) {
        if self.took(id, &mut chunks, result, out) {
            self.read_into(id, recv, chunks, out);
        }
    }

    /// What a read of stream `id` gave, as inputs in `out`: `true` if the stream has more
    /// to read (then `chunks` is empty again for the next read; else it is spare).
    fn took(
        &mut self,
        id: StreamId,
        chunks: &mut Vec<Bytes>,
        result: Result<Option<usize>, ()>,
        out: &mut Vec<Input>,
    ) -> bool {
        match result {
            Ok(Some(n)) => {
                out.extend(
                    chunks[..n]
                        .iter_mut()
                        .map(|c| Input::Data(id, std::mem::take(c))),
                );
                return true;
            }
            Ok(None) => out.push(Input::Fin(id)),
            Err(()) => {
                out.push(Input::Reset(id));
                chunks.fill(Bytes::new());
            }
        }
        self.spare_chunks.push(std::mem::take(chunks));
        false
    }

    /// Reads the next chunks of `recv` into `chunks` (`READ_BATCH` empty slots). What is
    /// already there is taken at once, into `out` after what the stream gave before (a
    /// request or a response usually is there, often with its stream's end: then the stream
    /// needs no read future at all), up to a few reads.
    fn read_into(
        &mut self,
        id: StreamId,
        mut recv: quinn::RecvStream,
        mut chunks: Vec<Bytes>,
        out: &mut Vec<Input>,
    ) {
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..READS_AT_ONCE {
            let polled = std::pin::pin!(recv.read_chunks(&mut chunks)).poll(&mut cx);
            let Poll::Ready(result) = polled else {
                break;
            };
            if !self.took(id, &mut chunks, result.map_err(|_| ()), out) {
                return;
            }
        }
        self.read_later(id, recv, chunks);
    }

    /// Reads the next chunks of `recv` into `chunks` later: as the watched stream, or
    /// through a future polled with the other reads.
    fn read_later(&mut self, id: StreamId, recv: quinn::RecvStream, chunks: Vec<Bytes>) {
        if self.watched == Some(id) {
            debug_assert!(
                self.watched_read.is_none(),
                "one read of a stream at a time"
            );
            self.watched_read = Some((id, recv, chunks));
            self.watched_fresh = true;
            self.unpolled = true;
        } else {
            self.push_read(read_future((id, recv, chunks)));
        }
    }

    /// A write completed: reports its sidecar hash, if it hashed one, and starts the next
    /// write of the stream. A failed write forgets the stream; sidecar data still queued for
    /// it is reported as not sent, so the wire drops what waits behind it.
    fn written(&mut self, w: Written, out: &mut Vec<Input>) {
        if let Some(hash) = w.sidecar {
            out.push(Input::SidecarSent(w.id, hash));
        }
        let Some(outbox) = self.outboxes.get_mut(&w.id) else {
            return;
        };
        if !w.ok {
            if let Some(outbox) = self.outboxes.remove(&w.id) {
                for t in outbox.queue.into_iter().filter(|t| t.report_hash) {
                    out.push(Input::SidecarSent(t.stream, None));
                }
            }
            return;
        }
        outbox.send = Some(w.send);
        let step = outbox.write(w.id, None);
        self.wrote(w.id, step);
    }
}

/// What is left to do after [`Outbox::write`].
enum WriteStep {
    /// Nothing now: the outbox stays (its stream open for more, or a write in flight).
    Open,
    /// The stream is finished (or gone): its outbox is no longer needed.
    Done,
    /// A write that quinn could not take at once, to poll.
    Wait(Boxed<Written>),
}

impl Outbox {
    fn new(send: quinn::SendStream) -> Outbox {
        Outbox {
            send: Some(send),
            queue: VecDeque::new(),
            fin: false,
        }
    }

    /// Writes what is queued for stream `id`, then `next`, and finishes the stream after
    /// them if `fin`; unless a write is in flight, which then continues with `next` queued.
    fn write(&mut self, id: StreamId, next: Option<Transmit>) -> WriteStep {
        let Some(mut send) = self.send.take() else {
            self.queue.extend(next);
            return WriteStep::Open;
        };
        let fin = self.fin;
        if self.queue.is_empty() && next.is_none() {
            if fin {
                let _ = send.finish();
                return WriteStep::Done;
            }
            self.send = Some(send);
            return WriteStep::Open;
        }
        let queued: Vec<Transmit> = if self.queue.iter().chain(&next).all(|t| !t.report_hash) {
            // Most writes (a call, a response) fit quinn's buffers at once: done here, with no
            // future to allocate and poll. Most are one frame, written from where it lies.
            let (mut one, mut many): ([Bytes; 1], SmallVec<[Bytes; 4]>);
            let plain: &mut [Bytes] = match next {
                Some(t) if self.queue.is_empty() => {
                    one = [t.data];
                    &mut one
                }
                next => {
                    many = self.queue.drain(..).chain(next).map(|t| t.data).collect();
                    &mut many
                }
            };
            if let Some(ok) = write_now(&mut send, plain) {
                // All that was queued is written (or the stream is gone): what `written`
                // does then, with no hash to report.
                if ok && !fin {
                    self.send = Some(send);
                    return WriteStep::Open;
                }
                if ok {
                    let _ = send.finish();
                }
                return WriteStep::Done;
            }
            // What quinn did not take yet (written chunks are emptied) goes on as a future.
            plain
                .iter_mut()
                .filter(|data| !data.is_empty())
                .map(|data| Transmit {
                    stream: id,
                    data: std::mem::take(data),
                    fin: false,
                    report_hash: false,
                })
                .collect()
        } else {
            self.queue.drain(..).chain(next).collect()
        };
        WriteStep::Wait(Box::pin(async move {
            let (ok, sidecar) = write_queued(&mut send, queued).await;
            Written {
                id,
                send,
                ok,
                sidecar,
            }
        }))
    }
}

/// The next read of a stream, as a future for the reads' set.
fn read_future((id, mut recv, mut chunks): Reading) -> Boxed<Read> {
    Box::pin(async move {
        let result = recv.read_chunks(&mut chunks).await.map_err(|_| ());
        (id, recv, chunks, result)
    })
}

/// Writes all of `plain` if quinn takes it without waiting: `Some(whether it was accepted)`.
/// `None` if it has to wait; then what is left of it is still in `plain` (written chunks are
/// emptied, a partly written one keeps its rest), and nothing waits for a wake-up.
fn write_now(send: &mut quinn::SendStream, plain: &mut [Bytes]) -> Option<bool> {
    let mut cx = Context::from_waker(Waker::noop());
    let write = std::pin::pin!(send.write_all_chunks(plain));
    match write.poll(&mut cx) {
        Poll::Ready(result) => Some(result.is_ok()),
        Poll::Pending => None,
    }
}

/// Sidecar data being hashed on tokio's blocking pool while the driver writes it. Dropping
/// it unfinished (the write failed, or the driver went away) stops the hash at its next
/// piece.
struct BackgroundHash {
    hash: tokio::task::JoinHandle<Option<SidecarHash>>,
    given_up: Arc<AtomicBool>,
}

impl BackgroundHash {
    fn start(data: Bytes) -> BackgroundHash {
        let given_up = Arc::new(AtomicBool::new(false));
        let stop = given_up.clone();
        let hash = tokio::task::spawn_blocking(move || {
            let mut hasher = SidecarHasher::new();
            for piece in data.chunks(HASH_PIECE) {
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                hasher.update(piece);
            }
            Some(hasher.finish())
        });
        BackgroundHash { hash, given_up }
    }

    /// The hash, once all of it is hashed (`None` if the runtime shut the pool down first).
    async fn finish(mut self) -> Option<SidecarHash> {
        (&mut self.hash).await.ok().flatten()
    }
}

impl Drop for BackgroundHash {
    fn drop(&mut self) {
        self.given_up.store(true, Ordering::Relaxed);
    }
}

/// Writes `queued` in order: whether every byte was accepted, and for sidecar data to hash
/// (at most one per write: the wire holds the stream's later frames until its report) the
/// report — its hash, or `None` if not all of it was written (or the runtime shut the
/// blocking pool down before it was hashed).
async fn write_queued(
    send: &mut quinn::SendStream,
    queued: Vec<Transmit>,
) -> (bool, Option<Option<SidecarHash>>) {
    let mut plain: Vec<Bytes> = Vec::with_capacity(queued.len());
    let mut sidecar = None;
    for t in queued {
        if !t.report_hash {
            plain.push(t.data);
            continue;
        }
        sidecar = Some(None);
        if send.write_all_chunks(&mut plain).await.is_err() {
            return (false, sidecar);
        }
        plain.clear();
        let hash = BackgroundHash::start(t.data.clone());
        if send.write_chunk(t.data).await.is_err() {
            return (false, sidecar);
        }
        sidecar = Some(hash.finish().await);
    }
    let ok = send.write_all_chunks(&mut plain).await.is_ok();
    (ok, sidecar)
}
