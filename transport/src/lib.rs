//! # skiff-transport: Skiff nodes talking over authenticated QUIC
//!
//! ## The key decision: identity lives in the TLS handshake, and nowhere else
//!
//! A Skiff node runs code that other nodes send it. The question every later layer asks —
//! "who is this, and what may they do?" — must have one trustworthy answer, and the only
//! place that answer can come from is the cryptographic handshake itself. So this crate makes
//! *mutual* TLS 1.3 authentication a property of every connection rather than an option:
//! a server always demands a client certificate, a client always verifies the server's, and
//! the peer's identity ([`tls::PeerIdentity`]: certificate fingerprint, plus CN / DNS names)
//! is read back from the established `quinn::Connection`, never from anything the peer says
//! afterwards. There is no "plaintext for dev": dev mode is self-signed certificates *pinned*
//! by SHA-256 fingerprint, which costs one `skiff cert` invocation and keeps the code path
//! identical to production, where a CA signs node certificates (mTLS).
//!
//! Pinning still verifies the handshake signature with the provider's
//! `verify_tls13_signature` — a pin names a key holder, not a byte string anyone can copy —
//! and session resumption is disabled, so an identity always stems from a full verification
//! under the trust configured for that peer. Where other systems accept TLS and then ignore
//! it, here a refused certificate is a typed error
//! ([`TransportError::TlsRefused`]) reported at dial time, which is why dialling waits for the
//! server to *confirm* the handshake (TLS 1.3 lets a client finish before the server has
//! judged its certificate).
//!
//! ## Map
//! - [`tls`]: fingerprints, [`tls::NodeIdentity`], [`tls::Trust`] (how we trust a peer we
//!   dial), [`tls::ClientAuth`] (which clients a server accepts), rustls configurations.
//! - [`cert`]: generating CA, node and dev certificates; PEM files (`skiff cert`).
//! - [`endpoint`]: [`Endpoint`] (one UDP socket that listens and dials) and
//!   [`ConnectionManager`] (one lazily dialled, reused connection per peer name).
//! - [`peers`]: the peer table, `NAME=HOST:PORT[#PIN]` flags and a TOML file.
//! - [`lossy`]: a datagram-dropping socket for loss tests.
//! - [`error`]: [`TransportError`] and the mapping from quinn/TLS failures.
//! - [`context`]: execution contexts — named key → value stores on a node, copy-on-fork,
//!   and the `context_get` / `context_set` / `context_name` natives (shared with the
//!   facade's in-process cluster).
//! - [`node`]: the node runtime — a VM instance serving and making calls over QUIC: one
//!   driver task per connection moving bytes between quinn streams and the sans-IO
//!   `skiff_wire::Connection`, one VM thread per node owning every execution.
//!
//! Everything but [`node`] and [`context`] knows nothing of the VM or the wire protocol: it hands out
//! authenticated connections and streams; the node runtime drives the wire state machine and
//! the VM over them.

pub mod cert;
pub mod context;
pub mod endpoint;
pub mod error;
pub mod lossy;
pub mod node;
pub mod peers;
pub mod tls;

pub use context::{ContextError, ContextState, Contexts, CONTEXT_NATIVES};
pub use endpoint::{
    Accepting, Congestion, ConnectionManager, Endpoint, EndpointConfig, TransportOptions,
};
pub use error::{CertRefusal, Side, TransportError};
pub use lossy::{LossConfig, LossStats, LossySocket};
pub use node::{Node, NodeConfig, NodeError, Permissions};
pub use peers::{Peer, PeerError, PeerTable};
pub use tls::{ClientAuth, Fingerprint, NodeIdentity, PeerIdentity, Trust, ALPN};
