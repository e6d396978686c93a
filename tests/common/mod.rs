//! Set-up shared by the QUIC node tests (`quic_node.rs`, `quic_local.rs`, `quic_stress.rs`): nodes on
//! 127.0.0.1 with ephemeral ports and fresh dev certificates pinned to each other.

// Each test crate includes this module and uses a different subset of it.
#![allow(dead_code)]

use skiff::node::{Node, NodeConfig, NodeError};
use skiff::{CompileOptions, Module, Portable};
use skiff_transport::cert::generate_self_signed;
use skiff_transport::{ClientAuth, Peer};
use std::time::Duration;

pub fn compile(source: &str) -> Module {
    let out = skiff_compiler::compile(source, "test.skiff", &CompileOptions::default());
    let errors: Vec<_> = out.diagnostics.iter().map(|d| d.message.clone()).collect();
    out.module
        .unwrap_or_else(|| panic!("compile errors: {errors:?}"))
}

pub struct Setup {
    /// `main` accepts incoming connections.
    pub main_listens: bool,
    /// Extra peer table entries for every node (e.g. a dead address).
    pub extra: Vec<Peer>,
    /// Adjusts each node's configuration (by name) before it starts.
    pub tweak: fn(&str, &mut NodeConfig),
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            main_listens: true,
            extra: Vec::new(),
            tweak: |_, _| {},
        }
    }
}

/// `main` plus `peers`, all knowing each other; when `main` does not listen, it accepts no
/// client and the peers have no address for it.
pub async fn cluster(peers: &[&str], setup: Setup) -> Vec<Node> {
    cluster_on(peers, setup, None).await
}

/// [`cluster`], with every node's VM loop a task of `local` when given
/// ([`Node::start_local`]), else on a thread of its own.
pub async fn cluster_on(
    peers: &[&str],
    setup: Setup,
    local: Option<&tokio::task::LocalSet>,
) -> Vec<Node> {
    let mut names = vec!["main"];
    names.extend(peers);
    let certs: Vec<_> = names
        .iter()
        .map(|n| generate_self_signed(n).unwrap())
        .collect();
    let mut nodes = Vec::new();
    for (name, cert) in names.iter().zip(&certs) {
        let mut config = NodeConfig::new(*name, cert.identity().unwrap());
        config.transport.connect_timeout = Duration::from_millis(400);
        config.transport.initial_rtt = Some(Duration::from_millis(5));
        config.io = std::sync::Arc::new(skiff::ExecIo::null);
        let mut auth = ClientAuth::default();
        for c in &certs {
            auth = auth.with_pin(c.fingerprint());
        }
        if *name == "main" && !setup.main_listens {
            auth = ClientAuth::default(); // accepts nobody
        }
        config.client_auth = Some(auth);
        (setup.tweak)(name, &mut config);
        let node = match local {
            Some(local) => Node::start_local(config, local).await,
            None => Node::start(config).await,
        };
        nodes.push(node.unwrap());
    }
    for (i, node) in nodes.iter().enumerate() {
        for (j, other) in nodes.iter().enumerate() {
            if i == j || (j == 0 && !setup.main_listens) {
                continue;
            }
            let addr = other.local_addr().unwrap().to_string();
            node.add_peer(Peer::new(other.name(), &addr, Some(certs[j].fingerprint())).unwrap());
        }
        for p in &setup.extra {
            node.add_peer(p.clone());
        }
    }
    nodes
}

pub async fn run(main: &Node, source: &str) -> Result<Portable, NodeError> {
    let module = compile(source);
    main.load(&module).await.unwrap();
    main.run(module.entry, Vec::new()).await
}

/// Runs on `main` a script hopping to `a`, which hops on to `b`, and checks what `here()`
/// and `caller()` say on each.
pub async fn check_nested_hops(main: &Node) {
    let v = run(
        main,
        r#"remote("a") [] { let inner = remote("b") [] { [here(), caller()] }; [here(), caller(), inner] }"#,
    )
    .await
    .unwrap();
    assert_eq!(v, list(vec![s("a"), s("main"), list(vec![s("b"), s("a")])]));
}

pub fn s(text: &str) -> Portable {
    Portable::Str(text.into())
}

pub fn list(items: Vec<Portable>) -> Portable {
    Portable::List(items)
}

pub async fn shutdown(nodes: Vec<Node>) {
    for n in nodes {
        n.shutdown().await;
    }
}
