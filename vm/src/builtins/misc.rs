//! Output, errors, time and node identity: `print type assert error now_ms here caller peers`.
//!
//! Invariants:
//! - `print` writes one whole line per call to `ctx.output` (one `write_all`), so lines from
//!   concurrent tasks never interleave mid-line. A failing sink (closed pipe) is ignored:
//!   printing never raises.
//! - `here`, `caller` and `peers` report exactly `ctx.node` (`peers` is sorted by the host).

use super::{arity, arity_range, expect_str};
use crate::display;
use crate::native::{NativeCtx, NativeError};
use crate::value::Value;

/// `print(..)`: the arguments as `str` shows them, separated by spaces, then a newline.
pub fn print(ctx: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    let mut line = String::new();
    for (i, v) in args.iter().enumerate() {
        if i > 0 {
            line.push(' ');
        }
        display::write_display(&mut line, v)?;
    }
    line.push('\n');
    let _ = ctx.output.write_all(line.as_bytes());
    Ok(Value::Nil)
}

/// `type(x)`: `"nil" "bool" "int" "float" "string" "bytes" "list" "map" "range" "function"
/// "task"`.
pub fn type_of(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("type", args, 1)?;
    Ok(Value::str(args[0].type_name()))
}

/// `assert(c, msg?)`: `nil` when `c` is truthy, else raises `AssertionError` with `msg`
/// (shown as `str` shows it; default `"assertion failed"`).
pub fn assert(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity_range("assert", args, 1, 2)?;
    if args[0].is_truthy() {
        return Ok(Value::Nil);
    }
    let message = match args.get(1) {
        Some(m) => display::try_display(m)?,
        None => "assertion failed".to_string(),
    };
    Err(NativeError::error("AssertionError", message))
}

/// `error(kind, msg)`: the error map `{"kind": kind, "message": msg}` (not raised; `throw`
/// it). `kind` must be a string; `msg` is shown as `str` shows it.
pub fn error(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("error", args, 2)?;
    let kind = expect_str("error", "a string kind as argument 1", &args[0])?;
    let message = match &args[1] {
        Value::Str(s) => s.as_str().to_string(),
        other => display::try_display(other)?,
    };
    Ok(Value::error(kind, message))
}

/// `now_ms()`: wall-clock milliseconds since the Unix epoch (negative before it).
pub fn now_ms(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("now_ms", args, 0)?;
    let now = std::time::SystemTime::now();
    let ms = match now.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |m| -m),
    };
    Ok(Value::Int(ms))
}

/// `here()`: this node's name.
pub fn here(ctx: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("here", args, 0)?;
    Ok(Value::str(&*ctx.node.here))
}

/// `caller()`: the name of the peer that sent this hop, or `nil` at the top level.
pub fn caller(ctx: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("caller", args, 0)?;
    Ok(ctx.node.caller.as_deref().map_or(Value::Nil, Value::str))
}

/// `peers()`: a new list of the peer names this node knows, sorted, without its own.
pub fn peers(ctx: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("peers", args, 0)?;
    Ok(Value::list(
        ctx.node
            .peers
            .iter()
            .map(|p| Value::str(p.as_str()))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use crate::native::NodeInfo;
    use crate::value::Value;

    #[test]
    fn print_writes_one_line() {
        let mut out = Vec::new();
        let r = call_with_output(
            "print",
            &[s("a"), i(1), f(1.0), l(vec![s("x"), Value::Nil]), b(b"\n")],
            &mut out,
        );
        assert!(matches!(r, Ok(Value::Nil)));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a 1 1.0 [\"x\", nil] b\"\\n\"\n"
        );
        let mut out = Vec::new();
        call_with_output("print", &[], &mut out).unwrap();
        assert_eq!(out, b"\n");
    }

    #[test]
    fn type_names() {
        let cases = [
            (Value::Nil, "nil"),
            (Value::Bool(true), "bool"),
            (i(1), "int"),
            (f(1.0), "float"),
            (s("a"), "string"),
            (b(b"a"), "bytes"),
            (l(vec![]), "list"),
            (m(vec![]), "map"),
            (Value::range(0, 1), "range"),
        ];
        for (v, name) in cases {
            assert_eq!(ok("type", &[v]), format!("{name:?}"));
        }
    }

    #[test]
    fn assert_and_error() {
        assert_eq!(ok("assert", &[i(0)]), "nil", "0 is truthy");
        assert_eq!(ok("assert", &[s(""), s("unused")]), "nil");
        assert_eq!(err("assert", &[Value::Bool(false)]), "AssertionError");
        assert_eq!(msg("assert", &[Value::Nil]), "assertion failed");
        assert_eq!(
            msg("assert", &[Value::Nil, s("x must be positive")]),
            "x must be positive"
        );
        assert_eq!(msg("assert", &[Value::Nil, l(vec![i(1)])]), "[1]");
        assert_eq!(
            ok("error", &[s("ValueError"), s("bad")]),
            r#"{"kind": "ValueError", "message": "bad"}"#
        );
        assert_eq!(
            ok("error", &[s("Custom"), i(5)]),
            r#"{"kind": "Custom", "message": "5"}"#
        );
        assert_eq!(err("error", &[i(1), s("bad")]), "TypeError");
    }

    #[test]
    fn clock_and_node() {
        let v = crate::builtins::test_util::call("now_ms", &[]).unwrap();
        match v {
            Value::Int(ms) => assert!(ms > 1_600_000_000_000, "{ms}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(ok("here", &[]), "\"main\"");
        assert_eq!(ok("caller", &[]), "nil");
        assert_eq!(ok("peers", &[]), r#"["a", "b"]"#);
        let node = NodeInfo {
            here: "w1".into(),
            caller: Some("main".into()),
            peers: Default::default(),
        };
        let mut out = Vec::new();
        let c = call_on("caller", &[], &mut out, &node).unwrap();
        assert_eq!(crate::display::repr(&c), "\"main\"");
        let h = call_on("here", &[], &mut out, &node).unwrap();
        assert_eq!(crate::display::repr(&h), "\"w1\"");
        let p = call_on("peers", &[], &mut out, &node).unwrap();
        assert_eq!(crate::display::repr(&p), "[]");
    }
}
