//! QUIC endpoints that both listen and dial, and the per-peer connection manager.
//!
//! An [`Endpoint`] is one UDP socket (optionally a [`LossySocket`]) carrying a quinn endpoint
//! with a server configuration (this node's identity, client certificates required per
//! [`ClientAuth`]) and client configurations built per [`Trust`] and cached. Dialling goes
//! through [`Endpoint::connect`], which turns every failure into a typed [`TransportError`]:
//!
//! - nothing answered before the connect timeout → [`TransportError::Unreachable`];
//! - the peer answered but the handshake did not finish in time → [`TransportError::Timeout`];
//! - a certificate refused by either side → [`TransportError::TlsRefused`];
//! - no common ALPN → [`TransportError::AlpnMismatch`].
//!
//! In TLS 1.3 a client finishes its handshake one flight *before* the server has checked the
//! client certificate. So that a refused client certificate is reported by `connect` (and not
//! by the first call), `connect` returns only once the handshake is **confirmed**: the
//! server's `HANDSHAKE_DONE` frame has arrived (watched through quinn's frame counters), or
//! the connection closed with the server's refusal.
//!
//! [`ConnectionManager`] keeps one connection per peer name, dialled lazily on first use,
//! shared by every call to that peer, and re-dialled when it has closed. Concurrent first
//! uses of a peer wait for one dial instead of racing. Addresses are resolved at dial time
//! (`tokio::net::lookup_host`), so host names work and DNS changes are seen on re-dial.
//!
//! Invariants: an endpoint whose [`ClientAuth`] accepts any certificate binds only to a
//! loopback address; a connection handed out by `connect` / the manager has completed a full,
//! confirmed, mutually authenticated handshake with ALPN `skiff/2` (unless the caller changed
//! [`TransportOptions::alpn`]); at most one connection per peer is cached; a closed cached
//! connection is never handed out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{classify, TransportError};
use crate::lossy::{LossConfig, LossStats, LossySocket};
use crate::peers::{Peer, PeerTable};
use crate::tls::{self, ClientAuth, NodeIdentity, PeerIdentity, Trust};

/// Connection-level knobs shared by the server side and every client configuration.
#[derive(Clone, Debug)]
pub struct TransportOptions {
    /// Keep-alive PING interval (`None`: no keep-alives). Must be below `idle_timeout` to keep
    /// idle connections up.
    pub keep_alive: Option<Duration>,
    /// Close a connection after this long without hearing from the peer (the smaller of both
    /// sides' values applies).
    pub idle_timeout: Duration,
    /// Bidirectional streams the peer may have open at once (one per call).
    pub max_concurrent_bidi_streams: u32,
    /// Unidirectional streams the peer may have open at once.
    pub max_concurrent_uni_streams: u32,
    /// Limit for a whole dial: handshake plus confirmation.
    pub connect_timeout: Duration,
    /// ALPN protocols offered / accepted. Leave at `[ALPN]` except to test mismatches.
    pub alpn: Vec<Vec<u8>>,
    /// RTT assumed before the first measurement (`None`: quinn's 333 ms). Lower it on
    /// known-fast networks (loopback tests) so that early losses are retransmitted sooner.
    pub initial_rtt: Option<Duration>,
    /// The congestion controller of every connection.
    pub congestion: Congestion,
}

/// A congestion controller (quinn's implementations).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Congestion {
    /// CUBIC (RFC 9438), quinn's default: backs off on every loss.
    #[default]
    Cubic,
    /// NewReno (RFC 9002's reference controller).
    NewReno,
    /// BBR: paces by measured bandwidth and RTT, so random loss does not collapse the
    /// window. Across a link losing 10% of datagrams each way, 1000 calls with 1 MiB each
    /// took 51 s with BBR and 381 s with CUBIC (`tests/quic_stress.rs`, debug build, 2 cores).
    Bbr,
}

impl Default for TransportOptions {
    fn default() -> Self {
        Self {
            keep_alive: Some(Duration::from_secs(5)),
            idle_timeout: Duration::from_secs(30),
            max_concurrent_bidi_streams: 256,
            max_concurrent_uni_streams: 16,
            connect_timeout: Duration::from_secs(10),
            alpn: vec![tls::ALPN.to_vec()],
            initial_rtt: None,
            congestion: Congestion::default(),
        }
    }
}

impl TransportOptions {
    fn quinn_transport(&self) -> Result<quinn::TransportConfig, TransportError> {
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| TransportError::Config("idle_timeout too large".into()))?;
        let mut t = quinn::TransportConfig::default();
        t.max_idle_timeout(Some(idle))
            .keep_alive_interval(self.keep_alive)
            .max_concurrent_bidi_streams(quinn::VarInt::from_u32(self.max_concurrent_bidi_streams))
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(self.max_concurrent_uni_streams));
        if let Some(rtt) = self.initial_rtt {
            t.initial_rtt(rtt);
        }
        match self.congestion {
            Congestion::Cubic => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
            }
            Congestion::NewReno => t.congestion_controller_factory(Arc::new(
                quinn::congestion::NewRenoConfig::default(),
            )),
            Congestion::Bbr => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
            }
        };
        Ok(t)
    }
}

/// Everything an [`Endpoint`] needs.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// This node's certificate and key (server and client certificate).
    pub identity: NodeIdentity,
    /// Which client certificates incoming connections must present.
    pub client_auth: ClientAuth,
    /// Trust for quinn's default client configuration (used by `quinn().connect(..)`);
    /// Skiff's own dialling always passes the per-peer trust explicitly.
    pub default_trust: Option<Trust>,
    /// Connection-level options.
    pub options: TransportOptions,
    /// Where quinn spawns the endpoint's and each connection's driver task; by default
    /// (`quinn::TokioRuntime`) on the tokio runtime the endpoint is bound in.
    pub runtime: Arc<dyn quinn::Runtime>,
}

impl EndpointConfig {
    /// A configuration with default options and no default trust.
    pub fn new(identity: NodeIdentity, client_auth: ClientAuth) -> Self {
        Self {
            identity,
            client_auth,
            default_trust: None,
            options: TransportOptions::default(),
            runtime: Arc::new(quinn::TokioRuntime),
        }
    }
}

struct Shared {
    identity: NodeIdentity,
    options: TransportOptions,
    transport: Arc<quinn::TransportConfig>,
    client_configs: Mutex<HashMap<Trust, quinn::ClientConfig>>,
}

/// A Skiff QUIC endpoint: listens and dials on one socket. Cheap to clone.
#[derive(Clone)]
pub struct Endpoint {
    quinn: quinn::Endpoint,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("local_addr", &self.quinn.local_addr().ok())
            .field("identity", &self.shared.identity)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Bind a UDP socket on `addr` (port 0: ephemeral) and start the endpoint. Must be called
    /// inside a tokio runtime. Refused ([`TransportError::Config`]) if `config.client_auth`
    /// accepts any certificate and `addr` is not a loopback address.
    pub fn bind(addr: SocketAddr, config: EndpointConfig) -> Result<Self, TransportError> {
        let socket = std::net::UdpSocket::bind(addr)?;
        let socket = config.runtime.wrap_udp_socket(socket)?;
        Self::with_socket(socket, config)
    }

    /// Like [`Endpoint::bind`], on a [`LossySocket`] dropping datagrams per `loss`. Returns
    /// the socket's counters too.
    pub fn bind_lossy(
        addr: SocketAddr,
        config: EndpointConfig,
        loss: LossConfig,
    ) -> Result<(Self, Arc<LossStats>), TransportError> {
        let socket = LossySocket::bind(addr, loss)?;
        let stats = socket.stats();
        let endpoint = Self::with_socket(socket, config)?;
        Ok((endpoint, stats))
    }

    /// Start an endpoint on any quinn socket abstraction.
    pub fn with_socket(
        socket: Arc<dyn quinn::AsyncUdpSocket>,
        config: EndpointConfig,
    ) -> Result<Self, TransportError> {
        let local = socket.local_addr()?;
        if config.client_auth.accepts_any() && !local.ip().is_loopback() {
            return Err(TransportError::Config(format!(
                "accept-any client authentication is for loopback only, not {local}"
            )));
        }
        let transport = Arc::new(config.options.quinn_transport()?);
        let rustls_server =
            tls::server_config(&config.identity, &config.client_auth, &config.options.alpn)?;
        let quic_server = quinn::crypto::rustls::QuicServerConfig::try_from(rustls_server)
            .map_err(|e| tls::TlsError::Quic(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_server));
        server.transport_config(transport.clone());

        let shared = Arc::new(Shared {
            identity: config.identity,
            options: config.options,
            transport,
            client_configs: Mutex::new(HashMap::new()),
        });
        let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            config.runtime,
        )?;
        if let Some(trust) = &config.default_trust {
            endpoint.set_default_client_config(build_client_config(&shared, trust)?);
        }
        Ok(Self {
            quinn: endpoint,
            shared,
        })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        Ok(self.quinn.local_addr()?)
    }

    /// The underlying quinn endpoint.
    pub fn quinn(&self) -> &quinn::Endpoint {
        &self.quinn
    }

    /// This node's identity.
    pub fn identity(&self) -> &NodeIdentity {
        &self.shared.identity
    }

    /// The options in force.
    pub fn options(&self) -> &TransportOptions {
        &self.shared.options
    }

    /// The quinn client configuration for dialling peers trusted by `trust` (built once per
    /// trust, then cached).
    pub fn client_config(&self, trust: &Trust) -> Result<quinn::ClientConfig, TransportError> {
        let mut cache = self
            .shared
            .client_configs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cache.get(trust) {
            return Ok(c.clone());
        }
        let config = build_client_config(&self.shared, trust)?;
        cache.insert(trust.clone(), config.clone());
        Ok(config)
    }

    /// Turn a rustls client configuration into a quinn one with this endpoint's transport
    /// options (for tests and special cases, e.g. a client without certificate).
    pub fn quinn_client_config(
        &self,
        rustls_config: rustls::ClientConfig,
    ) -> Result<quinn::ClientConfig, TransportError> {
        quinn_client(rustls_config, &self.shared.transport)
    }

    /// Dial `addr`, expecting a peer trusted by `trust`. `server_name` is the TLS server name
    /// (the peer's name; checked against the certificate in CA mode).
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
        trust: &Trust,
    ) -> Result<quinn::Connection, TransportError> {
        let config = self.client_config(trust)?;
        self.connect_with(config, addr, server_name).await
    }

    /// [`Endpoint::connect`] with an explicit quinn client configuration.
    pub async fn connect_with(
        &self,
        config: quinn::ClientConfig,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<quinn::Connection, TransportError> {
        let limit = self.shared.options.connect_timeout;
        let deadline = Instant::now() + limit;
        let unreachable = |reason: String| TransportError::Unreachable {
            peer: server_name.to_owned(),
            addr: addr.to_string(),
            reason,
        };
        let timeout = TransportError::Timeout {
            what: "handshake",
            after: limit,
        };
        let mut connecting = match self.quinn.connect_with(config, addr, server_name) {
            Ok(c) => c,
            Err(quinn::ConnectError::EndpointStopping) => {
                return Err(TransportError::EndpointClosed)
            }
            Err(quinn::ConnectError::InvalidRemoteAddress(a)) => {
                return Err(unreachable(format!("invalid remote address {a}")))
            }
            Err(e) => return Err(TransportError::Config(e.to_string())),
        };

        // Stage 1: has the peer answered at all? (Handshake data = its ServerHello/ALPN.)
        match tokio::time::timeout_at(deadline, connecting.handshake_data()).await {
            Err(_) | Ok(Err(quinn::ConnectionError::TimedOut)) => {
                return Err(unreachable(format!("no answer within {limit:?}")))
            }
            Ok(Err(e)) => return Err(classify(e)),
            Ok(Ok(_)) => {}
        }
        // Stage 2: our side of the handshake.
        let conn = match tokio::time::timeout_at(deadline, connecting).await {
            Err(_) | Ok(Err(quinn::ConnectionError::TimedOut)) => return Err(timeout),
            Ok(Err(e)) => return Err(classify(e)),
            Ok(Ok(c)) => c,
        };
        // Stage 3: the server accepted us (HANDSHAKE_DONE) or refused us (close).
        await_confirmed(&conn, deadline, limit).await?;
        tracing::debug!(peer = server_name, %addr, "connected");
        Ok(conn)
    }

    /// Wait for the next incoming connection attempt; `None` once the endpoint is closed.
    /// Complete it with [`Accepting::establish`] (spawn that to handshake concurrently).
    pub async fn accept(&self) -> Option<Accepting> {
        self.quinn.accept().await.map(Accepting)
    }

    /// Close every connection and stop accepting.
    pub fn close(&self) {
        self.quinn
            .close(quinn::VarInt::from_u32(0), b"endpoint closed");
    }

    /// Wait until all connections are closed and their last packets flushed.
    pub async fn wait_idle(&self) {
        self.quinn.wait_idle().await;
    }
}

/// An incoming connection attempt.
#[derive(Debug)]
pub struct Accepting(quinn::Incoming);

impl Accepting {
    /// The address the attempt comes from.
    pub fn remote_address(&self) -> SocketAddr {
        self.0.remote_address()
    }

    /// Run the server side of the handshake. On success the connection is mutually
    /// authenticated and the client's identity is returned with it.
    pub async fn establish(self) -> Result<(quinn::Connection, PeerIdentity), TransportError> {
        let conn = self.0.await.map_err(classify)?;
        match PeerIdentity::of_connection(&conn) {
            Some(id) => Ok((conn, id)),
            None => {
                // Cannot happen with a Skiff server config (client auth is mandatory).
                conn.close(quinn::VarInt::from_u32(1), b"no client certificate");
                Err(TransportError::TlsRefused {
                    by: crate::error::Side::Local,
                    refusal: crate::error::CertRefusal::Missing,
                    alert: 116,
                    reason: "no client certificate".into(),
                })
            }
        }
    }

    /// Refuse the attempt.
    pub fn refuse(self) {
        self.0.refuse();
    }
}

fn build_client_config(
    shared: &Shared,
    trust: &Trust,
) -> Result<quinn::ClientConfig, TransportError> {
    let rustls_config = tls::client_config(&shared.identity, trust, &shared.options.alpn)?;
    quinn_client(rustls_config, &shared.transport)
}

fn quinn_client(
    rustls_config: rustls::ClientConfig,
    transport: &Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, TransportError> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_config)
        .map_err(|e| tls::TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport.clone());
    Ok(config)
}

/// Wait until the server has confirmed the handshake (HANDSHAKE_DONE received) or the
/// connection closed. quinn exposes no event for confirmation, so poll its frame counters with
/// a short back-off while also watching for close. On loopback this costs about a
/// millisecond, once per dial.
async fn await_confirmed(
    conn: &quinn::Connection,
    deadline: Instant,
    limit: Duration,
) -> Result<(), TransportError> {
    let mut step = Duration::from_micros(250);
    loop {
        if let Some(e) = conn.close_reason() {
            return Err(classify(e));
        }
        if conn.stats().frame_rx.handshake_done > 0 {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            conn.close(quinn::VarInt::from_u32(0), b"handshake not confirmed");
            return Err(TransportError::Timeout {
                what: "handshake confirmation",
                after: limit,
            });
        }
        let wait = step.min(deadline - now);
        tokio::select! {
            e = conn.closed() => return Err(classify(e)),
            _ = tokio::time::sleep(wait) => {}
        }
        step = (step * 2).min(Duration::from_millis(20));
    }
}

/// Per-peer state. `dials` counts finished dials; it is only changed with `state` locked, and
/// read before locking by callers to learn whether a dial finished while they waited.
#[derive(Default)]
struct SlotInner {
    dials: std::sync::atomic::AtomicU64,
    state: tokio::sync::Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    conn: Option<quinn::Connection>,
    /// Outcome of the last finished dial, if it failed.
    last_failure: Option<TransportError>,
}

type Slot = Arc<SlotInner>;

/// One connection per peer, dialled lazily, reused by all calls, re-dialled when closed.
pub struct ConnectionManager {
    endpoint: Endpoint,
    peers: Mutex<PeerTable>,
    slots: Mutex<HashMap<String, Slot>>,
    dials: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for ConnectionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionManager")
            .field("endpoint", &self.endpoint)
            .field("dials", &self.dial_count())
            .finish_non_exhaustive()
    }
}

impl ConnectionManager {
    /// A manager dialling `peers` from `endpoint`.
    pub fn new(endpoint: Endpoint, peers: PeerTable) -> Self {
        Self {
            endpoint,
            peers: Mutex::new(peers),
            slots: Mutex::new(HashMap::new()),
            dials: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A copy of the peer table.
    pub fn peers(&self) -> PeerTable {
        self.lock_peers().clone()
    }

    /// Add or replace a peer. A replaced peer's cached connection is forgotten (not closed:
    /// calls in flight on it finish); the next use dials with the new address and trust.
    pub fn insert_peer(&self, peer: Peer) {
        let name = peer.name.clone();
        let old = self.lock_peers().insert(peer);
        if old.is_some() {
            self.lock_slots().remove(&name);
        }
    }

    /// How many dials (attempts, successful or not) this manager has made.
    pub fn dial_count(&self) -> u64 {
        self.dials.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The live cached connection to `peer`, without dialling.
    pub fn cached(&self, peer: &str) -> Option<quinn::Connection> {
        let slot = self.lock_slots().get(peer).cloned()?;
        let guard = slot.state.try_lock().ok()?;
        guard
            .conn
            .as_ref()
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    /// The connection to `peer`: the cached one if still open, else a fresh dial. Concurrent
    /// callers share one dial: those that waited for it get its connection, or its error
    /// (so N queued calls to a dead peer fail after one connect timeout, not N).
    pub async fn connection(&self, peer: &str) -> Result<quinn::Connection, TransportError> {
        use std::sync::atomic::Ordering;
        let slot = self.slot(peer)?;
        let dials_before = slot.dials.load(Ordering::Acquire);
        let mut state = slot.state.lock().await;
        if let Some(conn) = &state.conn {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
            tracing::debug!(peer, "cached connection closed; re-dialling");
        }
        if slot.dials.load(Ordering::Acquire) != dials_before {
            if let Some(err) = &state.last_failure {
                return Err(err.clone());
            }
        }
        state.conn = None;
        let result = self.dial(peer).await;
        slot.dials.fetch_add(1, Ordering::Release);
        match result {
            Ok(conn) => {
                state.conn = Some(conn.clone());
                state.last_failure = None;
                Ok(conn)
            }
            Err(err) => {
                state.last_failure = Some(err.clone());
                Err(err)
            }
        }
    }

    /// Open a bidirectional stream (one call) to `peer`. If the cached connection turns out
    /// to have just closed, re-dials once.
    pub async fn open_bi(
        &self,
        peer: &str,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
        let conn = self.connection(peer).await?;
        match conn.open_bi().await {
            Ok(streams) => Ok(streams),
            Err(first) => {
                tracing::debug!(peer, error = %first, "open_bi failed; re-dialling once");
                let conn = self.connection(peer).await?;
                Ok(conn.open_bi().await?)
            }
        }
    }

    /// Register an established connection (e.g. an incoming one, identified with
    /// [`PeerTable::identify`]) as `peer`'s connection, so calls to `peer` reuse it. Keeps an
    /// existing live connection instead; returns whether `conn` was adopted.
    pub async fn adopt(&self, peer: &str, conn: quinn::Connection) -> Result<bool, TransportError> {
        let slot = self.slot(peer)?;
        let mut state = slot.state.lock().await;
        if state
            .conn
            .as_ref()
            .is_some_and(|c| c.close_reason().is_none())
        {
            return Ok(false);
        }
        state.conn = Some(conn);
        state.last_failure = None;
        Ok(true)
    }

    /// Close every cached connection.
    pub fn close_all(&self) {
        let slots: Vec<Slot> = self.lock_slots().drain().map(|(_, s)| s).collect();
        for slot in slots {
            if let Ok(state) = slot.state.try_lock() {
                if let Some(conn) = &state.conn {
                    conn.close(quinn::VarInt::from_u32(0), b"closed");
                }
            }
        }
    }

    fn slot(&self, peer: &str) -> Result<Slot, TransportError> {
        if self.lock_peers().get(peer).is_none() {
            return Err(TransportError::UnknownPeer(peer.to_owned()));
        }
        Ok(self
            .lock_slots()
            .entry(peer.to_owned())
            .or_default()
            .clone())
    }

    async fn dial(&self, name: &str) -> Result<quinn::Connection, TransportError> {
        let (peer, trust) = {
            let peers = self.lock_peers();
            let peer = peers
                .get(name)
                .cloned()
                .ok_or_else(|| TransportError::UnknownPeer(name.to_owned()))?;
            let trust = peers
                .trust(name)
                .map_err(|e| TransportError::Config(e.to_string()))?;
            (peer, trust)
        };
        self.dials
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let addr = self.resolve(&peer).await?;
        self.endpoint.connect(addr, &peer.name, &trust).await
    }

    /// Resolve the peer's `host:port`, picking an address our socket can reach (IPv4 only
    /// from an IPv4 socket; anything from an IPv6 one).
    async fn resolve(&self, peer: &Peer) -> Result<SocketAddr, TransportError> {
        let unreachable = |reason: String| TransportError::Unreachable {
            peer: peer.name.clone(),
            addr: peer.addr.clone(),
            reason,
        };
        let local_v6 = self.endpoint.local_addr()?.is_ipv6();
        let limit = self.endpoint.options().connect_timeout;
        let addrs = tokio::time::timeout(limit, tokio::net::lookup_host(peer.addr.as_str()))
            .await
            .map_err(|_| unreachable(format!("name resolution timed out after {limit:?}")))?
            .map_err(|e| unreachable(format!("cannot resolve: {e}")))?;
        let mut candidates = addrs.filter(|a| local_v6 || a.is_ipv4());
        candidates
            .next()
            .ok_or_else(|| unreachable("no address of a usable family".into()))
    }

    fn lock_peers(&self) -> std::sync::MutexGuard<'_, PeerTable> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
