//! Certificate generation and PEM files: what `skiff cert` does.
//!
//! Three kinds of certificate, all with ECDSA P-256 keys (rcgen's default, ring-backed):
//! - a **CA** ([`CertificateAuthority::generate`]): self-signed, `CA:true`, may sign
//!   certificates; used by nodes in CA (mTLS) mode as their trust anchor;
//! - a **node certificate** ([`CertificateAuthority::issue`]): signed by the CA, with the node
//!   name as subject common name and as DNS subject alternative name, usable for both server
//!   and client authentication (a node both listens and dials);
//! - a **dev certificate** ([`generate_self_signed`]): self-signed, same names, trusted by
//!   pinning its [`Fingerprint`].
//!
//! Invariants:
//! - Node names must be valid DNS names: in CA mode the name dialled is checked against the
//!   server certificate's DNS SAN.
//! - Private key files are written with mode 0600 on unix (also when overwriting a file);
//!   certificates with the default mode.
//! - A CA loaded from PEM signs with its own subject and key identifier as found in the
//!   certificate, so issued certificates chain to the original CA certificate.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;

use crate::tls::{Fingerprint, NodeIdentity, TlsError};

/// Default validity of a generated CA certificate, in days.
pub const CA_VALIDITY_DAYS: u32 = 3650;
/// Default validity of a generated node or dev certificate, in days.
pub const NODE_VALIDITY_DAYS: u32 = 825;

/// Errors generating, loading or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The node name cannot be a certificate DNS name.
    #[error("invalid node name `{0}`: must be a DNS name (letters, digits, `-`, `.`)")]
    InvalidName(String),
    /// rcgen failed (bad key, unparseable CA certificate, ...).
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A generated certificate could not be loaded back as a TLS identity.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A generated certificate and its private key.
#[derive(Clone)]
pub struct GeneratedCert {
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// The certificate, PEM (`CERTIFICATE`).
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8 `PRIVATE KEY`). Secret.
    pub key_pem: String,
}

impl GeneratedCert {
    /// The certificate's fingerprint: the pin other nodes configure for it.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of_cert(&self.cert_der)
    }

    /// This certificate and key as a TLS identity.
    pub fn identity(&self) -> Result<NodeIdentity, TlsError> {
        NodeIdentity::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes())
    }

    /// Write the certificate and (mode 0600) key PEM files.
    pub fn write_files(
        &self,
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<(), CertError> {
        write_pem(cert_path.as_ref(), &self.cert_pem, false)?;
        write_pem(key_path.as_ref(), &self.key_pem, true)
    }
}

impl std::fmt::Debug for GeneratedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedCert")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// A CA able to issue node certificates.
pub struct CertificateAuthority {
    /// The CA certificate exactly as generated or loaded (the trust anchor nodes configure).
    cert: GeneratedCert,
    /// rcgen's view of the CA, used only as issuer (subject + key identifier).
    issuer: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("fingerprint", &self.cert.fingerprint())
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new CA with this subject common name, valid [`CA_VALIDITY_DAYS`] from yesterday.
    pub fn generate(common_name: &str) -> Result<Self, CertError> {
        Self::generate_with_days(common_name, CA_VALIDITY_DAYS)
    }

    /// A new CA valid `days` days from yesterday.
    pub fn generate_with_days(common_name: &str, days: u32) -> Result<Self, CertError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = cn_only(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, days);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let generated = GeneratedCert {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(Self {
            cert: generated,
            issuer: cert,
            key,
        })
    }

    /// Load a CA from its PEM certificate and PEM private key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let der = crate::tls::certs_from_pem(cert_pem.as_bytes())?
            .into_iter()
            .next()
            .ok_or(CertError::Rcgen(rcgen::Error::CouldNotParseCertificate))?;
        let params = CertificateParams::from_ca_cert_der(&der)?;
        // Re-signing yields rcgen's issuer view: same subject, same key identifier.
        let issuer = params.self_signed(&key)?;
        Ok(Self {
            cert: GeneratedCert {
                cert_der: der,
                cert_pem: cert_pem.to_owned(),
                key_pem: key.serialize_pem(),
            },
            issuer,
            key,
        })
    }

    /// Load a CA from PEM files.
    pub fn load(
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<Self, CertError> {
        let cert = read_to_string(cert_path.as_ref())?;
        let key = read_to_string(key_path.as_ref())?;
        Self::from_pem(&cert, &key)
    }

    /// The CA certificate and key.
    pub fn cert(&self) -> &GeneratedCert {
        &self.cert
    }

    /// The CA certificate (DER): the trust anchor for [`crate::tls::Trust::Ca`] and
    /// [`crate::tls::ClientAuth::ca`].
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert.cert_der
    }

    /// Issue a node certificate for `node_name` (CN and DNS SAN), valid
    /// [`NODE_VALIDITY_DAYS`] from yesterday, for server and client authentication.
    pub fn issue(&self, node_name: &str) -> Result<GeneratedCert, CertError> {
        self.issue_with_days(node_name, NODE_VALIDITY_DAYS)
    }

    /// [`CertificateAuthority::issue`] with an explicit validity in days.
    pub fn issue_with_days(&self, node_name: &str, days: u32) -> Result<GeneratedCert, CertError> {
        let mut params = node_params(node_name, days)?;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok(GeneratedCert {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Generate a CA (shorthand for [`CertificateAuthority::generate`]).
pub fn generate_ca(common_name: &str) -> Result<CertificateAuthority, CertError> {
    CertificateAuthority::generate(common_name)
}

/// A self-signed dev certificate for `node_name` (CN and DNS SAN), valid
/// [`NODE_VALIDITY_DAYS`] from yesterday. Peers trust it by pinning its fingerprint.
pub fn generate_self_signed(node_name: &str) -> Result<GeneratedCert, CertError> {
    generate_self_signed_with_days(node_name, NODE_VALIDITY_DAYS)
}

/// [`generate_self_signed`] with an explicit validity in days.
pub fn generate_self_signed_with_days(
    node_name: &str,
    days: u32,
) -> Result<GeneratedCert, CertError> {
    let params = node_params(node_name, days)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(GeneratedCert {
        cert_der: cert.der().clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Whether `name` can be a node name (a DNS name usable as TLS server name and SAN).
pub fn is_valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.parse::<std::net::IpAddr>().is_err()
        && rustls::pki_types::DnsName::try_from(name).is_ok()
}

fn node_params(node_name: &str, days: u32) -> Result<CertificateParams, CertError> {
    if !is_valid_node_name(node_name) {
        return Err(CertError::InvalidName(
            node_name.chars().take(100).collect(),
        ));
    }
    let mut params = CertificateParams::new(vec![node_name.to_owned()])?;
    params.distinguished_name = cn_only(node_name);
    params.is_ca = IsCa::NoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    set_validity(&mut params, days);
    Ok(params)
}

fn cn_only(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Valid from yesterday (tolerates small clock skew) for `days` days.
fn set_validity(params: &mut CertificateParams, days: u32) {
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(today - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_from_days(today + i64::from(days));
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

fn read_to_string(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Write a PEM file. `private` files get mode 0600 on unix, also when the file existed.
pub fn write_pem(path: &Path, pem: &str, private: bool) -> Result<(), CertError> {
    let io_err = |source| CertError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        // An existing file keeps its mode on open: tighten it before writing the secret.
        if path.exists() {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(io_err)?;
        }
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(io_err)?;
    std::io::Write::write_all(&mut file, pem.as_bytes()).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::PeerIdentity;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
    }

    #[test]
    fn node_cert_names_and_identity() {
        let ca = CertificateAuthority::generate("Skiff Test CA").unwrap();
        let node = ca.issue("alice.skiff").unwrap();
        let id = PeerIdentity::from_certificate(&node.cert_der);
        assert_eq!(id.common_name.as_deref(), Some("alice.skiff"));
        assert_eq!(id.dns_names, vec!["alice.skiff".to_string()]);
        assert!(id.has_name("ALICE.skiff"));
        assert_eq!(id.fingerprint, node.fingerprint());
        node.identity().unwrap();

        let dev = generate_self_signed("bob").unwrap();
        let id = PeerIdentity::from_certificate(&dev.cert_der);
        assert_eq!(id.common_name.as_deref(), Some("bob"));
        assert_eq!(id.dns_names, vec!["bob".to_string()]);
    }

    #[test]
    fn invalid_names_refused() {
        for bad in ["", "has space", "127.0.0.1", "bad/slash", "-"] {
            assert!(
                matches!(generate_self_signed(bad), Err(CertError::InvalidName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ca_reload_from_pem_issues_chaining_certs() {
        let ca = CertificateAuthority::generate("Reload CA").unwrap();
        let reloaded =
            CertificateAuthority::from_pem(&ca.cert().cert_pem, &ca.cert().key_pem).unwrap();
        assert_eq!(reloaded.cert_der(), ca.cert_der());
        let node = reloaded.issue("carol").unwrap();
        // The issued certificate must verify against the *original* CA certificate.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            crate::tls::provider(),
        )
        .build()
        .unwrap();
        verifier
            .verify_client_cert(&node.cert_der, &[], rustls::pki_types::UnixTime::now())
            .unwrap();
    }

    #[test]
    fn files_round_trip_with_private_key_mode() {
        let dir = std::env::temp_dir().join(format!("skiff-cert-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert_path = dir.join("node.pem");
        let key_path = dir.join("node.key");
        // Pre-create the key file world-readable: writing must tighten it.
        std::fs::write(&key_path, "old").unwrap();
        let dev = generate_self_signed("dave").unwrap();
        dev.write_files(&cert_path, &key_path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let id = NodeIdentity::from_pem_files(&cert_path, &key_path).unwrap();
        assert_eq!(id.fingerprint(), dev.fingerprint());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
