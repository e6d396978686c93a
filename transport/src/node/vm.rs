//! The VM side of a node: one loop that owns the `skiff_vm::Engine` (with the host's
//! natives), the `CodeStore` and every execution of the node, and steps them as the
//! in-process cluster does. The loop is a future pinned to one thread: by default a
//! dedicated OS thread running it on a private current-thread runtime
//! ([`super::Node::start`]), or a local task of the host's `LocalSet`
//! ([`super::Node::start_local`]), where it shares the thread with the connections.
//!
//! VM values are `Rc`-based and `!Send`, so executions never leave that thread; everything
//! that crosses to the tokio side is `Portable` (plain data). The loop sleeps on its
//! channel until a message arrives (an incoming call, a hop result, a cancellation, a local
//! run) or an execution's timer is due, and yields to the runtime between rounds of
//! execution slices.
//!
//! Invariants:
//! - Code enters the `CodeStore` only through `CodeStore::insert` (which verifies), after the
//!   wire re-hashed and verified it; blobs are inserted dependencies first.
//! - An execution serving an incoming call runs under the node's limits with the deadline of
//!   the call (already `min(caller's deadline, node maximum)`).
//! - When an execution ends or is cancelled, every hop it started and is still waiting for is
//!   cancelled (dropping its cancel handle stops the hop task, which cancels the wire call).
//! - Refused calls (permissions, unknown context, unknown export) start nothing.
//! - Once shutdown begins (`Shared::closing`), an incoming call is refused unless it is a
//!   call-back of an execution still running here (its hop chain names this node); `Drain`
//!   waiters are answered as soon as no execution runs; `CancelAll` queues an answer for
//!   every caller before it replies, so those answers precede the drivers' `Close`.
//! - Every execution runs in one context that existed when it started; the context natives
//!   see it because each `Execution::run` is wrapped in `ContextNatives::enter`. The
//!   contexts and their state live here, on the loop's thread; the host reaches them with
//!   `VmMsg::Contexts`.

use super::driver::{DriverCmd, DriverHandle};
use super::hop::{run_hop, HopJob};
use super::{caller_name, Shared};
use crate::context::{ContextNatives, Contexts, SharedContexts};
use skiff_vm::hop::{
    body_failure, error_kind, hop_error, start_failure, symbolize, trace_line, BodyFailure,
    HopTarget, DEFAULT_CONTEXT,
};
use skiff_vm::interp::program::LinkCache;
use skiff_vm::native::NodeInfo;
use skiff_vm::{
    BlobHash, CodeStore, Engine, ExecError, Execution, FunctionId, Limits, Module, Portable,
    RemoteFailure, StartError,
};
use skiff_wire::idmap::{IdMap, NameMap};
use skiff_wire::{CallId, ErrorKind, IncomingCall, RemoteError, Target};
use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::oneshot;

/// Messages to the VM loop.
pub(crate) enum VmMsg {
    Incoming {
        driver: DriverHandle,
        call: Box<IncomingCall>,
    },
    Cancelled {
        conn: usize,
        id: CallId,
    },
    HopDone {
        exec: u64,
        request: u64,
        result: Result<Portable, RemoteFailure>,
    },
    /// A hop from this node to itself: run the body here as a new execution.
    SelfHop {
        func: FunctionId,
        args: Vec<Portable>,
        hops: Vec<String>,
        deadline: Option<Instant>,
        context: String,
        reply: oneshot::Sender<Result<Portable, RemoteFailure>>,
    },
    /// A host operation on the contexts (create, fork, read).
    Contexts(Box<dyn FnOnce(&mut Contexts) + Send>),
    Load {
        module: Box<Module>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Run {
        target: RunTarget,
        args: Vec<Portable>,
        reply: oneshot::Sender<Result<Portable, RunFailure>>,
    },
    /// Nothing but a wake-up (e.g. a self-hop's waiter went away).
    Wake,
    /// Shutdown began: reply once no execution is running.
    Drain {
        reply: oneshot::Sender<()>,
    },
    /// The grace period ended: cancel every execution, answer its caller with `reason`,
    /// and reply with how many there were (after every answer was queued).
    CancelAll {
        reason: String,
        reply: oneshot::Sender<usize>,
    },
    Shutdown,
}

/// What a local run starts.
pub(crate) enum RunTarget {
    Function(FunctionId),
    Export(String),
}

/// Why a local run failed.
#[derive(Debug)]
pub(crate) enum RunFailure {
    Failed(Box<ExecError>),
    Start(String),
}

enum Origin {
    Local(oneshot::Sender<Result<Portable, RunFailure>>),
    /// A hop to this node itself; dropped waiter = cancelled hop.
    SelfHop {
        reply: oneshot::Sender<Result<Portable, RemoteFailure>>,
        deadline: Option<Instant>,
    },
    Remote {
        driver: DriverHandle,
        id: CallId,
        /// The deadline came from the caller (its `timeout_ms`), not this node's maximum.
        timed_by_caller: bool,
        deadline: Instant,
    },
}

struct Running {
    exec: Execution,
    origin: Origin,
    runnable: bool,
    wake_at: Option<Instant>,
    /// Hops in flight: request id → cancel handle (dropping it cancels the hop).
    hops: IdMap<u64, oneshot::Sender<()>>,
    /// Hop chain for nested calls (`IncomingCall::take_nested_hops`), empty at the top level.
    nested_hops: Vec<String>,
    /// The connection the call came in on and the caller's name: `remote(caller())` uses it.
    back: Option<(Arc<str>, DriverHandle)>,
    /// The context the execution runs in.
    context: Rc<str>,
}

pub(crate) struct VmLoop {
    shared: Arc<Shared>,
    engine: Engine,
    store: CodeStore,
    /// Blobs of modules loaded here: never evicted.
    local: HashSet<BlobHash>,
    /// The wire store's eviction count when the code store was last checked against it
    /// (every stored blob not in `local` was received, and is kept while the wire store
    /// holds it).
    seen_evictions: u64,
    exports: NameMap<FunctionId>,
    /// Linked programs of the functions executions started with, from `store`.
    links: LinkCache,
    running: IdMap<u64, Running>,
    by_call: IdMap<(usize, CallId), u64>,
    /// Scratch space for `step_due`'s list of due executions (empty between turns).
    picked: Vec<u64>,
    next_exec: u64,
    contexts: SharedContexts,
    context_natives: ContextNatives,
    default_context: Rc<str>,
    /// Shutdown waiters, answered when `running` is empty.
    drain: Vec<oneshot::Sender<()>>,
    /// Answers go through the driver's channel instead of being written in place (see
    /// [`VmLoop::answer`]).
    queue_answers: bool,
    /// The names of the engine's host natives (the host's and the contexts').
    host_natives: Arc<HashSet<String>>,
}

impl VmLoop {
    /// A loop for a node's VM; `own_thread` when it runs on a thread of its own
    /// ([`super::Node::start`]) rather than beside the connections.
    pub fn new(
        shared: Arc<Shared>,
        natives: &[(String, super::SendNative)],
        contexts: Contexts,
        own_thread: bool,
    ) -> VmLoop {
        let mut engine = super::engine_with(natives);
        let context_natives = ContextNatives::default();
        context_natives.install(&mut engine);
        let host_natives = Arc::new(engine.native_names().map(str::to_owned).collect());
        VmLoop {
            shared,
            engine,
            store: CodeStore::new(),
            local: HashSet::new(),
            seen_evictions: 0,
            exports: NameMap::default(),
            links: LinkCache::new(),
            running: IdMap::default(),
            by_call: IdMap::default(),
            picked: Vec::new(),
            next_exec: 0,
            contexts: Rc::new(RefCell::new(contexts)),
            context_natives,
            default_context: Rc::from(DEFAULT_CONTEXT),
            drain: Vec::new(),
            queue_answers: own_thread,
            host_natives,
        }
    }

    /// Answers incoming call `id` on `driver`. Beside the connections, the answer is written
    /// in place when the driver is free (no task wakes up for it). On a thread of its own,
    /// it goes to the driver's task instead: written from here, it would wake quinn's
    /// connection task across threads, and often twice (the woken worker preempts this
    /// thread between the data and the stream's end), where the driver's task, woken once,
    /// writes both on the runtime. Measured: `rtt`'s paired ratio 1.93 and 1.97 in place,
    /// 1.79 and 1.79 queued (benches/README.md, ninth session).
    fn answer(&self, driver: &DriverHandle, id: CallId, result: Result<Portable, RemoteError>) {
        let cmd = DriverCmd::Respond { id, result };
        if self.queue_answers {
            driver.queue(cmd);
        } else {
            driver.send(cmd);
        }
    }

    /// The loop; returns on `Shutdown` or when every sender is gone. Between rounds of
    /// execution slices it yields to the runtime, so a node whose loop shares a thread with
    /// its connections ([`super::Node::start_local`]) keeps moving bytes while scripts run.
    pub async fn run(mut self, mut rx: UnboundedReceiver<VmMsg>) {
        loop {
            let now = Instant::now();
            let due = self
                .running
                .values()
                .any(|r| r.runnable || r.wake_at.is_some_and(|w| w <= now));
            let first = if due {
                tokio::task::yield_now().await;
                None
            } else {
                let next = self.running.values().filter_map(|r| r.wake_at).min();
                let got = match next {
                    Some(at) => tokio::select! {
                        biased;
                        m = rx.recv() => Some(m),
                        () = tokio::time::sleep_until(at.into()) => None,
                    },
                    None => Some(rx.recv().await),
                };
                match got {
                    Some(None) => break,
                    Some(Some(m)) => Some(m),
                    None => None,
                }
            };
            let mut stop = first.is_some_and(|m| self.handle(m));
            while let Ok(m) = rx.try_recv() {
                stop |= self.handle(m);
            }
            if stop {
                break;
            }
            self.step_due();
            if !self.drain.is_empty() && self.running.is_empty() {
                for waiter in self.drain.drain(..) {
                    let _ = waiter.send(());
                }
            }
        }
        for (_, mut r) in self.running.drain() {
            r.exec.cancel();
        }
    }

    /// Handles one message; `true` to stop the loop.
    fn handle(&mut self, msg: VmMsg) -> bool {
        match msg {
            VmMsg::Incoming { driver, call } => self.incoming(driver, *call),
            VmMsg::Cancelled { conn, id } => {
                if let Some(exec) = self.by_call.remove(&(conn, id)) {
                    if let Some(mut r) = self.running.remove(&exec) {
                        tracing::debug!(node = %self.shared.name, ?id, "execution cancelled");
                        r.exec.cancel();
                        self.shared.note_cancelled();
                    }
                }
            }
            VmMsg::HopDone {
                exec,
                request,
                result,
            } => {
                if let Some(r) = self.running.get_mut(&exec) {
                    r.hops.remove(&request);
                    let mut result = result;
                    if let Err(failure) = &mut result {
                        symbolize(&mut failure.trace, &self.store);
                    }
                    r.exec.resolve(request, result);
                    r.runnable = true;
                }
            }
            VmMsg::SelfHop {
                func,
                args,
                hops,
                deadline,
                context,
                reply,
            } => {
                let here = self.shared.name.clone();
                if !self.contexts.borrow().contains(&context) {
                    let _ = reply.send(Err(RemoteFailure {
                        error: hop_error(
                            "Refused",
                            format!("peer `{here}` has no context `{context}`"),
                            &here,
                        ),
                        trace: Vec::new(),
                    }));
                    return false;
                }
                let mut limits = self.shared.limits.clone();
                limits.deadline = match (limits.deadline, deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let info = self.shared.node_info(Some(here.clone()));
                match self.start(func, args, info, limits) {
                    Ok(exec) => {
                        let mut nested = hops;
                        nested.push(here.to_string());
                        let origin = Origin::SelfHop { reply, deadline };
                        self.push(exec, origin, nested, None, Rc::from(context));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RemoteFailure {
                            error: start_failure(&e, &here),
                            trace: Vec::new(),
                        }));
                    }
                }
            }
            VmMsg::Contexts(op) => op(&mut self.contexts.borrow_mut()),
            VmMsg::Load { module, reply } => {
                let result = self.load(&module);
                let _ = reply.send(result);
            }
            VmMsg::Run {
                target,
                args,
                reply,
            } => {
                let func = match target {
                    RunTarget::Function(f) => Some(f),
                    RunTarget::Export(name) => self.exports.get(&name).copied(),
                };
                let Some(func) = func else {
                    let _ = reply.send(Err(RunFailure::Start("no such exported function".into())));
                    return false;
                };
                let info = self.shared.node_info(None);
                match self.start(func, args, info, self.shared.limits.clone()) {
                    Ok(exec) => {
                        let context = self.default_context.clone();
                        self.push(exec, Origin::Local(reply), Vec::new(), None, context);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RunFailure::Start(e.to_string())));
                    }
                }
            }
            VmMsg::Wake => {}
            VmMsg::Drain { reply } => self.drain.push(reply),
            VmMsg::CancelAll { reason, reply } => {
                let n = self.cancel_all(&reason);
                let _ = reply.send(n);
            }
            VmMsg::Shutdown => return true,
        }
        false
    }

    fn load(&mut self, module: &Module) -> Result<(), String> {
        self.store.add_module(module).map_err(|e| e.to_string())?;
        let mut code = self.shared.code.write().unwrap_or_else(|e| e.into_inner());
        for (hash, blob) in &module.blobs {
            code.insert_blob(blob);
            self.local.insert(*hash);
        }
        drop(code);
        for (name, func) in &module.exports {
            self.exports.insert(name.clone(), *func);
        }
        self.code_changed();
        Ok(())
    }

    /// Starts an execution of `func(args)`, its program linked once per function (`links`).
    fn start(
        &mut self,
        func: FunctionId,
        args: Vec<Portable>,
        info: NodeInfo,
        limits: Limits,
    ) -> Result<Execution, StartError> {
        let linked = self.links.get(&self.engine, &self.store, func)?;
        let io = (self.shared.io)();
        Execution::start_linked(&self.engine, &self.store, linked, &args, info, limits, io)
    }

    /// Runs `exec`'s first slice and, unless that ended it, registers it for the scheduling
    /// loop and starts the hops it asked for.
    fn push(
        &mut self,
        mut exec: Execution,
        origin: Origin,
        nested_hops: Vec<String>,
        back: Option<(Arc<str>, DriverHandle)>,
        context: Rc<str>,
    ) {
        // Its first slice runs before it is registered: most calls end in it, and then
        // neither the tables nor the scheduling loop are needed.
        let status = self
            .context_natives
            .run(&self.contexts, &context, &mut exec, Instant::now());
        let next = match status.ended() {
            Ok(result) => return self.finish(origin, result),
            Err(next) => next,
        };
        let requests = exec.take_requests();
        let id = self.next_exec;
        self.next_exec += 1;
        if let Origin::Remote {
            driver, id: call, ..
        } = &origin
        {
            self.by_call.insert((driver.id, *call), id);
        }
        self.running.insert(
            id,
            Running {
                exec,
                origin,
                runnable: next.runnable,
                wake_at: next.wake_at,
                hops: IdMap::default(),
                nested_hops,
                back,
                context,
            },
        );
        for request in requests {
            self.start_hop(id, request);
        }
    }

    /// Cancels every execution (the hops it waits on with it) and tells each caller why:
    /// a peer gets `connection_lost` (`Disconnected` in its script), a self-hop `Disconnected`,
    /// a local run `NodeError::Stopped`.
    fn cancel_all(&mut self, reason: &str) -> usize {
        let here = self.shared.name.clone();
        let running = std::mem::take(&mut self.running);
        let n = running.len();
        for (_, mut r) in running {
            r.exec.cancel();
            match r.origin {
                Origin::Local(_) => {}
                Origin::SelfHop { reply, .. } => {
                    let _ = reply.send(Err(RemoteFailure {
                        error: hop_error("Disconnected", reason, &here),
                        trace: Vec::new(),
                    }));
                }
                Origin::Remote { driver, id, .. } => {
                    self.shared.note_cancelled();
                    tracing::debug!(node = %here, ?id, "execution cut at shutdown");
                    self.answer(
                        &driver,
                        id,
                        Err(RemoteError::new(ErrorKind::ConnectionLost, reason)),
                    );
                }
            }
        }
        self.by_call.clear();
        n
    }

    fn refuse(&self, driver: &DriverHandle, id: CallId, kind: ErrorKind, message: String) {
        tracing::debug!(?id, %message, "call refused");
        self.answer(driver, id, Err(RemoteError::new(kind, message)));
    }

    fn incoming(&mut self, driver: DriverHandle, mut call: IncomingCall) {
        let shared = self.shared.clone();
        let here = &*shared.name;
        let caller = caller_name(driver.peer.as_ref(), &call).clone();
        let perms = shared.permissions_for(driver.peer.as_deref());
        // Shutdown: only call-backs of executions still running here are served.
        let closing = self
            .shared
            .closing
            .load(std::sync::atomic::Ordering::SeqCst);
        let call_back = call.hops.iter().any(|h| h == here) && !self.running.is_empty();
        if closing && !call_back {
            return self.refuse(
                &driver,
                call.id,
                ErrorKind::Refused,
                format!("node `{here}` is shutting down"),
            );
        }
        // Context.
        let context = match &call.context {
            Portable::Nil => self.default_context.clone(),
            Portable::Str(c) if self.contexts.borrow().contains(c) => Rc::from(c.as_str()),
            other => {
                let name = match other {
                    Portable::Str(c) => c.clone(),
                    _ => "<not a name>".into(),
                };
                return self.refuse(
                    &driver,
                    call.id,
                    ErrorKind::Refused,
                    format!("peer `{here}` has no context `{name}`"),
                );
            }
        };
        // Target and permissions.
        let func = match &call.target {
            Target::Name(name) => {
                if !perms.call_exported {
                    return self.refuse(
                        &driver,
                        call.id,
                        ErrorKind::Refused,
                        format!("`{caller}` may not call exported functions on `{here}`"),
                    );
                }
                match self.exports.get(&**name) {
                    Some(f) => *f,
                    None => {
                        return self.refuse(
                            &driver,
                            call.id,
                            ErrorKind::NotFound,
                            format!("peer `{here}` exports no function `{name}`"),
                        )
                    }
                }
            }
            Target::Function(f) => {
                if !perms.ship_code {
                    return self.refuse(
                        &driver,
                        call.id,
                        ErrorKind::Refused,
                        format!("`{caller}` may not ship code to `{here}`"),
                    );
                }
                *f
            }
        };
        // Code: the call's closure, dependencies first, from the wire store into the VM's.
        if let Err(message) = self.adopt_blobs(&call.blobs) {
            return self.refuse(&driver, call.id, ErrorKind::VerifyFailed, message);
        }
        if let Some(allowed) = &perms.natives {
            for h in &call.blobs {
                let Some(blob) = self.store.get(h) else {
                    continue;
                };
                for f in &blob.functions {
                    for n in &f.natives {
                        if self.engine.has_native(n) && !allowed.contains(n) {
                            return self.refuse(
                                &driver,
                                call.id,
                                ErrorKind::Refused,
                                format!("`{caller}` may not use native `{n}` on `{here}`"),
                            );
                        }
                    }
                }
            }
        }
        let now = Instant::now();
        let max = self.shared.wire_config.max_call_duration;
        let timed_by_caller = call.deadline + Duration::from_millis(5) < now + max;
        let limits = self.shared.limits_for(&call);
        let info = self.shared.node_info(Some(caller.clone()));
        let nested = call.take_nested_hops();
        let (id, deadline) = (call.id, call.deadline);
        let span = tracing::debug_span!("call", node = %here, caller = %caller, id = ?call.id);
        let _enter = span.enter();
        match self.start(func, call.args, info, limits) {
            Ok(exec) => {
                tracing::debug!("execution started");
                self.shared.note_served();
                let origin = Origin::Remote {
                    driver: driver.clone(),
                    id,
                    timed_by_caller,
                    deadline,
                };
                self.push(exec, origin, nested, Some((caller, driver)), context);
            }
            Err(e) => {
                let error = start_failure(&e, here);
                let message = e.to_string();
                self.answer(
                    &driver,
                    id,
                    Err(RemoteError {
                        kind: ErrorKind::Runtime,
                        message,
                        trace: Box::default(),
                        value: error,
                    }),
                );
            }
        }
    }

    fn adopt_blobs(&mut self, blobs: &[BlobHash]) -> Result<(), String> {
        self.forget_evicted();
        let missing: Vec<_> = blobs
            .iter()
            .filter(|h| !self.store.contains(h))
            .copied()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut fetched = Vec::with_capacity(missing.len());
        {
            let mut wire = self.shared.store.lock().unwrap_or_else(|e| e.into_inner());
            for h in &missing {
                let bytes = wire.get(h).ok_or_else(|| format!("blob {h} is missing"))?;
                let blob = wire
                    .get_blob(h)
                    .ok_or_else(|| format!("blob {h} is missing"))?;
                fetched.push((*h, bytes, blob));
            }
        }
        let mut code = self.shared.code.write().unwrap_or_else(|e| e.into_inner());
        for (h, bytes, blob) in fetched {
            let deps = blob.dependencies();
            self.store
                .insert(Arc::new(blob), None)
                .map_err(|e| e.to_string())?;
            code.insert_bytes(h, bytes, deps);
        }
        drop(code);
        self.code_changed();
        Ok(())
    }

    /// Drops the VM's copies of received blobs that the wire store evicted (and whatever
    /// depends on them), so code memory stays within the store's bound. Blobs of calls in
    /// flight are pinned in the wire store, and started executions keep their own snapshot of
    /// the code store, so nothing running loses code. Runs only after new evictions.
    fn forget_evicted(&mut self) {
        let gone: HashSet<BlobHash> = {
            let wire = self.shared.store.lock().unwrap_or_else(|e| e.into_inner());
            if wire.evictions() == self.seen_evictions {
                return;
            }
            self.seen_evictions = wire.evictions();
            self.store
                .hashes()
                .into_iter()
                .filter(|h| !self.local.contains(h) && !wire.contains(h))
                .collect()
        };
        if gone.is_empty() {
            return;
        }
        let removed = self.store.remove_with_dependents(&gone);
        // Cached programs may hold code of the removed blobs.
        self.links.clear();
        let mut code = self.shared.code.write().unwrap_or_else(|e| e.into_inner());
        for h in &removed {
            debug_assert!(
                !self.local.contains(h),
                "local code depends only on local code"
            );
            code.remove(h);
        }
        drop(code);
        tracing::debug!(evicted = removed.len(), "code store pruned");
        self.code_changed();
    }

    /// After the code store or the exports changed: the node's counters and the code calls
    /// answered inline run (`inline.rs`) follow.
    fn code_changed(&self) {
        self.shared.code_blobs.store(
            self.store.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.shared.set_inline_code(super::inline::InlineCode {
            store: self.store.clone(),
            exports: self.exports.clone(),
            host_natives: self.host_natives.clone(),
        });
    }

    fn step_due(&mut self) {
        // A self-hop whose caller is gone is cancelled.
        self.running.retain(|_, r| {
            let abandoned = matches!(&r.origin, Origin::SelfHop { reply, .. } if reply.is_closed());
            if abandoned {
                r.exec.cancel();
            }
            !abandoned
        });
        let now = Instant::now();
        let mut picked = std::mem::take(&mut self.picked);
        picked.extend(
            self.running
                .iter()
                .filter(|(_, r)| r.runnable || r.wake_at.is_some_and(|w| w <= now))
                .map(|(id, _)| *id),
        );
        for &id in &picked {
            let Some(r) = self.running.get_mut(&id) else {
                continue;
            };
            let status =
                self.context_natives
                    .run(&self.contexts, &r.context, &mut r.exec, Instant::now());
            let requests = r.exec.take_requests();
            match status.ended() {
                Ok(result) => {
                    // Dropping `r.hops` cancels every hop still in flight.
                    if let Some(r) = self.running.remove(&id) {
                        self.finish(r.origin, result);
                    }
                }
                Err(next) => {
                    r.runnable = next.runnable;
                    r.wake_at = next.wake_at;
                    for request in requests {
                        self.start_hop(id, request);
                    }
                }
            }
        }
        picked.clear();
        self.picked = picked;
    }

    fn start_hop(&mut self, exec: u64, request: skiff_vm::RemoteRequest) {
        let Some(r) = self.running.get_mut(&exec) else {
            return;
        };
        let plan = match HopTarget::parse(&request.target) {
            Ok(plan) => plan,
            Err(e) => {
                let error = Portable::Map(vec![
                    (Portable::Str("kind".into()), Portable::Str(e.kind.into())),
                    (Portable::Str("message".into()), Portable::Str(e.message)),
                ]);
                r.exec.resolve(
                    request.id,
                    Err(RemoteFailure {
                        error,
                        trace: Vec::new(),
                    }),
                );
                r.runnable = true;
                return;
            }
        };
        let (cancel_tx, cancel_rx) = oneshot::channel();
        r.hops.insert(request.id, cancel_tx);
        let job = HopJob {
            exec,
            request: request.id,
            func: request.func,
            args: request.args,
            plan,
            hops: r.nested_hops.clone(),
            back: r.back.clone(),
        };
        self.shared
            .spawner
            .spawn(run_hop(self.shared.clone(), job, cancel_rx));
    }

    fn finish(&mut self, origin: Origin, result: Result<Portable, ExecError>) {
        match origin {
            Origin::Local(reply) => {
                let _ = reply.send(result.map_err(|e| RunFailure::Failed(Box::new(e))));
            }
            Origin::SelfHop { reply, deadline } => {
                let here = &self.shared.name;
                let result = result.map_err(|e| {
                    let timed_out = deadline.is_some_and(|d| d <= Instant::now());
                    match body_failure(e, here, timed_out) {
                        BodyFailure::Timeout(error) => RemoteFailure {
                            error,
                            trace: Vec::new(),
                        },
                        BodyFailure::Failed(f) => f,
                    }
                });
                let _ = reply.send(result);
            }
            Origin::Remote {
                driver,
                id,
                timed_by_caller,
                deadline,
            } => {
                self.by_call.remove(&(driver.id, id));
                self.shared.note_ended();
                let here = &self.shared.name;
                let result = match result {
                    Ok(v) => Ok(v),
                    Err(e) => {
                        let timed_out = timed_by_caller && deadline <= Instant::now();
                        Err(match body_failure(e, here, timed_out) {
                            BodyFailure::Timeout(value) => RemoteError {
                                kind: ErrorKind::DeadlineExceeded,
                                message: format!("hop to `{here}` timed out"),
                                trace: Box::default(),
                                value,
                            },
                            BodyFailure::Failed(f) => encode_failure(f),
                        })
                    }
                };
                self.answer(&driver, id, result);
            }
        }
    }
}

/// A remote body's failure as a wire error: `runtime` for an error map (the value carries it
/// whole, `"peer"` included), `thrown` for any other thrown value.
fn encode_failure(f: RemoteFailure) -> RemoteError {
    let (kind, message) = match error_kind(&f.error) {
        Some(kind) => (ErrorKind::Runtime, kind.to_owned()),
        None => (ErrorKind::Thrown, "thrown".to_owned()),
    };
    RemoteError {
        kind,
        message,
        trace: f.trace.iter().map(trace_line).collect(),
        value: f.error,
    }
}
