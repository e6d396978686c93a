//! Every kind of compile error and warning, with its position (1-based line, column).

#[macro_use]
mod common;
use common::*;
use skiff_compiler::{compile, line_col, CompileOptions, CompileOutput};

/// Compiles `src` as file `t` with the default options.
fn compile_t(src: &str) -> CompileOutput {
    compile(src, "t", &CompileOptions::default())
}

fn has(list: &[(u32, u32, String)], line: u32, col: u32, needle: &str) -> bool {
    list.iter()
        .any(|(l, c, m)| *l == line && *c == col && m.contains(needle))
}

#[track_caller]
fn assert_error(src: &str, line: u32, col: u32, needle: &str) {
    let errs = errors(src);
    assert!(
        has(&errs, line, col, needle),
        "expected error {line}:{col} containing {needle:?}, got {errs:#?}"
    );
}

#[track_caller]
fn assert_warning(src: &str, line: u32, col: u32, needle: &str) {
    let ws = warnings(src);
    assert!(
        has(&ws, line, col, needle),
        "expected warning {line}:{col} containing {needle:?}, got {ws:#?}"
    );
}

// ---------------------------------------------------------------- lexical

#[test]
fn lexical_errors() {
    assert_error("let a = 1 @ 2", 1, 11, "unexpected character `@`");
    assert_error("let a = \"abc", 1, 9, "unterminated string");
    assert_error("let a = \"a\\qb\"", 1, 11, "unknown escape");
    assert_error("let a = \"\\u{110000}\"", 1, 10, "unicode escape");
    assert_error("let a = 9223372036854775808", 1, 9, "does not fit");
    assert_error("let a = 0x1_0000_0000_0000_0000", 1, 9, "does not fit");
    assert_error("let a = b\"\\xZZ\"", 1, 11, "byte escape");
    assert_error("let a = b\"é\"", 1, 11, "non-ASCII");
    assert_error("let a = 1e", 1, 9, "exponent");
    assert_error("let a = 12abc", 1, 9, "invalid number");
    assert_error("if !a { }", 1, 4, "use `not`");
}

#[test]
fn literals_lex_correctly() {
    // These compile without error.
    module(
        r#"let a = [42, 1_000, 0xff, 1.5, 2.0, 1e9, 6.02e-3, "\n\t\r\\\"\0\u{1F600}", b"..\xff..\n\t\r\\\"\0"]"#,
    );
    module("let r = 1..5\nlet s = 0.5..2");
    module("let min = -9223372036854775807 - 1");
}

#[test]
fn columns_count_chars_not_bytes() {
    assert_error("let é = \"ü\" + @", 1, 15, "unexpected character");
    assert_eq!(line_col("aé\nxyz", 6), (2, 3));
    assert_eq!(line_col("aé\nxyz", 3), (1, 3));
    assert_eq!(line_col("abc", 99), (1, 4));
}

// ---------------------------------------------------------------- syntax

#[test]
fn syntax_errors_are_all_reported() {
    let src = "let = 1\nlet b = (2 +\nlet c = 3\nprint(c))\nlet d = [1, 2\nfn f( { }";
    let errs = errors(src);
    assert!(has(&errs, 1, 5, "expected a variable name"), "{errs:#?}");
    assert!(has(&errs, 3, 1, "expected"), "{errs:#?}");
    assert!(errs.len() >= 3, "{errs:#?}");
}

#[test]
fn syntax_error_kinds() {
    assert_error(
        "let a = ",
        1,
        9,
        "expected an expression, found end of file",
    );
    assert_error("fn f() {\n  let a = 1\n", 1, 8, "never closed");
    assert_error("let a = 1 let b = 2", 1, 11, "expected `;` or a newline");
    assert_error("1 = 2", 1, 1, "invalid assignment target");
    assert_error("let r = remote(\"w\") { 1 }", 1, 21, "capture list");
    assert_error("}", 1, 1, "no matching `{`");
    assert_error("let x = try { 1 }", 1, 18, "expected `catch`");
    assert_error("let f = fn g() { }", 1, 12, "named `fn` declaration");
}

#[test]
fn semicolons_and_blocks() {
    module("let a = 1;; let b = 2; ;\nfn f() { } fn g() { }\nif a { } else { };");
    // `{}` is an empty map; `{ a: 1 }` a map; `{ a }` a block.
    let m = module("let a = 1\nlet e = {}\nlet m = { a: 1 }\nlet b = { a }");
    let main = m.blobs.values().next().unwrap().functions[0].clone();
    assert!(emits!(main, skiff_vm::Instr::Map { len: 0 }));
    assert!(emits!(main, skiff_vm::Instr::Map { len: 1 }));
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let src = format!("let a = {}1{}", "(".repeat(5000), ")".repeat(5000));
    assert!(errors(&src)
        .iter()
        .any(|e| e.2.contains("nested too deeply")));
    let src = format!("let a = 1{}", " + 1".repeat(5000));
    assert!(errors(&src)
        .iter()
        .any(|e| e.2.contains("nested too deeply")));
    let src = format!("let a = {}", "-".repeat(5000));
    assert!(!errors(&src).is_empty());
    let src = "{".repeat(5000);
    assert!(!errors(&src).is_empty());
    // Within the bound is fine.
    let src = format!("let a = {}1{}", "(".repeat(50), ")".repeat(50));
    module(&src);
}

// ---------------------------------------------------------------- resolution

#[test]
fn undeclared_names() {
    assert_error("print(x)", 1, 7, "cannot find `x`");
    assert_error("x = 1", 1, 1, "cannot assign to undeclared variable `x`");
    assert_error("x += 1", 1, 1, "undeclared variable `x`");
    assert_error("{ let a = 1 }\nprint(a)", 2, 7, "cannot find `a`");
    assert_error("nope(1)", 1, 1, "cannot find `nope`");
    // Declared after the use in the same scope: not visible yet.
    assert_error("print(y)\nlet y = 1", 1, 7, "cannot find `y`");
}

#[test]
fn top_level_functions_are_closed() {
    assert_error(
        "let limit = 3\nfn f(x) { x < limit }",
        2,
        15,
        "top-level function cannot use the top-level variable `limit`",
    );
    let out = compile_t("let limit = 3\nfn f() { limit }");
    assert!(out.diagnostics[0].notes[0].contains("pass `limit` as an argument"));
    // Closures at the top level may capture top-level variables.
    module("let limit = 3\nlet f = fn(x) { x < limit }");
    // Top-level functions see each other (hoisted), consts and builtins.
    module("fn a() { b() + C + len([]) }\nfn b() { a() }\nconst C = 1");
}

#[test]
fn constants() {
    assert_error("const A = B\nconst B = A", 2, 11, "depends on itself");
    assert_error("const A = A + 1", 1, 11, "depends on itself");
    assert_error("let x = 1\nconst A = x", 2, 11, "`x` is not a constant");
    assert_error("const A = len([])", 1, 11, "a constant may only use");
    assert_error("const A = 1 / 0", 1, 13, "division by zero");
    assert_error("const A = 9223372036854775807 + 1", 1, 31, "overflow");
    assert_error("const A = 1 + \"a\"", 1, 13, "unsupported operand");
    assert_error(
        "fn f() { const A = 1 }",
        1,
        16,
        "only allowed at the top level",
    );
    assert_error("const A = 1\nA = 2", 2, 1, "cannot assign to constant `A`");
    assert_error("const A = 1\nconst A = 2", 2, 7, "already defined");
    assert_error("const M = {1: 2, [1]: 3}", 1, 18, "cannot be a map key");
    module("const A = 1\nconst B = A * 2 + 1\nconst C = [A, B, {k: B}, \"s\" + \"t\", 1 < 2, not A, 0..B, -A]\nprint(C)");
}

#[test]
fn misc_resolution_errors() {
    assert_error(
        "let f = len",
        1,
        9,
        "builtin `len` cannot be used as a value",
    );
    assert_error("break", 1, 1, "`break` outside of a loop");
    assert_error(
        "while true { let f = fn() { continue } }",
        1,
        29,
        "`continue` outside of a loop",
    );
    assert_error("fn f() { }\nfn f() { }", 2, 4, "defined twice");
    assert_error("fn f(a, a) { }", 1, 9, "declared twice");
    assert_error("fn f() { }\nf = 1", 2, 1, "cannot assign to function");
    assert_error("for k, k in {} { }", 1, 8, "declared twice");
}

#[test]
fn many_errors_in_one_run() {
    let src = "print(a)\nlet x = 1 +\nprint(b)\nconst C = D\nremote(\"w\") [x] { y }";
    let errs = errors(src);
    assert!(has(&errs, 1, 7, "cannot find `a`"), "{errs:#?}");
    assert!(
        has(&errs, 3, 7, "cannot find `b`") || has(&errs, 3, 1, ""),
        "{errs:#?}"
    );
    assert!(has(&errs, 4, 11, "cannot find constant `D`"), "{errs:#?}");
    assert!(has(&errs, 5, 19, "cannot find `y`"), "{errs:#?}");
}

// ---------------------------------------------------------------- remote

#[test]
fn remote_capture_checks() {
    assert_error(
        "let a = 1\nlet b = 2\nremote(\"w\") [a] { a + b }",
        3,
        23,
        "`b` is used in a remote body but is not in its capture list",
    );
    // Through a closure inside the body, too.
    assert_error(
        "let a = 1\nremote(\"w\") [] { fn() { a } }",
        2,
        25,
        "`a` is used in a remote body",
    );
    // Assigning counts as a use.
    assert_error(
        "let a = 1\nremote(\"w\") [] { a = 2 }",
        2,
        18,
        "not in its capture list",
    );
    assert_error(
        "remote(\"w\") [nothing] { 1 }",
        1,
        14,
        "capture `nothing` does not name a variable",
    );
    assert_error(
        "let a = 1\nremote(\"w\") [a, a] { a }",
        2,
        17,
        "twice in the capture list",
    );
    // Nested hops need their own captures.
    assert_error(
        "let a = 1\nremote(\"w\") [a] { remote(\"v\") [] { a } }",
        2,
        36,
        "not in its capture list",
    );
    module("let a = 1\nremote(\"w\") [a] { remote(\"v\") [a] { a } }");
    // Locals of the body, globals and the fallback need no capture.
    module(
        "fn f() { 1 }\nconst K = 2\nlet a = 1\nremote(\"w\") [] { let z = f() + K; z } else { a }",
    );
}

#[test]
fn remote_capture_warnings() {
    assert_warning("let a = 1\nremote(\"w\") [a] { 1 }", 2, 14, "never used");
    assert_warning(
        "fn f() { 1 }\nremote(\"w\") [f] { f() }",
        2,
        14,
        "needs no capture",
    );
    assert_warning(
        "const K = 1\nremote(\"w\") [K] { K }",
        2,
        14,
        "needs no capture",
    );
    // Warnings alone do not stop compilation.
    let out = compile_t("let a = 1\nremote(\"w\") [a] { 1 }");
    assert!(out.module.is_some());
}

#[test]
fn remote_in_top_level_function_cannot_capture_top_level_let() {
    assert_error(
        "let a = 1\nfn f() { remote(\"w\") [a] { a } }",
        2,
        23,
        "top-level function cannot use",
    );
}

#[test]
fn host_natives_resolve() {
    let out = compile(
        "search(1)",
        "t",
        &CompileOptions {
            natives: vec!["search".into()],
        },
    );
    assert!(out.module.is_some());
    let out = compile_t("search(1)");
    assert!(out.module.is_none());
}

#[test]
fn diagnostics_are_sorted_by_position() {
    let out = compile_t("print(b)\nprint(a)\nlet = 3");
    let starts: Vec<_> = out.diagnostics.iter().map(|d| d.span.start).collect();
    let mut sorted = starts.clone();
    sorted.sort();
    assert_eq!(starts, sorted);
}

#[test]
fn show_corpus_error_file() {
    // Not an assertion-heavy test: documents (with --nocapture) what a typical bad file reports,
    // and checks that recovery does not cascade.
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz-corpus/errors.skiff"
    ))
    .unwrap();
    let all = diags(&src);
    for d in &all {
        eprintln!("{d:?}");
    }
    let errs = errors(&src);
    assert!(errs.len() >= 8 && errs.len() <= 12, "{errs:#?}");
}

#[test]
fn recovery_does_not_cascade() {
    assert_eq!(errors("fn f(x) {\n  let y = x +\n}\nprint(f(1))").len(), 1);
    assert_eq!(
        errors("print(f(1)\nlet z = 2\nprint(z)\nfn f(a) { a }").len(),
        1
    );
    // Only "never closed": the unparsed `if` is not resolved, so `x` is not reported.
    assert_eq!(errors("if x {\n  print(1)\n").len(), 1);
}

#[test]
fn too_many_locals_is_an_error() {
    let src: String = (0..70_000).map(|i| format!("let v{i} = {i}\n")).collect();
    let src = format!("fn f() {{\n{src}}}");
    assert!(errors(&src)
        .iter()
        .any(|e| e.2.contains("too many local variables")));
}

proptest::proptest! {
    /// A hint only speeds the search up: from any line (even past the end, `usize::MAX`
    /// included), any offset gets its line and column (chars, 1-based), and the hint
    /// becomes that line.
    #[test]
    fn a_line_hint_never_changes_a_position(
        text in "[aé\n€x]{0,40}",
        offset in 0usize..60,
        hint in proptest::prop_oneof![0usize..20, proptest::strategy::Just(usize::MAX)],
    ) {
        // By counting: the offset clamped back to a char start, then the newlines and
        // the chars after the last one before it.
        let mut at = offset.min(text.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let before = &text[..at];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        let index = skiff_compiler::LineIndex::new(&text);
        let mut near = hint;
        let got = index.line_col_near(&text, offset, &mut near);
        proptest::prop_assert_eq!(got, (line as u32, col as u32));
        proptest::prop_assert_eq!(near, line - 1);
    }
}
