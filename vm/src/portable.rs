//! Portable values: the deep-copied, thread-safe form a value takes when it leaves an
//! execution (remote captures, results, thrown values, host calls).
//!
//! The VM's own values share mutable lists and maps by reference inside one execution;
//! a `Portable` is a plain tree owned by nobody else, which is what send-copy semantics
//! mean. The wire codec encodes `Portable` values; the VM converts them to and from its own
//! values at the boundary.
//!
//! Invariants:
//! - A `Portable` is finite and acyclic (export rejects cyclic lists/maps and tasks).
//! - Large byte strings are `bytes::Bytes`, so a sidecar received from the network reaches
//!   the VM without being copied.
//! - A closure travels as its [`FunctionId`] plus copies of its captured cells' values, in
//!   upvalue order; the receiver must hold the function's blob (and its dependencies).

use crate::blob::FunctionId;

/// A deep copy of a Skiff value that can cross threads and the network.
#[derive(Clone, Debug, PartialEq)]
pub enum Portable {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(bytes::Bytes),
    List(Vec<Portable>),
    /// Entries in insertion order; keys are nil, bool, int, string or bytes.
    Map(Vec<(Portable, Portable)>),
    /// `start..end`, end exclusive.
    Range(i64, i64),
    /// A closure: its function and the copied values of its captured cells.
    Function {
        func: FunctionId,
        captures: Vec<Portable>,
    },
}

impl Portable {
    /// Every function a value refers to (closures, nested), so a caller can ship their blobs.
    /// Inlined for the common case, a value with no containers and no functions: every
    /// argument of every call is asked.
    #[inline]
    pub fn functions(&self, out: &mut Vec<FunctionId>) {
        if matches!(
            self,
            Portable::List(_) | Portable::Map(_) | Portable::Function { .. }
        ) {
            self.functions_within(out);
        }
    }

    fn functions_within(&self, out: &mut Vec<FunctionId>) {
        match self {
            Portable::List(items) => items.iter().for_each(|v| v.functions(out)),
            Portable::Map(entries) => entries.iter().for_each(|(k, v)| {
                k.functions(out);
                v.functions(out);
            }),
            Portable::Function { func, captures } => {
                if !out.contains(func) {
                    out.push(*func);
                }
                captures.iter().for_each(|v| v.functions(out));
            }
            _ => {}
        }
    }
}
