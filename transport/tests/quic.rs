//! Real QUIC over loopback (127.0.0.1, ephemeral ports): handshakes in every trust mode, the
//! typed refusals, stream echo, connection reuse through the manager, and echo under 10%
//! datagram loss.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use skiff_transport::cert::{self, CertificateAuthority, GeneratedCert};
use skiff_transport::tls::{self, TlsError};
use skiff_transport::{
    CertRefusal, ClientAuth, ConnectionManager, Endpoint, EndpointConfig, LossConfig, Peer,
    PeerIdentity, PeerTable, Side, TransportError, TransportOptions, Trust,
};
use tokio::sync::mpsc;

const LOOPBACK: &str = "127.0.0.1:0";

fn options() -> TransportOptions {
    TransportOptions {
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(10),
        keep_alive: Some(Duration::from_secs(2)),
        ..TransportOptions::default()
    }
}

fn endpoint(cert: &GeneratedCert, auth: ClientAuth) -> Endpoint {
    endpoint_with(cert, auth, options())
}

fn endpoint_with(cert: &GeneratedCert, auth: ClientAuth, options: TransportOptions) -> Endpoint {
    let mut config = EndpointConfig::new(cert.identity().unwrap(), auth);
    config.options = options;
    Endpoint::bind(LOOPBACK.parse().unwrap(), config).unwrap()
}

/// A client endpoint (default client auth) that gives up dialling after `connect_timeout`.
fn client_with_timeout(cert: &GeneratedCert, connect_timeout: Duration) -> Endpoint {
    let options = TransportOptions {
        connect_timeout,
        ..options()
    };
    endpoint_with(cert, ClientAuth::default(), options)
}

fn addr(ep: &Endpoint) -> SocketAddr {
    ep.local_addr().unwrap()
}

/// What a server saw.
#[derive(Debug)]
enum Seen {
    Accepted(PeerIdentity),
    Refused(TransportError),
}

/// Serve an echo service on `ep`: every bidirectional stream gets its bytes back.
fn spawn_echo(ep: Endpoint) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(accepting) = ep.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                match accepting.establish().await {
                    Ok((conn, id)) => {
                        let _ = tx.send(Seen::Accepted(id));
                        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                            tokio::spawn(async move {
                                let Ok(data) = recv.read_to_end(1 << 20).await else {
                                    return;
                                };
                                let _ = send.write_all(&data).await;
                                let _ = send.finish();
                            });
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Seen::Refused(e));
                    }
                }
            });
        }
    });
    rx
}

async fn next_seen(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("server saw nothing within 5s")
        .expect("server task ended")
}

async fn echo(conn: &quinn::Connection, msg: &[u8]) -> Result<Vec<u8>, TransportError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(msg).await?;
    send.finish()?;
    Ok(recv.read_to_end(1 << 20).await?)
}

fn dev(name: &str) -> GeneratedCert {
    cert::generate_self_signed(name).unwrap()
}

/// A server endpoint for `server` (client auth `auth`) serving echo, and a client endpoint for
/// `client` (default client auth).
fn server_and_client(
    server: &GeneratedCert,
    auth: ClientAuth,
    client: &GeneratedCert,
) -> (Endpoint, Endpoint, mpsc::UnboundedReceiver<Seen>) {
    let ep_s = endpoint(server, auth);
    let ep_c = endpoint(client, ClientAuth::default());
    let seen = spawn_echo(ep_s.clone());
    (ep_s, ep_c, seen)
}

/// The identity of the next peer the server accepted (panics on a refusal).
async fn next_accepted(rx: &mut mpsc::UnboundedReceiver<Seen>) -> PeerIdentity {
    match next_seen(rx).await {
        Seen::Accepted(id) => id,
        other => panic!("{other:?}"),
    }
}

/// The server's next attempt was refused by the server itself, for `refusal` where given.
async fn expect_refused_locally(
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    refusal: Option<CertRefusal>,
) {
    match next_seen(rx).await {
        Seen::Refused(TransportError::TlsRefused {
            by: Side::Local,
            refusal: seen,
            ..
        }) if refusal.is_none_or(|r| r == seen) => {}
        other => panic!("{other:?}"),
    }
}

/// `err` is a TLS refusal by `by` for `refusal`, with TLS alert `alert` where given.
#[track_caller]
fn assert_tls_refused(err: &TransportError, by: Side, refusal: CertRefusal, alert: Option<u8>) {
    assert!(
        matches!(
            err,
            TransportError::TlsRefused {
                by: b,
                refusal: r,
                alert: a,
                ..
            } if *b == by && *r == refusal && alert.is_none_or(|x| x == *a)
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn pinned_handshake_both_directions_and_echo() {
    let a = dev("alice");
    let b = dev("bob");
    let ep_a = endpoint(&a, ClientAuth::pinned([b.fingerprint()]));
    let ep_b = endpoint(&b, ClientAuth::pinned([a.fingerprint()]));
    let mut seen_a = spawn_echo(ep_a.clone());
    let mut seen_b = spawn_echo(ep_b.clone());

    // alice -> bob
    let conn = ep_a
        .connect(addr(&ep_b), "bob", &Trust::Pinned(b.fingerprint()))
        .await
        .unwrap();
    let server_id = PeerIdentity::of_connection(&conn).unwrap();
    assert_eq!(server_id.fingerprint, b.fingerprint());
    assert_eq!(server_id.common_name.as_deref(), Some("bob"));
    assert_eq!(
        conn.handshake_data()
            .unwrap()
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .unwrap()
            .protocol
            .as_deref(),
        Some(tls::ALPN)
    );
    assert_eq!(
        next_accepted(&mut seen_b).await.fingerprint,
        a.fingerprint()
    );
    assert_eq!(echo(&conn, b"hello bob").await.unwrap(), b"hello bob");

    // bob -> alice
    let conn = ep_b
        .connect(addr(&ep_a), "alice", &Trust::Pinned(a.fingerprint()))
        .await
        .unwrap();
    assert_eq!(
        next_accepted(&mut seen_a).await.fingerprint,
        b.fingerprint()
    );
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(echo(&conn, &big).await.unwrap(), big);
}

#[tokio::test]
async fn accept_any_records_client_fingerprint() {
    let server = dev("server");
    let client = dev("client");
    let (ep_s, ep_c, mut seen) = server_and_client(&server, ClientAuth::accept_any(), &client);
    let conn = ep_c
        .connect(addr(&ep_s), "server", &Trust::Pinned(server.fingerprint()))
        .await
        .unwrap();
    assert_eq!(
        next_accepted(&mut seen).await.fingerprint,
        client.fingerprint()
    );
    assert_eq!(echo(&conn, b"x").await.unwrap(), b"x");
}

#[tokio::test]
async fn wrong_server_pin_is_refused_by_client() {
    let server = dev("server");
    let client = dev("client");
    let (ep_s, ep_c, _seen) = server_and_client(&server, ClientAuth::accept_any(), &client);
    let wrong = dev("impostor").fingerprint();
    let err = ep_c
        .connect(addr(&ep_s), "server", &Trust::Pinned(wrong))
        .await
        .unwrap_err();
    assert_tls_refused(&err, Side::Local, CertRefusal::NotTrusted, None);
    assert!(err.to_string().contains("does not match pin"), "{err}");
}

#[tokio::test]
async fn unpinned_client_is_refused_by_server() {
    let server = dev("server");
    let client = dev("client");
    let other = dev("other");
    let (ep_s, ep_c, mut seen) =
        server_and_client(&server, ClientAuth::pinned([other.fingerprint()]), &client);
    let err = ep_c
        .connect(addr(&ep_s), "server", &Trust::Pinned(server.fingerprint()))
        .await
        .unwrap_err();
    assert_tls_refused(&err, Side::Remote, CertRefusal::NotTrusted, None);
    expect_refused_locally(&mut seen, None).await;
}

struct CaSetup {
    ca: CertificateAuthority,
    server: GeneratedCert,
    client: GeneratedCert,
}

fn ca_setup(server_name: &str) -> CaSetup {
    let ca = CertificateAuthority::generate("Skiff Test CA").unwrap();
    let server = ca.issue(server_name).unwrap();
    let client = ca.issue("alice").unwrap();
    CaSetup { ca, server, client }
}

impl CaSetup {
    /// Client auth accepting certificates of this CA.
    fn auth(&self) -> ClientAuth {
        ClientAuth::ca(self.ca.cert_der().clone())
    }

    /// Trust in servers certified by this CA.
    fn trust(&self) -> Trust {
        Trust::Ca(self.ca.cert_der().clone())
    }

    /// The server (trusting this CA for clients) serving echo, and the client's endpoint.
    fn serve(&self) -> (Endpoint, Endpoint, mpsc::UnboundedReceiver<Seen>) {
        server_and_client(&self.server, self.auth(), &self.client)
    }
}

#[tokio::test]
async fn ca_mode_mutual_tls_with_names() {
    let s = ca_setup("bob");
    let ep_s = endpoint(&s.server, s.auth());
    let ep_c = endpoint(&s.client, s.auth());
    let mut seen = spawn_echo(ep_s.clone());
    let conn = ep_c.connect(addr(&ep_s), "bob", &s.trust()).await.unwrap();
    let server_id = PeerIdentity::of_connection(&conn).unwrap();
    assert_eq!(server_id.dns_names, vec!["bob".to_string()]);
    let id = next_accepted(&mut seen).await;
    assert_eq!(id.common_name.as_deref(), Some("alice"));
    assert_eq!(id.dns_names, vec!["alice".to_string()]);
    assert_eq!(id.fingerprint, s.client.fingerprint());
    assert_eq!(echo(&conn, b"mtls").await.unwrap(), b"mtls");
}

#[tokio::test]
async fn wrong_ca_is_refused_both_ways() {
    let s = ca_setup("bob");
    let other_ca = CertificateAuthority::generate("Other CA").unwrap();

    // The client trusts another CA: it refuses the server.
    let (ep_s, ep_c, _seen) = s.serve();
    let err = ep_c
        .connect(addr(&ep_s), "bob", &Trust::Ca(other_ca.cert_der().clone()))
        .await
        .unwrap_err();
    assert_tls_refused(&err, Side::Local, CertRefusal::UnknownCa, Some(48));

    // The server trusts another CA: it refuses the client.
    let ep_s2 = endpoint(&s.server, ClientAuth::ca(other_ca.cert_der().clone()));
    let mut seen2 = spawn_echo(ep_s2.clone());
    let err = ep_c
        .connect(addr(&ep_s2), "bob", &s.trust())
        .await
        .unwrap_err();
    assert_tls_refused(&err, Side::Remote, CertRefusal::UnknownCa, None);
    expect_refused_locally(&mut seen2, Some(CertRefusal::UnknownCa)).await;
}

#[tokio::test]
async fn ca_mode_server_name_must_match() {
    let s = ca_setup("bob");
    let (ep_s, ep_c, _seen) = s.serve();
    let err = ep_c
        .connect(addr(&ep_s), "carol", &s.trust())
        .await
        .unwrap_err();
    assert_tls_refused(&err, Side::Local, CertRefusal::NotTrusted, None);
}

#[tokio::test]
async fn missing_client_certificate_is_refused_in_ca_mode() {
    let s = ca_setup("bob");
    let (ep_s, ep_c, mut seen) = s.serve();
    let anon = tls::client_config_without_identity(&s.trust(), &[tls::ALPN.to_vec()]).unwrap();
    let config = ep_c.quinn_client_config(anon).unwrap();
    let err = ep_c
        .connect_with(config, addr(&ep_s), "bob")
        .await
        .unwrap_err();
    assert_tls_refused(&err, Side::Remote, CertRefusal::Missing, Some(116));
    expect_refused_locally(&mut seen, Some(CertRefusal::Missing)).await;
}

#[tokio::test]
async fn alpn_mismatch_is_refused() {
    let server = dev("server");
    let client = dev("client");
    let (ep_s, ep_c, _seen) = server_and_client(&server, ClientAuth::accept_any(), &client);
    let rustls_config = tls::client_config(
        &client.identity().unwrap(),
        &Trust::Pinned(server.fingerprint()),
        &[b"skiff/0".to_vec()],
    )
    .unwrap();
    let config = ep_c.quinn_client_config(rustls_config).unwrap();
    let err = ep_c
        .connect_with(config, addr(&ep_s), "server")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::AlpnMismatch {
                by: Side::Remote,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.tls_alert(), Some(120));
}

#[tokio::test]
async fn silent_address_is_unreachable() {
    // A bound UDP socket that never answers: nothing to refuse, nothing to hear.
    let silent = std::net::UdpSocket::bind(LOOPBACK).unwrap();
    let client = dev("client");
    let ep_c = client_with_timeout(&client, Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = ep_c
        .connect(
            silent.local_addr().unwrap(),
            "nobody",
            &Trust::Pinned(client.fingerprint()),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Unreachable { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn manager_reuses_one_connection_and_redials() {
    let server = dev("bob");
    let client = dev("alice");
    let (ep_s, ep_c, mut seen) =
        server_and_client(&server, ClientAuth::pinned([client.fingerprint()]), &client);

    let mut peers = PeerTable::new();
    // A host name, resolved at dial time.
    peers.insert(
        Peer::parse_flag(&format!(
            "bob=localhost:{}#{}",
            addr(&ep_s).port(),
            server.fingerprint()
        ))
        .unwrap(),
    );
    let manager = Arc::new(ConnectionManager::new(ep_c.clone(), peers));
    assert!(matches!(
        manager.connection("carol").await,
        Err(TransportError::UnknownPeer(_))
    ));

    // Concurrent first use: one dial.
    let tasks: Vec<_> = (0..8u8)
        .map(|i| {
            let m = manager.clone();
            tokio::spawn(async move {
                let (mut send, mut recv) = m.open_bi("bob").await.unwrap();
                send.write_all(&[i; 10]).await.unwrap();
                send.finish().unwrap();
                assert_eq!(recv.read_to_end(100).await.unwrap(), vec![i; 10]);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let c1 = manager.connection("bob").await.unwrap();
    let c2 = manager.connection("bob").await.unwrap();
    assert_eq!(c1.stable_id(), c2.stable_id());
    assert_eq!(manager.dial_count(), 1);
    assert!(matches!(next_seen(&mut seen).await, Seen::Accepted(_)));
    assert!(
        seen.try_recv().is_err(),
        "server accepted a second connection"
    );

    // Closed connections are re-dialled.
    c1.close(quinn::VarInt::from_u32(0), b"test");
    assert_eq!(
        echo(&manager.connection("bob").await.unwrap(), b"again")
            .await
            .unwrap(),
        b"again"
    );
    let c3 = manager.connection("bob").await.unwrap();
    assert_ne!(c3.stable_id(), c1.stable_id());
    assert_eq!(manager.dial_count(), 2);
    assert!(matches!(next_seen(&mut seen).await, Seen::Accepted(_)));
}

#[tokio::test]
async fn manager_reports_unresolvable_host_as_unreachable() {
    let client = dev("alice");
    let ep_c = client_with_timeout(&client, Duration::from_secs(2));
    let mut peers = PeerTable::new();
    peers.insert(Peer::parse_flag("ghost=no-such-host.invalid:4433").unwrap());
    let manager = ConnectionManager::new(ep_c, peers.clone());
    // No pin and no CA: a configuration error, not a dial.
    assert!(matches!(
        manager.connection("ghost").await,
        Err(TransportError::Config(_))
    ));
    manager.insert_peer(
        Peer::parse_flag(&format!(
            "ghost=no-such-host.invalid:4433#{}",
            client.fingerprint()
        ))
        .unwrap(),
    );
    let err = manager.connection("ghost").await.unwrap_err();
    assert!(matches!(err, TransportError::Unreachable { .. }), "{err:?}");
}

#[tokio::test]
async fn lossy_socket_ten_percent_still_echoes_100_messages() {
    let server = dev("bob");
    let client = dev("alice");
    // Loopback: assume a 10 ms RTT so lost handshake packets are retransmitted quickly.
    let lossy_options = TransportOptions {
        initial_rtt: Some(Duration::from_millis(10)),
        connect_timeout: Duration::from_secs(10),
        ..options()
    };
    let ep_s = endpoint_with(
        &server,
        ClientAuth::pinned([client.fingerprint()]),
        lossy_options.clone(),
    );
    let mut config = EndpointConfig::new(client.identity().unwrap(), ClientAuth::default());
    config.options = lossy_options;
    let (ep_c, stats) = Endpoint::bind_lossy(
        LOOPBACK.parse().unwrap(),
        config,
        LossConfig::symmetric(0.10, 0x5eed),
    )
    .unwrap();
    let _seen = spawn_echo(ep_s.clone());
    let conn = ep_c
        .connect(addr(&ep_s), "bob", &Trust::Pinned(server.fingerprint()))
        .await
        .unwrap();

    let conn = Arc::new(conn);
    let workers: Vec<_> = (0..10u32)
        .map(|w| {
            let conn = conn.clone();
            tokio::spawn(async move {
                for i in 0..10u32 {
                    let n = w * 10 + i;
                    let msg: Vec<u8> = (0..(500 + n * 37))
                        .map(|j| (j.wrapping_mul(31) ^ n) as u8)
                        .collect();
                    assert_eq!(echo(&conn, &msg).await.unwrap(), msg, "message {n}");
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let dropped = stats.dropped_outgoing() + stats.dropped_incoming();
    assert!(dropped > 0, "no datagram was dropped: {stats:?}");
    let total = dropped + stats.sent() + stats.received();
    let rate = dropped as f64 / total as f64;
    assert!((0.03..0.2).contains(&rate), "loss rate {rate}: {stats:?}");
}

#[test]
fn bad_pem_is_an_error_not_a_panic() {
    assert!(matches!(
        skiff_transport::NodeIdentity::from_pem(b"garbage", b"garbage"),
        Err(TlsError::Pem { .. })
    ));
    let a = dev("a");
    let b = dev("b");
    // Key of another certificate.
    assert!(matches!(
        skiff_transport::NodeIdentity::from_pem(a.cert_pem.as_bytes(), b.key_pem.as_bytes()),
        Err(TlsError::Rustls(_))
    ));
}

/// A resolver presenting `cert`'s certificate but signing with `key_of`'s private key: an
/// attacker who copied a pinned certificate but does not hold its key.
fn stolen_cert(
    cert: &GeneratedCert,
    key_of: &GeneratedCert,
) -> Arc<rustls::sign::SingleCertAndKey> {
    use rustls::pki_types::pem::PemObject;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_of.key_pem.as_bytes()).unwrap();
    let signer = tls::provider().key_provider.load_private_key(key).unwrap();
    Arc::new(rustls::sign::CertifiedKey::new(vec![cert.cert_der.clone()], signer).into())
}

#[tokio::test]
async fn pinned_client_cert_without_its_key_is_refused() {
    let server = dev("server");
    let victim = dev("victim");
    let attacker = dev("attacker");
    let (ep_s, ep_c, mut seen) = server_and_client(
        &server,
        ClientAuth::pinned([victim.fingerprint()]),
        &attacker,
    );
    let mut config = tls::client_config(
        &attacker.identity().unwrap(),
        &Trust::Pinned(server.fingerprint()),
        &[tls::ALPN.to_vec()],
    )
    .unwrap();
    config.client_auth_cert_resolver = stolen_cert(&victim, &attacker);
    let config = ep_c.quinn_client_config(config).unwrap();
    let err = ep_c
        .connect_with(config, addr(&ep_s), "server")
        .await
        .unwrap_err();
    assert_tls_refused(&err, Side::Remote, CertRefusal::BadSignature, None);
    expect_refused_locally(&mut seen, Some(CertRefusal::BadSignature)).await;
}

#[tokio::test]
async fn pinned_server_cert_without_its_key_is_refused() {
    let victim = dev("victim");
    let attacker = dev("attacker");
    let client = dev("client");
    // A hand-built server presenting the victim's certificate, signing with its own key.
    let mut server_tls = tls::server_config(
        &attacker.identity().unwrap(),
        &ClientAuth::accept_any(),
        &[tls::ALPN.to_vec()],
    )
    .unwrap();
    server_tls.cert_resolver = stolen_cert(&victim, &attacker);
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).unwrap();
    let fake = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(quic)),
        LOOPBACK.parse().unwrap(),
    )
    .unwrap();
    let fake_addr = fake.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = fake.accept().await {
            let _ = incoming.await;
        }
    });
    let ep_c = endpoint(&client, ClientAuth::default());
    let err = ep_c
        .connect(fake_addr, "victim", &Trust::Pinned(victim.fingerprint()))
        .await
        .unwrap_err();
    assert_tls_refused(&err, Side::Local, CertRefusal::BadSignature, None);
}

#[tokio::test]
async fn accept_any_refuses_non_loopback_bind() {
    let cert = dev("node");
    let config = EndpointConfig::new(cert.identity().unwrap(), ClientAuth::accept_any());
    let err = Endpoint::bind("0.0.0.0:0".parse().unwrap(), config).unwrap_err();
    assert!(matches!(err, TransportError::Config(_)), "{err:?}");
}

#[tokio::test]
async fn queued_callers_share_one_failed_dial() {
    let silent = std::net::UdpSocket::bind(LOOPBACK).unwrap();
    let client = dev("alice");
    let ep_c = client_with_timeout(&client, Duration::from_millis(300));
    let mut peers = PeerTable::new();
    peers.insert(
        Peer::new(
            "silent",
            &silent.local_addr().unwrap().to_string(),
            Some(client.fingerprint()),
        )
        .unwrap(),
    );
    let manager = Arc::new(ConnectionManager::new(ep_c, peers));
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let m = manager.clone();
            tokio::spawn(async move { m.open_bi("silent").await.map(|_| ()) })
        })
        .collect();
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert!(matches!(err, TransportError::Unreachable { .. }), "{err:?}");
    }
    assert_eq!(manager.dial_count(), 1);
    assert!(started.elapsed() < Duration::from_millis(1500));
    // A later call tries again.
    assert!(manager.connection("silent").await.is_err());
    assert_eq!(manager.dial_count(), 2);
}
