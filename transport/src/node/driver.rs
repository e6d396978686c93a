//! One task per QUIC connection: moves bytes between quinn streams and one sans-IO
//! [`skiff_wire::Connection`], and between that connection and the node.
//!
//! The driver's state owns the `Connection` and the connection's quinn streams, whose reads
//! and writes the task polls itself (`streams.rs`): no task per stream, and a slow stream
//! still never blocks the driver or another call. Commands from the node (start a call,
//! cancel it, respond to an incoming one) arrive on an unbounded channel; events go to the
//! VM thread ([`VmMsg`]) or to the task waiting for an outgoing call's result.
//!
//! The state sits behind a mutex that the task holds while it polls. A caller starting a
//! call, and a VM answering one on the connections' thread, take it only when it is free and
//! no command waits in the channel; they then run the command and write its frames
//! themselves (in the common case straight into quinn's buffers), and wake the task only for
//! what needs it (a stream future to poll, an earlier timer, a close). A warm call thus costs
//! no wake-up of the caller's driver task. Nor does its answer, while it is the connection's
//! only call in flight: the wake-ups of that call's stream then go to its caller, which
//! reads and handles what arrived itself ([`StreamWake`], [`DriverHandle::call`]), and a
//! poll of that caller with nothing arrived since it last read (as in a `LocalSet`, whose
//! tasks share one waker) reads nothing; with more calls in flight the task reads them all
//! and sends each answer to its waiter. A caller that reads for itself has no channel: its
//! answer is kept in the state ([`Reply::Kept`]), taken there by the caller, which asks for
//! a channel once it stops reading. A VM on a thread of its own queues its answers for the
//! task ([`DriverHandle::queue`]; why: `VmLoop::answer`).
//!
//! Invariants:
//! - Nothing blocks on the state's mutex but the task itself, a host reading the wire's
//!   counters ([`DriverHandle::stats`], which waits at most for one bounded turn of the
//!   task) and a caller whose task has ended (only its last steps can hold the state):
//!   commands use `try_lock` and fall back to the channel. Commands run in the order
//!   they were sent: one runs in place only when the channel is empty.
//! - Locally opened quinn streams are opened in the order the wire numbers them, so the
//!   stream ids both sides see agree (the client's first stream is the control stream);
//!   opening one never blocks the driver (`streams.rs`), so waiting for the peer's stream
//!   credit cannot stop it from reading the responses that return that credit.
//! - A stream's wake-up reaches the task, except the watched stream's (the only call's),
//!   which reaches its caller while that caller reads for itself; a caller that stops
//!   (answered, another call started, the state busy, dropped) passes one it may have left
//!   unhandled on to the task. So no arrival waits for a wake-up that went nowhere, and a
//!   caller that is not polled holds up its own answer only.
//! - Every outgoing call ends with exactly one reply to its waiter: its result, or
//!   `connection_lost` when the connection goes away. Dropping the waiter cancels the call.
//! - A kept answer's caller learns of it: it is the one reading (and takes it before it
//!   lets the state go), or the route leads to it (and wakes it), or it was woken when the
//!   route left it and, not reading any more, takes the answer or a channel for it.
//! - When the connection closes, every incoming call it carried is reported cancelled to the
//!   VM thread, which stops the execution and frees its slot.
//! - A poll that takes quinn's connection lock (reading a stream, accepting one) is made
//!   only after that source woke, or before its waker was registered ([`Due`], the watched
//!   stream's `StreamWake::woken`), never at every turn of the task: quinn's connection
//!   task holds that lock while it handles packets, and a driver that a long write keeps
//!   waking slept on it (`benches/README.md`, twenty-seventh session).

use super::due::Due;
use super::inline;
use super::streams::{Input, Streams};
use super::vm::VmMsg;
use super::{CodeWhenAsked, Shared};
use skiff_vm::Portable;
use skiff_wire::idmap::{IdMap, IdSet};
use skiff_wire::{
    CallError, CallId, CallOptions, CloseReason, Connection, ErrorKind, Event, RemoteError, Side,
    Stats, StreamId,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// Most queued inputs (or commands) the driver handles before it flushes.
const BATCH: usize = 64;

/// Most rounds (handle what is ready, flush) the driver runs per turn of its task.
const ROUNDS: usize = 8;

/// What the node asks of a connection's driver.
pub(crate) enum DriverCmd {
    /// Start an outgoing call; its answer goes to `reply`. Its token is `opts.tag`.
    Call { opts: CallOptions, reply: Reply },
    /// From now on send the answer of the call started with `token` to `reply` (its caller
    /// read for itself, and stopped while the state was busy).
    Subscribe {
        token: u64,
        reply: oneshot::Sender<Answer>,
    },
    /// Cancel the outgoing call started with `token` (the callee stops it).
    Cancel { token: u64 },
    /// Answer an incoming call.
    Respond {
        id: CallId,
        result: Result<Portable, RemoteError>,
    },
    /// Close the connection.
    Close,
}

/// An outgoing call's answer: its result, or the error it ended with.
pub(crate) type Answer = Result<Portable, RemoteError>;

/// Where an outgoing call's answer goes.
pub(crate) enum Reply {
    /// To its caller's channel.
    Channel(oneshot::Sender<Answer>),
    /// Into the state, for a caller that reads for itself (`Driver::read_answer` while it
    /// reads, else [`Driver::kept`]): it takes the answer while it holds the state, woken
    /// through the route if someone else read it, and asks for a channel when it stops
    /// reading.
    Kept,
}

/// A cheap handle on a running driver (one reference count to clone: every incoming call
/// holds one).
#[derive(Clone)]
pub(crate) struct DriverHandle(Arc<DriverLink>);

/// What a [`DriverHandle`] reaches.
pub(crate) struct DriverLink {
    /// quinn's stable id of the connection.
    pub id: usize,
    /// The authenticated peer name, or `None` for an unidentified (accept-any) client.
    pub peer: Option<Arc<str>>,
    pub tx: mpsc::UnboundedSender<DriverCmd>,
    pub conn: quinn::Connection,
    /// The driver's state. Its task holds the lock while it polls; a caller starting a call
    /// and the VM answering one take it only if it is free (`try_lock`), and then do the
    /// work themselves, so the task is not woken for it.
    core: Mutex<Driver>,
    /// Where wake-ups of the watched stream go.
    route: Arc<StreamWake>,
}

/// Where the wake-ups of the watched stream go (the stream of the connection's only outgoing
/// call, [`Streams::watch`]): to the caller awaiting that call, which then reads and handles
/// what arrived itself ([`DriverHandle::call`]), else to the driver task. A caller's answer
/// thus reaches it with no wake-up of the task in between.
///
/// Invariant: a wake-up routed to a caller that stops reading (its answer came, another call
/// started, the state was busy, it went away) is passed on to the task, unless the streams
/// were read since (`woken` is cleared just before every read).
struct StreamWake {
    to: Mutex<WakeTargets>,
    /// The watched stream woke since the streams were last read.
    woken: AtomicBool,
    /// The token of the caller the route leads to ([`NOBODY`]: the task), as `to` says: read
    /// without the lock by a caller checking that the route still leads to it.
    routed: AtomicU64,
    /// An answer is kept in the state for a caller that did not read it itself
    /// ([`Reply::Kept`]); cleared when the last one is taken.
    answered: AtomicBool,
}

/// [`StreamWake::routed`] when the route leads to the task.
const NOBODY: u64 = u64::MAX;

impl Default for StreamWake {
    fn default() -> Self {
        StreamWake {
            to: Mutex::default(),
            woken: AtomicBool::new(false),
            routed: AtomicU64::new(NOBODY),
            answered: AtomicBool::new(false),
        }
    }
}

#[derive(Default)]
struct WakeTargets {
    /// The driver task's waker, once it has polled.
    task: Option<Waker>,
    /// The caller reading for itself: its call's token and waker.
    caller: Option<(u64, Waker)>,
}

impl Wake for StreamWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let to = self.to.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waker) = to.caller.as_ref().map(|(_, w)| w).or(to.task.as_ref()) {
            waker.wake_by_ref();
        }
    }
}

impl StreamWake {
    fn set_task(&self, waker: &Waker) {
        let mut to = self.to.lock().unwrap_or_else(|e| e.into_inner());
        to.task = Some(waker.clone());
    }

    /// Routes the watched stream's wake-ups to the caller of call `token`.
    fn set_caller(&self, token: u64, waker: &Waker) {
        let mut to = self.to.lock().unwrap_or_else(|e| e.into_inner());
        match &mut to.caller {
            Some((t, w)) if *t == token => w.clone_from(waker),
            caller => *caller = Some((token, waker.clone())),
        }
        self.routed.store(token, Ordering::Release);
    }

    /// Whether the watched stream's wake-ups go to the caller of call `token`.
    fn leads_to(&self, token: u64) -> bool {
        self.routed.load(Ordering::Acquire) == token
    }

    /// An answer for the caller of call `token` was kept in the state: wakes that caller if
    /// the route leads to it (else it is on its way to the state or to a channel: it was
    /// woken when the route left it, [`StreamWake::clear_caller`]).
    fn answer_kept(&self, token: u64) {
        self.answered.store(true, Ordering::Release);
        let to = self.to.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, waker)) = to.caller.as_ref().filter(|(t, _)| *t == token) {
            waker.wake_by_ref();
        }
    }

    /// Routes the watched stream's wake-ups to `waker` if they still go to the caller of
    /// call `token`; false if they no longer do (another call started, or it stopped).
    fn renew_caller(&self, token: u64, waker: &Waker) -> bool {
        let mut to = self.to.lock().unwrap_or_else(|e| e.into_inner());
        match &mut to.caller {
            Some((t, w)) if *t == token => {
                w.clone_from(waker);
                true
            }
            _ => false,
        }
    }

    /// Routes the watched stream's wake-ups back to the task (only if the caller reading is
    /// the one of call `token`, when given), passing on one the caller may not have handled.
    /// A caller the route is taken from (`token` `None`: by the state, as another call
    /// starts) is woken, so that it asks for its answer another way.
    fn clear_caller(&self, token: Option<u64>) {
        let mut to = self.to.lock().unwrap_or_else(|e| e.into_inner());
        if to
            .caller
            .as_ref()
            .is_none_or(|(t, _)| token.is_some_and(|token| token != *t))
        {
            return;
        }
        let caller = to.caller.take();
        self.routed.store(NOBODY, Ordering::Release);
        if let (None, Some((_, waker))) = (token, caller) {
            waker.wake();
        }
        if self.woken.load(Ordering::Acquire) {
            if let Some(task) = &to.task {
                task.wake_by_ref();
            }
        }
    }
}

/// A waker's identity: its data and vtable addresses. A waker that a poll is given is the
/// same as one an earlier poll was given if both are equal, while a clone of the earlier one
/// is kept (its data then cannot be freed and reused). `Waker::will_wake` cannot tell: a
/// runtime may hand out a borrowed waker whose clones have a vtable of their own (tokio's
/// `block_on` does), so a clone never "will wake" the waker it was made from.
#[derive(Clone, Copy, PartialEq, Eq)]
struct WakerId(usize, usize);

impl WakerId {
    fn of(waker: &Waker) -> WakerId {
        WakerId(waker.data() as usize, waker.vtable() as *const _ as usize)
    }
}

/// An outgoing call, started at its first poll and then awaited by its caller
/// ([`DriverHandle::call`]).
///
/// While the caller reads for itself, its answer is kept in the state ([`Reply::Kept`]) and
/// there is no channel: the route leads to the caller (`reading`), so an answer someone
/// else reads wakes it. A caller that stops reading takes its answer from the state if it
/// came, else asks for a channel: at once while it holds the state, by a command
/// ([`DriverCmd::Subscribe`]) while the task does.
struct AwaitReply<'a> {
    link: &'a DriverHandle,
    /// The call's command (its answer kept, [`Reply::Kept`]), until the first poll sends it.
    call: Option<DriverCmd>,
    token: u64,
    /// The answer's channel, once there is one.
    rx: Option<oneshot::Receiver<Answer>>,
    /// The waker `rx` holds (without `rx`: the route, while `reading`): a clone of the one
    /// of the poll that registered it, and that one's identity ([`WakerId`]).
    waker: Option<(Waker, WakerId)>,
    /// This caller read the streams when last polled, and their wake-ups came to it.
    reading: bool,
}

impl AwaitReply<'_> {
    /// The answer if it came through `rx` (`Some(None)`: the connection went away first),
    /// without registering a waker: `rx` holds the caller's already.
    fn answer(rx: &mut oneshot::Receiver<Answer>) -> Option<Option<Answer>> {
        match rx.try_recv() {
            Ok(result) => Some(Some(result)),
            Err(oneshot::error::TryRecvError::Closed) => Some(None),
            Err(oneshot::error::TryRecvError::Empty) => None,
        }
    }

    /// Makes `rx`, if there is one, hold a no-op waker instead of the caller's (the answer
    /// if it came, as [`AwaitReply::answer`]): the next [`AwaitReply::wait`] registers the
    /// caller's again.
    fn quiet(&mut self) -> Option<Option<Answer>> {
        let rx = self.rx.as_mut()?;
        self.waker = None;
        let mut quiet = Context::from_waker(Waker::noop());
        match Pin::new(&mut tokio::task::unconstrained(rx)).poll(&mut quiet) {
            Poll::Ready(r) => Some(r.ok()),
            Poll::Pending => None,
        }
    }

    /// Whether `rx` (without `rx`: the route) holds `cx`'s waker (a clone of it) already.
    fn registered(&self, cx: &Context<'_>) -> bool {
        self.waker
            .as_ref()
            .is_some_and(|(_, id)| *id == WakerId::of(cx.waker()))
    }

    /// Waits with `cx`'s waker: on `rx`, registering the waker if it is new; without `rx`,
    /// on the route, which a caller that reads has given the waker already.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<Option<Answer>> {
        let registered = self.registered(cx);
        if !registered {
            self.waker = Some((cx.waker().clone(), WakerId::of(cx.waker())));
        }
        let Some(rx) = &mut self.rx else {
            return Poll::Pending;
        };
        if registered {
            return Self::answer(rx).map_or(Poll::Pending, Poll::Ready);
        }
        // Unconstrained: a poll refused for want of the task's budget registers no waker.
        Pin::new(&mut tokio::task::unconstrained(rx))
            .poll(cx)
            .map(Result::ok)
    }

    /// The first poll. While the state is free the call runs here (its new stream polled
    /// here too): then its caller reads on for itself if it is the connection's only call,
    /// else it gets a channel. Otherwise the call is queued with a channel.
    fn start(&mut self, mut call: DriverCmd, cx: &mut Context<'_>) -> Poll<Option<Answer>> {
        let (link, token) = (self.link, self.token);
        let Some(mut d) = link.free_state() else {
            let (tx, rx) = oneshot::channel();
            self.rx = Some(rx);
            if let DriverCmd::Call { reply, .. } = &mut call {
                *reply = Reply::Channel(tx);
            }
            link.queue(call);
            return self.wait(cx);
        };
        d.reader = Some(token);
        d.command(call);
        d.flush(link);
        // Answered already: a call that could not start.
        let mut answer = d.read_answer.take();
        if answer.is_none() {
            if d.pending.len() == 1 && d.pending.contains_key(&token) {
                link.route.set_caller(token, cx.waker());
                self.reading = true;
            } else {
                self.rx = Some(d.subscribe(token));
            }
            d.settle(link);
            answer = d.read_answer.take();
        }
        d.reader = None;
        drop(d);
        match answer {
            Some(answer) => Poll::Ready(Some(answer)),
            None => self.wait(cx),
        }
    }
}

impl Future for AwaitReply<'_> {
    /// The call's answer; `None` if the connection went away first.
    type Output = Option<Answer>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let (link, token) = (this.link, this.token);
        if let Some(call) = this.call.take() {
            return this.start(call, cx);
        }
        // Polled again with nothing arrived on its stream since it read and no answer kept
        // for it: nothing to read. (A caller awaiting in a `LocalSet`'s `run_until` is
        // polled at every wake-up of any of the set's tasks, quinn's included: on one
        // thread, several times a call.) With the route still leading here and the same
        // waker, the route needs no renewal. Else the check follows the renewal, so a
        // wake-up after it polls this caller again.
        let was_reading = std::mem::take(&mut this.reading);
        let calm = |route: &StreamWake| {
            !route.woken.load(Ordering::Acquire) && !route.answered.load(Ordering::Acquire)
        };
        if was_reading
            && calm(&link.route)
            && link.route.leads_to(token)
            && (this.registered(cx)
                || (link.route.renew_caller(token, cx.waker()) && calm(&link.route)))
        {
            this.reading = true;
            return this.wait(cx);
        }
        match link.core.try_lock() {
            Ok(mut d) => {
                if let Some(answer) = d.take_kept(token) {
                    return Poll::Ready(Some(answer));
                }
                if d.closed
                    || !d.cmds.is_empty()
                    || d.pending.len() != 1
                    || !d.pending.contains_key(&token)
                {
                    if this.rx.is_none() {
                        this.rx = Some(d.subscribe(token));
                        this.waker = None;
                    }
                    drop(d);
                    link.route.clear_caller(Some(token));
                } else {
                    // This caller may read its own answer now, which must not wake it: a
                    // wake-up of itself would only schedule it again (on a multi-thread
                    // runtime, as a task other workers are woken to take). So its answer
                    // is kept without a wake-up (`reader`), or, with a channel, `rx` holds
                    // a no-op waker while it reads, and its waker again once it waits.
                    // A caller that read when last polled, with this same waker, is still
                    // where the route leads while `leads_to` says so, so the route is left
                    // as it is.
                    let routed = was_reading && this.registered(cx) && link.route.leads_to(token);
                    if let Some(r) = this.quiet() {
                        return Poll::Ready(r);
                    }
                    if !routed {
                        link.route.set_caller(token, cx.waker());
                    }
                    d.reader = Some(token);
                    let more = d.read_streams();
                    d.flush(link);
                    d.reader = None;
                    d.wake_task_if_needed(more);
                    let answer = match &mut this.rx {
                        None => d.read_answer.take().map(Some),
                        Some(rx) => Self::answer(rx),
                    };
                    if let Some(r) = answer {
                        d.shared.note_read_by_caller();
                        return Poll::Ready(r);
                    }
                    this.reading = true;
                }
            }
            // The task (or an answer made in place) holds the state: it reads on, and sends
            // the answer through a channel it is asked for.
            Err(_) => {
                if this.rx.is_none() {
                    let (tx, rx) = oneshot::channel();
                    this.rx = Some(rx);
                    this.waker = None;
                    if link
                        .tx
                        .send(DriverCmd::Subscribe { token, reply: tx })
                        .is_err()
                    {
                        // The task has ended: the state keeps the answer if it came.
                        let mut d = link.core.lock().unwrap_or_else(|e| e.into_inner());
                        return Poll::Ready(d.take_kept(token));
                    }
                }
                link.route.clear_caller(Some(token));
            }
        }
        this.wait(cx)
    }
}

impl Drop for AwaitReply<'_> {
    fn drop(&mut self) {
        self.link.route.clear_caller(Some(self.token));
    }
}

impl std::ops::Deref for DriverHandle {
    type Target = DriverLink;
    fn deref(&self) -> &DriverLink {
        &self.0
    }
}

impl DriverHandle {
    /// The wire's counters now. Waits for the state while the task polls (one bounded turn).
    pub fn stats(&self) -> Stats {
        let d = self.core.lock().unwrap_or_else(|e| e.into_inner());
        d.wire.stats().clone()
    }

    pub fn is_live(&self) -> bool {
        self.conn.close_reason().is_none() && !self.tx.is_closed()
    }

    /// Hands `cmd` to the driver. An answer runs here, in place, when the driver's state is
    /// free and nothing waits in the channel before it; otherwise, and for the other
    /// commands (rare, and never waited on), it goes through the channel. A call is sent
    /// the same way by [`DriverHandle::call`], which awaits it.
    pub fn send(&self, cmd: DriverCmd) {
        if matches!(cmd, DriverCmd::Respond { .. }) {
            if let Some(mut d) = self.free_state() {
                d.command(cmd);
                d.flush(self);
                d.settle(self);
                return;
            }
        }
        self.queue(cmd);
    }

    /// Sends the call `opts` as call `token` (in place at the first poll while the state is
    /// free, else through the channel) and waits for its answer; `None` if the connection
    /// went away first. While it is the connection's only call, this caller reads the
    /// streams itself when the call's stream wakes, and so gets its answer without a wake-up
    /// of the driver task; otherwise the task reads and sends the answer. Dropping the
    /// future leaves the call to be cancelled by the caller.
    pub fn call(
        &self,
        token: u64,
        mut opts: CallOptions,
    ) -> impl Future<Output = Option<Answer>> + '_ {
        // The wire gives the token back with the call's result.
        opts.tag = token;
        // The waiter itself, not an `async` block around it: one state machine fewer to
        // step through at each of the caller's polls.
        AwaitReply {
            link: self,
            call: Some(DriverCmd::Call {
                opts,
                reply: Reply::Kept,
            }),
            token,
            rx: None,
            waker: None,
            reading: false,
        }
    }

    /// Hands `cmd` to the driver's task, never running it here.
    pub fn queue(&self, cmd: DriverCmd) {
        // A gone driver already failed every call it carried.
        let _ = self.tx.send(cmd);
    }

    /// The state, if it is free and no command waits in the channel: a command run on it
    /// now keeps the commands' order.
    fn free_state(&self) -> Option<MutexGuard<'_, Driver>> {
        let d = self.core.try_lock().ok()?;
        (!d.closed && d.cmds.is_empty()).then_some(d)
    }
}

fn wire_id(id: quinn::StreamId) -> StreamId {
    let side = match id.initiator() {
        quinn::Side::Client => Side::Client,
        quinn::Side::Server => Side::Server,
    };
    StreamId::new(side, id.index())
}

/// Starts the driver task of `conn`; returns its handle.
pub(crate) fn spawn(
    shared: &Arc<Shared>,
    conn: quinn::Connection,
    side: Side,
    peer: Option<Arc<str>>,
) -> DriverHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let route = Arc::new(StreamWake::default());
    let verifier: skiff_wire::Verifier = Arc::new(super::verify_blob);
    let wire = Connection::new(
        side,
        shared.wire_config.clone(),
        shared.store.clone(),
        verifier,
    );
    let core = Driver {
        shared: shared.clone(),
        cmds: rx,
        wire,
        streams: Streams::new(conn.clone(), side),
        pending: IdMap::default(),
        kept: IdMap::default(),
        reader: None,
        read_answer: None,
        incoming: IdSet::default(),
        closed: false,
        armed_for: None,
        waker: None,
        stream_waker: Waker::from(route.clone()),
        route: route.clone(),
        inputs: Vec::with_capacity(BATCH),
        input_clock: None,
    };
    let handle = DriverHandle(Arc::new(DriverLink {
        id: conn.stable_id(),
        peer: peer.clone(),
        tx,
        conn,
        core: Mutex::new(core),
        route,
    }));
    let span = tracing::info_span!(
        "connection",
        node = %shared.name,
        peer = peer.as_deref().unwrap_or("?"),
        id = handle.id,
    );
    shared
        .spawner
        .spawn(drive(handle.clone(), side).instrument(span));
    handle
}

struct Driver {
    shared: Arc<Shared>,
    /// Commands that could not run in place ([`DriverHandle::send`]), in order.
    cmds: mpsc::UnboundedReceiver<DriverCmd>,
    wire: Connection,
    streams: Streams,
    /// Outgoing calls: token (the wire's tag of the call) → (wire id, where the answer goes).
    pending: IdMap<u64, (CallId, Reply)>,
    /// Answers kept for callers that read for themselves ([`Reply::Kept`]), until taken.
    kept: IdMap<u64, Answer>,
    /// The call whose caller holds the state to read its own answer: that answer goes to
    /// `read_answer`, for the caller to take before it lets the state go.
    reader: Option<u64>,
    read_answer: Option<Answer>,
    /// Incoming calls handed to the VM thread, not yet answered or cancelled.
    incoming: IdSet<CallId>,
    closed: bool,
    /// When the task's timer fires (`None`: not armed).
    armed_for: Option<Instant>,
    /// The task's waker (once it has polled), for work done in place.
    waker: Option<Waker>,
    /// What the watched stream is polled with: wakes the task or a caller ([`StreamWake`]).
    stream_waker: Waker,
    route: Arc<StreamWake>,
    /// Scratch space of [`Driver::read_streams`] (empty between its calls), kept so that
    /// whoever reads — the task, a command run in place, a caller reading its own answer —
    /// reuses one allocation.
    inputs: Vec<Input>,
    /// The clock as the last [`Driver::read_streams`] handed its inputs to the wire, until
    /// the [`Driver::flush`] after it ends: the incoming calls that flush sees were decoded
    /// at that reading (their deadlines count from it), and an inline run judges its
    /// deadline by it too, without reading the clock again.
    input_clock: Option<Instant>,
}

async fn drive(handle: DriverHandle, side: Side) {
    let conn = handle.conn.clone();
    tracing::debug!("driver started");
    // One timer for the connection's whole life. It is moved only to an earlier instant: a
    // later `poll_timeout` (each new call's deadline is) leaves it where it is, and when it
    // fires early the wire finds nothing due and the loop sets it again.
    let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(sleep);
    // One accept future, replaced only when it completes, polled only after it woke: each
    // poll takes quinn's connection lock, and the task wakes for every read and write.
    let acceptor = conn.clone();
    let accept = acceptor.accept_bi();
    tokio::pin!(accept);
    let accept_due = Due::new(true);
    let accept_waker = Waker::from(accept_due.clone());
    std::future::poll_fn(|cx| {
        let mut d = handle.core.lock().unwrap_or_else(|e| e.into_inner());
        if !d.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            d.waker = Some(cx.waker().clone());
            handle.route.set_task(cx.waker());
            d.streams.set_task(cx.waker());
            accept_due.set_task(cx.waker());
        }
        // A wake-up does not say which source woke the task, so each is polled once (the
        // accept future only if it woke: `accept_due`); after that only a source whose
        // state may have changed without a wake-up (it was ready, or the flush gave it new
        // work) is polled again: one that returned `Pending` has registered the waker.
        let mut poll_cmds = true;
        let mut poll_streams = true;
        let mut poll_timer = true;
        for _ in 0..ROUNDS {
            if std::mem::take(&mut poll_cmds) {
                for _ in 0..BATCH {
                    match d.cmds.poll_recv(cx) {
                        Poll::Ready(Some(cmd)) => {
                            d.command(cmd);
                            poll_cmds = true;
                        }
                        // The channel closes only when this task ends (the link, which
                        // the task holds, holds its sender).
                        Poll::Ready(None) | Poll::Pending => {
                            poll_cmds = false;
                            break;
                        }
                    }
                }
            }
            // A stream the peer opened first, so that what it carries is read this round.
            if accept_due.take() {
                let mut accept_cx = Context::from_waker(&accept_waker);
                if let Poll::Ready(stream) = accept.as_mut().poll(&mut accept_cx) {
                    accept.set(acceptor.accept_bi());
                    accept_due.mark();
                    match stream {
                        Ok((send, recv)) => d.streams.add(wire_id(recv.id()), send, recv),
                        Err(e) => d.wire.handle_connection_lost(e.to_string()),
                    }
                    poll_streams |= d.streams.take_unpolled();
                }
            }
            if std::mem::take(&mut poll_streams) {
                poll_streams = d.read_streams();
            }
            if std::mem::take(&mut poll_timer)
                && d.armed_for.is_some()
                && sleep.as_mut().poll(cx).is_ready()
            {
                d.armed_for = None;
                d.wire.handle_timeout(Instant::now());
            }
            d.flush(&handle);
            if d.closed {
                return Poll::Ready(());
            }
            if let Some(at) = d.wire.poll_timeout() {
                if d.armed_for.is_none_or(|armed| at < armed) {
                    sleep.as_mut().reset(at.into());
                    d.armed_for = Some(at);
                    poll_timer = true;
                }
            }
            poll_streams |= d.streams.take_unpolled();
            if !(poll_cmds || poll_streams || poll_timer || accept_due.is_due()) {
                return Poll::Pending;
            }
        }
        // Still busy after `ROUNDS` rounds: the rest waits for the task's next turn, so
        // one busy connection does not hold the thread.
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
    let mut d = handle.core.lock().unwrap_or_else(|e| e.into_inner());
    // The receiver outlives the task (it is in the state): closed and emptied here, so a
    // command sent from now on fails and one still queued is dropped, and their waiters see
    // the connection gone; a queued `Subscribe` gets its caller's kept answer first.
    d.cmds.close();
    while let Ok(cmd) = d.cmds.try_recv() {
        if let DriverCmd::Subscribe { token, reply } = cmd {
            d.subscribe_with(token, reply);
        }
    }
    d.shared.forget_driver(&handle);
    let reason = d
        .wire
        .close_reason()
        .map(|r| r.to_string())
        .unwrap_or_default();
    tracing::debug!(%reason, "driver stopped");
    // The last frames (e.g. a final response) are written before the connection closes.
    let streams = std::mem::replace(&mut d.streams, Streams::new(conn.clone(), side));
    let spawner = d.shared.spawner.clone();
    drop(d);
    spawner.spawn(async move {
        streams.flush_writes().await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        conn.close(quinn::VarInt::from_u32(0), b"closed");
    });
}

impl Driver {
    /// Polls the streams and handles what they gave; `true` if they may have more (`BATCH`
    /// was taken), else every stream was polled to `Pending`.
    fn read_streams(&mut self) -> bool {
        let watched_woke = self.route.woken.swap(false, Ordering::AcqRel);
        // Before the task's first poll, nothing needs its waker: that poll reads everything.
        let mut cx = Context::from_waker(self.waker.as_ref().unwrap_or(Waker::noop()));
        let mut watcher = Context::from_waker(&self.stream_waker);
        let mut inputs = std::mem::take(&mut self.inputs);
        let polled =
            self.streams
                .poll_inputs(&mut cx, &mut watcher, watched_woke, &mut inputs, BATCH);
        let full = match polled {
            Poll::Pending => false,
            Poll::Ready(()) => {
                let now = Instant::now();
                self.input_clock = Some(now);
                let full = inputs.len() >= BATCH;
                for input in inputs.drain(..) {
                    self.input(input, now);
                }
                full
            }
        };
        self.inputs = inputs;
        full
    }

    /// After work done outside the task (a command run in place, a caller reading for
    /// itself), wakes the task for what only it does: read on (`more`), poll what the flush
    /// queued, move its timer earlier, end after a close.
    fn wake_task_if_needed(&mut self, more: bool) {
        let timer = self
            .wire
            .poll_timeout()
            .is_some_and(|at| self.armed_for.is_none_or(|armed| at < armed));
        if more || timer || self.closed || self.streams.has_unpolled() {
            if let Some(waker) = &self.waker {
                waker.wake_by_ref();
            }
        }
    }

    /// After a command run in place: polls a new stream future (a call's stream waiting
    /// for its answer) here, so the task need not wake up just to poll it, and wakes the
    /// task for what only it does.
    fn settle(&mut self, link: &DriverHandle) {
        let mut more = false;
        if self.streams.has_unpolled() {
            more = self.read_streams();
            self.flush(link);
        }
        self.wake_task_if_needed(more);
    }

    /// Gives call `token` its answer: on its channel, to its caller if it is the one
    /// reading now, else kept for its caller, which is woken.
    fn deliver(&mut self, token: u64, reply: Reply, answer: Answer) {
        match reply {
            Reply::Channel(tx) => {
                let _ = tx.send(answer);
            }
            Reply::Kept if self.reader == Some(token) => self.read_answer = Some(answer),
            Reply::Kept => {
                self.kept.insert(token, answer);
                self.route.answer_kept(token);
            }
        }
    }

    /// Takes the answer kept for call `token`, if it came.
    fn take_kept(&mut self, token: u64) -> Option<Answer> {
        if self.kept.is_empty() {
            return None;
        }
        let answer = self.kept.remove(&token);
        if self.kept.is_empty() {
            self.route.answered.store(false, Ordering::Release);
        }
        answer
    }

    /// A channel for the answer of call `token`, whose caller stops reading for itself.
    fn subscribe(&mut self, token: u64) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        self.subscribe_with(token, tx);
        rx
    }

    /// Sends the answer of call `token` to `tx`: now if it is kept, else when it comes. A
    /// call no longer known drops `tx` (its waiter then sees the connection gone).
    fn subscribe_with(&mut self, token: u64, tx: oneshot::Sender<Answer>) {
        if let Some(answer) = self.take_kept(token) {
            let _ = tx.send(answer);
        } else if let Some((_, reply)) = self.pending.get_mut(&token) {
            *reply = Reply::Channel(tx);
        }
    }

    fn input(&mut self, input: Input, now: Instant) {
        match input {
            Input::Data(id, data) => self.wire.handle_stream_data(id, data, now),
            Input::Fin(id) => self.wire.handle_stream_finished(id, now),
            Input::Reset(id) => self.wire.handle_stream_reset(id, now),
            Input::Lost(reason) => self.wire.handle_connection_lost(reason),
            Input::SidecarSent(id, hash) => self.wire.handle_sidecar_sent(id, hash),
        }
    }

    fn command(&mut self, cmd: DriverCmd) {
        match cmd {
            DriverCmd::Call { opts, reply } => {
                let token = opts.tag;
                let code = CodeWhenAsked::new(&self.shared.code);
                let result = self.wire.start_call(opts, &code, Instant::now());
                drop(code);
                match result {
                    Ok(id) => {
                        self.pending.insert(token, (id, reply));
                        if self.pending.len() == 1 {
                            // The only call: its caller may read its answer itself.
                            self.streams.watch(Some(id));
                        } else {
                            // Several answers to wait for: the task reads them all.
                            self.streams.watch(None);
                            self.route.clear_caller(None);
                        }
                    }
                    Err(e) => {
                        let kind = match &e {
                            CallError::Closed => ErrorKind::ConnectionLost,
                            CallError::MissingBlob(_) => ErrorKind::MissingBlobs,
                            CallError::Limit(_) => ErrorKind::Limit,
                        };
                        self.deliver(token, reply, Err(RemoteError::new(kind, e.to_string())));
                    }
                }
            }
            DriverCmd::Subscribe { token, reply } => self.subscribe_with(token, reply),
            DriverCmd::Cancel { token } => {
                if let Some((id, _)) = self.pending.remove(&token) {
                    self.wire.cancel(id);
                }
                self.take_kept(token);
            }
            DriverCmd::Respond { id, result } => {
                self.incoming.remove(&id);
                self.wire.respond(id, result);
            }
            DriverCmd::Close => self
                .wire
                .close(CloseReason::Local("closed by the node".into())),
        }
    }

    /// Writes every pending transmit and dispatches every event.
    fn flush(&mut self, handle: &DriverHandle) {
        loop {
            let mut progress = false;
            while let Some(t) = self.wire.poll_transmit() {
                progress = true;
                let (stream, report_hash) = (t.stream, t.report_hash);
                if !self.streams.write(t) && report_hash {
                    self.wire.handle_sidecar_sent(stream, None);
                }
            }
            while let Some(event) = self.wire.poll_event() {
                progress = true;
                self.event(event, handle);
            }
            if !progress {
                break;
            }
        }
        self.input_clock = None;
    }

    fn event(&mut self, event: Event, handle: &DriverHandle) {
        match event {
            Event::Connected(info) => tracing::debug!(peer = %info.node, "hello exchanged"),
            Event::IncomingCall(call) => {
                tracing::debug!(id = ?call.id, caller = %call.caller, "incoming call");
                let now = self.input_clock.unwrap_or_else(Instant::now);
                let peer = handle.peer.as_ref();
                if let Some(value) = inline::try_answer(&self.shared, peer, &call, now) {
                    tracing::debug!(id = ?call.id, "answered inline");
                    self.shared.note_inline();
                    self.wire.respond(call.id, Ok(value));
                    return;
                }
                self.incoming.insert(call.id);
                self.shared.to_vm(VmMsg::Incoming {
                    driver: handle.clone(),
                    call: Box::new(call),
                });
            }
            Event::CallResult { tag, result, .. } => {
                if let Some((_, reply)) = self.pending.remove(&tag) {
                    self.deliver(tag, reply, result);
                }
            }
            Event::CallCancelled { id, reason } => {
                tracing::debug!(?id, reason = reason.as_str(), "incoming call cancelled");
                if self.incoming.remove(&id) {
                    self.shared.to_vm(VmMsg::Cancelled {
                        conn: handle.id,
                        id,
                    });
                }
            }
            Event::PeerError { stream, reply } => {
                tracing::debug!(?stream, code = %reply.code, message = %reply.message, "peer error reply")
            }
            Event::Closed(reason) => {
                tracing::debug!(%reason, "connection closed");
                self.closed = true;
                for (token, (_, reply)) in std::mem::take(&mut self.pending) {
                    let lost = RemoteError::new(ErrorKind::ConnectionLost, reason.to_string());
                    self.deliver(token, reply, Err(lost));
                }
                for id in self.incoming.drain() {
                    self.shared.to_vm(VmMsg::Cancelled {
                        conn: handle.id,
                        id,
                    });
                }
            }
        }
    }
}
