//! The node runtime: a Skiff VM instance serving and making calls over QUIC.
//!
//! A [`Node`] has two sides joined by channels:
//!
//! - **tokio side**: the [`Endpoint`] accept loop; per QUIC connection a driver task
//!   (`driver.rs`) that moves bytes between quinn streams and one sans-IO
//!   [`skiff_wire::Connection`] and feeds it time; per outgoing hop a task (`hop.rs`) that
//!   dials, fails over and waits for the result.
//! - **VM side**: one loop (`vm.rs`) owning the `skiff_vm::Engine` (with the host's natives),
//!   the `CodeStore` and every execution, on a dedicated OS thread ([`Node::start`]) or as a
//!   task of the host's `LocalSet` ([`Node::start_local`]). VM values are `!Send`, so
//!   executions never leave that thread; only `Portable` values cross.
//!
//! Where the tokio side's tasks run is the node's `Spawner` (`spawner.rs`): the runtime
//! the node was started in, or, for [`Node::start_local`], the host's `LocalSet` too.
//!
//! A warm call of effect-free code skips the VM thread: the driver runs it on an engine of
//! its own thread and answers at once if it ends within a short slice (`inline.rs`); any
//! other call, or one that does not end there, goes to the VM thread as drawn below.
//!
//! ```text
//!   quinn streams ⇄ driver task (wire::Connection) ──IncomingCall/Cancelled──▶ VM thread
//!                         ▲                                                     │
//!                         └────── Respond / Call / Cancel ◀── hop tasks ◀──── RemoteRequest
//! ```
//!
//! Invariants:
//! - One driver per QUIC connection; an incoming connection from an identified peer is
//!   adopted under its name, so calls to that peer reuse it.
//! - A blob from a peer is re-hashed and verified by the wire before it is stored, and
//!   verified again when it enters the VM's `CodeStore`.
//! - Every incoming call is answered exactly once (result, typed error) unless the caller
//!   cancelled it or the connection went away; then its execution is cancelled.
//! - An endpoint that accepts any client certificate binds only to loopback (enforced by
//!   [`Endpoint`]).
//! - Every execution runs in one execution context (`crate::context`) that exists on this
//!   node; contexts and their state live on the VM thread (an inline answer runs only code
//!   that uses none: the context natives are host natives).
//! - Shutdown is graceful ([`Node::shutdown_with`]): once it begins, new connections and
//!   new calls are refused (`Refused`, "shutting down"; call-backs belonging to an execution
//!   still running here excepted), in-flight executions get the grace period to finish,
//!   whatever remains is cancelled and its caller answered with a `Disconnected` error that
//!   says the node shut down, and only then are the connections closed.

mod driver;
mod due;
mod hop;
mod inline;
mod spawner;
mod streams;
mod vm;

use crate::context::{ContextError, ContextState, Contexts};
use crate::endpoint::{ConnectionManager, Endpoint, EndpointConfig, TransportOptions};
use crate::lossy::{LossConfig, LossStats};
pub use crate::peers::Permissions;
use crate::peers::{Peer, PeerTable};
use crate::tls::{ClientAuth, Fingerprint, NodeIdentity};
use crate::TransportError;
use bytes::Bytes;
use driver::DriverHandle;
use skiff_vm::native::{NativeCtx, NativeError, NodeInfo};
use skiff_vm::{Blob, BlobHash, ExecError, ExecIo, FunctionId, Limits, Module, Portable, Value};
use skiff_wire::idmap::NameMap;
use skiff_wire::{BlobSource, CallOptions, IncomingCall, SharedStore, Side, Stats};
use spawner::Spawner;
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;
use tokio::task::LocalSet;
use vm::{RunFailure, RunTarget, VmLoop, VmMsg};

pub use skiff_vm::RemoteFailure;

/// A host native usable from any thread: registered on the node's VM thread.
pub type SendNative =
    Arc<dyn Fn(&mut NativeCtx<'_>, &[Value]) -> Result<Value, NativeError> + Send + Sync>;

/// Makes the output sinks of each execution (called on the VM thread).
pub type SendIoFactory = Arc<dyn Fn() -> ExecIo + Send + Sync>;

/// Everything a [`Node`] is built from.
#[derive(Clone)]
pub struct NodeConfig {
    /// This node's name (`here()`), sent in hello.
    pub name: String,
    /// Where to listen (port 0: ephemeral).
    pub listen: SocketAddr,
    /// This node's certificate and key.
    pub identity: NodeIdentity,
    /// The peers this node knows (names, addresses, pins / CA).
    pub peers: PeerTable,
    /// Which client certificates are accepted; `None`: exactly the peer table's
    /// ([`PeerTable::client_auth`]).
    pub client_auth: Option<ClientAuth>,
    /// Limits of every execution on this node (a call's deadline is added per call).
    pub limits: Limits,
    /// Wire protocol settings (the node name is overwritten with `name`).
    pub wire: skiff_wire::Config,
    /// QUIC settings.
    pub transport: TransportOptions,
    /// Lose datagrams on purpose (tests only): the endpoint is bound on a
    /// [`crate::LossySocket`] with this configuration; its counters are
    /// [`Node::loss_stats`]. `None` (the default): a plain UDP socket.
    pub loss: Option<LossConfig>,
    /// Blob store capacity in bytes.
    pub store_capacity: u64,
    /// Persist the blob store in this directory (one file per hash, written atomically;
    /// re-hashed and verified when the node starts, bad files deleted), so a restarted node
    /// needs no blob sent again. `None` (the default): memory only.
    pub store_dir: Option<std::path::PathBuf>,
    /// Host natives.
    pub natives: Vec<(String, SendNative)>,
    /// Names of `natives` the host declares effect-free: they change nothing outside the
    /// execution calling them (they compute, or read, and return), so calling one again for
    /// the same call is harmless. Code whose natives are all effect-free (these, and every
    /// builtin but `print`) may be answered inline, on the connection's thread
    /// (docs/embedding.md); code calling any other host native always runs on the VM thread.
    pub effect_free_natives: Vec<String>,
    /// Output sinks of executions.
    pub io: SendIoFactory,
    /// Execution contexts besides `default`, created empty at start (more at any time with
    /// [`Node::create_context`] / [`Node::fork_context`]).
    pub contexts: Vec<String>,
    /// How long [`Node::shutdown`] lets in-flight executions finish before cancelling them
    /// (default 5 s).
    pub shutdown_grace: Duration,
    /// Permissions of peers not listed in `permissions` (and of unidentified clients).
    pub default_permissions: Permissions,
    /// Per-peer permissions.
    pub permissions: HashMap<String, Permissions>,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

impl NodeConfig {
    /// Defaults: listen on 127.0.0.1 (ephemeral port), no peers, default limits, stdio.
    pub fn new(name: impl Into<String>, identity: NodeIdentity) -> Self {
        let name = name.into();
        NodeConfig {
            wire: skiff_wire::Config::new(name.clone()),
            name,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            identity,
            peers: PeerTable::new(),
            client_auth: None,
            limits: Limits::default(),
            transport: TransportOptions::default(),
            loss: None,
            store_capacity: 256 << 20,
            store_dir: None,
            natives: Vec::new(),
            effect_free_natives: Vec::new(),
            io: Arc::new(ExecIo::stdio),
            contexts: Vec::new(),
            shutdown_grace: Duration::from_secs(5),
            default_permissions: Permissions::default(),
            permissions: HashMap::new(),
        }
    }

    /// Adds a host native callable from scripts (and shipped code) on this node.
    pub fn native(
        mut self,
        name: &str,
        f: impl Fn(&mut NativeCtx<'_>, &[Value]) -> Result<Value, NativeError> + Send + Sync + 'static,
    ) -> Self {
        self.natives.push((name.to_owned(), Arc::new(f)));
        self
    }

    /// [`NodeConfig::native`], declared effect-free ([`NodeConfig::effect_free_natives`]).
    pub fn effect_free_native(
        mut self,
        name: &str,
        f: impl Fn(&mut NativeCtx<'_>, &[Value]) -> Result<Value, NativeError> + Send + Sync + 'static,
    ) -> Self {
        self.effect_free_natives.push(name.to_owned());
        self.native(name, f)
    }
}

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("the node has stopped")]
    Stopped,
    #[error("cannot load the module: {0}")]
    Load(String),
    #[error("cannot start: {0}")]
    Start(String),
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error("{0}")]
    Failed(Box<ExecError>),
    #[error("{}", describe(.0))]
    Remote(Box<RemoteFailure>),
}

/// The verifier every blob from outside passes before the wire store keeps it (received
/// from a peer, or loaded from the store's directory).
pub(crate) fn verify_blob(blob: &skiff_vm::Blob) -> Result<(), String> {
    skiff_vm::verify::verify_blob(blob)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A VM engine with the builtins and `natives` (a node's host natives, callable on any
/// thread).
fn engine_with(natives: &[(String, SendNative)]) -> skiff_vm::Engine {
    let mut engine = skiff_vm::Engine::new();
    for (name, f) in natives {
        let f = f.clone();
        engine.register_native(name.clone(), move |ctx, args| f(ctx, args));
    }
    engine
}

/// Who made an incoming call: the connection's authenticated peer, else the name the call
/// gives (an unidentified client's).
fn caller_name<'a>(peer: Option<&'a Arc<str>>, call: &'a IncomingCall) -> &'a Arc<str> {
    peer.unwrap_or(&call.caller)
}

fn describe(f: &RemoteFailure) -> String {
    let get = |key: &str| match &f.error {
        Portable::Map(entries) => entries.iter().find_map(|(k, v)| match (k, v) {
            (Portable::Str(k), Portable::Str(v)) if k == key => Some(v.clone()),
            _ => None,
        }),
        _ => None,
    };
    match (get("kind"), get("message")) {
        (Some(kind), Some(message)) => format!("error[{kind}]: {message}"),
        _ => format!("error[Thrown]: {:?}", f.error),
    }
}

/// Canonical bytes and direct dependencies of every blob the node holds: what outgoing calls
/// ship from.
#[derive(Default)]
pub(crate) struct CodeMap {
    blobs: HashMap<BlobHash, (Bytes, Vec<BlobHash>)>,
}

impl CodeMap {
    fn insert_blob(&mut self, blob: &Blob) {
        let bytes = Bytes::from(blob.encode());
        let hash = BlobHash::of(&bytes);
        self.blobs
            .entry(hash)
            .or_insert_with(|| (bytes, blob.dependencies()));
    }
    fn insert_bytes(&mut self, hash: BlobHash, bytes: Bytes, deps: Vec<BlobHash>) {
        self.blobs.entry(hash).or_insert((bytes, deps));
    }
    fn remove(&mut self, hash: &BlobHash) {
        self.blobs.remove(hash);
    }
}

impl BlobSource for CodeMap {
    fn blob_bytes(&self, hash: &BlobHash) -> Option<Bytes> {
        self.blobs.get(hash).map(|(b, _)| b.clone())
    }
    fn blob_deps(&self, hash: &BlobHash) -> Option<Vec<BlobHash>> {
        self.blobs.get(hash).map(|(_, d)| d.clone())
    }
}

/// The node's code as a [`BlobSource`] that takes its read lock at the first blob asked
/// for, and holds it from then on: a call that ships no function (most do not) takes none.
pub(crate) struct CodeWhenAsked<'a> {
    code: &'a RwLock<CodeMap>,
    held: OnceCell<RwLockReadGuard<'a, CodeMap>>,
}

impl<'a> CodeWhenAsked<'a> {
    pub(crate) fn new(code: &'a RwLock<CodeMap>) -> CodeWhenAsked<'a> {
        CodeWhenAsked {
            code,
            held: OnceCell::new(),
        }
    }

    fn map(&self) -> &CodeMap {
        self.held
            .get_or_init(|| self.code.read().unwrap_or_else(|e| e.into_inner()))
    }
}

impl BlobSource for CodeWhenAsked<'_> {
    fn blob_bytes(&self, hash: &BlobHash) -> Option<Bytes> {
        self.map().blob_bytes(hash)
    }
    fn blob_deps(&self, hash: &BlobHash) -> Option<Vec<BlobHash>> {
        self.map().blob_deps(hash)
    }
}

#[derive(Default)]
struct Drivers {
    by_name: NameMap<DriverHandle>,
    by_id: HashMap<usize, DriverHandle>,
}

/// Counters about what this node did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCounters {
    /// Incoming calls whose execution started.
    pub calls_served: u64,
    /// Of `calls_served`, those answered inline: run and answered by the connection's task,
    /// without the VM thread (warm calls of effect-free code that end at once; `inline.rs`).
    pub calls_inline: u64,
    /// Incoming executions cancelled (caller cancel, deadline, connection lost).
    pub calls_cancelled: u64,
    /// Executions serving incoming calls right now.
    pub calls_active: u64,
    /// Outgoing calls whose answer their caller read from the connection itself: the
    /// connection's only call in flight, its caller woken by the stream, not by the
    /// connection's task (`driver.rs`, `DriverHandle::call`).
    pub answers_read_by_caller: u64,
    /// Verified blobs the VM holds (loaded here, or received and still in the blob store).
    pub code_blobs: u64,
}

/// What a graceful shutdown did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Every execution finished within the grace period.
    pub drained: bool,
    /// Executions still running when the grace period ended, cancelled (their callers got
    /// a `Disconnected` error saying the node shut down).
    pub cancelled: usize,
}

/// State shared by the tokio side and the VM thread.
pub(crate) struct Shared {
    /// Shared with every execution (`here()`).
    name: Arc<str>,
    manager: ConnectionManager,
    wire_config: skiff_wire::Config,
    store: SharedStore,
    code: RwLock<CodeMap>,
    drivers: Mutex<Drivers>,
    vm_tx: UnboundedSender<VmMsg>,
    limits: Limits,
    io: SendIoFactory,
    default_permissions: Permissions,
    permissions: NameMap<Permissions>,
    /// Spawns the node's tasks: on the runtime it was started in, or on the host's `LocalSet`.
    spawner: Spawner,
    /// Set when shutdown begins: new connections and calls are refused.
    closing: AtomicBool,
    next_token: AtomicU64,
    /// Calls served on the VM thread; `inline` counts the others (one count per call).
    served: AtomicU64,
    inline: AtomicU64,
    read_by_caller: AtomicU64,
    cancelled: AtomicU64,
    active: AtomicU64,
    /// Blobs in the VM thread's code store.
    code_blobs: AtomicU64,
    /// [`Shared::peer_names`], until the peer table changes.
    peer_names: Mutex<Option<Arc<[String]>>>,
    /// Bumped after each change of the peer table, which `peer_names` then no longer is.
    peers_generation: AtomicU64,
    /// The VM thread's code, for calls answered inline (`inline.rs`).
    inline_code: Mutex<Arc<inline::InlineCode>>,
    /// Bumped after each change of `inline_code`: a thread's inline state checks it, not
    /// the snapshot, on every call.
    inline_generation: AtomicU64,
    /// The host natives declared effect-free, which inline runs may call.
    inline_natives: Vec<(String, SendNative)>,
}

impl Shared {
    fn to_vm(&self, msg: VmMsg) {
        let _ = self.vm_tx.send(msg);
    }

    fn next_token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// What an execution may know of its node (`here()`, `caller()`, `peers()`): `caller`
    /// is who it serves, `None` for the host's own run.
    fn node_info(&self, caller: Option<Arc<str>>) -> NodeInfo {
        NodeInfo {
            here: self.name.clone(),
            caller,
            peers: self.peer_names(),
        }
    }

    /// The limits of an execution serving `call`: the node's, with the caller's deadline if
    /// that is sooner.
    fn limits_for(&self, call: &IncomingCall) -> Limits {
        let mut limits = self.limits.clone();
        limits.deadline = Some(match limits.deadline {
            Some(d) => d.min(call.deadline),
            None => call.deadline,
        });
        limits
    }

    fn inline_code(&self) -> Arc<inline::InlineCode> {
        self.inline_code
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_inline_code(&self, code: inline::InlineCode) {
        *self.inline_code.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(code);
        self.inline_generation.fetch_add(1, Ordering::Release);
    }

    fn note_served(&self) {
        self.served.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    /// A call answered inline: served and ended at once.
    fn note_inline(&self) {
        self.inline.fetch_add(1, Ordering::Relaxed);
    }

    /// An outgoing call's answer read by its caller ([`NodeCounters::answers_read_by_caller`]).
    fn note_read_by_caller(&self) {
        self.read_by_caller.fetch_add(1, Ordering::Relaxed);
    }

    fn note_cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
        self.note_ended();
    }

    fn note_ended(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// The names `peers()` reports: built when the peer table changes, shared by every
    /// execution until it changes again.
    fn peer_names(&self) -> Arc<[String]> {
        let mut cached = self.peer_names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(names) = &*cached {
            return names.clone();
        }
        let mut names: Vec<String> = self
            .manager
            .peers()
            .iter()
            .map(|p| p.name.clone())
            .filter(|n| **n != *self.name)
            .collect();
        names.sort();
        let names: Arc<[String]> = names.into();
        *cached = Some(names.clone());
        names
    }

    fn permissions_for(&self, peer: Option<&str>) -> &Permissions {
        peer.and_then(|p| self.permissions.get(p))
            .unwrap_or(&self.default_permissions)
    }

    fn lock_drivers(&self) -> std::sync::MutexGuard<'_, Drivers> {
        self.drivers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forget_driver(&self, handle: &DriverHandle) {
        let mut d = self.lock_drivers();
        d.by_id.remove(&handle.id);
        if let Some(name) = &handle.peer {
            if d.by_name.get(&**name).is_some_and(|h| h.id == handle.id) {
                d.by_name.remove(&**name);
            }
        }
    }

    /// Registers a driver for `conn` (or returns the one already running for it).
    fn register(
        self: &Arc<Self>,
        conn: quinn::Connection,
        side: Side,
        peer: Option<Arc<str>>,
    ) -> DriverHandle {
        let mut d = self.lock_drivers();
        if let Some(h) = d.by_id.get(&conn.stable_id()) {
            return h.clone();
        }
        let handle = driver::spawn(self, conn, side, peer.clone());
        d.by_id.insert(handle.id, handle.clone());
        if let Some(name) = peer {
            let replace = d.by_name.get(&*name).is_none_or(|h| !h.is_live());
            if replace {
                d.by_name.insert(name.to_string(), handle.clone());
            }
        }
        handle
    }

    /// The driver of a live connection to `peer`, if there is one.
    fn live_driver(&self, peer: &str) -> Option<DriverHandle> {
        self.lock_drivers()
            .by_name
            .get(peer)
            .filter(|h| h.is_live())
            .cloned()
    }

    /// The driver of a new connection to `peer` (or of one a concurrent dial made): for a
    /// caller that found no [`live_driver`](Self::live_driver).
    async fn dial(self: &Arc<Self>, peer: &str) -> Result<DriverHandle, TransportError> {
        // Boxed: a dial is rare, and its future would otherwise make every call's future
        // (moved on each call) a few times larger.
        let conn = Box::pin(self.manager.connection(peer)).await?;
        Ok(self.register(conn, Side::Client, Some(peer.into())))
    }
}

/// A running Skiff node. Must be started inside a tokio runtime.
pub struct Node {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    /// Where the VM loop runs; `None` once stopped.
    vm: Option<VmPlacement>,
    accept: tokio::task::JoinHandle<()>,
    loss: Option<Arc<LossStats>>,
    shutdown_grace: Duration,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.shared.name)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// A bound node whose VM loop and accept loop are not started yet.
struct Bound {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    loss: Option<Arc<LossStats>>,
    vm_rx: UnboundedReceiver<VmMsg>,
    contexts: Contexts,
}

/// Where a node's VM loop runs.
enum VmPlacement {
    /// Its own OS thread ([`Node::start`]).
    Thread(std::thread::JoinHandle<()>),
    /// A local task of the host's `LocalSet` ([`Node::start_local`]).
    Local,
}

impl Node {
    /// Binds the endpoint, starts the VM loop on a thread of its own and the accept loop.
    ///
    /// The node's connections run on the caller's runtime; the VM (every execution) on
    /// the node's thread, so scripts never hold up the runtime. See [`Node::start_local`]
    /// for a node whose VM shares the runtime's thread.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let bound = Self::bind(&config, Spawner::current())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| NodeError::Start(format!("cannot build the VM's runtime: {e}")))?;
        let (vm_shared, natives) = (bound.shared.clone(), config.natives.clone());
        let (contexts, vm_rx) = (bound.contexts, bound.vm_rx);
        let thread = std::thread::Builder::new()
            .name(format!("skiff-vm-{}", config.name))
            .spawn(move || {
                runtime.block_on(VmLoop::new(vm_shared, &natives, contexts, true).run(vm_rx))
            })
            .map_err(|e| NodeError::Start(e.to_string()))?;
        let accept = tokio::spawn(accept_loop(bound.shared.clone(), bound.endpoint.clone()));
        Ok(Self::serve(
            &config,
            (bound.shared, bound.endpoint, bound.loss),
            VmPlacement::Thread(thread),
            accept,
        ))
    }

    /// Like [`Node::start`], but the VM loop is a task of `local` instead of a thread, and
    /// so is every other task of the node: quinn's endpoint and connection drivers, the
    /// node's connection drivers, handshakes and hop tasks. The node adds no thread of its
    /// own, and on a current-thread runtime driving `local`, an incoming call goes from the
    /// QUIC packet to the execution and back without a thread switch, every wake-up on the
    /// way a local one (the lowest round-trip latency; one core for everything).
    ///
    /// The host must drive `local` (e.g. `local.run_until(..)` or awaiting it) for the node
    /// to do anything, its own calls to other nodes included. Executions run in slices
    /// between which the loop yields, but a slice or a host native that blocks holds up
    /// every task of that thread.
    ///
    /// Calls are best made from tasks of `local` (`spawn_local`): a caller awaiting in the
    /// future the set runs until is polled again whenever the I/O driver wakes a task of the
    /// set, and its answer wakes it only for the scheduler's next pass, where a caller
    /// that is a task of the set runs within the pass that read its answer
    /// (`docs/embedding.md`).
    pub async fn start_local(config: NodeConfig, local: &LocalSet) -> Result<Node, NodeError> {
        let bound = Self::bind(&config, Spawner::local(local))?;
        let vm = VmLoop::new(bound.shared.clone(), &config.natives, bound.contexts, false);
        local.spawn_local(vm.run(bound.vm_rx));
        let accept = local.spawn_local(accept_loop(bound.shared.clone(), bound.endpoint.clone()));
        Ok(Self::serve(
            &config,
            (bound.shared, bound.endpoint, bound.loss),
            VmPlacement::Local,
            accept,
        ))
    }

    /// Binds the endpoint and builds the state shared with the VM loop.
    fn bind(config: &NodeConfig, spawner: Spawner) -> Result<Bound, NodeError> {
        let client_auth = config
            .client_auth
            .clone()
            .unwrap_or_else(|| config.peers.client_auth());
        let mut endpoint_config = EndpointConfig::new(config.identity.clone(), client_auth);
        endpoint_config.options = config.transport.clone();
        endpoint_config.runtime = spawner.quinn_runtime();
        let (endpoint, loss) = match config.loss {
            Some(loss) => {
                let (endpoint, stats) = Endpoint::bind_lossy(config.listen, endpoint_config, loss)?;
                (endpoint, Some(stats))
            }
            None => (Endpoint::bind(config.listen, endpoint_config)?, None),
        };
        let manager = ConnectionManager::new(endpoint.clone(), config.peers.clone());
        let mut wire_config = config.wire.clone();
        wire_config.node_name = config.name.clone();
        let (vm_tx, vm_rx) = unbounded_channel();
        let contexts = Contexts::with_names(&config.contexts)?;
        let store = match &config.store_dir {
            None => skiff_wire::BlobStore::new(config.store_capacity),
            Some(dir) => {
                let (store, report) =
                    skiff_wire::BlobStore::open(dir, config.store_capacity, &verify_blob).map_err(
                        |e| {
                            NodeError::Start(format!(
                                "cannot open the blob store in {}: {e}",
                                dir.display()
                            ))
                        },
                    )?;
                tracing::info!(
                    node = %config.name, dir = %dir.display(), loaded = report.loaded,
                    rejected = report.rejected, "blob store loaded"
                );
                store
            }
        };
        let shared = Arc::new(Shared {
            name: config.name.as_str().into(),
            manager,
            wire_config,
            store: store.shared(),
            code: RwLock::new(CodeMap::default()),
            drivers: Mutex::new(Drivers::default()),
            vm_tx,
            limits: config.limits.clone(),
            io: config.io.clone(),
            default_permissions: config.default_permissions.clone(),
            permissions: config
                .permissions
                .iter()
                .map(|(name, p)| (name.clone(), p.clone()))
                .collect(),
            spawner,
            closing: AtomicBool::new(false),
            next_token: AtomicU64::new(0),
            served: AtomicU64::new(0),
            inline: AtomicU64::new(0),
            read_by_caller: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            active: AtomicU64::new(0),
            code_blobs: AtomicU64::new(0),
            peer_names: Mutex::new(None),
            peers_generation: AtomicU64::new(0),
            inline_code: Mutex::default(),
            inline_generation: AtomicU64::new(0),
            inline_natives: config
                .natives
                .iter()
                .filter(|(name, _)| config.effect_free_natives.contains(name))
                .cloned()
                .collect(),
        });
        Ok(Bound {
            shared,
            endpoint,
            loss,
            vm_rx,
            contexts,
        })
    }

    /// The node whose VM loop runs at `vm` and whose accept loop is `accept`.
    fn serve(
        config: &NodeConfig,
        (shared, endpoint, loss): (Arc<Shared>, Endpoint, Option<Arc<LossStats>>),
        vm: VmPlacement,
        accept: tokio::task::JoinHandle<()>,
    ) -> Node {
        tracing::info!(node = %config.name, addr = ?endpoint.local_addr().ok(), "node started");
        Node {
            shared,
            endpoint,
            vm: Some(vm),
            accept,
            loss,
            shutdown_grace: config.shutdown_grace,
        }
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The address the node listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, NodeError> {
        Ok(self.endpoint.local_addr()?)
    }

    /// The fingerprint peers pin this node by.
    pub fn fingerprint(&self) -> Fingerprint {
        self.endpoint.identity().fingerprint()
    }

    /// Adds or replaces a peer.
    pub fn add_peer(&self, peer: Peer) {
        self.shared.manager.insert_peer(peer);
        *self
            .shared
            .peer_names
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        self.shared.peers_generation.fetch_add(1, Ordering::Release);
    }

    /// Loads a module: its code becomes runnable here and its top-level functions are
    /// exported (callable by peers by name, if permitted).
    pub async fn load(&self, module: &Module) -> Result<(), NodeError> {
        let (tx, rx) = oneshot::channel();
        self.shared.to_vm(VmMsg::Load {
            module: Box::new(module.clone()),
            reply: tx,
        });
        rx.await
            .map_err(|_| NodeError::Stopped)?
            .map_err(NodeError::Load)
    }

    /// Runs `func(args)` here (e.g. a script's entry), serving its hops over QUIC.
    pub async fn run(&self, func: FunctionId, args: Vec<Portable>) -> Result<Portable, NodeError> {
        self.run_target(RunTarget::Function(func), args).await
    }

    /// Runs the exported function `name` here.
    pub async fn run_export(&self, name: &str, args: Vec<Portable>) -> Result<Portable, NodeError> {
        self.run_target(RunTarget::Export(name.to_owned()), args)
            .await
    }

    async fn run_target(
        &self,
        target: RunTarget,
        args: Vec<Portable>,
    ) -> Result<Portable, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.shared.to_vm(VmMsg::Run {
            target,
            args,
            reply: tx,
        });
        match rx.await.map_err(|_| NodeError::Stopped)? {
            Ok(v) => Ok(v),
            Err(RunFailure::Failed(e)) => Err(NodeError::Failed(e)),
            Err(RunFailure::Start(e)) => Err(NodeError::Start(e)),
        }
    }

    /// Calls the function `function` that `peer` exports.
    pub async fn call(
        &self,
        peer: &str,
        function: &str,
        args: Vec<Portable>,
        timeout: Option<Duration>,
    ) -> Result<Portable, NodeError> {
        let opts = CallOptions::named(function, args);
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        hop::call_peer(&self.shared, peer, opts, None, deadline)
            .await
            .map_err(|f| NodeError::Remote(Box::new(f)))
    }

    /// Runs `op` on the node's contexts, on the VM thread (between execution slices).
    async fn with_contexts<R: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Contexts) -> R + Send + 'static,
    ) -> Result<R, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.shared.to_vm(VmMsg::Contexts(Box::new(move |contexts| {
            let _ = tx.send(op(contexts));
        })));
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Registers the execution context `name` holding `initial`; hops with
    /// `context: name` run in it from now on. Fails if it exists, or if a value holds a
    /// function (contexts hold data).
    pub async fn create_context(
        &self,
        name: &str,
        initial: impl IntoIterator<Item = (String, Portable)>,
    ) -> Result<(), NodeError> {
        let name = name.to_owned();
        let initial: BTreeMap<String, Portable> = initial.into_iter().collect();
        Ok(self
            .with_contexts(move |c| c.create(&name, initial))
            .await??)
    }

    /// Registers the context `to` with a copy of `from`'s state as it is now (executions
    /// running in `from` are between slices); afterwards writes to either are invisible to
    /// the other. The copy is made lazily, on the first write to either.
    pub async fn fork_context(&self, from: &str, to: &str) -> Result<(), NodeError> {
        let (from, to) = (from.to_owned(), to.to_owned());
        Ok(self.with_contexts(move |c| c.fork(&from, &to)).await??)
    }

    /// A snapshot of the state of context `name` (later writes do not change it).
    pub async fn context_state(&self, name: &str) -> Result<ContextState, NodeError> {
        let name = name.to_owned();
        Ok(self.with_contexts(move |c| c.state(&name)).await??)
    }

    /// The names of every context on this node, sorted (`default` included).
    pub async fn context_names(&self) -> Result<Vec<String>, NodeError> {
        self.with_contexts(|c| c.names()).await
    }

    /// Wire counters of the current connection to `peer`, if there is one.
    pub fn stats(&self, peer: &str) -> Option<Stats> {
        let drivers = self.shared.lock_drivers();
        let h = drivers.by_name.get(peer)?.clone();
        drop(drivers);
        Some(h.stats())
    }

    /// Counters of the lossy socket, when [`NodeConfig::loss`] was set.
    pub fn loss_stats(&self) -> Option<Arc<LossStats>> {
        self.loss.clone()
    }

    /// Counters of calls served here.
    pub fn counters(&self) -> NodeCounters {
        NodeCounters {
            calls_served: self.shared.served.load(Ordering::Relaxed)
                + self.shared.inline.load(Ordering::Relaxed),
            calls_inline: self.shared.inline.load(Ordering::Relaxed),
            answers_read_by_caller: self.shared.read_by_caller.load(Ordering::Relaxed),
            calls_cancelled: self.shared.cancelled.load(Ordering::Relaxed),
            calls_active: self.shared.active.load(Ordering::Relaxed),
            code_blobs: self.shared.code_blobs.load(Ordering::Relaxed),
        }
    }

    /// Shuts down gracefully with the grace period of [`NodeConfig::shutdown_grace`]: see
    /// [`Node::shutdown_with`] (which also reports what happened).
    pub async fn shutdown(self) {
        let grace = self.shutdown_grace;
        self.shutdown_with(grace).await;
    }

    /// Shuts down gracefully:
    ///
    /// 1. From now on new connections are refused, and new incoming calls are answered with
    ///    `Refused` ("node `NAME` is shutting down"; a caller's peer list fails over). A
    ///    call-back that belongs to an execution still running here (its hop chain passes
    ///    through this node) is still served.
    /// 2. In-flight executions get up to `grace` to finish; their results reach their
    ///    callers as usual.
    /// 3. Executions still running then are cancelled (and the hops they wait on with them);
    ///    each caller gets a `Disconnected` error saying the node shut down.
    /// 4. Connections are closed once those last answers are sent; the VM thread stops.
    pub async fn shutdown_with(mut self, grace: Duration) -> ShutdownReport {
        let name = self.shared.name.clone();
        self.shared.closing.store(true, Ordering::SeqCst);
        tracing::info!(node = %name, ?grace, "shutting down");
        let (tx, rx) = oneshot::channel();
        self.shared.to_vm(VmMsg::Drain { reply: tx });
        let drained = matches!(tokio::time::timeout(grace, rx).await, Ok(Ok(())));
        let mut cancelled = 0;
        if !drained {
            let (tx, rx) = oneshot::channel();
            let reason = format!(
                "node `{name}` shut down before the call finished (grace period {grace:?})"
            );
            self.shared.to_vm(VmMsg::CancelAll { reason, reply: tx });
            cancelled = rx.await.unwrap_or(0);
        }
        let drained = drained || cancelled == 0;
        // The VM thread queued every last answer before replying; each driver writes what
        // it has queued, then closes its connection.
        let drivers: Vec<DriverHandle> =
            self.shared.lock_drivers().by_id.values().cloned().collect();
        for d in &drivers {
            d.send(driver::DriverCmd::Close);
        }
        for d in &drivers {
            let _ = tokio::time::timeout(Duration::from_secs(1), d.conn.closed()).await;
        }
        self.stop();
        self.endpoint.wait_idle().await;
        tracing::info!(node = %name, drained, cancelled, "node stopped");
        ShutdownReport { drained, cancelled }
    }

    fn stop(&mut self) {
        self.accept.abort();
        let drivers: Vec<DriverHandle> =
            self.shared.lock_drivers().by_id.values().cloned().collect();
        for d in drivers {
            d.send(driver::DriverCmd::Close);
        }
        self.endpoint.close();
        self.shared.to_vm(VmMsg::Shutdown);
        if let Some(VmPlacement::Thread(t)) = self.vm.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.vm.is_some() {
            self.stop();
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, endpoint: Endpoint) {
    while let Some(accepting) = endpoint.accept().await {
        if shared.closing.load(Ordering::SeqCst) {
            let from = accepting.remote_address();
            tracing::debug!(node = %shared.name, %from, "connection refused: shutting down");
            accepting.refuse();
            continue;
        }
        let spawner = &shared.spawner;
        let shared = shared.clone();
        spawner.spawn(async move {
            let from = accepting.remote_address();
            match accepting.establish().await {
                Ok((conn, identity)) => {
                    let peers = shared.manager.peers();
                    let name: Option<Arc<str>> = peers.identify(&identity).map(Arc::from);
                    tracing::debug!(node = %shared.name, %from, peer = ?name, "accepted");
                    if let Some(n) = &name {
                        // Calls to `n` reuse this connection (reach back to a caller that
                        // accepts no connections). A live connection already kept wins.
                        let _ = shared.manager.adopt(n, conn.clone()).await;
                    }
                    shared.register(conn, Side::Server, name);
                }
                Err(e) => {
                    tracing::debug!(node = %shared.name, %from, error = %e, "handshake failed")
                }
            }
        });
    }
}
