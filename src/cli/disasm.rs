//! `skiff disasm FILE|DIR`: every function of a script or of a compiled directory, with its
//! hash, dependencies, natives and code (annotated with source lines when debug info exists).

use anyhow::{bail, Context, Result};
use skiff_vm::module::transitive_closure;
use skiff_vm::{Blob, BlobDebug, BlobHash, FnRef};
use std::collections::BTreeMap;
use std::path::Path;

pub fn main(path: &Path) -> Result<i32> {
    if path.is_dir() {
        let mut blobs = BTreeMap::new();
        for entry in std::fs::read_dir(path)? {
            let file = entry?.path();
            if file.extension().is_some_and(|e| e == "blob") {
                let bytes = std::fs::read(&file)?;
                let blob = Blob::decode(&bytes, usize::MAX)
                    .with_context(|| format!("{}", file.display()))?;
                let hash = BlobHash::of(&bytes);
                let stem = file
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default();
                if stem != hash.to_hex() {
                    bail!(
                        "{} does not hash to its name (its hash is {hash})",
                        file.display()
                    );
                }
                blobs.insert(hash, blob);
            }
        }
        let order = transitive_closure(blobs.keys().copied(), |h| blobs.get(h))?;
        for hash in order {
            print_blob(&hash, &blobs[&hash], None, None);
        }
    } else {
        let source = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let Some(module) = super::load(path)? else {
            return Ok(2);
        };
        let roots =
            std::iter::once(module.entry.blob).chain(module.exports.values().map(|f| f.blob));
        let order = transitive_closure(roots, |h| module.blobs.get(h).map(|b| &**b))?;
        for hash in order {
            print_blob(
                &hash,
                &module.blobs[&hash],
                module.debug.get(&hash).map(|d| &**d),
                Some(&source),
            );
        }
    }
    Ok(0)
}

fn print_blob(hash: &BlobHash, blob: &Blob, debug: Option<&BlobDebug>, source: Option<&str>) {
    println!(
        "blob {hash} ({} function{})",
        blob.functions.len(),
        if blob.functions.len() == 1 { "" } else { "s" }
    );
    for dep in blob.dependencies() {
        println!("  depends on {dep}");
    }
    let lines: Vec<&str> = source.map(|s| s.lines().collect()).unwrap_or_default();
    for (member, f) in blob.functions.iter().enumerate() {
        let fdebug = debug.and_then(|d| d.functions.get(member));
        let name = fdebug
            .and_then(|d| d.name.clone())
            .unwrap_or_else(|| "<anonymous>".into());
        println!(
            "\n  fn {name} [{hash:?}.{member}] arity {} locals {} upvals {} cells {:?}",
            f.arity, f.locals, f.upvals, f.cells
        );
        if !f.natives.is_empty() {
            println!("    natives: {}", f.natives.join(", "));
        }
        for (i, r) in f.refs.iter().enumerate() {
            match r {
                FnRef::Local(m) => println!("    ref {i}: member {m} of this blob"),
                FnRef::External(id) => println!("    ref {i}: {id}"),
            }
        }
        for (i, c) in f.consts.iter().enumerate() {
            println!("    const {i}: {c:?}");
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
                        .get(line as usize - 1)
                        .map(|l| l.trim())
                        .unwrap_or_default();
                    println!("{text:<44} ; {line}:{col}  {src}");
                }
                Some(&(line, col)) => println!("{text:<44} ; {line}:{col}"),
                None => println!("{text}"),
            }
        }
    }
    println!();
}
