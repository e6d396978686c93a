//! Two Skiff nodes in one process, talking QUIC over loopback with mutually pinned
//! certificates: a worker exporting functions, and a main node that calls one by name and
//! runs a script whose `remote` block goes to the worker (shipping `twice` by hash).
//!
//! Run with `cargo run --example node`. `tests/examples.rs` runs it too.

use skiff::node::{Node, NodeConfig};
use skiff::{Engine, Limits, Portable};
use skiff_transport::cert::generate_self_signed;
use skiff_transport::{ClientAuth, Peer};

#[tokio::main]
pub async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Development trust: each node has a self-signed certificate and pins the other's.
    let main_cert = generate_self_signed("main")?;
    let worker_cert = generate_self_signed("worker")?;

    let mut worker_config = NodeConfig::new("worker", worker_cert.identity()?);
    worker_config.client_auth = Some(ClientAuth::default().with_pin(main_cert.fingerprint()));
    let worker = Node::start(worker_config).await?;

    let mut main_config = NodeConfig::new("main", main_cert.identity()?);
    let worker_addr = worker.local_addr()?.to_string();
    main_config.peers.insert(Peer::new(
        "worker",
        &worker_addr,
        Some(worker_cert.fingerprint()),
    )?);
    let main = Node::start(main_config).await?;

    // The worker exports the top-level functions of what it loads.
    let engine = Engine::new(Limits::default());
    let lib = engine.compile("fn add(x, y) { x + y }", "lib.skiff")?;
    worker.load(&lib).await?;
    let sum = main
        .call(
            "worker",
            "add",
            vec![Portable::Int(2), Portable::Int(3)],
            None,
        )
        .await?;
    println!("add(2, 3) on the worker: {sum:?}");
    assert_eq!(sum, Portable::Int(5));

    // A script on main: the remote body and `twice` travel to the worker as blobs.
    let script = engine.compile(
        "fn twice(x) { x * 2 }\nfn go(n) { remote(\"worker\") [n] { [here(), caller(), twice(n)] } }",
        "script.skiff",
    )?;
    main.load(&script).await?;
    let value = main.run_export("go", vec![Portable::Int(21)]).await?;
    println!("go(21): {value:?}");
    let expected = Portable::List(vec![
        Portable::Str("worker".into()),
        Portable::Str("main".into()),
        Portable::Int(42),
    ]);
    assert_eq!(value, expected);

    // A second run is warm: the worker holds every blob, none is sent again.
    let sent = main.stats("worker").map(|s| s.blob_bytes_sent);
    main.run_export("go", vec![Portable::Int(1)]).await?;
    let sent_again = main.stats("worker").map(|s| s.blob_bytes_sent);
    println!("blob bytes sent: {sent:?} cold, {sent_again:?} after a warm call");
    assert!(sent.unwrap_or(0) > 0);
    assert_eq!(sent, sent_again);

    main.shutdown().await;
    worker.shutdown().await;
    Ok(())
}
