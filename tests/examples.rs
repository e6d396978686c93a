//! The examples under `examples/` run and check their own results (each asserts what it
//! prints), so the documented ways to embed Skiff cannot rot.

#[path = "../examples/embed.rs"]
mod embed;
#[path = "../examples/node.rs"]
mod node;

#[test]
fn embed_example_runs() {
    embed::main().expect("the embedding example succeeds");
}

#[test]
fn node_example_runs() {
    node::main().expect("the node example succeeds");
}
