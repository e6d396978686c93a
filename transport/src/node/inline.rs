//! Inline answers: a warm incoming call of effect-free code, answered on the thread that
//! decoded it instead of on the VM thread.
//!
//! Handing a call to the VM thread costs two thread wake-ups per call (the VM thread for the
//! request, a runtime worker for its answer), which on a small host cost more than the rest
//! of the round trip. So the driver first tries the call here, on a VM engine of this
//! thread's own (thread-local: VM values are `!Send`), and answers it at once when that run
//! ends with a value within [`INLINE_SLICE`] instructions ([`Execution::run_quick`]: a call
//! that ends as its one task costs no execution set up around it). Anything else — a
//! refusal to give, an error, a run that needs longer, sleeps, awaits or hops, code not yet
//! adopted by the VM thread — goes to the VM thread as before, which starts the call afresh.
//!
//! Invariants:
//! - Only code whose every native is an effect-free builtin
//!   ([`skiff_vm::builtins::effect_free`]) not shadowed by a host native, or a host native
//!   the host declared effect-free (`NodeConfig::effect_free_natives`), runs here, and
//!   a run answers only if it wrote nothing (no warning): a run dropped, unfinished or with
//!   something to report, changed nothing outside itself, so the VM thread's run of the call
//!   is its only visible one. Hops a dropped run asked for are never sent. A function whose
//!   run did not end is not tried here again until the node's code changes.
//! - An inline answer needs no more than the VM thread would check first: the node is not
//!   closing, the call uses the default context, the peer may call exports (or ship code),
//!   the code is in the VM thread's code store ([`InlineCode`], its latest snapshot), and no
//!   argument is a function. Each check that fails sends the call on, never refuses it, so
//!   every refusal and error still comes from the VM thread.
//! - Limits are the VM thread's: the node's limits with the caller's deadline.
//! - A run sees the node as the VM thread's would (`here`, `caller`, `peers`): the view a
//!   thread keeps is made again when the caller or the peer table (its generation) changes.
//! - A thread keeps state for at most [`RUNNERS_PER_THREAD`] nodes, each with at most
//!   [`RUNNER_LINK_INSTRUCTIONS`] of linked code, and starts a node's state over when the
//!   node's code changes; the state of a node gone is dropped first when room is needed.

use super::Shared;
use skiff_vm::interp::program::{LinkCache, Linked};
use skiff_vm::native::NodeInfo;
use skiff_vm::{CodeStore, Engine, ExecIo, Execution, FunctionId, Portable, QuickRun};
use skiff_wire::idmap::NameMap;
use skiff_wire::{IncomingCall, Target};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

/// Most instructions an inline run may take before the call goes to the VM thread.
const INLINE_SLICE: u64 = 10_000;

/// Nodes whose inline state one thread keeps.
const RUNNERS_PER_THREAD: usize = 4;

/// Most instructions of linked code a runner keeps (1/16 of the VM thread's cache): a
/// function whose program is larger is not answered inline.
const RUNNER_LINK_INSTRUCTIONS: usize = 1 << 16;

/// Most functions a runner remembers as answerable or not before it starts over.
const CHECKED_FUNCTIONS: usize = 4096;

/// What the VM thread publishes for inline answers: its code store and exports, as they are
/// after each change, and the names of its host natives.
#[derive(Default)]
pub(crate) struct InlineCode {
    pub store: CodeStore,
    pub exports: NameMap<FunctionId>,
    pub host_natives: Arc<HashSet<String>>,
}

/// One node's inline state on one thread.
struct Runner {
    /// The node (kept as `Weak` so that its address is not reused while this lives).
    node: Weak<Shared>,
    /// The code this state was built from; a new snapshot starts the state over.
    code: Arc<InlineCode>,
    /// The node's [`Shared::inline_generation`] when `code` was taken (the code may be that
    /// generation's or a later one's: a later one only starts the state over once more).
    generation: u64,
    /// Builtins, and the node's effect-free host natives.
    engine: Engine,
    /// The names of those host natives.
    effect_free_natives: HashSet<String>,
    links: LinkCache,
    /// Functions already judged: `true` if a call of it may run here. Ordered, not hashed:
    /// a peer names the functions, and a search of a few dozen bytes' comparisons costs
    /// no more than hashing the key with the keyed hasher it would otherwise need.
    checked: BTreeMap<FunctionId, bool>,
    /// The last function judged answerable, if its judgment still holds: its calls skip
    /// the search of `checked` (a warm peer mostly calls one function over and over).
    last_answerable: Option<FunctionId>,
    /// The node as the last run saw it, with the [`Shared::peers_generation`] it was made
    /// at.
    info: Option<(u64, NodeInfo)>,
}

thread_local! {
    static RUNNERS: RefCell<Vec<Runner>> = const { RefCell::new(Vec::new()) };
    /// Whether the inline run under way on this thread wrote anything ([`Noted`]).
    static WROTE: Cell<bool> = const { Cell::new(false) };
}

/// Where an inline run's output and warnings go: nowhere, but a write is noted in
/// [`WROTE`], since a run that wrote anything is not answered here (the VM thread runs the
/// call again and writes it). Zero-sized: boxing it allocates nothing.
struct Noted;

impl Write for Noted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !buf.is_empty() {
            WROTE.set(true);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Answers `call` here if it is a warm call of effect-free code that ends within
/// [`INLINE_SLICE`] instructions: `Some(result)` to send as the call's response. `None`: the
/// call goes to the VM thread, untouched. `now` is the clock as the run starts (its deadline
/// is judged by it).
pub(crate) fn try_answer(
    shared: &Arc<Shared>,
    peer: Option<&Arc<str>>,
    call: &IncomingCall,
    now: Instant,
) -> Option<Portable> {
    if shared.closing.load(std::sync::atomic::Ordering::SeqCst) || call.context != Portable::Nil {
        return None;
    }
    let perms = shared.permissions_for(peer.map(|p| &**p));
    let mut functions = Vec::new();
    for a in &call.args {
        a.functions(&mut functions);
    }
    if !functions.is_empty() {
        return None;
    }
    // `try_with`: a thread tearing down its locals answers nothing inline.
    RUNNERS
        .try_with(|runners| {
            let mut runners = runners.try_borrow_mut().ok()?;
            let runner = runner_for(&mut runners, shared);
            let func = match &call.target {
                Target::Name(name) if perms.call_exported => *runner.code.exports.get(&**name)?,
                Target::Function(f) if perms.ship_code => *f,
                _ => return None,
            };
            runner.run(shared, peer, call, func, now)
        })
        .ok()
        .flatten()
}

/// This thread's runner for `shared`, made (or started over) for the node's latest code.
fn runner_for<'a>(runners: &'a mut Vec<Runner>, shared: &Arc<Shared>) -> &'a mut Runner {
    // The generation, not the snapshot: checking it takes no lock and no reference count.
    let generation = shared.inline_generation.load(Ordering::Acquire);
    let at = match runners
        .iter()
        .position(|r| std::ptr::eq(r.node.as_ptr(), Arc::as_ptr(shared)))
    {
        Some(at) if runners[at].generation == generation => at,
        found => {
            if let Some(at) = found {
                runners.remove(at);
            }
            runners.retain(|r| r.node.strong_count() > 0);
            if runners.len() >= RUNNERS_PER_THREAD {
                runners.remove(0);
            }
            runners.push(Runner {
                node: Arc::downgrade(shared),
                generation,
                code: shared.inline_code(),
                engine: super::engine_with(&shared.inline_natives),
                effect_free_natives: shared
                    .inline_natives
                    .iter()
                    .map(|(n, _)| n.clone())
                    .collect(),
                links: LinkCache::with_limit(RUNNER_LINK_INSTRUCTIONS),
                checked: BTreeMap::new(),
                last_answerable: None,
                info: None,
            });
            runners.len() - 1
        }
    };
    &mut runners[at]
}

impl Runner {
    /// `func`'s program if a call of it may run here: it links with this engine's natives
    /// (else its code is missing from the snapshot, or it calls a native this engine lacks),
    /// each of its natives is effect-free (a host native declared so, or a builtin no host
    /// native shadows), and it is small enough to keep. Judged once per function (until
    /// the code changes).
    fn answerable(&mut self, func: FunctionId) -> Option<Linked> {
        if self.last_answerable == Some(func) {
            return self.links.get(&self.engine, &self.code.store, func).ok();
        }
        let known = self.checked.get(&func).copied();
        if known == Some(false) {
            return None;
        }
        let Ok(linked) = self.links.get(&self.engine, &self.code.store, func) else {
            self.judged(func, false);
            return None;
        };
        let ok = known.unwrap_or_else(|| {
            let ok = linked.instructions() <= RUNNER_LINK_INSTRUCTIONS
                && linked.native_names().all(|n| {
                    if self.code.host_natives.contains(n) {
                        self.effect_free_natives.contains(n)
                    } else {
                        skiff_vm::builtins::effect_free(n)
                    }
                });
            self.judged(func, ok);
            ok
        });
        if ok {
            self.last_answerable = Some(func);
        }
        ok.then_some(linked)
    }

    fn judged(&mut self, func: FunctionId, ok: bool) {
        if self.checked.len() >= CHECKED_FUNCTIONS {
            self.checked.clear();
        }
        if !ok && self.last_answerable == Some(func) {
            self.last_answerable = None;
        }
        self.checked.insert(func, ok);
    }

    fn run(
        &mut self,
        shared: &Shared,
        peer: Option<&Arc<str>>,
        call: &IncomingCall,
        func: FunctionId,
        now: Instant,
    ) -> Option<Portable> {
        let linked = self.answerable(func)?;
        let limits = shared.limits_for(call);
        // What the run sees of the node: kept while the caller (the same shared name) and
        // the peer table stay, so that a call takes no lock and no reference count for it.
        let caller = super::caller_name(peer, call);
        let peers = shared.peers_generation.load(Ordering::Acquire);
        let info = match &mut self.info {
            Some((at, info))
                if *at == peers && info.caller.as_ref().is_some_and(|c| Arc::ptr_eq(c, caller)) =>
            {
                info
            }
            slot => {
                &slot
                    .insert((peers, shared.node_info(Some(caller.clone()))))
                    .1
            }
        };
        WROTE.set(false);
        let io = ExecIo {
            out: Box::new(Noted),
            err: Box::new(Noted),
        };
        // Most calls end at once as one task: then no execution is built around the run.
        let run = Execution::run_quick(
            &self.engine,
            &self.code.store,
            linked,
            &call.args,
            info,
            limits,
            io,
            INLINE_SLICE,
            now,
        );
        // Matched in place: the value is moved out of the run's result alone.
        let ended = match run {
            Ok(QuickRun::Done(value)) => Ok(Ok(value)),
            Ok(QuickRun::Started(status, exec)) => {
                drop(exec);
                status.ended()
            }
            Err(_) => return None,
        };
        let quiet = !WROTE.get();
        match ended {
            Ok(Ok(value)) if quiet => Some(value),
            // An error, or something written: the VM thread runs the call again and reports.
            Ok(_) => None,
            Err(_) => {
                // It needs longer, or waits: most likely it will the next time too, so the
                // function's calls go straight to the VM thread from now on.
                self.judged(func, false);
                None
            }
        }
    }
}
