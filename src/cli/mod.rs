//! Command-line parsing and the sub-commands of `skiff`.
//!
//! Invariant: every sub-command returns an exit code; only `main` exits the process.

mod cert;
mod disasm;
mod net;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use codespan_reporting::term::termcolor::{ColorChoice, StandardStream};
use skiff::cluster::{LocalCluster, RunError};
use skiff::{report, CompileOptions, Engine, ExecIo, Limits, Module, Severity};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "skiff",
    version,
    about = "Run Skiff scripts; run parts of them on other nodes"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compile and run a script.
    Run(RunArgs),
    /// Report diagnostics without running.
    Check { file: PathBuf },
    /// Compile to one file per blob plus a manifest of exports.
    Compile {
        file: PathBuf,
        /// Output directory.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Disassemble a script or a compiled directory.
    Disasm { path: PathBuf },
    /// Make certificates: a CA, CA-signed node certificates, or pinned dev certificates.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Serve calls over QUIC (exports a loaded script's top-level functions).
    Serve(net::ServeArgs),
    /// Call a function a running node exports; arguments are Skiff literals.
    Call(net::CallArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    file: PathBuf,
    /// Instructions the execution may run (default: unlimited).
    #[arg(long)]
    fuel: Option<u64>,
    /// Maximum call depth.
    #[arg(long, default_value_t = Limits::default().max_depth)]
    max_depth: usize,
    /// Maximum live heap bytes (0: no limit).
    #[arg(long, default_value_t = skiff_vm::interp::DEFAULT_MAX_HEAP)]
    max_heap: usize,
    /// Wall-clock limit for the whole run, in milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Run `remote` blocks on in-process peers with these names (comma separated).
    #[arg(long, value_delimiter = ',')]
    local_peers: Vec<String>,
    /// Run `remote` blocks on nodes with these names started in this process, over
    /// loopback QUIC (comma separated).
    #[arg(long, value_delimiter = ',', conflicts_with = "local_peers")]
    spawn: Vec<String>,
    #[command(flatten)]
    trust: net::TrustArgs,
}

impl RunArgs {
    /// The limits every execution of this run gets.
    fn limits(&self) -> Limits {
        Limits {
            fuel: self.fuel,
            max_depth: self.max_depth,
            max_heap: (self.max_heap > 0).then_some(self.max_heap),
            deadline: self
                .timeout_ms
                .map(|ms| Instant::now() + Duration::from_millis(ms)),
        }
    }
}

pub fn main(cli: Cli) -> i32 {
    let outcome = match cli.command {
        Command::Run(args) => run(args),
        Command::Check { file } => load(&file).map(|m| if m.is_some() { 0 } else { 2 }),
        Command::Compile { file, out } => compile(&file, &out),
        Command::Disasm { path } => disasm::main(&path),
        Command::Cert(command) => cert::main(command),
        Command::Serve(args) => net::serve(args),
        Command::Call(args) => net::call(args),
    };
    outcome.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        2
    })
}

/// Compiles `file`, printing every diagnostic; `None` when there were errors.
fn load(file: &Path) -> Result<Option<Module>> {
    let source =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let name = file.display().to_string();
    // Every node (in-process or QUIC) provides the context natives.
    let options = CompileOptions {
        natives: skiff_transport::CONTEXT_NATIVES
            .iter()
            .map(|n| n.to_string())
            .collect(),
    };
    let output = skiff_compiler::compile(&source, &name, &options);
    // Colour only for a person at a terminal (and never when NO_COLOR is set).
    let colour = if std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() {
        ColorChoice::Auto
    } else {
        ColorChoice::Never
    };
    let mut stderr = StandardStream::stderr(colour);
    report::diagnostics(&mut stderr, &name, &source, &output.diagnostics);
    let failed = output
        .diagnostics
        .iter()
        .any(|d| d.severity == Severity::Error);
    Ok(if failed { None } else { output.module })
}

/// `main` (the node running the script) followed by `peers`, refusing a repeated name.
fn node_names(flag: &str, peers: &[String]) -> Result<Vec<String>> {
    let mut names = vec!["main".to_owned()];
    for name in peers {
        if names.contains(name) {
            anyhow::bail!(
                "{flag}: the node name `{name}` is taken (`main` runs the script; names must differ)"
            );
        }
        names.push(name.clone());
    }
    Ok(names)
}

fn run(args: RunArgs) -> Result<i32> {
    if !args.spawn.is_empty() || !args.trust.peer.is_empty() || args.trust.peers_file.is_some() {
        return net::run(args);
    }
    let Some(module) = load(&args.file)? else {
        return Ok(2);
    };
    let limits = args.limits();
    let engine = Engine::new(limits.clone());
    let names = node_names("--local-peers", &args.local_peers)?;
    let io: skiff::cluster::IoFactory = Box::new(ExecIo::stdio);
    let mut cluster = LocalCluster::new(engine.vm(), &names, limits, io);
    cluster
        .store_mut("main")
        .expect("main exists")
        .add_module(&module)?;
    match cluster.run("main", module.entry, Vec::new()) {
        Ok(_) => Ok(0),
        Err(RunError::Failed(error)) => {
            report::runtime_error(&mut std::io::stderr(), &error);
            Ok(1)
        }
        Err(other) => Err(other.into()),
    }
}

fn compile(file: &Path, out: &Path) -> Result<i32> {
    let Some(module) = load(file)? else {
        return Ok(2);
    };
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for (hash, blob) in &module.blobs {
        let path = out.join(format!("{hash}.blob"));
        std::fs::write(&path, blob.encode())
            .with_context(|| format!("cannot write {}", path.display()))?;
        if let Some(debug) = module.debug.get(hash) {
            let path = out.join(format!("{hash}.debug"));
            std::fs::write(&path, debug.encode())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    let mut manifest = format!("entry {}\n", module.entry);
    for (name, func) in &module.exports {
        manifest.push_str(&format!("export {name} {func}\n"));
    }
    std::fs::write(out.join("manifest"), manifest).context("cannot write the manifest")?;
    println!("{} blobs written to {}", module.blobs.len(), out.display());
    Ok(0)
}
