//! Runtime functions, closures and task handles (owned by the interpreter; see interp).
//!
//! Placeholder shapes so the value model compiles; the interpreter fills them in.

use crate::blob::FunctionId;
use crate::value::CellObj;
use std::rc::Rc;

/// A function value: code plus captured cells.
#[derive(Debug)]
pub struct Closure {
    pub func: FunctionId,
    pub name: Option<Rc<str>>,
    pub upvals: Box<[Rc<CellObj>]>,
}

/// A handle to a task of the running execution.
#[derive(Debug)]
pub struct TaskHandle {
    pub id: u64,
}
