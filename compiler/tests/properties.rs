//! Property tests: random well-formed programs compile, check, round-trip and run without a
//! panic (fuel bounds their loops; runtime errors are outcomes like any other), and run the
//! same with the interpreter's fused ops as one instruction at a time; compiling is
//! deterministic.

mod common;
use common::*;
use proptest::prelude::*;
use skiff_compiler::{compile, fuzz_compile, CompileOptions};
use skiff_vm::fuzz::check_fused_ops;
use skiff_vm::interp::{CallError, Engine, ExecIo, Execution, Limits};
use skiff_vm::store::CodeStore;
use skiff_vm::Blob;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Fuel each generated program may use when it runs.
const RUN_FUEL: u64 = 200_000;

/// A tiny deterministic RNG (the generator must not depend on proptest internals). Not the
/// seeded loops' `skiff_vm::fuzz::Rng`: the seeds saved in `properties.proptest-regressions`
/// name programs this generator makes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// Generates well-formed Skiff programs from a small grammar, tracking scopes so every
/// name used is declared, captures are complete and `break`/`continue` are inside loops.
struct Gen {
    rng: Rng,
    out: String,
    fns: Vec<(String, usize)>,
    /// Visible locals, innermost scope last.
    scopes: Vec<Vec<String>>,
    counter: usize,
    in_loop: bool,
    depth: usize,
}

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen {
            rng: Rng(seed | 1),
            out: String::new(),
            fns: Vec::new(),
            scopes: vec![Vec::new()],
            counter: 0,
            in_loop: false,
            depth: 0,
        }
    }

    fn fresh(&mut self) -> String {
        self.counter += 1;
        format!("v{}", self.counter)
    }

    fn locals(&self) -> Vec<String> {
        self.scopes.iter().flatten().cloned().collect()
    }

    fn program(mut self) -> String {
        let n = 1 + self.rng.below(5);
        for i in 0..n {
            let arity = self.rng.below(3);
            self.fns.push((format!("f{i}"), arity));
        }
        self.out += "const K0 = 7\nconst K1 = [K0, \"k\", {a: K0 * 2}]\n";
        for i in 0..n {
            let (name, arity) = self.fns[i].clone();
            let params: Vec<String> = (0..arity).map(|j| format!("p{j}")).collect();
            self.out += &format!("fn {name}({}) {{\n", params.join(", "));
            let saved = std::mem::replace(&mut self.scopes, vec![params]);
            self.block_body(3);
            self.scopes = saved;
            self.out += "}\n";
        }
        self.scopes = vec![Vec::new()];
        for _ in 0..1 + self.rng.below(6) {
            self.stmt(3);
            self.out += "\n";
        }
        self.out
    }

    fn block_body(&mut self, budget: usize) {
        self.scopes.push(Vec::new());
        for _ in 0..self.rng.below(4) {
            self.stmt(budget);
            self.out += "\n";
        }
        if self.rng.chance(70) {
            self.expr(budget);
            self.out += "\n";
        }
        self.scopes.pop();
    }

    fn block(&mut self, budget: usize) {
        self.out += "{\n";
        self.block_body(budget);
        self.out += "}";
    }

    fn stmt(&mut self, budget: usize) {
        let budget = budget.saturating_sub(1);
        match self.rng.below(if budget == 0 { 3 } else { 13 }) {
            0 | 1 => {
                let v = self.fresh();
                self.out += &format!("let {v} = ");
                self.expr(budget);
                self.scopes.last_mut().unwrap().push(v);
            }
            2 => {
                let locals = self.locals();
                if locals.is_empty() {
                    self.expr(budget);
                } else {
                    let v = locals[self.rng.below(locals.len())].clone();
                    let op = ["=", "+=", "-="][self.rng.below(3)];
                    self.out += &format!("{v} {op} ");
                    self.expr(budget);
                }
            }
            3 => {
                self.out += "if ";
                self.expr(budget);
                self.out += " ";
                self.block(budget);
                if self.rng.chance(50) {
                    self.out += " else ";
                    self.block(budget);
                }
            }
            4 => {
                self.out += "while ";
                self.expr(budget);
                self.out += " ";
                let saved = std::mem::replace(&mut self.in_loop, true);
                self.block(budget);
                self.in_loop = saved;
            }
            5 => {
                let (a, b) = (self.fresh(), self.fresh());
                let two = self.rng.chance(50);
                self.out += &if two {
                    format!("for {a}, {b} in ")
                } else {
                    format!("for {a} in ")
                };
                self.expr(budget);
                self.out += " ";
                self.scopes.push(if two { vec![a, b] } else { vec![a] });
                let saved = std::mem::replace(&mut self.in_loop, true);
                self.block(budget);
                self.in_loop = saved;
                self.scopes.pop();
            }
            6 if self.in_loop => self.out += ["break", "continue"][self.rng.below(2)],
            7 => {
                self.out += "return ";
                self.expr(budget);
            }
            8 => {
                let name = self.fresh();
                let p = self.fresh();
                // At the script's top level, `fn name` would be a hoisted top-level
                // function (closed); generate a closure bound by `let` there instead.
                if self.scopes.len() == 1 {
                    self.out += &format!("let {name} = fn({p}) ");
                } else {
                    self.scopes.last_mut().unwrap().push(name.clone());
                    self.out += &format!("fn {name}({p}) ");
                }
                self.scopes.push(vec![p]);
                let saved = std::mem::replace(&mut self.in_loop, false);
                self.block(budget);
                self.in_loop = saved;
                self.scopes.pop();
                if self.scopes.len() == 1 {
                    self.scopes.last_mut().unwrap().push(name);
                }
            }
            9 => {
                self.out += "throw ";
                self.expr(budget);
            }
            _ => self.expr(budget),
        }
    }

    fn expr(&mut self, budget: usize) {
        self.depth += 1;
        let budget = if self.depth > 12 {
            0
        } else {
            budget.saturating_sub(1)
        };
        let locals = self.locals();
        let choice = if budget == 0 {
            self.rng.below(5)
        } else {
            self.rng.below(22)
        };
        match choice {
            0 => self.out += &format!("{}", self.rng.below(1000)),
            1 => {
                self.out += [
                    "nil",
                    "true",
                    "false",
                    "1.5",
                    "\"s\\n\"",
                    "b\"\\xff\"",
                    "K0",
                    "K1",
                ][self.rng.below(8)]
            }
            2..=4 if !locals.is_empty() => {
                self.out += &locals[self.rng.below(locals.len())];
            }
            2..=4 => self.out += "0",
            5 | 6 => {
                let ops = [
                    "+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "and", "or", "..",
                ];
                self.out += "(";
                self.expr(budget);
                self.out += &format!(" {} ", ops[self.rng.below(ops.len())]);
                self.expr(budget);
                self.out += ")";
            }
            7 => {
                // Parenthesized: a statement starting with `-` would continue the
                // previous line (binary operators continue across newlines).
                self.out += ["(-", "(not ", "(await "][self.rng.below(3)];
                self.expr(budget);
                self.out += ")";
            }
            8 => {
                let (name, arity) = self.fns[self.rng.below(self.fns.len())].clone();
                self.out += &format!("{name}(");
                for i in 0..arity {
                    if i > 0 {
                        self.out += ", ";
                    }
                    self.expr(budget);
                }
                self.out += ")";
            }
            9 => {
                let b = ["len", "print", "str", "type", "push"][self.rng.below(5)];
                self.out += &format!("{b}(");
                self.expr(budget);
                self.out += ")";
            }
            10 => {
                self.out += "[";
                for _ in 0..self.rng.below(3) {
                    self.expr(budget);
                    self.out += ", ";
                }
                self.out += "]";
            }
            11 => {
                self.out += "{k: ";
                self.expr(budget);
                self.out += ", \"j\": ";
                self.expr(budget);
                self.out += "}";
            }
            12 => {
                self.expr(budget);
                self.out += "[";
                self.expr(budget);
                self.out += "]";
            }
            13 => {
                self.expr(budget);
                self.out += ".field";
            }
            14 => {
                self.out += "if ";
                self.expr(budget);
                self.out += " ";
                self.block(budget);
                self.out += " else ";
                self.block(budget);
            }
            15 => {
                let p = self.fresh();
                self.out += &format!("fn({p}) ");
                self.scopes.push(vec![p]);
                let saved = std::mem::replace(&mut self.in_loop, false);
                self.block(budget);
                self.in_loop = saved;
                self.scopes.pop();
            }
            16 => {
                self.out += "spawn ";
                let saved = std::mem::replace(&mut self.in_loop, false);
                self.block(budget);
                self.in_loop = saved;
            }
            17 => {
                // A remote body sees only its captures.
                let caps: Vec<String> = locals
                    .iter()
                    .filter(|_| self.rng.chance(50))
                    .cloned()
                    .collect();
                self.out += &format!("remote(\"w\") [{}] ", caps.join(", "));
                let saved_scopes = std::mem::replace(&mut self.scopes, vec![caps.clone()]);
                let saved_loop = std::mem::replace(&mut self.in_loop, false);
                self.out += "{\n";
                // Use every capture so no warning is produced.
                for c in &caps {
                    self.out += &format!("{c}\n");
                }
                self.block_body(budget);
                self.out += "}";
                self.scopes = saved_scopes;
                self.in_loop = saved_loop;
                if self.rng.chance(30) {
                    self.out += " else ";
                    self.block(budget);
                }
            }
            18 => {
                let e = self.fresh();
                self.out += "try ";
                self.block(budget);
                self.out += &format!(" catch {e} ");
                self.scopes.push(vec![e]);
                self.block(budget);
                self.scopes.pop();
            }
            19 => self.block(budget),
            20 => {
                self.out += "map(";
                self.expr(budget);
                self.out += ", fn(x) { x })";
            }
            _ => {
                self.expr(budget);
                self.out += "(";
                self.expr(budget);
                self.out += ")";
            }
        }
        self.depth -= 1;
    }
}

fn check_program(src: &str) {
    let out = compile(src, "gen.skiff", &CompileOptions::default());
    let errs: Vec<_> = out.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert!(
        errs.is_empty(),
        "generated program failed:\n{src}\n{errs:#?}"
    );
    let m = out.module.unwrap();
    for (hash, blob) in &m.blobs {
        let bytes = blob.encode();
        assert_eq!(Blob::decode(&bytes, usize::MAX).unwrap(), **blob);
        assert_eq!(blob.hash(), *hash);
        for f in &blob.functions {
            if let Err(e) = check_function(f) {
                panic!("{e}\n{src}\n{}", disasm(&m));
            }
        }
    }
    // Deterministic.
    let again = compile(src, "gen.skiff", &CompileOptions::default())
        .module
        .unwrap();
    assert_eq!(again.entry, m.entry);
    assert_eq!(
        again.blobs.keys().collect::<Vec<_>>(),
        m.blobs.keys().collect::<Vec<_>>()
    );
    fuzz_compile(src.as_bytes());
    run_program(&m, src);
}

/// Runs a generated program: it must end (fuel bounds it) in a value, a runtime error or a
/// limit, never a panic or a verifier refusal.
fn run_program(m: &skiff_vm::Module, src: &str) {
    let mut store = CodeStore::new();
    if let Err(e) = store.add_module(m) {
        panic!("verifier refused compiled code: {e}\n{src}");
    }
    let limits = Limits {
        fuel: Some(RUN_FUEL),
        ..Limits::default()
    };
    let (io, _stdout, _stderr) = ExecIo::capture();
    match Execution::call(&Engine::new(), &store, m.entry, vec![], limits, io) {
        Ok(_) | Err(CallError::Failed(_)) => {}
        Err(other) => panic!("could not start: {other}\n{src}"),
    }
    // And the interpreter's fused ops do what the instructions do one at a time, with
    // slices ending anywhere (a slice size from the program's length).
    let slice = 1 + src.len() as u64 % 61;
    let checked = catch_unwind(AssertUnwindSafe(|| {
        check_fused_ops(&store, m.entry, vec![], RUN_FUEL, slice)
    }));
    match checked {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("could not link: {e}\n{src}"),
        Err(_) => panic!("fused ops disagree with single instructions on:\n{src}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn generated_programs_compile(seed in any::<u64>()) {
        check_program(&Gen::new(seed).program());
    }

    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
        fuzz_compile(s.as_bytes());
    }

    #[test]
    fn token_soup_never_panics(toks in proptest::collection::vec(0usize..40, 0..80)) {
        const VOCAB: [&str; 40] = [
            "let", "x", "=", "1", "fn", "(", ")", "{", "}", "[", "]", ",", ":", ";", "\n",
            "if", "else", "while", "for", "in", "break", "continue", "return", "remote",
            "spawn", "await", "try", "catch", "throw", "+", "-", "..", ".", "\"s\"", "and",
            "not", "const", "==", "y", "print",
        ];
        let src: Vec<&str> = toks.iter().map(|&t| VOCAB[t]).collect();
        fuzz_compile(src.join(" ").as_bytes());
    }
}

#[test]
fn a_few_generated_programs_are_nontrivial() {
    let total: usize = (1..20u64).map(|s| Gen::new(s).program().len()).sum();
    assert!(total > 2000);
}
