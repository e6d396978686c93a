//! Human-readable reports: compile diagnostics with source lines and carets, and uncaught
//! runtime errors with their stack traces.
//!
//! Invariant: reports go to the writer given (stderr for the CLI); nothing here exits.

use codespan_reporting::diagnostic::{Diagnostic as Report, Label};
use codespan_reporting::files::SimpleFile;
use codespan_reporting::term::{self, termcolor::WriteColor, Config};
use skiff_compiler::{Diagnostic, Severity};
use skiff_vm::ExecError;
use std::io::Write;

/// Prints every diagnostic with its source line and a caret under the span.
pub fn diagnostics(out: &mut dyn WriteColor, file: &str, source: &str, diagnostics: &[Diagnostic]) {
    let files = SimpleFile::new(file, source);
    let config = Config::default();
    for d in diagnostics {
        let report = match d.severity {
            Severity::Error => Report::error(),
            Severity::Warning => Report::warning(),
        };
        let report = report
            .with_message(&d.message)
            .with_labels(vec![Label::primary((), d.span.clone())])
            .with_notes(d.notes.clone());
        // A write error on stderr leaves nothing better to do than to carry on.
        let _ = term::emit(out, &config, &files, &report);
    }
}

/// Prints `error[KIND]: MESSAGE` and one line per stack frame, innermost first.
pub fn runtime_error(out: &mut dyn Write, error: &ExecError) {
    let _ = writeln!(out, "error[{}]: {}", error.kind, error.message);
    for frame in &error.trace {
        let _ = writeln!(out, "  at {frame}");
    }
}
