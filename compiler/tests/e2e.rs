//! End to end: compile, load into the VM's verified code store, run, compare printed output.
//! Exercises the codegen conventions against the real verifier and interpreter.

use skiff_compiler::{compile, CompileOptions};
use skiff_vm::interp::{Engine, ExecIo, Execution, Limits};
use skiff_vm::store::CodeStore;

fn run(src: &str) -> Result<String, String> {
    let out = compile(src, "e2e.skiff", &CompileOptions::default());
    let module = out
        .module
        .ok_or_else(|| format!("compile errors: {:#?}", out.diagnostics))?;
    let mut store = CodeStore::new();
    store
        .add_module(&module)
        .map_err(|e| format!("verify: {e}"))?;
    let (io, stdout, _stderr) = ExecIo::capture();
    let r = Execution::call(
        &Engine::new(),
        &store,
        module.entry,
        vec![],
        Limits::default(),
        io,
    );
    match r {
        Ok(_) => Ok(stdout.text()),
        Err(e) => Err(format!("{e}\nstdout: {}", stdout.text())),
    }
}

#[track_caller]
fn expect(src: &str, expected: &str) {
    match run(src) {
        Ok(out) => assert_eq!(out.trim_end(), expected.trim_end(), "program:\n{src}"),
        Err(e) => panic!("program failed:\n{src}\n{e}"),
    }
}

#[test]
fn language_example() {
    // Without peers the remote hop fails, so use the fallback to run the body locally.
    expect(
        r#"
const LIMIT = 3
fn score(doc, q) { if contains(doc, q) { len(doc) } else { 0 } }
fn search(docs, q) {
  let hits = filter(docs, fn(d) { score(d, q) > 0 })
  slice(sort(hits), 0, min(LIMIT, len(hits)))
}
let q = "sk"
let docs = ["skiff", "sky", "boat", "skip"]
let found = remote("worker") [docs, q] { search(docs, q) } else { search(docs, q) }
print(found)
"#,
        r#"["skiff", "skip", "sky"]"#,
    );
}

#[test]
fn arithmetic_and_control_flow() {
    expect(
        "fn fib(n) { if n < 2 { return n } fib(n - 1) + fib(n - 2) }\nprint(fib(20))",
        "6765",
    );
    expect(
        "let t = 0\nfor i in 0..10 { if i % 2 == 0 { continue }\n if i > 7 { break }\n t += i }\nprint(t)",
        "16",
    );
    expect(
        "let w = 0\nwhile w < 5 { w += 1 }\nprint(w, -w, not w, 7 / 2, 7.5 % 2)",
        "5 -5 false 3 1.5",
    );
    expect(
        "print(1 and 2, nil or 3, false and 1, 1 == 1.0)",
        "2 3 false true",
    );
    expect(
        "let s = if 2 > 1 { \"big\" } else if 1 == 1 { \"one\" } else { \"small\" }\nprint(s)",
        "big",
    );
}

#[test]
fn closures_cells_and_loops() {
    expect(
        "fn make() { let n = 0\n fn inc() { n += 1; n }\n inc }\nlet c = make()\nc(); c()\nprint(c())",
        "3",
    );
    expect(
        "let fs = []\nfor x in [1, 2, 3] { push(fs, fn() { x * 10 }) }\nprint(map(fs, fn(f) { f() }))",
        "[10, 20, 30]",
    );
    expect("let a = 1\nlet f = fn() { a }\na = 5\nprint(f())", "5");
    expect(
        "fn f(p) { let g = fn() { p += 1; p }\n g(); g() }\nprint(f(10))",
        "12",
    );
    expect(
        "fn outer() { fn fact(n) { if n < 2 { 1 } else { n * fact(n - 1) } }\n fact(5) }\nprint(outer())",
        "120",
    );
    expect(
        "let nested = fn(a) { fn(b) { fn(c) { a + b + c } } }\nprint(nested(1)(2)(3))",
        "6",
    );
}

#[test]
fn collections_and_assignment_forms() {
    expect(
        "let m = {a: 1, \"b\": 2}\nm.a += 10\nm[\"b\"] -= 1\nm.c = [1]\nlet l = [1, 2, 3]\nl[0] = 9\nl[2] += 10\nprint(m, l)",
        r#"{"a": 11, "b": 1, "c": [1]} [9, 2, 13]"#,
    );
    expect(
        "let out = []\nfor k, v in {x: 1, y: 2} { push(out, k + str(v)) }\nfor i, x in [\"a\"] { push(out, str(i) + x) }\nprint(out)",
        r#"["x1", "y2", "0a"]"#,
    );
    expect(
        "const L = [1, [2]]\nlet a = L\npush(a, 3)\nprint(L, a, {}, 0..3)",
        "[1, [2]] [1, [2], 3] {} 0..3",
    );
}

#[test]
fn errors_and_tasks() {
    expect(
        "let e = try { throw error(\"ValueError\", \"bad\") } catch err { err.kind }\nprint(e)",
        "ValueError",
    );
    expect(
        "let r = []\nfor x in [1, 2, 3] { let v = try { if x == 2 { break }\n x } catch e { continue }\n push(r, v) }\nprint(r)",
        "[1]",
    );
    expect(
        "let x = try { 1 / 0 } catch e { e.kind }\nprint(x)",
        "DivisionByZero",
    );
    expect(
        "let ts = map([1, 2, 3], fn(x) { spawn { x * 2 } })\nprint(await_all(ts), await spawn { 1 } + 1)",
        "[2, 4, 6] 2",
    );
    expect(
        "let ts = [spawn { 1 }, spawn { throw \"first\" }, spawn { throw \"second\" }]\nprint(try { await_all(ts) } catch e { e })",
        "first",
    );
    expect(
        "let r = remote(\"nowhere\") [] { 1 } else { \"fallback\" }\nprint(r)",
        "fallback",
    );
    expect(
        "let r = try { remote(\"nowhere\") [] { 1 } } catch e { e.kind }\nprint(r)",
        "Unreachable",
    );
}
