//! Where a node's tasks run.
//!
//! A node started with [`super::Node::start`] spawns its tasks (the accept loop's handshakes,
//! one driver per connection, one task per outgoing hop, and quinn's endpoint and connection
//! drivers) on the tokio runtime it was started in. A node started with
//! [`super::Node::start_local`] spawns every one of them on the host's `LocalSet`, beside its
//! VM loop: on a current-thread runtime a packet, the driver that reads it, the execution it
//! starts and the answer are then all local tasks of one set, and waking one from another is
//! a push on the set's own queue. (A runtime task waking a local task instead marks the whole
//! set woken, and the scheduler polls the I/O driver once more before it runs the set.)
//!
//! Invariants:
//! - A local spawner's futures run only while the host drives the set; a future spawned after
//!   the set is gone is dropped, like the set's own tasks.
//! - Spawning is `Send`: hop tasks are spawned from the VM thread, drivers from whichever task
//!   dials or accepts.

use quinn::Runtime;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::task::LocalSet;

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Spawns a node's tasks where the node runs.
#[derive(Clone, Debug)]
pub(crate) enum Spawner {
    /// On this runtime.
    Runtime(tokio::runtime::Handle),
    /// On a `LocalSet`, through a task of that set that spawns what it receives.
    Local(UnboundedSender<Task>),
}

impl Spawner {
    /// A spawner for the runtime the caller runs in.
    pub(crate) fn current() -> Spawner {
        Spawner::Runtime(tokio::runtime::Handle::current())
    }

    /// A spawner for `set`.
    pub(crate) fn local(set: &LocalSet) -> Spawner {
        let (tx, mut rx) = unbounded_channel::<Task>();
        set.spawn_local(async move {
            while let Some(task) = rx.recv().await {
                tokio::task::spawn_local(task);
            }
        });
        Spawner::Local(tx)
    }

    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        match self {
            Spawner::Runtime(handle) => drop(handle.spawn(task)),
            Spawner::Local(tx) => drop(tx.send(Box::pin(task))),
        }
    }

    /// The runtime quinn runs the node's endpoint with: its driver tasks spawned here.
    pub(crate) fn quinn_runtime(&self) -> Arc<dyn quinn::Runtime> {
        match self {
            Spawner::Runtime(_) => Arc::new(quinn::TokioRuntime),
            Spawner::Local(_) => Arc::new(LocalQuinn(self.clone())),
        }
    }
}

/// quinn on a `LocalSet`: tokio's timers and sockets, tasks spawned by a local [`Spawner`].
#[derive(Debug)]
struct LocalQuinn(Spawner);

impl Runtime for LocalQuinn {
    fn new_timer(&self, at: Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        quinn::TokioRuntime.new_timer(at)
    }

    fn spawn(&self, future: Task) {
        self.0.spawn(future);
    }

    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        quinn::TokioRuntime.wrap_udp_socket(socket)
    }
}
