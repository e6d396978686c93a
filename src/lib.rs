//! # Skiff: distributed code that looks like local code
//!
//! This crate is the front door: it compiles Skiff scripts, runs them under host-chosen
//! limits, lets a host add its own native functions, and (through [`cluster`]) runs
//! `remote` blocks on other VM instances. The key decision it embodies is that **the host is
//! always in control**: an execution never blocks a thread or recurses on the Rust stack; it
//! runs in slices and comes back to the host whenever it finishes, fails, or waits on
//! something only the host can provide (a remote result, a timer). Everything below —
//! the in-process cluster here, the QUIC node in `skiff-transport` — is a host loop that
//! feeds those suspensions.
//!
//! ```
//! use skiff::{Engine, Limits};
//!
//! let mut engine = Engine::new(Limits::default());
//! engine.register_fn("greet", |name: String| format!("hello, {name}"));
//! let module = engine.compile("fn hi(n) { greet(n) + \"!\" }", "hi.skiff").unwrap();
//! let text: String = engine.call(&module, "hi", ("ada",)).unwrap();
//! assert_eq!(text, "hello, ada!");
//! ```

pub mod cluster;
pub mod convert;
pub mod node;
pub mod report;

pub use convert::{FromPortable, FromValue, IntoArgs, IntoNative, IntoPortable, IntoValue};
pub use skiff_compiler::{CompileOptions, Diagnostic, Severity};
pub use skiff_vm::native::{NativeCtx, NativeError, NodeInfo};
pub use skiff_vm::{ExecError, ExecIo, Limits, Module, Portable, Value};

use cluster::{LocalCluster, RunError};
use skiff_transport::context::CONTEXT_NATIVES;
use skiff_vm::module::transitive_closure;
use skiff_vm::{Blob, BlobDebug, BlobHash, CodeStore, FunctionId};
use std::cell::{Cell, RefCell};
use std::sync::Arc;

/// Why a compile, load or call through the facade failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("compile errors:\n{}", .0.iter().map(|d| format!("  {}", d.message)).collect::<Vec<_>>().join("\n"))]
    Compile(Vec<Diagnostic>),
    #[error("no exported function `{0}`")]
    NoSuchFunction(String),
    #[error("{}: {}", .0.kind, .0.message)]
    Runtime(Box<ExecError>),
    #[error("{0}")]
    Host(String),
    #[error("unexpected result: {0}")]
    Result(String),
}

impl From<RunError> for Error {
    fn from(e: RunError) -> Error {
        match e {
            RunError::Failed(error) => Error::Runtime(error),
            other => Error::Host(other.to_string()),
        }
    }
}

/// Compiles scripts and runs them with the host's natives and limits.
pub struct Engine {
    vm: skiff_vm::Engine,
    natives: Vec<String>,
    limits: Limits,
    /// The verified code of the module run last, so that calling into the same module again
    /// (the common case for a host) skips re-hashing and re-verifying its blobs.
    last_code: RefCell<Option<VerifiedModule>>,
    /// How many modules `last_code` has held: tells a call whether it still holds the one
    /// the call started with.
    verified: Cell<u64>,
}

/// A module's blobs and debug info (the very `Arc`s, so a match means the same content) and
/// the code store made from them.
struct VerifiedModule {
    /// Sorted by hash.
    blobs: Vec<(BlobHash, Arc<Blob>)>,
    /// Sorted by hash.
    debug: Vec<(BlobHash, Arc<BlobDebug>)>,
    store: CodeStore,
    /// Its number in [`Engine::verified`].
    generation: u64,
    /// The one-node cluster of the last [`Engine::call`] into this module, kept for the next
    /// (with the programs it linked); `None` while a call runs. Boxed: a call moves it out
    /// and back.
    cluster: Option<Box<LocalCluster>>,
    /// The [`Reach`] of each blob a call has started from (its function's, or an argument
    /// function's), made on first use; sorted by that blob's hash. Emptied when it would hold
    /// more than [`REACH_CACHE_ENTRIES`] per blob of the module, so that calling many
    /// functions with large reaches keeps memory linear in the module.
    reach: Vec<(BlobHash, Reach)>,
    /// Entries of all the reaches in `reach`.
    reach_entries: usize,
}

/// See [`VerifiedModule::reach`].
const REACH_CACHE_ENTRIES: usize = 4;

/// The blobs a call starting in one blob can run (the blob's transitive closure), each with
/// its debug info: what a module must still hold for a kept cluster to serve the call.
type Reach = Vec<(BlobHash, Arc<Blob>, Option<Arc<BlobDebug>>)>;

impl VerifiedModule {
    /// Whether `module` holds exactly these blobs and debug info (same allocations).
    fn is_of(&self, module: &Module) -> bool {
        // Both sides are sorted by hash: compared in step, not looked up.
        let same_blobs = self.blobs.len() == module.blobs.len()
            && self
                .blobs
                .iter()
                .zip(&module.blobs)
                .all(|((h, b), (mh, mb))| h == mh && Arc::ptr_eq(b, mb));
        let same_debug = self.debug.len() == module.debug.len()
            && self
                .debug
                .iter()
                .zip(&module.debug)
                .all(|((h, d), (mh, md))| h == mh && Arc::ptr_eq(d, md));
        same_blobs && same_debug
    }

    /// Whether the kept cluster may serve a call of `func` with `args` into `module`: every
    /// blob the call can run (the closures of `func` and of the functions in `args`) is in
    /// `module`, with its debug info, as the very one verified here. Blobs the call cannot
    /// reach do not run, so they are not compared: the check costs the call's reach, not
    /// the module's size (a host calling into a large module over and over pays for what
    /// it calls).
    fn serves(&mut self, module: &Module, func: FunctionId, args: &[Portable]) -> bool {
        let mut arg_functions = Vec::new();
        for a in args {
            a.functions(&mut arg_functions);
        }
        std::iter::once(func).chain(arg_functions).all(|f| {
            self.reach(f.blob)
                .is_some_and(|reach| reached_same(reach, module))
        })
    }

    /// The kept cluster (taken), if there is one and it [serves](Self::serves) this call.
    fn kept_for(
        &mut self,
        module: &Module,
        func: FunctionId,
        args: &[Portable],
    ) -> Option<Box<LocalCluster>> {
        if self.cluster.is_some() && self.serves(module, func, args) {
            self.cluster.take()
        } else {
            None
        }
    }

    /// The [`Reach`] of `root`, or `None` if the verified module lacks a blob of it.
    fn reach(&mut self, root: BlobHash) -> Option<&Reach> {
        let at = match self.reach.binary_search_by(|(h, _)| h.cmp(&root)) {
            Ok(at) => at,
            Err(_) => {
                let blob = |h: &BlobHash| {
                    self.blobs
                        .binary_search_by(|(k, _)| k.cmp(h))
                        .ok()
                        .map(|i| &self.blobs[i].1)
                };
                let closure = transitive_closure([root], |h| blob(h).map(|b| &**b)).ok()?;
                let reach = closure
                    .into_iter()
                    .filter_map(|h| {
                        let debug = self
                            .debug
                            .binary_search_by(|(k, _)| k.cmp(&h))
                            .ok()
                            .map(|i| self.debug[i].1.clone());
                        blob(&h).map(|b| (h, b.clone(), debug))
                    })
                    .collect::<Reach>();
                let limit = REACH_CACHE_ENTRIES * self.blobs.len().max(16);
                if self.reach_entries + reach.len() > limit {
                    self.reach.clear();
                    self.reach_entries = 0;
                }
                self.reach_entries += reach.len();
                let at = self
                    .reach
                    .binary_search_by(|(h, _)| h.cmp(&root))
                    .unwrap_or_else(|at| at);
                self.reach.insert(at, (root, reach));
                at
            }
        };
        Some(&self.reach[at].1)
    }
}

/// Whether `module` holds each blob of `reach`, and its debug info, as the very `Arc`s.
fn reached_same(reach: &Reach, module: &Module) -> bool {
    reach.iter().all(|(hash, blob, debug)| {
        module.blobs.get(hash).is_some_and(|b| Arc::ptr_eq(b, blob))
            && match (debug, module.debug.get(hash)) {
                (None, None) => true,
                (Some(d), Some(md)) => Arc::ptr_eq(d, md),
                _ => false,
            }
    })
}

impl Engine {
    /// An engine whose executions run under `limits`.
    pub fn new(limits: Limits) -> Engine {
        Engine {
            vm: skiff_vm::Engine::new(),
            natives: Vec::new(),
            limits,
            last_code: RefCell::new(None),
            verified: Cell::new(0),
        }
    }

    /// The limits new executions get.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Adds a typed host function: `engine.register_fn("add", |a: i64, b: i64| a + b)`.
    /// Arguments convert with [`FromValue`] (a mismatch is a `TypeError` in the script);
    /// the result with [`IntoValue`]; a returned `Err(e)` raises `HostError` with `e`'s text.
    pub fn register_fn<Args, F: IntoNative<Args> + 'static>(&mut self, name: &str, f: F) {
        let owned = name.to_owned();
        self.register_native(name, move |_, args| {
            if args.len() != f.arity() {
                return Err(NativeError::error(
                    "ArityError",
                    format!("{owned} takes {} arguments, got {}", f.arity(), args.len()),
                ));
            }
            f.call(args)
        });
    }

    /// Adds a raw host function that sees the VM's values and context directly.
    pub fn register_native(
        &mut self,
        name: &str,
        f: impl Fn(&mut NativeCtx<'_>, &[Value]) -> Result<Value, NativeError> + 'static,
    ) {
        self.natives.push(name.to_owned());
        self.vm.register_native(name, f);
        // A kept cluster has the natives it was made with.
        if let Some(v) = self.last_code.get_mut() {
            v.cluster = None;
        }
    }

    /// The names of the registered host natives (what the compiler accepts besides builtins).
    pub fn native_names(&self) -> &[String] {
        &self.natives
    }

    /// The VM engine, for hosts that drive executions themselves.
    pub fn vm(&self) -> &skiff_vm::Engine {
        &self.vm
    }

    /// Compiles `source`; warnings are dropped, errors returned all together. Scripts may call
    /// the host's natives and the context natives every node provides (`context_get`,
    /// `context_set`, `context_name`).
    pub fn compile(&self, source: &str, file: &str) -> Result<Module, Error> {
        let mut natives = self.natives.clone();
        natives.extend(CONTEXT_NATIVES.iter().map(|n| n.to_string()));
        let options = CompileOptions { natives };
        let output = skiff_compiler::compile(source, file, &options);
        output.module.ok_or_else(|| {
            Error::Compile(
                output
                    .diagnostics
                    .into_iter()
                    .filter(|d| d.severity == Severity::Error)
                    .collect(),
            )
        })
    }

    /// Calls the exported function `name` with `args` and converts the result.
    pub fn call<R: FromPortable>(
        &self,
        module: &Module,
        name: &str,
        args: impl IntoArgs,
    ) -> Result<R, Error> {
        let value = self.call_function(module, export(module, name)?, args.into_args())?;
        R::from_portable(value).map_err(Error::Result)
    }

    /// The exported function `name` of `module`, looked up and its code verified now, for
    /// calling again and again ([`Function::call`]). The handle keeps the engine's natives
    /// and limits as they are now.
    pub fn function(&self, module: &Module, name: &str) -> Result<Function, Error> {
        let func = export(module, name)?;
        Ok(Function {
            vm: self.vm.clone(),
            limits: self.limits.clone(),
            func,
            store: self.verified_code(module)?,
            cluster: RefCell::new(None),
        })
    }

    /// Runs a script's top level on a node named `main`, with in-process `peers`.
    pub fn run(&self, module: &Module, peers: &[String]) -> Result<Portable, Error> {
        self.run_function(module, module.entry, Vec::new(), peers)
    }

    fn run_function(
        &self,
        module: &Module,
        func: skiff_vm::FunctionId,
        args: Vec<Portable>,
        peers: &[String],
    ) -> Result<Portable, Error> {
        let mut cluster = self.cluster(module, peers)?;
        Ok(cluster.run("main", func, args)?)
    }

    /// Like [`Engine::run_function`] with no peers, on the cluster the last call into
    /// `module` used: a host calling into one module again pays neither for a new cluster
    /// nor for linking the function again, and checks only that the blobs this call can run
    /// are still the verified ones ([`VerifiedModule::serves`]). Each call still starts from
    /// fresh contexts, as on a new cluster. (A call made while another runs, e.g. from a
    /// native, gets a cluster of its own.)
    fn call_function(
        &self,
        module: &Module,
        func: skiff_vm::FunctionId,
        args: Vec<Portable>,
    ) -> Result<Portable, Error> {
        let kept = self
            .last_code
            .borrow_mut()
            .as_mut()
            .and_then(|v| v.kept_for(module, func, &args));
        let mut cluster = match kept {
            Some(mut cluster) => {
                cluster.reset_contexts();
                cluster
            }
            None => Box::new(self.cluster(module, &[])?),
        };
        // `last_code` holds this module now; a call from inside this one may replace it.
        let generation = self.verified.get();
        let result = cluster.run("main", func, args);
        if let Some(v) = self.last_code.borrow_mut().as_mut() {
            if v.generation == generation {
                v.cluster = Some(cluster);
            }
        }
        Ok(result?)
    }

    /// A new cluster of `main` (holding `module`) and `peers`.
    fn cluster(&self, module: &Module, peers: &[String]) -> Result<LocalCluster, Error> {
        let store = self.verified_code(module)?;
        Ok(new_cluster(&self.vm, &self.limits, store, peers))
    }

    /// A code store holding `module`, verified: the one made for the last module if that is
    /// this one (the store is copy-on-write, so handing it out is cheap), else a new one.
    fn verified_code(&self, module: &Module) -> Result<CodeStore, Error> {
        if let Some(last) = self.last_code.borrow().as_ref().filter(|v| v.is_of(module)) {
            return Ok(last.store.clone());
        }
        let mut store = CodeStore::new();
        store
            .add_module(module)
            .map_err(|e| Error::Host(e.to_string()))?;
        self.verified.set(self.verified.get() + 1);
        *self.last_code.borrow_mut() = Some(VerifiedModule {
            generation: self.verified.get(),
            blobs: module.blobs.iter().map(|(h, b)| (*h, b.clone())).collect(),
            debug: module.debug.iter().map(|(h, d)| (*h, d.clone())).collect(),
            store: store.clone(),
            cluster: None,
            reach: Vec::new(),
            reach_entries: 0,
        });
        Ok(store)
    }
}

/// A new cluster of `main` (holding `store`, verified code) and `peers`.
fn new_cluster(
    vm: &skiff_vm::Engine,
    limits: &Limits,
    store: CodeStore,
    peers: &[String],
) -> LocalCluster {
    let mut names = vec!["main".to_owned()];
    names.extend(peers.iter().cloned());
    let io: cluster::IoFactory = Box::new(ExecIo::stdio);
    let mut cluster = LocalCluster::new(vm, &names, limits.clone(), io);
    *cluster.store_mut("main").expect("main exists") = store;
    cluster
}

/// The function `name` exports from `module`.
fn export(module: &Module, name: &str) -> Result<FunctionId, Error> {
    module
        .exports
        .get(name)
        .copied()
        .ok_or_else(|| Error::NoSuchFunction(name.to_owned()))
}

/// An exported function, looked up and verified once by [`Engine::function`], for a host
/// that calls it again and again (a handler, a per-frame hook). Its calls behave as
/// [`Engine::call`]'s: a fresh execution whose contexts start empty, under the limits and
/// with the natives the engine had when the handle was made. What they skip is the per-call
/// work of finding the function by name and of checking that the module still holds the
/// blobs it verified: the handle runs its own copy of the verified code, so a module
/// changed afterwards does not affect it. It holds no borrow of the engine.
///
/// ```
/// use skiff::{Engine, Limits};
///
/// let engine = Engine::new(Limits::default());
/// let module = engine.compile("fn add1(x) { x + 1 }", "add.skiff").unwrap();
/// let add1 = engine.function(&module, "add1").unwrap();
/// let sum: i64 = (0..10).map(|i| add1.call::<i64>((i,)).unwrap()).sum();
/// assert_eq!(sum, 55);
/// ```
pub struct Function {
    vm: skiff_vm::Engine,
    limits: Limits,
    func: FunctionId,
    /// The verified code (copy-on-write: cloning it is cheap).
    store: CodeStore,
    /// The one-node cluster the calls run on, with the programs it linked, kept between
    /// calls; `None` before the first and while a call runs (a call made from inside one
    /// gets a cluster of its own).
    cluster: RefCell<Option<Box<LocalCluster>>>,
}

impl Function {
    /// Calls the function with `args` and converts the result.
    pub fn call<R: FromPortable>(&self, args: impl IntoArgs) -> Result<R, Error> {
        let kept = self.cluster.borrow_mut().take();
        let mut cluster = match kept {
            Some(mut cluster) => {
                cluster.reset_contexts();
                cluster
            }
            None => Box::new(new_cluster(&self.vm, &self.limits, self.store.clone(), &[])),
        };
        let result = cluster.run("main", self.func, args.into_args());
        self.cluster.borrow_mut().get_or_insert(cluster);
        R::from_portable(result?).map_err(Error::Result)
    }
}
