//! Carrying out one `remote` hop over QUIC: the tokio-side task an execution's
//! `RemoteRequest` becomes.
//!
//! Same semantics as the in-process cluster (`src/cluster.rs`): the peers of the target are
//! tried in order under one deadline (`timeout_ms`); failover happens only on
//! [`skiff_vm::hop::FAILOVER_KINDS`]; the last failure is reported when every peer failed.
//! Transport failures map to `Unreachable` (unknown or unreachable peer), `Refused` (TLS
//! refusal, refused by the peer), `Disconnected` (connection lost mid-call) and `Timeout`.
//!
//! Invariants:
//! - A hop to the name of the peer that sent the current call goes back over the connection
//!   that call came in on (so it works even when that peer accepts no connections).
//! - Dropping the hop's cancel handle (the execution ended or was cancelled) stops the task and
//!   cancels the call in flight on the wire; the callee then cancels its execution.

use super::driver::{DriverCmd, DriverHandle};
use super::vm::VmMsg;
use super::Shared;
use crate::TransportError;
use skiff_vm::hop::{error_kind, hop_error, is_failover_kind, parse_trace_line, HopTarget};
use skiff_vm::{FunctionId, Portable, RemoteFailure};
use skiff_wire::{CallOptions, ErrorKind, RemoteError, Target};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// One hop to carry out.
pub(crate) struct HopJob {
    pub exec: u64,
    pub request: u64,
    pub func: FunctionId,
    pub args: Vec<Portable>,
    pub plan: HopTarget,
    pub hops: Vec<String>,
    pub back: Option<(Arc<str>, DriverHandle)>,
}

pub(crate) async fn run_hop(shared: Arc<Shared>, job: HopJob, cancel: oneshot::Receiver<()>) {
    let (exec, request) = (job.exec, job.request);
    tokio::select! {
        result = attempt_all(&shared, job) => {
            shared.to_vm(VmMsg::HopDone { exec, request, result });
        }
        _ = cancel => {}
    }
}

fn failure(error: Portable) -> RemoteFailure {
    RemoteFailure {
        error,
        trace: Vec::new(),
    }
}

async fn attempt_all(shared: &Arc<Shared>, mut job: HopJob) -> Result<Portable, RemoteFailure> {
    let context = if job.plan.context == skiff_vm::hop::DEFAULT_CONTEXT {
        Portable::Nil
    } else {
        Portable::Str(job.plan.context.clone())
    };
    let mut last = None;
    let peers = std::mem::take(&mut job.plan.peers);
    for (i, peer) in peers.iter().enumerate() {
        // `timeout_ms` bounds each attempt (dial included), as in the in-process cluster.
        let deadline = job.plan.timeout.map(|t| Instant::now() + t);
        if **peer == *shared.name {
            match self_hop(shared, &job, deadline).await {
                Ok(v) => return Ok(v),
                Err(f) => {
                    let failover = error_kind(&f.error).is_some_and(is_failover_kind);
                    last = Some(f);
                    if !failover {
                        break;
                    }
                    continue;
                }
            }
        }
        // The last peer to try takes the arguments (which may be large); an earlier one, which
        // a failover may follow, gets a copy.
        let args = if i + 1 == peers.len() {
            std::mem::take(&mut job.args)
        } else {
            job.args.clone()
        };
        let opts = CallOptions {
            target: Target::Function(job.func),
            args,
            context: context.clone(),
            deadline: None,
            hops: job.hops.clone(),
            tag: 0,
        };
        match call_peer(shared, peer, opts, job.back.as_ref(), deadline).await {
            Ok(v) => return Ok(v),
            Err(f) => {
                let failover = error_kind(&f.error).is_some_and(is_failover_kind);
                last = Some(f);
                if !failover {
                    break;
                }
            }
        }
    }
    Err(last.unwrap_or_else(|| failure(hop_error("Unreachable", "no peer to try", ""))))
}

/// A hop to this node itself runs on its own VM thread, as a new execution whose caller is
/// this node (the in-process cluster does the same). Dropping the future cancels it.
async fn self_hop(
    shared: &Arc<Shared>,
    job: &HopJob,
    deadline: Option<Instant>,
) -> Result<Portable, RemoteFailure> {
    let (tx, rx) = oneshot::channel();
    shared.to_vm(VmMsg::SelfHop {
        func: job.func,
        args: job.args.clone(),
        hops: job.hops.clone(),
        deadline,
        context: job.plan.context.clone(),
        reply: tx,
    });
    // Whether it finished or was dropped, let the VM thread look again (it cancels an
    // execution whose waiter is gone).
    struct WakeOnDrop<'a>(&'a Shared);
    impl Drop for WakeOnDrop<'_> {
        fn drop(&mut self) {
            self.0.to_vm(VmMsg::Wake);
        }
    }
    let _wake = WakeOnDrop(shared);
    let here = &shared.name;
    let result = by_deadline(deadline, here, rx).await?;
    result.unwrap_or_else(|_| Err(failure(hop_error("Disconnected", "the node stopped", here))))
}

/// What a hop to `node` that ran out of time fails with.
fn timed_out(node: &str) -> RemoteFailure {
    failure(hop_error(
        "Timeout",
        format!("hop to `{node}` timed out"),
        node,
    ))
}

/// Awaits `work`, or until `deadline` (if any) passes: then a hop to `node` timed out.
async fn by_deadline<T>(
    deadline: Option<Instant>,
    node: &str,
    work: impl Future<Output = T>,
) -> Result<T, RemoteFailure> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), work)
            .await
            .map_err(|_| timed_out(node)),
        None => Ok(work.await),
    }
}

/// Sends a `Cancel` for a call still in flight when dropped.
struct CancelGuard<'a> {
    driver: &'a DriverHandle,
    token: u64,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.driver.send(DriverCmd::Cancel { token: self.token });
        }
    }
}

/// Runs one call on `peer` (dialling it if needed) and maps every failure to a hop error.
pub(crate) async fn call_peer(
    shared: &Arc<Shared>,
    peer: &str,
    mut opts: CallOptions,
    back: Option<&(Arc<str>, DriverHandle)>,
    deadline: Option<Instant>,
) -> Result<Portable, RemoteFailure> {
    let driver = match back {
        Some((name, d)) if **name == *peer && d.is_live() => d.clone(),
        // A warm call finds its driver here, with no dial's future built and awaited.
        _ => match shared.live_driver(peer) {
            Some(d) => d,
            None => by_deadline(deadline, peer, shared.dial(peer))
                .await?
                .map_err(|e| failure(transport_failure(&e, peer)))?,
        },
    };
    if let Some(d) = deadline {
        let left = d.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(peer));
        }
        opts.deadline = Some(left);
    }
    let token = shared.next_token();
    let mut guard = CancelGuard {
        driver: &driver,
        token,
        armed: true,
    };
    let result = driver.call(token, opts).await;
    guard.armed = false;
    match result {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(remote_failure(e, peer)),
        None => Err(failure(hop_error(
            "Disconnected",
            format!("connection to `{peer}` lost"),
            peer,
        ))),
    }
}

/// A dial failure as a hop error.
pub(crate) fn transport_failure(e: &TransportError, peer: &str) -> Portable {
    let kind = match e {
        TransportError::TlsRefused { .. }
        | TransportError::AlpnMismatch { .. }
        | TransportError::TlsFailed { .. } => "Refused",
        TransportError::ConnectionLost(_) | TransportError::Stream(_) => "Disconnected",
        TransportError::Timeout { .. } => "Unreachable",
        _ => "Unreachable",
    };
    hop_error(kind, e.to_string(), peer)
}

/// A wire error from `peer` as what the script sees: a thrown value or runtime error map as
/// sent (with the remote trace), everything else as a typed hop error.
pub(crate) fn remote_failure(e: RemoteError, peer: &str) -> RemoteFailure {
    let trace = e.trace.iter().map(|l| parse_trace_line(l)).collect();
    let kind = match &e.kind {
        ErrorKind::Thrown => {
            return RemoteFailure {
                error: e.value,
                trace,
            }
        }
        ErrorKind::Runtime if e.value != Portable::Nil => {
            return RemoteFailure {
                error: e.value,
                trace,
            }
        }
        ErrorKind::Runtime => "RuntimeError",
        ErrorKind::Refused | ErrorKind::NotFound => "Refused",
        ErrorKind::MissingBlobs | ErrorKind::HashMismatch | ErrorKind::VerifyFailed => "Refused",
        ErrorKind::Limit => "LimitExceeded",
        ErrorKind::DeadlineExceeded => "Timeout",
        ErrorKind::Cancelled | ErrorKind::ConnectionLost | ErrorKind::Protocol => "Disconnected",
        ErrorKind::Other(_) => "Disconnected",
    };
    let message = match kind {
        "Timeout" => format!("hop to `{peer}` timed out"),
        _ => format!("peer `{peer}`: {}", e.message),
    };
    RemoteFailure {
        error: hop_error(kind, message, peer),
        trace,
    }
}
