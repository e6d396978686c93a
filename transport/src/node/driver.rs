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
//! and sends each answer to its waiter. A VM on a thread of its own queues its answers for
//! the task ([`DriverHandle::queue`]; why: `VmLoop::answer`).
//!
//! Invariants:
//! - Nothing blocks on the state's mutex but the task itself and a host reading the wire's
//!   counters ([`DriverHandle::stats`], which waits at most for one bounded turn of the
//!   task): commands use `try_lock` and fall back to the channel. Commands run in the order
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
//! - When the connection closes, every incoming call it carried is reported cancelled to the
//!   VM thread, which stops the execution and frees its slot.

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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    /// Start an outgoing call; the result goes to `reply`. Its token is `opts.tag`.
    Call {
        opts: CallOptions,
        reply: oneshot::Sender<Result<Portable, RemoteError>>,
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
#[derive(Default)]
struct StreamWake {
    to: Mutex<WakeTargets>,
    /// The watched stream woke since the streams were last read.
    woken: AtomicBool,
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
    fn clear_caller(&self, token: Option<u64>) {
        let mut to = self.to.lock().unwrap_or_else(|e| e.into_inner());
        if to
            .caller
            .as_ref()
            .is_none_or(|(t, _)| token.is_some_and(|token| token != *t))
        {
            return;
        }
        to.caller = None;
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
struct AwaitReply<'a> {
    link: &'a DriverHandle,
    /// The call's command, until the first poll sends it.
    call: Option<DriverCmd>,
    token: u64,
    rx: oneshot::Receiver<Result<Portable, RemoteError>>,
    /// The waker `rx` (and, while `reading`, the watched stream) wakes: a clone of the one
    /// of the poll that registered it, and that one's identity ([`WakerId`]).
    waker: Option<(Waker, WakerId)>,
    /// This caller read the streams when last polled, and their wake-ups came to it.
    reading: bool,
}

impl AwaitReply<'_> {
    /// The answer if it came (`Some(None)`: the connection went away first), without
    /// registering a waker: `rx` holds the caller's already.
    fn answer(&mut self) -> Option<Option<Result<Portable, RemoteError>>> {
        match self.rx.try_recv() {
            Ok(result) => Some(Some(result)),
            Err(oneshot::error::TryRecvError::Closed) => Some(None),
            Err(oneshot::error::TryRecvError::Empty) => None,
        }
    }

    /// Makes `rx` hold a no-op waker instead of the caller's (the answer if it came, as
    /// [`AwaitReply::answer`]): the next [`AwaitReply::wait`] registers the caller's again.
    fn quiet(&mut self) -> Option<Option<Result<Portable, RemoteError>>> {
        self.waker = None;
        let mut quiet = Context::from_waker(Waker::noop());
        match Pin::new(&mut tokio::task::unconstrained(&mut self.rx)).poll(&mut quiet) {
            Poll::Ready(r) => Some(r.ok()),
            Poll::Pending => None,
        }
    }

    /// Whether `rx` holds `cx`'s waker (a clone of it) already.
    fn registered(&self, cx: &Context<'_>) -> bool {
        self.waker
            .as_ref()
            .is_some_and(|(_, id)| *id == WakerId::of(cx.waker()))
    }

    /// Waits on `rx` with `cx`'s waker, registering it if it is new.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Portable, RemoteError>>> {
        if self.registered(cx) {
            return self.answer().map_or(Poll::Pending, Poll::Ready);
        }
        self.waker = Some((cx.waker().clone(), WakerId::of(cx.waker())));
        // Unconstrained: a poll refused for want of the task's budget registers no waker.
        Pin::new(&mut tokio::task::unconstrained(&mut self.rx))
            .poll(cx)
            .map(Result::ok)
    }
}

impl Future for AwaitReply<'_> {
    /// The call's answer; `None` if the connection went away first.
    type Output = Option<Result<Portable, RemoteError>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let link = this.link;
        if this.call.is_some() {
            // Sent in place while the state is free (its new stream polled there, and if it
            // is the connection's only call, its caller reads on from here), else queued.
            this.reading = link.in_place(&mut this.call, Some((this.token, cx.waker())));
            if let Some(call) = this.call.take() {
                link.queue(call);
            }
            return this.wait(cx);
        }
        // Polled again with nothing arrived on its stream since it read: nothing to read.
        // (A caller awaiting in a `LocalSet`'s `run_until` is polled at every wake-up of
        // any of the set's tasks, quinn's included: on one thread, several times a call.)
        // With the same waker, the route needs no renewal: its wake-ups still reach this
        // caller, or the task, which then answers through `rx`. Else the check follows the
        // renewal, so a wake-up after it polls this caller again.
        let was_reading = std::mem::take(&mut this.reading);
        if was_reading
            && !link.route.woken.load(Ordering::Acquire)
            && (this.registered(cx)
                || (link.route.renew_caller(this.token, cx.waker())
                    && !link.route.woken.load(Ordering::Acquire)))
        {
            this.reading = true;
            return this.wait(cx);
        }
        match link.core.try_lock() {
            // Either way `rx` is checked: by `quiet` before this caller reads, else by `wait`.
            Ok(mut d) => {
                if d.closed || !d.cmds.is_empty() || d.pending.len() != 1 {
                    drop(d);
                    link.route.clear_caller(Some(this.token));
                } else {
                    // This caller may send its own answer now, which must not wake it: a
                    // wake-up of itself would only schedule it again (on a multi-thread
                    // runtime, as a task other workers are woken to take). So `rx` holds a
                    // no-op waker while it reads, and its waker again once it waits.
                    // A caller that read when last polled, with this same waker, is still
                    // where the route leads (unless a later call cleared it: then the task
                    // reads, and answers through `rx`), so the route is left as it is.
                    let routed = was_reading && this.registered(cx);
                    if let Some(r) = this.quiet() {
                        return Poll::Ready(r);
                    }
                    if !routed {
                        link.route.set_caller(this.token, cx.waker());
                    }
                    let more = d.read_streams();
                    d.flush(link);
                    d.wake_task_if_needed(more);
                    if let Some(r) = this.answer() {
                        d.shared.note_read_by_caller();
                        return Poll::Ready(r);
                    }
                    this.reading = true;
                }
            }
            // The task (or an answer made in place) holds the state: it reads on.
            Err(_) => link.route.clear_caller(Some(this.token)),
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
        let mut cmd = Some(cmd);
        if let Some(DriverCmd::Respond { .. }) = cmd {
            self.in_place(&mut cmd, None);
        }
        if let Some(cmd) = cmd {
            self.queue(cmd);
        }
    }

    /// Sends the call `opts` as call `token` ([`DriverHandle::send`]) and waits for its
    /// answer; `Err` if the connection went away first. While it is the connection's only
    /// call, this caller reads the streams itself when the call's stream wakes, and so gets
    /// its answer without a wake-up of the driver task; otherwise the task reads and sends
    /// the answer. Dropping the future leaves the call to be cancelled by the caller.
    pub fn call(
        &self,
        token: u64,
        mut opts: CallOptions,
    ) -> impl Future<Output = Option<Result<Portable, RemoteError>>> + '_ {
        let (reply, rx) = oneshot::channel();
        // The wire gives the token back with the call's result.
        opts.tag = token;
        // The waiter itself, not an `async` block around it: one state machine fewer to
        // step through at each of the caller's polls.
        AwaitReply {
            link: self,
            call: Some(DriverCmd::Call { opts, reply }),
            token,
            rx,
            waker: None,
            reading: false,
        }
    }

    /// Hands `cmd` to the driver's task, never running it here.
    pub fn queue(&self, cmd: DriverCmd) {
        // A gone driver already failed every call it carried.
        let _ = self.tx.send(cmd);
    }

    /// Takes `cmd`, runs it on the driver's state and writes what it produced; leaves it if
    /// the state is busy (its task is polling) or the channel holds commands not yet run.
    /// With `caller` (a call's token and its caller's waker), a call that is now the
    /// connection's only one routes its stream's wake-ups to that caller, and `true` says so.
    fn in_place(&self, cmd: &mut Option<DriverCmd>, caller: Option<(u64, &Waker)>) -> bool {
        let Ok(mut d) = self.core.try_lock() else {
            return false;
        };
        if d.closed || !d.cmds.is_empty() {
            return false;
        }
        let Some(cmd) = cmd.take() else {
            return false;
        };
        d.command(cmd);
        d.flush(self);
        let reading = match caller {
            Some((token, waker)) if d.pending.len() == 1 && d.pending.contains_key(&token) => {
                self.route.set_caller(token, waker);
                true
            }
            _ => false,
        };
        // A new stream future (a call's stream waiting for its answer) is polled here, so
        // the task need not wake up just to poll it.
        let mut more = false;
        if d.streams.has_unpolled() {
            more = d.read_streams();
            d.flush(self);
        }
        d.wake_task_if_needed(more);
        reading
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
        incoming: IdSet::default(),
        closed: false,
        armed_for: None,
        waker: None,
        stream_waker: Waker::from(route.clone()),
        route: route.clone(),
        inputs: Vec::with_capacity(BATCH),
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
    /// Outgoing calls: token (the wire's tag of the call) → (wire id, waiter).
    pending: IdMap<u64, (CallId, oneshot::Sender<Result<Portable, RemoteError>>)>,
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
}

async fn drive(handle: DriverHandle, side: Side) {
    let conn = handle.conn.clone();
    tracing::debug!("driver started");
    // One timer for the connection's whole life. It is moved only to an earlier instant: a
    // later `poll_timeout` (each new call's deadline is) leaves it where it is, and when it
    // fires early the wire finds nothing due and the loop sets it again.
    let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(sleep);
    // One accept future, replaced only when it completes.
    let acceptor = conn.clone();
    let accept = acceptor.accept_bi();
    tokio::pin!(accept);
    std::future::poll_fn(|cx| {
        let mut d = handle.core.lock().unwrap_or_else(|e| e.into_inner());
        if !d.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            d.waker = Some(cx.waker().clone());
            handle.route.set_task(cx.waker());
            d.streams.set_task(cx.waker());
        }
        // A wake-up does not say which source woke the task, so each is polled once; after
        // that only a source whose state may have changed without a wake-up (it was ready,
        // or the flush gave it new work) is polled again: one that returned `Pending` has
        // registered the waker.
        let mut poll_cmds = true;
        let mut poll_streams = true;
        let mut poll_accept = true;
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
            if std::mem::take(&mut poll_accept) {
                if let Poll::Ready(stream) = accept.as_mut().poll(cx) {
                    accept.set(acceptor.accept_bi());
                    poll_accept = true;
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
            if !(poll_cmds || poll_streams || poll_accept || poll_timer) {
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
    // the connection gone.
    d.cmds.close();
    while d.cmds.try_recv().is_ok() {}
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
        self.route.woken.store(false, Ordering::Release);
        // Before the task's first poll, nothing needs its waker: that poll reads everything.
        let mut cx = Context::from_waker(self.waker.as_ref().unwrap_or(Waker::noop()));
        let mut watcher = Context::from_waker(&self.stream_waker);
        let mut inputs = std::mem::take(&mut self.inputs);
        let full = match self
            .streams
            .poll_inputs(&mut cx, &mut watcher, &mut inputs, BATCH)
        {
            Poll::Pending => false,
            Poll::Ready(()) => {
                let now = Instant::now();
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
                        let _ = reply.send(Err(RemoteError::new(kind, e.to_string())));
                    }
                }
            }
            DriverCmd::Cancel { token } => {
                if let Some((id, _)) = self.pending.remove(&token) {
                    self.wire.cancel(id);
                }
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
    }

    fn event(&mut self, event: Event, handle: &DriverHandle) {
        match event {
            Event::Connected(info) => tracing::debug!(peer = %info.node, "hello exchanged"),
            Event::IncomingCall(call) => {
                tracing::debug!(id = ?call.id, caller = %call.caller, "incoming call");
                if let Some(value) = inline::try_answer(&self.shared, handle.peer.as_ref(), &call) {
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
                    let _ = reply.send(result);
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
                for (_, (_, reply)) in self.pending.drain() {
                    let _ = reply.send(Err(RemoteError::new(
                        ErrorKind::ConnectionLost,
                        reason.to_string(),
                    )));
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
