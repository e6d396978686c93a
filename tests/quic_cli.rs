//! `skiff serve`, `skiff call` and `skiff run --peer` as separate processes talking QUIC
//! over loopback.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

#[test]
fn serve_call_and_run_across_processes() {
    let dir = std::env::temp_dir().join(format!("skiff-quic-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
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

    let mut child = Command::new(SKIFF)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--name",
            "w",
            "--dev",
            "--load",
        ])
        .arg(&lib)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("skiff serve starts");
    let stdout = child.stdout.take().unwrap();
    let _server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    // "listening on ADDR as w pin PIN"
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.get(..2), Some(&["listening", "on"][..]), "{line}");
    let (addr, pin) = (words[2], words[6]);
    let peer = format!("w={addr}#{pin}");

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
