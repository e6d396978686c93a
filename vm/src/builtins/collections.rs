//! Collection builtins: `len push pop insert remove keys values has contains slice repeat
//! sort reverse`.
//!
//! Invariants:
//! - `sort`, `reverse`, `slice`, `repeat`, `keys` and `values` return new values; `push`,
//!   `pop`, `insert` and `remove` mutate their list or map in place.
//! - Lists are indexed by int from 0; an index outside the documented bounds raises
//!   `IndexError`, a non-int index `TypeError`.
//! - A value that cannot be a map key (float, list, map, range, function, task) passed where a
//!   map key is expected raises `TypeError`, as indexing a map with it does.
//! - Growth is reserved against the heap limit before it happens (`push` when the list must
//!   grow, `repeat`, `slice`).

use super::{
    arity, expect_int, expect_list, expect_map, index_error, len_value, type_error, value_error,
};
use crate::heap;
use crate::native::{NativeCtx, NativeError};
use crate::ops::{self, OBJECT_OVERHEAD, SLOT};
use crate::value::{Key, Value};
use std::cmp::Ordering;

/// `len(x)`: bytes of a string, bytes, list items, map entries, range length (`len(5..0)` is 0).
pub fn len(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("len", args, 1)?;
    match &args[0] {
        Value::Str(s) => len_value(s.as_str().len() as u64),
        Value::Bytes(b) => len_value(b.as_slice().len() as u64),
        Value::List(l) => len_value(l.len() as u64),
        Value::Map(m) => len_value(m.len() as u64),
        Value::Range(r) => len_value(r.len()),
        other => Err(type_error(
            "len",
            "a string, bytes, list, map or range",
            other,
        )),
    }
}

/// `push(list, v)`: appends; returns `nil`.
pub fn push(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("push", args, 2)?;
    let list = expect_list("push", "a list as argument 1", &args[0])?;
    {
        let items = list.items();
        if items.len() == items.capacity() {
            // The vector will double: make sure the new buffer fits first.
            heap::reserve(items.capacity().max(4).saturating_mul(SLOT))?;
        }
    }
    let v = args[1].clone();
    list.mutate(|items| items.push(v));
    Ok(Value::Nil)
}

/// `pop(list)`: removes and returns the last item; an empty list raises `IndexError`.
pub fn pop(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("pop", args, 1)?;
    let list = expect_list("pop", "a list", &args[0])?;
    list.mutate(|items| items.pop())
        .ok_or_else(|| index_error("pop() from an empty list"))
}

/// `insert(list, i, v)`: inserts before index `i`, `0 <= i <= len` (`i == len` appends);
/// returns `nil`.
pub fn insert(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("insert", args, 3)?;
    let list = expect_list("insert", "a list as argument 1", &args[0])?;
    let i = expect_int("insert", "an int index as argument 2", &args[1])?;
    let (len, cap) = {
        let items = list.items();
        (items.len(), items.capacity())
    };
    if i < 0 || i as u64 > len as u64 {
        return Err(index_error(format!(
            "insert() index {i} out of range for length {len}"
        )));
    }
    if len == cap {
        heap::reserve(cap.max(4).saturating_mul(SLOT))?;
    }
    let v = args[2].clone();
    list.mutate(|items| items.insert(i as usize, v));
    Ok(Value::Nil)
}

/// `remove(list, i)` removes and returns item `i` (`IndexError` unless `0 <= i < len`);
/// `remove(map, k)` removes key `k` and returns its value, or `nil` if absent (the other
/// entries keep their order).
pub fn remove(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("remove", args, 2)?;
    match &args[0] {
        Value::List(list) => {
            let i = expect_int("remove", "an int index as argument 2", &args[1])?;
            let len = list.len();
            if i < 0 || i as u64 >= len as u64 {
                return Err(index_error(format!(
                    "remove() index {i} out of range for length {len}"
                )));
            }
            Ok(list.mutate(|items| items.remove(i as usize)))
        }
        Value::Map(map) => {
            let key = ops::map_key(&args[1])?;
            Ok(map
                .mutate(|entries| entries.shift_remove(&key))
                .unwrap_or_default())
        }
        other => Err(type_error("remove", "a list or map as argument 1", other)),
    }
}

/// `keys(map)`: a new list of the keys, in insertion order.
pub fn keys(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("keys", args, 1)?;
    let map = expect_map("keys", "a map", &args[0])?;
    let entries = map.entries();
    reserve_list(entries.len())?;
    Ok(Value::list(entries.keys().map(Key::to_value).collect()))
}

/// `values(map)`: a new list of the values, in insertion order.
pub fn values(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("values", args, 1)?;
    let map = expect_map("values", "a map", &args[0])?;
    let entries = map.entries();
    reserve_list(entries.len())?;
    Ok(Value::list(entries.values().cloned().collect()))
}

/// `has(map, k)`: whether the map holds key `k` (even with a `nil` value).
pub fn has(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("has", args, 2)?;
    let map = expect_map("has", "a map as argument 1", &args[0])?;
    let key = ops::map_key(&args[1])?;
    Ok(Value::Bool(map.entries().contains_key(&key)))
}

/// `contains(x, v)`: substring of a string (`v` a string), sub-sequence of bytes (`v`
/// bytes), an element of a list (by `==`), a key of a map, or an int in a range (by `==`, so
/// `contains(0..3, 1.0)` is true).
pub fn contains(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("contains", args, 2)?;
    let found = match (&args[0], &args[1]) {
        (Value::Str(h), Value::Str(n)) => h.as_str().contains(n.as_str()),
        (Value::Str(_), other) => {
            return Err(type_error(
                "contains",
                "a string to look for in a string",
                other,
            ))
        }
        (Value::Bytes(h), Value::Bytes(n)) => {
            let (h, n) = (h.as_slice(), n.as_slice());
            n.is_empty() || h.windows(n.len()).any(|w| w == n)
        }
        (Value::Bytes(_), other) => {
            return Err(type_error("contains", "bytes to look for in bytes", other))
        }
        (Value::List(l), v) => {
            // Snapshot the items: `equals` never runs script code, but stay borrow-free.
            let items: Vec<Value> = l.items().clone();
            items.iter().any(|x| ops::equals(x, v))
        }
        (Value::Map(m), k) => m.entries().contains_key(&ops::map_key(k)?),
        (Value::Range(r), v) => {
            let n = match v {
                Value::Int(n) => Some(*n),
                Value::Float(f) if ops::equals(v, &Value::Int(*f as i64)) => Some(*f as i64),
                _ => None,
            };
            n.is_some_and(|n| r.start <= n && n < r.end)
        }
        (other, _) => {
            return Err(type_error(
                "contains",
                "a string, bytes, list, map or range",
                other,
            ))
        }
    };
    Ok(Value::Bool(found))
}

/// Validates `slice` bounds against a length.
fn slice_bounds(a: &Value, b: &Value, len: usize) -> Result<(usize, usize), NativeError> {
    let a = expect_int("slice", "an int start as argument 2", a)?;
    let b = expect_int("slice", "an int end as argument 3", b)?;
    if a < 0 || b < 0 || a > b || b as u64 > len as u64 {
        return Err(index_error(format!(
            "slice() bounds {a}..{b} out of range for length {len}"
        )));
    }
    Ok((a as usize, b as usize))
}

/// `slice(x, a, b)`: items/bytes `a..b` (end exclusive) of a string (byte offsets that must
/// lie on char boundaries, else `ValueError`), bytes or a list. Negative bounds, `a > b` or
/// `b > len` raise `IndexError`.
pub fn slice(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("slice", args, 3)?;
    match &args[0] {
        Value::Str(s) => {
            let text = s.as_str();
            let (a, b) = slice_bounds(&args[1], &args[2], text.len())?;
            if !text.is_char_boundary(a) || !text.is_char_boundary(b) {
                return Err(value_error(format!(
                    "slice() bounds {a}..{b} are not on character boundaries"
                )));
            }
            heap::reserve(b - a + OBJECT_OVERHEAD)?;
            Ok(Value::str(&text[a..b]))
        }
        Value::Bytes(data) => {
            let (a, b) = slice_bounds(&args[1], &args[2], data.as_slice().len())?;
            // Shares the buffer: no copy, so nothing to reserve.
            Ok(Value::bytes(data.to_bytes().slice(a..b)))
        }
        Value::List(l) => {
            let (a, b) = slice_bounds(&args[1], &args[2], l.len())?;
            reserve_list(b - a)?;
            Ok(Value::list(l.items()[a..b].to_vec()))
        }
        other => Err(type_error(
            "slice",
            "a string, bytes or list as argument 1",
            other,
        )),
    }
}

fn reserve_list(len: usize) -> Result<(), NativeError> {
    heap::reserve(len.saturating_mul(SLOT).saturating_add(OBJECT_OVERHEAD))?;
    Ok(())
}

/// `repeat(x, n)`: a string, bytes or list repeated `n` times (a list's items are shared,
/// not copied). Negative `n` raises `ValueError`.
pub fn repeat(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("repeat", args, 2)?;
    let n = expect_int("repeat", "an int count as argument 2", &args[1])?;
    if n < 0 {
        return Err(value_error(format!(
            "repeat() count must not be negative, got {n}"
        )));
    }
    let n = usize::try_from(n).map_err(|_| NativeError::MemoryLimit)?;
    let unit = |len: usize, slot: usize| -> Result<(), NativeError> {
        let total = len
            .checked_mul(n)
            .and_then(|t| t.checked_mul(slot))
            .filter(|t| *t <= isize::MAX as usize / 2)
            .ok_or(NativeError::MemoryLimit)?;
        heap::reserve(total.saturating_add(OBJECT_OVERHEAD))?;
        Ok(())
    };
    match &args[0] {
        Value::Str(s) => {
            unit(s.as_str().len(), 1)?;
            Ok(Value::str(s.as_str().repeat(n)))
        }
        Value::Bytes(b) => {
            unit(b.as_slice().len(), 1)?;
            Ok(Value::bytes(b.as_slice().repeat(n)))
        }
        Value::List(l) => {
            unit(l.len(), SLOT)?;
            let items = l.items();
            let mut out = Vec::with_capacity(items.len() * n);
            for _ in 0..n {
                out.extend(items.iter().cloned());
            }
            Ok(Value::list(out))
        }
        other => Err(type_error(
            "repeat",
            "a string, bytes or list as argument 1",
            other,
        )),
    }
}

/// A total order for sorting numbers: exact across int and float, NaN after everything.
fn number_order(a: &Value, b: &Value) -> Ordering {
    match ops::compare(a, b) {
        Ok(Some(o)) => o,
        _ => {
            let a_nan = matches!(a, Value::Float(f) if f.is_nan());
            let b_nan = matches!(b, Value::Float(f) if f.is_nan());
            a_nan.cmp(&b_nan)
        }
    }
}

/// `sort(list)`: a new list in ascending order, stable. All items must be numbers (ints and
/// floats mix; NaN sorts last) or all strings (byte-wise order), else `TypeError`.
pub fn sort(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("sort", args, 1)?;
    let list = expect_list("sort", "a list", &args[0])?;
    reserve_list(list.len())?;
    let mut items: Vec<Value> = list.items().clone();
    let all_numbers = items
        .iter()
        .all(|v| matches!(v, Value::Int(_) | Value::Float(_)));
    let all_strings = items.iter().all(|v| matches!(v, Value::Str(_)));
    if all_strings {
        items.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    } else if all_numbers {
        items.sort_by(number_order);
    } else {
        let first = items
            .iter()
            .find(|v| !matches!(v, Value::Int(_) | Value::Float(_) | Value::Str(_)));
        let message = match first {
            Some(v) => format!(
                "sort() can only sort numbers or strings, got {}",
                v.type_name()
            ),
            None => "sort() cannot sort a mix of numbers and strings".to_string(),
        };
        return Err(NativeError::error("TypeError", message));
    }
    Ok(Value::list(items))
}

/// `reverse(list)`: a new list with the items in reverse order.
pub fn reverse(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("reverse", args, 1)?;
    let list = expect_list("reverse", "a list", &args[0])?;
    reserve_list(list.len())?;
    let items: Vec<Value> = list.items().iter().rev().cloned().collect();
    Ok(Value::list(items))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use crate::heap;
    use crate::native::NativeError;
    use crate::value::Value;

    #[test]
    fn len_of_everything() {
        assert_eq!(ok("len", &[s("héllo")]), "6");
        assert_eq!(ok("len", &[s("")]), "0");
        assert_eq!(ok("len", &[b(&[1, 2, 3])]), "3");
        assert_eq!(ok("len", &[l(vec![i(1), i(2)])]), "2");
        assert_eq!(ok("len", &[m(vec![(s("a"), i(1))])]), "1");
        assert_eq!(ok("len", &[Value::range(0, 5)]), "5");
        assert_eq!(ok("len", &[Value::range(5, 0)]), "0");
        assert_eq!(ok("len", &[Value::range(-2, 2)]), "4");
        assert_eq!(err("len", &[Value::range(i64::MIN, i64::MAX)]), "Overflow");
        assert_eq!(err("len", &[Value::Nil]), "TypeError");
        assert_eq!(err("len", &[f(1.0)]), "TypeError");
    }

    #[test]
    fn push_pop_insert_remove() {
        let list = l(vec![]);
        assert_eq!(ok("push", &[list.clone(), i(1)]), "nil");
        assert_eq!(ok("push", &[list.clone(), s("a")]), "nil");
        assert_eq!(crate::display::display(&list), r#"[1, "a"]"#);
        assert_eq!(ok("pop", std::slice::from_ref(&list)), "\"a\"");
        assert_eq!(ok("pop", std::slice::from_ref(&list)), "1");
        assert_eq!(err("pop", std::slice::from_ref(&list)), "IndexError");
        assert_eq!(err("push", &[s("x"), i(1)]), "TypeError");
        assert_eq!(err("pop", &[m(vec![])]), "TypeError");

        let list = l(vec![i(1), i(3)]);
        assert_eq!(ok("insert", &[list.clone(), i(1), i(2)]), "nil");
        assert_eq!(
            ok("insert", &[list.clone(), i(3), i(4)]),
            "nil",
            "len appends"
        );
        assert_eq!(ok("insert", &[list.clone(), i(0), i(0)]), "nil");
        assert_eq!(crate::display::display(&list), "[0, 1, 2, 3, 4]");
        assert_eq!(err("insert", &[list.clone(), i(6), i(0)]), "IndexError");
        assert_eq!(err("insert", &[list.clone(), i(-1), i(0)]), "IndexError");
        assert_eq!(err("insert", &[list.clone(), f(1.0), i(0)]), "TypeError");
        assert_eq!(err("insert", &[m(vec![]), i(0), i(0)]), "TypeError");

        assert_eq!(ok("remove", &[list.clone(), i(0)]), "0");
        assert_eq!(ok("remove", &[list.clone(), i(3)]), "4");
        assert_eq!(err("remove", &[list.clone(), i(3)]), "IndexError");
        assert_eq!(err("remove", &[list.clone(), i(-1)]), "IndexError");
        assert_eq!(err("remove", &[list.clone(), s("a")]), "TypeError");
        assert_eq!(crate::display::display(&list), "[1, 2, 3]");

        let map = m(vec![(s("a"), i(1)), (s("b"), i(2)), (s("c"), i(3))]);
        assert_eq!(ok("remove", &[map.clone(), s("a")]), "1");
        assert_eq!(ok("remove", &[map.clone(), s("zz")]), "nil");
        assert_eq!(ok("remove", &[map.clone(), i(1)]), "nil");
        assert_eq!(err("remove", &[map.clone(), l(vec![])]), "TypeError");
        assert_eq!(crate::display::display(&map), r#"{"b": 2, "c": 3}"#);
        assert_eq!(err("remove", &[s("abc"), i(0)]), "TypeError");
    }

    #[test]
    fn push_respects_the_heap_limit() {
        let list = l(Vec::with_capacity(1024));
        if let Value::List(x) = &list {
            x.mutate(|items| items.resize(1024, Value::Nil));
        }
        let old = heap::set_limit(heap::live() + 100);
        let r = crate::builtins::test_util::call("push", &[list.clone(), i(1)]);
        heap::set_limit(old);
        assert!(matches!(r, Err(NativeError::MemoryLimit)));
    }

    #[test]
    fn keys_values_has() {
        let map = m(vec![
            (s("b"), i(1)),
            (i(2), Value::Nil),
            (Value::Nil, l(vec![])),
        ]);
        assert_eq!(ok("keys", std::slice::from_ref(&map)), r#"["b", 2, nil]"#);
        assert_eq!(ok("values", std::slice::from_ref(&map)), "[1, nil, []]");
        assert_eq!(
            ok("has", &[map.clone(), i(2)]),
            "true",
            "a nil value still has its key"
        );
        assert_eq!(ok("has", &[map.clone(), Value::Nil]), "true");
        assert_eq!(ok("has", &[map.clone(), s("a")]), "false");
        assert_eq!(ok("has", &[map.clone(), Value::Bool(true)]), "false");
        assert_eq!(err("has", &[map.clone(), f(2.0)]), "TypeError");
        assert_eq!(err("has", &[l(vec![]), i(0)]), "TypeError");
        assert_eq!(err("keys", &[l(vec![])]), "TypeError");
        assert_eq!(err("values", &[s("a")]), "TypeError");
        assert_eq!(ok("keys", &[m(vec![])]), "[]");
    }

    #[test]
    fn contains_everything() {
        assert_eq!(ok("contains", &[s("skiff"), s("kif")]), "true");
        assert_eq!(ok("contains", &[s("skiff"), s("")]), "true");
        assert_eq!(ok("contains", &[s("skiff"), s("x")]), "false");
        assert_eq!(err("contains", &[s("skiff"), i(1)]), "TypeError");
        assert_eq!(ok("contains", &[b(b"abc"), b(b"bc")]), "true");
        assert_eq!(ok("contains", &[b(b"abc"), b(b"")]), "true");
        assert_eq!(ok("contains", &[b(b"abc"), b(b"abcd")]), "false");
        assert_eq!(err("contains", &[b(b"abc"), s("a")]), "TypeError");
        let list = l(vec![i(1), s("a"), l(vec![i(2)])]);
        assert_eq!(ok("contains", &[list.clone(), f(1.0)]), "true");
        assert_eq!(ok("contains", &[list.clone(), l(vec![i(2)])]), "true");
        assert_eq!(ok("contains", &[list.clone(), s("b")]), "false");
        assert_eq!(ok("contains", &[list.clone(), f(f64::NAN)]), "false");
        let map = m(vec![(s("a"), i(1))]);
        assert_eq!(ok("contains", &[map.clone(), s("a")]), "true");
        assert_eq!(ok("contains", &[map.clone(), i(1)]), "false");
        assert_eq!(err("contains", &[map.clone(), l(vec![])]), "TypeError");
        assert_eq!(ok("contains", &[Value::range(0, 3), i(2)]), "true");
        assert_eq!(ok("contains", &[Value::range(0, 3), i(3)]), "false");
        assert_eq!(ok("contains", &[Value::range(0, 3), f(1.0)]), "true");
        assert_eq!(ok("contains", &[Value::range(0, 3), f(1.5)]), "false");
        assert_eq!(ok("contains", &[Value::range(0, 3), s("1")]), "false");
        assert_eq!(err("contains", &[i(5), i(5)]), "TypeError");
    }

    #[test]
    fn slice_rules() {
        assert_eq!(ok("slice", &[s("skiff"), i(1), i(3)]), "\"ki\"");
        assert_eq!(ok("slice", &[s("skiff"), i(0), i(5)]), "\"skiff\"");
        assert_eq!(ok("slice", &[s("skiff"), i(5), i(5)]), "\"\"");
        assert_eq!(err("slice", &[s("skiff"), i(0), i(6)]), "IndexError");
        assert_eq!(err("slice", &[s("skiff"), i(3), i(2)]), "IndexError");
        assert_eq!(err("slice", &[s("skiff"), i(-1), i(2)]), "IndexError");
        assert_eq!(ok("slice", &[s("héllo"), i(0), i(3)]), "\"hé\"");
        assert_eq!(err("slice", &[s("héllo"), i(0), i(2)]), "ValueError");
        assert_eq!(err("slice", &[s("héllo"), i(2), i(3)]), "ValueError");
        assert_eq!(
            err("slice", &[s("héllo"), i(2), i(30)]),
            "IndexError",
            "bounds first"
        );
        assert_eq!(
            ok("slice", &[b(&[1, 2, 3, 4]), i(1), i(3)]),
            r#"b"\x02\x03""#
        );
        assert_eq!(err("slice", &[b(&[1]), i(0), i(2)]), "IndexError");
        assert_eq!(
            ok("slice", &[l(vec![i(1), i(2), i(3)]), i(1), i(3)]),
            "[2, 3]"
        );
        assert_eq!(ok("slice", &[l(vec![]), i(0), i(0)]), "[]");
        assert_eq!(err("slice", &[l(vec![i(1)]), i(0), i(2)]), "IndexError");
        assert_eq!(err("slice", &[l(vec![i(1)]), f(0.0), i(1)]), "TypeError");
        assert_eq!(err("slice", &[Value::range(0, 5), i(0), i(1)]), "TypeError");
    }

    #[test]
    fn repeat_rules() {
        assert_eq!(ok("repeat", &[s("ab"), i(3)]), "\"ababab\"");
        assert_eq!(ok("repeat", &[s("ab"), i(0)]), "\"\"");
        assert_eq!(ok("repeat", &[b(b"x"), i(2)]), "b\"xx\"");
        assert_eq!(ok("repeat", &[l(vec![i(1), i(2)]), i(2)]), "[1, 2, 1, 2]");
        assert_eq!(err("repeat", &[s("ab"), i(-1)]), "ValueError");
        assert_eq!(err("repeat", &[s("ab"), f(2.0)]), "TypeError");
        assert_eq!(err("repeat", &[i(1), i(2)]), "TypeError");
        // An absurd size is refused before allocating, with or without a limit set.
        assert_eq!(err("repeat", &[s("ab"), i(i64::MAX)]), "MemoryLimit");
        let old = heap::set_limit(heap::live() + 1000);
        let r = crate::builtins::test_util::call("repeat", &[s("abc"), i(1000)]);
        let r2 = crate::builtins::test_util::call("repeat", &[l(vec![i(1)]), i(100)]);
        heap::set_limit(old);
        assert!(matches!(r, Err(NativeError::MemoryLimit)));
        assert!(matches!(r2, Err(NativeError::MemoryLimit)));
    }

    #[test]
    fn sort_and_reverse() {
        assert_eq!(
            ok("sort", &[l(vec![i(3), f(1.5), i(-2), f(1e9)])]),
            "[-2, 1.5, 3, 1000000000.0]"
        );
        assert_eq!(
            ok("sort", &[l(vec![s("sky"), s("skiff"), s("Boat"), s("")])]),
            r#"["", "Boat", "skiff", "sky"]"#
        );
        assert_eq!(ok("sort", &[l(vec![])]), "[]");
        assert_eq!(
            ok("sort", &[l(vec![f(f64::NAN), i(2), i(1)])]),
            "[1, 2, NaN]"
        );
        // Stable: 1 and 1.0 keep their order.
        assert_eq!(ok("sort", &[l(vec![f(1.0), i(1), i(0)])]), "[0, 1.0, 1]");
        assert_eq!(ok("sort", &[l(vec![i(1), f(1.0), i(0)])]), "[0, 1, 1.0]");
        assert_eq!(err("sort", &[l(vec![i(1), s("a")])]), "TypeError");
        assert_eq!(err("sort", &[l(vec![Value::Nil])]), "TypeError");
        assert_eq!(err("sort", &[s("abc")]), "TypeError");
        let orig = l(vec![i(2), i(1)]);
        assert_eq!(ok("sort", std::slice::from_ref(&orig)), "[1, 2]");
        assert_eq!(
            crate::display::display(&orig),
            "[2, 1]",
            "sort returns a new list"
        );
        assert_eq!(ok("reverse", std::slice::from_ref(&orig)), "[1, 2]");
        assert_eq!(
            crate::display::display(&orig),
            "[2, 1]",
            "reverse returns a new list"
        );
        assert_eq!(ok("reverse", &[l(vec![])]), "[]");
        assert_eq!(err("reverse", &[s("ab")]), "TypeError");
    }
}
