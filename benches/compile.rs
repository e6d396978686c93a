//! Compile-time and hash-time benchmarks on a generated 5,000-line script.
//!
//! The generator writes 500 ten-line functions — locals, arithmetic, a list and a map
//! literal, a `for` loop, `if`/`else`, a closure, and a call to the previous function — once
//! per language, so the same program is compiled by every engine:
//!
//! | group          | function   | what one iteration is                                        |
//! |----------------|------------|--------------------------------------------------------------|
//! | `compile5k`    | `skiff`    | `Engine::compile`: lex, parse, resolve, codegen, hash blobs    |
//! | `compile5k`    | `lua54`    | `Lua::load(..).into_function()`: Lua's parser and code generator |
//! | `compile5k`    | `rhai`     | `rhai::Engine::compile` (parse and optimise to an AST)       |
//! | `hash5k`       | `skiff`    | canonical encoding + SHA-256 of every blob of the module      |
//! | `hash5k`       | `sha256`   | SHA-256 alone over the same encoded bytes (the floor)         |
//!
//! Checked once before timing: each engine compiles the script, and `f499(7)` gives the same
//! result in Skiff, Lua and rhai (so the three scripts really are the same program); every
//! blob re-hashes to the hash the module files it under.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-bench cargo bench --bench compile`; see
//! `benches/README.md` for the whole suite and the report script.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use skiff_vm::blob::BlobHash;

/// Functions generated; each is ten lines. `cargo test --benches` (no `--bench` flag, as in
/// CI) generates 50 so the checks stay quick in a debug build.
fn functions() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        500
    } else {
        50
    }
}
/// Lines per generated function, in every language.
const LINES_PER_FUNCTION: usize = 10;

#[derive(Clone, Copy)]
enum Lang {
    Skiff,
    Lua,
    Rhai,
}

/// The generated script in `lang`: `functions * LINES_PER_FUNCTION` lines.
fn generate(lang: Lang, functions: usize) -> String {
    let mut s = String::new();
    for i in 0..functions {
        let c = i % 13 + 1;
        let d = i % 5;
        // Every tenth function starts a new chain so call depth stays small.
        let prev = if i % 10 == 0 {
            "0".to_owned()
        } else {
            format!("f{}(s % 100)", i - 1)
        };
        let text = match lang {
            Lang::Skiff => format!(
                "fn f{i}(x) {{\n\
                 \x20 let a = x * {c} + {i}\n\
                 \x20 let b = [a, a + 1, a + 2]\n\
                 \x20 let m = {{\"k\": a, \"v\": len(b)}}\n\
                 \x20 let s = 0\n\
                 \x20 for v in b {{ s += v % 7 }}\n\
                 \x20 if s > 10 {{ s = s - {d} }} else {{ s = s + m.v }}\n\
                 \x20 let g = fn(y) {{ y + s }}\n\
                 \x20 g(s) + {prev}\n\
                 }}\n"
            ),
            Lang::Lua => format!(
                "function f{i}(x)\n\
                 \x20 local a = x * {c} + {i}\n\
                 \x20 local b = {{a, a + 1, a + 2}}\n\
                 \x20 local m = {{k = a, v = #b}}\n\
                 \x20 local s = 0\n\
                 \x20 for _, v in ipairs(b) do s = s + v % 7 end\n\
                 \x20 if s > 10 then s = s - {d} else s = s + m.v end\n\
                 \x20 local g = function(y) return y + s end\n\
                 \x20 return g(s) + {prev}\n\
                 end\n"
            ),
            Lang::Rhai => format!(
                "fn f{i}(x) {{\n\
                 \x20 let a = x * {c} + {i};\n\
                 \x20 let b = [a, a + 1, a + 2];\n\
                 \x20 let m = #{{k: a, v: b.len()}};\n\
                 \x20 let s = 0;\n\
                 \x20 for v in b {{ s += v % 7; }}\n\
                 \x20 if s > 10 {{ s = s - {d}; }} else {{ s = s + m.v; }}\n\
                 \x20 let g = |y| y + s;\n\
                 \x20 g.call(s) + {prev}\n\
                 }}\n"
            ),
        };
        debug_assert_eq!(text.lines().count(), LINES_PER_FUNCTION);
        s.push_str(&text);
    }
    s
}

/// `f499(7)` computed in Rust, mirroring the generated code.
fn expected(i: usize, x: i64) -> i64 {
    let a = x * (i % 13 + 1) as i64 + i as i64;
    let mut s: i64 = [a, a + 1, a + 2].iter().map(|v| v % 7).sum();
    if s > 10 {
        s -= (i % 5) as i64;
    } else {
        s += 3;
    }
    let prev = if i % 10 == 0 {
        0
    } else {
        expected(i - 1, s % 100)
    };
    2 * s + prev
}

fn compile_and_hash(c: &mut Criterion) {
    let functions = functions();
    let skiff_src = generate(Lang::Skiff, functions);
    let lua_src = generate(Lang::Lua, functions);
    let rhai_src = generate(Lang::Rhai, functions);
    let last = functions - 1;
    let want = expected(last, 7);
    let entry = format!("f{last}");
    for src in [&skiff_src, &lua_src, &rhai_src] {
        assert_eq!(src.lines().count(), functions * LINES_PER_FUNCTION);
    }

    // --- one-time correctness checks -------------------------------------------------
    let engine = skiff::Engine::new(skiff::Limits::default());
    let module = match engine.compile(&skiff_src, "gen5k.skiff") {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("\n!!! skiff FAILED to compile the generated script; NOT measured: {e}\n");
            None
        }
    };
    let module = module.filter(|m| match engine.call::<i64>(m, &entry, (7i64,)) {
        Ok(v) if v == want => true,
        other => {
            eprintln!(
                "\n!!! skiff FAILED the check {entry}(7) == {want}: {other:?}; NOT measured\n"
            );
            false
        }
    });
    let lua = mlua::Lua::new();
    lua.load(&lua_src).exec().expect("lua loads the script");
    let f: mlua::Function = lua.globals().get(entry.as_str()).unwrap();
    assert_eq!(f.call::<i64>(7).unwrap(), want, "lua54 {entry}(7)");
    let mut rhai = rhai::Engine::new();
    rhai.set_max_call_levels(64); // the release default (debug builds of rhai: 8)
    let ast = rhai.compile(&rhai_src).expect("rhai compiles the script");
    let got: i64 = rhai
        .call_fn(&mut rhai::Scope::new(), &ast, &entry, (7i64,))
        .expect("rhai runs");
    assert_eq!(got, want, "rhai {entry}(7)");

    // --- compile ---------------------------------------------------------------------
    let mut g = c.benchmark_group("compile5k");
    g.throughput(Throughput::Elements(
        (functions * LINES_PER_FUNCTION) as u64,
    ));
    if module.is_some() {
        g.bench_function("skiff", |b| {
            b.iter(|| {
                engine
                    .compile(black_box(&skiff_src), "gen5k.skiff")
                    .unwrap()
            })
        });
    }
    g.bench_function("lua54", |b| {
        b.iter(|| {
            lua.load(black_box(lua_src.as_str()))
                .into_function()
                .unwrap()
        })
    });
    g.bench_function("rhai", |b| {
        b.iter(|| rhai.compile(black_box(&rhai_src)).unwrap())
    });
    g.finish();

    // --- hash ------------------------------------------------------------------------
    let Some(module) = module else { return };
    let blobs: Vec<_> = module.blobs.iter().map(|(h, b)| (*h, b.clone())).collect();
    let encoded: Vec<Vec<u8>> = blobs.iter().map(|(_, b)| b.encode()).collect();
    for ((hash, _), bytes) in blobs.iter().zip(&encoded) {
        assert_eq!(BlobHash::of(bytes), *hash, "blob re-hashes to its address");
    }
    let total: usize = encoded.iter().map(Vec::len).sum();
    eprintln!("hash5k: {} blobs, {} encoded bytes", blobs.len(), total);
    let mut g = c.benchmark_group("hash5k");
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("skiff", |b| {
        b.iter(|| {
            for (_, blob) in &blobs {
                black_box(blob.hash());
            }
        })
    });
    g.bench_function("sha256", |b| {
        b.iter(|| {
            for bytes in &encoded {
                black_box(BlobHash::of(bytes));
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = compile_and_hash
}
criterion_main!(benches);
