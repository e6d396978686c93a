//! Number builtins: `int float abs min max sqrt floor ceil round`.
//!
//! Invariants:
//! - Every float → int conversion (`int`, `floor`, `ceil`, `round`) goes through one rule:
//!   the float is truncated/rounded first, then a NaN, an infinity or a value outside the i64
//!   range raises `Overflow`.
//! - `floor`, `ceil` and `round` of an int return it unchanged; `round` rounds half away from
//!   zero (`f64::round`).
//! - `min`/`max` return one of their arguments unchanged (`min(1, 2.5)` is `1`), the first
//!   on a tie or when the comparison is unordered (NaN): `min(a, b)` is `b` only if `b < a`.

use super::{arity, type_error, value_error};
use crate::native::{NativeCtx, NativeError};
use crate::ops;
use crate::value::Value;
use std::cmp::Ordering;
use std::num::IntErrorKind;

const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

/// An already-integral float as an int, or `Overflow` (NaN, infinite or out of range).
fn integral_to_int(name: &str, f: f64) -> Result<Value, NativeError> {
    if (-TWO_POW_63..TWO_POW_63).contains(&f) {
        Ok(Value::Int(f as i64))
    } else {
        Err(NativeError::error(
            "Overflow",
            format!("{name}() cannot convert {f:?} to an int (outside the int range)"),
        ))
    }
}

/// `int(x)`: an int unchanged; a float truncated toward zero (NaN, infinities and values
/// outside i64 raise `Overflow`); a string parsed as Rust's `i64::from_str` does (`"+5"` is
/// 5; `" 5"`, `"1.5"`, `"0x10"`, `""` raise `ValueError`; a well-formed number outside
/// i64 raises `Overflow`); `true`/`false` give 1/0.
pub fn int(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("int", args, 1)?;
    match &args[0] {
        Value::Int(i) => Ok(Value::Int(*i)),
        Value::Float(f) => integral_to_int("int", f.trunc()),
        Value::Bool(b) => Ok(Value::Int(i64::from(*b))),
        Value::Str(s) => match s.as_str().parse::<i64>() {
            Ok(i) => Ok(Value::Int(i)),
            Err(e)
                if matches!(
                    e.kind(),
                    IntErrorKind::PosOverflow | IntErrorKind::NegOverflow
                ) =>
            {
                Err(NativeError::error(
                    "Overflow",
                    format!("int() of {:?}: outside the int range", s.as_str()),
                ))
            }
            Err(_) => Err(value_error(format!(
                "int() cannot parse {:?} as an int",
                s.as_str()
            ))),
        },
        other => Err(type_error("int", "a number, string or bool", other)),
    }
}

/// `float(x)`: a float unchanged; an int converted (to the nearest float); a string parsed
/// as Rust's `f64::from_str` does (`"1.5"`, `"1e3"`, `"+2"`, `"inf"`, `"NaN"`; no
/// surrounding spaces, else `ValueError`); `true`/`false` give 1.0/0.0.
pub fn float(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("float", args, 1)?;
    match &args[0] {
        Value::Float(f) => Ok(Value::Float(*f)),
        Value::Int(i) => Ok(Value::Float(*i as f64)),
        Value::Bool(b) => Ok(Value::Float(if *b { 1.0 } else { 0.0 })),
        Value::Str(s) => {
            s.as_str().parse::<f64>().map(Value::Float).map_err(|_| {
                value_error(format!("float() cannot parse {:?} as a float", s.as_str()))
            })
        }
        other => Err(type_error("float", "a number, string or bool", other)),
    }
}

/// `abs(x)`: absolute value of an int (`abs(i64::MIN)` raises `Overflow`) or a float.
pub fn abs(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("abs", args, 1)?;
    match &args[0] {
        Value::Int(i) => i
            .checked_abs()
            .map(Value::Int)
            .ok_or_else(|| NativeError::error("Overflow", format!("integer overflow in abs({i})"))),
        Value::Float(f) => Ok(Value::Float(f.abs())),
        other => Err(type_error("abs", "a number", other)),
    }
}

fn pick(name: &str, args: &[Value], want: Ordering) -> Result<Value, NativeError> {
    arity(name, args, 2)?;
    let (a, b) = (&args[0], &args[1]);
    let order = match (a, b) {
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_))
        | (Value::Str(_), Value::Str(_)) => ops::compare(b, a)?,
        _ => {
            return Err(NativeError::error(
                "TypeError",
                format!(
                    "{name}() expects two numbers or two strings, got {} and {}",
                    a.type_name(),
                    b.type_name()
                ),
            ))
        }
    };
    Ok(if order == Some(want) {
        b.clone()
    } else {
        a.clone()
    })
}

/// `min(a, b)`: the smaller of two numbers or two strings, returned unchanged.
pub fn min(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    pick("min", args, Ordering::Less)
}

/// `max(a, b)`: the larger of two numbers or two strings, returned unchanged.
pub fn max(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    pick("max", args, Ordering::Greater)
}

fn number(name: &str, v: &Value) -> Result<f64, NativeError> {
    match v {
        Value::Int(i) => Ok(*i as f64),
        Value::Float(f) => Ok(*f),
        other => Err(type_error(name, "a number", other)),
    }
}

/// `sqrt(x)`: the float square root (`sqrt(-1)` is NaN).
pub fn sqrt(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("sqrt", args, 1)?;
    Ok(Value::Float(number("sqrt", &args[0])?.sqrt()))
}

fn to_int_with(name: &str, args: &[Value], op: fn(f64) -> f64) -> Result<Value, NativeError> {
    arity(name, args, 1)?;
    match &args[0] {
        Value::Int(i) => Ok(Value::Int(*i)),
        Value::Float(f) => integral_to_int(name, op(*f)),
        other => Err(type_error(name, "a number", other)),
    }
}

/// `floor(x)`: the largest int not above `x`.
pub fn floor(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    to_int_with("floor", args, f64::floor)
}

/// `ceil(x)`: the smallest int not below `x`.
pub fn ceil(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    to_int_with("ceil", args, f64::ceil)
}

/// `round(x)`: the nearest int, half away from zero.
pub fn round(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    to_int_with("round", args, f64::round)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use crate::value::Value;

    #[test]
    fn int_conversions() {
        assert_eq!(ok("int", &[i(7)]), "7");
        assert_eq!(ok("int", &[f(2.9)]), "2");
        assert_eq!(ok("int", &[f(-2.9)]), "-2");
        assert_eq!(ok("int", &[f(-0.5)]), "0");
        assert_eq!(
            ok("int", &[f(-9223372036854775808.0)]),
            "-9223372036854775808"
        );
        assert_eq!(err("int", &[f(9223372036854775808.0)]), "Overflow");
        assert_eq!(err("int", &[f(f64::NAN)]), "Overflow");
        assert_eq!(err("int", &[f(f64::INFINITY)]), "Overflow");
        assert_eq!(err("int", &[f(-1e300)]), "Overflow");
        assert_eq!(ok("int", &[s("+5")]), "5");
        assert_eq!(ok("int", &[s("-12")]), "-12");
        assert_eq!(ok("int", &[s("007")]), "7");
        assert_eq!(err("int", &[s(" 5")]), "ValueError");
        assert_eq!(err("int", &[s("5 ")]), "ValueError");
        assert_eq!(err("int", &[s("1.5")]), "ValueError");
        assert_eq!(err("int", &[s("")]), "ValueError");
        assert_eq!(err("int", &[s("0xff")]), "ValueError");
        assert_eq!(err("int", &[s("1_000")]), "ValueError");
        assert_eq!(
            msg("int", &[s("abc")]),
            "int() cannot parse \"abc\" as an int"
        );
        assert_eq!(err("int", &[s("9223372036854775808")]), "Overflow");
        assert_eq!(
            ok("int", &[s("-9223372036854775808")]),
            "-9223372036854775808"
        );
        assert_eq!(ok("int", &[Value::Bool(true)]), "1");
        assert_eq!(ok("int", &[Value::Bool(false)]), "0");
        assert_eq!(err("int", &[Value::Nil]), "TypeError");
        assert_eq!(err("int", &[l(vec![])]), "TypeError");
    }

    #[test]
    fn float_conversions() {
        assert_eq!(ok("float", &[s("1.5")]), "1.5");
        assert_eq!(ok("float", &[s("1e3")]), "1000.0");
        assert_eq!(ok("float", &[s("+2")]), "2.0");
        assert_eq!(ok("float", &[s("inf")]), "inf");
        assert_eq!(ok("float", &[s("NaN")]), "NaN");
        assert_eq!(err("float", &[s(" 1.5")]), "ValueError");
        assert_eq!(err("float", &[s("x")]), "ValueError");
        assert_eq!(ok("float", &[i(3)]), "3.0");
        assert_eq!(ok("float", &[f(0.1)]), "0.1");
        assert_eq!(ok("float", &[Value::Bool(true)]), "1.0");
        assert_eq!(err("float", &[Value::Nil]), "TypeError");
    }

    #[test]
    fn abs_min_max_sqrt() {
        assert_eq!(ok("abs", &[i(-3)]), "3");
        assert_eq!(ok("abs", &[f(-2.5)]), "2.5");
        assert_eq!(err("abs", &[i(i64::MIN)]), "Overflow");
        assert_eq!(err("abs", &[s("-1")]), "TypeError");
        assert_eq!(ok("min", &[i(1), f(2.5)]), "1");
        assert_eq!(ok("min", &[f(2.5), i(1)]), "1");
        assert_eq!(ok("max", &[i(1), f(2.5)]), "2.5");
        assert_eq!(ok("min", &[i(1), f(1.0)]), "1", "tie keeps the first");
        assert_eq!(ok("min", &[f(1.0), i(1)]), "1.0");
        assert_eq!(ok("max", &[i(1), f(1.0)]), "1");
        assert_eq!(ok("min", &[f(f64::NAN), i(1)]), "NaN");
        assert_eq!(ok("min", &[i(1), f(f64::NAN)]), "1");
        assert_eq!(ok("min", &[s("b"), s("a")]), "\"a\"");
        assert_eq!(ok("max", &[s("b"), s("a")]), "\"b\"");
        assert_eq!(err("min", &[i(1), s("a")]), "TypeError");
        assert_eq!(
            msg("max", &[Value::Nil, i(1)]),
            "max() expects two numbers or two strings, got nil and int"
        );
        assert_eq!(err("min", &[i(1)]), "ArityError");
        assert_eq!(ok("sqrt", &[i(16)]), "4.0");
        assert_eq!(ok("sqrt", &[f(2.25)]), "1.5");
        assert_eq!(ok("sqrt", &[i(-1)]), "NaN");
        assert_eq!(err("sqrt", &[s("4")]), "TypeError");
    }

    #[test]
    fn floor_ceil_round() {
        assert_eq!(ok("floor", &[f(2.7)]), "2");
        assert_eq!(ok("floor", &[f(-2.1)]), "-3");
        assert_eq!(ok("ceil", &[f(2.1)]), "3");
        assert_eq!(ok("ceil", &[f(-2.7)]), "-2");
        assert_eq!(ok("round", &[f(2.5)]), "3");
        assert_eq!(ok("round", &[f(-2.5)]), "-3");
        assert_eq!(ok("round", &[f(0.49999999999999994)]), "0");
        assert_eq!(ok("round", &[f(2.4)]), "2");
        for name in ["floor", "ceil", "round"] {
            assert_eq!(ok(name, &[i(i64::MAX)]), i64::MAX.to_string(), "{name}");
            assert_eq!(ok(name, &[i(-5)]), "-5");
            assert_eq!(err(name, &[f(1e19)]), "Overflow", "{name}");
            assert_eq!(err(name, &[f(-1e19)]), "Overflow", "{name}");
            assert_eq!(err(name, &[f(f64::NAN)]), "Overflow", "{name}");
            assert_eq!(err(name, &[f(f64::INFINITY)]), "Overflow", "{name}");
            assert_eq!(err(name, &[s("1")]), "TypeError", "{name}");
        }
        assert_eq!(
            ok("floor", &[f(-9223372036854775808.0)]),
            "-9223372036854775808"
        );
        assert_eq!(
            err("ceil", &[f(9223372036854775807.0)]),
            "Overflow",
            "2^63 as a float"
        );
    }
}
