//! The networked sub-commands: `skiff run --spawn` / `--peer`, `skiff serve`, `skiff call`.
//!
//! Each builds a tokio runtime, starts one or more [`skiff::node::Node`]s (QUIC, TLS 1.3 with
//! pinned dev certificates or CA/mTLS) and drives a script or a call over real connections.
//!
//! Invariants: exit codes match `skiff run` (0 ok, 1 runtime error, 2 usage/compile error);
//! a `serve` bound beyond loopback needs real authentication (no `--dev` accept-any).

use super::{load, RunArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use skiff::node::{Node, NodeConfig, NodeError};
use skiff::{report, Limits, Portable};
use skiff_transport::cert::generate_self_signed;
use skiff_transport::{ClientAuth, NodeIdentity, Peer, PeerTable};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Identity and trust flags shared by `serve`, `call` and `run --peer`.
#[derive(Args, Debug, Clone, Default)]
pub(super) struct TrustArgs {
    /// A peer: NAME=HOST:PORT[#SHA256-PIN] (repeatable).
    #[arg(long = "peer")]
    pub peer: Vec<String>,
    /// A TOML peer table (see docs/operations.md).
    #[arg(long)]
    pub peers_file: Option<PathBuf>,
    /// This node's certificate (PEM); with --key.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// A CA certificate (PEM): trust peers it signed (mTLS).
    #[arg(long)]
    pub ca: Option<PathBuf>,
}

impl TrustArgs {
    fn peers(&self) -> Result<PeerTable> {
        let mut table = match &self.peers_file {
            Some(path) => PeerTable::from_toml_file(path)?,
            None => PeerTable::new(),
        };
        if let Some(ca) = &self.ca {
            table.set_ca(Some(skiff_transport::tls::cert_from_pem_file(ca)?));
        }
        for flag in &self.peer {
            table.insert(Peer::parse_flag(flag)?);
        }
        Ok(table)
    }

    /// The identity from --cert/--key, or a fresh self-signed one for `name`.
    fn identity(&self, name: &str) -> Result<NodeIdentity> {
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Ok(NodeIdentity::from_pem_files(cert, key)?),
            _ => Ok(generate_self_signed(name)?.identity()?),
        }
    }
}

#[derive(Args, Debug)]
pub(super) struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// This node's name.
    #[arg(long)]
    name: String,
    /// A script whose top-level functions this node exports.
    #[arg(long)]
    load: Option<PathBuf>,
    /// Keep received blobs in this directory, so a restarted node needs none sent again.
    #[arg(long)]
    store: Option<PathBuf>,
    /// On SIGTERM or Ctrl-C, how long calls in flight may take to finish before they are
    /// cancelled.
    #[arg(long, default_value_t = 5000)]
    grace_ms: u64,
    /// Development mode: a fresh self-signed certificate (unless --cert) and any client
    /// certificate accepted. Loopback only.
    #[arg(long)]
    dev: bool,
    #[command(flatten)]
    trust: TrustArgs,
}

#[derive(Args, Debug)]
pub(super) struct CallArgs {
    /// The peer to call (must be in the peer table: --peer NAME=ADDR#PIN).
    peer_name: String,
    /// The exported function.
    function: String,
    /// Arguments, as Skiff literals (`42`, `"text"`, `[1, 2]`, `{k: 1}`).
    args: Vec<String>,
    /// Give up after this many milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
    #[command(flatten)]
    trust: TrustArgs,
}

/// Logs to stderr, filtered by `RUST_LOG` (e.g. `RUST_LOG=skiff_transport=debug`);
/// nothing but errors by default.
fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    init_logging();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn limits_of(args: &RunArgs) -> Limits {
    args.limits()
}

/// `skiff run FILE --spawn a,b` (in-process nodes over loopback QUIC) or `--peer ...`
/// (running servers).
pub(super) fn run(args: RunArgs) -> Result<i32> {
    let Some(module) = load(&args.file)? else {
        return Ok(2);
    };
    let limits = limits_of(&args);
    let names = super::node_names("--spawn", &args.spawn)?;
    runtime()?.block_on(async move {
        let identities = names
            .iter()
            .map(|n| {
                if n == "main" {
                    args.trust.identity(n)
                } else {
                    Ok(generate_self_signed(n)?.identity()?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let pins: Vec<_> = identities.iter().map(|i| i.fingerprint()).collect();
        let mut table = args.trust.peers()?;
        let mut nodes = Vec::new();
        for (name, identity) in names.iter().zip(identities) {
            let mut config = NodeConfig::new(name.clone(), identity);
            config.limits = limits.clone();
            let mut auth = table.client_auth();
            for pin in &pins {
                auth = auth.with_pin(*pin);
            }
            config.client_auth = Some(auth);
            config.peers = table.clone();
            nodes.push(Node::start(config).await?);
        }
        for (node, pin) in nodes.iter().zip(&pins) {
            let addr = node.local_addr()?;
            table.insert(Peer::new(node.name(), &addr.to_string(), Some(*pin))?);
        }
        for node in &nodes {
            for peer in table.iter() {
                if peer.name != node.name() {
                    node.add_peer(peer.clone());
                }
            }
        }
        let main = &nodes[0];
        main.load(&module).await?;
        let outcome = main.run(module.entry, Vec::new()).await;
        let code = match outcome {
            Ok(_) => 0,
            Err(NodeError::Failed(error)) => {
                report::runtime_error(&mut std::io::stderr(), &error);
                1
            }
            Err(other) => return Err(other.into()),
        };
        for node in nodes {
            node.shutdown().await;
        }
        Ok(code)
    })
}

/// `skiff serve`: one node, serving until SIGTERM or Ctrl-C, then shutting down gracefully.
pub(super) fn serve(args: ServeArgs) -> Result<i32> {
    let module = match &args.load {
        Some(file) => match load(file)? {
            Some(m) => Some(m),
            None => return Ok(2),
        },
        None => None,
    };
    let peers = args.trust.peers()?;
    let identity = args.trust.identity(&args.name)?;
    let loopback = args.listen.ip().is_loopback();
    let client_auth = if args.dev {
        if !loopback {
            bail!(
                "refusing to serve on {} with --dev: beyond loopback every client must be \
                 authenticated (give --cert/--key and pinned --peer entries or --ca)",
                args.listen
            );
        }
        let mut auth = ClientAuth::accept_any();
        for pin in peers.client_auth().pins() {
            auth = auth.with_pin(*pin);
        }
        auth
    } else {
        let auth = peers.client_auth();
        if args.trust.cert.is_none() {
            bail!("give --cert and --key (or --dev for a loopback development server)");
        }
        if auth.pins().is_empty() && peers.ca().is_none() {
            bail!("no client would be accepted: add pinned --peer entries or --ca (or use --dev)");
        }
        auth
    };
    runtime()?.block_on(async move {
        let mut config = NodeConfig::new(args.name.clone(), identity);
        config.listen = args.listen;
        config.peers = peers;
        config.client_auth = Some(client_auth);
        config.store_dir = args.store.clone();
        config.permissions = config.peers.permissions().clone().into_iter().collect();
        if let Some(defaults) = config.peers.default_permissions() {
            config.default_permissions = defaults.clone();
        }
        let node = Node::start(config).await?;
        if let Some(module) = &module {
            node.load(module).await?;
        }
        println!(
            "listening on {} as {} pin {}",
            node.local_addr()?,
            node.name(),
            node.fingerprint()
        );
        use std::io::Write;
        std::io::stdout().flush()?;
        stop_signal().await?;
        let grace = Duration::from_millis(args.grace_ms);
        eprintln!("{}: shutting down (grace {grace:?})", args.name);
        let report = node.shutdown_with(grace).await;
        if report.drained {
            eprintln!("{}: stopped, every call finished", args.name);
        } else {
            eprintln!(
                "{}: stopped, {} call(s) cancelled at the end of the grace period",
                args.name, report.cancelled
            );
        }
        Ok(0)
    })
}

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM.
async fn stop_signal() -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot watch Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot watch Ctrl-C")?;
    Ok(())
}

/// Parses Skiff literals by compiling them into a function returning the list.
fn parse_args(args: &[String]) -> Result<Vec<Portable>> {
    let source = format!("fn args() {{ [{}] }}", args.join(", "));
    let engine = skiff::Engine::new(Limits::default());
    let module = engine
        .compile(&source, "<args>")
        .map_err(|e| anyhow::anyhow!("bad arguments: {e}"))?;
    match engine.call::<Portable>(&module, "args", Vec::new())? {
        Portable::List(values) => Ok(values),
        other => bail!("bad arguments: {other:?}"),
    }
}

/// Formats a value as `print` would.
fn show(value: Portable) -> Result<String> {
    let engine = skiff::Engine::new(Limits::default());
    let module = engine
        .compile("fn show(x) { str(x) }", "<show>")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(engine.call::<String>(&module, "show", vec![value])?)
}

/// `skiff call PEER FUNCTION ARGS...`
pub(super) fn call(args: CallArgs) -> Result<i32> {
    let values = parse_args(&args.args)?;
    let peers = args.trust.peers()?;
    let identity = args.trust.identity("cli")?;
    runtime()?.block_on(async move {
        let mut config = NodeConfig::new("cli", identity);
        config.peers = peers;
        let node = Node::start(config).await?;
        let outcome = node
            .call(
                &args.peer_name,
                &args.function,
                values,
                args.timeout_ms.map(Duration::from_millis),
            )
            .await;
        node.shutdown().await;
        match outcome {
            Ok(value) => {
                println!("{}", show(value)?);
                Ok(0)
            }
            Err(NodeError::Remote(failure)) => {
                eprintln!("{}", NodeError::Remote(failure.clone()));
                for frame in &failure.trace {
                    eprintln!("  at {frame}");
                }
                Ok(1)
            }
            Err(other) => Err(other.into()),
        }
    })
}
