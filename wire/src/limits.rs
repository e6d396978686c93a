//! Configuration: the limits every decoder and the connection enforce, and the tunables of
//! negotiation and sidecars.
//!
//! Invariants:
//! - Every limit has a name ([`Limit`]) and every violation is reported as
//!   [`LimitExceeded`] carrying that name, the configured value and the size seen.
//! - Limits are checked *before* the corresponding allocation: a frame length before the
//!   frame buffer is reserved, a MessagePack length before the container is allocated.

use crate::pool::BufferPool;
use std::fmt;
use std::time::Duration;

/// The name of a configurable limit (what an error reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Bytes in one message frame (sidecar frames have their own limit).
    MaxFrame,
    /// MessagePack nesting depth of one value or message.
    MaxDepth,
    /// Blobs pushed for one call.
    MaxBlobsPerCall,
    /// Blob bytes pushed for one call.
    MaxBlobBytesPerCall,
    /// Sidecar bytes carried by one call request or response.
    MaxSidecarBytesPerCall,
    /// Calls the peer has open towards us at once on one connection.
    MaxCallsInFlight,
    /// Entries in a negotiation list (offered or wanted hashes).
    MaxNegotiationList,
    /// Length of a call's hop chain.
    MaxHops,
    /// Bytes in the blob store (all pinned, nothing evictable).
    StoreBytes,
}

impl Limit {
    /// The configuration field name, as used in error messages and docs/protocol.md.
    pub fn name(self) -> &'static str {
        match self {
            Limit::MaxFrame => "max_frame",
            Limit::MaxDepth => "max_depth",
            Limit::MaxBlobsPerCall => "max_blobs_per_call",
            Limit::MaxBlobBytesPerCall => "max_blob_bytes_per_call",
            Limit::MaxSidecarBytesPerCall => "max_sidecar_bytes_per_call",
            Limit::MaxCallsInFlight => "max_calls_in_flight",
            Limit::MaxNegotiationList => "max_negotiation_list",
            Limit::MaxHops => "max_hops",
            Limit::StoreBytes => "store_bytes",
        }
    }

    /// Parses [`Limit::name`] (used when a limit error crosses the wire).
    pub fn from_name(name: &str) -> Option<Limit> {
        ALL_LIMITS.iter().copied().find(|l| l.name() == name)
    }
}

const ALL_LIMITS: [Limit; 9] = [
    Limit::MaxFrame,
    Limit::MaxDepth,
    Limit::MaxBlobsPerCall,
    Limit::MaxBlobBytesPerCall,
    Limit::MaxSidecarBytesPerCall,
    Limit::MaxCallsInFlight,
    Limit::MaxNegotiationList,
    Limit::MaxHops,
    Limit::StoreBytes,
];

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A limit was exceeded: which one, its configured value and the size seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("limit {limit} exceeded: saw {seen}, limit is {max}")]
pub struct LimitExceeded {
    pub limit: Limit,
    pub max: u64,
    pub seen: u64,
}

/// Checks `seen <= max` for `limit`.
pub(crate) fn check(limit: Limit, max: u64, seen: u64) -> Result<(), LimitExceeded> {
    if seen > max {
        Err(LimitExceeded { limit, max, seen })
    } else {
        Ok(())
    }
}

/// Decoding and resource limits. All configurable; defaults are safe for a node that
/// runs each connection's decoding on a 256 KiB thread stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Maximum payload bytes of one message frame (default 16 MiB).
    pub max_frame: u32,
    /// Maximum MessagePack nesting depth (default 64; rmp-serde's own default is 1024).
    pub max_depth: usize,
    /// Maximum blobs pushed for one call (default 4096).
    pub max_blobs_per_call: usize,
    /// Maximum blob bytes pushed for one call (default 64 MiB).
    pub max_blob_bytes_per_call: u64,
    /// Maximum sidecar bytes in one call request or response (default 1 GiB); each sidecar
    /// counts at least 1 KiB, so this also bounds how many one message may carry.
    pub max_sidecar_bytes_per_call: u64,
    /// Maximum calls the peer may have open towards us (default 128).
    pub max_calls_in_flight: usize,
    /// Maximum entries in an offered or wanted hash list (default 4096).
    pub max_negotiation_list: usize,
    /// Maximum hop-chain length of an incoming call (default 32).
    pub max_hops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: 16 << 20,
            max_depth: 64,
            max_blobs_per_call: 4096,
            max_blob_bytes_per_call: 64 << 20,
            max_sidecar_bytes_per_call: 1 << 30,
            max_calls_in_flight: 128,
            max_negotiation_list: 4096,
            max_hops: 32,
        }
    }
}

/// Everything a [`crate::Connection`] is configured with.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's name (sent in hello and appended to hop chains).
    pub node_name: String,
    /// Capabilities announced in hello (free-form strings, e.g. `"sidecar"`).
    pub capabilities: Vec<String>,
    pub limits: Limits,
    /// Bytes values of at least this many bytes travel as sidecars (default 64 KiB).
    pub sidecar_threshold: usize,
    /// Sidecar bytes this node is willing to retain per connection on the peer's behalf so
    /// they need not be resent (announced in hello; default 256 MiB; 0 disables dedup).
    pub sidecar_retain_bytes: u64,
    /// Eager-push rule: an unknown blob of at most this many bytes is pushed with the call
    /// instead of being offered (default 1024; 0 disables eager pushes).
    pub eager_push_max_blob: usize,
    /// Eager-push rule: at most this many eagerly pushed blob bytes per call (default 16 KiB).
    pub eager_push_budget: usize,
    /// Hash mismatches tolerated from one peer before the connection is closed (default 3).
    pub max_offences: u32,
    /// Longest time an incoming call may run here, whatever the caller asks (default 5 min).
    pub max_call_duration: Duration,
    /// Maximum bytes of one blob accepted from the peer (default 4 MiB).
    pub max_blob_size: usize,
    /// Where frames of 1 MiB or more (large sidecars) are received; a buffer returns to the
    /// pool when the value received in it is dropped, so the next large frame needs no fresh
    /// pages. Clones of this config share the pool (default: at most 512 MiB idle, e.g. the
    /// buffers of one 256 MiB sidecar and a few smaller ones; `BufferPool::new(0)` keeps none).
    pub recv_buffers: BufferPool,
}

impl Config {
    /// Defaults with the given node name.
    pub fn new(node_name: impl Into<String>) -> Config {
        Config {
            node_name: node_name.into(),
            capabilities: vec!["sidecar".into(), "eager-push".into()],
            limits: Limits::default(),
            sidecar_threshold: 64 << 10,
            sidecar_retain_bytes: 256 << 20,
            eager_push_max_blob: 1024,
            eager_push_budget: 16 << 10,
            max_offences: 3,
            max_call_duration: Duration::from_secs(300),
            max_blob_size: 4 << 20,
            recv_buffers: BufferPool::new(512 << 20),
        }
    }
}
