//! The `skiff` command's non-`run` surfaces: `check`, `compile -o`, `disasm` of a script and
//! of a compiled directory, exit codes, and refusal of a tampered blob file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn skiff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("skiff-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn check_reports_every_error_with_caret_and_exit_2() {
    let dir = scratch("check");
    let file = write(&dir, "bad.skiff", "let a = 1\nprint(b)\nprint(c)\n");
    let out = skiff(&["check", &file]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.skiff:2:7") && stderr.contains("bad.skiff:3:7"),
        "{stderr}"
    );
    assert!(stderr.contains('^'), "a caret under the span: {stderr}");
    let ok = write(&dir, "ok.skiff", "print(1)\n");
    assert_eq!(skiff(&["check", &ok]).status.code(), Some(0));
}

#[test]
fn runtime_error_prints_kind_and_trace_and_exits_1() {
    let dir = scratch("trace");
    let file = write(
        &dir,
        "t.skiff",
        "fn inner() { 1 / 0 }\nfn outer() { inner() }\nouter()\n",
    );
    let out = skiff(&["run", &file]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error[DivisionByZero]"), "{stderr}");
    for at in ["t.skiff:1:", "t.skiff:2:", "t.skiff:3:"] {
        assert!(stderr.contains(at), "trace frame {at} in {stderr}");
    }
}

#[test]
fn compile_writes_blobs_named_by_hash_and_disasm_reads_them() {
    let dir = scratch("compile");
    let file = write(&dir, "s.skiff", "fn twice(x) { x * 2 }\nprint(twice(21))\n");
    let out_dir = dir.join("out");
    let out = skiff(&["compile", &file, "-o", &out_dir.display().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = std::fs::read_to_string(out_dir.join("manifest")).unwrap();
    assert!(
        manifest.starts_with("entry ") && manifest.contains("export twice "),
        "{manifest}"
    );

    let listing = skiff(&["disasm", &out_dir.display().to_string()]);
    assert!(listing.status.success());
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(
        text.contains("fn twice in ") && text.contains("Mul"),
        "{text}"
    );

    let script_listing = String::from_utf8_lossy(&skiff(&["disasm", &file]).stdout).to_string();
    assert!(
        script_listing.contains("fn twice(x) { x * 2 }"),
        "source lines shown: {script_listing}"
    );

    // A blob whose bytes no longer match its name is refused.
    let blob = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "blob"))
        .unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let refused = skiff(&["disasm", &out_dir.display().to_string()]);
    assert_eq!(refused.status.code(), Some(2));
}

/// `disasm` shows, per blob, its hash (the one `compile` names it by), what it depends on,
/// the natives and references of each function, and its code with source lines.
#[test]
fn disasm_lists_hashes_dependencies_natives_and_code() {
    let dir = scratch("disasm");
    let file = write(
        &dir,
        "d.skiff",
        "fn twice(x) { x * 2 }\nfn quad(x) { twice(twice(x)) }\nprint(quad(3), len(\"abc\"))\n",
    );
    let out_dir = dir.join("out");
    assert!(
        skiff(&["compile", &file, "-o", &out_dir.display().to_string()])
            .status
            .success()
    );
    let manifest = std::fs::read_to_string(out_dir.join("manifest")).unwrap();
    let hash_of = |line: &str| {
        let id = manifest
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .unwrap_or_else(|| panic!("no `{line}` in {manifest}"));
        id.trim().trim_end_matches(".0").to_owned()
    };
    let (twice, quad, entry) = (
        hash_of("export twice "),
        hash_of("export quad "),
        hash_of("entry "),
    );

    let out = skiff(&["disasm", &file]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let blob = |hash: &str| {
        let start = text
            .find(&format!("blob {hash} "))
            .unwrap_or_else(|| panic!("no blob {hash}:\n{text}"));
        let rest = &text[start + 5..];
        rest[..rest.find("\nblob ").unwrap_or(rest.len())].to_owned()
    };
    let twice_blob = blob(&twice);
    assert!(!twice_blob.contains("depends on"), "{twice_blob}");
    assert!(twice_blob.contains("fn twice in ") && twice_blob.contains("Mul"));
    assert!(
        twice_blob.contains("fn twice(x) { x * 2 }"),
        "source lines: {twice_blob}"
    );
    let quad_blob = blob(&quad);
    assert!(
        quad_blob.contains(&format!("depends on {twice}")),
        "{quad_blob}"
    );
    assert!(
        quad_blob.contains(&format!("ref 0: {twice}.0")),
        "{quad_blob}"
    );
    assert!(quad_blob.contains("CallFunction"), "{quad_blob}");
    let main_blob = blob(&entry);
    assert!(
        main_blob.contains(&format!("depends on {quad}")),
        "{main_blob}"
    );
    assert!(main_blob.contains("natives: len, print"), "{main_blob}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A prelude function's instructions quote the prelude's lines, not the script's lines of
/// the same numbers.
#[test]
fn disasm_quotes_prelude_functions_from_the_prelude() {
    let dir = scratch("disasm-prelude");
    let script = "// line one of the script\n".repeat(12) + "print(map([1, 2], fn(x) { x + 1 }))\n";
    let file = write(&dir, "p.skiff", &script);
    let out = skiff(&["disasm", &file]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text
        .find("fn map in <prelude>")
        .unwrap_or_else(|| panic!("no prelude map:\n{text}"));
    let map = &text[start
        ..text[start..]
            .find("\nblob ")
            .map_or(text.len(), |e| start + e)];
    assert!(map.contains("push(out, f(x))"), "{map}");
    assert!(!map.contains("line one of the script"), "{map}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A peer name that repeats `main` or another peer is a usage error, for both hosts.
#[test]
fn repeated_node_names_are_refused() {
    let dir = scratch("names");
    let file = write(&dir, "s.skiff", "print(here())\n");
    for flag in ["--local-peers", "--spawn"] {
        for names in ["a,main", "a,b,a"] {
            let out = skiff(&["run", &file, flag, names]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{flag} {names}: {err}");
            assert!(err.contains("is taken"), "{err}");
            assert!(out.stdout.is_empty(), "nothing ran");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
