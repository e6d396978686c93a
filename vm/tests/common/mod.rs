//! Hand-assembled programs shared by the interpreter and fuzz tests.

use skiff_vm::{FnRef, FunctionCode, Instr as I};

/// A function of `arity` parameters and `locals` local slots running `code`.
pub fn f(arity: u16, locals: u16, code: Vec<I>) -> FunctionCode {
    FunctionCode {
        arity,
        locals,
        code,
        ..Default::default()
    }
}

/// fib(n) = n < 2 ? n : fib(n-1) + fib(n-2), via the fused branch and direct calls; meant to be
/// member 0 of its blob.
pub fn fib() -> FunctionCode {
    let mut fib = f(
        1,
        1,
        vec![
            I::GetLocal { slot: 0 },
            I::Int { value: 2 },
            I::JumpIfNotLt { target: 5 },
            I::GetLocal { slot: 0 },
            I::Return {},
            I::GetLocal { slot: 0 },
            I::AddInt { value: -1 },
            I::CallFunction { func: 0, argc: 1 },
            I::GetLocal { slot: 0 },
            I::AddInt { value: -2 },
            I::CallFunction { func: 0, argc: 1 },
            I::Add {},
            I::Return {},
        ],
    );
    fib.refs = vec![FnRef::Local(0)];
    fib
}
