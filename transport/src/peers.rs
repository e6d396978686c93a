//! The peer table: which nodes this node knows, where they are, how they are trusted.
//!
//! A peer has a **name** (a DNS-name-shaped label, also the TLS server name dialled and, in CA
//! mode, the DNS name its certificate must carry), an **address** kept as the configured
//! `host:port` text and resolved only when dialling (so DNS changes are picked up on re-dial),
//! and a **trust**: a pinned certificate fingerprint, or, without a pin, the table's CA.
//!
//! # Flag form
//!
//! `NAME=HOST:PORT[#PIN]`, e.g. `alice=127.0.0.1:4433#3f2a…` (PIN is the 64-hex-digit
//! fingerprint printed by `skiff cert`) or `bob=bob.example.org:4433` (trusted through the
//! CA). HOST may be a name, an IPv4 literal or a bracketed IPv6 literal (`[::1]:4433`).
//!
//! # TOML file
//!
//! ```toml
//! # Optional: CA certificate (PEM) trusting every peer that has no pin. A relative path is
//! # resolved against the directory of this file.
//! ca = "ca.pem"
//!
//! [peers.alice]
//! addr = "127.0.0.1:4433"
//! pin = "3f2a...64 hex digits..."     # optional; without it the CA must be set
//!
//! [peers.bob]
//! addr = "bob.example.org:4433"
//! ship_code = false                   # optional permissions, see below
//!
//! # Optional: permissions of clients without their own (listed or not).
//! [defaults]
//! call_exported = true                # call exported functions by name
//! ship_code = true                    # run shipped code (`remote` bodies)
//! natives = ["db_get"]                # host natives shipped code may use (absent: all)
//! ```
//!
//! A peer's permission keys override `[defaults]` one by one; what neither sets is allowed
//! (the [`Permissions::default`] of an embedded node). Unknown keys are errors (a typo must
//! not silently weaken trust).
//!
//! Invariants: every peer in a table has a valid name and a syntactically valid address;
//! [`PeerTable::trust`] never returns CA trust for a pinned peer, and fails rather than
//! falling back to "trust anything" when a peer has no pin and the table has no CA.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use rustls::pki_types::CertificateDer;
use serde::Deserialize;

use crate::tls::{ClientAuth, Fingerprint, PeerIdentity, TlsError, Trust};

/// Errors parsing or using the peer table.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Bad `NAME=HOST:PORT[#PIN]` text.
    #[error("bad peer `{input}`: {reason} (expected NAME=HOST:PORT[#PIN])")]
    BadFlag {
        /// The input (capped).
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// Bad peer name.
    #[error("bad peer name `{0}`: must be a DNS name (letters, digits, `-`, `.`)")]
    BadName(String),
    /// Bad address.
    #[error("bad address `{addr}` for peer `{peer}`: {reason}")]
    BadAddr {
        /// The peer.
        peer: String,
        /// The address.
        addr: String,
        /// What is wrong.
        reason: String,
    },
    /// The TOML file did not parse.
    #[error("peer file: {0}")]
    Toml(String),
    /// A fingerprint or CA certificate did not load.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A peer has no pin and the table has no CA.
    #[error("peer `{0}` has no pin and no CA is configured")]
    NoTrust(String),
    /// No such peer.
    #[error("unknown peer `{0}`")]
    Unknown(String),
}

/// One known peer.
#[derive(Clone, PartialEq, Eq)]
pub struct Peer {
    /// The peer's name.
    pub name: String,
    /// `host:port`, resolved at dial time.
    pub addr: String,
    /// Pinned fingerprint; `None` means trusted through the table's CA.
    pub pin: Option<Fingerprint>,
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Peer {
    /// The flag form, which [`Peer::from_str`] parses back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.addr)?;
        if let Some(pin) = &self.pin {
            write!(f, "#{pin}")?;
        }
        Ok(())
    }
}

impl Peer {
    /// A validated peer.
    pub fn new(name: &str, addr: &str, pin: Option<Fingerprint>) -> Result<Self, PeerError> {
        validate_name(name)?;
        validate_addr(name, addr)?;
        Ok(Self {
            name: name.to_owned(),
            addr: addr.to_owned(),
            pin,
        })
    }

    /// Parse the flag form `NAME=HOST:PORT[#PIN]`.
    pub fn parse_flag(s: &str) -> Result<Self, PeerError> {
        let bad = |reason: &str| PeerError::BadFlag {
            input: s.chars().take(200).collect(),
            reason: reason.to_owned(),
        };
        let (name, rest) = s.split_once('=').ok_or_else(|| bad("missing `=`"))?;
        let (addr, pin) = match rest.split_once('#') {
            Some((addr, pin)) => (addr, Some(pin.parse::<Fingerprint>()?)),
            None => (rest, None),
        };
        if addr.is_empty() {
            return Err(bad("missing HOST:PORT"));
        }
        Self::new(name, addr, pin)
    }
}

impl FromStr for Peer {
    type Err = PeerError;
    fn from_str(s: &str) -> Result<Self, PeerError> {
        Self::parse_flag(s)
    }
}

/// Whether `name` is acceptable as a peer name (a DNS name, not an IP literal).
pub fn is_valid_peer_name(name: &str) -> bool {
    crate::cert::is_valid_node_name(name)
}

fn validate_name(name: &str) -> Result<(), PeerError> {
    if is_valid_peer_name(name) {
        Ok(())
    } else {
        Err(PeerError::BadName(name.chars().take(100).collect()))
    }
}

fn validate_addr(peer: &str, addr: &str) -> Result<(), PeerError> {
    let bad = |reason: &str| PeerError::BadAddr {
        peer: peer.to_owned(),
        addr: addr.chars().take(200).collect(),
        reason: reason.to_owned(),
    };
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| bad("missing `:PORT`"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad("port is not a number 1-65535"))?;
    if port == 0 {
        return Err(bad("port 0"));
    }
    if let Some(inner) = host.strip_prefix('[') {
        let v6 = inner.strip_suffix(']').ok_or_else(|| bad("unclosed `[`"))?;
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad("bad IPv6 literal"))?;
        return Ok(());
    }
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    if host.contains(':') {
        return Err(bad("IPv6 literals must be bracketed: [ADDR]:PORT"));
    }
    if host.parse::<std::net::Ipv4Addr>().is_err()
        && rustls::pki_types::DnsName::try_from(host).is_err()
    {
        return Err(bad("host is neither an IP address nor a DNS name"));
    }
    Ok(())
}

/// What a peer may do on this node. A refused call is answered with a typed `Refused` error
/// and runs nothing.
#[derive(Clone, Debug)]
pub struct Permissions {
    /// Call the exported (top-level) functions of the loaded modules by name.
    pub call_exported: bool,
    /// Ship code (`remote` bodies) and run it here.
    pub ship_code: bool,
    /// Host natives shipped code may use (`None`: all). Builtins are always allowed.
    pub natives: Option<Vec<String>>,
}

impl Default for Permissions {
    fn default() -> Self {
        Permissions {
            call_exported: true,
            ship_code: true,
            natives: None,
        }
    }
}

impl Permissions {
    /// Nothing allowed.
    pub fn none() -> Self {
        Permissions {
            call_exported: false,
            ship_code: false,
            natives: Some(Vec::new()),
        }
    }
}

/// The peer table.
#[derive(Clone, Default)]
pub struct PeerTable {
    peers: BTreeMap<String, Peer>,
    ca: Option<CertificateDer<'static>>,
    /// Permissions the table sets: per peer, and for everyone else.
    permissions: BTreeMap<String, Permissions>,
    default_permissions: Option<Permissions>,
}

impl fmt::Debug for PeerTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTable")
            .field("peers", &self.peers.values().collect::<Vec<_>>())
            .field("ca", &self.ca.as_ref().map(Fingerprint::of_cert))
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    ca: Option<String>,
    #[serde(default)]
    peers: BTreeMap<String, FilePeer>,
    defaults: Option<FilePermissions>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePeer {
    addr: String,
    pin: Option<String>,
    // Permission keys, as in `FilePermissions` (serde cannot flatten a struct into one that
    // denies unknown fields).
    call_exported: Option<bool>,
    ship_code: Option<bool>,
    natives: Option<Vec<String>>,
}

/// Permission keys as written; each one left out is inherited.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FilePermissions {
    call_exported: Option<bool>,
    ship_code: Option<bool>,
    natives: Option<Vec<String>>,
}

impl FilePermissions {
    fn is_empty(&self) -> bool {
        self.call_exported.is_none() && self.ship_code.is_none() && self.natives.is_none()
    }

    /// `base` with the keys written here replaced.
    fn over(self, base: &Permissions) -> Permissions {
        Permissions {
            call_exported: self.call_exported.unwrap_or(base.call_exported),
            ship_code: self.ship_code.unwrap_or(base.ship_code),
            natives: self.natives.or_else(|| base.natives.clone()),
        }
    }
}

impl PeerTable {
    /// An empty table without CA.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the CA trusting peers without a pin.
    pub fn set_ca(&mut self, ca: Option<CertificateDer<'static>>) {
        self.ca = ca;
    }

    /// The CA, if any.
    pub fn ca(&self) -> Option<&CertificateDer<'static>> {
        self.ca.as_ref()
    }

    /// The permissions the table gives named peers (from a TOML file's peer entries).
    pub fn permissions(&self) -> &BTreeMap<String, Permissions> {
        &self.permissions
    }

    /// The permissions the table gives everyone else (a TOML file's `[defaults]`), if set.
    pub fn default_permissions(&self) -> Option<&Permissions> {
        self.default_permissions.as_ref()
    }

    /// Add or replace a peer; returns the previous entry of that name.
    pub fn insert(&mut self, peer: Peer) -> Option<Peer> {
        self.peers.insert(peer.name.clone(), peer)
    }

    /// Remove a peer.
    pub fn remove(&mut self, name: &str) -> Option<Peer> {
        self.peers.remove(name)
    }

    /// Look up a peer.
    pub fn get(&self, name: &str) -> Option<&Peer> {
        self.peers.get(name)
    }

    /// All peers, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Build from flag-form entries (`NAME=HOST:PORT[#PIN]`); a later entry replaces an
    /// earlier one of the same name.
    pub fn from_flags<'a>(
        flags: impl IntoIterator<Item = &'a str>,
        ca: Option<CertificateDer<'static>>,
    ) -> Result<Self, PeerError> {
        let mut table = Self::new();
        table.ca = ca;
        for flag in flags {
            table.insert(Peer::parse_flag(flag)?);
        }
        Ok(table)
    }

    /// Parse the TOML form; a relative `ca` path is resolved against `base_dir`
    /// (the current directory if `None`).
    pub fn from_toml_str(text: &str, base_dir: Option<&Path>) -> Result<Self, PeerError> {
        let form: FileForm = toml::from_str(text).map_err(|e| PeerError::Toml(e.to_string()))?;
        let mut table = Self::new();
        if let Some(ca) = form.ca {
            let path = match base_dir {
                Some(dir) if Path::new(&ca).is_relative() => dir.join(&ca),
                _ => Path::new(&ca).to_path_buf(),
            };
            table.ca = Some(crate::tls::cert_from_pem_file(&path)?);
        }
        let defaults = form.defaults.map(|d| d.over(&Permissions::default()));
        let base = defaults.clone().unwrap_or_default();
        table.default_permissions = defaults;
        for (name, p) in form.peers {
            let permissions = FilePermissions {
                call_exported: p.call_exported,
                ship_code: p.ship_code,
                natives: p.natives,
            };
            if !permissions.is_empty() {
                table
                    .permissions
                    .insert(name.clone(), permissions.over(&base));
            }
            let pin = p
                .pin
                .as_deref()
                .map(str::parse::<Fingerprint>)
                .transpose()?;
            table.insert(Peer::new(&name, &p.addr, pin)?);
        }
        Ok(table)
    }

    /// Read and parse a TOML peer file.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, PeerError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| PeerError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text, path.parent())
    }

    /// How to trust `name` when dialling it: its pin, or the table's CA.
    pub fn trust(&self, name: &str) -> Result<Trust, PeerError> {
        let peer = self
            .get(name)
            .ok_or_else(|| PeerError::Unknown(name.to_owned()))?;
        match (&peer.pin, &self.ca) {
            (Some(pin), _) => Ok(Trust::Pinned(*pin)),
            (None, Some(ca)) => Ok(Trust::Ca(ca.clone())),
            (None, None) => Err(PeerError::NoTrust(name.to_owned())),
        }
    }

    /// The server-side policy accepting exactly this table's peers: every pin, plus the CA's
    /// certificates if a CA is set.
    pub fn client_auth(&self) -> ClientAuth {
        let mut auth = ClientAuth::pinned(self.peers.values().filter_map(|p| p.pin));
        if let Some(ca) = &self.ca {
            auth = auth.with_ca(ca.clone());
        }
        auth
    }

    /// Which peer an authenticated connection comes from: a pinned peer whose pin is the
    /// certificate's fingerprint, or an unpinned peer whose name the certificate carries
    /// *and* whose certificate chains to the table's CA (re-verified here, so a certificate
    /// accepted by an accept-any server cannot claim a CA peer's name). First match by name.
    pub fn identify(&self, id: &PeerIdentity) -> Option<&str> {
        if let Some(p) = self.peers.values().find(|p| p.pin == Some(id.fingerprint)) {
            return Some(&p.name);
        }
        let ca = self.ca.as_ref()?;
        let candidate = self
            .peers
            .values()
            .find(|p| p.pin.is_none() && id.has_name(&p.name))?;
        if chains_to(ca, id) {
            Some(&candidate.name)
        } else {
            None
        }
    }
}

fn chains_to(ca: &CertificateDer<'static>, id: &PeerIdentity) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    if roots.add(ca.clone()).is_err() {
        return false;
    }
    let Ok(verifier) = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        crate::tls::provider(),
    )
    .build() else {
        return false;
    };
    verifier
        .verify_client_cert(
            &id.certificate,
            &id.intermediates,
            rustls::pki_types::UnixTime::now(),
        )
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn flag_form_round_trips() {
        for s in [
            format!("alice=127.0.0.1:4433#{PIN}"),
            "bob=bob.example.org:4433".to_string(),
            "v6=[::1]:9000".to_string(),
            "loc=localhost:1".to_string(),
        ] {
            let p: Peer = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        let p = Peer::parse_flag(&format!("alice=127.0.0.1:4433#{PIN}")).unwrap();
        assert_eq!(p.name, "alice");
        assert_eq!(p.addr, "127.0.0.1:4433");
        assert_eq!(p.pin.unwrap().to_string(), PIN);
    }

    #[test]
    fn flag_form_rejects_garbage() {
        for bad in [
            "",
            "alice",
            "alice=",
            "=1.2.3.4:5",
            "alice=1.2.3.4",
            "alice=1.2.3.4:0",
            "alice=1.2.3.4:70000",
            "alice=::1:4433",
            "alice=[::1:4433",
            "alice=[zz]:4433",
            "alice=:4433",
            "alice=host name:4433",
            "al ice=1.2.3.4:5",
            "alice=1.2.3.4:5#nothex",
            "alice=1.2.3.4:5#",
        ] {
            assert!(Peer::parse_flag(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn toml_form() {
        let text = format!(
            r#"
            [peers.alice]
            addr = "127.0.0.1:4433"
            pin = "{PIN}"

            [peers.bob]
            addr = "bob.example.org:4433"
            "#
        );
        let table = PeerTable::from_toml_str(&text, None).unwrap();
        assert_eq!(table.len(), 2);
        assert!(matches!(table.trust("alice").unwrap(), Trust::Pinned(_)));
        assert!(matches!(table.trust("bob"), Err(PeerError::NoTrust(_))));
        assert!(matches!(table.trust("carol"), Err(PeerError::Unknown(_))));
        assert_eq!(table.client_auth().pins().len(), 1);

        let typo = "[peers.alice]\naddr = \"127.0.0.1:1\"\npni = \"x\"\n";
        assert!(matches!(
            PeerTable::from_toml_str(typo, None),
            Err(PeerError::Toml(_))
        ));
        assert!(PeerTable::from_toml_str("[peers.x]\naddr = \"nope\"", None).is_err());
    }

    #[test]
    fn toml_permissions_override_defaults_key_by_key() {
        let text = format!(
            r#"
            [defaults]
            ship_code = false
            natives = ["db_get"]

            [peers.alice]
            addr = "127.0.0.1:4433"
            pin = "{PIN}"
            ship_code = true

            [peers.bob]
            addr = "127.0.0.1:4434"
            pin = "{PIN}"
            "#
        );
        let table = PeerTable::from_toml_str(&text, None).unwrap();
        let defaults = table.default_permissions().unwrap();
        assert!(defaults.call_exported && !defaults.ship_code);
        assert_eq!(
            defaults.natives.as_deref(),
            Some(&["db_get".to_owned()][..])
        );
        let alice = &table.permissions()["alice"];
        assert!(alice.call_exported && alice.ship_code);
        assert_eq!(alice.natives, defaults.natives);
        assert!(
            !table.permissions().contains_key("bob"),
            "bob takes the defaults"
        );
        let typo = "[defaults]\nship_cod = false\n";
        assert!(matches!(
            PeerTable::from_toml_str(typo, None),
            Err(PeerError::Toml(_))
        ));
        assert!(PeerTable::new().default_permissions().is_none());
    }

    #[test]
    fn identify_pinned_peers() {
        let alice = crate::cert::generate_self_signed("alice").unwrap();
        let other = crate::cert::generate_self_signed("alice").unwrap();
        let mut table = PeerTable::new();
        table.insert(Peer::new("alice", "127.0.0.1:1", Some(alice.fingerprint())).unwrap());
        let id = PeerIdentity::from_certificate(&alice.cert_der);
        assert_eq!(table.identify(&id), Some("alice"));
        // Same name, different key: not alice.
        let id = PeerIdentity::from_certificate(&other.cert_der);
        assert_eq!(table.identify(&id), None);
        assert!(table.client_auth().pins().contains(&alice.fingerprint()));
    }

    #[test]
    fn toml_file_with_relative_ca() {
        let ca = crate::cert::CertificateAuthority::generate("peers test CA").unwrap();
        let dir = std::env::temp_dir().join(format!("skiff-peers-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), &ca.cert().cert_pem).unwrap();
        std::fs::write(
            dir.join("peers.toml"),
            "ca = \"ca.pem\"\n[peers.bob]\naddr = \"localhost:4433\"\n",
        )
        .unwrap();
        let table = PeerTable::from_toml_file(dir.join("peers.toml")).unwrap();
        assert_eq!(
            table.trust("bob").unwrap(),
            Trust::Ca(ca.cert_der().clone())
        );

        // identify: CA-issued cert named bob is bob; a self-signed "bob" is nobody.
        let bob = ca.issue("bob").unwrap();
        let id = PeerIdentity::from_certificate(&bob.cert_der);
        assert_eq!(table.identify(&id), Some("bob"));
        let fake = crate::cert::generate_self_signed("bob").unwrap();
        let id = PeerIdentity::from_certificate(&fake.cert_der);
        assert_eq!(table.identify(&id), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
