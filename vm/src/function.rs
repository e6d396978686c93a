//! Runtime functions, closures and task handles.
//!
//! A verified blob member becomes an [`RtFunction`] when an execution links it (see
//! `interp::program`): its code, its constants materialised as [`Value`]s, its references
//! resolved to indices in the execution's function table, its natives resolved to callable
//! implementations. The interpreter addresses functions by that index, so a call never
//! touches a reference count.
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
#[derive(Debug)]
pub struct RtFunction {
    pub id: FunctionId,
    pub name: Option<Rc<str>>,
    pub arity: u16,
    pub locals: u16,
    pub upvals: u16,
    /// Operand-stack slots this function needs above its locals (computed by the verifier).
    pub max_stack: u32,
    pub code: Box<[Instr]>,
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
