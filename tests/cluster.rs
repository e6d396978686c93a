//! The in-process cluster ships exactly the blobs a hop needs, once.

use skiff::cluster::{IoFactory, LocalCluster};
use skiff::{Engine, ExecIo, Limits, Portable};
use skiff_vm::BlobHash;
use std::collections::BTreeSet;

const SCRIPT: &str = r#"
fn leaf(x) { x * 2 }
fn middle(x) { leaf(x) + 1 }
fn unrelated() { "never shipped" }
let n = 20
let first = remote("a") [n] { middle(n) }
let second = remote("a") [n] { middle(n) + 1 }
[first, second, unrelated()]
"#;

fn quiet() -> IoFactory {
    Box::new(|| ExecIo {
        out: Box::new(std::io::sink()),
        err: Box::new(std::io::sink()),
    })
}

#[test]
fn callee_store_holds_exactly_the_transitive_set() {
    let engine = Engine::new(Limits::default());
    let module = engine.compile(SCRIPT, "ship.skiff").unwrap();
    let names = vec!["main".to_owned(), "a".to_owned()];
    let mut cluster = LocalCluster::new(engine.vm(), &names, Limits::default(), quiet());
    cluster
        .store_mut("main")
        .unwrap()
        .add_module(&module)
        .unwrap();
    let result = cluster.run("main", module.entry, Vec::new()).unwrap();
    assert_eq!(
        result,
        Portable::List(vec![
            Portable::Int(41),
            Portable::Int(42),
            Portable::Str("never shipped".into())
        ])
    );

    // What `a` must hold: the two remote bodies and everything they reach — nothing else.
    let entry = &module.blobs[&module.entry.blob];
    let bodies: Vec<BlobHash> = entry
        .dependencies()
        .into_iter()
        .filter(|h| {
            let reachable = module
                .closure_of(&[skiff_vm::FunctionId {
                    blob: *h,
                    member: 0,
                }])
                .unwrap();
            reachable.contains(&module.exports["middle"].blob)
                && *h != module.exports["middle"].blob
        })
        .collect();
    assert_eq!(bodies.len(), 2, "two remote bodies");
    let roots: Vec<_> = bodies
        .iter()
        .map(|&blob| skiff_vm::FunctionId { blob, member: 0 })
        .collect();
    let expected: BTreeSet<BlobHash> = module.closure_of(&roots).unwrap().into_iter().collect();
    let held: BTreeSet<BlobHash> = cluster.hashes("a").into_iter().collect();
    assert_eq!(held, expected);
    assert!(!held.contains(&module.exports["unrelated"].blob));
    assert!(!held.contains(&module.entry.blob));

    // `middle` and `leaf` travelled once although both hops use them.
    let stats = cluster.stats("a");
    assert_eq!(stats.blobs_received, expected.len());
    assert_eq!(stats.calls_served, 2);
}
