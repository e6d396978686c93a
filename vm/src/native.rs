//! The calling convention shared by builtins and host natives.
//!
//! A native receives a [`NativeCtx`] (output sink and the node's identity) and its
//! arguments, and returns a value or a [`NativeError`]. Blobs name the natives they call;
//! names are resolved when a blob is loaded, so a missing native is found before anything
//! runs.

use crate::value::Value;
use std::sync::Arc;

/// Who is running: what `here()`, `caller()` and `peers()` report.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    /// Shared: a node hands its name to every execution.
    pub here: Arc<str>,
    pub caller: Option<Arc<str>>,
    /// Sorted, without `here`; shared, since a node hands the same list to every execution.
    pub peers: Arc<[String]>,
}

/// What a native may touch while it runs.
pub struct NativeCtx<'a> {
    /// Where `print` writes.
    pub output: &'a mut dyn std::io::Write,
    pub node: &'a NodeInfo,
}

/// How a native fails.
#[derive(Debug)]
pub enum NativeError {
    /// Raise this value (usually a [`Value::error`] map); catchable by the script.
    Throw(Value),
    /// A host-granted resource limit was hit; not catchable.
    MemoryLimit,
}

impl NativeError {
    /// A runtime error `{"kind": kind, "message": message}`.
    pub fn error(kind: &str, message: impl Into<String>) -> NativeError {
        NativeError::Throw(Value::error(kind, message))
    }
}

impl From<crate::heap::MemoryLimitExceeded> for NativeError {
    fn from(_: crate::heap::MemoryLimitExceeded) -> NativeError {
        NativeError::MemoryLimit
    }
}

/// The signature of every builtin.
pub type BuiltinFn = fn(&mut NativeCtx<'_>, &[Value]) -> Result<Value, NativeError>;

/// Every builtin name of the language (LANGUAGE.md §7). `map`, `filter` and `await_all`
/// are written in Skiff (the compiler's prelude); `sleep` suspends the task and is handled
/// by the interpreter; the rest are Rust functions in `builtins`.
pub const BUILTIN_NAMES: &[&str] = &[
    "print",
    "len",
    "str",
    "int",
    "float",
    "type",
    "push",
    "pop",
    "insert",
    "remove",
    "keys",
    "values",
    "has",
    "contains",
    "slice",
    "join",
    "split",
    "upper",
    "lower",
    "trim",
    "repeat",
    "sort",
    "reverse",
    "map",
    "filter",
    "abs",
    "min",
    "max",
    "sqrt",
    "floor",
    "ceil",
    "round",
    "bytes",
    "text",
    "sha256",
    "hex",
    "assert",
    "error",
    "format",
    "now_ms",
    "sleep",
    "await_all",
    "here",
    "caller",
    "peers",
];
