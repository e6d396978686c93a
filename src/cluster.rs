//! An in-process cluster: several named VM instances in one thread, each with its own
//! blob store, that carry out `remote` hops between them without any network.
//!
//! This is what `skiff run --local-peers a,b` uses, and the reference for what a hop does:
//! parse the target, try its peers in order, ship exactly the blobs the callee's store lacks
//! (the transitive closure of the body and of any closures in the arguments), run the body
//! under the callee's limits, and report the outcome with the error kinds of LANGUAGE.md §8.
//! The QUIC node does the same over the wire.
//!
//! Each node has its own execution contexts (`skiff_transport::context`, the same code the
//! QUIC node uses): `default`, plus any the host registers with
//! [`LocalCluster::create_context`] / [`LocalCluster::fork_context`]; every execution reads
//! and writes its context through `context_get` / `context_set` / `context_name`.
//!
//! Invariants:
//! - A node's store receives only blobs some hop needed; every blob is verified on insert.
//! - Every execution runs in one context of its node that existed when it started; a hop to
//!   an unknown context is `Refused` and starts nothing.
//! - Executions are stepped in slices, so one busy node cannot starve the others, and no
//!   script call recurses on the Rust stack (hops are records in `running`, not calls).
//! - When an execution ends, every hop it started and is still running is cancelled; its
//!   slot in `running` is then referred to by nothing and is reused by the next hop, so the
//!   table (walked by every scheduling round) stays the size of what runs at once.

use skiff_transport::context::{
    ContextError, ContextNatives, ContextState, Contexts, SharedContexts,
};
use skiff_vm::hop::{
    body_failure, error_kind, hop_error, is_failover_kind, start_failure, BodyFailure, HopTarget,
    DEFAULT_CONTEXT,
};
use skiff_vm::interp::program::LinkCache;
use skiff_vm::interp::DEFAULT_SLICE;
use skiff_vm::native::NodeInfo;
use skiff_vm::{
    transitive_closure, BlobHash, CodeStore, Engine, ExecError, ExecIo, Execution, FunctionId,
    Limits, Portable, QuickRun, RemoteFailure, RemoteRequest, StartError, Status,
};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// Makes the output sinks of each new execution.
pub type IoFactory = Box<dyn Fn() -> ExecIo>;

/// Counters a node keeps about the code it received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub blobs_received: usize,
    pub blob_bytes_received: usize,
    pub calls_served: usize,
}

struct LocalNode {
    /// What a top-level execution on it knows of it: its name (`here()`, shared with every
    /// execution on it and a hop's `caller()`) and the other nodes' names, sorted
    /// (`peers()`); no caller. Kept, so that a host's call borrows it instead of building
    /// one (two shared counts taken and dropped, each an atomic operation).
    view: NodeInfo,
    store: CodeStore,
    /// Programs linked from `store`, by entry function; cleared whenever the host may have
    /// changed the store ([`LocalCluster::store_mut`]). Blobs only ever join a node's store,
    /// and a blob's content never changes, so nothing else makes a kept program stale.
    links: LinkCache,
    stats: NodeStats,
    contexts: SharedContexts,
}

impl LocalNode {
    /// What an execution serving a hop from `caller` (a node of the cluster, by its shared
    /// name) may know of this node.
    fn info(&self, caller: Arc<str>) -> NodeInfo {
        NodeInfo {
            caller: Some(caller),
            ..self.view.clone()
        }
    }
}

/// A hop in progress: which peers are left to try and where the answer goes.
struct Hop {
    caller: usize,
    request: RemoteRequest,
    plan: HopTarget,
    next_peer: usize,
    deadline: Option<Instant>,
}

struct Running {
    /// The node's name (its [`LocalNode::name`]).
    node: Arc<str>,
    exec: Execution,
    /// `None` for the top level; otherwise the hop this execution is serving.
    hop: Option<Hop>,
    runnable: bool,
    wake_at: Option<Instant>,
    /// The context (of `node`) the execution runs in.
    context: Rc<str>,
}

/// Several named nodes in one process.
pub struct LocalCluster {
    /// The host's engine plus the context natives.
    engine: Engine,
    context_natives: ContextNatives,
    nodes: BTreeMap<String, LocalNode>,
    limits: Limits,
    io: IoFactory,
    running: Vec<Option<Running>>,
    /// The default context's name, shared by every top-level execution.
    default_context: Rc<str>,
}

impl LocalCluster {
    /// A cluster of `names` (the first runs the top level), each node applying `limits`.
    /// Every node has the host's natives (`engine`) and the context natives (unless the host
    /// registered natives of those names).
    pub fn new(engine: &Engine, names: &[String], limits: Limits, io: IoFactory) -> Self {
        let mut engine = engine.clone();
        let context_natives = ContextNatives::default();
        context_natives.install(&mut engine);
        // Sorted and without duplicates, like the node map.
        let all: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        let nodes = all
            .iter()
            .map(|&n| {
                (
                    n.to_owned(),
                    LocalNode {
                        view: NodeInfo {
                            here: n.into(),
                            caller: None,
                            peers: all
                                .iter()
                                .filter(|&&p| p != n)
                                .map(|&p| p.to_owned())
                                .collect(),
                        },
                        store: CodeStore::new(),
                        links: LinkCache::new(),
                        stats: NodeStats::default(),
                        contexts: Rc::new(RefCell::new(Contexts::default())),
                    },
                )
            })
            .collect();
        LocalCluster {
            engine,
            context_natives,
            nodes,
            limits,
            io,
            running: Vec::new(),
            default_context: Rc::from(DEFAULT_CONTEXT),
        }
    }

    /// The blob store of `node`, e.g. to load a module into it.
    pub fn store_mut(&mut self, node: &str) -> Option<&mut CodeStore> {
        self.nodes.get_mut(node).map(|n| {
            n.links.clear();
            &mut n.store
        })
    }

    /// Back to how a new cluster with these stores starts: every node's contexts are an
    /// empty `default` only. (Nothing is running between runs; the stats keep counting.)
    pub fn reset_contexts(&mut self) {
        for node in self.nodes.values() {
            let mut contexts = node.contexts.borrow_mut();
            if !contexts.is_fresh() {
                *contexts = Contexts::default();
            }
        }
    }

    /// The hashes `node` holds.
    pub fn hashes(&self, node: &str) -> Vec<BlobHash> {
        self.nodes
            .get(node)
            .map(|n| n.store.hashes())
            .unwrap_or_default()
    }

    /// What `node` received.
    pub fn stats(&self, node: &str) -> NodeStats {
        self.nodes.get(node).map(|n| n.stats).unwrap_or_default()
    }

    fn contexts(&self, node: &str) -> Result<&SharedContexts, RunError> {
        self.nodes
            .get(node)
            .map(|n| &n.contexts)
            .ok_or_else(|| RunError::UnknownNode(node.to_owned()))
    }

    /// Registers the context `name` on `node`, holding `initial`.
    pub fn create_context(
        &mut self,
        node: &str,
        name: &str,
        initial: impl IntoIterator<Item = (String, Portable)>,
    ) -> Result<(), RunError> {
        let initial = initial.into_iter().collect();
        Ok(self.contexts(node)?.borrow_mut().create(name, initial)?)
    }

    /// Registers the context `to` on `node` with a copy of `from`'s state (copy-on-fork).
    pub fn fork_context(&mut self, node: &str, from: &str, to: &str) -> Result<(), RunError> {
        Ok(self.contexts(node)?.borrow_mut().fork(from, to)?)
    }

    /// A snapshot of the state of context `name` on `node`.
    pub fn context_state(&self, node: &str, name: &str) -> Result<ContextState, RunError> {
        Ok(self.contexts(node)?.borrow().state(name)?)
    }

    /// Runs `func(args)` on `node` to completion, serving every hop it makes.
    pub fn run(
        &mut self,
        node: &str,
        func: FunctionId,
        args: Vec<Portable>,
    ) -> Result<Portable, RunError> {
        // The node is looked up once: a host calling in pays for one search of the map.
        let Some(here) = self.nodes.get_mut(node) else {
            return Err(RunError::UnknownNode(node.to_owned()));
        };
        let linked = here
            .links
            .get(&self.engine, &here.store, func)
            .map_err(|e| RunError::Start(StartError::from(e).to_string()))?;
        // Its first slice runs before anything is registered: most calls end in it as their
        // one task, without a hop or a sleep to serve, and then not even an execution is built
        // (`run_quick`), nor is anything of the loop below needed.
        let (engine, limits, io) = (&self.engine, self.limits.clone(), (self.io)());
        let quick = self
            .context_natives
            .within(&here.contexts, &self.default_context, || {
                Execution::run_quick(
                    engine,
                    &here.store,
                    linked,
                    &args,
                    &here.view,
                    limits,
                    io,
                    DEFAULT_SLICE,
                    Instant::now(),
                )
            })
            .map_err(|e| RunError::Start(e.to_string()))?;
        let (status, exec) = match quick {
            QuickRun::Done(value) => return Ok(value),
            QuickRun::Started(status, exec) => (status, *exec),
        };
        match status {
            Status::Done(value) => return Ok(value),
            Status::Failed(error) => return Err(RunError::Failed(Box::new(error))),
            Status::Blocked { .. } | Status::Yielded => {}
        }
        self.running.push(Some(Running {
            node: here.view.here.clone(),
            exec,
            hop: None,
            runnable: false,
            wake_at: None,
            context: self.default_context.clone(),
        }));
        let top = self.running.len() - 1;
        self.settle(top, status);
        loop {
            let now = Instant::now();
            self.expire_hops(now);
            for id in 0..self.running.len() {
                let due = match &self.running[id] {
                    Some(r) => r.runnable || r.wake_at.is_some_and(|w| w <= now),
                    None => false,
                };
                if !due {
                    continue;
                }
                if let Some(result) = self.step(id, now) {
                    if id == top {
                        self.running.clear();
                        return result.map_err(|e| RunError::Failed(Box::new(e)));
                    }
                    self.finish(id, result);
                }
            }
            if self.running.iter().flatten().any(|r| r.runnable) {
                continue;
            }
            let next = self
                .running
                .iter()
                .flatten()
                .flat_map(|r| [r.wake_at, r.hop.as_ref().and_then(|h| h.deadline)])
                .flatten()
                .min();
            match next {
                Some(at) => std::thread::sleep(at.saturating_duration_since(Instant::now())),
                None => {
                    self.running.clear();
                    return Err(RunError::Stalled);
                }
            }
        }
    }

    /// Runs one slice of execution `id`; `Some` when it ended.
    fn step(&mut self, id: usize, now: Instant) -> Option<Result<Portable, ExecError>> {
        let running = self.running[id].as_mut()?;
        let contexts = &self.nodes.get(&*running.node)?.contexts;
        let status = self
            .context_natives
            .run(contexts, &running.context, &mut running.exec, now);
        self.settle(id, status)
    }

    /// Acts on what running `id` answered: its result if it ended; else when it is due
    /// again, and the hops it asked for are started.
    fn settle(&mut self, id: usize, status: Status) -> Option<Result<Portable, ExecError>> {
        let running = self.running[id].as_mut()?;
        let requests = running.exec.take_requests();
        let next = match status.ended() {
            Ok(result) => return Some(result),
            Err(next) => next,
        };
        running.runnable = next.runnable;
        running.wake_at = next.wake_at;
        for request in requests {
            self.start_hop(id, request);
        }
        None
    }

    fn start_hop(&mut self, caller: usize, request: RemoteRequest) {
        match HopTarget::parse(&request.target) {
            Ok(plan) => {
                let hop = Hop {
                    caller,
                    request,
                    plan,
                    next_peer: 0,
                    deadline: None,
                };
                self.try_next_peer(hop, None);
            }
            Err(e) => {
                let error = Portable::Map(vec![
                    (Portable::Str("kind".into()), Portable::Str(e.kind.into())),
                    (Portable::Str("message".into()), Portable::Str(e.message)),
                ]);
                self.answer(
                    caller,
                    request.id,
                    Err(RemoteFailure {
                        error,
                        trace: Vec::new(),
                    }),
                );
            }
        }
    }

    /// Starts the hop on its next peer, or answers the caller with the last failure.
    fn try_next_peer(&mut self, mut hop: Hop, mut last: Option<Portable>) {
        while let Some(peer) = hop.plan.peers.get(hop.next_peer).cloned() {
            hop.next_peer += 1;
            // `timeout_ms` bounds each attempt, so a peer that times out fails over to the next.
            hop.deadline = hop.plan.timeout.map(|t| Instant::now() + t);
            match self.launch(&hop, &peer) {
                Ok(exec) => {
                    let context = Rc::from(hop.plan.context.as_str());
                    let running = Running {
                        node: self.nodes[&peer].view.here.clone(),
                        exec,
                        hop: Some(hop),
                        runnable: true,
                        wake_at: None,
                        context,
                    };
                    // A free slot is reused: nothing refers to it any more (an execution's
                    // hops are cancelled when it ends), and the table stays the size of
                    // what runs at once, which every scheduling round walks.
                    match self.running.iter().position(Option::is_none) {
                        Some(free) => self.running[free] = Some(running),
                        None => self.running.push(Some(running)),
                    }
                    return;
                }
                Err(error) => {
                    let failover = error_kind(&error).is_some_and(is_failover_kind);
                    last = Some(error);
                    if !failover {
                        break;
                    }
                }
            }
        }
        let error = last.unwrap_or_else(|| hop_error("Unreachable", "no peer to try", ""));
        self.answer(
            hop.caller,
            hop.request.id,
            Err(RemoteFailure {
                error,
                trace: Vec::new(),
            }),
        );
    }

    /// Ships the blobs the hop needs to `peer` and starts the body there.
    fn launch(&mut self, hop: &Hop, peer: &str) -> Result<Execution, Portable> {
        let caller_node = self.running[hop.caller]
            .as_ref()
            .map(|r| r.node.clone())
            .unwrap_or_default();
        if !self.nodes.contains_key(peer) {
            return Err(hop_error(
                "Unreachable",
                format!("unknown peer `{peer}`"),
                peer,
            ));
        }
        if !self.nodes[peer]
            .contexts
            .borrow()
            .contains(&hop.plan.context)
        {
            return Err(hop_error(
                "Refused",
                format!("peer `{peer}` has no context `{}`", hop.plan.context),
                peer,
            ));
        }
        let mut roots = vec![hop.request.func];
        hop.request
            .args
            .iter()
            .for_each(|a| a.functions(&mut roots));
        let store = &self.nodes[&*caller_node].store;
        let needed =
            transitive_closure(roots.iter().map(|f| f.blob), |h| store.get(h).map(|b| &**b))
                .map_err(|e| hop_error("Refused", e.to_string(), peer))?;
        self.ship(&caller_node, peer, &needed)?;
        let mut limits = self.limits.clone();
        limits.deadline = match (limits.deadline, hop.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let node = self.nodes.get_mut(peer).expect("checked above");
        let info = node.info(caller_node);
        node.stats.calls_served += 1;
        start_on(
            &self.engine,
            node,
            hop.request.func,
            &hop.request.args,
            info,
            limits,
            (self.io)(),
        )
        .map_err(|e| start_failure(&e, peer))
    }

    /// Copies the blobs of `needed` that `peer` lacks from `caller`'s store into `peer`'s.
    fn ship(&mut self, caller: &str, peer: &str, needed: &[BlobHash]) -> Result<(), Portable> {
        if caller == peer {
            return Ok(()); // a hop to oneself: the store already holds everything.
        }
        let missing: Vec<_> = {
            let (source, target) = (&self.nodes[caller].store, &self.nodes[peer].store);
            needed
                .iter()
                .filter(|h| !target.contains(h))
                .map(|h| {
                    let stored = source
                        .stored(h)
                        .ok_or_else(|| hop_error("Refused", format!("blob {h} missing"), peer))?;
                    Ok((stored.blob.clone(), stored.debug.clone()))
                })
                .collect::<Result<_, _>>()?
        };
        let target = self.nodes.get_mut(peer).expect("peer exists");
        for (blob, debug) in missing {
            target.stats.blobs_received += 1;
            target.stats.blob_bytes_received += blob.encode().len();
            target
                .store
                .insert(blob, debug)
                .map_err(|e| hop_error("Refused", e.to_string(), peer))?;
        }
        Ok(())
    }

    /// An execution serving a hop ended: answer its caller (or fail over on a timeout).
    fn finish(&mut self, id: usize, result: Result<Portable, ExecError>) {
        let Some(running) = self.running[id].take() else {
            return;
        };
        self.cancel_children(id);
        let Some(hop) = running.hop else { return };
        let peer = running.node;
        match result {
            Ok(value) => self.answer(hop.caller, hop.request.id, Ok(value)),
            Err(error) => {
                let timed_out = hop.deadline.is_some_and(|d| d <= Instant::now());
                match body_failure(error, &peer, timed_out) {
                    BodyFailure::Timeout(error) => self.try_next_peer(hop, Some(error)),
                    BodyFailure::Failed(failure) => {
                        self.answer(hop.caller, hop.request.id, Err(failure))
                    }
                }
            }
        }
    }

    /// Cancels hops whose deadline passed and fails them over as `Timeout`.
    fn expire_hops(&mut self, now: Instant) {
        for id in 0..self.running.len() {
            let expired = self.running[id]
                .as_ref()
                .and_then(|r| r.hop.as_ref())
                .is_some_and(|h| h.deadline.is_some_and(|d| d <= now));
            if expired {
                let Some(mut running) = self.running[id].take() else {
                    continue;
                };
                running.exec.cancel();
                self.cancel_children(id);
                if let Some(hop) = running.hop {
                    let peer = running.node;
                    self.try_next_peer(
                        hop,
                        Some(hop_error(
                            "Timeout",
                            format!("hop to `{peer}` timed out"),
                            &peer,
                        )),
                    );
                }
            }
        }
    }

    fn cancel_children(&mut self, parent: usize) {
        let children: Vec<usize> = (0..self.running.len())
            .filter(|&i| {
                self.running[i]
                    .as_ref()
                    .and_then(|r| r.hop.as_ref())
                    .is_some_and(|h| h.caller == parent)
            })
            .collect();
        for child in children {
            if let Some(mut running) = self.running[child].take() {
                running.exec.cancel();
                self.cancel_children(child);
            }
        }
    }

    fn answer(&mut self, caller: usize, request: u64, outcome: Result<Portable, RemoteFailure>) {
        if let Some(running) = self.running[caller].as_mut() {
            running.exec.resolve(request, outcome);
            running.runnable = true;
        }
    }
}

/// Starts `func(args)` on `node`, its program linked once per function.
fn start_on(
    engine: &Engine,
    node: &mut LocalNode,
    func: FunctionId,
    args: &[Portable],
    info: NodeInfo,
    limits: Limits,
    io: ExecIo,
) -> Result<Execution, StartError> {
    let linked = node.links.get(engine, &node.store, func)?;
    Execution::start_linked(engine, &node.store, linked, args, info, limits, io)
}

/// Why a cluster run did not produce a value.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no node named `{0}`")]
    UnknownNode(String),
    #[error("{0}")]
    Start(String),
    #[error("execution failed")]
    Failed(Box<ExecError>),
    #[error("every task is waiting and nothing can wake it")]
    Stalled,
    #[error(transparent)]
    Context(#[from] ContextError),
}
