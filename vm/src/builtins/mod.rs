//! The builtins written in Rust (LANGUAGE.md §7, §9), resolved by name with [`lookup`].
//!
//! Every builtin has the native signature [`BuiltinFn`]. `map`, `filter` and `await_all` are
//! written in Skiff (the compiler's prelude) and `sleep` suspends the task in the
//! interpreter, so [`lookup`] returns `None` for those four; every other name in
//! [`BUILTIN_NAMES`](crate::native::BUILTIN_NAMES) resolves.
//!
//! Areas: [`strings`] (text and bytes), [`collections`] (lists, maps, sequences),
//! [`numbers`] (conversions and math), [`misc`] (output, errors, time, node identity).
//!
//! Invariants:
//! - A wrong argument count raises `ArityError` naming the builtin and both counts
//!   (`len() takes 1 argument, got 2`); a wrong argument type raises `TypeError` naming the
//!   builtin, what it expects and the type it got (`len() expects a string, bytes, list, map
//!   or range, got int`).
//! - A builtin whose result size is computed from its arguments (`repeat`, `split`, `join`,
//!   `slice`, `format`, `str`, ...) calls [`crate::heap::reserve`] before allocating it, so
//!   one call can never allocate past the heap limit.
//! - Builtins never hold a list or map borrow while running code that could touch the same
//!   container (they call no Skiff code at all).

pub mod collections;
pub mod misc;
pub mod numbers;
pub mod strings;

use crate::native::{BuiltinFn, NativeError};
use crate::value::{ListObj, MapObj, Value};
use std::rc::Rc;

/// Whether `name` is a Rust builtin whose only effects are on the execution calling it:
/// every one but `print`, which writes to the execution's output. (`now_ms`, `here`,
/// `caller` and `peers` read the clock and the node; they change nothing.) A run that calls
/// only these can be dropped unfinished with nothing outside it changed — what a node's
/// inline answers rely on.
pub fn effect_free(name: &str) -> bool {
    name != "print" && lookup(name).is_some()
}

/// The Rust implementation of builtin `name`, or `None` (not a Rust builtin).
pub fn lookup(name: &str) -> Option<BuiltinFn> {
    Some(match name {
        "print" => misc::print,
        "len" => collections::len,
        "str" => strings::str,
        "int" => numbers::int,
        "float" => numbers::float,
        "type" => misc::type_of,
        "push" => collections::push,
        "pop" => collections::pop,
        "insert" => collections::insert,
        "remove" => collections::remove,
        "keys" => collections::keys,
        "values" => collections::values,
        "has" => collections::has,
        "contains" => collections::contains,
        "slice" => collections::slice,
        "join" => strings::join,
        "split" => strings::split,
        "upper" => strings::upper,
        "lower" => strings::lower,
        "trim" => strings::trim,
        "repeat" => collections::repeat,
        "sort" => collections::sort,
        "reverse" => collections::reverse,
        "abs" => numbers::abs,
        "min" => numbers::min,
        "max" => numbers::max,
        "sqrt" => numbers::sqrt,
        "floor" => numbers::floor,
        "ceil" => numbers::ceil,
        "round" => numbers::round,
        "bytes" => strings::bytes,
        "text" => strings::text,
        "sha256" => strings::sha256,
        "hex" => strings::hex,
        "assert" => misc::assert,
        "error" => misc::error,
        "format" => strings::format,
        "now_ms" => misc::now_ms,
        "here" => misc::here,
        "caller" => misc::caller,
        "peers" => misc::peers,
        _ => return None,
    })
}

/// Names in [`BUILTIN_NAMES`](crate::native::BUILTIN_NAMES) that are deliberately not Rust builtins.
pub const NOT_IN_RUST: &[&str] = &["map", "filter", "await_all", "sleep"];

fn plural(n: usize) -> &'static str {
    if n == 1 {
        "argument"
    } else {
        "arguments"
    }
}

/// `ArityError` unless exactly `n` arguments were given.
pub(crate) fn arity(name: &str, args: &[Value], n: usize) -> Result<(), NativeError> {
    if args.len() == n {
        Ok(())
    } else {
        Err(NativeError::error(
            "ArityError",
            format!("{name}() takes {n} {}, got {}", plural(n), args.len()),
        ))
    }
}

/// `ArityError` unless `min..=max` arguments were given.
pub(crate) fn arity_range(
    name: &str,
    args: &[Value],
    min: usize,
    max: usize,
) -> Result<(), NativeError> {
    if (min..=max).contains(&args.len()) {
        Ok(())
    } else if max == usize::MAX {
        Err(NativeError::error(
            "ArityError",
            format!(
                "{name}() takes at least {min} {}, got {}",
                plural(min),
                args.len()
            ),
        ))
    } else {
        Err(NativeError::error(
            "ArityError",
            format!(
                "{name}() takes {min} to {max} arguments, got {}",
                args.len()
            ),
        ))
    }
}

/// `TypeError`: `NAME() expects EXPECTED, got TYPE`.
pub(crate) fn type_error(name: &str, expected: &str, got: &Value) -> NativeError {
    NativeError::error(
        "TypeError",
        format!("{name}() expects {expected}, got {}", got.type_name()),
    )
}

pub(crate) fn value_error(message: impl Into<String>) -> NativeError {
    NativeError::error("ValueError", message)
}

pub(crate) fn index_error(message: impl Into<String>) -> NativeError {
    NativeError::error("IndexError", message)
}

pub(crate) fn expect_str<'a>(name: &str, what: &str, v: &'a Value) -> Result<&'a str, NativeError> {
    match v {
        Value::Str(s) => Ok(s.as_str()),
        other => Err(type_error(name, what, other)),
    }
}

pub(crate) fn expect_int(name: &str, what: &str, v: &Value) -> Result<i64, NativeError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(type_error(name, what, other)),
    }
}

pub(crate) fn expect_list<'a>(
    name: &str,
    what: &str,
    v: &'a Value,
) -> Result<&'a Rc<ListObj>, NativeError> {
    match v {
        Value::List(l) => Ok(l),
        other => Err(type_error(name, what, other)),
    }
}

pub(crate) fn expect_map<'a>(
    name: &str,
    what: &str,
    v: &'a Value,
) -> Result<&'a Rc<MapObj>, NativeError> {
    match v {
        Value::Map(m) => Ok(m),
        other => Err(type_error(name, what, other)),
    }
}

/// Converts a length to an int (every real length fits; a huge range may not).
pub(crate) fn len_value(len: u64) -> Result<Value, NativeError> {
    i64::try_from(len)
        .map(Value::Int)
        .map_err(|_| NativeError::error("Overflow", format!("length {len} does not fit in an int")))
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers for the builtin tests: call by name, read error kinds.

    use super::*;
    use crate::native::{NativeCtx, NodeInfo};
    use crate::value::{Entries, Key};

    /// Calls builtin `name` with no output captured.
    pub fn call(name: &str, args: &[Value]) -> Result<Value, NativeError> {
        let mut out = Vec::new();
        call_with_output(name, args, &mut out)
    }

    pub fn call_with_output(
        name: &str,
        args: &[Value],
        out: &mut Vec<u8>,
    ) -> Result<Value, NativeError> {
        let node = NodeInfo {
            here: "main".into(),
            caller: None,
            peers: ["a".to_owned(), "b".to_owned()].into(),
        };
        call_on(name, args, out, &node)
    }

    pub fn call_on(
        name: &str,
        args: &[Value],
        out: &mut Vec<u8>,
        node: &NodeInfo,
    ) -> Result<Value, NativeError> {
        let f = lookup(name).unwrap_or_else(|| panic!("no builtin {name}"));
        let mut ctx = NativeCtx { output: out, node };
        f(&mut ctx, args)
    }

    /// The text of a successful call's result as `repr` shows it.
    pub fn ok(name: &str, args: &[Value]) -> String {
        match call(name, args) {
            Ok(v) => crate::display::repr(&v),
            Err(e) => panic!("{name} failed: {}", err_text(e)),
        }
    }

    /// The error kind of a failed call.
    pub fn err(name: &str, args: &[Value]) -> String {
        match call(name, args) {
            Ok(v) => panic!("{name} succeeded with {}", crate::display::repr(&v)),
            Err(e) => err_parts(e).0,
        }
    }

    /// The error message of a failed call.
    pub fn msg(name: &str, args: &[Value]) -> String {
        match call(name, args) {
            Ok(v) => panic!("{name} succeeded with {}", crate::display::repr(&v)),
            Err(e) => err_parts(e).1,
        }
    }

    pub fn err_parts(e: NativeError) -> (String, String) {
        match e {
            NativeError::Throw(Value::Map(m)) => {
                let get = |k: &str| {
                    m.get(&Key::from_value(&Value::str(k)).unwrap())
                        .map(|v| crate::display::display(&v))
                        .unwrap_or_default()
                };
                (get("kind"), get("message"))
            }
            NativeError::Throw(other) => ("Thrown".into(), crate::display::display(&other)),
            NativeError::MemoryLimit => ("MemoryLimit".into(), String::new()),
        }
    }

    fn err_text(e: NativeError) -> String {
        let (k, m) = err_parts(e);
        format!("{k}: {m}")
    }

    pub fn s(text: &str) -> Value {
        Value::str(text)
    }

    pub fn i(n: i64) -> Value {
        Value::Int(n)
    }

    pub fn f(x: f64) -> Value {
        Value::Float(x)
    }

    pub fn b(data: &[u8]) -> Value {
        Value::bytes(data.to_vec())
    }

    pub fn l(items: Vec<Value>) -> Value {
        Value::list(items)
    }

    pub fn m(pairs: Vec<(Value, Value)>) -> Value {
        let mut e = Entries::new();
        for (k, v) in pairs {
            e.insert(Key::from_value(&k).unwrap(), v);
        }
        Value::map(e)
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;
    use crate::native::BUILTIN_NAMES;

    #[test]
    fn every_builtin_name_resolves_except_the_prelude_and_sleep() {
        for name in BUILTIN_NAMES {
            let found = lookup(name).is_some();
            assert_eq!(found, !NOT_IN_RUST.contains(name), "{name}");
        }
        assert!(lookup("nope").is_none());
        for name in NOT_IN_RUST {
            assert!(BUILTIN_NAMES.contains(name));
        }
    }

    #[test]
    fn effect_free_is_every_rust_builtin_but_print() {
        let with_effects: Vec<&str> = BUILTIN_NAMES
            .iter()
            .copied()
            .filter(|n| !effect_free(n))
            .collect();
        assert_eq!(
            with_effects,
            ["print", "map", "filter", "sleep", "await_all"]
        );
        assert!(effect_free("now_ms") && effect_free("here") && !effect_free("nope"));
    }

    #[test]
    fn arity_errors_name_the_builtin_and_counts() {
        assert_eq!(err("len", &[]), "ArityError");
        assert_eq!(msg("len", &[i(1), i(2)]), "len() takes 1 argument, got 2");
        assert_eq!(msg("slice", &[s("a")]), "slice() takes 3 arguments, got 1");
        assert_eq!(msg("assert", &[]), "assert() takes 1 to 2 arguments, got 0");
        assert_eq!(
            msg("format", &[]),
            "format() takes at least 1 argument, got 0"
        );
        assert_eq!(msg("now_ms", &[i(1)]), "now_ms() takes 0 arguments, got 1");
        // Every builtin checks its count: call each with 9 arguments.
        for name in BUILTIN_NAMES {
            if NOT_IN_RUST.contains(name) || ["print", "format"].contains(name) {
                continue;
            }
            let args = vec![Value::Nil; 9];
            assert_eq!(err(name, &args), "ArityError", "{name}");
        }
    }

    #[test]
    fn type_errors_name_the_builtin_and_type() {
        assert_eq!(
            msg("len", &[i(1)]),
            "len() expects a string, bytes, list, map or range, got int"
        );
        assert_eq!(err("upper", &[i(1)]), "TypeError");
        assert!(msg("upper", &[i(1)]).starts_with("upper() expects"));
    }
}
