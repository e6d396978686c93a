//! Execution contexts over real loopback QUIC: a remote body writes a context's state on the
//! callee with `context_set`, the host forks it (copy-on-fork), writes on either side stay
//! invisible to the other; the default context works everywhere; an unknown context is
//! `Refused` and runs nothing. The same natives in the in-process cluster.

mod common;

use common::{cluster, list, s, shutdown, Setup};
use skiff::cluster::LocalCluster;
use skiff::node::{Node, NodeError};
use skiff::{CompileOptions, Limits, Module, Portable};
use skiff_transport::{ContextError, CONTEXT_NATIVES};
use std::collections::BTreeMap;

fn compile(source: &str) -> Module {
    let options = CompileOptions {
        natives: CONTEXT_NATIVES.iter().map(|n| n.to_string()).collect(),
    };
    let out = skiff_compiler::compile(source, "contexts.skiff", &options);
    let errors: Vec<_> = out.diagnostics.iter().map(|d| d.message.clone()).collect();
    out.module
        .unwrap_or_else(|| panic!("compile errors: {errors:?}"))
}

async fn run(main: &Node, source: &str) -> Result<Portable, NodeError> {
    let module = compile(source);
    main.load(&module).await.unwrap();
    main.run(module.entry, Vec::new()).await
}

fn state(pairs: &[(&str, Portable)]) -> BTreeMap<String, Portable> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn int(i: i64) -> Portable {
    Portable::Int(i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_writes_fork_and_stay_apart() {
    let nodes = cluster(&["w"], Setup::default()).await;
    let (main, w) = (&nodes[0], &nodes[1]);
    w.create_context("a", [("seed".to_string(), int(7))])
        .await
        .unwrap();
    // A body running in `a` on w reads the initial state and writes; a copied list stays a copy.
    let v = run(
        main,
        r#"
        let xs = [1, 2]
        remote({peer: "w", context: "a"}) [xs] {
            context_set("n", context_get("seed") + 1)
            context_set("xs", xs)
            push(xs, 3)
            [context_name(), context_get("n"), context_get("xs"), context_get("missing")]
        }
        "#,
    )
    .await
    .unwrap();
    let two = list(vec![int(1), int(2)]);
    assert_eq!(v, list(vec![s("a"), int(8), two.clone(), Portable::Nil]));
    let a = w.context_state("a").await.unwrap();
    assert_eq!(
        *a,
        state(&[("n", int(8)), ("seed", int(7)), ("xs", two.clone())])
    );

    // Fork a into b; then writes to b do not show in a, and writes to a do not show in b.
    w.fork_context("a", "b").await.unwrap();
    let v = run(
        main,
        r#"
        let in_b = remote({peer: "w", context: "b"}) [] {
            context_set("n", 100); context_set("seed", nil); [context_name(), context_get("n")]
        }
        let in_a = remote({peer: "w", context: "a"}) [] {
            context_set("only_a", true); [context_get("n"), context_get("seed")]
        }
        let b_again = remote({peer: "w", context: "b"}) [] { [context_get("only_a"), context_get("xs")] }
        [in_b, in_a, b_again]
        "#,
    )
    .await
    .unwrap();
    assert_eq!(
        v,
        list(vec![
            list(vec![s("b"), int(100)]),
            list(vec![int(8), int(7)]),
            list(vec![Portable::Nil, two.clone()]),
        ])
    );
    assert_eq!(
        *w.context_state("a").await.unwrap(),
        state(&[
            ("n", int(8)),
            ("only_a", Portable::Bool(true)),
            ("seed", int(7)),
            ("xs", two.clone())
        ])
    );
    assert_eq!(
        *w.context_state("b").await.unwrap(),
        state(&[("n", int(100)), ("xs", two)])
    );
    // The snapshot taken before the fork is unchanged by every write since.
    assert_eq!(a.get("n"), Some(&int(8)));
    assert_eq!(a.get("only_a"), None);
    assert_eq!(
        w.context_names().await.unwrap(),
        vec!["a".to_string(), "b".into(), "default".into()]
    );
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_context_unknown_context_and_bad_values() {
    let setup = Setup {
        tweak: |name, config| {
            if name == "w" {
                config.contexts.push("gpu".into());
            }
        },
        ..Setup::default()
    };
    let nodes = cluster(&["w"], setup).await;
    let (main, w) = (&nodes[0], &nodes[1]);
    let v = run(
        main,
        r#"
        let first = remote("w") [] { context_set("count", 1); context_name() }
        let second = remote("w") [] { context_set("count", context_get("count") + 1); context_get("count") }
        let here_count = context_get("count")
        let gpu = remote({peer: "w", context: "gpu"}) [] { [context_name(), context_get("count")] }
        let unknown = try { remote({peer: "w", context: "tpu"}) [] { context_set("x", 1) } } catch e { [e.kind, e.peer] }
        let func = try { remote("w") [] { context_set("f", fn(x) { x }) } } catch e { e.kind }
        let key = try { remote("w") [] { context_get(1) } } catch e { e.kind }
        [first, second, here_count, gpu, unknown, func, key]
        "#,
    )
    .await
    .unwrap();
    assert_eq!(
        v,
        list(vec![
            s("default"),
            int(2),
            Portable::Nil,
            list(vec![s("gpu"), Portable::Nil]),
            list(vec![s("Refused"), s("w")]),
            s("TypeError"),
            s("TypeError"),
        ])
    );
    assert_eq!(
        *w.context_state("default").await.unwrap(),
        state(&[("count", int(2))])
    );
    assert!(w.context_state("gpu").await.unwrap().is_empty());
    // The refused hop ran nothing: five bodies were served, the `tpu` one was not.
    assert_eq!(w.counters().calls_served, 5);
    assert!(matches!(
        w.context_state("tpu").await,
        Err(NodeError::Context(ContextError::Unknown(_)))
    ));
    // Host errors are typed.
    assert!(matches!(
        w.create_context("gpu", []).await,
        Err(NodeError::Context(ContextError::Exists(_)))
    ));
    assert!(matches!(
        w.fork_context("nope", "x").await,
        Err(NodeError::Context(ContextError::Unknown(_)))
    ));
    assert!(matches!(
        w.create_context("", []).await,
        Err(NodeError::Context(ContextError::InvalidName(_)))
    ));
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hop_to_oneself_runs_in_the_named_context() {
    let nodes = cluster(&[], Setup::default()).await;
    let main = &nodes[0];
    main.create_context("m", []).await.unwrap();
    let v = run(
        main,
        r#"
        let inner = remote({peer: here(), context: "m"}) [] { context_set("k", 1); context_name() }
        let bad = try { remote({peer: here(), context: "zz"}) [] { 1 } } catch e { e.kind }
        [inner, context_name(), context_get("k"), bad]
        "#,
    )
    .await
    .unwrap();
    assert_eq!(
        v,
        list(vec![s("m"), s("default"), Portable::Nil, s("Refused")])
    );
    assert_eq!(
        *main.context_state("m").await.unwrap(),
        state(&[("k", int(1))])
    );
    shutdown(nodes).await;
}

#[test]
fn the_in_process_cluster_has_the_same_contexts() {
    let engine = skiff::Engine::new(Limits::default());
    let names = vec!["main".to_string(), "w".to_string()];
    let io: skiff::cluster::IoFactory = Box::new(skiff::ExecIo::null);
    let mut cluster = LocalCluster::new(engine.vm(), &names, Limits::default(), io);
    cluster.create_context("w", "a", []).unwrap();
    let module = compile(
        r#"
        fn put(ctx, v) { remote({peer: "w", context: ctx}) [v] { context_set("v", v); context_name() } }
        fn get(ctx) { remote({peer: "w", context: ctx}) [] { context_get("v") } }
        fn refused() { try { remote({peer: "w", context: "zz"}) [] { 1 } } catch e { e.kind } }
        "#,
    );
    cluster
        .store_mut("main")
        .unwrap()
        .add_module(&module)
        .unwrap();
    let call = |cluster: &mut LocalCluster, f: &str, args: Vec<Portable>| {
        cluster.run("main", module.exports[f], args).unwrap()
    };
    assert_eq!(call(&mut cluster, "put", vec![s("a"), int(1)]), s("a"));
    cluster.fork_context("w", "a", "b").unwrap();
    assert_eq!(call(&mut cluster, "put", vec![s("b"), int(2)]), s("b"));
    assert_eq!(call(&mut cluster, "get", vec![s("a")]), int(1));
    assert_eq!(call(&mut cluster, "get", vec![s("b")]), int(2));
    assert_eq!(call(&mut cluster, "get", vec![s("default")]), Portable::Nil);
    assert_eq!(call(&mut cluster, "refused", vec![]), s("Refused"));
    assert_eq!(
        *cluster.context_state("w", "a").unwrap(),
        state(&[("v", int(1))])
    );
    assert!(cluster.context_state("main", "a").is_err());
}
