//! How values print (LANGUAGE.md §2 and §9.4): what `print`, `str`, `join` and `format`'s
//! `{}` show.
//!
//! Two forms: [`display`] is the top-level form (a string prints raw) and [`repr`] the
//! in-container form (a string prints as Rust's `{:?}` of `str`). Everything else prints the
//! same in both: `nil`, `true`, ints in decimal, floats as Rust's `{:?}` of `f64` (`1.0`,
//! `0.1`, `1e100`, `inf`, `NaN`), bytes as `b"..."` (printable ASCII raw except `"` and `\`,
//! which print `\"` and `\\`; `\n \t \r` as such; every other byte `\xNN`, lowercase), lists
//! `[1, "a", nil]`, maps `{"a": 1, 2: [3]}`, ranges `0..5`, functions `<fn NAME>` or `<fn>`,
//! tasks `<task>`.
//!
//! Invariants:
//! - Printing never recurses on the Rust stack: it walks an explicit stack of pending pieces,
//!   so arbitrarily deep nesting is safe on a small thread stack.
//! - A list or map that contains itself prints `[...]` / `{...}` where it recurs (the
//!   container is already being printed further out), as Python does: `a = []; push(a, a)`
//!   prints `[[...]]`. Shared but acyclic sub-values print in full every time.
//! - The fallible forms ([`try_display`], [`try_repr`], [`write_display`]) check the heap limit
//!   as the text grows, so printing a value whose text is exponentially larger than the value
//!   (a list holding the same sub-list twice, nested 60 deep) stops with
//!   `NativeError::MemoryLimit` instead of exhausting the process. The infallible forms end
//!   the text with `...` at that point.

use crate::heap;
use crate::native::NativeError;
use crate::value::Value;
use std::collections::HashSet;
use std::fmt::Write as _;

/// How often (in bytes of output) the heap limit is checked.
const CHECK_EVERY: usize = 16 * 1024;

/// A pending piece of output.
enum Piece {
    /// A value in the in-container form.
    Value(Value),
    Text(&'static str),
    /// The container at this address is finished; it may print again (it is no ancestor).
    Leave(usize),
}

/// The top-level text of a value (what `print` and `str` show). Never fails; if the text
/// would pass the heap limit it is cut short and ends with `...`.
pub fn display(value: &Value) -> String {
    let mut out = String::new();
    if write_value(&mut out, value, true).is_err() {
        out.push_str("...");
    }
    out
}

/// The in-container text of a value (strings quoted). Never fails, like [`display`].
pub fn repr(value: &Value) -> String {
    let mut out = String::new();
    if write_value(&mut out, value, false).is_err() {
        out.push_str("...");
    }
    out
}

/// [`display`], failing with `NativeError::MemoryLimit` if the text would pass the heap limit.
pub fn try_display(value: &Value) -> Result<String, NativeError> {
    let mut out = String::new();
    write_value(&mut out, value, true)?;
    Ok(out)
}

/// [`repr`], failing with `NativeError::MemoryLimit` if the text would pass the heap limit.
pub fn try_repr(value: &Value) -> Result<String, NativeError> {
    let mut out = String::new();
    write_value(&mut out, value, false)?;
    Ok(out)
}

/// Appends the top-level text of `value` to `out`, checking the heap limit as it grows.
pub fn write_display(out: &mut String, value: &Value) -> Result<(), NativeError> {
    write_value(out, value, true)
}

/// Appends `b"..."` for a byte string.
pub fn write_bytes(out: &mut String, data: &[u8]) {
    out.push_str("b\"");
    for &b in data {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'\r' => out.push_str("\\r"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push('"');
}

/// Appends a float as Rust's `{:?}` of `f64`.
pub fn write_float(out: &mut String, f: f64) {
    let _ = write!(out, "{f:?}");
}

/// Appends a scalar or leaf; returns `false` for lists and maps (handled by the caller).
fn write_leaf(out: &mut String, value: &Value, top: bool) -> bool {
    match value {
        Value::Nil => out.push_str("nil"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) => write_float(out, *f),
        Value::Str(s) if top => out.push_str(s.as_str()),
        Value::Str(s) => {
            let _ = write!(out, "{:?}", s.as_str());
        }
        Value::Bytes(b) => write_bytes(out, b.as_slice()),
        Value::Range(r) => {
            let _ = write!(out, "{}..{}", r.start, r.end);
        }
        Value::Function(f) => match &f.name {
            Some(name) => {
                let _ = write!(out, "<fn {name}>");
            }
            None => out.push_str("<fn>"),
        },
        Value::Task(_) => out.push_str("<task>"),
        Value::Cell(_) => out.push_str("<cell>"),
        Value::List(_) | Value::Map(_) => return false,
    }
    true
}

fn write_value(out: &mut String, value: &Value, top: bool) -> Result<(), NativeError> {
    if write_leaf(out, value, top) {
        return check(out);
    }
    let mut next_check = out.len() + CHECK_EVERY;
    let mut pending = vec![Piece::Value(value.clone())];
    // Addresses of the lists and maps being printed (the ancestors of the current piece).
    let mut open: HashSet<usize> = HashSet::new();
    while let Some(piece) = pending.pop() {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Leave(addr) => {
                open.remove(&addr);
            }
            Piece::Value(v) => match &v {
                Value::List(l) => {
                    let items = l.items();
                    let elements = items.iter().map(|item| [Piece::Value(item.clone())]);
                    let addr = std::rc::Rc::as_ptr(l) as usize;
                    open_container(out, &mut open, &mut pending, addr, ("[", "]"), elements);
                }
                Value::Map(m) => {
                    let entries = m.entries();
                    let elements = entries.iter().map(|(k, item)| {
                        [
                            Piece::Value(k.to_value()),
                            Piece::Text(": "),
                            Piece::Value(item.clone()),
                        ]
                    });
                    let addr = std::rc::Rc::as_ptr(m) as usize;
                    open_container(out, &mut open, &mut pending, addr, ("{", "}"), elements);
                }
                leaf => {
                    write_leaf(out, leaf, false);
                }
            },
        }
        if out.len() >= next_check {
            check(out)?;
            next_check = out.len() + CHECK_EVERY;
        }
    }
    check(out)
}

/// Starts printing the container at `addr` between `brackets`: schedules its elements (each
/// a run of pieces), separated by `, `. A container that is already open (an ancestor of
/// itself) prints as `[...]` / `{...}` instead.
fn open_container<E>(
    out: &mut String,
    open: &mut HashSet<usize>,
    pending: &mut Vec<Piece>,
    addr: usize,
    (start, end): (&'static str, &'static str),
    elements: impl DoubleEndedIterator<Item = E> + ExactSizeIterator,
) where
    E: IntoIterator<Item = Piece>,
    E::IntoIter: DoubleEndedIterator,
{
    out.push_str(start);
    if !open.insert(addr) {
        out.push_str("...");
        out.push_str(end);
        return;
    }
    pending.push(Piece::Leave(addr));
    pending.push(Piece::Text(end));
    // `pending` is a stack: push the last piece first.
    for (i, element) in elements.enumerate().rev() {
        pending.extend(element.into_iter().rev());
        if i > 0 {
            pending.push(Piece::Text(", "));
        }
    }
}

/// Fails when the text built so far would not fit under the heap limit.
fn check(out: &str) -> Result<(), NativeError> {
    heap::reserve(out.len())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtins::test_util::{m as map, s};

    #[test]
    fn scalars() {
        assert_eq!(display(&Value::Nil), "nil");
        assert_eq!(display(&Value::Bool(true)), "true");
        assert_eq!(display(&Value::Bool(false)), "false");
        assert_eq!(display(&Value::Int(-42)), "-42");
        assert_eq!(display(&Value::Int(i64::MIN)), "-9223372036854775808");
        assert_eq!(display(&Value::range(0, 5)), "0..5");
        assert_eq!(display(&Value::range(-3, -10)), "-3..-10");
    }

    #[test]
    fn floats_follow_rust_debug() {
        let cases: &[(f64, &str)] = &[
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e100, "1e100"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "NaN"),
            (-0.0, "-0.0"),
            (2.5, "2.5"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e16"),
            (1e-7, "1e-7"),
            (0.3, "0.3"),
            (0.1 + 0.2, "0.30000000000000004"),
            (123456.789, "123456.789"),
        ];
        for (f, text) in cases {
            assert_eq!(display(&Value::Float(*f)), *text, "{f}");
            assert_eq!(repr(&Value::Float(*f)), *text, "{f}");
        }
    }

    #[test]
    fn strings_raw_at_top_quoted_inside() {
        assert_eq!(display(&s("a \"q\"\n")), "a \"q\"\n");
        assert_eq!(repr(&s("a \"q\"\n")), "\"a \\\"q\\\"\\n\"");
        assert_eq!(
            display(&Value::list(vec![
                s("a"),
                s("tab\there"),
                s("é😀"),
                s("\u{0}\\")
            ])),
            r#"["a", "tab\there", "é😀", "\0\\"]"#
        );
        assert_eq!(display(&Value::list(vec![s("it's")])), r#"["it's"]"#);
        assert_eq!(display(&Value::list(vec![s("\u{7f}")])), r#"["\u{7f}"]"#);
        assert_eq!(display(&s("")), "");
        assert_eq!(repr(&s("")), "\"\"");
    }

    #[test]
    fn bytes_rules() {
        let b = |data: &[u8]| display(&Value::bytes(data.to_vec()));
        assert_eq!(b(b""), "b\"\"");
        assert_eq!(b(b"abc XYZ 09 ~!"), "b\"abc XYZ 09 ~!\"");
        assert_eq!(b(b"\"\\"), r#"b"\"\\""#);
        assert_eq!(b(b"\n\t\r"), r#"b"\n\t\r""#);
        assert_eq!(
            b(&[0, 0x1f, 0x7f, 0x80, 0xff, 0xab]),
            r#"b"\x00\x1f\x7f\x80\xff\xab""#
        );
        assert_eq!(b(b"'"), "b\"'\"");
        // Same inside containers.
        assert_eq!(
            display(&Value::list(vec![Value::bytes(vec![0xffu8, b'a'])])),
            r#"[b"\xffa"]"#
        );
    }

    #[test]
    fn containers() {
        let l = Value::list(vec![Value::Int(1), s("a"), Value::Nil]);
        assert_eq!(display(&l), r#"[1, "a", nil]"#);
        assert_eq!(display(&Value::list(vec![])), "[]");
        assert_eq!(display(&map(vec![])), "{}");
        let m = map(vec![
            (s("a"), Value::Int(1)),
            (Value::Int(2), Value::list(vec![Value::Int(3)])),
        ]);
        assert_eq!(display(&m), r#"{"a": 1, 2: [3]}"#);
        let m = map(vec![
            (Value::Nil, Value::Bool(true)),
            (Value::Bool(false), Value::Float(1.0)),
            (Value::bytes(vec![1u8]), Value::range(0, 2)),
        ]);
        assert_eq!(display(&m), r#"{nil: true, false: 1.0, b"\x01": 0..2}"#);
        let nested = Value::list(vec![
            Value::list(vec![Value::list(vec![])]),
            map(vec![(s("k"), Value::list(vec![s("v")]))]),
        ]);
        assert_eq!(display(&nested), r#"[[[]], {"k": ["v"]}]"#);
        // Shared (not cyclic) sub-values print in full each time.
        let shared = Value::list(vec![Value::Int(1)]);
        let outer = Value::list(vec![shared.clone(), shared]);
        assert_eq!(display(&outer), "[[1], [1]]");
    }

    #[test]
    fn cycles() {
        let a = Value::list(vec![Value::Int(1)]);
        if let Value::List(l) = &a {
            let me = a.clone();
            l.mutate(|items| items.push(me));
        }
        assert_eq!(display(&a), "[1, [...]]");
        let m = map(vec![(s("x"), Value::Int(1))]);
        crate::ops::set_index(&m, &s("me"), m.clone()).unwrap();
        crate::ops::set_index(&m, &s("l"), a.clone()).unwrap();
        assert_eq!(display(&m), r#"{"x": 1, "me": {...}, "l": [1, [...]]}"#);
        // The list containing the map containing the list.
        if let Value::List(l) = &a {
            let mm = m.clone();
            l.mutate(|items| items.push(mm));
        }
        assert_eq!(
            display(&a),
            r#"[1, [...], {"x": 1, "me": {...}, "l": [...]}]"#
        );
        if let Value::List(l) = &a {
            l.mutate(Vec::clear);
        }
        if let Value::Map(x) = &m {
            x.mutate(|e| e.clear());
        }
    }

    #[test]
    fn very_deep_on_a_small_stack() {
        let text = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(|| {
                let mut v = Value::Int(7);
                for _ in 0..100_000 {
                    v = Value::list(vec![v]);
                }
                let text = display(&v);
                // Unnest without the recursive drop.
                let mut cur = v;
                while let Value::List(l) = &cur {
                    match l.mutate(|items| items.pop()) {
                        Some(n) => cur = n,
                        None => break,
                    }
                }
                text
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(text.len(), 200_001);
        assert!(text.starts_with("[[[[") && text.contains("7"));
    }

    #[test]
    fn exponential_text_hits_the_heap_limit() {
        let mut v = Value::list(vec![Value::Int(1)]);
        for _ in 0..40 {
            v = Value::list(vec![v.clone(), v]);
        }
        let old = heap::set_limit(heap::live() + (1 << 20));
        let r = try_display(&v);
        let cut = display(&v);
        heap::set_limit(old);
        assert!(matches!(r, Err(NativeError::MemoryLimit)));
        assert!(cut.ends_with("...") && cut.len() < (1 << 20) + CHECK_EVERY * 2);
    }
}
