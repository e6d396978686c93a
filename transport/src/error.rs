//! The transport's typed errors, and the mapping from quinn's errors to them.
//!
//! A failed dial must say *why* in a way the caller can act on: a peer that does not answer,
//! a certificate refused (by us or by the peer), a protocol (ALPN) mismatch, a timeout, or a
//! connection that was up and went away. quinn reports TLS failures as QUIC `CRYPTO_ERROR`
//! codes (0x100 + TLS alert); [`classify`] turns those into [`TransportError::TlsRefused`] /
//! [`TransportError::AlpnMismatch`], recording which side refused.
//!
//! Invariant: every error carries only data that is safe to log (no key material); reason
//! strings coming from the peer are passed through lossily-decoded and length-capped.

use std::fmt;
use std::time::Duration;

use crate::tls::TlsError;

/// Which side of the connection refused the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// This node refused the peer (e.g. the peer's certificate does not match our pin).
    Local,
    /// The peer refused this node (e.g. it does not accept our client certificate).
    Remote,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Local => "this node",
            Side::Remote => "the peer",
        })
    }
}

/// Why a certificate was refused, from the TLS alert that ended the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertRefusal {
    /// The certificate is not trusted: fingerprint not pinned / not the pin, or otherwise
    /// rejected (TLS alerts `bad_certificate`, `certificate_unknown`, `access_denied`,
    /// `unsupported_certificate`).
    NotTrusted,
    /// The certificate is not issued by a trusted CA (`unknown_ca`).
    UnknownCa,
    /// No client certificate was presented (`certificate_required`).
    Missing,
    /// Expired or not yet valid (`certificate_expired`) or revoked (`certificate_revoked`).
    Expired,
    /// A handshake signature failed to verify (`decrypt_error`).
    BadSignature,
    /// Generic `handshake_failure`.
    HandshakeFailure,
}

/// Errors of the transport layer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The name is not in the peer table.
    #[error("unknown peer `{0}`")]
    UnknownPeer(String),
    /// The peer could not be reached: its host did not resolve, it has no usable address, or
    /// nothing answered the handshake in time (UDP gives no "connection refused").
    #[error("peer `{peer}` ({addr}) unreachable: {reason}")]
    Unreachable {
        /// Peer name (or server name dialled).
        peer: String,
        /// Address as configured or resolved.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// A certificate was refused during the TLS handshake.
    #[error("TLS refused by {by} ({refusal:?}, alert {alert}): {reason}")]
    TlsRefused {
        /// Who refused.
        by: Side,
        /// The kind of refusal.
        refusal: CertRefusal,
        /// The TLS alert code.
        alert: u8,
        /// Human-readable detail.
        reason: String,
    },
    /// The peers share no ALPN protocol (not `skiff/2` on both sides).
    #[error("ALPN mismatch (refused by {by}): {reason}")]
    AlpnMismatch {
        /// Who refused.
        by: Side,
        /// Human-readable detail.
        reason: String,
    },
    /// Some other TLS handshake failure (protocol error, unsupported parameters, ...).
    #[error("TLS handshake failed ({by}, alert {alert}): {reason}")]
    TlsFailed {
        /// Who failed the handshake.
        by: Side,
        /// The TLS alert code.
        alert: u8,
        /// Human-readable detail.
        reason: String,
    },
    /// The peer answered but the operation did not finish in time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What timed out.
        what: &'static str,
        /// The limit.
        after: Duration,
    },
    /// An established (or establishing) connection went away: closed by either side, reset,
    /// idle timeout, protocol violation.
    #[error("connection lost: {0}")]
    ConnectionLost(quinn::ConnectionError),
    /// A stream failed while the connection stayed up (reset, stopped, finished early).
    #[error("stream failed: {0}")]
    Stream(String),
    /// The local endpoint is closed.
    #[error("endpoint closed")]
    EndpointClosed,
    /// Invalid configuration or argument (bad server name, bad transport option, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Socket I/O failed (bind, local address).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Clones keep an I/O error's kind and message, not the OS error object. (The connection
/// manager hands one dial failure to every caller that waited for that dial.)
impl Clone for TransportError {
    fn clone(&self) -> Self {
        use TransportError as E;
        match self {
            E::UnknownPeer(p) => E::UnknownPeer(p.clone()),
            E::Unreachable { peer, addr, reason } => E::Unreachable {
                peer: peer.clone(),
                addr: addr.clone(),
                reason: reason.clone(),
            },
            E::TlsRefused {
                by,
                refusal,
                alert,
                reason,
            } => E::TlsRefused {
                by: *by,
                refusal: *refusal,
                alert: *alert,
                reason: reason.clone(),
            },
            E::AlpnMismatch { by, reason } => E::AlpnMismatch {
                by: *by,
                reason: reason.clone(),
            },
            E::TlsFailed { by, alert, reason } => E::TlsFailed {
                by: *by,
                alert: *alert,
                reason: reason.clone(),
            },
            E::Timeout { what, after } => E::Timeout {
                what,
                after: *after,
            },
            E::ConnectionLost(e) => E::ConnectionLost(e.clone()),
            E::Stream(s) => E::Stream(s.clone()),
            E::EndpointClosed => E::EndpointClosed,
            E::Config(s) => E::Config(s.clone()),
            E::Tls(e) => E::Tls(e.clone()),
            E::Io(e) => E::Io(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

impl TransportError {
    /// The TLS alert behind a TLS refusal / failure / ALPN mismatch, if any.
    pub fn tls_alert(&self) -> Option<u8> {
        match self {
            TransportError::TlsRefused { alert, .. } | TransportError::TlsFailed { alert, .. } => {
                Some(*alert)
            }
            TransportError::AlpnMismatch { .. } => Some(ALERT_NO_APPLICATION_PROTOCOL),
            _ => None,
        }
    }

    /// Whether retrying the same dial later could succeed (the peer may come up, the network
    /// may recover). TLS refusals and ALPN mismatches are configuration problems: no.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TransportError::Unreachable { .. }
                | TransportError::Timeout { .. }
                | TransportError::ConnectionLost(_)
                | TransportError::Stream(_)
        )
    }
}

const ALERT_NO_APPLICATION_PROTOCOL: u8 = 120;
const MAX_REASON: usize = 512;

/// The TLS alert encoded in a QUIC `CRYPTO_ERROR` transport error code (0x100..=0x1ff).
fn crypto_alert(code: quinn::TransportErrorCode) -> Option<u8> {
    let raw = u64::from(code);
    if (0x100..=0x1ff).contains(&raw) {
        u8::try_from(raw - 0x100).ok()
    } else {
        None
    }
}

fn from_alert(alert: u8, by: Side, reason: String) -> TransportError {
    let refusal = match alert {
        ALERT_NO_APPLICATION_PROTOCOL => return TransportError::AlpnMismatch { by, reason },
        40 => CertRefusal::HandshakeFailure,
        42 | 43 | 46 | 49 => CertRefusal::NotTrusted,
        44 | 45 => CertRefusal::Expired,
        48 => CertRefusal::UnknownCa,
        51 => CertRefusal::BadSignature,
        116 => CertRefusal::Missing,
        _ => return TransportError::TlsFailed { alert, by, reason },
    };
    TransportError::TlsRefused {
        by,
        refusal,
        alert,
        reason,
    }
}

fn cap(mut s: String) -> String {
    if s.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Map a quinn connection error to a [`TransportError`]: TLS alerts become
/// [`TransportError::TlsRefused`] / [`TransportError::AlpnMismatch`] /
/// [`TransportError::TlsFailed`] (locally raised errors are [`Side::Local`], a peer's
/// `CONNECTION_CLOSE` is [`Side::Remote`]); everything else is
/// [`TransportError::ConnectionLost`].
pub fn classify(err: quinn::ConnectionError) -> TransportError {
    match &err {
        quinn::ConnectionError::TransportError(te) => match crypto_alert(te.code) {
            Some(alert) => from_alert(alert, Side::Local, cap(te.reason.clone())),
            None => TransportError::ConnectionLost(err),
        },
        quinn::ConnectionError::ConnectionClosed(close) => match crypto_alert(close.error_code) {
            Some(alert) => from_alert(
                alert,
                Side::Remote,
                cap(String::from_utf8_lossy(&close.reason).into_owned()),
            ),
            None => TransportError::ConnectionLost(err),
        },
        _ => TransportError::ConnectionLost(err),
    }
}

impl From<quinn::ConnectionError> for TransportError {
    fn from(err: quinn::ConnectionError) -> Self {
        classify(err)
    }
}

impl From<quinn::WriteError> for TransportError {
    fn from(err: quinn::WriteError) -> Self {
        match err {
            quinn::WriteError::ConnectionLost(e) => classify(e),
            other => TransportError::Stream(other.to_string()),
        }
    }
}

impl From<quinn::ReadError> for TransportError {
    fn from(err: quinn::ReadError) -> Self {
        match err {
            quinn::ReadError::ConnectionLost(e) => classify(e),
            other => TransportError::Stream(other.to_string()),
        }
    }
}

impl From<quinn::ReadExactError> for TransportError {
    fn from(err: quinn::ReadExactError) -> Self {
        match err {
            quinn::ReadExactError::ReadError(e) => e.into(),
            other => TransportError::Stream(other.to_string()),
        }
    }
}

impl From<quinn::ReadToEndError> for TransportError {
    fn from(err: quinn::ReadToEndError) -> Self {
        match err {
            quinn::ReadToEndError::Read(e) => e.into(),
            other => TransportError::Stream(other.to_string()),
        }
    }
}

impl From<quinn::ClosedStream> for TransportError {
    fn from(err: quinn::ClosedStream) -> Self {
        TransportError::Stream(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_map_to_kinds() {
        let local = |alert: u8| {
            classify(quinn::ConnectionError::TransportError(
                quinn::TransportErrorCode::crypto(alert).into(),
            ))
        };
        assert!(matches!(
            local(48),
            TransportError::TlsRefused {
                by: Side::Local,
                refusal: CertRefusal::UnknownCa,
                alert: 48,
                ..
            }
        ));
        assert!(matches!(
            local(120),
            TransportError::AlpnMismatch {
                by: Side::Local,
                ..
            }
        ));
        assert!(matches!(
            local(80),
            TransportError::TlsFailed { alert: 80, .. }
        ));
        assert!(matches!(
            classify(quinn::ConnectionError::TimedOut),
            TransportError::ConnectionLost(quinn::ConnectionError::TimedOut)
        ));
        assert_eq!(local(116).tls_alert(), Some(116));
        assert!(!local(116).is_transient());
    }

    #[test]
    fn reasons_are_capped_on_char_boundaries() {
        let s = "é".repeat(MAX_REASON);
        let c = cap(s);
        assert!(c.len() <= MAX_REASON);
        assert!(c.chars().all(|ch| ch == 'é'));
    }
}
