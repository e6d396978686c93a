//! Shared test helpers: compile shortcuts, a disassembler and a stack-discipline checker
//! that stands in for the VM's verifier (so codegen is checked even before the VM runs).
#![allow(dead_code, unused_macros)]

use skiff_compiler::{compile, line_col, CompileOptions, Diagnostic, Severity};
use skiff_vm::blob::{FunctionCode, FunctionDebug};
use skiff_vm::opcodes::Flow;
use skiff_vm::{Instr, Module};

pub fn module(src: &str) -> Module {
    module_with(src, &[])
}

pub fn module_with(src: &str, natives: &[&str]) -> Module {
    let opts = CompileOptions {
        natives: natives.iter().map(|s| s.to_string()).collect(),
    };
    let out = compile(src, "test.skiff", &opts);
    let errors: Vec<_> = out.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert!(errors.is_empty(), "unexpected errors: {errors:#?}");
    let m = out.module.expect("module");
    for blob in m.blobs.values() {
        for f in &blob.functions {
            if let Err(e) = check_function(f) {
                panic!("{e}\n{}", disasm(&m));
            }
        }
    }
    m
}

/// `(severity, line, col, message)` of every diagnostic.
pub fn diags(src: &str) -> Vec<(Severity, u32, u32, String)> {
    let out = compile(src, "test.skiff", &CompileOptions::default());
    let has_err = out.diagnostics.iter().any(Diagnostic::is_error);
    assert_eq!(out.module.is_some(), !has_err);
    out.diagnostics
        .iter()
        .map(|d| {
            let (l, c) = line_col(src, d.span.start);
            (d.severity, l, c, d.message.clone())
        })
        .collect()
}

/// The diagnostics of one severity, as `(line, col, message)`.
fn diags_of(src: &str, severity: Severity) -> Vec<(u32, u32, String)> {
    diags(src)
        .into_iter()
        .filter(|d| d.0 == severity)
        .map(|(_, l, c, m)| (l, c, m))
        .collect()
}

/// The errors only, as `(line, col, message)`.
pub fn errors(src: &str) -> Vec<(u32, u32, String)> {
    diags_of(src, Severity::Error)
}

/// The warnings only, as `(line, col, message)`.
pub fn warnings(src: &str) -> Vec<(u32, u32, String)> {
    diags_of(src, Severity::Warning)
}

/// All functions of a module with their debug info.
pub fn functions(m: &Module) -> Vec<(FunctionCode, FunctionDebug)> {
    let mut out = Vec::new();
    for (h, b) in &m.blobs {
        let d = &m.debug[h];
        for (f, fd) in b.functions.iter().zip(&d.functions) {
            out.push((f.clone(), fd.clone()));
        }
    }
    out
}

/// Whether the module has a function whose debug name is `name`.
pub fn has_function(m: &Module, name: &str) -> bool {
    functions(m)
        .iter()
        .any(|(_, d)| d.name.as_deref() == Some(name))
}

/// The function whose debug name is `name`, with its debug info.
pub fn function_with_debug(m: &Module, name: &str) -> (FunctionCode, FunctionDebug) {
    functions(m)
        .into_iter()
        .find(|(_, d)| d.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no function {name}:\n{}", disasm(m)))
}

/// The function whose debug name is `name`.
pub fn function(m: &Module, name: &str) -> FunctionCode {
    function_with_debug(m, name).0
}

/// The entry function of the module compiled (and checked) from `src`.
pub fn main_of(src: &str) -> FunctionCode {
    function(&module(src), "<main>")
}

/// Whether `f`'s code has an instruction matching the pattern.
macro_rules! emits {
    ($f:expr, $p:pat) => {
        $f.code.iter().any(|i| matches!(i, $p))
    };
}

/// The index of the first instruction of `f`'s code matching the pattern (panics if none).
macro_rules! position {
    ($f:expr, $p:pat) => {
        $f.code.iter().position(|i| matches!(i, $p)).unwrap()
    };
}

pub fn disasm(m: &Module) -> String {
    let mut s = String::new();
    for (h, b) in &m.blobs {
        let dbg = &m.debug[h];
        for (i, (f, d)) in b.functions.iter().zip(&dbg.functions).enumerate() {
            s += &format!(
                "== {h:?}.{i} {:?} arity={} locals={} upvals={} cells={:?} refs={:?} natives={:?} consts={:?} names={:?}\n",
                d.name, f.arity, f.locals, f.upvals, f.cells, f.refs, f.natives, f.consts, d.local_names
            );
            for (j, (ins, p)) in f.code.iter().zip(&d.positions).enumerate() {
                s += &format!("  {j:3} {ins:?}  {p:?}\n");
            }
        }
    }
    s
}

/// Checks what the VM verifier will check: operand indices in range, slot kinds respected,
/// consistent stack depth at every join, no underflow, no fall-through off the end.
pub fn check_function(f: &FunctionCode) -> Result<(), String> {
    let n = f.code.len();
    let is_cell = |s: u16| f.cells.contains(&s);
    for (i, ins) in f.code.iter().enumerate() {
        let bad = |what: &str| Err(format!("instr {i} {ins:?}: {what}"));
        match *ins {
            Instr::GetLocal { slot } | Instr::SetLocal { slot }
                if slot >= f.locals || is_cell(slot) =>
            {
                return bad("plain slot out of range or a cell")
            }
            Instr::NewCell { slot }
            | Instr::GetCell { slot }
            | Instr::SetCell { slot }
            | Instr::CaptureLocal { slot }
                if !is_cell(slot) =>
            {
                return bad("not a cell slot")
            }
            Instr::GetUpval { index }
            | Instr::SetUpval { index }
            | Instr::CaptureUpval { index }
                if index >= f.upvals =>
            {
                return bad("upvalue out of range")
            }
            Instr::Const { index } if index as usize >= f.consts.len() => return bad("const"),
            Instr::Function { func }
            | Instr::Closure { func, .. }
            | Instr::CallFunction { func, .. }
            | Instr::Remote { func, .. }
            | Instr::RemoteElse { func, .. }
                if func as usize >= f.refs.len() =>
            {
                return bad("func ref")
            }
            Instr::CallNative { native, .. } if native as usize >= f.natives.len() => {
                return bad("native")
            }
            _ => {}
        }
        if let Instr::TryBegin { handler } = *ins {
            if handler as usize >= n {
                return bad("handler target");
            }
        }
        if let Some(t) = ins.branch_target() {
            if t as usize >= n {
                return bad("branch target");
            }
        }
    }
    if f.cells.iter().any(|&c| c < f.arity || c >= f.locals) {
        return Err("cell slot is a parameter or out of range".into());
    }
    // Abstract interpretation of stack depth.
    let mut depth: Vec<Option<i64>> = vec![None; n];
    let mut work = vec![(0usize, 0i64)];
    while let Some((pc, d)) = work.pop() {
        if pc >= n {
            return Err(format!("falls off the end at {pc}"));
        }
        match depth[pc] {
            Some(old) if old == d => continue,
            Some(old) => return Err(format!("inconsistent depth at {pc}: {old} vs {d}")),
            None => depth[pc] = Some(d),
        }
        let ins = f.code[pc];
        let (pops, pushes) = ins.stack_effect();
        if d < pops as i64 {
            return Err(format!("underflow at {pc} {ins:?} depth {d}"));
        }
        let next = d - pops as i64 + pushes as i64;
        match ins.flow() {
            Flow::Next => {
                if let Instr::TryBegin { handler } = ins {
                    work.push((handler as usize, d + 1));
                }
                work.push((pc + 1, next));
            }
            Flow::Jump => work.push((ins.branch_target().unwrap() as usize, d)),
            Flow::Exit => {}
            Flow::Branch => {
                work.push((pc + 1, next));
                let t = ins.branch_target().unwrap() as usize;
                let taken = match ins {
                    Instr::JumpIfFalseOrPop { .. } | Instr::JumpIfTrueOrPop { .. } => d,
                    Instr::IterNext { .. } | Instr::IterNext2 { .. } => d - 2,
                    Instr::RemoteElse { argc, .. } => d - argc as i64 - 1,
                    _ => next,
                };
                work.push((t, taken));
            }
        }
    }
    Ok(())
}
