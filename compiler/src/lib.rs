//! # skiff-compiler: from Skiff source to content-addressed blobs
//!
//! The key decision: **the compiler, not the VM, decides what a function *is*.** Every
//! function the source mentions — top-level functions, nested functions, `fn` literals,
//! `spawn` bodies, `remote` bodies and the script's top level — becomes its own
//! [`FunctionCode`](skiff_vm::FunctionCode), and the compiler then addresses each one by the
//! hash of what it does. To make that hash meaningful, three things are settled at compile
//! time and never left to the runtime:
//!
//! 1. *What a function can see.* Top-level functions are closed: they may name only other
//!    top-level functions, constants, builtins and host natives (never a top-level `let`), so
//!    a top-level function is fully described by its own code plus the hashes it references.
//!    Closures see enclosing variables through cells, listed in a fixed upvalue order.
//!    A `remote` body sees *only* its explicit capture list (checked here, with a diagnostic
//!    pointing at the offending use), so shipping it means shipping its arguments by value.
//! 2. *What goes into the hash.* Code, constants, arity, slot layout, referenced function
//!    ids and native names do; names, files and positions do not (they travel as
//!    [`FunctionDebug`](skiff_vm::FunctionDebug)). Renaming a local or moving a function
//!    leaves hashes unchanged; changing behaviour changes the hash of that function and of
//!    everything that (transitively) references it, and nothing else.
//! 3. *How cycles are hashed.* References form a graph; its strongly connected components
//!    (Tarjan) are hashed as units — one [`Blob`] per component, members
//!    ordered by a content-derived key and addressed as `(blob hash, member)`. Mutual
//!    recursion therefore needs no "hash of a hash that does not exist yet".
//!
//! Pipeline: [`lexer`] → [`parser`] (AST with spans, error recovery) → [`resolve`] (scopes,
//! captures, remote capture checks, compile-time constants) → [`codegen`] (one proto-function
//! per function) → [`address`] (SCCs, canonical member order, hashing) → [`Module`].
//! Every phase appends to one diagnostics list; a module is produced only when no error was
//! found. Nothing in the pipeline iterates a `HashMap` where order could leak into output.
//!
//! ```
//! use skiff_compiler::{compile, line_col, CompileOptions};
//!
//! let out = compile("fn add(a, b) { a + b }\nprint(add(1, 2))", "add.skiff", &CompileOptions::default());
//! let module = out.module.expect("no errors");
//! assert!(module.exports.contains_key("add"));
//!
//! let src = "let q = 1\nremote(\"w\") [] { q }";
//! let out = compile(src, "bad.skiff", &CompileOptions::default());
//! assert!(out.module.is_none());
//! let d = &out.diagnostics[0];
//! assert_eq!(line_col(src, d.span.start), (2, 18));
//! assert!(d.message.contains("not in its capture list"));
//! ```
//!
//! The code-generation conventions the VM relies on are listed in [`codegen`] and in
//! `docs/compiler.md`.

pub mod address;
pub mod ast;
pub mod codegen;
pub mod consts;
pub mod lexer;
pub mod parser;
pub mod resolve;

use skiff_vm::blob::Blob;
use skiff_vm::Module;
use std::ops::Range;

/// The Skiff source of `map`, `filter` and `await_all`, compiled with every script.
pub const PRELUDE: &str = include_str!("prelude.skiff");
/// The file name prelude functions carry in their debug info.
pub const PRELUDE_FILE: &str = "<prelude>";

/// Options for [`compile`].
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// Names of host natives the script may call like builtins.
    pub natives: Vec<String>,
}

/// How serious a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// A secondary location attached to a diagnostic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub span: Range<usize>,
    pub message: String,
}

/// One compile error or warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    /// Byte offsets into the source.
    pub span: Range<usize>,
    pub labels: Vec<Label>,
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>, span: Range<usize>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span,
            labels: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn warning(message: impl Into<String>, span: Range<usize>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(message, span)
        }
    }

    pub fn with_label(mut self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        self.labels.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// The result of [`compile`].
#[derive(Debug)]
pub struct CompileOutput {
    /// `None` when any diagnostic is an error.
    pub module: Option<Module>,
    /// Every error and warning found, sorted by position.
    pub diagnostics: Vec<Diagnostic>,
}

/// 1-based `(line, column)` of a byte offset; the column counts chars. Offsets past the end
/// (or inside a char) are clamped.
pub fn line_col(source: &str, offset: usize) -> (u32, u32) {
    LineIndex::new(source).line_col(source, offset)
}

/// Line starts of a source, for fast offset → position mapping.
#[derive(Clone, Debug)]
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(source: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(
            source
                .bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i + 1),
        );
        LineIndex { starts }
    }

    pub fn line_col(&self, source: &str, offset: usize) -> (u32, u32) {
        self.line_col_near(source, offset, &mut 0)
    }

    /// [`LineIndex::line_col`], looking first at line `*near` (0-based) and the one after
    /// it, where a caller walking the source in order finds most offsets, before searching
    /// all lines; `*near` becomes the offset's line.
    pub fn line_col_near(&self, source: &str, offset: usize, near: &mut usize) -> (u32, u32) {
        let mut offset = offset.min(source.len());
        while !source.is_char_boundary(offset) {
            offset -= 1;
        }
        let holds = |line: usize| {
            self.starts.get(line).is_some_and(|&start| start <= offset)
                && self.starts.get(line + 1).is_none_or(|&next| offset < next)
        };
        let line = match *near {
            n if holds(n) => n,
            n if holds(n.saturating_add(1)) => n + 1,
            _ => self.starts.partition_point(|&s| s <= offset) - 1,
        };
        *near = line;
        // Counting chars is a loop over bytes; an ASCII prefix (most source) is its length.
        let prefix = &source[self.starts[line]..offset];
        let col = if prefix.is_ascii() {
            prefix.len()
        } else {
            prefix.chars().count()
        } + 1;
        (
            u32::try_from(line + 1).unwrap_or(u32::MAX),
            u32::try_from(col).unwrap_or(u32::MAX),
        )
    }
}

/// Stack size of the thread [`compile`] runs on. The passes recurse over the syntax tree,
/// whose depth the parser bounds ([`parser::MAX_DEPTH`]); the worst case needs a few MiB in
/// an unoptimised build, so a dedicated thread makes the bound safe on any caller's stack.
pub const COMPILER_STACK: usize = 32 << 20;

/// Compiles one script (plus the prelude) into a module.
///
/// Runs the pipeline on a scoped thread with a [`COMPILER_STACK`]-byte stack (falling back
/// to the caller's thread if no thread can be spawned).
pub fn compile(source: &str, file: &str, options: &CompileOptions) -> CompileOutput {
    std::thread::scope(|scope| {
        match std::thread::Builder::new()
            .name("skiff-compiler".into())
            .stack_size(COMPILER_STACK)
            .spawn_scoped(scope, || compile_here(source, file, options))
        {
            Ok(handle) => match handle.join() {
                Ok(out) => out,
                Err(panic) => std::panic::resume_unwind(panic),
            },
            Err(_) => compile_here(source, file, options),
        }
    })
}

/// [`compile`] on the current thread (needs a deep enough stack; see [`COMPILER_STACK`]).
pub fn compile_here(source: &str, file: &str, options: &CompileOptions) -> CompileOutput {
    let mut diags = Vec::new();

    let prog = parser::parse(lexer::lex(source, &mut diags), &mut diags);
    let mut prelude_diags = Vec::new();
    let prelude = parser::parse(lexer::lex(PRELUDE, &mut prelude_diags), &mut prelude_diags);

    let globals = resolve::Globals::build(&prog, &prelude, options, &mut diags);
    let user_res = resolve::resolve_program(&prog, &globals, resolve::Unit::User, &mut diags);
    let prelude_res = resolve::resolve_program(
        &prelude,
        &globals,
        resolve::Unit::Prelude,
        &mut prelude_diags,
    );
    debug_assert!(
        prelude_diags.iter().all(|d| !d.is_error()),
        "prelude failed to compile: {prelude_diags:?}"
    );

    let has_error = diags.iter().any(Diagnostic::is_error);
    let mut module = None;
    if !has_error {
        let protos = codegen::generate(
            &codegen::Unit {
                prog: &prog,
                res: &user_res,
                source,
                file,
            },
            &codegen::Unit {
                prog: &prelude,
                res: &prelude_res,
                source: PRELUDE,
                file: PRELUDE_FILE,
            },
            &globals,
            &mut diags,
        );
        if !diags.iter().any(Diagnostic::is_error) {
            module = Some(address::build_module(protos, &globals));
        }
    }
    diags.sort_by(|a, b| {
        (a.span.start, a.span.end, a.severity).cmp(&(b.span.start, b.span.end, b.severity))
    });
    CompileOutput {
        module,
        diagnostics: diags,
    }
}

/// Fuzz target: compiles arbitrary bytes and checks the compiler's own invariants. Never
/// panics unless an invariant is broken (which is the bug a fuzzer is looking for).
///
/// Checked: diagnostics lie within the source on char boundaries; a module is produced iff
/// there is no error; every blob decodes back to itself and is stored under its own hash;
/// every function has one debug position per instruction; the module passes the VM's
/// verifier (loading it into a [`CodeStore`](skiff_vm::store::CodeStore) verifies every blob
/// and link).
pub fn fuzz_compile(source: &[u8]) {
    let text = String::from_utf8_lossy(source);
    let out = compile(&text, "fuzz.skiff", &CompileOptions::default());
    let has_error = out.diagnostics.iter().any(Diagnostic::is_error);
    for d in &out.diagnostics {
        assert!(
            d.span.start <= d.span.end && d.span.end <= text.len(),
            "{d:?}"
        );
        assert!(text.is_char_boundary(d.span.start) && text.is_char_boundary(d.span.end));
    }
    assert_eq!(out.module.is_some(), !has_error);
    if let Some(module) = &out.module {
        for (hash, blob) in &module.blobs {
            let bytes = blob.encode();
            assert_eq!(&skiff_vm::BlobHash::of(&bytes), hash);
            let back = Blob::decode(&bytes, usize::MAX).expect("own blob decodes");
            assert_eq!(&back, &**blob);
            let debug = module.debug.get(hash).expect("debug for every blob");
            assert_eq!(debug.functions.len(), blob.functions.len());
            for (f, d) in blob.functions.iter().zip(&debug.functions) {
                assert_eq!(f.code.len(), d.positions.len());
            }
        }
        if let Err(e) = skiff_vm::store::CodeStore::new().add_module(module) {
            panic!("compiled module fails verification: {e}");
        }
    }
}
