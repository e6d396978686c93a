//! The meaning of a `remote` target (LANGUAGE.md §8), shared by every host.
//!
//! A script evaluates `TARGET` to a peer name, a list of names (tried in order) or a map
//! `{peer: ..}` / `{peers: [..]}` with optional `context` and `timeout_ms`. [`HopTarget::parse`]
//! turns that value into a plan; hosts (the in-process cluster, the QUIC node) carry it out and
//! report failures with the error kinds defined here.
//!
//! Invariants:
//! - A malformed target is a `TypeError`/`ValueError` raised in the caller; nothing is sent.
//! - Failover moves to the next peer only on [`FAILOVER_KINDS`]; any other failure (a thrown
//!   value, a runtime error, `MissingNative`, `LimitExceeded`) ends the hop at once.

use crate::blob::{BlobHash, FunctionId};
use crate::interp::{ExecError, RemoteFailure, StartError, TraceFrame};
use crate::portable::Portable;
use crate::store::CodeStore;
use std::time::Duration;

/// Error kinds after which the next peer of a list is tried, and `else` runs when all failed.
pub const FAILOVER_KINDS: &[&str] = &["Unreachable", "Disconnected", "Refused", "Timeout"];

/// The default execution context on every node.
pub const DEFAULT_CONTEXT: &str = "default";

/// Where and how a hop runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HopTarget {
    /// Peer names in the order they are tried; never empty.
    pub peers: Vec<String>,
    pub context: String,
    pub timeout: Option<Duration>,
}

/// Why a target value is not a valid target; raised in the caller as `(kind, message)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetError {
    pub kind: &'static str,
    pub message: String,
}

fn type_error(message: impl Into<String>) -> TargetError {
    TargetError {
        kind: "TypeError",
        message: message.into(),
    }
}

fn names(list: &[Portable]) -> Result<Vec<String>, TargetError> {
    let peers = list
        .iter()
        .map(|p| match p {
            Portable::Str(s) => Ok(s.clone()),
            other => Err(type_error(format!(
                "a peer name must be a string, got {}",
                kind_of(other)
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if peers.is_empty() {
        return Err(TargetError {
            kind: "ValueError",
            message: "the peer list is empty".into(),
        });
    }
    Ok(peers)
}

fn kind_of(p: &Portable) -> &'static str {
    match p {
        Portable::Nil => "nil",
        Portable::Bool(_) => "bool",
        Portable::Int(_) => "int",
        Portable::Float(_) => "float",
        Portable::Str(_) => "string",
        Portable::Bytes(_) => "bytes",
        Portable::List(_) => "list",
        Portable::Map(_) => "map",
        Portable::Range(..) => "range",
        Portable::Function { .. } => "function",
    }
}

impl HopTarget {
    /// Reads a target value.
    pub fn parse(target: &Portable) -> Result<HopTarget, TargetError> {
        let mut plan = HopTarget {
            peers: Vec::new(),
            context: DEFAULT_CONTEXT.into(),
            timeout: None,
        };
        match target {
            Portable::Str(name) => plan.peers.push(name.clone()),
            Portable::List(list) => plan.peers = names(list)?,
            Portable::Map(entries) => {
                for (key, value) in entries {
                    let Portable::Str(key) = key else {
                        return Err(type_error("target map keys must be strings"));
                    };
                    match (key.as_str(), value) {
                        ("peer", Portable::Str(name)) => plan.peers = vec![name.clone()],
                        ("peers", Portable::List(list)) => plan.peers = names(list)?,
                        ("context", Portable::Str(context)) => plan.context = context.clone(),
                        ("timeout_ms", Portable::Int(ms)) if *ms >= 0 => {
                            plan.timeout = Some(Duration::from_millis(*ms as u64))
                        }
                        ("timeout_ms", Portable::Int(_)) => {
                            return Err(TargetError {
                                kind: "ValueError",
                                message: "timeout_ms must not be negative".into(),
                            })
                        }
                        ("peer" | "peers" | "context" | "timeout_ms", other) => {
                            return Err(type_error(format!(
                                "target `{key}` cannot be {}",
                                kind_of(other)
                            )))
                        }
                        _ => {
                            return Err(TargetError {
                                kind: "ValueError",
                                message: format!("unknown target key `{key}`"),
                            })
                        }
                    }
                }
                if plan.peers.is_empty() {
                    return Err(TargetError {
                        kind: "ValueError",
                        message: "a target map needs `peer` or `peers`".into(),
                    });
                }
            }
            other => {
                return Err(type_error(format!(
                    "a remote target must be a string, list or map, got {}",
                    kind_of(other)
                )))
            }
        }
        Ok(plan)
    }
}

/// Whether a failure of this kind moves on to the next peer (and finally to `else`).
pub fn is_failover_kind(kind: &str) -> bool {
    FAILOVER_KINDS.contains(&kind)
}

/// The error map a host reports for a failed hop: `{"kind", "message", "peer"}`.
pub fn hop_error(kind: &str, message: impl Into<String>, peer: &str) -> Portable {
    Portable::Map(vec![
        (Portable::Str("kind".into()), Portable::Str(kind.into())),
        (
            Portable::Str("message".into()),
            Portable::Str(message.into()),
        ),
        (Portable::Str("peer".into()), Portable::Str(peer.into())),
    ])
}

/// The `kind` of an error map, if the value is one.
pub fn error_kind(error: &Portable) -> Option<&str> {
    let Portable::Map(entries) = error else {
        return None;
    };
    entries.iter().find_map(|(k, v)| match (k, v) {
        (Portable::Str(k), Portable::Str(v)) if k == "kind" => Some(v.as_str()),
        _ => None,
    })
}

/// What the caller of a hop sees when the body failed on `peer`.
#[derive(Clone, Debug, PartialEq)]
pub enum BodyFailure {
    /// The hop's own deadline (`timeout_ms`) stopped the body: a `Timeout`, which fails over.
    Timeout(Portable),
    /// Any other failure, reported to the caller as is.
    Failed(RemoteFailure),
}

/// Maps the error that ended a remote body on `peer` to what its caller sees (LANGUAGE.md §8,
/// §9.7–9.8), the same way for every host:
/// - a host-granted limit hit because the hop's deadline passed (`hop_timed_out`) is a
///   `Timeout`;
/// - any other host-granted limit is `LimitExceeded`, keeping the remote trace;
/// - anything else (a thrown value, a runtime error — which already carries `"peer"`) reaches
///   the caller unchanged, with every trace frame marked as having run on `peer` unless an
///   inner hop marked it already.
pub fn body_failure(error: ExecError, peer: &str, hop_timed_out: bool) -> BodyFailure {
    match error.limit {
        Some(_) if hop_timed_out => BodyFailure::Timeout(hop_error(
            "Timeout",
            format!("hop to `{peer}` timed out"),
            peer,
        )),
        Some(limit) => BodyFailure::Failed(RemoteFailure {
            error: hop_error(
                "LimitExceeded",
                format!("peer `{peer}` stopped the body: {}", limit.name()),
                peer,
            ),
            trace: error.trace,
        }),
        None => {
            let mut trace = error.trace;
            for frame in &mut trace {
                frame.peer.get_or_insert_with(|| peer.to_owned());
            }
            BodyFailure::Failed(RemoteFailure {
                error: error.error,
                trace,
            })
        }
    }
}

/// The error a hop reports when its body could not even start on `peer`: `MissingNative`
/// for a native the peer lacks, `Refused` for anything else (missing or invalid code).
pub fn start_failure(error: &StartError, peer: &str) -> Portable {
    match error {
        StartError::MissingNative(name) => hop_error(
            "MissingNative",
            format!("peer `{peer}` has no native `{name}`"),
            peer,
        ),
        other => hop_error("Refused", other.to_string(), peer),
    }
}

/// How a stack frame travels in a wire error: `NAME (FILE:LINE:COL)`, then ` [on PEER]` when
/// it ran on a peer, then ` @HASH.MEMBER+PC` when its code position is known.
pub fn trace_line(frame: &TraceFrame) -> String {
    let mut line = frame.to_string();
    if let Some((func, pc)) = &frame.code {
        line.push_str(&format!(" @{func}+{pc}"));
    }
    line
}

/// Reads a line written by [`trace_line`]. Never fails: a line in another form (from a
/// different implementation) becomes a frame whose function is the whole line.
pub fn parse_trace_line(line: &str) -> TraceFrame {
    let fallback = || TraceFrame {
        function: line.to_owned(),
        file: String::new(),
        line: 0,
        col: 0,
        peer: None,
        code: None,
    };
    let (line, code) = match line
        .rsplit_once(" @")
        .and_then(|(rest, at)| Some((rest, parse_code(at)?)))
    {
        Some((rest, code)) => (rest, Some(code)),
        None => (line, None),
    };
    let (rest, peer) = match line.strip_suffix(']').and_then(|l| l.rsplit_once(" [on ")) {
        Some((rest, peer)) => (rest, Some(peer.to_owned())),
        None => (line, None),
    };
    let Some((function, place)) = rest.strip_suffix(')').and_then(|r| r.rsplit_once(" (")) else {
        return fallback();
    };
    let mut parts = place.rsplitn(3, ':');
    let (Some(col), Some(lineno), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
        return fallback();
    };
    let (Ok(col), Ok(lineno)) = (col.parse(), lineno.parse()) else {
        return fallback();
    };
    TraceFrame {
        function: function.to_owned(),
        file: file.to_owned(),
        line: lineno,
        col,
        peer,
        code,
    }
}

/// `HASH.MEMBER+PC`.
fn parse_code(text: &str) -> Option<(FunctionId, u32)> {
    let (func, pc) = text.split_once('+')?;
    let (hash, member) = func.split_once('.')?;
    let func = FunctionId {
        blob: BlobHash::from_hex(hash)?,
        member: member.parse().ok()?,
    };
    Some((func, pc.parse().ok()?))
}

/// Names the frames a peer could not: a peer receives blobs without debug info, but the
/// caller that shipped them holds it, so it fills in function names and source positions
/// from its own store for every frame whose code position it knows.
pub fn symbolize(frames: &mut [TraceFrame], store: &CodeStore) {
    for frame in frames.iter_mut().filter(|f| f.file == "<unknown>") {
        let Some((func, pc)) = frame.code else {
            continue;
        };
        let Some(debug) = store
            .debug(&func.blob)
            .and_then(|d| d.functions.get(func.member as usize))
        else {
            continue;
        };
        frame.function = debug.name.clone().unwrap_or_else(|| "<anonymous>".into());
        frame.file = debug.file.clone();
        if let Some(&(line, col)) = debug.positions.get(pc as usize) {
            (frame.line, frame.col) = (line, col);
        }
    }
}

impl std::fmt::Display for TraceFrame {
    /// `NAME (FILE:LINE:COL)`, plus ` [on PEER]` for a frame that ran on a peer.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}:{}:{})",
            self.function, self.file, self.line, self.col
        )?;
        if let Some(peer) = &self.peer {
            write!(f, " [on {peer}]")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Portable {
        Portable::Str(text.into())
    }

    #[test]
    fn parses_every_target_form() {
        assert_eq!(HopTarget::parse(&s("a")).unwrap().peers, vec!["a"]);
        let list = Portable::List(vec![s("x"), s("y")]);
        assert_eq!(HopTarget::parse(&list).unwrap().peers, vec!["x", "y"]);
        let map = Portable::Map(vec![
            (s("peers"), list),
            (s("context"), s("gpu")),
            (s("timeout_ms"), Portable::Int(250)),
        ]);
        let plan = HopTarget::parse(&map).unwrap();
        assert_eq!(
            (plan.context.as_str(), plan.timeout),
            ("gpu", Some(Duration::from_millis(250)))
        );
    }

    #[test]
    fn trace_lines_round_trip() {
        let frame = TraceFrame {
            function: "f".into(),
            file: "a b.skiff".into(),
            line: 3,
            col: 7,
            peer: Some("w1".into()),
            code: Some((
                FunctionId {
                    blob: BlobHash([9; 32]),
                    member: 2,
                },
                17,
            )),
        };
        assert_eq!(parse_trace_line(&trace_line(&frame)), frame);
        let local = TraceFrame {
            peer: None,
            ..frame
        };
        assert_eq!(parse_trace_line(&trace_line(&local)), local);
        assert_eq!(parse_trace_line("odd line").function, "odd line");
    }

    #[test]
    fn rejects_malformed_targets() {
        assert_eq!(
            HopTarget::parse(&Portable::Int(3)).unwrap_err().kind,
            "TypeError"
        );
        assert_eq!(
            HopTarget::parse(&Portable::List(vec![])).unwrap_err().kind,
            "ValueError"
        );
        let no_peer = Portable::Map(vec![(s("context"), s("x"))]);
        assert_eq!(HopTarget::parse(&no_peer).unwrap_err().kind, "ValueError");
        let bad_key = Portable::Map(vec![(s("peer"), s("a")), (s("colour"), s("x"))]);
        assert!(HopTarget::parse(&bad_key)
            .unwrap_err()
            .message
            .contains("colour"));
    }
}
