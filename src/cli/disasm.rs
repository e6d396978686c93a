//! `skiff disasm FILE|DIR`: every function of a script or of a compiled directory, with its
//! hash, dependencies, natives and code (annotated with source lines when debug info exists:
//! always for a script, and for a directory when `skiff compile` wrote `HASH.debug` files).
//!
//! Invariants: a blob file whose bytes do not hash to its name is refused, not disassembled;
//! an instruction's source line is quoted from the file its function's debug info names
//! (the script, or the prelude for `map`, `filter`, ...), never from another file.

use anyhow::{bail, Context, Result};
use skiff_vm::module::transitive_closure;
use skiff_vm::{Blob, BlobDebug, BlobHash, FnRef};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::path::Path;

pub fn main(path: &Path) -> Result<i32> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    let written = if path.is_dir() {
        directory(path, &mut out)
    } else {
        script(path, &mut out)
    };
    match written.and_then(|code| out.flush().map(|_| code).map_err(Into::into)) {
        Err(e)
            if e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) =>
        {
            Ok(0)
        }
        other => other,
    }
}

fn directory(dir: &Path, out: &mut dyn Write) -> Result<i32> {
    let mut blobs = BTreeMap::new();
    let mut debug = HashMap::new();
    for entry in std::fs::read_dir(dir)? {
        let file = entry?.path();
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        match file.extension().and_then(|e| e.to_str()) {
            Some("blob") => {
                let bytes = std::fs::read(&file)?;
                let blob =
                    Blob::decode(&bytes, usize::MAX).with_context(|| file.display().to_string())?;
                let hash = BlobHash::of(&bytes);
                if stem != hash.to_hex() {
                    bail!(
                        "{} does not hash to its name (its hash is {hash})",
                        file.display()
                    );
                }
                blobs.insert(hash, blob);
            }
            Some("debug") => {
                if let Some(hash) = BlobHash::from_hex(&stem) {
                    let bytes = std::fs::read(&file)?;
                    debug.insert(
                        hash,
                        BlobDebug::decode(&bytes).with_context(|| file.display().to_string())?,
                    );
                }
            }
            _ => {}
        }
    }
    for hash in transitive_closure(blobs.keys().copied(), |h| blobs.get(h))? {
        print_blob(out, &hash, &blobs[&hash], debug.get(&hash), &[])?;
    }
    Ok(0)
}

fn script(path: &Path, out: &mut dyn Write) -> Result<i32> {
    let source =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let Some(module) = super::load(path)? else {
        return Ok(2);
    };
    let name = path.display().to_string();
    let sources = [
        (name.as_str(), source.as_str()),
        (skiff_compiler::PRELUDE_FILE, skiff_compiler::PRELUDE),
    ];
    let roots = std::iter::once(module.entry.blob).chain(module.exports.values().map(|f| f.blob));
    for hash in transitive_closure(roots, |h| module.blobs.get(h).map(|b| &**b))? {
        let debug = module.debug.get(&hash).map(|d| &**d);
        print_blob(out, &hash, &module.blobs[&hash], debug, &sources)?;
    }
    Ok(0)
}

/// Prints one blob; `sources` pairs file names with their text, for quoting source lines.
fn print_blob(
    out: &mut dyn Write,
    hash: &BlobHash,
    blob: &Blob,
    debug: Option<&BlobDebug>,
    sources: &[(&str, &str)],
) -> io::Result<()> {
    let plural = if blob.functions.len() == 1 { "" } else { "s" };
    writeln!(
        out,
        "blob {hash} ({} function{plural})",
        blob.functions.len()
    )?;
    for dep in blob.dependencies() {
        writeln!(out, "  depends on {dep}")?;
    }
    for (member, f) in blob.functions.iter().enumerate() {
        let fdebug = debug.and_then(|d| d.functions.get(member));
        let lines: Vec<&str> = fdebug
            .and_then(|d| sources.iter().find(|(file, _)| *file == d.file))
            .map(|(_, text)| text.lines().collect())
            .unwrap_or_default();
        let name = fdebug
            .and_then(|d| d.name.clone())
            .unwrap_or_else(|| "<anonymous>".into());
        let file = fdebug
            .map(|d| format!(" in {}", d.file))
            .unwrap_or_default();
        writeln!(
            out,
            "\n  fn {name}{file} [{hash:?}.{member}] arity {} locals {} upvals {} cells {:?}",
            f.arity, f.locals, f.upvals, f.cells
        )?;
        if !f.natives.is_empty() {
            writeln!(out, "    natives: {}", f.natives.join(", "))?;
        }
        for (i, r) in f.refs.iter().enumerate() {
            match r {
                FnRef::Local(m) => writeln!(out, "    ref {i}: member {m} of this blob")?,
                FnRef::External(id) => writeln!(out, "    ref {i}: {id}")?,
            }
        }
        for (i, c) in f.consts.iter().enumerate() {
            writeln!(out, "    const {i}: {c:?}")?;
        }
        let mut last_line = 0;
        for (pc, instr) in f.code.iter().enumerate() {
            let operands: Vec<String> = instr
                .operands()
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            let text = format!("{:>5}  {:<16} {}", pc, instr.mnemonic(), operands.join(" "));
            match fdebug.and_then(|d| d.positions.get(pc)) {
                Some(&(line, col)) if line != last_line => {
                    last_line = line;
                    let src = lines
                        .get((line as usize).wrapping_sub(1))
                        .map(|l| l.trim())
                        .unwrap_or_default();
                    writeln!(out, "{text:<44} ; {line}:{col}  {src}")?;
                }
                Some(&(line, col)) => writeln!(out, "{text:<44} ; {line}:{col}")?,
                None => writeln!(out, "{text}")?,
            }
        }
    }
    writeln!(out)
}
