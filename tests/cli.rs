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
