//! The linker: verified blobs from a [`CodeStore`] become an execution's function table.
//!
//! Linking a function links its whole blob and, transitively, every blob it references, in
//! one step: indices are assigned first (so mutually recursive members and cross-blob
//! references resolve to plain `u32` indices), then each member is materialised — constants
//! as [`Value`]s, natives resolved to builtins or host natives. A native that resolves to
//! neither fails the link with `MissingNative` before anything runs.
//!
//! A [`Program`] clones in O(1): its tables are shared, and copied only when a clone links
//! more. [`LinkCache`] keeps linked programs between executions, so a node answering the
//! same function again does not link it again.
//!
//! Invariants:
//! - The table only grows; an index, once handed out, names the same function for the
//!   execution's lifetime (and in every clone of the program).
//! - A failed link leaves the table unchanged.
//! - A cached program is used only with the store it was linked from, and only while no
//!   blob has left that store (the host clears the cache when one does).

use super::Engine;
use crate::blob::{BlobHash, Const, FnRef, FunctionId};
use crate::function::{HostNative, NativeImpl, Op, RtFunction};
use crate::store::CodeStore;
use crate::value::Value;
use std::collections::HashMap;
use std::rc::Rc;

/// Why a function could not be linked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("blob {0} is not available")]
    MissingBlob(BlobHash),
    #[error("function {0} does not exist")]
    MissingFunction(FunctionId),
    #[error("native `{0}` is not available")]
    MissingNative(String),
}

/// An execution's linked functions.
#[derive(Debug, Default, Clone)]
pub struct Program {
    pub(crate) funcs: Rc<Vec<RtFunction>>,
    index: Rc<HashMap<FunctionId, u32>>,
}

/// A program and the index of the function an execution starts with.
#[derive(Debug, Clone)]
pub struct Linked {
    pub program: Program,
    pub entry: u32,
}

impl Linked {
    /// `id` and everything it references, linked from `store` now.
    pub fn link(
        store: &CodeStore,
        natives: &HashMap<String, HostNative>,
        id: FunctionId,
    ) -> Result<Linked, LinkError> {
        let mut program = Program::default();
        let entry = program.link(store, natives, id)?;
        Ok(Linked { program, entry })
    }

    /// Instructions in the program, over all its functions: what a [`LinkCache`] counts.
    pub fn instructions(&self) -> usize {
        self.program.funcs.iter().map(|f| f.code.len()).sum()
    }

    /// The names of the natives the program's functions call (builtins and host natives
    /// alike), as their blobs list them; a name may appear more than once.
    pub fn native_names(&self) -> impl Iterator<Item = &str> {
        self.program
            .funcs
            .iter()
            .flat_map(|f| f.native_names.iter().map(|n| &**n))
    }

    /// The same program with every op replaced by its own instruction run alone (`Op::I`),
    /// no fused op and no fast-path op left: what the fused program must match in every
    /// observable effect, fuel included. The reference of [`crate::fuzz::fuzz_fused_ops`].
    pub(crate) fn unfused(mut self) -> Linked {
        for f in Rc::make_mut(&mut self.program.funcs) {
            f.ops = f.code.iter().map(|&instr| Op::I(instr)).collect();
        }
        self
    }
}

/// Linked programs by entry function, kept between executions of one engine and store.
#[derive(Debug)]
pub struct LinkCache {
    programs: HashMap<FunctionId, Linked>,
    /// The entry last found or kept, also in `programs`: a host calling one function over
    /// and over finds it without hashing its id.
    last: Option<(FunctionId, Linked)>,
    /// Instructions in the programs kept (each program counts all of its functions).
    instructions: usize,
    /// Most instructions kept; past this the cache starts over.
    limit: usize,
}

/// What [`LinkCache::new`] keeps at most, in instructions across its programs (a program
/// holds copies of every function its entry reaches).
pub const LINK_CACHE_INSTRUCTIONS: usize = 1 << 20;

impl Default for LinkCache {
    fn default() -> LinkCache {
        LinkCache::with_limit(LINK_CACHE_INSTRUCTIONS)
    }
}

impl LinkCache {
    pub fn new() -> LinkCache {
        LinkCache::default()
    }

    /// A cache keeping at most `instructions` instructions across its programs; a program
    /// larger than that is linked for each execution.
    pub fn with_limit(instructions: usize) -> LinkCache {
        LinkCache {
            programs: HashMap::new(),
            last: None,
            instructions: 0,
            limit: instructions,
        }
    }

    /// How many entry functions have a program kept.
    pub fn len(&self) -> usize {
        self.programs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.programs.is_empty()
    }

    /// `id` linked from `store` with `engine`'s natives, from the cache or linked now and
    /// kept: what [`Execution::start_linked`](super::Execution::start_linked) starts from.
    /// A cache must be used with one engine and one store only, and cleared when a blob
    /// leaves the store.
    pub fn get(
        &mut self,
        engine: &Engine,
        store: &CodeStore,
        id: FunctionId,
    ) -> Result<Linked, LinkError> {
        if let Some((last, linked)) = &self.last {
            if *last == id {
                return Ok(linked.clone());
            }
        }
        if let Some(linked) = self.programs.get(&id) {
            self.last = Some((id, linked.clone()));
            return Ok(linked.clone());
        }
        let linked = Linked::link(store, &engine.natives, id)?;
        let size = linked.instructions();
        if self.instructions + size > self.limit {
            self.clear();
        }
        if size <= self.limit {
            self.instructions += size;
            self.programs.insert(id, linked.clone());
            self.last = Some((id, linked.clone()));
        }
        Ok(linked)
    }

    /// Forgets every program: call it when a blob leaves the store (or the natives change).
    pub fn clear(&mut self) {
        self.programs.clear();
        self.last = None;
        self.instructions = 0;
    }
}

impl Program {
    /// The index of `id`, linking its blob (and dependencies) if needed.
    pub fn link(
        &mut self,
        store: &CodeStore,
        natives: &HashMap<String, HostNative>,
        id: FunctionId,
    ) -> Result<u32, LinkError> {
        if let Some(&i) = self.index.get(&id) {
            return Ok(i);
        }
        // Phase 1: assign indices to every member of every blob not yet linked.
        let mut new_index: HashMap<FunctionId, u32> = HashMap::new();
        let mut blobs: Vec<BlobHash> = Vec::new();
        let mut work = vec![id.blob];
        let mut next = self.funcs.len() as u32;
        while let Some(hash) = work.pop() {
            if blobs.contains(&hash)
                || self.index.contains_key(&FunctionId {
                    blob: hash,
                    member: 0,
                })
            {
                continue;
            }
            let stored = store.stored(&hash).ok_or(LinkError::MissingBlob(hash))?;
            blobs.push(hash);
            for member in 0..stored.blob.functions.len() as u32 {
                new_index.insert(FunctionId { blob: hash, member }, next);
                next += 1;
            }
            for dep in stored.blob.dependencies() {
                work.push(dep);
            }
        }
        let lookup = |f: &FunctionId| -> Result<u32, LinkError> {
            self.index
                .get(f)
                .or_else(|| new_index.get(f))
                .copied()
                .ok_or(LinkError::MissingFunction(*f))
        };
        let target = lookup(&id)?;
        // Phase 2: materialise, in index order.
        let mut built = Vec::new();
        for hash in &blobs {
            let Some(stored) = store.stored(hash) else {
                return Err(LinkError::MissingBlob(*hash));
            };
            for (m, code) in stored.blob.functions.iter().enumerate() {
                let fid = FunctionId {
                    blob: *hash,
                    member: m as u32,
                };
                let debug = stored.debug.as_ref().and_then(|d| d.functions.get(m));
                let refs = code
                    .refs
                    .iter()
                    .map(|r| match *r {
                        FnRef::Local(member) => lookup(&FunctionId {
                            blob: *hash,
                            member,
                        }),
                        FnRef::External(f) => lookup(&f),
                    })
                    .collect::<Result<Vec<u32>, _>>()?;
                let resolved = code
                    .natives
                    .iter()
                    .map(|name| resolve_native(natives, name))
                    .collect::<Result<Vec<_>, _>>()?;
                let consts = code
                    .consts
                    .iter()
                    .map(|c| match c {
                        Const::Int(i) => Value::Int(*i),
                        Const::Float(x) => Value::Float(*x),
                        Const::Str(s) => Value::str(s.as_str()),
                        Const::Bytes(b) => Value::bytes(b.clone()),
                    })
                    .collect::<Vec<_>>();
                built.push(RtFunction {
                    id: fid,
                    name: debug.and_then(|d| d.name.as_deref()).map(Rc::from),
                    arity: code.arity,
                    locals: code.locals,
                    upvals: code.upvals,
                    max_stack: stored.info.max_stack.get(m).copied().unwrap_or(0),
                    code: code.code.clone().into_boxed_slice(),
                    ops: Box::new([]),
                    consts: consts.into_boxed_slice(),
                    refs: refs.into_boxed_slice(),
                    natives: resolved.into_boxed_slice(),
                    native_names: code.natives.iter().map(|n| Rc::from(n.as_str())).collect(),
                    file: debug.map(|d| Rc::from(d.file.as_str())),
                    positions: debug
                        .map(|d| d.positions.clone().into_boxed_slice())
                        .unwrap_or_default(),
                    shared_value: std::cell::OnceCell::new(),
                });
            }
        }
        // Translate once every new function exists: a call op needs its callee's arity.
        let first = self.funcs.len();
        let arity = |i: u32| match (i as usize).checked_sub(first) {
            None => self.funcs.get(i as usize).map(|f| f.arity),
            Some(j) => built.get(j).map(|f: &RtFunction| f.arity),
        };
        let ops: Vec<_> = built
            .iter()
            .map(|f| {
                // A builtin by name: a `Builtin` entry is only made by `builtins::lookup` of
                // its own name, and a host native of the same name resolves to `Host`.
                let is_builtin = |n: u16, name: &str| {
                    matches!(f.natives.get(n as usize), Some(NativeImpl::Builtin(_)))
                        && f.native_names.get(n as usize).is_some_and(|s| &**s == name)
                };
                crate::function::translate(&f.code, &f.refs, arity, is_builtin)
            })
            .collect();
        for (f, ops) in built.iter_mut().zip(ops) {
            f.ops = ops;
        }
        // Commit: indices were assigned in the same order the functions were built.
        let mut order: Vec<(FunctionId, u32)> = new_index.into_iter().collect();
        order.sort_by_key(|&(_, i)| i);
        debug_assert_eq!(order.len(), built.len());
        Rc::make_mut(&mut self.funcs).extend(built);
        Rc::make_mut(&mut self.index).extend(order);
        Ok(target)
    }

    pub fn get(&self, index: u32) -> Option<&RtFunction> {
        self.funcs.get(index as usize)
    }
}

fn resolve_native(
    natives: &HashMap<String, HostNative>,
    name: &str,
) -> Result<NativeImpl, LinkError> {
    if let Some(host) = natives.get(name) {
        return Ok(NativeImpl::Host(host.clone()));
    }
    if name == "sleep" {
        return Ok(NativeImpl::Sleep);
    }
    crate::builtins::lookup(name)
        .map(NativeImpl::Builtin)
        .ok_or_else(|| LinkError::MissingNative(name.to_string()))
}
