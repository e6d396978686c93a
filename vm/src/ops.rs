//! Operator semantics: what `+ - * / %`, unary `-`, `not`, `==`, `< <= > >=`, indexing,
//! index assignment and `a..b` do to values (LANGUAGE.md §2, §3, §9).
//!
//! The interpreter inlines the int fast paths itself and calls these functions on every
//! other operand mix. Each function either returns the result or a catchable runtime
//! error (`NativeError::Throw` of an error map whose message names the types involved),
//! or `NativeError::MemoryLimit` when a result would pass the heap limit.
//!
//! Invariants:
//! - int op int stays int and is checked: overflow raises `Overflow`; mixing int and float
//!   gives float with IEEE rules; there is no other implicit conversion.
//! - Results whose size comes from the operands (concatenation) are [`heap::reserve`]d
//!   before anything is allocated, so a doubling loop stops at the heap limit.
//! - [`equals`] never recurses on the Rust stack and terminates on cyclic values: it walks an
//!   explicit worklist of container pairs and visits each pair at most once (two values are
//!   equal when no reachable pair differs — bisimilarity).
//! - Comparisons between an int and a float are exact (no rounding of large ints).

use crate::heap;
use crate::native::NativeError;
use crate::value::{Key, ListObj, MapObj, Value};
use std::cmp::Ordering;
use std::collections::HashSet;
use std::rc::Rc;

/// Approximate per-object overhead used when reserving heap for a new result.
pub(crate) const OBJECT_OVERHEAD: usize = 32;
/// Bytes per value slot in a list.
pub(crate) const SLOT: usize = std::mem::size_of::<Value>();

/// 2^63 as f64: the first float above the i64 range.
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

fn type_error(message: String) -> NativeError {
    NativeError::error("TypeError", message)
}

fn overflow(a: &Value, op: &str, b: &Value) -> NativeError {
    NativeError::error(
        "Overflow",
        format!("integer overflow in {} {op} {}", num_text(a), num_text(b)),
    )
}

fn num_text(v: &Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        other => other.type_name().to_string(),
    }
}

/// Both operands as floats when at least one is a float and both are numbers.
#[inline]
fn floats(a: &Value, b: &Value) -> Option<(f64, f64)> {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => Some((*x, *y)),
        (Value::Int(x), Value::Float(y)) => Some((*x as f64, *y)),
        (Value::Float(x), Value::Int(y)) => Some((*x, *y as f64)),
        _ => None,
    }
}

/// A numeric operator: `int` on two ints (`None` is an overflow of `a symbol b`), `float` when
/// both are numbers and at least one is a float, otherwise a `TypeError` reading `mismatch()`.
#[inline]
fn arith(
    a: &Value,
    b: &Value,
    symbol: &str,
    int: impl FnOnce(i64, i64) -> Option<i64>,
    float: impl FnOnce(f64, f64) -> f64,
    mismatch: impl FnOnce() -> String,
) -> Result<Value, NativeError> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => int(*x, *y)
            .map(Value::Int)
            .ok_or_else(|| overflow(a, symbol, b)),
        _ => match floats(a, b) {
            Some((x, y)) => Ok(Value::Float(float(x, y))),
            None => Err(type_error(mismatch())),
        },
    }
}

/// `DivisionByZero` for the int `a` divided by int zero (`what`: division or remainder).
fn by_zero(what: &str, a: &Value) -> NativeError {
    NativeError::error(
        "DivisionByZero",
        format!("integer {what} of {} by zero", num_text(a)),
    )
}

/// `a + b`: numbers, or concatenation of two strings, two bytes or two lists (a new value).
pub fn add(a: &Value, b: &Value) -> Result<Value, NativeError> {
    match (a, b) {
        // Strings and bytes are immutable: concatenating an empty one can share the other.
        (Value::Str(_), Value::Str(y)) if y.as_str().is_empty() => Ok(a.clone()),
        (Value::Str(x), Value::Str(_)) if x.as_str().is_empty() => Ok(b.clone()),
        (Value::Bytes(_), Value::Bytes(y)) if y.as_slice().is_empty() => Ok(a.clone()),
        (Value::Bytes(x), Value::Bytes(_)) if x.as_slice().is_empty() => Ok(b.clone()),
        (Value::Str(x), Value::Str(y)) => {
            let (x, y) = (x.as_str(), y.as_str());
            let len = x.len().saturating_add(y.len());
            heap::reserve(len.saturating_add(OBJECT_OVERHEAD))?;
            let mut out = String::with_capacity(len);
            out.push_str(x);
            out.push_str(y);
            Ok(Value::str(out))
        }
        (Value::Bytes(x), Value::Bytes(y)) => {
            let (x, y) = (x.as_slice(), y.as_slice());
            let len = x.len().saturating_add(y.len());
            heap::reserve(len.saturating_add(OBJECT_OVERHEAD))?;
            let mut out = Vec::with_capacity(len);
            out.extend_from_slice(x);
            out.extend_from_slice(y);
            Ok(Value::bytes(out))
        }
        (Value::List(x), Value::List(y)) => {
            let len = x.len().saturating_add(y.len());
            heap::reserve(len.saturating_mul(SLOT).saturating_add(OBJECT_OVERHEAD))?;
            let mut out = Vec::with_capacity(len);
            out.extend(x.items().iter().cloned());
            out.extend(y.items().iter().cloned());
            Ok(Value::list(out))
        }
        _ => arith(
            a,
            b,
            "+",
            i64::checked_add,
            |x, y| x + y,
            || format!("cannot add {} and {}", a.type_name(), b.type_name()),
        ),
    }
}

/// `a - b` on numbers.
pub fn sub(a: &Value, b: &Value) -> Result<Value, NativeError> {
    arith(
        a,
        b,
        "-",
        i64::checked_sub,
        |x, y| x - y,
        || format!("cannot subtract {} from {}", b.type_name(), a.type_name()),
    )
}

/// `a * b` on numbers (there is no string repetition operator; use `repeat`).
pub fn mul(a: &Value, b: &Value) -> Result<Value, NativeError> {
    arith(
        a,
        b,
        "*",
        i64::checked_mul,
        |x, y| x * y,
        || format!("cannot multiply {} by {}", a.type_name(), b.type_name()),
    )
}

/// `a / b`: two ints truncate toward zero (`DivisionByZero` on a zero divisor, `Overflow`
/// for `i64::MIN / -1`); otherwise IEEE float division (`1.0 / 0` is `inf`).
pub fn div(a: &Value, b: &Value) -> Result<Value, NativeError> {
    if let (Value::Int(_), Value::Int(0)) = (a, b) {
        return Err(by_zero("division", a));
    }
    arith(
        a,
        b,
        "/",
        i64::checked_div,
        |x, y| x / y,
        || format!("cannot divide {} by {}", a.type_name(), b.type_name()),
    )
}

/// `a % b`: Rust's remainder (sign of the dividend) for ints and floats. A zero int divisor
/// raises `DivisionByZero`; `i64::MIN % -1` raises `Overflow`, as Rust's `checked_rem`
/// (and the interpreter's inlined fast path) does.
pub fn rem(a: &Value, b: &Value) -> Result<Value, NativeError> {
    if let (Value::Int(_), Value::Int(0)) = (a, b) {
        return Err(by_zero("remainder", a));
    }
    arith(
        a,
        b,
        "%",
        i64::checked_rem,
        |x, y| x % y,
        || {
            format!(
                "cannot compute the remainder of {} by {}",
                a.type_name(),
                b.type_name()
            )
        },
    )
}

/// Unary `-` on a number (`-i64::MIN` raises `Overflow`).
pub fn neg(a: &Value) -> Result<Value, NativeError> {
    match a {
        Value::Int(x) => x
            .checked_neg()
            .map(Value::Int)
            .ok_or_else(|| NativeError::error("Overflow", format!("integer overflow in -({x})"))),
        Value::Float(x) => Ok(Value::Float(-x)),
        other => Err(type_error(format!("cannot negate {}", other.type_name()))),
    }
}

/// `not a`: `true` exactly when `a` is `nil` or `false`. Never fails; the `Result` keeps
/// the operator functions uniform.
pub fn not(a: &Value) -> Result<Value, NativeError> {
    Ok(Value::Bool(!a.is_truthy()))
}

/// Exact `int == float`: true only when the float is integral and equals the int exactly.
fn int_float_eq(i: i64, f: f64) -> bool {
    f.fract() == 0.0 && (-TWO_POW_63..TWO_POW_63).contains(&f) && f as i64 == i
}

/// Exact ordering of an int and a float; `None` when the float is NaN.
fn cmp_int_float(i: i64, f: f64) -> Option<Ordering> {
    if f.is_nan() {
        return None;
    }
    if f >= TWO_POW_63 {
        return Some(Ordering::Less);
    }
    if f < -TWO_POW_63 {
        return Some(Ordering::Greater);
    }
    let t = f.trunc();
    // `t` is integral and within [-2^63, 2^63), so the cast is exact.
    match i.cmp(&(t as i64)) {
        Ordering::Equal => {
            let frac = f - t;
            Some(if frac > 0.0 {
                Ordering::Less
            } else if frac < 0.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            })
        }
        other => Some(other),
    }
}

/// The outcome of comparing two values without looking inside containers.
enum Shallow {
    Equal,
    Different,
    Lists(Rc<ListObj>, Rc<ListObj>),
    Maps(Rc<MapObj>, Rc<MapObj>),
}

fn shallow(a: &Value, b: &Value) -> Shallow {
    let eq = match (a, b) {
        (Value::Nil, Value::Nil) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Float(x), Value::Float(y)) => x == y,
        (Value::Int(x), Value::Float(y)) | (Value::Float(y), Value::Int(x)) => int_float_eq(*x, *y),
        (Value::Str(x), Value::Str(y)) => Rc::ptr_eq(x, y) || x.as_str() == y.as_str(),
        (Value::Bytes(x), Value::Bytes(y)) => Rc::ptr_eq(x, y) || x.as_slice() == y.as_slice(),
        (Value::Range(x), Value::Range(y)) => x.start == y.start && x.end == y.end,
        (Value::Function(x), Value::Function(y)) => Rc::ptr_eq(x, y),
        (Value::Task(x), Value::Task(y)) => Rc::ptr_eq(x, y),
        (Value::Cell(x), Value::Cell(y)) => Rc::ptr_eq(x, y),
        (Value::List(x), Value::List(y)) => {
            if Rc::ptr_eq(x, y) {
                true
            } else if x.len() != y.len() {
                false
            } else {
                return Shallow::Lists(x.clone(), y.clone());
            }
        }
        (Value::Map(x), Value::Map(y)) => {
            if Rc::ptr_eq(x, y) {
                true
            } else if x.len() != y.len() {
                false
            } else {
                return Shallow::Maps(x.clone(), y.clone());
            }
        }
        _ => false,
    };
    if eq {
        Shallow::Equal
    } else {
        Shallow::Different
    }
}

/// Queues the pair if it needs a deep look; returns false when it already differs.
fn check(x: &Value, y: &Value, work: &mut Vec<(Value, Value)>) -> bool {
    match shallow(x, y) {
        Shallow::Equal => true,
        Shallow::Different => false,
        Shallow::Lists(p, q) => {
            work.push((Value::List(p), Value::List(q)));
            true
        }
        Shallow::Maps(p, q) => {
            work.push((Value::Map(p), Value::Map(q)));
            true
        }
    }
}

/// `a == b` (LANGUAGE.md §3, §9.5): structural for strings, bytes, lists, maps (same keys
/// with equal values, any order) and ranges (same bounds); `1 == 1.0` is true (exactly:
/// `2^53 + 1 != 2^53 as float`); NaN is unequal to everything; functions and tasks compare by
/// identity; values of different types are unequal. A list or map is equal to itself even if
/// it contains NaN (identity is checked first, as in Python).
///
/// Cyclic and very deep values are handled without recursion (see the module doc).
pub fn equals(a: &Value, b: &Value) -> bool {
    let (first_a, first_b) = match shallow(a, b) {
        Shallow::Equal => return true,
        Shallow::Different => return false,
        Shallow::Lists(x, y) => (Value::List(x), Value::List(y)),
        Shallow::Maps(x, y) => (Value::Map(x), Value::Map(y)),
    };
    let mut work: Vec<(Value, Value)> = vec![(first_a, first_b)];
    let mut seen: HashSet<(usize, usize)> = HashSet::new();
    while let Some(pair) = work.pop() {
        match pair {
            (Value::List(x), Value::List(y)) => {
                let key = (Rc::as_ptr(&x) as usize, Rc::as_ptr(&y) as usize);
                if !seen.insert(key) {
                    continue;
                }
                let (xs, ys) = (x.items(), y.items());
                if xs.len() != ys.len() {
                    return false;
                }
                for (p, q) in xs.iter().zip(ys.iter()) {
                    if !check(p, q, &mut work) {
                        return false;
                    }
                }
            }
            (Value::Map(x), Value::Map(y)) => {
                let key = (Rc::as_ptr(&x) as usize, Rc::as_ptr(&y) as usize);
                if !seen.insert(key) {
                    continue;
                }
                let (xs, ys) = (x.entries(), y.entries());
                if xs.len() != ys.len() {
                    return false;
                }
                for (k, p) in xs.iter() {
                    match ys.get(k) {
                        Some(q) => {
                            if !check(p, q, &mut work) {
                                return false;
                            }
                        }
                        None => return false,
                    }
                }
            }
            _ => unreachable!("only list and map pairs are queued"),
        }
    }
    true
}

/// Orders two numbers (exactly, across int and float) or two strings (byte-wise, which is
/// code-point order). `Ok(None)` means unordered (a NaN is involved): every comparison
/// operator is then false. Any other operand mix raises `TypeError`.
pub fn compare(a: &Value, b: &Value) -> Result<Option<Ordering>, NativeError> {
    compare_op(a, b, "<, <=, > or >=")
}

fn compare_op(a: &Value, b: &Value, op: &str) -> Result<Option<Ordering>, NativeError> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Ok(Some(x.cmp(y))),
        (Value::Float(x), Value::Float(y)) => Ok(x.partial_cmp(y)),
        (Value::Int(x), Value::Float(y)) => Ok(cmp_int_float(*x, *y)),
        (Value::Float(x), Value::Int(y)) => Ok(cmp_int_float(*y, *x).map(Ordering::reverse)),
        (Value::Str(x), Value::Str(y)) => Ok(Some(x.as_str().cmp(y.as_str()))),
        _ => Err(type_error(format!(
            "cannot compare {} and {} with {op}",
            a.type_name(),
            b.type_name()
        ))),
    }
}

/// `a < b`.
pub fn lt(a: &Value, b: &Value) -> Result<Value, NativeError> {
    Ok(Value::Bool(compare_op(a, b, "<")? == Some(Ordering::Less)))
}

/// `a <= b`.
pub fn le(a: &Value, b: &Value) -> Result<Value, NativeError> {
    Ok(Value::Bool(matches!(
        compare_op(a, b, "<=")?,
        Some(Ordering::Less | Ordering::Equal)
    )))
}

/// `a > b`.
pub fn gt(a: &Value, b: &Value) -> Result<Value, NativeError> {
    Ok(Value::Bool(
        compare_op(a, b, ">")? == Some(Ordering::Greater),
    ))
}

/// `a >= b`.
pub fn ge(a: &Value, b: &Value) -> Result<Value, NativeError> {
    Ok(Value::Bool(matches!(
        compare_op(a, b, ">=")?,
        Some(Ordering::Greater | Ordering::Equal)
    )))
}

/// The map key for `key`, or a `TypeError` naming the type that cannot be a key.
pub fn map_key(key: &Value) -> Result<Key, NativeError> {
    Key::from_value(key).ok_or_else(|| {
        type_error(format!(
            "a map key must be nil, bool, int, string or bytes, not {}",
            key.type_name()
        ))
    })
}

/// A list/range index: an int in `0..len`, else `IndexError` (or `TypeError` if not an int).
fn index_in(what: &str, index: &Value, len: u64) -> Result<u64, NativeError> {
    match index {
        Value::Int(i) if *i >= 0 && (*i as u64) < len => Ok(*i as u64),
        Value::Int(i) => Err(NativeError::error(
            "IndexError",
            format!("{what} index {i} out of range for length {len}"),
        )),
        other => Err(type_error(format!(
            "{what} index must be int, not {}",
            other.type_name()
        ))),
    }
}

/// `c[k]`: lists and ranges by int from 0 (out of range or negative raises `IndexError`);
/// maps by key (missing gives `nil`; a value that cannot be a key raises `TypeError`);
/// everything else (strings and bytes included) raises `TypeError`.
pub fn get_index(c: &Value, k: &Value) -> Result<Value, NativeError> {
    match c {
        Value::List(list) => {
            let i = index_in("list", k, list.len() as u64)?;
            Ok(list.get(i as usize).unwrap_or_default())
        }
        Value::Range(r) => {
            let i = index_in("range", k, r.len())?;
            // start + i < end, so this cannot overflow.
            Ok(Value::Int(r.start.wrapping_add(i as i64)))
        }
        Value::Map(map) => Ok(map.get(&map_key(k)?).unwrap_or_default()),
        Value::Str(_) | Value::Bytes(_) => Err(type_error(format!(
            "cannot index {} (use slice)",
            c.type_name()
        ))),
        other => Err(type_error(format!("cannot index {}", other.type_name()))),
    }
}

/// `c[k] = v`: a list needs `0 <= k < len` (`IndexError`; use `push` to grow); a map
/// inserts or replaces (a replaced key keeps its position; storing `nil` keeps the key);
/// anything else raises `TypeError`.
pub fn set_index(c: &Value, k: &Value, v: Value) -> Result<(), NativeError> {
    match c {
        Value::List(list) => {
            let i = index_in("list", k, list.len() as u64)? as usize;
            // The old value is dropped after the borrow ends.
            let _old = list.mutate(|items| std::mem::replace(&mut items[i], v));
            Ok(())
        }
        Value::Map(map) => {
            let key = map_key(k)?;
            let _old = map.mutate(|entries| entries.insert(key, v));
            Ok(())
        }
        other => Err(type_error(format!(
            "cannot assign to an index of {}",
            other.type_name()
        ))),
    }
}

/// `a..b`: both ints, else `TypeError`.
pub fn make_range(a: &Value, b: &Value) -> Result<Value, NativeError> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Ok(Value::range(*x, *y)),
        _ => Err(type_error(format!(
            "range bounds must be int, not {} and {}",
            a.type_name(),
            b.type_name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtins::test_util::{l as list, m as map, s};

    fn kind(err: NativeError) -> (String, String) {
        match err {
            NativeError::Throw(Value::Map(m)) => {
                let get = |k: &str| {
                    m.get(&Key::from_value(&Value::str(k)).unwrap())
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap()
                };
                (get("kind"), get("message"))
            }
            other => panic!("not an error map: {other:?}"),
        }
    }

    #[test]
    fn arithmetic_ints_and_floats() {
        assert!(matches!(
            add(&Value::Int(2), &Value::Int(3)),
            Ok(Value::Int(5))
        ));
        assert!(matches!(add(&Value::Int(2), &Value::Float(0.5)), Ok(Value::Float(f)) if f == 2.5));
        assert!(
            matches!(sub(&Value::Float(1.0), &Value::Int(3)), Ok(Value::Float(f)) if f == -2.0)
        );
        assert!(matches!(
            mul(&Value::Int(-4), &Value::Int(3)),
            Ok(Value::Int(-12))
        ));
        assert!(matches!(
            div(&Value::Int(7), &Value::Int(2)),
            Ok(Value::Int(3))
        ));
        assert!(matches!(
            div(&Value::Int(-7), &Value::Int(2)),
            Ok(Value::Int(-3))
        ));
        assert!(matches!(
            rem(&Value::Int(-7), &Value::Int(3)),
            Ok(Value::Int(-1))
        ));
        assert!(matches!(rem(&Value::Float(7.5), &Value::Int(2)), Ok(Value::Float(f)) if f == 1.5));

        assert!(
            matches!(div(&Value::Float(1.0), &Value::Int(0)), Ok(Value::Float(f)) if f == f64::INFINITY)
        );
        assert!(
            matches!(div(&Value::Int(1), &Value::Float(0.0)), Ok(Value::Float(f)) if f.is_infinite())
        );
        assert!(
            matches!(rem(&Value::Float(1.0), &Value::Int(0)), Ok(Value::Float(f)) if f.is_nan())
        );
        assert!(matches!(neg(&Value::Float(2.0)), Ok(Value::Float(f)) if f == -2.0));
        assert!(matches!(neg(&Value::Int(5)), Ok(Value::Int(-5))));
    }

    #[test]
    fn arithmetic_errors() {
        let e = |r: Result<Value, NativeError>| kind(r.unwrap_err());
        assert_eq!(e(add(&Value::Int(i64::MAX), &Value::Int(1))).0, "Overflow");
        assert_eq!(e(sub(&Value::Int(i64::MIN), &Value::Int(1))).0, "Overflow");
        assert_eq!(e(mul(&Value::Int(i64::MAX), &Value::Int(2))).0, "Overflow");
        assert_eq!(e(div(&Value::Int(i64::MIN), &Value::Int(-1))).0, "Overflow");
        assert_eq!(e(rem(&Value::Int(i64::MIN), &Value::Int(-1))).0, "Overflow");
        assert_eq!(e(neg(&Value::Int(i64::MIN))).0, "Overflow");
        assert_eq!(e(div(&Value::Int(1), &Value::Int(0))).0, "DivisionByZero");
        assert_eq!(e(rem(&Value::Int(1), &Value::Int(0))).0, "DivisionByZero");
        assert_eq!(
            e(add(&Value::Int(1), &s("a"))),
            ("TypeError".into(), "cannot add int and string".into())
        );
        assert_eq!(
            e(add(&s("a"), &Value::Int(1))).1,
            "cannot add string and int"
        );
        assert_eq!(e(add(&s("a"), &Value::bytes(vec![1]))).0, "TypeError");
        assert_eq!(e(add(&Value::Bool(true), &Value::Int(1))).0, "TypeError");
        assert_eq!(e(add(&Value::Nil, &Value::Nil)).0, "TypeError");
        assert_eq!(
            e(sub(&s("a"), &s("b"))).1,
            "cannot subtract string from string"
        );
        assert_eq!(
            e(mul(&s("a"), &Value::Int(3))).1,
            "cannot multiply string by int"
        );
        assert_eq!(e(div(&list(vec![]), &Value::Int(3))).0, "TypeError");
        assert_eq!(e(rem(&Value::Nil, &Value::Int(3))).0, "TypeError");
        assert_eq!(e(neg(&s("x"))).1, "cannot negate string");
    }

    #[test]
    fn concatenation_makes_new_values() {
        match add(&s("ab"), &s("cd")).unwrap() {
            Value::Str(x) => assert_eq!(x.as_str(), "abcd"),
            other => panic!("{other:?}"),
        }
        match add(&Value::bytes(vec![1u8]), &Value::bytes(vec![2u8, 3])).unwrap() {
            Value::Bytes(x) => assert_eq!(x.as_slice(), &[1, 2, 3]),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            crate::display::repr(&add(&s(""), &s("x")).unwrap()),
            "\"x\""
        );
        assert_eq!(
            crate::display::repr(&add(&s("x"), &s("")).unwrap()),
            "\"x\""
        );
        assert_eq!(
            crate::display::repr(&add(&Value::bytes(vec![]), &Value::bytes(vec![7u8])).unwrap()),
            "b\"\\x07\""
        );
        let e = list(vec![]);
        let c = add(&e, &e).unwrap();
        if let (Value::List(e), Value::List(c)) = (&e, &c) {
            assert!(!Rc::ptr_eq(e, c), "list + list is always a new list");
        }
        let a = list(vec![Value::Int(1)]);
        let c = add(&a, &a).unwrap();
        assert!(equals(&c, &list(vec![Value::Int(1), Value::Int(1)])));
        if let (Value::List(a), Value::List(c)) = (&a, &c) {
            assert!(!Rc::ptr_eq(a, c));
        }
    }

    #[test]
    fn concatenation_respects_the_heap_limit() {
        let big = Value::str("x".repeat(1 << 16));
        let old = heap::set_limit(heap::live() + (1 << 16) + 1000);
        let r = add(&big, &big);
        heap::set_limit(old);
        assert!(matches!(r, Err(NativeError::MemoryLimit)));
        let l = list(vec![Value::Nil; 1000]);
        let old = heap::set_limit(heap::live() + 1000);
        let r = add(&l, &l);
        heap::set_limit(old);
        assert!(matches!(r, Err(NativeError::MemoryLimit)));
    }

    #[test]
    fn not_is_falsiness() {
        assert!(matches!(not(&Value::Nil), Ok(Value::Bool(true))));
        assert!(matches!(not(&Value::Bool(false)), Ok(Value::Bool(true))));
        assert!(matches!(not(&Value::Int(0)), Ok(Value::Bool(false))));
        assert!(matches!(not(&s("")), Ok(Value::Bool(false))));
    }

    #[test]
    fn equality_scalars_and_numbers() {
        assert!(equals(&Value::Int(1), &Value::Float(1.0)));
        assert!(equals(&Value::Float(1.0), &Value::Int(1)));
        assert!(!equals(&Value::Int(1), &Value::Float(1.5)));
        assert!(!equals(
            &Value::Int((1 << 53) + 1),
            &Value::Float((1u64 << 53) as f64)
        ));
        assert!(!equals(&Value::Int(i64::MAX), &Value::Float(TWO_POW_63)));
        assert!(equals(&Value::Int(i64::MIN), &Value::Float(-TWO_POW_63)));
        assert!(!equals(&Value::Float(f64::NAN), &Value::Float(f64::NAN)));
        assert!(equals(&Value::Float(0.0), &Value::Float(-0.0)));
        assert!(!equals(&Value::Int(0), &Value::Bool(false)));
        assert!(!equals(&Value::Nil, &Value::Bool(false)));
        assert!(equals(&Value::Nil, &Value::Nil));
        assert!(equals(&s("héllo"), &s("héllo")));
        assert!(!equals(&s("a"), &Value::bytes(b"a".to_vec())));
        assert!(equals(
            &Value::bytes(vec![0u8, 255]),
            &Value::bytes(vec![0u8, 255])
        ));
        assert!(equals(&Value::range(0, 5), &Value::range(0, 5)));
        assert!(!equals(&Value::range(0, 5), &Value::range(0, 4)));
        assert!(!equals(
            &Value::range(0, 3),
            &list(vec![Value::Int(0), Value::Int(1), Value::Int(2)])
        ));
    }

    #[test]
    fn equality_structural() {
        let a = list(vec![Value::Int(1), s("a"), list(vec![Value::Nil])]);
        let b = list(vec![Value::Float(1.0), s("a"), list(vec![Value::Nil])]);
        assert!(equals(&a, &b));
        let c = list(vec![Value::Int(1), s("a"), list(vec![Value::Bool(false)])]);
        assert!(!equals(&a, &c));
        assert!(!equals(&a, &list(vec![Value::Int(1)])));
        let m1 = map(vec![
            (s("a"), Value::Int(1)),
            (Value::Int(2), list(vec![Value::Int(3)])),
        ]);
        let m2 = map(vec![
            (Value::Int(2), list(vec![Value::Int(3)])),
            (s("a"), Value::Int(1)),
        ]);
        assert!(equals(&m1, &m2), "maps equal in any key order");
        let m3 = map(vec![
            (s("a"), Value::Int(1)),
            (Value::Int(3), list(vec![Value::Int(3)])),
        ]);
        assert!(!equals(&m1, &m3));
        let m4 = map(vec![(s("a"), Value::Int(1))]);
        assert!(!equals(&m1, &m4));
        assert!(equals(&map(vec![]), &map(vec![])));
        assert!(!equals(&map(vec![]), &list(vec![])));
        // NaN inside: a container is equal to itself, not to a copy.
        let n = list(vec![Value::Float(f64::NAN)]);
        assert!(equals(&n, &n));
        assert!(!equals(&n, &list(vec![Value::Float(f64::NAN)])));
    }

    #[test]
    fn equality_cyclic() {
        // a = [1, a]; b = [1, b]
        let a = list(vec![Value::Int(1)]);
        let b = list(vec![Value::Int(1)]);
        for v in [&a, &b] {
            if let Value::List(l) = v {
                let me = v.clone();
                l.mutate(|items| items.push(me));
            }
        }
        assert!(equals(&a, &a));
        assert!(equals(&a, &b));
        // c = [2, c] differs.
        let c = list(vec![Value::Int(2)]);
        if let Value::List(l) = &c {
            let me = c.clone();
            l.mutate(|items| items.push(me));
        }
        assert!(!equals(&a, &c));
        // d = [1, [1, d]]: the same infinite tree as a.
        let d = list(vec![Value::Int(1)]);
        let inner = list(vec![Value::Int(1), d.clone()]);
        if let Value::List(l) = &d {
            l.mutate(|items| items.push(inner));
        }
        assert!(equals(&a, &d));
        // A cyclic map.
        let m = map(vec![(s("k"), Value::Int(1))]);
        let n = map(vec![(s("k"), Value::Int(1))]);
        set_index(&m, &s("self"), m.clone()).unwrap();
        set_index(&n, &s("self"), n.clone()).unwrap();
        assert!(equals(&m, &n));
        set_index(&n, &s("k"), Value::Int(2)).unwrap();
        assert!(!equals(&m, &n));
        // Break the cycles so the test does not leak.
        for v in [&a, &b, &c, &d] {
            if let Value::List(l) = v {
                l.mutate(Vec::clear);
            }
        }
        for v in [&m, &n] {
            if let Value::Map(x) = v {
                x.mutate(|e| e.clear());
            }
        }
    }

    /// Builds a list nested `depth` deep around `leaf`.
    fn deep(depth: usize, leaf: Value) -> Value {
        let mut v = leaf;
        for _ in 0..depth {
            v = list(vec![v]);
        }
        v
    }

    /// Unnests without recursion (the recursive `Drop` of a very deep list would overflow).
    fn flatten_drop(v: Value) {
        let mut cur = v;
        while let Value::List(l) = &cur {
            let next = l.mutate(|items| items.pop());
            match next {
                Some(n) => cur = n,
                None => break,
            }
        }
    }

    #[test]
    fn equality_very_deep_does_not_overflow() {
        // Runs on a small stack: a recursive comparison would overflow it.
        let result = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(|| {
                let a = deep(200_000, Value::Int(1));
                let b = deep(200_000, Value::Int(1));
                let c = deep(200_000, Value::Int(2));
                let out = (equals(&a, &b), equals(&a, &c));
                flatten_drop(a);
                flatten_drop(b);
                flatten_drop(c);
                out
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(result, (true, false));
    }

    #[test]
    fn comparisons() {
        let cmp = |a: Value, b: Value| compare(&a, &b).unwrap();
        assert_eq!(cmp(Value::Int(1), Value::Int(2)), Some(Ordering::Less));
        assert_eq!(
            cmp(Value::Int(2), Value::Float(1.5)),
            Some(Ordering::Greater)
        );
        assert_eq!(cmp(Value::Float(1.5), Value::Int(2)), Some(Ordering::Less));
        assert_eq!(cmp(Value::Int(1), Value::Float(1.0)), Some(Ordering::Equal));
        assert_eq!(
            cmp(Value::Int(-1), Value::Float(-1.5)),
            Some(Ordering::Greater)
        );
        assert_eq!(
            cmp(Value::Int(-2), Value::Float(-1.5)),
            Some(Ordering::Less)
        );
        assert_eq!(
            cmp(Value::Int(i64::MAX), Value::Float(TWO_POW_63)),
            Some(Ordering::Less)
        );
        assert_eq!(
            cmp(Value::Int((1 << 53) + 1), Value::Float((1u64 << 53) as f64)),
            Some(Ordering::Greater)
        );
        assert_eq!(
            cmp(Value::Int(0), Value::Float(f64::NEG_INFINITY)),
            Some(Ordering::Greater)
        );
        assert_eq!(cmp(Value::Int(0), Value::Float(f64::NAN)), None);
        assert_eq!(cmp(s("abc"), s("abd")), Some(Ordering::Less));
        assert_eq!(cmp(s("b"), s("abc")), Some(Ordering::Greater));
        assert_eq!(cmp(s(""), s("")), Some(Ordering::Equal));
        let nan = Value::Float(f64::NAN);
        for f in [lt, le, gt, ge] {
            assert!(matches!(f(&nan, &Value::Int(1)), Ok(Value::Bool(false))));
            assert!(matches!(f(&nan, &nan), Ok(Value::Bool(false))));
        }
        assert!(matches!(
            le(&Value::Int(1), &Value::Float(1.0)),
            Ok(Value::Bool(true))
        ));
        assert!(matches!(
            ge(&Value::Int(1), &Value::Float(1.0)),
            Ok(Value::Bool(true))
        ));
        assert!(matches!(
            lt(&Value::Int(1), &Value::Float(1.0)),
            Ok(Value::Bool(false))
        ));
        assert!(matches!(gt(&s("b"), &s("a")), Ok(Value::Bool(true))));
        let (k, m) = kind(lt(&Value::Int(1), &s("a")).unwrap_err());
        assert_eq!(
            (k.as_str(), m.as_str()),
            ("TypeError", "cannot compare int and string with <")
        );
        assert!(compare(&list(vec![]), &list(vec![])).is_err());
        assert!(compare(&Value::Nil, &Value::Nil).is_err());
        assert!(compare(&Value::Bool(false), &Value::Bool(true)).is_err());
    }

    #[test]
    fn indexing() {
        let l = list(vec![Value::Int(10), Value::Int(20)]);
        assert!(matches!(get_index(&l, &Value::Int(1)), Ok(Value::Int(20))));
        let e = |r: Result<Value, NativeError>| kind(r.unwrap_err());
        assert_eq!(
            e(get_index(&l, &Value::Int(2))),
            (
                "IndexError".into(),
                "list index 2 out of range for length 2".into()
            )
        );
        assert_eq!(e(get_index(&l, &Value::Int(-1))).0, "IndexError");
        assert_eq!(e(get_index(&l, &Value::Float(0.0))).0, "TypeError");
        assert_eq!(e(get_index(&l, &s("0"))).0, "TypeError");
        let r = Value::range(5, 8);
        assert!(matches!(get_index(&r, &Value::Int(2)), Ok(Value::Int(7))));
        assert_eq!(e(get_index(&r, &Value::Int(3))).0, "IndexError");
        assert_eq!(
            e(get_index(&Value::range(5, 0), &Value::Int(0))).0,
            "IndexError"
        );
        assert!(matches!(
            get_index(&Value::range(i64::MIN, i64::MAX), &Value::Int(i64::MAX - 1)),
            Ok(Value::Int(-2))
        ));
        let m = map(vec![(s("a"), Value::Int(1)), (Value::Nil, Value::Int(2))]);
        assert!(matches!(get_index(&m, &s("a")), Ok(Value::Int(1))));
        assert!(matches!(get_index(&m, &Value::Nil), Ok(Value::Int(2))));
        assert!(matches!(get_index(&m, &s("zz")), Ok(Value::Nil)));
        assert_eq!(e(get_index(&m, &list(vec![]))).0, "TypeError");
        assert_eq!(e(get_index(&m, &Value::Float(1.0))).0, "TypeError");
        assert_eq!(
            e(get_index(&s("abc"), &Value::Int(0))),
            ("TypeError".into(), "cannot index string (use slice)".into())
        );
        assert_eq!(
            e(get_index(&Value::bytes(vec![1u8]), &Value::Int(0))).0,
            "TypeError"
        );
        assert_eq!(e(get_index(&Value::Int(3), &Value::Int(0))).0, "TypeError");
    }

    #[test]
    fn index_assignment() {
        let l = list(vec![Value::Int(10), Value::Int(20)]);
        set_index(&l, &Value::Int(0), s("x")).unwrap();
        assert!(equals(&l, &list(vec![s("x"), Value::Int(20)])));
        let e = |r: Result<(), NativeError>| kind(r.unwrap_err()).0;
        assert_eq!(e(set_index(&l, &Value::Int(2), Value::Nil)), "IndexError");
        assert_eq!(e(set_index(&l, &Value::Int(-1), Value::Nil)), "IndexError");
        assert_eq!(e(set_index(&l, &s("a"), Value::Nil)), "TypeError");
        let m = map(vec![(s("a"), Value::Int(1)), (s("b"), Value::Int(2))]);
        set_index(&m, &s("a"), Value::Int(9)).unwrap();
        set_index(&m, &s("c"), Value::Nil).unwrap();
        if let Value::Map(mm) = &m {
            let keys: Vec<String> = mm
                .entries()
                .keys()
                .map(|k| k.to_value().as_str().unwrap().to_string())
                .collect();
            assert_eq!(keys, ["a", "b", "c"]);
            assert_eq!(mm.len(), 3, "storing nil keeps the key");
        }
        assert!(matches!(get_index(&m, &s("a")), Ok(Value::Int(9))));
        assert_eq!(e(set_index(&m, &list(vec![]), Value::Nil)), "TypeError");
        assert_eq!(
            e(set_index(&s("abc"), &Value::Int(0), Value::Nil)),
            "TypeError"
        );
        assert_eq!(
            e(set_index(&Value::range(0, 3), &Value::Int(0), Value::Nil)),
            "TypeError"
        );
        // Assigning a list into itself is fine.
        set_index(&l, &Value::Int(1), l.clone()).unwrap();
        if let Value::List(x) = &l {
            x.mutate(Vec::clear);
        }
    }

    #[test]
    fn ranges() {
        match make_range(&Value::Int(0), &Value::Int(5)).unwrap() {
            Value::Range(r) => assert_eq!((r.start, r.end, r.len()), (0, 5, 5)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            kind(make_range(&Value::Int(0), &Value::Float(5.0)).unwrap_err()).0,
            "TypeError"
        );
        assert_eq!(
            kind(make_range(&s("a"), &Value::Int(5)).unwrap_err()).0,
            "TypeError"
        );
    }
}

#[cfg(test)]
mod proptests {
    //! `equals` and `display` never panic and agree on two copies of random nested values,
    //! including values made cyclic by random links between their containers.

    use super::*;
    use crate::display::{display, repr};
    use crate::value::Entries;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Shape {
        Nil,
        Bool(bool),
        Int(i64),
        Float(f64),
        Str(String),
        Bytes(Vec<u8>),
        Range(i64, i64),
        List(Vec<Shape>),
        Map(Vec<(KeyShape, Shape)>),
    }

    #[derive(Clone, Debug)]
    enum KeyShape {
        Nil,
        Bool(bool),
        Int(i64),
        Str(String),
        Bytes(Vec<u8>),
    }

    fn key_shape() -> impl Strategy<Value = KeyShape> {
        prop_oneof![
            Just(KeyShape::Nil),
            any::<bool>().prop_map(KeyShape::Bool),
            (-3i64..3).prop_map(KeyShape::Int),
            "[a-c\"\\\\é]{0,3}".prop_map(KeyShape::Str),
            proptest::collection::vec(any::<u8>(), 0..3).prop_map(KeyShape::Bytes),
        ]
    }

    fn shape() -> impl Strategy<Value = Shape> {
        let leaf = prop_oneof![
            Just(Shape::Nil),
            any::<bool>().prop_map(Shape::Bool),
            any::<i64>().prop_map(Shape::Int),
            (-2i64..2).prop_map(Shape::Int),
            any::<f64>().prop_map(Shape::Float),
            prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(-0.0), Just(1.0)]
                .prop_map(Shape::Float),
            any::<String>().prop_map(Shape::Str),
            proptest::collection::vec(any::<u8>(), 0..6).prop_map(Shape::Bytes),
            (any::<i64>(), any::<i64>()).prop_map(|(a, b)| Shape::Range(a, b)),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Shape::List),
                proptest::collection::vec((key_shape(), inner), 0..6).prop_map(Shape::Map),
            ]
        })
    }

    fn key_value(k: &KeyShape) -> Value {
        match k {
            KeyShape::Nil => Value::Nil,
            KeyShape::Bool(b) => Value::Bool(*b),
            KeyShape::Int(i) => Value::Int(*i),
            KeyShape::Str(s) => Value::str(s.as_str()),
            KeyShape::Bytes(b) => Value::bytes(b.clone()),
        }
    }

    /// Builds the value; records every container in creation order.
    fn build(shape: &Shape, containers: &mut Vec<Value>) -> Value {
        let v = match shape {
            Shape::Nil => Value::Nil,
            Shape::Bool(b) => Value::Bool(*b),
            Shape::Int(i) => Value::Int(*i),
            Shape::Float(f) => Value::Float(*f),
            Shape::Str(s) => Value::str(s.as_str()),
            Shape::Bytes(b) => Value::bytes(b.clone()),
            Shape::Range(a, b) => Value::range(*a, *b),
            Shape::List(items) => Value::list(items.iter().map(|s| build(s, containers)).collect()),
            Shape::Map(pairs) => {
                let mut e = Entries::new();
                for (k, s) in pairs {
                    let v = build(s, containers);
                    e.insert(Key::from_value(&key_value(k)).unwrap(), v);
                }
                Value::map(e)
            }
        };
        if matches!(v, Value::List(_) | Value::Map(_)) {
            containers.push(v.clone());
        }
        v
    }

    /// Adds a link from container `from` to container `to` (may create a cycle).
    fn link(containers: &[Value], from: usize, to: usize) {
        if containers.is_empty() {
            return;
        }
        let from = &containers[from % containers.len()];
        let to = containers[to % containers.len()].clone();
        match from {
            Value::List(l) => l.mutate(|items| items.push(to)),
            Value::Map(m) => {
                m.mutate(|e| {
                    e.insert(
                        Key::Str(match Value::str("link") {
                            Value::Str(s) => s,
                            _ => unreachable!(),
                        }),
                        to,
                    )
                });
            }
            _ => unreachable!(),
        }
    }

    fn has_nan(shape: &Shape) -> bool {
        match shape {
            Shape::Float(f) => f.is_nan(),
            Shape::List(items) => items.iter().any(has_nan),
            Shape::Map(pairs) => pairs.iter().any(|(_, s)| has_nan(s)),
            _ => false,
        }
    }

    fn clear(containers: &[Value]) {
        for c in containers {
            match c {
                Value::List(l) => l.mutate(Vec::clear),
                Value::Map(m) => m.mutate(|e| e.clear()),
                _ => {}
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn equals_and_display_are_total_and_consistent(
            shape in shape(),
            other in shape(),
            links in proptest::collection::vec((0usize..64, 0usize..64), 0..4),
        ) {
            let (mut ca, mut cb, mut co) = (Vec::new(), Vec::new(), Vec::new());
            let a = build(&shape, &mut ca);
            let b = build(&shape, &mut cb);
            let o = build(&other, &mut co);
            for (from, to) in &links {
                link(&ca, *from, *to);
                link(&cb, *from, *to);
                link(&co, *from, *to);
            }
            // Never panics, always terminates.
            let da = display(&a);
            let db = display(&b);
            let _ = repr(&o);
            let _ = equals(&a, &o);
            let _ = equals(&o, &a);
            // Two copies print the same and, without NaN, are equal.
            prop_assert_eq!(&da, &db);
            prop_assert_eq!(repr(&a), repr(&b));
            if !has_nan(&shape) {
                prop_assert!(equals(&a, &b));
                prop_assert!(equals(&b, &a));
                prop_assert!(equals(&a, &a));
            }
            // Equality is symmetric.
            prop_assert_eq!(equals(&a, &o), equals(&o, &a));
            clear(&ca);
            clear(&cb);
            clear(&co);
        }
    }
}
