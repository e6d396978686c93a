//! Code generation: structure of the emitted code for each construct, checked with the
//! stack-discipline checker in `common` (a stand-in for the VM verifier).

#[macro_use]
mod common;
use common::*;
use skiff_vm::Instr;

const EVERYTHING: &str = r#"
const LIMIT = 3
const NAMES = ["a", "b"]
const CONF = {depth: LIMIT * 2, name: "x" + "y", r: 0..LIMIT, neg: -1.5, ok: not false}
fn score(doc, q) { if contains(doc, q) { len(doc) } else { 0 } }
fn search(docs, q) {
  let hits = filter(docs, fn(d) { score(d, q) > 0 })
  slice(sort(hits), 0, min(LIMIT, len(hits)))
}
fn fib(n) { if n < 2 { return n } fib(n - 1) + fib(n - 2) }
fn even(n) { if n == 0 { true } else { odd(n - 1) } }
fn odd(n) { if n == 0 { false } else { even(n - 1) } }
let q = "sk"
let docs = ["skiff", "sky", "boat", "skip"]
let found = remote("worker") [docs, q] { search(docs, q) }
let safe = remote({peers: ["a", "b"], timeout_ms: 50}) [q] { upper(q) } else { "fallback" }
print(found, safe, NAMES, CONF)
let total = 0
for i in 0..10 {
  if i % 2 == 0 { continue }
  if i > 7 and total < 100 or false { break }
  total += i
}
let m = {a: 1, "b": 2, 3: [4]}
m.a += 1
m["b"] -= 1
m.c = nil
let l = [1, 2, 3]
l[0] = l[1] + 1
l[2] += 10
for k, v in m { print(k, v) }
for i, x in l { print(i, x) }
let fs = []
for x in l { push(fs, fn() { x }) }
let counter = 0
let bump = fn() { counter += 1; counter }
bump()
let t = spawn { counter + 1 }
let r = await t + 1
let ts = map([1, 2, 3], fn(x) { spawn { x * 2 } })
let vals = await_all(ts)
let e = try { throw error("ValueError", "bad") } catch err { err.kind }
let w = 0
while w < 10 {
  w = w + 1
  let z = try { if w == 5 { break } w } catch e2 { continue }
}
let nested = fn(a) { fn(b) { fn(c) { a + b + c } } }
print(nested(1)(2)(3), -w, not w, b"\x00\xff", 1.5e3, 0xff, 1_000)
let s = if w > 1 { "big" } else if w == 1 { "one" } else { "small" }
{
  let shadow = 1
  let shadow2 = { let shadow = 2; shadow + 1 }
}
let x = remote("a") [w] { remote(caller()) [w] { w + 1 } }
"#;

#[test]
fn everything_compiles_and_checks() {
    let m = module(EVERYTHING);
    // Entry, user functions and the used prelude functions are present.
    let names: Vec<_> = functions(&m)
        .into_iter()
        .filter_map(|(_, d)| d.name)
        .collect();
    for n in [
        "<main>",
        "score",
        "search",
        "fib",
        "even",
        "odd",
        "map",
        "filter",
        "await_all",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing in {names:?}");
    }
    assert!(names.iter().any(|x| x.starts_with("remote@")));
    assert!(names.iter().any(|x| x.starts_with("spawn@")));
    // Exports are exactly the user's top-level functions.
    let exports: Vec<_> = m.exports.keys().cloned().collect();
    assert_eq!(exports, ["even", "fib", "odd", "score", "search"]);
}

#[test]
fn prelude_only_when_used() {
    let m = module("print(1)");
    assert_eq!(m.blobs.len(), 1);
    let m = module("print(map([1], fn(x) { x }))");
    assert!(has_function(&m, "map"));
    assert!(!has_function(&m, "filter"));
    assert!(!m.exports.contains_key("map"));
}

#[test]
fn calls_pick_the_right_instruction() {
    let m = module_with(
        "fn f(x) { x }\nfn len(x) { 0 }\nlet g = f\nf(1); g(2); print(3); len(4); search(5)",
        &["search"],
    );
    let main = function(&m, "<main>");
    assert!(emits!(main, Instr::CallFunction { argc: 1, .. }));
    assert!(emits!(main, Instr::Call { argc: 1 }));
    assert!(emits!(main, Instr::Function { .. }));
    // `len` is the user's function, so only print and search are natives.
    assert_eq!(main.natives, ["print", "search"]);
}

#[test]
fn short_circuit_and_fused_compare() {
    let main = main_of("let a = 1\nlet b = a and 2 or 3\nif a < 2 { print(1) }\nwhile not a { }");
    assert!(emits!(main, Instr::JumpIfFalseOrPop { .. }));
    assert!(emits!(main, Instr::JumpIfTrueOrPop { .. }));
    assert!(emits!(main, Instr::JumpIfNotLt { .. }));
    assert!(emits!(main, Instr::JumpIfTrue { .. }));
    assert!(!emits!(main, Instr::Lt {}));
}

#[test]
fn add_int_immediate() {
    let m = module("fn f(x) { x + 1 - 2 + 5000000000 }");
    let f = function(&m, "f");
    assert_eq!(
        f.code[..3],
        [
            Instr::GetLocal { slot: 0 },
            Instr::AddInt { value: 1 },
            Instr::AddInt { value: -2 }
        ]
    );
    assert!(emits!(f, Instr::Add {}));
}

#[test]
fn captured_loop_variable_gets_a_fresh_cell_each_iteration() {
    let main = main_of("let fs = []\nfor x in [1, 2] { push(fs, fn() { x }) }");
    let next = position!(main, Instr::IterNext { .. });
    // The element is stored with NewCell right after IterNext (inside the loop).
    assert!(matches!(main.code[next + 1], Instr::NewCell { .. }));
    assert!(emits!(main, Instr::CaptureLocal { .. }));
    assert_eq!(main.cells.len(), 1);
}

#[test]
fn captured_parameter_is_copied_into_a_cell() {
    let m = module("fn f(a, b) { fn() { b } }");
    let f = function(&m, "f");
    assert_eq!(f.arity, 2);
    assert_eq!(f.cells, [2]);
    assert_eq!(f.code[0], Instr::GetLocal { slot: 1 });
    assert_eq!(f.code[1], Instr::NewCell { slot: 2 });
}

#[test]
fn nested_recursive_function_captures_itself() {
    let m =
        module("fn outer() { fn fact(n) { if n < 2 { 1 } else { n * fact(n - 1) } }\n fact(5) }");
    let outer = function(&m, "outer");
    assert_eq!(outer.code[0], Instr::Nil {});
    assert!(matches!(outer.code[1], Instr::NewCell { .. }));
    let fact = function(&m, "fact");
    assert_eq!(fact.upvals, 1);
    assert!(emits!(fact, Instr::GetUpval { index: 0 }));
}

#[test]
fn break_pops_iteration_state_and_leaves_try() {
    let m = module("for x in [1] { try { break } catch e { } }");
    let main = function(&m, "<main>");
    let brk = main.code.windows(4).position(|w| {
        matches!(
            w,
            [
                Instr::Pop {},
                Instr::Pop {},
                Instr::TryEnd {},
                Instr::Jump { .. }
            ]
        )
    });
    assert!(brk.is_some(), "{}", disasm(&m));
    // continue inside try: TryEnd then jump back to IterNext, no pops.
    let main = main_of("for x in [1] { try { continue } catch e { } }");
    let next = position!(main, Instr::IterNext { .. });
    assert!(main.code.windows(2).any(|w| w
        == [
            Instr::TryEnd {},
            Instr::Jump {
                target: next as u32
            }
        ]));
}

#[test]
fn break_inside_an_expression_pops_pending_values() {
    let main = main_of("while true { print(1, 2, { break }) }");
    // Two pending arguments are popped before the jump out.
    assert!(main
        .code
        .windows(3)
        .any(|w| matches!(w, [Instr::Pop {}, Instr::Pop {}, Instr::Jump { .. }])));
}

#[test]
fn remote_pushes_target_then_captures() {
    let m = module("let a = 1\nlet b = 2\nlet r = remote(\"w\") [b, a] { a - b }");
    let main = function(&m, "<main>");
    let i = position!(main, Instr::Remote { argc: 2, .. });
    assert_eq!(
        main.code[i - 3..i],
        [
            Instr::Const { index: 0 },
            Instr::GetLocal { slot: 1 },
            Instr::GetLocal { slot: 0 }
        ]
    );
    let body = function(&m, "remote@3");
    assert_eq!(body.arity, 2);
    assert_eq!(body.upvals, 0);
}

#[test]
fn remote_else_has_a_fallback_path() {
    let main = main_of("let r = remote(\"w\") [] { 1 } else { 2 }");
    assert!(emits!(main, Instr::RemoteElse { argc: 0, .. }));
}

#[test]
fn const_list_is_built_at_each_use() {
    let main = main_of("const L = [1, [2]]\nlet a = L\nlet b = L");
    let lists = main
        .code
        .iter()
        .filter(|i| matches!(i, Instr::List { .. }))
        .count();
    assert_eq!(lists, 4);
}

#[test]
fn user_function_shadows_builtin_but_prelude_does_not_see_it() {
    let m = module("fn push(l, x) { nil }\nprint(map([1], fn(x) { x }))");
    let map = function(&m, "map");
    assert_eq!(map.natives, ["push"]);
}

#[test]
fn fn_literals_are_closures_even_without_captures() {
    let main = main_of("let f = fn() { 1 }");
    assert!(emits!(main, Instr::Closure { captures: 0, .. }));
}

#[test]
fn debug_positions_point_at_operators_and_calls() {
    let src = "let a = 1\nlet b = a *\n  2\nprint(b)";
    let m = module(src);
    let (f, d) = function_with_debug(&m, "<main>");
    let mul = position!(f, Instr::Mul {});
    assert_eq!(d.positions[mul], (2, 11));
    let call = position!(f, Instr::CallNative { .. });
    assert_eq!(d.positions[call], (4, 6));
    assert_eq!(d.file, "test.skiff");
    assert_eq!(d.local_names, ["a", "b"]);
}

#[test]
fn newline_paren_starts_a_new_statement() {
    // `f\n(1)` is two statements: the value `f`, then the parenthesized `1`.
    let main = main_of("fn f(x) { x }\nf\n(1)\n[2]\nlet y = 1\n- 1");
    assert!(!emits!(
        main,
        Instr::CallFunction { .. } | Instr::GetIndex {}
    ));
    // ...but binary operators continue the previous line: y = 1 - 1.
    assert!(emits!(main, Instr::AddInt { value: -1 }));
}

#[test]
fn slots_are_reused_across_disjoint_scopes() {
    let main = main_of("{ let a = 1 }\n{ let b = 2 }");
    assert_eq!(main.locals, 1);
}

#[test]
fn fib_and_loop_shapes() {
    // The hot paths the interpreter benchmarks: no wasted instructions.
    let m = module("fn fib(n) { if n < 2 { return n }\n fib(n - 1) + fib(n - 2) }\nfn count(n) { let i = 0\n while i < n { i += 1 }\n i }");
    let fib = function(&m, "fib");
    assert_eq!(
        fib.code,
        [
            Instr::GetLocal { slot: 0 },
            Instr::Int { value: 2 },
            Instr::JumpIfNotLt { target: 5 },
            Instr::GetLocal { slot: 0 },
            Instr::Return {},
            Instr::GetLocal { slot: 0 },
            Instr::AddInt { value: -1 },
            Instr::CallFunction { func: 0, argc: 1 },
            Instr::GetLocal { slot: 0 },
            Instr::AddInt { value: -2 },
            Instr::CallFunction { func: 0, argc: 1 },
            Instr::Add {},
            Instr::Return {},
        ],
        "{}",
        disasm(&m)
    );
    let count = function(&m, "count");
    assert_eq!(
        count.code,
        [
            Instr::Int { value: 0 },
            Instr::SetLocal { slot: 1 },
            Instr::GetLocal { slot: 1 },
            Instr::GetLocal { slot: 0 },
            Instr::JumpIfNotLt { target: 9 },
            Instr::GetLocal { slot: 1 },
            Instr::AddInt { value: 1 },
            Instr::SetLocal { slot: 1 },
            Instr::Jump { target: 2 },
            Instr::GetLocal { slot: 1 },
            Instr::Return {},
        ],
        "{}",
        disasm(&m)
    );
}
