//! The dispatch loop: runs one task until it finishes, suspends, raises past its last
//! handler, hits a limit or uses its instruction budget.
//!
//! Two loops share the work. [`fast`] is a small function that runs every op with an integer
//! fast path — the fused ops, int arithmetic, compare-and-branch, and calls and returns
//! between script functions — with the hot state (pc, stack pointer, frame base, budget) in
//! locals that stay in registers; it stops at the first op it cannot run and returns. The
//! general loop in [`run_task`] then runs that one instruction (`code[pc]`) through the big
//! `match` (every instruction has an arm there, fused or not) and calls `fast` again. Calls and
//! returns in either loop push and pop [`Frame`]s and switch the state in place (only a
//! value-stack reallocation or an unwind goes round `'reload`), so a script call never
//! recurses on the Rust stack.
//!
//! Dispatch is on the function's internal ops (`function::Op`, made at link time), not on
//! the blob's instructions: an op either is one instruction or fuses a few (compare-and-branch
//! on locals, a loop's back edge with its condition, local-operand arithmetic, `GetLocal` +
//! `Return`, a call whose argument is `local + const`, `f(x)` on two locals, a statement
//! `push`, ...). A fused op runs in `fast` only when every covered instruction would take its
//! integer fast path and the budget covers all of them; otherwise `fast` stops and the
//! general loop runs `code[pc]` alone, exactly as unfused code would. Budget is a countdown of instructions (not ops): each op charges the
//! instructions it covers, so fuel and slices stay exact.
//!
//! Invariants (on top of the module invariants in `interp`):
//! - The task's value stack is at least `base + frame_size` long for the innermost frame, so
//!   verified code never indexes past it; pushes write into pre-sized slots.
//! - Heap values popped off the stack are taken (the slot becomes `nil`); only scalars may be
//!   left above the stack pointer. `Return` and unwinding clear the slots they abandon. Pushes
//!   rely on this: they overwrite the slot at the stack pointer without a drop check.
//! - Handlers belong to frames: `Return` drops the returning frame's handlers, unwinding to a
//!   handler drops the frames above the one that installed it. `fast` never returns from a
//!   frame that has handlers, nor from the bottom frame ([`return_floor`]).
//! - `fast` does nothing the general loop owns: stack growth, errors, natives, suspension. It
//!   leaves `pc` at an op whose instruction has not run and has not been charged. The
//!   natives it runs are the builtin `push` into a list with room (`Op::Push`,
//!   `Op::PushPop`, `Op::LocalsPush`) and the builtin `len` of a list (`Op::Len`), which
//!   allocate nothing and cannot fail; any other case of them is left to the general loop's
//!   call.

use super::convert;
use super::program::Program;
use super::{
    Frame, Handler, LimitKind, Raised, RemoteRequest, Resume, SpareBuffers, Task, TaskState,
    TraceFrame,
};
use crate::function::{Closure, NativeImpl, Op, RtFunction, TaskHandle};
use crate::heap::Charge;
use crate::native::{NativeCtx, NativeError, NodeInfo};
use crate::opcodes::Instr;
use crate::ops;
use crate::value::{CellObj, Entries, Key, Value};
use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Total value-stack slots one task may use (64 MiB of values); beyond is `StackOverflow`.
const MAX_STACK_SLOTS: usize = 1 << 22;

/// Stores `v` in `slot`, dropping the old value ([`release`]) only if it owns heap memory.
#[inline(always)]
fn put(slot: &mut Value, v: Value) {
    // Test the tag in place (a one-byte load) rather than moving the old value out first.
    if is_scalar(slot) {
        overwrite(slot, v);
    } else {
        release(std::mem::replace(slot, v));
    }
}

/// Drops `v`, a heap value. A list or function that is still shared elsewhere (the common
/// case for the copies calls and loops make: the list a loop appends to, the closure
/// `map` calls) only loses a reference here, inline; anything else is dropped out of line.
#[inline(always)]
fn release(v: Value) {
    match v {
        Value::List(l) if Rc::strong_count(&l) > 1 => drop(l),
        Value::Function(c) if Rc::strong_count(&c) > 1 => drop(c),
        v => drop_cold(v),
    }
}

#[inline(always)]
fn is_scalar(v: &Value) -> bool {
    matches!(
        v,
        Value::Nil | Value::Bool(_) | Value::Int(_) | Value::Float(_)
    )
}

#[cold]
#[inline(never)]
fn drop_cold(v: Value) {
    drop(v);
}

/// Resets a range of slots to `nil`.
#[inline(always)]
fn clear(slots: &mut [Value]) {
    for slot in slots {
        put(slot, Value::Nil);
    }
}

/// Stores `v` in a slot that holds a scalar (any slot at or above the stack pointer, by the
/// value-stack invariant, or a slot just matched as a scalar): no drop check, just a store.
/// Were the slot to hold a heap value after all, it would leak, never dangle.
#[inline(always)]
fn overwrite(slot: &mut Value, v: Value) {
    std::mem::forget(std::mem::replace(slot, v));
}

/// `v.clone()`, inline for integers (a copy) and for lists and functions (a reference count
/// raised), the values hot loops copy most; other values out of line.
#[inline(always)]
fn fast_clone(v: &Value) -> Value {
    match v {
        Value::Int(i) => Value::Int(*i),
        Value::List(l) => Value::List(Rc::clone(l)),
        Value::Function(c) => Value::Function(Rc::clone(c)),
        v => clone_cold(v),
    }
}

#[inline(never)]
fn clone_cold(v: &Value) -> Value {
    v.clone()
}

/// Why `run_task` returned.
pub(crate) enum Exit {
    /// The instruction budget ran out; the task can continue.
    Budget,
    /// The task changed its state (sleep, await, remote); its resume action is set later.
    Suspend,
    /// The task's bottom frame returned or an error escaped every handler.
    Finished(Result<Value, Raised>),
    /// A host-granted limit was hit.
    Limit(LimitKind),
}

/// Everything outside the task that instructions touch.
pub(crate) struct Ctx<'a> {
    pub tasks: &'a mut Vec<Option<Task>>,
    pub queue: &'a mut VecDeque<u32>,
    pub requests: &'a mut Vec<RemoteRequest>,
    pub pending: &'a mut HashMap<u64, (u32, Option<u32>)>,
    pub next_request: &'a mut u64,
    pub out: &'a mut dyn Write,
    pub node: &'a NodeInfo,
    pub now: Instant,
    pub max_depth: usize,
    pub check_heap: bool,
    pub self_id: u32,
    /// The engine's kept buffers, for the tasks `spawn` makes.
    pub spare: &'a RefCell<SpareBuffers>,
    /// Task slots `spawn` may reuse (their tasks finished and nobody can await them).
    pub free_slots: &'a mut Vec<u32>,
}

enum Raise {
    /// Raised by the VM (gets a `"peer"` key on a remote body).
    Vm(Value),
    /// Raised by `throw` (never changed).
    Thrown(Value),
    /// Raised by a builtin, native or `ops` (like `Vm`; or a memory limit).
    Native(NativeError),
    /// Re-raised with its original trace (awaiting a failed task).
    Rethrow(Raised),
}

#[cold]
#[inline(never)]
fn err(kind: &str, msg: &str) -> Raise {
    Raise::Vm(Value::error(kind, msg))
}

#[cold]
#[inline(never)]
fn err_fmt(kind: &str, args: std::fmt::Arguments<'_>) -> Raise {
    Raise::Vm(Value::error(kind, args.to_string()))
}

#[cold]
#[inline(never)]
fn type_err(what: &str, v: &Value) -> Raise {
    err_fmt("TypeError", format_args!("{what} {}", v.type_name()))
}

#[cold]
#[inline(never)]
fn arity_err(callee: &crate::function::RtFunction, argc: usize) -> Raise {
    err_fmt(
        "ArityError",
        format_args!(
            "{} takes {} argument{}, got {}",
            callee.name.as_deref().unwrap_or("function"),
            callee.arity,
            if callee.arity == 1 { "" } else { "s" },
            argc
        ),
    )
}

type BinOp = fn(&Value, &Value) -> Result<Value, NativeError>;

/// Calls a slow-path operator out of line, keeping the dispatch loop small.
#[inline(never)]
fn slow(op: BinOp, a: &Value, b: &Value) -> Result<Value, NativeError> {
    op(a, b)
}

#[cold]
#[inline(never)]
fn overflow(op: &str) -> Raise {
    err_fmt("Overflow", format_args!("integer overflow in {op}"))
}

/// The stack trace of `frames`, innermost first.
pub(crate) fn trace(prog: &Program, frames: &[Frame], node: &NodeInfo) -> Vec<TraceFrame> {
    let peer = node.caller.as_ref().map(|_| node.here.to_string());
    frames
        .iter()
        .rev()
        .map(|fr| {
            let f = prog.get(fr.func);
            let at = fr.pc.saturating_sub(1) as usize;
            let (line, col) = f
                .and_then(|f| f.positions.get(at).copied())
                .unwrap_or((0, 0));
            let has_debug = f.is_some_and(|f| f.file.is_some());
            TraceFrame {
                function: match f.and_then(|f| f.name.as_deref()) {
                    Some(n) => n.to_string(),
                    None if has_debug => "<anonymous>".to_string(),
                    None => "<unknown>".to_string(),
                },
                file: f
                    .and_then(|f| f.file.as_deref())
                    .unwrap_or("<unknown>")
                    .to_string(),
                line,
                col,
                peer: peer.clone(),
                code: f.map(|f| (f.id, at as u32)),
            }
        })
        .collect()
}

/// Adds `"peer": here` to an error map that has a kind and no peer yet.
fn add_peer(value: &Value, here: &str) {
    if let Value::Map(m) = value {
        let (Some(kind), Some(peer)) = (
            Key::from_value(&Value::str("kind")),
            Key::from_value(&Value::str("peer")),
        ) else {
            return;
        };
        let is_error = m.entries().contains_key(&kind);
        let has_peer = m.entries().contains_key(&peer);
        if is_error && !has_peer {
            m.mutate(|e| {
                e.insert(peer, Value::str(here));
            });
        }
    }
}

/// Unwinds to the innermost handler of the task, or gives the error back.
fn unwind(
    stack: &mut Vec<Value>,
    sp: &mut usize,
    frames: &mut Vec<Frame>,
    handlers: &mut Vec<Handler>,
    raised: Raised,
) -> Result<(), Raised> {
    let Some(h) = handlers.pop() else {
        return Err(raised);
    };
    frames.truncate(h.frame as usize + 1);
    let hsp = h.sp as usize;
    if hsp < *sp {
        for slot in &mut stack[hsp..*sp] {
            *slot = Value::Nil;
        }
    }
    if stack.len() <= hsp {
        stack.resize(hsp + 1, Value::Nil);
    }
    stack[hsp] = raised.value;
    *sp = hsp + 1;
    if let Some(top) = frames.last_mut() {
        top.pc = h.pc;
    }
    Ok(())
}

/// The running frame's state, handed between [`run_task`]'s general loop and [`fast`].
struct Regs<'p> {
    /// The running function.
    f: &'p RtFunction,
    pc: usize,
    sp: usize,
    base: usize,
    /// Instructions left in the budget.
    left: u64,
}

/// The lowest frame index `fast` may return from: not the bottom frame (its return finishes
/// the task) and no frame that installed a handler (its return drops handlers).
fn return_floor(handlers: &[Handler]) -> usize {
    handlers.last().map_or(1, |h| h.frame as usize + 1).max(1)
}

/// Runs ops with a fast path until one cannot take it; returns with `r.pc` at the op the
/// general loop must run as a single instruction (`code[pc]`), nothing of it done or charged.
///
/// An op runs here only when every instruction it covers takes its integer fast path, the
/// budget covers them all (it charges each one), and a call or return needs nothing the
/// general loop owns: a call needs no stack growth and stays within `max_depth` (its arity was
/// checked at link time); a return is from a frame at or above `floor` ([`return_floor`]).
/// Handlers cannot change while this runs (`TryBegin`/`TryEnd` are not fast ops), so `floor`
/// stays valid. The state lives in locals, which is the point: small enough to stay in
/// registers.
///
/// Unsafe: the stack slots, the op fetch and the callee lookup are unchecked here (and only
/// here): this loop runs most instructions of a typical script, and the bounds checks were
/// 13% of fib's and 16% of the integer loop's host instructions (benches/README.md,
/// "Interpreter optimisation log"). Each block states the verifier invariant that keeps its
/// index in range.
#[inline(never)]
#[allow(unsafe_code)]
fn fast<'p>(
    funcs: &'p [RtFunction],
    r: &mut Regs<'p>,
    st: &mut [Value],
    frames: &mut Vec<Frame>,
    floor: usize,
    max_depth: usize,
) {
    let Regs {
        f,
        mut pc,
        sp: sp_index,
        base,
        mut left,
    } = *r;
    // The running function is `frames.last()`'s; only its ops are needed while running.
    let mut ops: &[Op] = &f.ops;
    // Whether the heap is within its limit. Nothing here adds to the heap account (only
    // scalars are made, references cloned, and a list grown within its capacity), so live
    // bytes can only fall while this runs: within the limit now means within it at every op.
    let heap_ok = !crate::heap::over_limit();
    // The value stack is reached through raw pointers from here on (`st` itself is not used
    // again): the frame pointer `fp` (slot `base`) and the stack pointer `sp` (slot `sp`),
    // so a local or the top of the stack is one address computation off a register. The
    // hot state is then `ops`, `pc`, `fp`, `sp` and `left`, few enough to stay in registers.
    let st_start: *mut Value = st.as_mut_ptr();
    let st_len = st.len();
    // The slot index of a stack pointer (address arithmetic only, no access).
    let index = |p: *mut Value| (p as usize - st_start as usize) / std::mem::size_of::<Value>();
    // Pointers to slots `0..=st_len` (one past the end included) stay within the allocation;
    // `base <= sp <= st_len` for the running frame (module invariant).
    let mut fp: *mut Value = st_start.wrapping_add(base);
    let mut sp: *mut Value = st_start.wrapping_add(sp_index);
    // A value-stack slot. Every slot used is below `base + frame_size` of the running frame,
    // which is at most `st.len()` (module invariant; `can_call!` checks it for a callee
    // before entering it): `fp + slot` with `slot < locals` (verifier rule 3: local operands
    // are in range); `sp`, `sp - 1`, `sp - 2` for an op whose instructions the verifier
    // checked to push onto / pop from an operand stack of depth at most `max_stack` (rule 5,
    // rule 8; `sp = fp + locals + depth`); and `ret <= base` of a returning frame.
    macro_rules! slot {
        ($p:expr) => {{
            let p: *mut Value = $p;
            debug_assert!(p >= st_start && index(p) < st_len);
            // SAFETY: `p` is a slot of `st` below `st.len()`, by the invariants above, and
            // no other reference to the stack is alive while this one is used.
            unsafe { &mut *p }
        }};
    }
    // Local `$i` of the running frame.
    macro_rules! loc {
        ($i:expr) => {
            slot!(fp.wrapping_add($i as usize))
        };
    }
    // The `$k`-th slot below the stack pointer (`top!(0)`: the free slot at `sp`).
    macro_rules! top {
        ($k:expr) => {
            slot!(sp.wrapping_sub($k))
        };
    }
    macro_rules! int {
        ($slot:expr) => {
            match *$slot {
                Value::Int(x) => Some(x),
                _ => None,
            }
        };
    }
    // The `IterNext` step over a list or a range (iterable and cursor on top of the stack):
    // runs `$item` with the cursor `$i`, the next cursor `$next` and the item `$v` bound, or
    // `$end` when the iterable is exhausted; any other case leaves `fast`. The item is made
    // in the arm that uses it (no `Option<Value>` to carry out of a match).
    macro_rules! iter_next {
        (|$i:ident, $next:ident, $v:ident| $item:block else $end:block) => {{
            let Some($i) = int!(top!(1)).filter(|&i| i >= 0) else {
                break;
            };
            let Some($next) = $i.checked_add(1) else {
                break;
            };
            match &*top!(2) {
                Value::Range(r) if ($i as u64) < r.len() => {
                    let $v = Value::Int(r.start.wrapping_add($i));
                    $item
                }
                Value::List(l) if ($i as usize) < l.len() => {
                    let $v = fast_clone(&l.items()[$i as usize]);
                    $item
                }
                Value::Range(_) | Value::List(_) => $end,
                _ => break,
            }
        }};
    }
    // Charges `$n` instructions, or stops at this op if the budget does not cover them.
    // Every op checks its operands first and charges last, so stopping leaves nothing done.
    macro_rules! charge {
        ($n:expr) => {
            if left < $n {
                break;
            }
            left -= $n;
        };
    }
    // The frame stack, like the value stack, is held in locals while this runs: `depth` is
    // its length (written back on the way out) and `frame_at` its storage. Calls made here
    // never grow it: below `frame_limit` a new frame fits in the capacity (the general loop
    // owns growth as well as the depth error). `Frame` is `Copy`, so the length lagging
    // behind (until the write-back) can neither leak nor double-drop anything.
    let frame_limit = max_depth.min(frames.capacity());
    let mut depth = frames.len();
    let frame_at: *mut Frame = frames.as_mut_ptr();
    // Frame `$i`, which is below `depth`.
    macro_rules! frame {
        ($i:expr) => {{
            let i: usize = $i;
            debug_assert!(i < depth);
            // SAFETY: `i < depth`, so frame `i` is initialised and within the capacity of
            // `frames`; no other reference to the frame stack is alive while this one is used.
            unsafe { &mut *frame_at.add(i) }
        }};
    }
    // Whether the fast path can enter `$g` with its arguments from slot `$nb` up: the
    // general loop owns stack growth and the depth error. The arity was checked at link time.
    macro_rules! can_call {
        ($g:expr, $nb:expr) => {
            depth < frame_limit && index($nb) + $g.frame_size() <= st_len
        };
    }
    // Enters function `$callee` (`$g`) from the call op at `pc`, its arguments from slot
    // `$nb` up; its result will go to slot `$ret`. `can_call!` held, so `depth < frame_limit`.
    macro_rules! call {
        ($callee:expr, $g:expr, $nb:expr, $ret:expr) => {{
            let nb: *mut Value = $nb;
            let locals_end = nb.wrapping_add($g.locals as usize);
            // Locals above the arguments start as nil; those slots are at or above the
            // stack pointer, so they hold scalars and need no drop.
            while sp < locals_end {
                overwrite(top!(0), Value::Nil);
                sp = sp.wrapping_add(1);
            }
            // The running frame is `depth - 1` (`depth >= 1` always holds here).
            frame!(depth - 1).pc = pc as u32 + 1;
            debug_assert!(depth < frame_limit);
            // SAFETY: `depth < frame_limit <= capacity`: the slot is allocated and holds no
            // frame, so it is written without reading or dropping what was there.
            unsafe {
                frame_at
                    .add(depth)
                    .write(Frame::new($callee, &$g.ops, index(nb), index($ret)))
            };
            depth += 1;
            ops = &$g.ops;
            fp = nb;
            pc = 0;
            sp = locals_end;
        }};
    }
    // Returns `$result` from frame `depth - 1`, which the caller checked is at or above
    // `floor >= 1` (so a caller frame remains below it). The slots from `ret` up to the
    // stack pointer are abandoned.
    macro_rules! ret {
        ($result:expr) => {{
            let result: Value = $result;
            debug_assert!(depth > floor && floor >= 1);
            let done = *frame!(depth - 1);
            let caller = *frame!(depth - 2);
            depth -= 1;
            // `ret <= sp`: the returning frame's slots start at or above `ret`.
            let ret = st_start.wrapping_add(done.ret as usize);
            while sp > ret {
                sp = sp.wrapping_sub(1);
                put(top!(0), Value::Nil);
            }
            overwrite(top!(0), result);
            sp = sp.wrapping_add(1);
            debug_assert!(std::ptr::eq(
                caller.ops(),
                &*funcs[caller.func as usize].ops
            ));
            // SAFETY: a frame's ops are those of its function table entry (`Frame::new`),
            // which live as long as the execution's program and never change.
            ops = unsafe { &*caller.ops() };
            fp = st_start.wrapping_add(caller.base as usize);
            pc = caller.pc as usize;
        }};
    }
    loop {
        debug_assert!(pc < ops.len());
        // SAFETY: `pc < ops.len()` (`ops` has one op per instruction of verified code): every
        // op continues at a verified jump target (rule 3: `< code.len()`) or after the last
        // instruction it covers, which falls through, and no instruction falls off the end
        // (rule 2); a caller resumes after its call instruction, which falls through. The
        // general loop hands over pcs with the same property.
        match *unsafe { ops.get_unchecked(pc) } {
            Op::I(_) => break,
            Op::GetLocal { slot } => {
                charge!(1);
                let v = fast_clone(&*loc!(slot));
                overwrite(top!(0), v);
                sp = sp.wrapping_add(1);
                pc += 1;
            }
            Op::SetLocal { slot } => {
                let Some(x) = int!(top!(1)) else { break };
                charge!(1);
                sp = sp.wrapping_sub(1);
                put(loc!(slot), Value::Int(x));
                pc += 1;
            }
            Op::Int { value } => {
                charge!(1);
                overwrite(top!(0), Value::Int(i64::from(value)));
                sp = sp.wrapping_add(1);
                pc += 1;
            }
            Op::AddInt { value } => {
                let Some(x) = int!(top!(1)) else { break };
                let Some(v) = x.checked_add(i64::from(value)) else {
                    break;
                };
                charge!(1);
                overwrite(top!(1), Value::Int(v));
                pc += 1;
            }
            Op::Jump { target } => {
                charge!(1);
                pc = target as usize;
            }
            Op::Arith { op } => {
                let (Some(x), Some(y)) = (int!(top!(2)), int!(top!(1))) else {
                    break;
                };
                let Some(v) = op.apply(x, y) else { break };
                charge!(1);
                sp = sp.wrapping_sub(1);
                overwrite(top!(1), Value::Int(v));
                pc += 1;
            }
            Op::JumpIfNot { cmp, target } => {
                let (Some(x), Some(y)) = (int!(top!(2)), int!(top!(1))) else {
                    break;
                };
                charge!(1);
                sp = sp.wrapping_sub(2);
                pc = if cmp.holds(x, y) {
                    pc + 1
                } else {
                    target as usize
                };
            }
            Op::JumpIfNotLL { cmp, a, b, target } => {
                let (Some(x), Some(y)) = (int!(loc!(a)), int!(loc!(b))) else {
                    break;
                };
                charge!(3);
                pc = if cmp.holds(x, y) {
                    pc + 3
                } else {
                    target as usize
                };
            }
            Op::JumpIfNotLI {
                cmp,
                a,
                value,
                target,
            } => {
                let Some(x) = int!(loc!(a)) else {
                    break;
                };
                charge!(3);
                pc = if cmp.holds(x, i64::from(value)) {
                    pc + 3
                } else {
                    target as usize
                };
            }
            Op::LoopLL {
                cmp,
                a,
                b,
                head,
                exit,
            } => {
                let (Some(x), Some(y)) = (int!(loc!(a)), int!(loc!(b))) else {
                    break;
                };
                charge!(4);
                pc = if cmp.holds(x, y) {
                    head as usize + 3
                } else {
                    exit as usize
                };
            }
            Op::LoopLI {
                cmp,
                a,
                value,
                head,
                exit,
            } => {
                let Some(x) = int!(loc!(a)) else {
                    break;
                };
                charge!(4);
                pc = if cmp.holds(x, i64::from(value)) {
                    head as usize + 3
                } else {
                    exit as usize
                };
            }
            Op::StepLoopLL {
                cmp,
                a,
                step,
                bound,
                head,
                exit,
            } => {
                let Some(x) = int!(loc!(a)) else { break };
                let Some(v) = x.checked_add(i64::from(step)) else {
                    break;
                };
                // The condition reads `a` after the step has stored `v` there.
                let y = if bound == a {
                    v
                } else {
                    let Some(y) = int!(loc!(bound)) else { break };
                    y
                };
                charge!(7);
                overwrite(loc!(a), Value::Int(v));
                pc = if cmp.holds(v, y) {
                    head as usize + 3
                } else {
                    exit as usize
                };
            }
            Op::LoopIter { slot, head, exit } => {
                // `Jump head; IterNext exit; SetLocal slot` over a list or a range, as the
                // `IterNext` arm (the iterable and the cursor on top of the stack).
                if left < 3 {
                    break;
                }
                iter_next!(|_i, next_i, v| {
                    left -= 3;
                    overwrite(top!(1), Value::Int(next_i));
                    put(loc!(slot), v);
                    pc = head as usize + 2;
                } else {
                    left -= 2;
                    sp = sp.wrapping_sub(2);
                    put(top!(0), Value::Nil);
                    pc = exit as usize;
                })
            }
            Op::ArithLI { op, a, value } => {
                let Some(x) = int!(loc!(a)) else {
                    break;
                };
                let Some(v) = op.apply(x, i64::from(value)) else {
                    break;
                };
                charge!(3);
                overwrite(top!(0), Value::Int(v));
                sp = sp.wrapping_add(1);
                pc += 3;
            }
            Op::ArithLL { op, a, b } => {
                let (Some(x), Some(y)) = (int!(loc!(a)), int!(loc!(b))) else {
                    break;
                };
                let Some(v) = op.apply(x, y) else { break };
                charge!(3);
                overwrite(top!(0), Value::Int(v));
                sp = sp.wrapping_add(1);
                pc += 3;
            }
            Op::Arith3Set {
                outer,
                inner,
                c_local,
                a,
                b,
                c,
                d,
            } => {
                let (Some(x), Some(y)) = (int!(loc!(a)), int!(loc!(b))) else {
                    break;
                };
                let z = if c_local {
                    let Some(z) = int!(loc!(c)) else {
                        break;
                    };
                    z
                } else {
                    i64::from(c)
                };
                let Some(v) = inner.apply(y, z).and_then(|yz| outer.apply(x, yz)) else {
                    break;
                };
                charge!(6);
                put(loc!(d), Value::Int(v));
                pc += 6;
            }
            Op::ArithSet { op, a } => {
                let (Some(x), Some(y)) = (int!(top!(2)), int!(top!(1))) else {
                    break;
                };
                let Some(v) = op.apply(x, y) else { break };
                charge!(2);
                sp = sp.wrapping_sub(2);
                put(loc!(a), Value::Int(v));
                pc += 2;
            }
            Op::AddIntSet { a, value, b } => {
                let Some(x) = int!(loc!(a)) else {
                    break;
                };
                let Some(v) = x.checked_add(i64::from(value)) else {
                    break;
                };
                charge!(3);
                put(loc!(b), Value::Int(v));
                pc += 3;
            }
            Op::LocalAddInt { a, value } => {
                let Some(x) = int!(loc!(a)) else {
                    break;
                };
                let Some(v) = x.checked_add(i64::from(value)) else {
                    break;
                };
                charge!(2);
                overwrite(top!(0), Value::Int(v));
                sp = sp.wrapping_add(1);
                pc += 2;
            }
            Op::Call { callee, argc } => {
                debug_assert!((callee as usize) < funcs.len());
                // SAFETY: `callee` is a reference of verified code (rule 3: `func <
                // refs.len()`) resolved at link time to an index of the function table, which
                // only grows (`program` invariant).
                let g = unsafe { funcs.get_unchecked(callee as usize) };
                let nb = sp.wrapping_sub(argc as usize);
                if !can_call!(g, nb) {
                    break;
                }
                charge!(1);
                call!(callee, g, nb, nb);
            }
            Op::LocalAddIntCall { a, value, callee } => {
                let Some(x) = int!(loc!(a)) else {
                    break;
                };
                let Some(v) = x.checked_add(i64::from(value)) else {
                    break;
                };
                debug_assert!((callee as usize) < funcs.len());
                // SAFETY: as for `Op::Call`.
                let g = unsafe { funcs.get_unchecked(callee as usize) };
                if !can_call!(g, sp) {
                    break;
                }
                charge!(3);
                overwrite(top!(0), Value::Int(v));
                sp = sp.wrapping_add(1);
                pc += 2;
                call!(callee, g, sp.wrapping_sub(1), sp.wrapping_sub(1));
            }
            Op::CallValue { argc } => {
                let fpos = sp.wrapping_sub(argc as usize + 1);
                let Value::Function(c) = &*slot!(fpos) else {
                    break;
                };
                let callee = c.index;
                let Some(g) = funcs.get(callee as usize) else {
                    break;
                };
                if g.arity != u16::from(argc) || !can_call!(g, fpos.wrapping_add(1)) {
                    break;
                }
                charge!(1);
                call!(callee, g, fpos.wrapping_add(1), fpos);
            }
            Op::CallLocal { callee: f, arg } => {
                // `GetLocal f; GetLocal arg; Call 1`: the function value and the argument
                // are pushed (slots `sp` and `sp + 1`, within the operand stack the verifier
                // checked those two pushes against) and the callee entered as by `CallValue`.
                let Value::Function(c) = &*loc!(f) else {
                    break;
                };
                let callee = c.index;
                let Some(g) = funcs.get(callee as usize) else {
                    break;
                };
                let nb = sp.wrapping_add(1);
                if g.arity != 1 || !can_call!(g, nb) {
                    break;
                }
                charge!(3);
                let function = Value::Function(Rc::clone(c));
                overwrite(top!(0), function);
                overwrite(slot!(nb), fast_clone(&*loc!(arg)));
                sp = sp.wrapping_add(2);
                pc += 2;
                call!(callee, g, nb, nb.wrapping_sub(1));
            }
            Op::GetUpval { index } => {
                // The running closure sits just below the frame (`function` invariant).
                let closure = (fp > st_start).then(|| &*slot!(fp.wrapping_sub(1)));
                let v = match closure {
                    Some(Value::Function(c)) => match c.upvals.get(index as usize) {
                        Some(u) => fast_clone(&u.value.borrow()),
                        None => Value::Nil,
                    },
                    _ => Value::Nil,
                };
                if left == 0 {
                    drop_cold(v);
                    break;
                }
                left -= 1;
                overwrite(top!(0), v);
                sp = sp.wrapping_add(1);
                pc += 1;
            }
            Op::Pop => {
                charge!(1);
                sp = sp.wrapping_sub(1);
                put(top!(0), Value::Nil);
                pc += 1;
            }
            Op::JumpIf { when, target } => {
                charge!(1);
                sp = sp.wrapping_sub(1);
                let top: &Value = top!(0);
                let t = top.is_truthy();
                put(top!(0), Value::Nil);
                pc = if t == when { target as usize } else { pc + 1 };
            }
            Op::Compare { cmp } => {
                let (Some(x), Some(y)) = (int!(top!(2)), int!(top!(1))) else {
                    break;
                };
                charge!(1);
                sp = sp.wrapping_sub(1);
                overwrite(top!(1), Value::Bool(cmp.holds(x, y)));
                pc += 1;
            }
            // `list[i]` with `0 <= i < len`: the item; anything else (a map, a range, an index
            // out of range, which raises) is left to the general loop.
            Op::GetIndex => {
                if left == 0 {
                    break;
                }
                let Some(i) = int!(top!(1)).filter(|&i| i >= 0) else {
                    break;
                };
                let Value::List(l) = &*top!(2) else {
                    break;
                };
                let Some(v) = l.items().get(i as usize).map(fast_clone) else {
                    break;
                };
                left -= 1;
                sp = sp.wrapping_sub(1);
                put(top!(1), v);
                pc += 1;
            }
            // `len(list)` of the builtin: the list's length (it allocates nothing and cannot
            // fail); any other argument is left to the general loop's call.
            Op::Len => {
                if left == 0 {
                    break;
                }
                let Value::List(l) = &*top!(1) else {
                    break;
                };
                let n = l.len() as i64;
                left -= 1;
                put(top!(1), Value::Int(n));
                pc += 1;
            }
            Op::CompareI { cmp, value } => {
                let Some(x) = int!(top!(1)) else {
                    break;
                };
                charge!(2);
                overwrite(top!(1), Value::Bool(cmp.holds(x, i64::from(value))));
                pc += 2;
            }
            Op::IterNext { pair, target } => {
                if left == 0 {
                    break;
                }
                iter_next!(|i, next_i, v| {
                    left -= 1;
                    overwrite(top!(1), Value::Int(next_i));
                    if pair {
                        overwrite(top!(0), Value::Int(i));
                        sp = sp.wrapping_add(1);
                    }
                    overwrite(top!(0), v);
                    sp = sp.wrapping_add(1);
                    pc += 1;
                } else {
                    left -= 1;
                    sp = sp.wrapping_sub(2);
                    put(top!(0), Value::Nil);
                    pc = target as usize;
                })
            }
            // `push(list, v)` where the list has room: the builtin's work (`ListObj::mutate`
            // with the capacity, so the heap charge, unchanged) and its nil result. Anything
            // else (another type, a list that must grow, a heap already over its limit, which
            // the general loop reports after the call) stops here and runs as the call.
            Op::Push => {
                if left == 0 || !heap_ok {
                    break;
                }
                let v = fast_clone(&*top!(1));
                let Value::List(l) = &*top!(2) else {
                    drop_cold(v);
                    break;
                };
                if let Err(v) = l.push_in_place(v) {
                    drop_cold(v);
                    break;
                }
                left -= 1;
                sp = sp.wrapping_sub(1);
                put(top!(0), Value::Nil);
                put(top!(1), Value::Nil);
                pc += 1;
            }
            // `push(list, v)` as a statement (`Push; Pop`): as `Op::Push`, with the item moved
            // off the stack (it goes back if the list cannot take it) and both slots cleared.
            Op::PushPop => {
                if left < 2 || !heap_ok {
                    break;
                }
                let Value::List(l) = &*top!(2) else {
                    break;
                };
                if let Err(v) = l.push_in_place(std::mem::take(top!(1))) {
                    overwrite(top!(1), v);
                    break;
                }
                left -= 2;
                sp = sp.wrapping_sub(2);
                put(top!(0), Value::Nil);
                pc += 2;
            }
            Op::LocalsPush { list, value } => {
                if left < 4 || !heap_ok {
                    break;
                }
                let v = fast_clone(&*loc!(value));
                let Value::List(l) = &*loc!(list) else {
                    drop_cold(v);
                    break;
                };
                if let Err(v) = l.push_in_place(v) {
                    drop_cold(v);
                    break;
                }
                left -= 4;
                pc += 4;
            }
            Op::Return => {
                if depth <= floor {
                    break;
                }
                charge!(1);
                sp = sp.wrapping_sub(1);
                ret!(std::mem::take(top!(0)));
            }
            Op::JumpReturn { .. } => {
                if depth <= floor {
                    break;
                }
                charge!(2);
                sp = sp.wrapping_sub(1);
                ret!(std::mem::take(top!(0)));
            }
            Op::GetLocalJumpReturn { slot, .. } => {
                if depth <= floor {
                    break;
                }
                charge!(3);
                ret!(fast_clone(&*loc!(slot)));
            }
            Op::ArithReturn { op } => {
                let (Some(x), Some(y)) = (int!(top!(2)), int!(top!(1))) else {
                    break;
                };
                let Some(v) = op.apply(x, y) else { break };
                if depth <= floor {
                    break;
                }
                charge!(2);
                // Both operands are integers: scalars may stay above the stack pointer.
                sp = sp.wrapping_sub(2);
                ret!(Value::Int(v));
            }
        }
    }
    debug_assert!(depth >= 1 && depth <= frames.capacity());
    // SAFETY: frames `0..depth` are initialised: those below `frames.len()` on entry, and
    // each one pushed here was written before `depth` counted it.
    unsafe { frames.set_len(depth) };
    *r = Regs {
        f: frames.last().map_or(f, |top| &funcs[top.func as usize]),
        pc,
        sp: index(sp),
        base: index(fp),
        left,
    };
}

/// Runs `task` for at most `*budget` instructions.
pub(crate) fn run_task(
    prog: &Program,
    task: &mut Task,
    ctx: &mut Ctx<'_>,
    budget: &mut u64,
) -> Exit {
    let Task {
        stack,
        sp: task_sp,
        frames,
        handlers,
        state,
        resume,
        charge,
        ..
    } = task;
    let mut sp = *task_sp;
    let mut pending: Option<Raised> = None;
    match resume.take() {
        Some(Resume::Push(v)) => {
            if stack.len() <= sp {
                stack.resize(sp + 1, Value::Nil);
            }
            stack[sp] = v;
            sp += 1;
        }
        Some(Resume::Raise(mut r)) => {
            r.trace.extend(trace(prog, frames, ctx.node));
            pending = Some(r);
        }
        Some(Resume::Jump(pc)) => {
            if let Some(top) = frames.last_mut() {
                top.pc = pc;
            }
        }
        None => {}
    }

    let mut left = *budget;
    let exit = 'reload: loop {
        if let Some(r) = pending.take() {
            if let Err(r) = unwind(stack, &mut sp, frames, handlers, r) {
                for slot in stack.iter_mut().take(sp) {
                    *slot = Value::Nil;
                }
                *task_sp = 0;
                break 'reload Exit::Finished(Err(r));
            }
        }
        let Some(&fr) = frames.last() else {
            break 'reload Exit::Finished(Ok(Value::Nil));
        };
        let Some(f) = prog.funcs.get(fr.func as usize) else {
            break 'reload Exit::Finished(Ok(Value::Nil));
        };
        // The running function: its ops, code, constants and references are read through
        // this one pointer, so a call or return switches functions with one store.
        let mut f = f;
        let mut base = fr.base as usize;
        let mut pc = fr.pc as usize;
        let st: &mut [Value] = &mut stack[..];

        macro_rules! save {
            () => {
                if let Some(top) = frames.last_mut() {
                    top.pc = pc as u32;
                }
                *task_sp = sp;
            };
        }
        macro_rules! pop {
            () => {{
                sp -= 1;
                std::mem::take(&mut st[sp])
            }};
        }
        macro_rules! push {
            ($v:expr) => {{
                let v = $v;
                overwrite(&mut st[sp], v);
                sp += 1;
            }};
        }
        macro_rules! heap_check {
            () => {
                if ctx.check_heap && crate::heap::over_limit() {
                    save!();
                    break 'reload Exit::Limit(LimitKind::MemoryLimit);
                }
            };
        }
        macro_rules! slow2 {
            ($f:path) => {{
                let b = pop!();
                let r = slow($f, &st[sp - 1], &b);
                match r {
                    Ok(v) => st[sp - 1] = v,
                    Err(e) => break Raise::Native(e),
                }
            }};
        }
        macro_rules! arith {
            ($checked:ident, $op:tt, $slow:path, $sym:literal) => {{
                match (&st[sp - 2], &st[sp - 1]) {
                    (Value::Int(x), Value::Int(y)) => match x.$checked(*y) {
                        Some(r) => {
                            overwrite(&mut st[sp - 2], Value::Int(r));
                            sp -= 1;
                        }
                        None => break overflow($sym),
                    },
                    (Value::Float(x), Value::Float(y)) => {
                        let r = *x $op *y;
                        overwrite(&mut st[sp - 2], Value::Float(r));
                        sp -= 1;
                    }
                    _ => {
                        slow2!($slow);
                        heap_check!();
                    }
                }
            }};
        }
        macro_rules! divide {
            ($checked:ident, $op:tt, $slow:path, $sym:literal) => {{
                match (&st[sp - 2], &st[sp - 1]) {
                    (Value::Int(_), Value::Int(0)) => {
                        break err("DivisionByZero", concat!("integer ", $sym, " by zero"))
                    }
                    (Value::Int(x), Value::Int(y)) => match x.$checked(*y) {
                        Some(r) => {
                            overwrite(&mut st[sp - 2], Value::Int(r));
                            sp -= 1;
                        }
                        None => break overflow($sym),
                    },
                    (Value::Float(x), Value::Float(y)) => {
                        let r = *x $op *y;
                        overwrite(&mut st[sp - 2], Value::Float(r));
                        sp -= 1;
                    }
                    _ => slow2!($slow),
                }
            }};
        }
        macro_rules! compare {
            ($op:tt, $slow:path) => {{
                match (&st[sp - 2], &st[sp - 1]) {
                    (Value::Int(x), Value::Int(y)) => {
                        let r = x $op y;
                        overwrite(&mut st[sp - 2], Value::Bool(r));
                        sp -= 1;
                    }
                    (Value::Float(x), Value::Float(y)) => {
                        let r = x $op y;
                        overwrite(&mut st[sp - 2], Value::Bool(r));
                        sp -= 1;
                    }
                    _ => slow2!($slow),
                }
            }};
        }
        macro_rules! jump_unless {
            ($op:tt, $ord:pat, $target:expr) => {{
                let ok = match (&st[sp - 2], &st[sp - 1]) {
                    (Value::Int(x), Value::Int(y)) => x $op y,
                    _ => {
                        let b = pop!();
                        let a = pop!();
                        sp += 2;
                        match ops::compare(&a, &b) {
                            Ok(o) => matches!(o, Some($ord)),
                            Err(e) => {
                                sp -= 2;
                                break Raise::Native(e);
                            }
                        }
                    }
                };
                sp -= 2;
                if !ok {
                    pc = $target as usize;
                }
            }};
        }
        macro_rules! jump_eq {
            ($want:expr, $target:expr) => {{
                let eq = match (&st[sp - 2], &st[sp - 1]) {
                    (Value::Int(x), Value::Int(y)) => x == y,
                    _ => {
                        let b = pop!();
                        let a = pop!();
                        sp += 2;
                        ops::equals(&a, &b)
                    }
                };
                sp -= 2;
                if eq != $want {
                    pc = $target as usize;
                }
            }};
        }
        // Enters function `idx` with its arguments starting at `new_base`.
        macro_rules! enter {
            ($idx:expr, $new_base:expr, $ret:expr, $argc:expr) => {{
                let idx = $idx as usize;
                let argc: usize = $argc;
                let Some(callee) = prog.funcs.get(idx) else {
                    break err("TypeError", "call of an unlinked function");
                };
                if callee.arity as usize != argc {
                    break arity_err(callee, argc);
                }
                if frames.len() >= ctx.max_depth {
                    break err(
                        "StackOverflow",
                        &format!("call depth exceeded {}", ctx.max_depth),
                    );
                }
                let nb: usize = $new_base;
                let need = nb + callee.frame_size();
                let locals_end = nb + callee.locals as usize;
                if need > st.len() {
                    if need > MAX_STACK_SLOTS {
                        break err("StackOverflow", "value stack exhausted");
                    }
                    let grow = need.max(stack.len() * 2).min(MAX_STACK_SLOTS);
                    stack.resize(grow, Value::Nil);
                    charge.resize(super::task_bytes(stack.capacity()));
                    clear(&mut stack[nb + argc..locals_end]);
                    if ctx.check_heap && crate::heap::over_limit() {
                        if let Some(top) = frames.last_mut() {
                            top.pc = pc as u32;
                        }
                        *task_sp = sp;
                        break 'reload Exit::Limit(LimitKind::MemoryLimit);
                    }
                    if let Some(top) = frames.last_mut() {
                        top.pc = pc as u32;
                    }
                    frames.push(Frame::new(idx as u32, &callee.ops, nb, $ret));
                    sp = locals_end;
                    continue 'reload;
                }
                // Locals above the arguments start as nil; those slots are at or above the
                // stack pointer, so they hold scalars and need no drop.
                for slot in &mut st[nb + argc..locals_end] {
                    overwrite(slot, Value::Nil);
                }
                if let Some(top) = frames.last_mut() {
                    top.pc = pc as u32;
                }
                frames.push(Frame::new(idx as u32, &callee.ops, nb, $ret));
                // Switch to the callee without leaving the dispatch loop.
                f = callee;
                base = nb;
                pc = 0;
                sp = locals_end;
            }};
        }

        let raise: Raise = loop {
            // Everything with a fast path runs in `fast`, with the hot state in registers; it
            // stops at the first op it cannot run (or whose instructions the budget does not
            // cover) and this loop runs that one instruction.
            if !matches!(f.ops.get(pc), Some(Op::I(_)) | None) {
                let mut r = Regs {
                    f,
                    pc,
                    sp,
                    base,
                    left,
                };
                fast(
                    &prog.funcs,
                    &mut r,
                    st,
                    frames,
                    return_floor(handlers),
                    ctx.max_depth,
                );
                (f, pc, sp, base, left) = (r.f, r.pc, r.sp, r.base, r.left);
            }
            if left == 0 {
                save!();
                break 'reload Exit::Budget;
            }
            left -= 1;
            let Some(&instr) = f.code.get(pc) else {
                break err("TypeError", "control ran off the end of a function");
            };
            pc += 1;
            match instr {
                Instr::Nil {} => push!(Value::Nil),
                Instr::True {} => push!(Value::Bool(true)),
                Instr::False {} => push!(Value::Bool(false)),
                Instr::Int { value } => push!(Value::Int(i64::from(value))),
                Instr::Const { index } => push!(f.consts[index as usize].clone()),
                Instr::Pop {} => {
                    let _ = pop!();
                }
                Instr::Dup {} => {
                    let v = fast_clone(&st[sp - 1]);
                    push!(v);
                }
                Instr::GetLocal { slot } => {
                    let v = fast_clone(&st[base + slot as usize]);
                    push!(v);
                }
                Instr::SetLocal { slot } => {
                    sp -= 1;
                    let i = base + slot as usize;
                    if let Value::Int(x) = st[sp] {
                        // Read the payload only: the slot was likely just written as tag +
                        // payload, and a 16-byte reload of it would stall store forwarding.
                        put(&mut st[i], Value::Int(x));
                    } else {
                        let v = std::mem::take(&mut st[sp]);
                        put(&mut st[i], v);
                    }
                }
                Instr::NewCell { slot } => {
                    let v = pop!();
                    st[base + slot as usize] = Value::Cell(CellObj::new(v));
                    heap_check!();
                }
                Instr::GetCell { slot } => {
                    let v = match &st[base + slot as usize] {
                        Value::Cell(c) => c.value.borrow().clone(),
                        _ => Value::Nil,
                    };
                    push!(v);
                }
                Instr::SetCell { slot } => {
                    let v = pop!();
                    let i = base + slot as usize;
                    let cell = match &st[i] {
                        Value::Cell(c) => Some(c.clone()),
                        _ => None,
                    };
                    match cell {
                        Some(c) => {
                            let old = c.value.replace(v);
                            drop(old);
                        }
                        None => st[i] = Value::Cell(CellObj::new(v)),
                    }
                }
                Instr::GetUpval { index } => {
                    let v = match base.checked_sub(1).and_then(|i| st.get(i)) {
                        Some(Value::Function(c)) => c
                            .upvals
                            .get(index as usize)
                            .map(|u| u.value.borrow().clone()),
                        _ => None,
                    };
                    push!(v.unwrap_or_default());
                }
                Instr::SetUpval { index } => {
                    let v = pop!();
                    if let Some(Value::Function(c)) = base.checked_sub(1).and_then(|i| st.get(i)) {
                        if let Some(u) = c.upvals.get(index as usize) {
                            let old = u.value.replace(v);
                            drop(old);
                        }
                    }
                }
                Instr::CaptureLocal { slot } => {
                    let i = base + slot as usize;
                    let existing = match &st[i] {
                        Value::Cell(c) => Some(c.clone()),
                        _ => None,
                    };
                    let cell = match existing {
                        Some(c) => c,
                        None => {
                            let c = CellObj::new(Value::Nil);
                            st[i] = Value::Cell(c.clone());
                            c
                        }
                    };
                    push!(Value::Cell(cell));
                }
                Instr::CaptureUpval { index } => {
                    let cell = match base.checked_sub(1).and_then(|i| st.get(i)) {
                        Some(Value::Function(c)) => c.upvals.get(index as usize).cloned(),
                        _ => None,
                    };
                    push!(Value::Cell(
                        cell.unwrap_or_else(|| CellObj::new(Value::Nil))
                    ));
                }
                Instr::Function { func } => {
                    let idx = f.refs[func as usize];
                    let rf = &prog.funcs[idx as usize];
                    let value = rf.shared_value.get_or_init(|| {
                        Value::Function(Rc::new(Closure {
                            func: rf.id,
                            name: rf.name.clone(),
                            upvals: Box::new([]),
                            index: idx,
                            charge: Charge::new(32),
                        }))
                    });
                    push!(value.clone());
                }
                Instr::Closure { func, captures } => {
                    let n = captures as usize;
                    let idx = f.refs[func as usize];
                    let mut cells = Vec::with_capacity(n);
                    for slot in &mut st[sp - n..sp] {
                        match std::mem::take(slot) {
                            Value::Cell(c) => cells.push(c),
                            other => cells.push(CellObj::new(other)),
                        }
                    }
                    sp -= n;
                    let rf = &prog.funcs[idx as usize];
                    push!(Value::Function(Rc::new(Closure {
                        func: rf.id,
                        name: rf.name.clone(),
                        upvals: cells.into_boxed_slice(),
                        index: idx,
                        charge: Charge::new(32 + 8 * n),
                    })));
                    heap_check!();
                }
                Instr::Call { argc } => {
                    let argc = argc as usize;
                    let fpos = sp - argc - 1;
                    let idx = match &st[fpos] {
                        Value::Function(c) => c.index,
                        other => {
                            break type_err("cannot call a", other);
                        }
                    };
                    enter!(idx, fpos + 1, fpos, argc);
                }
                Instr::CallFunction { func, argc } => {
                    let argc = argc as usize;
                    let nb = sp - argc;
                    enter!(f.refs[func as usize], nb, nb, argc);
                }
                Instr::CallNative { native, argc } => {
                    let argc = argc as usize;
                    let first = sp - argc;
                    let result = match &f.natives[native as usize] {
                        NativeImpl::Sleep => {
                            if argc != 1 {
                                break err(
                                    "ArityError",
                                    &format!("sleep() takes 1 argument, got {argc}"),
                                );
                            }
                            let ms = match &st[first] {
                                Value::Int(i) => Duration::from_millis((*i).max(0) as u64),
                                Value::Float(x) => Duration::try_from_secs_f64(x.max(0.0) / 1000.0)
                                    .unwrap_or(Duration::from_secs(u32::MAX as u64)),
                                other => {
                                    break type_err("sleep() expects a number of ms, got", other)
                                }
                            };
                            st[first] = Value::Nil;
                            sp = first;
                            let wake = ctx
                                .now
                                .checked_add(ms)
                                .or_else(|| ctx.now.checked_add(Duration::from_secs(1 << 32)))
                                .unwrap_or(ctx.now);
                            *state = TaskState::Sleeping(wake);
                            save!();
                            break 'reload Exit::Suspend;
                        }
                        NativeImpl::Builtin(b) => {
                            let mut nctx = NativeCtx {
                                output: &mut *ctx.out,
                                node: ctx.node,
                            };
                            b(&mut nctx, &st[first..sp])
                        }
                        NativeImpl::Host(h) => {
                            let mut nctx = NativeCtx {
                                output: &mut *ctx.out,
                                node: ctx.node,
                            };
                            h(&mut nctx, &st[first..sp])
                        }
                    };
                    for slot in &mut st[first..sp] {
                        *slot = Value::Nil;
                    }
                    sp = first;
                    match result {
                        Ok(v) => push!(v),
                        Err(e) => break Raise::Native(e),
                    }
                    heap_check!();
                }
                Instr::Return {} => {
                    let result = pop!();
                    let Some(done) = frames.pop() else {
                        break 'reload Exit::Finished(Ok(result));
                    };
                    let ret = done.ret as usize;
                    if ret < sp {
                        clear(&mut st[ret..sp]);
                    }
                    let depth = frames.len() as u32;
                    while handlers.last().is_some_and(|h| h.frame >= depth) {
                        handlers.pop();
                    }
                    if frames.is_empty() {
                        *task_sp = 0;
                        break 'reload Exit::Finished(Ok(result));
                    }
                    put(&mut st[ret], result);
                    sp = ret + 1;
                    // Back to the caller without leaving the dispatch loop.
                    let Some(&fr) = frames.last() else {
                        continue 'reload;
                    };
                    let Some(caller) = prog.funcs.get(fr.func as usize) else {
                        continue 'reload;
                    };
                    f = caller;
                    base = fr.base as usize;
                    pc = fr.pc as usize;
                }
                Instr::Add {} => arith!(checked_add, +, ops::add, "+"),
                Instr::Sub {} => arith!(checked_sub, -, ops::sub, "-"),
                Instr::Mul {} => arith!(checked_mul, *, ops::mul, "*"),
                Instr::Div {} => divide!(checked_div, /, ops::div, "/"),
                Instr::Rem {} => divide!(checked_rem, %, ops::rem, "%"),
                Instr::Neg {} => match &st[sp - 1] {
                    Value::Int(x) => match x.checked_neg() {
                        Some(r) => overwrite(&mut st[sp - 1], Value::Int(r)),
                        None => break overflow("unary -"),
                    },
                    Value::Float(x) => {
                        let r = -*x;
                        overwrite(&mut st[sp - 1], Value::Float(r));
                    }
                    _ => {
                        let a = pop!();
                        match ops::neg(&a) {
                            Ok(v) => push!(v),
                            Err(e) => break Raise::Native(e),
                        }
                    }
                },
                Instr::Not {} => {
                    let t = st[sp - 1].is_truthy();
                    put(&mut st[sp - 1], Value::Bool(!t));
                }
                Instr::AddInt { value } => match &st[sp - 1] {
                    Value::Int(x) => match x.checked_add(i64::from(value)) {
                        Some(r) => overwrite(&mut st[sp - 1], Value::Int(r)),
                        None => break overflow("+"),
                    },
                    Value::Float(x) => {
                        let r = *x + f64::from(value);
                        overwrite(&mut st[sp - 1], Value::Float(r));
                    }
                    _ => {
                        let a = pop!();
                        match ops::add(&a, &Value::Int(i64::from(value))) {
                            Ok(v) => push!(v),
                            Err(e) => break Raise::Native(e),
                        }
                    }
                },
                Instr::Eq {} | Instr::Ne {} => {
                    let want = matches!(instr, Instr::Eq {});
                    let eq = match (&st[sp - 2], &st[sp - 1]) {
                        (Value::Int(x), Value::Int(y)) => x == y,
                        _ => {
                            let b = pop!();
                            let a = pop!();
                            sp += 2;
                            ops::equals(&a, &b)
                        }
                    };
                    sp -= 1;
                    put(&mut st[sp - 1], Value::Bool(eq == want));
                }
                Instr::Lt {} => compare!(<, ops::lt),
                Instr::Le {} => compare!(<=, ops::le),
                Instr::Gt {} => compare!(>, ops::gt),
                Instr::Ge {} => compare!(>=, ops::ge),
                Instr::Range {} => {
                    slow2!(ops::make_range);
                    heap_check!();
                }
                Instr::Jump { target } => pc = target as usize,
                Instr::JumpIfFalse { target } => {
                    let c = pop!();
                    if !c.is_truthy() {
                        pc = target as usize;
                    }
                }
                Instr::JumpIfTrue { target } => {
                    let c = pop!();
                    if c.is_truthy() {
                        pc = target as usize;
                    }
                }
                Instr::JumpIfFalseOrPop { target } => {
                    if st[sp - 1].is_truthy() {
                        let _ = pop!();
                    } else {
                        pc = target as usize;
                    }
                }
                Instr::JumpIfTrueOrPop { target } => {
                    if st[sp - 1].is_truthy() {
                        pc = target as usize;
                    } else {
                        let _ = pop!();
                    }
                }
                Instr::JumpIfNotLt { target } => jump_unless!(<, Ordering::Less, target),
                Instr::JumpIfNotLe { target } => {
                    jump_unless!(<=, Ordering::Less | Ordering::Equal, target)
                }
                Instr::JumpIfNotGt { target } => jump_unless!(>, Ordering::Greater, target),
                Instr::JumpIfNotGe { target } => {
                    jump_unless!(>=, Ordering::Greater | Ordering::Equal, target)
                }
                Instr::JumpIfNotEq { target } => jump_eq!(true, target),
                Instr::JumpIfNotNe { target } => jump_eq!(false, target),
                Instr::List { len } => {
                    let n = len as usize;
                    let items: Vec<Value> = st[sp - n..sp].iter_mut().map(std::mem::take).collect();
                    sp -= n;
                    push!(Value::list(items));
                    heap_check!();
                }
                Instr::Map { len } => {
                    let n = len as usize;
                    let first = sp - 2 * n;
                    let mut entries = Entries::with_capacity(n);
                    let mut bad = None;
                    for j in 0..n {
                        let k = std::mem::take(&mut st[first + 2 * j]);
                        let v = std::mem::take(&mut st[first + 2 * j + 1]);
                        match ops::map_key(&k) {
                            Ok(key) => {
                                entries.insert(key, v);
                            }
                            Err(e) => bad = bad.or(Some(e)),
                        }
                    }
                    sp = first;
                    if let Some(e) = bad {
                        break Raise::Native(e);
                    }
                    push!(Value::map(entries));
                    heap_check!();
                }
                Instr::GetIndex {} => {
                    let r = ops::get_index(&st[sp - 2], &st[sp - 1]);
                    let _k = pop!();
                    match r {
                        Ok(v) => st[sp - 1] = v,
                        Err(e) => break Raise::Native(e),
                    }
                }
                Instr::SetIndex {} => {
                    let v = pop!();
                    let k = pop!();
                    let c = pop!();
                    if let Err(e) = ops::set_index(&c, &k, v) {
                        break Raise::Native(e);
                    }
                    heap_check!();
                }
                Instr::IterStart {} => {
                    match &st[sp - 1] {
                        Value::List(_) | Value::Map(_) | Value::Range(_) => {}
                        Value::Str(_) => break err(
                            "TypeError",
                            "strings are not iterable (index a position with slice(s, i, i + 1), or split(s, sep))",
                        ),
                        other => {
                            break type_err("cannot iterate over", other);
                        }
                    }
                    push!(Value::Int(0));
                }
                Instr::IterNext { target } | Instr::IterNext2 { target } => {
                    let pair = matches!(instr, Instr::IterNext2 { .. });
                    let i = match &st[sp - 1] {
                        Value::Int(i) if *i >= 0 => *i,
                        _ => break err("TypeError", "bad iteration cursor"),
                    };
                    let next: Option<(Value, Value)> = match &st[sp - 2] {
                        Value::List(l) => l.get(i as usize).map(|v| (Value::Int(i), v)),
                        Value::Map(m) => m
                            .entries()
                            .get_index(i as usize)
                            .map(|(k, v)| (k.to_value(), v.clone())),
                        Value::Range(r) => {
                            if (i as u64) < r.len() {
                                Some((Value::Int(i), Value::Int(r.start.wrapping_add(i))))
                            } else {
                                None
                            }
                        }
                        other => {
                            break type_err("cannot iterate over", other);
                        }
                    };
                    match next {
                        Some((k, v)) => {
                            let Some(next_i) = i.checked_add(1) else {
                                break err("Overflow", "iteration cursor overflow");
                            };
                            put(&mut st[sp - 1], Value::Int(next_i));
                            if pair {
                                push!(k);
                                push!(v);
                            } else if matches!(&st[sp - 2], Value::Map(_)) {
                                push!(k);
                            } else {
                                push!(v);
                            }
                        }
                        None => {
                            let _ = pop!();
                            let _ = pop!();
                            pc = target as usize;
                        }
                    }
                }
                Instr::TryBegin { handler } => handlers.push(Handler {
                    frame: frames.len().saturating_sub(1) as u32,
                    pc: handler,
                    sp: sp as u32,
                }),
                Instr::TryEnd {} => {
                    handlers.pop();
                }
                Instr::Throw {} => {
                    let v = pop!();
                    break Raise::Thrown(v);
                }
                Instr::Spawn {} => {
                    let fv = pop!();
                    let idx = match &fv {
                        Value::Function(c) => c.index,
                        other => {
                            break type_err("cannot spawn a", other);
                        }
                    };
                    match prog.get(idx) {
                        Some(callee) if callee.arity == 0 => {}
                        _ => break err("ArityError", "spawn needs a function of no arguments"),
                    }
                    let (stack, frames) = ctx.spare.borrow_mut().task();
                    let mut task = Task::idle(stack, frames);
                    task.fill_stack(prog, idx, fv, 0);
                    task.enter(prog, idx);
                    let id = ctx.free_slots.pop().unwrap_or(ctx.tasks.len() as u32);
                    let handle = Rc::new(TaskHandle { id: u64::from(id) });
                    task.handle = Rc::downgrade(&handle);
                    match ctx.tasks.get_mut(id as usize) {
                        Some(slot) => *slot = Some(task),
                        None => ctx.tasks.push(Some(task)),
                    }
                    ctx.queue.push_back(id);
                    push!(Value::Task(handle));
                    heap_check!();
                }
                Instr::Await {} => {
                    let h = pop!();
                    let id = match &h {
                        Value::Task(t) => t.id,
                        other => {
                            break type_err("cannot await a", other);
                        }
                    };
                    let id = u32::try_from(id).unwrap_or(u32::MAX);
                    if id == ctx.self_id {
                        break err("ValueError", "a task cannot await itself");
                    }
                    let Some(Some(target)) = ctx.tasks.get_mut(id as usize) else {
                        break err("ValueError", "that task is not part of this execution");
                    };
                    match &target.result {
                        Some(Ok(v)) => {
                            target.awaited = true;
                            let v = v.clone();
                            push!(v);
                        }
                        Some(Err(r)) => {
                            target.awaited = true;
                            break Raise::Rethrow(r.clone());
                        }
                        None => {
                            target.waiters.push(ctx.self_id);
                            *state = TaskState::AwaitTask(id);
                            save!();
                            break 'reload Exit::Suspend;
                        }
                    }
                }
                Instr::Remote { func, argc } | Instr::RemoteElse { func, argc, .. } => {
                    let fallback = match instr {
                        Instr::RemoteElse { fallback, .. } => Some(fallback),
                        _ => None,
                    };
                    let first = sp - argc as usize - 1;
                    let mut values = Vec::with_capacity(argc as usize + 1);
                    let mut bad = None;
                    for slot in &st[first..sp] {
                        match convert::export(slot) {
                            Ok(p) => values.push(p),
                            Err(e) => {
                                bad = Some(e);
                                break;
                            }
                        }
                    }
                    for slot in &mut st[first..sp] {
                        *slot = Value::Nil;
                    }
                    sp = first;
                    if let Some(e) = bad {
                        break Raise::Vm(e);
                    }
                    let target = values.remove(0);
                    if let Err(e) = crate::hop::HopTarget::parse(&target) {
                        break err(e.kind, &e.message);
                    }
                    let idx = f.refs[func as usize];
                    let id = *ctx.next_request;
                    *ctx.next_request += 1;
                    ctx.requests.push(RemoteRequest {
                        id,
                        target,
                        func: prog.funcs[idx as usize].id,
                        args: values,
                    });
                    ctx.pending.insert(id, (ctx.self_id, fallback));
                    *state = TaskState::AwaitRemote(id);
                    save!();
                    break 'reload Exit::Suspend;
                }
            }
        };

        // Raise: record where, then unwind (next turn of 'reload).
        if let Some(top) = frames.last_mut() {
            top.pc = pc as u32;
        }
        let (value, from_vm) = match raise {
            Raise::Vm(v) | Raise::Native(NativeError::Throw(v)) => (v, true),
            Raise::Native(NativeError::MemoryLimit) => {
                *task_sp = sp;
                break 'reload Exit::Limit(LimitKind::MemoryLimit);
            }
            Raise::Thrown(v) => (v, false),
            Raise::Rethrow(r) => {
                pending = Some(r);
                continue 'reload;
            }
        };
        if from_vm && ctx.node.caller.is_some() {
            add_peer(&value, &ctx.node.here);
        }
        pending = Some(Raised {
            trace: trace(prog, frames, ctx.node),
            value,
        });
    };
    *budget = left;
    exit
}
