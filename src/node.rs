//! The QUIC node, re-exported for embedders: a Skiff VM instance that serves calls and
//! carries out `remote` hops over authenticated QUIC. See `skiff_transport::node` for the
//! runtime's design (a tokio side with one driver task per connection, one VM loop per node
//! on a thread of its own or, with `Node::start_local`, on the host's `LocalSet`) and `docs/operations.md` for certificates, peer tables and permissions.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use skiff::node::{Node, NodeConfig};
//! let cert = skiff_transport::cert::generate_self_signed("main")?;
//! let node = Node::start(NodeConfig::new("main", cert.identity()?)).await?;
//! let value = node.call("worker", "search", vec![skiff::Portable::Str("q".into())], None).await?;
//! node.shutdown().await;
//! # let _ = value; Ok(()) }
//! ```

pub use skiff_transport::node::Node;
pub use skiff_transport::node::{
    NodeConfig, NodeCounters, NodeError, Permissions, RemoteFailure, SendIoFactory, SendNative,
    ShutdownReport,
};
pub use skiff_transport::{ContextError, ContextState, CONTEXT_NATIVES};
pub use skiff_wire::Stats;
