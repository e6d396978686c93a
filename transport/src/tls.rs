//! TLS for Skiff connections: node identities, how peers are trusted, and the rustls
//! configurations built from them.
//!
//! Every Skiff connection is QUIC over TLS 1.3 only, with the ring crypto provider and the
//! ALPN protocol [`ALPN`] (`skiff/2`). Both sides always authenticate: the server requires a
//! client certificate, the client verifies the server's.
//!
//! Two ways to trust a peer ([`Trust`]):
//! - **Pinned** (dev mode): the peer presents a (usually self-signed) certificate whose
//!   [`Fingerprint`] — lowercase hex of SHA-256 over the DER certificate — must equal the pin.
//!   The chain, names and validity dates are not consulted: the pin *is* the identity.
//! - **CA** (production, mTLS): the peer's certificate must chain to the given CA certificate
//!   and (for servers) be valid for the peer's name, checked by rustls' WebPKI verifiers.
//!
//! Invariants:
//! - The handshake signature is always really verified (the provider's
//!   `verify_tls13_signature`), also for pinned certificates: holding a copy of a pinned
//!   certificate is not enough, the peer must hold its private key.
//! - TLS session resumption is disabled on both sides, so every connection's peer identity
//!   comes from a full certificate verification under the trust configured for it.
//! - A server never accepts a connection without a client certificate; [`ClientAuth`] only
//!   chooses *which* certificates it accepts. The accept-any mode still verifies the signature
//!   and records the fingerprint, and is meant for dev loopback only.
//! - Nothing here panics on peer input: certificate parsing for [`PeerIdentity`] degrades to
//!   "no names" on malformed input.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};

/// The ALPN protocol identifier every Skiff connection negotiates.
pub const ALPN: &[u8] = skiff_wire::ALPN;

/// Errors building TLS configuration or loading identities. Handshake failures are not here:
/// they surface as [`crate::TransportError`] when dialling or accepting.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// PEM input held no item of the expected kind, or was malformed.
    #[error("bad PEM ({what}): {reason}")]
    Pem {
        /// What was being read ("certificate", "private key").
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The certificate chain was empty.
    #[error("certificate chain is empty")]
    EmptyChain,
    /// rustls rejected the configuration (unusable key, key not matching the certificate, ...).
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// A CA certificate could not be used as a trust anchor.
    #[error("CA certificate unusable: {0}")]
    Ca(String),
    /// The rustls configuration cannot be used for QUIC (no TLS 1.3 initial cipher suite).
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(String),
    /// A fingerprint string did not parse.
    #[error("bad fingerprint `{0}`: expected 64 hex digits (SHA-256 of the DER certificate)")]
    BadFingerprint(String),
}

/// Clones keep an I/O error's kind and message, not the OS error object.
impl Clone for TlsError {
    fn clone(&self) -> Self {
        match self {
            TlsError::Io { path, source } => TlsError::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            TlsError::Pem { what, reason } => TlsError::Pem {
                what,
                reason: reason.clone(),
            },
            TlsError::EmptyChain => TlsError::EmptyChain,
            TlsError::Rustls(e) => TlsError::Rustls(e.clone()),
            TlsError::Ca(s) => TlsError::Ca(s.clone()),
            TlsError::Quic(s) => TlsError::Quic(s.clone()),
            TlsError::BadFingerprint(s) => TlsError::BadFingerprint(s.clone()),
        }
    }
}

/// SHA-256 fingerprint of a DER-encoded X.509 certificate.
///
/// Text form (`Display` / `FromStr`): 64 lowercase hex digits, no separators, e.g. as printed
/// by `skiff cert`. Parsing also accepts upper case and `:` separators (the form
/// `openssl x509 -noout -fingerprint -sha256` prints, after its `sha256 Fingerprint=` label).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Fingerprint of DER certificate bytes.
    pub fn of_der(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    /// Fingerprint of a certificate.
    pub fn of_cert(cert: &CertificateDer<'_>) -> Self {
        Self::of_der(cert.as_ref())
    }

    /// From the raw 32 digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The documented text form: 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }
}

/// Fingerprint of DER certificate bytes: lowercase hex of SHA-256 (`Fingerprint::of_der`).
pub fn fingerprint(cert_der: &[u8]) -> Fingerprint {
    Fingerprint::of_der(cert_der)
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, TlsError> {
        let bad = || TlsError::BadFingerprint(s.chars().take(100).collect());
        let digits: Vec<u8> = s.trim().bytes().filter(|&b| b != b':').collect();
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or_else(bad)?;
            let lo = hex_val(pair[1]).ok_or_else(bad)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Self(out))
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// This node's TLS identity: its certificate chain (leaf first) and private key. Used both
/// as server certificate and as client certificate.
pub struct NodeIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl NodeIdentity {
    /// Build from a chain (leaf first) and its private key. Checks the chain is non-empty, the
    /// key is usable by the ring provider and matches the leaf certificate.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        if chain.is_empty() {
            return Err(TlsError::EmptyChain);
        }
        rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider())?;
        Ok(Self { chain, key })
    }

    /// Parse PEM: every `CERTIFICATE` block of `cert_pem` (leaf first) and the first private
    /// key (PKCS#8, PKCS#1 or SEC1) of `key_pem`.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let chain = certs_from_pem(cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
            what: "private key",
            reason: e.to_string(),
        })?;
        Self::new(chain, key)
    }

    /// Read [`NodeIdentity::from_pem`] input from two files.
    pub fn from_pem_files(
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        let cert = read_file(cert_path.as_ref())?;
        let key = read_file(key_path.as_ref())?;
        Self::from_pem(&cert, &key)
    }

    /// The certificate chain, leaf first.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The leaf certificate (what peers pin).
    pub fn leaf(&self) -> &CertificateDer<'static> {
        // `new` guarantees a non-empty chain.
        &self.chain[0]
    }

    /// Fingerprint of the leaf certificate: the pin other nodes use for this node.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_cert(self.leaf())
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("fingerprint", &self.fingerprint())
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Read every `CERTIFICATE` block of PEM input.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: "certificate",
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            what: "certificate",
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(chain)
}

/// Read the first `CERTIFICATE` block of a PEM file (e.g. a CA certificate).
pub fn cert_from_pem_file(path: impl AsRef<Path>) -> Result<CertificateDer<'static>, TlsError> {
    let pem = read_file(path.as_ref())?;
    let mut certs = certs_from_pem(&pem)?;
    Ok(certs.swap_remove(0))
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// How a peer is trusted when this node dials it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Trust {
    /// The peer's leaf certificate must have exactly this fingerprint (dev mode).
    Pinned(Fingerprint),
    /// The peer's certificate must chain to this CA certificate and be valid for the peer's
    /// name (the name dialled, used as TLS server name).
    Ca(CertificateDer<'static>),
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::Pinned(fp) => write!(f, "Pinned({fp})"),
            Trust::Ca(cert) => write!(f, "Ca({})", Fingerprint::of_cert(cert)),
        }
    }
}

/// Which client certificates a server accepts. Every variant requires a client certificate and
/// verifies the handshake signature; a certificate is accepted if its fingerprint is pinned,
/// or it chains to one of the CAs, or `accept_any` is set (dev loopback: accept, and record
/// the fingerprint in the connection's [`PeerIdentity`]).
///
/// `ClientAuth::default()` accepts nobody.
#[derive(Clone, Debug, Default)]
pub struct ClientAuth {
    pinned: BTreeSet<Fingerprint>,
    ca_roots: Vec<CertificateDer<'static>>,
    accept_any: bool,
}

impl ClientAuth {
    /// Accept any client certificate whose handshake signature verifies (dev loopback only).
    pub fn accept_any() -> Self {
        Self {
            accept_any: true,
            ..Self::default()
        }
    }

    /// Accept exactly the certificates with these fingerprints.
    pub fn pinned(pins: impl IntoIterator<Item = Fingerprint>) -> Self {
        Self {
            pinned: pins.into_iter().collect(),
            ..Self::default()
        }
    }

    /// Accept certificates issued by this CA (mTLS).
    pub fn ca(ca_cert: CertificateDer<'static>) -> Self {
        Self::default().with_ca(ca_cert)
    }

    /// Also accept this pinned fingerprint.
    pub fn with_pin(mut self, pin: Fingerprint) -> Self {
        self.pinned.insert(pin);
        self
    }

    /// Also accept certificates issued by this CA.
    pub fn with_ca(mut self, ca_cert: CertificateDer<'static>) -> Self {
        if !self.ca_roots.contains(&ca_cert) {
            self.ca_roots.push(ca_cert);
        }
        self
    }

    /// Whether any client certificate is accepted.
    pub fn accepts_any(&self) -> bool {
        self.accept_any
    }

    /// The pinned client fingerprints.
    pub fn pins(&self) -> &BTreeSet<Fingerprint> {
        &self.pinned
    }

    fn verifier(&self, provider: &Arc<CryptoProvider>) -> Result<SkiffClientVerifier, TlsError> {
        let ca = if self.ca_roots.is_empty() {
            None
        } else {
            let roots = root_store(&self.ca_roots)?;
            let v = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| TlsError::Ca(e.to_string()))?;
            Some(v)
        };
        Ok(SkiffClientVerifier {
            pinned: self.pinned.clone(),
            accept_any: self.accept_any,
            ca,
            algs: provider.signature_verification_algorithms,
        })
    }
}

fn root_store(certs: &[CertificateDer<'static>]) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert.clone())
            .map_err(|e| TlsError::Ca(e.to_string()))?;
    }
    Ok(Arc::new(roots))
}

/// The crypto provider every Skiff TLS configuration uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls server configuration: TLS 1.3 only, `identity` as certificate, client
/// certificates required and checked by `auth`, `alpn` offered (normally `[ALPN]`), no
/// session resumption.
pub fn server_config(
    identity: &NodeIdentity,
    auth: &ClientAuth,
    alpn: &[Vec<u8>],
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = auth.verifier(&provider)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(identity.chain.clone(), identity.key())?;
    config.alpn_protocols = alpn.to_vec();
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The rustls client configuration for dialling a peer trusted by `trust`: TLS 1.3 only,
/// `identity` as client certificate, `alpn` offered (normally `[ALPN]`), no resumption.
pub fn client_config(
    identity: &NodeIdentity,
    trust: &Trust,
    alpn: &[Vec<u8>],
) -> Result<rustls::ClientConfig, TlsError> {
    client_config_inner(Some(identity), trust, alpn)
}

/// Like [`client_config`] but presenting no client certificate. Servers refuse such clients;
/// this exists to test that they do.
pub fn client_config_without_identity(
    trust: &Trust,
    alpn: &[Vec<u8>],
) -> Result<rustls::ClientConfig, TlsError> {
    client_config_inner(None, trust, alpn)
}

fn client_config_inner(
    identity: Option<&NodeIdentity>,
    trust: &Trust,
    alpn: &[Vec<u8>],
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match trust {
        Trust::Pinned(pin) => Arc::new(PinnedServerVerifier {
            pin: *pin,
            algs: provider.signature_verification_algorithms,
        }),
        Trust::Ca(ca) => rustls::client::WebPkiServerVerifier::builder_with_provider(
            root_store(std::slice::from_ref(ca))?,
            provider.clone(),
        )
        .build()
        .map_err(|e| TlsError::Ca(e.to_string()))?,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.to_vec();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// A peer certificate rejected because its fingerprint is not the pinned one.
#[derive(thiserror::Error)]
#[error("certificate fingerprint {got} does not match pin {expected}")]
struct PinMismatch {
    expected: Fingerprint,
    got: Fingerprint,
}

/// A client certificate that no rule of the server's [`ClientAuth`] accepts.
#[derive(thiserror::Error)]
#[error("client certificate {got} is not pinned and not issued by a trusted CA")]
struct UnknownClient {
    got: Fingerprint,
}

// rustls renders `CertificateError::Other` with `Debug`: make that the readable text.
macro_rules! debug_as_display {
    ($($t:ty),+) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{self}")
            }
        }
    )+};
}

debug_as_display!(PinMismatch, UnknownClient);

fn other_cert_error(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

/// The handshake-signature checks and supported schemes of a certificate verifier with an
/// `algs: WebPkiSupportedAlgorithms` field: the same on the server and the client side.
macro_rules! signatures_checked_with_algs {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

/// Client side of pinned trust: the server's leaf must have the pinned fingerprint.
#[derive(Debug)]
struct PinnedServerVerifier {
    pin: Fingerprint,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of_cert(end_entity);
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(other_cert_error(PinMismatch {
                expected: self.pin,
                got,
            }))
        }
    }

    signatures_checked_with_algs!();
}

/// Server side: pins, then CA chain, then accept-any.
#[derive(Debug)]
struct SkiffClientVerifier {
    pinned: BTreeSet<Fingerprint>,
    accept_any: bool,
    ca: Option<Arc<dyn ClientCertVerifier>>,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for SkiffClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        match &self.ca {
            Some(ca) => ca.root_hint_subjects(),
            None => &[],
        }
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let got = Fingerprint::of_cert(end_entity);
        if self.pinned.contains(&got) {
            return Ok(ClientCertVerified::assertion());
        }
        let ca_result = self
            .ca
            .as_ref()
            .map(|ca| ca.verify_client_cert(end_entity, intermediates, now));
        match ca_result {
            Some(Ok(v)) => Ok(v),
            _ if self.accept_any => {
                tracing::debug!(fingerprint = %got, "accepting unpinned client certificate (accept-any)");
                Ok(ClientCertVerified::assertion())
            }
            Some(Err(e)) if self.pinned.is_empty() => Err(e),
            _ => Err(other_cert_error(UnknownClient { got })),
        }
    }

    signatures_checked_with_algs!();
}

/// The authenticated identity of the peer of a connection, for per-peer permissions.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Fingerprint of the peer's leaf certificate (always present).
    pub fingerprint: Fingerprint,
    /// The subject common name, if the certificate has a UTF-8 one.
    pub common_name: Option<String>,
    /// DNS names of the subject alternative name extension.
    pub dns_names: Vec<String>,
    /// The peer's leaf certificate.
    pub certificate: CertificateDer<'static>,
    /// Further certificates the peer sent after its leaf (CA mode; usually empty).
    pub intermediates: Vec<CertificateDer<'static>>,
}

impl PeerIdentity {
    /// Identity of a certificate that the handshake has verified. Malformed certificates give
    /// empty names, never a panic.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Self {
        let (common_name, dns_names) = cert_names(cert.as_ref());
        Self {
            fingerprint: Fingerprint::of_cert(cert),
            common_name,
            dns_names,
            certificate: cert.clone().into_owned(),
            intermediates: Vec::new(),
        }
    }

    /// Identity of a verified chain (leaf first); `None` for an empty chain.
    pub fn from_chain(chain: &[CertificateDer<'_>]) -> Option<Self> {
        let (leaf, rest) = chain.split_first()?;
        let mut id = Self::from_certificate(leaf);
        id.intermediates = rest.iter().map(|c| c.clone().into_owned()).collect();
        Some(id)
    }

    /// The authenticated identity of `conn`'s peer, or `None` while the handshake has not
    /// completed (Skiff servers always require client certificates, so every established
    /// Skiff connection has one).
    pub fn of_connection(conn: &quinn::Connection) -> Option<Self> {
        let any = conn.peer_identity()?;
        let chain = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
        Self::from_chain(&chain)
    }

    /// Whether the certificate names `name`, as CN or DNS SAN (ASCII case-insensitive).
    pub fn has_name(&self, name: &str) -> bool {
        self.dns_names.iter().any(|n| n.eq_ignore_ascii_case(name))
            || self
                .common_name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
    }
}

impl fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerIdentity")
            .field("fingerprint", &self.fingerprint)
            .field("common_name", &self.common_name)
            .field("dns_names", &self.dns_names)
            .finish_non_exhaustive()
    }
}

/// Shorthand for [`PeerIdentity::of_connection`].
pub fn peer_identity(conn: &quinn::Connection) -> Option<PeerIdentity> {
    PeerIdentity::of_connection(conn)
}

fn cert_names(der: &[u8]) -> (Option<String>, Vec<String>) {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return (None, Vec::new());
    };
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let dns = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(s) => Some((*s).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    (cn, dns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_text_round_trip() {
        let fp = Fingerprint::of_der(b"not really a certificate");
        let hex = fp.to_string();
        assert_eq!(hex.len(), 64);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(hex.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(hex.to_uppercase().parse::<Fingerprint>().unwrap(), fp);
        let colons: Vec<String> = fp.as_bytes().iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(colons.join(":").parse::<Fingerprint>().unwrap(), fp);
        // Known vector: SHA-256 of the empty string.
        assert_eq!(
            fingerprint(b"").to_string(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn fingerprint_rejects_garbage() {
        for bad in [
            "",
            "abc",
            &"g".repeat(64),
            &"a".repeat(63),
            &"a".repeat(66),
            "é",
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_of_garbage_are_empty() {
        let mut state = 0x1234_5678_u64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (state >> 33) as u8
                })
                .collect();
            let id = PeerIdentity::from_certificate(&CertificateDer::from(bytes));
            assert!(id.common_name.is_none());
        }
    }
}
