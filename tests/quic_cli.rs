//! `skiff serve`, `skiff call` and `skiff run --peer` as separate processes talking QUIC
//! over loopback.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

/// A `skiff serve` child process, killed when dropped.
struct Server {
    child: std::process::Child,
    /// The rest of its standard output (kept open: a body that prints there must not fail).
    stdout: BufReader<std::process::ChildStdout>,
    /// `NAME=ADDR#PIN`, as `--peer` takes it.
    peer: String,
    addr: String,
}

impl Server {
    /// Starts `skiff serve --name NAME --listen 127.0.0.1:0 EXTRA...` and waits for its
    /// "listening on ADDR as NAME pin PIN" line.
    fn start(name: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(SKIFF)
            .args(["serve", "--listen", "127.0.0.1:0", "--name", name])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("skiff serve starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.get(..2), Some(&["listening", "on"][..]), "{line}");
        let (addr, pin) = (words[2].to_owned(), words[6]);
        Server {
            peer: format!("{name}={addr}#{pin}"),
            addr,
            child,
            stdout,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `skiff ARGS`: exit code, stdout, stderr.
fn skiff(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(SKIFF)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("skiff runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh scratch directory for one test.
fn scratch(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("skiff-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn serve_call_and_run_across_processes() {
    let dir = scratch("quic-cli");
    let lib = dir.join("lib.skiff");
    std::fs::write(
        &lib,
        "fn add(x, y) { x + y }\nfn greet(n) { \"hi \" + n }\n",
    )
    .unwrap();
    let script = dir.join("script.skiff");
    std::fs::write(
        &script,
        "fn sq(x) { x * x }\nprint(remote(\"w\") [] { [here(), caller(), sq(7)] })\n",
    )
    .unwrap();

    let server = Server::start("w", &["--dev", "--load", lib.to_str().unwrap()]);
    let (peer, addr) = (server.peer.clone(), server.addr.clone());
    let (code, out, err) = skiff(&["call", "w", "add", "2", "3", "--peer", &peer]);
    assert_eq!((code, out.trim()), (0, "5"), "{err}");
    let (code, out, err) = skiff(&["call", "w", "greet", "\"ada\"", "--peer", &peer]);
    assert_eq!((code, out.trim()), (0, "hi ada"), "{err}");
    let (code, _, err) = skiff(&["call", "w", "missing", "--peer", &peer]);
    assert_eq!(code, 1);
    assert!(err.contains("Refused"), "{err}");

    let (code, out, err) = skiff(&["run", script.to_str().unwrap(), "--peer", &peer]);
    assert_eq!((code, out.trim()), (0, "[\"w\", \"main\", 49]"), "{err}");

    // A wrong pin is refused at the TLS handshake.
    let wrong = format!("w={addr}#{}", "00".repeat(32));
    let (code, _, err) = skiff(&["call", "w", "add", "1", "2", "--peer", &wrong]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("Refused"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_refuses_dev_mode_beyond_loopback() {
    let (code, _, err) = skiff(&["serve", "--listen", "0.0.0.0:0", "--name", "w", "--dev"]);
    assert_eq!(code, 2);
    assert!(err.contains("refusing"), "{err}");
}

/// Every §8 feature of a script, with each node its own `skiff serve` process: nested hops,
/// a call back to the caller (which accepts no connections), fan-out, remote errors with the
/// peer named, and a `timeout_ms` that stops the remote body.
#[test]
fn script_hops_across_processes() {
    let dir = scratch("quic-hops");
    let lib = dir.join("lib.skiff");
    std::fs::write(&lib, "fn slow(ms) { sleep(ms); \"late\" }\n").unwrap();
    let c = Server::start("c", &["--dev", "--load", lib.to_str().unwrap()]);
    let w = Server::start("w", &["--dev"]);
    let b = Server::start("b", &["--dev", "--peer", &c.peer]);
    let script = dir.join("hops.skiff");
    std::fs::write(
        &script,
        r#"
fn where() { [here(), caller()] }
print(remote("b") [] { remote("c") [] { where() } })
print(remote("b") [] { remote(caller()) [] { here() } })
let ts = map(["b", "c", "w"], fn(p) { spawn { remote(p) [] { here() } } })
print(await_all(ts))
let e = try { remote("b") [] { remote("c") [] { [1][5] } } } catch err { err }
print([e.kind, e.peer])
let t = try { remote({peer: "c", timeout_ms: 300}) [] { sleep(20000); 1 } } catch err { err.kind }
print(t)
let x = [1, 2]
let y = remote("w") [x] { push(x, 3); x }
print([x, y])
"#,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let (code, out, err) = skiff(&[
        "run",
        script.to_str().unwrap(),
        "--peer",
        &b.peer,
        "--peer",
        &c.peer,
        "--peer",
        &w.peer,
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            r#"["c", "b"]"#,
            "main",
            r#"["b", "c", "w"]"#,
            r#"["IndexError", "c"]"#,
            "Timeout",
            "[[1, 2], [1, 2, 3]]",
        ],
        "{err}"
    );
    // The 20 s body was stopped at its 300 ms deadline, not waited for.
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server killed (SIGKILL: no QUIC close) in the middle of a call: the caller gets its
/// `Timeout` within the hop's deadline and fails over to the next peer.
#[test]
fn a_server_killed_mid_call_fails_over_within_the_deadline() {
    let dir = scratch("quic-kill");
    let mut k = Server::start("k", &["--dev"]);
    let c = Server::start("c", &["--dev"]);
    let script = dir.join("kill.skiff");
    std::fs::write(
        &script,
        r#"
let r = remote({peers: ["k", "c"], timeout_ms: 2000}) [] {
  if here() == "k" { print("k busy"); sleep(60000) }
  here()
}
print(r)
let again = try { remote({peer: "k", timeout_ms: 1000}) [] { 1 } } catch err { err.kind }
print(again)
"#,
    )
    .unwrap();
    let run = Command::new(SKIFF)
        .args(["run", script.to_str().unwrap(), "--peer", &k.peer])
        .args(["--peer", &c.peer])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("skiff run starts");
    // The body is running on k when k prints; then k dies without a word.
    let mut line = String::new();
    k.stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "k busy");
    let killed = std::time::Instant::now();
    k.child.kill().unwrap();
    let out = run.wait_with_output().unwrap();
    let waited = killed.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"c"), "{stdout}\n{stderr}");
    assert!(
        matches!(
            lines.get(1),
            Some(&"Timeout") | Some(&"Disconnected") | Some(&"Unreachable")
        ),
        "{stdout}"
    );
    // 2 s for the first hop's deadline, 1 s for the second; nothing waits for an idle timeout.
    assert!(waited < std::time::Duration::from_secs(10), "{waited:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Production trust from files made by `skiff cert`: a CA, node certificates it signs,
/// a TOML peer table. A client certificate from another CA, or none, is refused and runs
/// nothing; so is a server whose certificate the client's CA did not sign.
#[test]
fn ca_mode_with_skiff_cert_files_and_a_peers_file() {
    let dir = scratch("quic-ca");
    let d = |p: &str| dir.join(p).to_str().unwrap().to_owned();
    for args in [
        vec!["cert", "ca", "--out", &d("ca")],
        vec!["cert", "node", "w", "--ca", &d("ca"), "--out", &d("certs")],
        vec![
            "cert",
            "node",
            "cli",
            "--ca",
            &d("ca"),
            "--out",
            &d("certs"),
        ],
        vec!["cert", "ca", "--out", &d("rogue")],
        vec![
            "cert",
            "node",
            "cli",
            "--ca",
            &d("rogue"),
            "--out",
            &d("rogue"),
        ],
    ] {
        let (code, out, err) = skiff(&args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains("fingerprint: "), "{out}");
    }
    std::fs::write(dir.join("lib.skiff"), "fn add(x, y) { x + y }\n").unwrap();
    let w = Server::start(
        "w",
        &[
            "--cert",
            &d("certs/w.pem"),
            "--key",
            &d("certs/w.key"),
            "--ca",
            &d("ca/ca.pem"),
            "--load",
            &d("lib.skiff"),
        ],
    );
    let table = |ca: &str| format!("ca = \"{ca}\"\n\n[peers.w]\naddr = \"{}\"\n", w.addr);
    std::fs::write(dir.join("peers.toml"), table("ca/ca.pem")).unwrap();
    std::fs::write(dir.join("rogue.toml"), table("rogue/ca.pem")).unwrap();
    let call = |peers: &str, cert: Option<&str>| {
        let mut args = vec!["call", "w", "add", "2", "3", "--peers-file", peers];
        let (pem, key);
        if let Some(dir) = cert {
            (pem, key) = (format!("{dir}/cli.pem"), format!("{dir}/cli.key"));
            args.extend(["--cert", &pem, "--key", &key]);
        }
        skiff(&args)
    };
    let (code, out, err) = call(&d("peers.toml"), Some(&d("certs")));
    assert_eq!((code, out.trim()), (0, "5"), "{err}");
    // A client certificate signed by another CA.
    let (code, out, err) = call(&d("peers.toml"), Some(&d("rogue")));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("Refused"), "{err}");
    // No client certificate from the CA at all (a fresh self-signed one).
    let (code, _, err) = call(&d("peers.toml"), None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("Refused"), "{err}");
    // The client trusts another CA: the server's certificate is refused.
    let (code, _, err) = call(&d("rogue.toml"), Some(&d("certs")));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("Refused"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's main command: the tour hops between in-process nodes over loopback QUIC.
#[test]
fn the_tour_runs_over_quic() {
    let tour = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/tour.skiff");
    let (code, out, err) = skiff(&["run", tour, "--spawn", "a,b,c"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            r#"top level runs on main and knows ["a", "b", "c"]"#,
            r#"a searched: ["skiff", "skip", "sky"]"#,
            "b sees [1, 2, 3, 99]",
            "main still has [1, 2, 3]",
            r#"nested: ["b", "called back on b"]"#,
            r#"fan-out: ["a has 2", "b has 2", "c has 2"]"#,
            "failover: c",
            "fallback: ran locally",
            "caught DivisionByZero from b",
        ],
        "{err}"
    );
}

/// Permissions from the TOML peer table of `skiff serve`: `[defaults]` forbids shipped code,
/// so a script's hop is `Refused` while calls of exported functions still work.
#[test]
fn serve_takes_permissions_from_the_peers_file() {
    let dir = scratch("quic-perms");
    let lib = dir.join("lib.skiff");
    std::fs::write(&lib, "fn add(x, y) { x + y }\n").unwrap();
    let peers = dir.join("peers.toml");
    std::fs::write(&peers, "[defaults]\nship_code = false\n").unwrap();
    let w = Server::start(
        "w",
        &[
            "--dev",
            "--load",
            lib.to_str().unwrap(),
            "--peers-file",
            peers.to_str().unwrap(),
        ],
    );
    let (code, out, err) = skiff(&["call", "w", "add", "2", "3", "--peer", &w.peer]);
    assert_eq!((code, out.trim()), (0, "5"), "{err}");
    let script = dir.join("ship.skiff");
    std::fs::write(
        &script,
        "print(try { remote(\"w\") [] { 1 } } catch e { [e.kind, e.message] })\n",
    )
    .unwrap();
    let (code, out, err) = skiff(&["run", script.to_str().unwrap(), "--peer", &w.peer]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("[\"Refused\", ") && out.contains("ship code"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `skiff serve` stops gracefully on SIGTERM: a call in flight finishes and gets its result,
/// then the server exits 0 and says so.
#[test]
fn serve_drains_calls_and_exits_on_sigterm() {
    let dir = scratch("quic-term");
    let lib = dir.join("lib.skiff");
    std::fs::write(&lib, "fn slow(x) { sleep(800); x * 2 }\n").unwrap();
    let mut server = Command::new(SKIFF)
        .args(["serve", "--listen", "127.0.0.1:0", "--name", "w", "--dev"])
        .args(["--grace-ms", "10000", "--load", lib.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("skiff serve starts");
    let mut stdout = BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    let peer = format!("w={}#{}", words[2], words[6]);
    let call = Command::new(SKIFF)
        .args(["call", "w", "slow", "21", "--peer", &peer])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let the call arrive, then ask the server to stop while it runs.
    std::thread::sleep(std::time::Duration::from_millis(400));
    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let call = call.wait_with_output().unwrap();
    let out = server.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&call.stdout).trim(),
        "42",
        "{}",
        String::from_utf8_lossy(&call.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("w: shutting down"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
