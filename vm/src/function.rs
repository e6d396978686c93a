//! Runtime functions, closures and task handles.
//!
//! A verified blob member becomes an [`RtFunction`] when an execution links it (see
//! `interp::program`): its code, its constants materialised as [`Value`]s, its references
//! resolved to indices in the execution's function table, its natives resolved to callable
//! implementations. The interpreter addresses functions by that index, so a call never
//! touches a reference count. Linking also translates the code into the interpreter's
//! internal form ([`Op`], [`translate`]): same indices, hot instruction sequences fused.
//!
//! Invariants:
//! - An `RtFunction` exists only for code that passed the verifier (`verify`), so its
//!   operands are in range and its stack depth never exceeds `max_stack`.
//! - `Closure::index` is the function's index in the table of the execution that created
//!   the closure. Closures never leave their execution as `Value`s: at every boundary they are
//!   exported as `Portable::Function` (function id + copied captures) and re-linked on import.
//! - A function with `upvals > 0` is only ever entered through a closure value that sits in
//!   the stack slot just below the frame's base (`Call`, `Spawn`, host start), which is where
//!   `GetUpval`/`SetUpval` find their cells.

use crate::blob::FunctionId;
use crate::native::{BuiltinFn, NativeCtx, NativeError};
use crate::opcodes::Instr;
use crate::value::{CellObj, Value};
use std::rc::Rc;

/// A host native: any Rust closure with the builtin calling convention.
pub type HostNative = Rc<dyn Fn(&mut NativeCtx<'_>, &[Value]) -> Result<Value, NativeError>>;

/// A resolved `CallNative` target.
#[derive(Clone)]
pub enum NativeImpl {
    /// A builtin of the language (`builtins::lookup`).
    Builtin(BuiltinFn),
    /// A native registered on the engine by the host.
    Host(HostNative),
    /// `sleep(ms)`: suspends the calling task; implemented by the scheduler.
    Sleep,
}

impl std::fmt::Debug for NativeImpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NativeImpl::Builtin(_) => f.write_str("Builtin"),
            NativeImpl::Host(_) => f.write_str("Host"),
            NativeImpl::Sleep => f.write_str("Sleep"),
        }
    }
}

/// A linked, verified function ready to run.
#[derive(Debug, Clone)]
pub struct RtFunction {
    pub id: FunctionId,
    pub name: Option<Rc<str>>,
    pub arity: u16,
    pub locals: u16,
    pub upvals: u16,
    /// Operand-stack slots this function needs above its locals (computed by the verifier).
    pub max_stack: u32,
    pub code: Box<[Instr]>,
    /// The code in the interpreter's internal form ([`translate`]): one [`Op`] per
    /// instruction, same indices as `code`.
    pub ops: Box<[Op]>,
    pub consts: Box<[Value]>,
    /// Reference table, resolved to indices in the execution's function table.
    pub refs: Box<[u32]>,
    /// Native table, resolved.
    pub natives: Box<[NativeImpl]>,
    /// Native names, for error messages.
    pub native_names: Box<[Rc<str>]>,
    /// Source file (debug info), if known.
    pub file: Option<Rc<str>>,
    /// `(line, col)` per instruction (debug info); empty when absent.
    pub positions: Box<[(u32, u32)]>,
    /// The one function value of a capture-free function, made on first use by `Function`:
    /// a top-level function is the same value (`==`) wherever it is named.
    pub shared_value: std::cell::OnceCell<Value>,
}

impl RtFunction {
    /// Slots a frame of this function occupies: locals plus its maximum operand depth.
    pub fn frame_size(&self) -> usize {
        self.locals as usize + self.max_stack as usize
    }
}

/// A comparison of a fused compare-and-branch. The discriminant is the set of outcomes
/// (bit 0: less, bit 1: equal, bit 2: greater) for which it holds, so testing it is a shift,
/// not a branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Cmp {
    Lt = 0b001,
    Le = 0b011,
    Gt = 0b100,
    Ge = 0b110,
    Eq = 0b010,
    Ne = 0b101,
}

impl Cmp {
    /// Whether the comparison holds for two integers.
    #[inline(always)]
    pub fn holds(self, x: i64, y: i64) -> bool {
        let outcome = u32::from(x >= y) + u32::from(x > y);
        (self as u8 >> outcome) & 1 != 0
    }

    /// The comparison of `Lt` ... `Ne`.
    fn of(instr: Instr) -> Option<Cmp> {
        Some(match instr {
            Instr::Lt {} => Cmp::Lt,
            Instr::Le {} => Cmp::Le,
            Instr::Gt {} => Cmp::Gt,
            Instr::Ge {} => Cmp::Ge,
            Instr::Eq {} => Cmp::Eq,
            Instr::Ne {} => Cmp::Ne,
            _ => return None,
        })
    }

    fn of_jump(instr: Instr) -> Option<(Cmp, u32)> {
        Some(match instr {
            Instr::JumpIfNotLt { target } => (Cmp::Lt, target),
            Instr::JumpIfNotLe { target } => (Cmp::Le, target),
            Instr::JumpIfNotGt { target } => (Cmp::Gt, target),
            Instr::JumpIfNotGe { target } => (Cmp::Ge, target),
            Instr::JumpIfNotEq { target } => (Cmp::Eq, target),
            Instr::JumpIfNotNe { target } => (Cmp::Ne, target),
            _ => return None,
        })
    }
}

/// Integer arithmetic of a fused op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl Arith {
    /// The integer result, or `None` where the instruction would not produce a plain integer
    /// (overflow, division by zero): the interpreter then runs the original instructions.
    #[inline(always)]
    pub fn apply(self, x: i64, y: i64) -> Option<i64> {
        match self {
            Arith::Add => x.checked_add(y),
            Arith::Sub => x.checked_sub(y),
            Arith::Mul => x.checked_mul(y),
            Arith::Div => x.checked_div(y),
            Arith::Rem => x.checked_rem(y),
        }
    }

    fn of(instr: Instr) -> Option<Arith> {
        Some(match instr {
            Instr::Add {} => Arith::Add,
            Instr::Sub {} => Arith::Sub,
            Instr::Mul {} => Arith::Mul,
            Instr::Div {} => Arith::Div,
            Instr::Rem {} => Arith::Rem,
            _ => return None,
        })
    }
}

/// The interpreter's internal instruction form, made from verified code when a function is
/// linked (never encoded, so blob bytes and hashes are unaffected).
///
/// `ops[pc]` stands for the instructions starting at `code[pc]`: either one instruction as is
/// ([`Op::I`], always run by the general loop), one instruction with an integer fast path, or
/// a fused op covering the next few instructions (named in each doc line; [`Op::covers`]).
/// The covered instructions keep their own ops at their own indices, so jumps into the middle
/// of a fused sequence, handlers, saved pcs and debug positions all use the original indices.
/// An op only runs its fast path when every covered instruction would take its integer fast
/// path (no overflow, no division by zero, no call the fast path cannot make) and the budget
/// covers all of them; otherwise the interpreter runs `code[pc]` alone, which is exactly what
/// the unfused code would have done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// One instruction, run as is by the general loop.
    I(Instr),
    /// `GetLocal slot`.
    GetLocal { slot: u16 },
    /// `SetLocal slot` (fast when the value is an integer).
    SetLocal { slot: u16 },
    /// `Int value`.
    Int { value: i32 },
    /// `AddInt value`.
    AddInt { value: i32 },
    /// `Jump target`.
    Jump { target: u32 },
    /// `Add`/`Sub`/`Mul`/`Div`/`Rem`.
    Arith { op: Arith },
    /// `JumpIfNot<cmp> target` on the two values on top of the stack.
    JumpIfNot { cmp: Cmp, target: u32 },
    /// `CallFunction` whose reference is resolved: `callee` is the index in the execution's
    /// function table, and its arity is `argc` (checked at link time; a call with the wrong
    /// count stays [`Op::I`] and raises).
    Call { callee: u32, argc: u8 },
    /// `GetLocal a; AddInt value; CallFunction` of a one-argument `callee` (as [`Op::Call`]).
    LocalAddIntCall { a: u16, value: i32, callee: u32 },
    /// `Return`.
    Return,
    /// `Pop`.
    Pop,
    /// `JumpIfTrue target` (`when`) or `JumpIfFalse target`.
    JumpIf { when: bool, target: u32 },
    /// `Lt`/`Le`/`Gt`/`Ge`/`Eq`/`Ne` (fast on two integers).
    Compare { cmp: Cmp },
    /// `IterNext target` or (`pair`) `IterNext2 target` (fast over a list or a range).
    IterNext { pair: bool, target: u32 },
    /// `Call argc`: a call of the function value below the arguments.
    CallValue { argc: u8 },
    /// `GetUpval index`.
    GetUpval { index: u16 },
    /// `GetLocal a; GetLocal b; JumpIfNot<cmp> target`.
    JumpIfNotLL {
        cmp: Cmp,
        a: u16,
        b: u16,
        target: u32,
    },
    /// `GetLocal a; Int value; JumpIfNot<cmp> target`.
    JumpIfNotLI {
        cmp: Cmp,
        a: u16,
        value: i32,
        target: u32,
    },
    /// `Jump head` where `code[head..head + 3]` is `GetLocal a; GetLocal b; JumpIfNot<cmp>
    /// exit`: a loop's back edge and its condition. Continues at `head + 3` or `exit`.
    LoopLL {
        cmp: Cmp,
        a: u16,
        b: u16,
        head: u32,
        exit: u32,
    },
    /// `Jump head` where `code[head..head + 3]` is `GetLocal a; Int value; JumpIfNot<cmp>
    /// exit`.
    LoopLI {
        cmp: Cmp,
        a: u16,
        value: i32,
        head: u32,
        exit: u32,
    },
    /// `Jump head` where `code[head..head + 2]` is `IterNext exit; SetLocal slot`: a `for`
    /// loop's back edge, its next item stored in `slot` (3 instructions; 2 at the end, which
    /// continues at `exit`).
    LoopIter { slot: u16, head: u32, exit: u32 },
    /// `GetLocal a; Int value; <op>`.
    ArithLI { op: Arith, a: u16, value: i32 },
    /// `GetLocal a; GetLocal b; <op>`.
    ArithLL { op: Arith, a: u16, b: u16 },
    /// `GetLocal a; GetLocal b; Int c | GetLocal c; <inner>; <outer>; SetLocal d`:
    /// `d = a <outer> (b <inner> c)`, where `c` is a local slot if `c_local`, else a value.
    Arith3Set {
        outer: Arith,
        inner: Arith,
        c_local: bool,
        a: u16,
        b: u16,
        c: i32,
        d: u16,
    },
    /// `<op>; SetLocal a`.
    ArithSet { op: Arith, a: u16 },
    /// `<op>; Return`.
    ArithReturn { op: Arith },
    /// `GetLocal a; AddInt value; SetLocal b`.
    AddIntSet { a: u16, value: i32, b: u16 },
    /// `GetLocal a; AddInt step; SetLocal a; Jump head` where `code[head..head + 3]` is
    /// `GetLocal a; GetLocal bound; JumpIfNot<cmp> exit`: a counting loop's step, back edge
    /// and condition (`i = i + 1` closing `while i < n`). Continues at `head + 3` or `exit`.
    StepLoopLL {
        cmp: Cmp,
        a: u16,
        step: i16,
        bound: u16,
        head: u32,
        exit: u32,
    },
    /// `GetLocal a; AddInt value`.
    LocalAddInt { a: u16, value: i32 },
    /// `Jump target` where `code[target]` is `Return`: runs that `Return`.
    JumpReturn { target: u32 },
    /// `GetLocal slot; Jump target` where `code[target]` is `Return`: runs that `Return`.
    GetLocalJumpReturn { slot: u16, target: u32 },
    /// `CallNative` of the builtin `push` with two arguments (resolved at link time: a host
    /// native registered as `push` shadows the builtin and stays [`Op::I`]). Fast when the
    /// list has room for the item (no allocation, so the heap account does not change).
    Push,
    /// `GetLocal list; GetLocal value; CallNative push (as [`Op::Push`]); Pop`: the statement
    /// `push(list, value)` on two locals.
    LocalsPush { list: u16, value: u16 },
    /// `GetIndex` (fast on a list and an integer in range).
    GetIndex,
    /// `CallNative` of the builtin `len` with one argument (resolved at link time, as
    /// [`Op::Push`]); fast on a list.
    Len,
    /// `Int value; Lt`/`Le`/`Gt`/`Ge`/`Eq`/`Ne`: the top of the stack compared with a
    /// constant (fast when it is an integer), e.g. `x % 2 == 0`.
    CompareI { cmp: Cmp, value: i32 },
    /// `CallNative push (as [`Op::Push`]); Pop`: `push(list, value)` as a statement, its
    /// operands computed on the stack.
    PushPop,
    /// `GetLocal callee; GetLocal arg; Call 1`: `f(x)` with the function value and its one
    /// argument in locals (as [`Op::CallValue`]), the call a `map` or `filter` makes per item.
    CallLocal { callee: u16, arg: u16 },
}

impl Op {
    /// How many instructions of the original code this op stands for (and charges).
    pub fn covers(&self) -> usize {
        match self {
            Op::I(_)
            | Op::GetLocal { .. }
            | Op::SetLocal { .. }
            | Op::Int { .. }
            | Op::AddInt { .. }
            | Op::Jump { .. }
            | Op::Arith { .. }
            | Op::JumpIfNot { .. }
            | Op::Call { .. }
            | Op::Return
            | Op::Pop
            | Op::JumpIf { .. }
            | Op::Compare { .. }
            | Op::IterNext { .. }
            | Op::CallValue { .. }
            | Op::GetUpval { .. }
            | Op::GetIndex
            | Op::Len
            | Op::Push => 1,
            Op::LocalAddIntCall { .. } => 3,
            Op::ArithSet { .. }
            | Op::ArithReturn { .. }
            | Op::LocalAddInt { .. }
            | Op::PushPop
            | Op::CompareI { .. }
            | Op::JumpReturn { .. } => 2,
            Op::JumpIfNotLL { .. }
            | Op::JumpIfNotLI { .. }
            | Op::ArithLI { .. }
            | Op::ArithLL { .. }
            | Op::AddIntSet { .. }
            | Op::CallLocal { .. }
            | Op::GetLocalJumpReturn { .. } => 3,
            Op::LoopIter { .. } => 3,
            Op::LoopLL { .. } | Op::LoopLI { .. } | Op::LocalsPush { .. } => 4,
            Op::Arith3Set { .. } => 6,
            Op::StepLoopLL { .. } => 7,
        }
    }
}

/// Translates verified code into the internal form: one op per instruction (see [`Op`]).
/// `refs` is the function's reference table, resolved to function-table indices, and
/// `arity` gives the arity of a function by index (`None`: unknown, the call is not fused);
/// `is_builtin(n, name)` whether entry `n` of the function's native table resolved to the
/// builtin `name` (not a host native of that name).
pub fn translate(
    code: &[Instr],
    refs: &[u32],
    arity: impl Fn(u32) -> Option<u16>,
    is_builtin: impl Fn(u16, &str) -> bool,
) -> Box<[Op]> {
    // A `CallFunction` at `pc` as a resolved callee, if its argument count is right.
    let call = |pc: usize| match code.get(pc) {
        Some(&Instr::CallFunction { func, argc }) => refs
            .get(func as usize)
            .copied()
            .filter(|&callee| arity(callee) == Some(u16::from(argc)))
            .map(|callee| (callee, argc)),
        _ => None,
    };
    // The op of a `CallNative` at `pc` that `fast` runs: the builtin `push` with two
    // arguments, `len` with one.
    let native_op = |pc: usize| match code.get(pc) {
        Some(&Instr::CallNative { native, argc: 2 }) if is_builtin(native, "push") => {
            Some(Op::Push)
        }
        Some(&Instr::CallNative { native, argc: 1 }) if is_builtin(native, "len") => Some(Op::Len),
        _ => None,
    };
    (0..code.len())
        .map(|pc| fuse(code, pc, call, native_op))
        .collect()
}

/// The op for `code[pc]`: the longest fused pattern starting there, else the single op.
fn fuse(
    code: &[Instr],
    pc: usize,
    call: impl Fn(usize) -> Option<(u32, u8)>,
    native_op: impl Fn(usize) -> Option<Op>,
) -> Op {
    use Instr as I;
    let at = |k: usize| code.get(pc + k).copied();
    let push = |pc: usize| native_op(pc) == Some(Op::Push);
    let one = || single(code, pc, &call, &native_op);
    let jump = at(2).and_then(Cmp::of_jump);
    let arith = at(2).and_then(Arith::of);
    match (code[pc], at(1)) {
        (I::GetLocal { slot: a }, Some(I::GetLocal { slot: b })) => {
            let c = match at(2) {
                Some(I::Int { value }) => Some((false, value)),
                Some(I::GetLocal { slot }) => Some((true, i32::from(slot))),
                _ => None,
            };
            let (inner, outer) = (at(3).and_then(Arith::of), at(4).and_then(Arith::of));
            if let (Some((c_local, c)), Some(inner), Some(outer), Some(I::SetLocal { slot: d })) =
                (c, inner, outer, at(5))
            {
                Op::Arith3Set {
                    outer,
                    inner,
                    c_local,
                    a,
                    b,
                    c,
                    d,
                }
            } else if let Some((cmp, target)) = jump {
                Op::JumpIfNotLL { cmp, a, b, target }
            } else if let Some(op) = arith {
                Op::ArithLL { op, a, b }
            } else if push(pc + 2) && at(3) == Some(I::Pop {}) {
                Op::LocalsPush { list: a, value: b }
            } else if at(2) == Some(I::Call { argc: 1 }) {
                Op::CallLocal { callee: a, arg: b }
            } else {
                one()
            }
        }
        (I::GetLocal { slot: a }, Some(I::Int { value })) => {
            if let Some((cmp, target)) = jump {
                Op::JumpIfNotLI {
                    cmp,
                    a,
                    value,
                    target,
                }
            } else if let Some(op) = arith {
                Op::ArithLI { op, a, value }
            } else {
                one()
            }
        }
        (I::GetLocal { slot: a }, Some(I::AddInt { value })) => match (at(2), call(pc + 2)) {
            (Some(I::SetLocal { slot: b }), _) => {
                step_loop(code, pc, a, value, b).unwrap_or(Op::AddIntSet { a, value, b })
            }
            (_, Some((callee, 1))) => Op::LocalAddIntCall { a, value, callee },
            _ => Op::LocalAddInt { a, value },
        },
        (I::GetLocal { slot }, Some(I::Jump { target })) if returns(code, target) => {
            Op::GetLocalJumpReturn { slot, target }
        }
        (instr, Some(I::SetLocal { slot: a })) if Arith::of(instr).is_some() => Op::ArithSet {
            op: Arith::of(instr).unwrap_or(Arith::Add),
            a,
        },
        (instr, Some(I::Return {})) if Arith::of(instr).is_some() => Op::ArithReturn {
            op: Arith::of(instr).unwrap_or(Arith::Add),
        },
        (I::CallNative { .. }, Some(I::Pop {})) if push(pc) => Op::PushPop,
        (I::Int { value }, Some(instr)) if Cmp::of(instr).is_some() => Op::CompareI {
            cmp: Cmp::of(instr).unwrap_or(Cmp::Eq),
            value,
        },
        (I::Jump { target }, _) if returns(code, target) => Op::JumpReturn { target },
        (I::Jump { target: head }, _) => back_edge(code, head).unwrap_or_else(one),
        _ => one(),
    }
}

/// `Jump head` as a loop's back edge fused with the condition or iteration step at `head`
/// ([`Op::LoopLL`], [`Op::LoopLI`], [`Op::LoopIter`]), if `head` starts one of those.
fn back_edge(code: &[Instr], head: u32) -> Option<Op> {
    use Instr as I;
    let h = head as usize;
    let cond = code.get(h + 2).copied().and_then(Cmp::of_jump);
    match (code.get(h).copied(), code.get(h + 1).copied(), cond) {
        (Some(I::GetLocal { slot: a }), Some(I::GetLocal { slot: b }), Some((cmp, exit))) => {
            Some(Op::LoopLL {
                cmp,
                a,
                b,
                head,
                exit,
            })
        }
        (Some(I::GetLocal { slot: a }), Some(I::Int { value }), Some((cmp, exit))) => {
            Some(Op::LoopLI {
                cmp,
                a,
                value,
                head,
                exit,
            })
        }
        (Some(I::IterNext { target: exit }), Some(I::SetLocal { slot }), _) => {
            Some(Op::LoopIter { slot, head, exit })
        }
        _ => None,
    }
}

/// `GetLocal a; AddInt value; SetLocal b` at `pc` as [`Op::StepLoopLL`], if `b == a` and a
/// `Jump` follows whose back edge ([`back_edge`]) compares `a` with a local.
fn step_loop(code: &[Instr], pc: usize, a: u16, value: i32, b: u16) -> Option<Op> {
    let step = i16::try_from(value).ok().filter(|_| b == a)?;
    let Some(&Instr::Jump { target }) = code.get(pc + 3) else {
        return None;
    };
    match back_edge(code, target)? {
        Op::LoopLL {
            cmp,
            a: slot,
            b: bound,
            head,
            exit,
        } if slot == a => Some(Op::StepLoopLL {
            cmp,
            a,
            step,
            bound,
            head,
            exit,
        }),
        _ => None,
    }
}

/// Whether `code[target]` is `Return`.
fn returns(code: &[Instr], target: u32) -> bool {
    code.get(target as usize) == Some(&Instr::Return {})
}

/// The op of `code[pc]` on its own.
fn single(
    code: &[Instr],
    pc: usize,
    call: impl Fn(usize) -> Option<(u32, u8)>,
    native_op: impl Fn(usize) -> Option<Op>,
) -> Op {
    let instr = code[pc];
    match instr {
        Instr::GetLocal { slot } => Op::GetLocal { slot },
        Instr::SetLocal { slot } => Op::SetLocal { slot },
        Instr::Int { value } => Op::Int { value },
        Instr::AddInt { value } => Op::AddInt { value },
        Instr::Jump { target } => Op::Jump { target },
        Instr::Return {} => Op::Return,
        Instr::Pop {} => Op::Pop,
        Instr::JumpIfTrue { target } => Op::JumpIf { when: true, target },
        Instr::JumpIfFalse { target } => Op::JumpIf {
            when: false,
            target,
        },
        Instr::IterNext { target } => Op::IterNext {
            pair: false,
            target,
        },
        Instr::IterNext2 { target } => Op::IterNext { pair: true, target },
        Instr::Call { argc } => Op::CallValue { argc },
        Instr::GetUpval { index } => Op::GetUpval { index },
        Instr::GetIndex {} => Op::GetIndex,
        Instr::CallFunction { .. } => match call(pc) {
            Some((callee, argc)) => Op::Call { callee, argc },
            None => Op::I(instr),
        },
        Instr::CallNative { .. } => native_op(pc).unwrap_or(Op::I(instr)),
        instr => {
            if let Some(op) = Arith::of(instr) {
                Op::Arith { op }
            } else if let Some(cmp) = Cmp::of(instr) {
                Op::Compare { cmp }
            } else if let Some((cmp, target)) = Cmp::of_jump(instr) {
                Op::JumpIfNot { cmp, target }
            } else {
                Op::I(instr)
            }
        }
    }
}

/// A function value: code plus captured cells.
#[derive(Debug)]
pub struct Closure {
    pub func: FunctionId,
    pub name: Option<Rc<str>>,
    pub upvals: Box<[Rc<CellObj>]>,
    /// Index of the function in the creating execution's function table.
    pub index: u32,
    /// Heap accounting for this closure.
    pub charge: crate::heap::Charge,
}

/// A handle to a task of the running execution.
#[derive(Debug)]
pub struct TaskHandle {
    pub id: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use Instr as I;

    #[test]
    fn op_is_small() {
        assert!(std::mem::size_of::<Op>() <= 16);
    }

    #[test]
    fn translate_keeps_indices_and_fuses() {
        // fib: n < 2 ? n : fib(n - 1) + fib(n - 2)
        let code = [
            I::GetLocal { slot: 0 },
            I::Int { value: 2 },
            I::JumpIfNotLt { target: 5 },
            I::GetLocal { slot: 0 },
            I::Jump { target: 12 },
            I::GetLocal { slot: 0 },
            I::AddInt { value: -1 },
            I::CallFunction { func: 0, argc: 1 },
            I::GetLocal { slot: 0 },
            I::AddInt { value: -2 },
            I::CallFunction { func: 0, argc: 1 },
            I::Add {},
            I::Return {},
        ];
        let ops = translate(&code, &[7], |f| (f == 7).then_some(1), |_, _| false);
        assert_eq!(ops.len(), code.len());
        assert_eq!(
            ops[0],
            Op::JumpIfNotLI {
                cmp: Cmp::Lt,
                a: 0,
                value: 2,
                target: 5
            }
        );
        // the covered instructions keep their own ops (jumps may land on them)
        assert_eq!(ops[1], Op::Int { value: 2 });
        assert_eq!(
            ops[3],
            Op::GetLocalJumpReturn {
                slot: 0,
                target: 12
            }
        );
        assert_eq!(ops[4], Op::JumpReturn { target: 12 });
        assert_eq!(
            ops[5],
            Op::LocalAddIntCall {
                a: 0,
                value: -1,
                callee: 7
            }
        );
        assert_eq!(ops[6], Op::AddInt { value: -1 });
        assert_eq!(ops[7], Op::Call { callee: 7, argc: 1 });
        assert_eq!(ops[11], Op::ArithReturn { op: Arith::Add });
        assert_eq!(ops[12], Op::Return);
        // s = s + i % 7 inside `while i < n`
        let loop_body = [
            I::GetLocal { slot: 1 },
            I::GetLocal { slot: 0 },
            I::JumpIfNotLt { target: 13 },
            I::GetLocal { slot: 2 },
            I::GetLocal { slot: 1 },
            I::Int { value: 7 },
            I::Rem {},
            I::Add {},
            I::SetLocal { slot: 2 },
            I::GetLocal { slot: 1 },
            I::AddInt { value: 1 },
            I::SetLocal { slot: 1 },
            I::Jump { target: 0 },
            I::GetLocal { slot: 2 },
            I::Return {},
        ];
        let ops = translate(&loop_body, &[], |_| None, |_, _| false);
        assert!(matches!(ops[0], Op::JumpIfNotLL { cmp: Cmp::Lt, .. }));
        assert_eq!(ops[1], Op::GetLocal { slot: 0 });
        assert_eq!(
            ops[3],
            Op::Arith3Set {
                outer: Arith::Add,
                inner: Arith::Rem,
                c_local: false,
                a: 2,
                b: 1,
                c: 7,
                d: 2
            }
        );
        assert!(matches!(ops[4], Op::ArithLI { op: Arith::Rem, .. }));
        assert!(matches!(
            ops[7],
            Op::ArithSet {
                op: Arith::Add,
                a: 2
            }
        ));
        assert_eq!(
            ops[9],
            Op::StepLoopLL {
                cmp: Cmp::Lt,
                a: 1,
                step: 1,
                bound: 0,
                head: 0,
                exit: 13
            }
        );
        assert!(matches!(ops[10], Op::AddInt { value: 1 }));
        assert_eq!(
            ops[12],
            Op::LoopLL {
                cmp: Cmp::Lt,
                a: 1,
                b: 0,
                head: 0,
                exit: 13
            }
        );
        assert_eq!(ops[8], Op::SetLocal { slot: 2 });
        assert_eq!(ops.iter().map(Op::covers).max(), Some(7));
        // anything without a fast path stays as it is
        assert_eq!(
            translate(&[I::Nil {}], &[], |_| None, |_, _| false),
            vec![Op::I(I::Nil {})].into()
        );
        // a call with the wrong argument count is left to the general loop (it raises)
        let call = [I::CallFunction { func: 0, argc: 2 }];
        assert_eq!(
            translate(&call, &[3], |_| Some(1), |_, _| false)[0],
            Op::I(call[0])
        );
        // `push(xs, i)` as a statement, when native 0 is the builtin `push` (and native 1 the
        // builtin `len`; each fast only with its own argument count)
        let push = [
            I::GetLocal { slot: 1 },
            I::GetLocal { slot: 2 },
            I::CallNative { native: 0, argc: 2 },
            I::Pop {},
            I::GetLocal { slot: 1 },
            I::GetLocal { slot: 2 },
            I::CallNative { native: 0, argc: 2 },
            I::Return {},
            I::CallNative { native: 1, argc: 2 },
            I::CallNative { native: 0, argc: 1 },
            I::CallNative { native: 1, argc: 1 },
        ];
        let ops = translate(
            &push,
            &[],
            |_| None,
            |n, name| (n == 0 && name == "push") || (n == 1 && name == "len"),
        );
        assert_eq!(ops[0], Op::LocalsPush { list: 1, value: 2 });
        assert_eq!(ops[1], Op::GetLocal { slot: 2 });
        assert_eq!(ops[2], Op::PushPop);
        assert_eq!(ops[2].covers(), 2);
        assert_eq!(ops[4], Op::GetLocal { slot: 1 });
        assert_eq!(ops[6], Op::Push);
        assert_eq!(ops[8], Op::I(push[8]));
        assert_eq!(ops[9], Op::I(push[9]));
        assert_eq!(ops[10], Op::Len);
        // `f(x)` on two locals is one op; `f(a, b)` (two arguments after the function) is not
        let call_local = [
            I::GetLocal { slot: 1 },
            I::GetLocal { slot: 2 },
            I::Call { argc: 1 },
            I::GetLocal { slot: 3 },
            I::GetLocal { slot: 1 },
            I::GetLocal { slot: 2 },
            I::Call { argc: 2 },
        ];
        let ops = translate(&call_local, &[], |_| None, |_, _| false);
        assert_eq!(ops[0], Op::CallLocal { callee: 1, arg: 2 });
        assert_eq!(ops[0].covers(), 3);
        assert_eq!(ops[1], Op::GetLocal { slot: 2 });
        assert_eq!(ops[2], Op::CallValue { argc: 1 });
        assert_eq!(ops[4], Op::GetLocal { slot: 1 });
        assert_eq!(ops[6], Op::CallValue { argc: 2 });
        // a comparison with a constant (`... == 0`, `... < 5`); a jump into its second
        // instruction finds the comparison alone
        let compares = [I::Int { value: 0 }, I::Eq {}, I::Int { value: 5 }, I::Lt {}];
        let ops = translate(&compares, &[], |_| None, |_, _| false);
        assert_eq!(
            ops[0],
            Op::CompareI {
                cmp: Cmp::Eq,
                value: 0
            }
        );
        assert_eq!(ops[0].covers(), 2);
        assert_eq!(ops[1], Op::Compare { cmp: Cmp::Eq });
        assert_eq!(
            ops[2],
            Op::CompareI {
                cmp: Cmp::Lt,
                value: 5
            }
        );
        // `for i in xs { ... }`: the back edge runs the next `IterNext; SetLocal`
        let for_loop = [
            I::IterNext { target: 4 },
            I::SetLocal { slot: 2 },
            I::Nil {},
            I::Jump { target: 0 },
            I::Return {},
        ];
        let ops = translate(&for_loop, &[], |_| None, |_, _| false);
        assert_eq!(
            ops[3],
            Op::LoopIter {
                slot: 2,
                head: 0,
                exit: 4
            }
        );
        assert_eq!(ops[3].covers(), 3);
        // a host native named `push` is not the builtin: nothing is specialised
        let ops = translate(&push, &[], |_| None, |_, _| false);
        assert_eq!(ops[0], Op::GetLocal { slot: 1 });
        assert_eq!(ops[2], Op::I(push[2]));
    }
}
