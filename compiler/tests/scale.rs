//! Large inputs: no quadratic blow-ups, no deep recursion on long (flat) programs.

fn program(fns: usize, lets: usize) -> String {
    let mut s = String::new();
    for i in 0..fns {
        s += &format!(
            "fn f{i}(a, b) {{\n  let x = a + {i}\n  let s = \"str{i}\"\n  if x > b {{ f{}(x, b) }} else {{ [x, s, {{k: x}}] }}\n}}\n",
            (i + 1) % fns
        );
    }
    for i in 0..lets {
        s += &format!("let v{i} = f{}(1, 2)\n", i % fns);
    }
    s
}

#[test]
fn many_functions_in_one_cycle_and_many_statements() {
    let src = program(500, 3000);
    let out = skiff_compiler::compile(&src, "big.skiff", &Default::default());
    let m = out.module.expect("compiles");
    // All 500 functions form one strongly connected component (f0 → f1 → … → f0).
    assert_eq!(m.blobs[&m.exports["f0"].blob].functions.len(), 500);
}

/// `cargo test --release -p skiff-compiler --test scale -- --ignored --nocapture`
#[test]
#[ignore]
fn one_megabyte() {
    let src = program(5000, 20000);
    let t = std::time::Instant::now();
    let out = skiff_compiler::compile(&src, "big.skiff", &Default::default());
    assert!(out.module.is_some());
    eprintln!("{} bytes in {:?}", src.len(), t.elapsed());
}
