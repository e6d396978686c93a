//! The interpreter's fused ops and fast paths against the same code run one instruction at
//! a time, on every golden script: each script's top level runs twice
//! ([`skiff_vm::fuzz::check_fused_ops`]), in small slices so that slice boundaries fall
//! inside fused ops, and the two runs must agree on every status, every printed line and the
//! fuel left. A script whose natives a bare VM lacks (context natives) is skipped; one
//! that runs out of fuel is still compared up to that point.

use skiff_vm::fuzz::check_fused_ops;
use skiff_vm::CodeStore;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Fuel of each run: enough for most golden scripts to finish.
const FUEL: u64 = 200_000;

#[test]
fn golden_scripts_run_the_same_fused_and_one_instruction_at_a_time() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut scripts = Vec::new();
    collect_scripts(&root.join("tests/scripts"), &mut scripts);
    scripts.sort();
    let engine = skiff::Engine::new(skiff::Limits::default());
    let (mut checked, mut failures) = (0, Vec::new());
    for path in &scripts {
        let name = path
            .strip_prefix(root)
            .unwrap_or(path)
            .display()
            .to_string();
        let source = std::fs::read_to_string(path).expect("readable script");
        let Ok(module) = engine.compile(&source, &name) else {
            continue; // a compile-error script
        };
        let mut store = CodeStore::new();
        store.add_module(&module).expect("compiled code verifies");
        // A slice size per script, 5 to 68 instructions, so each falls elsewhere.
        let slice = 5 + name
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31) + u64::from(b))
            % 64;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            check_fused_ops(&store, module.entry, Vec::new(), FUEL, slice)
        }));
        match outcome {
            Ok(Ok(())) => checked += 1,
            Ok(Err(_)) => {} // a native only a node or the CLI provides
            Err(panic) => failures.push(format!("{name}: {}", panic_text(&panic))),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(
        checked * 10 >= scripts.len() * 6,
        "only {checked} of {} scripts were compared",
        scripts.len()
    );
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn collect_scripts(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_scripts(&path, out);
        } else if path.extension().is_some_and(|e| e == "skiff") {
            out.push(path);
        }
    }
}
