//! Golden script tests: every `tests/scripts/**/*.skiff` is run as `skiff run [ARGS] FILE` and
//! its stdout, stderr and exit code are checked against directives written as comments in the
//! script itself (clox / piccolo style). The scripts are written from `LANGUAGE.md` alone.
//!
//! Directives (anywhere in a line, usually after the code they describe):
//!
//! - `// expect: TEXT` — the next line of stdout is exactly TEXT. Stdout must have exactly as
//!   many lines as there are `expect:` directives. `// expect:` with nothing after it is an
//!   empty line.
//! - `// expect runtime error: TEXT` — exit code 1, and the first stderr line starting with
//!   `error[` begins with TEXT.
//! - `// expect compile error: LINE:COL [TEXT]` — exit code 2, and some `error:` diagnostic is
//!   reported at LINE:COL (1-based) with a message containing TEXT (if given). `LINE` alone
//!   accepts any column on that line. Several such directives: all must be reported.
//! - `// expect warning: LINE:COL [TEXT]` — some `warning:` diagnostic at that position
//!   (the exit code is decided by the other directives).
//! - `// expect stderr: TEXT` — some stderr line contains TEXT.
//! - `// args: ...` — extra whitespace-separated arguments for `skiff run`.
//!
//! With no error directive the run must exit 0. Diagnostics are read codespan-style: a line
//! `error: MESSAGE` / `warning: MESSAGE` paired with the next ` --> FILE:LINE:COL` line
//! (codespan's rich `┌─ FILE:LINE:COL` is accepted too).
//!
//! `SKIFF_GOLDEN=substring` runs only the scripts whose path contains the substring. Scripts run
//! on two threads; each is killed after 20 s. All failures are reported together at the end.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const THREADS: usize = 2;
const TIMEOUT: Duration = Duration::from_secs(20);
const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

#[test]
fn golden_scripts() {
    run_golden("tests/scripts", false);
}

/// The distribution scripts again, with their in-process peers (`--local-peers`) replaced by
/// nodes talking real QUIC over loopback (`--spawn`).
#[test]
fn golden_distribution_over_quic() {
    run_golden("tests/scripts/distribution", true);
}

fn run_golden(dir: &str, quic: bool) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut scripts = Vec::new();
    collect_scripts(&root.join(dir), &mut scripts);
    scripts.sort();
    let filter = std::env::var("SKIFF_GOLDEN").unwrap_or_default();
    let scripts: Vec<String> = scripts
        .iter()
        .map(|p| {
            p.strip_prefix(root)
                .unwrap_or(p)
                .to_string_lossy()
                .replace('\\', "/")
        })
        .filter(|p| p.contains(&filter))
        .collect();
    assert!(
        !scripts.is_empty(),
        "no golden scripts match SKIFF_GOLDEN={filter:?}"
    );

    // Work-stealing over a shared index; each result is (script, failure report if any).
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(script) = scripts.get(i) else { break };
                let outcome = check_script(root, script, quic);
                results.lock().unwrap().push((script.clone(), outcome));
            });
        }
    });

    let mut results = results.into_inner().unwrap();
    results.sort();
    let failures: Vec<String> = results.into_iter().filter_map(|(_, f)| f).collect();
    if !failures.is_empty() {
        panic!(
            "{} of {} golden scripts failed:\n\n{}",
            failures.len(),
            scripts.len(),
            failures.join("\n")
        );
    }
    eprintln!("{} golden scripts passed", scripts.len());
}

/// Each script's top level run twice by the VM ([`skiff_vm::fuzz::check_fused_ops`]): with
/// the interpreter's fused ops and fast paths, and one instruction at a time, in slices of a
/// few instructions so that slice boundaries fall inside fused ops. The two runs must agree
/// on every status, every printed line and the fuel left. A script whose natives a bare VM
/// lacks (context natives) is skipped; one that runs out of fuel is compared up to there.
#[test]
fn golden_scripts_run_the_same_fused_and_one_instruction_at_a_time() {
    const FUEL: u64 = 200_000;
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
        let mut store = skiff_vm::CodeStore::new();
        store.add_module(&module).expect("compiled code verifies");
        // A slice size per script, 5 to 68 instructions, so each falls elsewhere.
        let slice = 5 + name
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31) + u64::from(b))
            % 64;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            skiff_vm::fuzz::check_fused_ops(&store, module.entry, Vec::new(), FUEL, slice)
        }));
        match outcome {
            Ok(Ok(())) => checked += 1,
            Ok(Err(_)) => {} // a native only a node or the CLI provides
            // The panic's message (the two runs' differences) is already on stderr.
            Err(_) => failures.push(name),
        }
    }
    assert!(
        failures.is_empty(),
        "fused ops and single instructions disagree on: {failures:?}"
    );
    assert!(
        checked * 10 >= scripts.len() * 6,
        "only {checked} of {} scripts were compared",
        scripts.len()
    );
}

fn collect_scripts(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_scripts(&path, out);
        } else if path.extension().is_some_and(|e| e == "skiff") {
            out.push(path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Directives

/// A position from a `compile error:` / `warning:` directive; `col: None` matches any column.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pos {
    line: usize,
    col: Option<usize>,
}

#[derive(Debug)]
struct DiagExpect {
    pos: Pos,
    text: String,
    /// Line of the directive in the script, for reports.
    at: usize,
}

#[derive(Debug, Default)]
struct Expect {
    args: Vec<String>,
    stdout: Vec<String>,
    runtime_error: Option<String>,
    compile_errors: Vec<DiagExpect>,
    warnings: Vec<DiagExpect>,
    stderr: Vec<String>,
}

fn parse_directives(source: &str) -> Result<Expect, String> {
    let mut e = Expect::default();
    for (n, line) in source.lines().enumerate() {
        let n = n + 1;
        let line = line.trim_end_matches('\r');
        if let Some(i) = line.find("// args:") {
            e.args.extend(
                line[i + "// args:".len()..]
                    .split_whitespace()
                    .map(String::from),
            );
        }
        let Some(i) = line.find("// expect") else {
            continue;
        };
        let rest = &line[i + "// expect".len()..];
        let (kind, text) = rest
            .split_once(':')
            .ok_or_else(|| format!("line {n}: malformed directive `{}`", &line[i..]))?;
        let text = text.strip_prefix(' ').unwrap_or(text);
        match kind.trim() {
            "" => e.stdout.push(text.to_string()),
            "runtime error" => {
                if e.runtime_error.is_some() {
                    return Err(format!("line {n}: more than one `expect runtime error`"));
                }
                e.runtime_error = Some(text.trim().to_string());
            }
            "compile error" => e.compile_errors.push(parse_diag(text, n)?),
            "warning" => e.warnings.push(parse_diag(text, n)?),
            "stderr" => e.stderr.push(text.trim().to_string()),
            other => return Err(format!("line {n}: unknown directive `expect {other}:`")),
        }
    }
    Ok(e)
}

/// Parses `LINE:COL [TEXT]` or `LINE [TEXT]`.
fn parse_diag(text: &str, at: usize) -> Result<DiagExpect, String> {
    let text = text.trim();
    let (pos, msg) = text.split_once(' ').unwrap_or((text, ""));
    let bad = || format!("line {at}: bad position `{pos}` (want LINE:COL or LINE)");
    let (line, col) = match pos.split_once(':') {
        Some((l, c)) => (
            l.parse().map_err(|_| bad())?,
            Some(c.parse().map_err(|_| bad())?),
        ),
        None => (pos.parse().map_err(|_| bad())?, None),
    };
    Ok(DiagExpect {
        pos: Pos { line, col },
        text: msg.trim().to_string(),
        at,
    })
}

// ---------------------------------------------------------------------------------------------
// Running

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    timed_out: bool,
}

fn run_skiff(root: &Path, script: &str, args: &[String]) -> Result<Run, String> {
    let mut child = Command::new(SKIFF)
        .arg("run")
        .args(args)
        .arg(script)
        .current_dir(root)
        // Plain diagnostics: termcolor's `Auto` colours even a pipe unless told not to.
        .env("NO_COLOR", "1")
        .env("TERM", "dumb")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {SKIFF}: {e}"))?;
    // Drain both pipes on their own threads so a chatty script cannot block on a full pipe.
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let (code, timed_out) = wait_with_timeout(&mut child);
    Ok(Run {
        code,
        stdout: out.join().unwrap_or_default(),
        stderr: strip_ansi(&err.join().unwrap_or_default()),
        timed_out,
    })
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Removes ANSI colour sequences (`ESC [ ... letter`), in case colours get through anyway.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn wait_with_timeout(child: &mut Child) -> (Option<i32>, bool) {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return (status.code(), false),
            Ok(None) if start.elapsed() < TIMEOUT => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return (None, true);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checking

#[derive(Debug)]
struct Diag {
    error: bool,
    message: String,
    line: usize,
    col: usize,
}

/// Pairs each `error: MSG` / `warning: MSG` line with the next ` --> FILE:LINE:COL` line.
fn parse_diagnostics(stderr: &str) -> Vec<Diag> {
    let lines: Vec<&str> = stderr.lines().collect();
    let mut diags = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let (error, rest) = if let Some(r) = t.strip_prefix("error") {
            (true, r)
        } else if let Some(r) = t.strip_prefix("warning") {
            (false, r)
        } else {
            continue;
        };
        // `error: msg` or `error[CODE]: msg`.
        let rest = match rest.strip_prefix('[') {
            Some(r) => r.split_once(']').map_or("", |(_, r)| r),
            None => rest,
        };
        let Some(message) = rest.strip_prefix(':') else {
            continue;
        };
        let location = lines[i + 1..].iter().find_map(|l| {
            let l = l.trim_start();
            l.strip_prefix("-->").or_else(|| l.strip_prefix("┌─"))
        });
        let Some(location) = location else { continue };
        let mut parts = location.trim().rsplitn(3, ':');
        let col = parts.next().and_then(|c| c.trim().parse().ok());
        let line = parts.next().and_then(|l| l.trim().parse().ok());
        if let (Some(line), Some(col)) = (line, col) {
            diags.push(Diag {
                error,
                message: message.trim().to_string(),
                line,
                col,
            });
        }
    }
    diags
}

fn check_script(root: &Path, script: &str, quic: bool) -> Option<String> {
    let mut problems = Vec::new();
    let source = match std::fs::read_to_string(root.join(script)) {
        Ok(s) => s,
        Err(e) => return Some(format!("FAIL {script}\n  cannot read: {e}\n")),
    };
    let mut expect = match parse_directives(&source) {
        Ok(e) => e,
        Err(e) => return Some(format!("FAIL {script}\n  {e}\n")),
    };
    if quic {
        for arg in &mut expect.args {
            if arg == "--local-peers" {
                *arg = "--spawn".into();
            }
        }
    }
    let run = match run_skiff(root, script, &expect.args) {
        Ok(r) => r,
        Err(e) => return Some(format!("FAIL {script}\n  {e}\n")),
    };

    if run.timed_out {
        problems.push(format!(
            "timed out after {}s and was killed",
            TIMEOUT.as_secs()
        ));
    } else {
        let want_code = if !expect.compile_errors.is_empty() {
            2
        } else if expect.runtime_error.is_some() {
            1
        } else {
            0
        };
        if run.code != Some(want_code) {
            problems.push(format!(
                "exit code: expected {want_code}, got {:?}",
                run.code
            ));
        }
    }

    // stdout, line by line.
    let actual: Vec<&str> = run.stdout.lines().collect();
    for (i, want) in expect.stdout.iter().enumerate() {
        match actual.get(i) {
            Some(got) if got == want => {}
            Some(got) => problems.push(format!(
                "stdout line {}: expected {want:?}, got {got:?}",
                i + 1
            )),
            None => problems.push(format!(
                "stdout line {}: expected {want:?}, got nothing",
                i + 1
            )),
        }
    }
    if actual.len() > expect.stdout.len() {
        problems.push(format!(
            "stdout has {} lines, expected {}; extra: {:?}",
            actual.len(),
            expect.stdout.len(),
            &actual[expect.stdout.len()..]
        ));
    }

    if let Some(want) = &expect.runtime_error {
        match run.stderr.lines().find(|l| l.starts_with("error[")) {
            Some(got) if got.starts_with(want.as_str()) => {}
            Some(got) => problems.push(format!("runtime error: expected {want:?}, got {got:?}")),
            None => problems.push(format!(
                "runtime error: expected {want:?}, no `error[` line"
            )),
        }
    }

    let diags = parse_diagnostics(&run.stderr);
    for (want, error) in expect
        .compile_errors
        .iter()
        .map(|d| (d, true))
        .chain(expect.warnings.iter().map(|d| (d, false)))
    {
        let found = diags.iter().any(|d| {
            d.error == error
                && d.line == want.pos.line
                && want.pos.col.is_none_or(|c| c == d.col)
                && d.message.contains(&want.text)
        });
        if !found {
            let col = want.pos.col.map_or(String::new(), |c| format!(":{c}"));
            problems.push(format!(
                "{} at {}{col} containing {:?} (directive on line {}) not reported",
                if error { "compile error" } else { "warning" },
                want.pos.line,
                want.text,
                want.at
            ));
        }
    }

    for want in &expect.stderr {
        if !run.stderr.lines().any(|l| l.contains(want.as_str())) {
            problems.push(format!("stderr: no line contains {want:?}"));
        }
    }

    if problems.is_empty() {
        return None;
    }
    let mut report = format!("FAIL {script}\n");
    for p in &problems {
        report += &format!("  - {p}\n");
    }
    report += &format!("  args: {:?}\n", expect.args);
    report += &format!("  --- stdout ---\n{}", indent(&run.stdout));
    report += &format!("  --- stderr ---\n{}", indent(&run.stderr));
    Some(report)
}

fn indent(text: &str) -> String {
    const MAX: usize = 4000;
    let mut text = text.to_string();
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text += "\n...(truncated)";
    }
    text.lines().map(|l| format!("    | {l}\n")).collect()
}
