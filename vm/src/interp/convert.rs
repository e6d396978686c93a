//! `Value` ↔ [`Portable`] at the execution boundary (send-copy semantics).
//!
//! Export deep-copies: lists and maps are copied (a list shared twice is copied twice), a
//! cyclic list or map raises `TypeError "cannot send a cyclic value"`, a task raises
//! `TypeError`, a closure becomes its function id plus copies of its cells' values. Import
//! builds fresh values; a closure is re-linked from the store and gets fresh cells.
//! [`import_data`] is import for stores that hold data only: it refuses any function.
//!
//! Invariants:
//! - Neither direction recurses deeper than [`MAX_DEPTH`] levels (deeper values are refused
//!   with a `TypeError`), so a hostile value cannot overflow a small thread stack.
//! - Import never panics: a missing blob or a capture count that does not match the
//!   function's upvalues is an error value.

use super::program::Program;
use crate::function::{Closure, HostNative};
use crate::portable::Portable;
use crate::store::CodeStore;
use crate::value::{CellObj, Entries, Key, Value};
use std::collections::HashMap;
use std::rc::Rc;

/// Deepest nesting exported or imported.
pub const MAX_DEPTH: usize = 128;

fn type_error(msg: impl Into<String>) -> Value {
    Value::error("TypeError", msg)
}

/// Deep-copies `value` out of the execution.
pub fn export(value: &Value) -> Result<Portable, Value> {
    let mut path: Vec<*const ()> = Vec::new();
    export_in(value, &mut path)
}

/// [`export`], taking the value: a bytes value held nowhere else gives its buffer up instead
/// of sharing it. On failure the value is given back as it was ([`export`] of it says why).
pub fn export_owned(value: Value) -> Result<Portable, Value> {
    match value {
        Value::Bytes(b) => Ok(Portable::Bytes(match Rc::try_unwrap(b) {
            Ok(only) => only.into_bytes(),
            Err(shared) => shared.to_bytes(),
        })),
        value => export(&value).map_err(|_| value),
    }
}

fn export_in(value: &Value, path: &mut Vec<*const ()>) -> Result<Portable, Value> {
    if path.len() >= MAX_DEPTH {
        return Err(type_error("value is nested too deeply to send"));
    }
    Ok(match value {
        Value::Nil => Portable::Nil,
        Value::Bool(b) => Portable::Bool(*b),
        Value::Int(i) => Portable::Int(*i),
        Value::Float(x) => Portable::Float(*x),
        Value::Str(s) => Portable::Str(s.as_str().to_string()),
        Value::Bytes(b) => Portable::Bytes(b.to_bytes()),
        Value::Range(r) => Portable::Range(r.start, r.end),
        Value::List(l) => {
            let ptr = Rc::as_ptr(l) as *const ();
            if path.contains(&ptr) {
                return Err(type_error("cannot send a cyclic value"));
            }
            path.push(ptr);
            // Exporting reads and never mutates, so the list stays borrowed throughout.
            let out = l
                .items()
                .iter()
                .map(|v| export_in(v, path))
                .collect::<Result<Vec<_>, _>>();
            path.pop();
            Portable::List(out?)
        }
        Value::Map(m) => {
            let ptr = Rc::as_ptr(m) as *const ();
            if path.contains(&ptr) {
                return Err(type_error("cannot send a cyclic value"));
            }
            path.push(ptr);
            // Exporting reads and never mutates, so the map stays borrowed throughout.
            let entries = m.entries();
            let mut out = Vec::with_capacity(entries.len());
            for (k, v) in entries.iter() {
                let pair =
                    export_in(&k.to_value(), path).and_then(|k| Ok((k, export_in(v, path)?)));
                match pair {
                    Ok(p) => out.push(p),
                    Err(e) => {
                        path.pop();
                        return Err(e);
                    }
                }
            }
            path.pop();
            Portable::Map(out)
        }
        Value::Function(c) => {
            let ptr = Rc::as_ptr(c) as *const ();
            if path.contains(&ptr) {
                return Err(type_error("cannot send a cyclic value"));
            }
            path.push(ptr);
            let cells: Vec<Value> = c.upvals.iter().map(|u| u.value.borrow().clone()).collect();
            let out = cells
                .iter()
                .map(|v| export_in(v, path))
                .collect::<Result<Vec<_>, _>>();
            path.pop();
            Portable::Function {
                func: c.func,
                captures: out?,
            }
        }
        Value::Task(_) => return Err(type_error("cannot send a task")),
        Value::Cell(c) => export_in(&c.value.borrow().clone(), path)?,
    })
}

/// What import needs to re-link closures.
pub struct Linker<'a> {
    pub program: &'a mut Program,
    pub store: &'a CodeStore,
    pub natives: &'a HashMap<String, HostNative>,
}

/// Builds a fresh value from a portable one.
pub fn import(p: &Portable, linker: &mut Linker<'_>) -> Result<Value, Value> {
    import_in(p, &mut Ok(linker), 0)
}

/// Builds a fresh value from a portable one that holds data only; a function anywhere in it
/// is refused with `TypeError "{what} cannot hold functions"`.
pub fn import_data(p: &Portable, what: &str) -> Result<Value, Value> {
    import_in(p, &mut Err(what), 0)
}

/// How import treats functions: re-link them (`Ok`), or refuse them, naming the store.
type FunctionImport<'l, 'a> = Result<&'l mut Linker<'a>, &'l str>;

fn import_in(
    p: &Portable,
    linker: &mut FunctionImport<'_, '_>,
    depth: usize,
) -> Result<Value, Value> {
    if depth >= MAX_DEPTH {
        return Err(type_error("value is nested too deeply"));
    }
    Ok(match p {
        Portable::Nil => Value::Nil,
        Portable::Bool(b) => Value::Bool(*b),
        Portable::Int(i) => Value::Int(*i),
        Portable::Float(x) => Value::Float(*x),
        Portable::Str(s) => Value::str(s.as_str()),
        Portable::Bytes(b) => Value::bytes(b.clone()),
        Portable::Range(a, b) => Value::range(*a, *b),
        Portable::List(items) => Value::list(
            items
                .iter()
                .map(|v| import_in(v, linker, depth + 1))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Portable::Map(entries) => {
            let mut out = Entries::with_capacity(entries.len());
            for (k, v) in entries {
                let k = import_in(k, linker, depth + 1)?;
                let key = Key::from_value(&k)
                    .ok_or_else(|| type_error(format!("a map key cannot be {}", k.type_name())))?;
                out.insert(key, import_in(v, linker, depth + 1)?);
            }
            Value::map(out)
        }
        Portable::Function { func, captures } => {
            let linker = match linker {
                Ok(linker) => &mut **linker,
                Err(what) => return Err(type_error(format!("{what} cannot hold functions"))),
            };
            let index = linker
                .program
                .link(linker.store, linker.natives, *func)
                .map_err(|e| match e {
                    super::program::LinkError::MissingNative(_) => {
                        Value::error("MissingNative", e.to_string())
                    }
                    _ => Value::error("ValueError", e.to_string()),
                })?;
            let (upvals, name) = match linker.program.get(index) {
                Some(f) => (f.upvals as usize, f.name.clone()),
                None => (0, None),
            };
            if upvals != captures.len() {
                return Err(type_error(format!(
                    "function {func} needs {upvals} captures, got {}",
                    captures.len()
                )));
            }
            let cells = captures
                .iter()
                .map(|v| {
                    Ok(CellObj::new(import_in(
                        v,
                        &mut Ok(&mut *linker),
                        depth + 1,
                    )?))
                })
                .collect::<Result<Vec<_>, Value>>()?;
            Value::Function(Rc::new(Closure {
                func: *func,
                name,
                upvals: cells.into_boxed_slice(),
                index,
                charge: crate::heap::Charge::new(32 + 8 * captures.len()),
            }))
        }
    })
}
