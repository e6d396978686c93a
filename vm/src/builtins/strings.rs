//! String and bytes builtins: `str join split upper lower trim bytes text sha256 hex format`.
//!
//! Invariants:
//! - Strings are UTF-8 and immutable: every builtin here returns a new value (or the same
//!   value when nothing changes, e.g. `str` of a string).
//! - Text produced from values (`str`, `join`, `format`) is built with the fallible display
//!   functions, which check the heap limit as the text grows.
//! - `upper`, `lower` and `trim` use Rust's Unicode definitions (`str::to_uppercase`,
//!   `str::to_lowercase`, `str::trim`).

use super::{arity, arity_range, expect_list, expect_str, type_error, value_error};
use crate::display;
use crate::heap;
use crate::native::{NativeCtx, NativeError};
use crate::ops::{OBJECT_OVERHEAD, SLOT};
use crate::value::Value;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// The largest `N` accepted in a `{:.N}` placeholder.
pub const MAX_PRECISION: usize = 1000;

fn reserve(bytes: usize) -> Result<(), NativeError> {
    heap::reserve(bytes.saturating_add(OBJECT_OVERHEAD))?;
    Ok(())
}

/// `str(x)`: the value as `print` shows it (a string is returned as is).
pub fn str(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("str", args, 1)?;
    match &args[0] {
        Value::Str(_) => Ok(args[0].clone()),
        other => Ok(Value::str(display::try_display(other)?)),
    }
}

/// `join(list, sep)`: the items shown as `str` shows them, separated by `sep`.
pub fn join(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("join", args, 2)?;
    let list = expect_list("join", "a list as argument 1", &args[0])?;
    let sep = expect_str("join", "a string separator as argument 2", &args[1])?;
    let items: Vec<Value> = list.items().clone();
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        display::write_display(&mut out, item)?;
    }
    reserve(out.len())?;
    Ok(Value::str(out))
}

/// `split(s, sep)`: the pieces of `s` between occurrences of `sep` (`split("", ",")` is
/// `[""]`, as Rust's `str::split`). An empty separator raises `ValueError`.
pub fn split(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("split", args, 2)?;
    let text = expect_str("split", "a string as argument 1", &args[0])?;
    let sep = expect_str("split", "a string separator as argument 2", &args[1])?;
    if sep.is_empty() {
        return Err(value_error("split() separator must not be empty"));
    }
    let count = text.matches(sep).count() + 1;
    reserve(
        count
            .saturating_mul(SLOT + OBJECT_OVERHEAD)
            .saturating_add(text.len()),
    )?;
    Ok(Value::list(text.split(sep).map(Value::str).collect()))
}

/// `upper(s)`: Unicode uppercase.
pub fn upper(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("upper", args, 1)?;
    let text = expect_str("upper", "a string", &args[0])?;
    reserve(text.len())?;
    Ok(Value::str(text.to_uppercase()))
}

/// `lower(s)`: Unicode lowercase.
pub fn lower(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("lower", args, 1)?;
    let text = expect_str("lower", "a string", &args[0])?;
    reserve(text.len())?;
    Ok(Value::str(text.to_lowercase()))
}

/// `trim(s)`: without leading and trailing Unicode whitespace.
pub fn trim(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("trim", args, 1)?;
    let text = expect_str("trim", "a string", &args[0])?;
    let trimmed = text.trim();
    if trimmed.len() == text.len() {
        return Ok(args[0].clone());
    }
    reserve(trimmed.len())?;
    Ok(Value::str(trimmed))
}

/// `bytes(s)`: the UTF-8 bytes of a string (bytes are returned as they are).
pub fn bytes(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("bytes", args, 1)?;
    match &args[0] {
        Value::Str(s) => {
            reserve(s.as_str().len())?;
            Ok(Value::bytes(s.as_str().as_bytes().to_vec()))
        }
        Value::Bytes(_) => Ok(args[0].clone()),
        other => Err(type_error("bytes", "a string", other)),
    }
}

/// `text(b)`: bytes decoded as UTF-8 (`ValueError` if they are not UTF-8; a string is
/// returned as it is).
pub fn text(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("text", args, 1)?;
    match &args[0] {
        Value::Bytes(b) => match std::str::from_utf8(b.as_slice()) {
            Ok(s) => {
                reserve(s.len())?;
                Ok(Value::str(s))
            }
            Err(e) => Err(value_error(format!(
                "text() got bytes that are not UTF-8 (invalid at byte {})",
                e.valid_up_to()
            ))),
        },
        Value::Str(_) => Ok(args[0].clone()),
        other => Err(type_error("text", "bytes", other)),
    }
}

fn data<'a>(name: &str, v: &'a Value) -> Result<&'a [u8], NativeError> {
    match v {
        Value::Str(s) => Ok(s.as_str().as_bytes()),
        Value::Bytes(b) => Ok(b.as_slice()),
        other => Err(type_error(name, "a string or bytes", other)),
    }
}

/// `sha256(x)`: the 32-byte SHA-256 digest of a string's UTF-8 or of bytes.
pub fn sha256(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("sha256", args, 1)?;
    let digest = Sha256::digest(data("sha256", &args[0])?);
    Ok(Value::bytes(digest.to_vec()))
}

/// `hex(b)`: lowercase hex of bytes (or of a string's UTF-8).
pub fn hex(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity("hex", args, 1)?;
    let data = data("hex", &args[0])?;
    reserve(data.len().saturating_mul(2))?;
    let mut out = String::with_capacity(data.len() * 2);
    for b in data {
        let _ = write!(out, "{b:02x}");
    }
    Ok(Value::str(out))
}

/// `format(t, ..)`: `t` with each `{}` replaced by the next argument as `str` shows it and
/// each `{:.N}` by the next argument (a number) with `N` decimals (`N` at most
/// [`MAX_PRECISION`]); `{{` and `}}` are literal braces. Too few or too many arguments, or
/// any other use of `{`/`}`, raise `ValueError`; `{:.N}` of a non-number raises `TypeError`.
pub fn format(_: &mut NativeCtx<'_>, args: &[Value]) -> Result<Value, NativeError> {
    arity_range("format", args, 1, usize::MAX)?;
    let template = expect_str("format", "a string template as argument 1", &args[0])?;
    let mut rest = args[1..].iter();
    let mut used = 0usize;
    let mut next_arg = |placeholder: &str| -> Result<&Value, NativeError> {
        used += 1;
        rest.next().ok_or_else(|| {
            value_error(format!(
                "format() has too few arguments: placeholder {used} ({placeholder}) has none"
            ))
        })
    };
    let mut out = String::with_capacity(template.len());
    let bytes = template.as_bytes();
    let mut i = 0;
    let mut literal_start = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => {
                out.push_str(&template[literal_start..i]);
                if bytes.get(i + 1) == Some(&b'{') {
                    out.push('{');
                    i += 2;
                } else if bytes.get(i + 1) == Some(&b'}') {
                    display::write_display(&mut out, next_arg("{}")?)?;
                    i += 2;
                } else if template[i..].starts_with("{:.") {
                    let digits = template[i + 3..]
                        .bytes()
                        .take_while(u8::is_ascii_digit)
                        .count();
                    let close = i + 3 + digits;
                    if digits == 0 || bytes.get(close) != Some(&b'}') {
                        return Err(malformed(template, i));
                    }
                    let spec = &template[i..=close];
                    let precision: usize = template[i + 3..close]
                        .parse()
                        .ok()
                        .filter(|p| *p <= MAX_PRECISION)
                        .ok_or_else(|| {
                            value_error(format!(
                                "format() precision in {spec} is above {MAX_PRECISION}"
                            ))
                        })?;
                    match next_arg(spec)? {
                        Value::Int(n) => {
                            let _ = write!(out, "{n}");
                            if precision > 0 {
                                out.push('.');
                                out.extend(std::iter::repeat_n('0', precision));
                            }
                        }
                        Value::Float(f) => {
                            let _ = write!(out, "{f:.precision$}");
                        }
                        other => {
                            return Err(NativeError::error(
                                "TypeError",
                                format!(
                                    "format() placeholder {spec} expects a number, got {}",
                                    other.type_name()
                                ),
                            ))
                        }
                    }
                    i = close + 1;
                } else {
                    return Err(malformed(template, i));
                }
                literal_start = i;
                heap::reserve(out.len())?;
            }
            b'}' => {
                if bytes.get(i + 1) == Some(&b'}') {
                    out.push_str(&template[literal_start..i]);
                    out.push('}');
                    i += 2;
                    literal_start = i;
                } else {
                    return Err(value_error(format!(
                        "format() template has an unmatched '}}' at byte {i} (write '}}}}' for a literal brace)"
                    )));
                }
            }
            _ => i += 1,
        }
    }
    out.push_str(&template[literal_start..]);
    let given = args.len() - 1;
    if given > used {
        return Err(value_error(format!(
            "format() has too many arguments: {given} given for {used} placeholders"
        )));
    }
    reserve(out.len())?;
    Ok(Value::str(out))
}

fn malformed(template: &str, at: usize) -> NativeError {
    let end = template[at..]
        .char_indices()
        .nth(8)
        .map_or(template.len(), |(k, _)| at + k);
    value_error(format!(
        "format() template has a malformed placeholder at byte {at} ({:?}); use {{}}, {{:.N}}, {{{{ or }}}}",
        &template[at..end]
    ))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use crate::value::Value;

    #[test]
    fn str_shows_values() {
        assert_eq!(ok("str", &[s("raw \"x\"")]), r#""raw \"x\"""#);
        assert_eq!(ok("str", &[i(5)]), "\"5\"");
        assert_eq!(ok("str", &[f(1.0)]), "\"1.0\"");
        assert_eq!(ok("str", &[Value::Nil]), "\"nil\"");
        assert_eq!(
            ok("str", &[l(vec![s("a"), b(b"\x00")])]),
            r#""[\"a\", b\"\\x00\"]""#
        );
        assert_eq!(ok("str", &[Value::range(0, 5)]), "\"0..5\"");
    }

    #[test]
    fn join_and_split() {
        assert_eq!(
            ok(
                "join",
                &[
                    l(vec![s("a"), i(1), f(2.5), Value::Nil, l(vec![s("x")])]),
                    s(", ")
                ]
            ),
            r#""a, 1, 2.5, nil, [\"x\"]""#
        );
        assert_eq!(ok("join", &[l(vec![]), s("-")]), "\"\"");
        assert_eq!(ok("join", &[l(vec![s("a")]), s("")]), "\"a\"");
        assert_eq!(err("join", &[s("abc"), s(",")]), "TypeError");
        assert_eq!(err("join", &[l(vec![]), i(1)]), "TypeError");
        assert_eq!(
            ok("split", &[s("a,b,,c"), s(",")]),
            r#"["a", "b", "", "c"]"#
        );
        assert_eq!(ok("split", &[s(""), s(",")]), r#"[""]"#);
        assert_eq!(ok("split", &[s("abc"), s("abc")]), r#"["", ""]"#);
        assert_eq!(ok("split", &[s("a::b"), s("::")]), r#"["a", "b"]"#);
        assert_eq!(err("split", &[s("abc"), s("")]), "ValueError");
        assert_eq!(err("split", &[b(b"abc"), s(",")]), "TypeError");
    }

    #[test]
    fn case_and_trim() {
        assert_eq!(ok("upper", &[s("Skiff é")]), "\"SKIFF É\"");
        assert_eq!(ok("lower", &[s("SkIFF É")]), "\"skiff é\"");
        assert_eq!(ok("upper", &[s("ß")]), "\"SS\"");
        assert_eq!(ok("trim", &[s("  a b \n\t")]), "\"a b\"");
        assert_eq!(ok("trim", &[s("\u{3000}x\u{a0}")]), "\"x\"");
        assert_eq!(ok("trim", &[s("")]), "\"\"");
        for name in ["upper", "lower", "trim"] {
            assert_eq!(err(name, &[b(b"a")]), "TypeError");
        }
    }

    #[test]
    fn bytes_text_sha_hex() {
        assert_eq!(ok("bytes", &[s("hé")]), r#"b"h\xc3\xa9""#);
        assert_eq!(ok("bytes", &[b(b"x")]), r#"b"x""#);
        assert_eq!(err("bytes", &[i(1)]), "TypeError");
        assert_eq!(ok("text", &[b(b"h\xc3\xa9")]), "\"hé\"");
        assert_eq!(err("text", &[b(b"\xff")]), "ValueError");
        assert_eq!(err("text", &[b(b"ab\xc3")]), "ValueError");
        assert_eq!(err("text", &[l(vec![])]), "TypeError");
        let digest = crate::builtins::test_util::call("sha256", &[s("abc")]).unwrap();
        match &digest {
            Value::Bytes(d) => assert_eq!(d.as_slice().len(), 32),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ok("hex", &[digest]),
            "\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\""
        );
        assert_eq!(
            ok(
                "hex",
                &[crate::builtins::test_util::call("sha256", &[b(b"")]).unwrap()]
            ),
            "\"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\""
        );
        assert_eq!(err("sha256", &[i(1)]), "TypeError");
        assert_eq!(ok("hex", &[b(&[0, 0xab, 0xff, 0x10])]), "\"00abff10\"");
        assert_eq!(ok("hex", &[b(b"")]), "\"\"");
        assert_eq!(ok("hex", &[s("A")]), "\"41\"");
        assert_eq!(err("hex", &[i(255)]), "TypeError");
    }

    #[test]
    fn format_placeholders() {
        assert_eq!(
            ok("format", &[s("x={} y={}"), i(1), s("two")]),
            r#""x=1 y=two""#
        );
        assert_eq!(ok("format", &[s("{}"), l(vec![s("a")])]), r#""[\"a\"]""#);
        assert_eq!(ok("format", &[s("{:.2}"), f(1.23456)]), "\"1.23\"");
        assert_eq!(ok("format", &[s("{:.0}"), f(2.5)]), "\"2\"");
        assert_eq!(ok("format", &[s("{:.3}"), i(7)]), "\"7.000\"");
        assert_eq!(ok("format", &[s("{:.0}"), i(-7)]), "\"-7\"");
        assert_eq!(ok("format", &[s("{:.1}"), f(f64::NAN)]), "\"NaN\"");
        assert_eq!(
            ok("format", &[s("{:.1}"), f(f64::NEG_INFINITY)]),
            "\"-inf\""
        );
        assert_eq!(ok("format", &[s("{{}} {{{}}}"), i(5)]), "\"{} {5}\"");
        assert_eq!(
            ok("format", &[s("no placeholders é")]),
            "\"no placeholders é\""
        );
        assert_eq!(ok("format", &[s("")]), "\"\"");
        assert_eq!(ok("format", &[s("é{}é"), s("ü")]), "\"éüé\"");
        assert_eq!(err("format", &[s("{} {}"), i(1)]), "ValueError");
        assert_eq!(err("format", &[s("{}"), i(1), i(2)]), "ValueError");
        assert_eq!(err("format", &[s("{")]), "ValueError");
        assert_eq!(err("format", &[s("}")]), "ValueError");
        assert_eq!(err("format", &[s("{x}"), i(1)]), "ValueError");
        assert_eq!(err("format", &[s("{:}"), i(1)]), "ValueError");
        assert_eq!(err("format", &[s("{:.}"), i(1)]), "ValueError");
        assert_eq!(err("format", &[s("{:.2"), i(1)]), "ValueError");
        assert_eq!(err("format", &[s("{:5}"), i(1)]), "ValueError");
        assert_eq!(
            err("format", &[s("{:.99999999999999999999}"), f(1.0)]),
            "ValueError"
        );
        assert_eq!(err("format", &[s("{:.2}"), s("1")]), "TypeError");
        assert_eq!(err("format", &[i(1)]), "TypeError");
        assert!(msg("format", &[s("a {x")]).contains("malformed placeholder at byte 2"));
    }
}
