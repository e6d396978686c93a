//! The quinn streams of one connection, owned and polled by the connection's driver task.
//!
//! Every read and write is a future in one of two `FuturesUnordered` sets that the driver
//! polls beside its other inputs: a stream costs no task of its own and a chunk no channel
//! hop, and only the futures whose stream was woken are polled again. Each future owns its
//! stream and hands it back when it completes.
//!
//! Invariants:
//! - A stream has at most one read and one write in flight; bytes queued for a stream are
//!   written in the order they were queued, and its `fin` after every byte queued before it.
//! - A stream whose write failed (the peer stopped or reset it, the connection went away) is
//!   forgotten: nothing more is written to it, and its read side reports the end to the wire.
//! - Dropping a `SendStream` finishes it (quinn), so a forgotten idle stream is finished.

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use skiff_wire::StreamId;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

type Boxed<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a stream delivered.
pub(super) enum Input {
    Data(StreamId, Bytes),
    Fin(StreamId),
    Reset(StreamId),
}

/// Most chunks one read takes from a stream (quinn hands them over under one lock; a bulk
/// transfer arrives as one chunk per datagram).
const READ_BATCH: usize = 32;

/// A completed read: the stream back, and what it gave (`Some(n)`: the first `n` chunks).
type Read = (
    StreamId,
    quinn::RecvStream,
    [Bytes; READ_BATCH],
    Result<Option<usize>, ()>,
);

/// A completed write: the stream back, and whether every byte was accepted.
struct Written {
    id: StreamId,
    send: quinn::SendStream,
    ok: bool,
    fin: bool,
}

/// The send side of one stream.
struct Outbox {
    /// `None` while a write is in flight (its future holds the stream).
    send: Option<quinn::SendStream>,
    queue: VecDeque<Bytes>,
    /// Finish the stream once the queue is written.
    fin: bool,
}

#[derive(Default)]
pub(super) struct Streams {
    reads: FuturesUnordered<Boxed<Read>>,
    writes: FuturesUnordered<Boxed<Written>>,
    outboxes: HashMap<StreamId, Outbox>,
}

impl Streams {
    /// Adopts a stream: starts reading it; [`Streams::write`] writes to it.
    pub fn add(&mut self, id: StreamId, send: quinn::SendStream, recv: quinn::RecvStream) {
        self.read(id, recv);
        self.outboxes.insert(
            id,
            Outbox {
                send: Some(send),
                queue: VecDeque::new(),
                fin: false,
            },
        );
    }

    /// Whether `id` can still be written to.
    pub fn is_writable(&self, id: StreamId) -> bool {
        self.outboxes.get(&id).is_some_and(|o| !o.fin)
    }

    /// Queues `data` for `id`, then finishes it if `fin`. A stream that is not writable
    /// ([`Streams::is_writable`]) ignores it.
    pub fn write(&mut self, id: StreamId, data: Bytes, fin: bool) {
        let Some(outbox) = self.outboxes.get_mut(&id).filter(|o| !o.fin) else {
            return;
        };
        if !data.is_empty() {
            outbox.queue.push_back(data);
        }
        outbox.fin = fin;
        self.start_write(id);
    }

    /// Collects the inputs that are ready (at least one, else `Pending`; once `max` or more
    /// are collected, no further stream is read), completing the writes that are ready on
    /// the way.
    pub fn poll_inputs(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<Input>,
        max: usize,
    ) -> Poll<()> {
        while let Poll::Ready(Some(written)) = self.writes.poll_next_unpin(cx) {
            self.written(written);
        }
        while out.len() < max {
            let Poll::Ready(Some((id, recv, chunks, result))) = self.reads.poll_next_unpin(cx)
            else {
                break;
            };
            match result {
                Ok(Some(n)) => {
                    self.read(id, recv);
                    out.extend(chunks.into_iter().take(n).map(|c| Input::Data(id, c)));
                }
                Ok(None) => out.push(Input::Fin(id)),
                Err(()) => out.push(Input::Reset(id)),
            }
        }
        if out.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Writes what is still queued or in flight (the connection is being closed), without
    /// reading any more.
    pub async fn flush_writes(mut self) {
        self.reads.clear();
        while let Some(written) = self.writes.next().await {
            self.written(written);
        }
    }

    fn read(&mut self, id: StreamId, mut recv: quinn::RecvStream) {
        self.reads.push(Box::pin(async move {
            let mut chunks: [Bytes; READ_BATCH] = Default::default();
            let result = recv.read_chunks(&mut chunks).await.map_err(|_| ());
            (id, recv, chunks, result)
        }));
    }

    fn start_write(&mut self, id: StreamId) {
        let Some(outbox) = self.outboxes.get_mut(&id) else {
            return;
        };
        let Some(mut send) = outbox.send.take() else {
            return; // a write is in flight; it continues with the queue when done
        };
        let fin = outbox.fin;
        if outbox.queue.is_empty() {
            if fin {
                let _ = send.finish();
                self.outboxes.remove(&id);
            } else {
                outbox.send = Some(send);
            }
            return;
        }
        let mut chunks: Vec<Bytes> = outbox.queue.drain(..).collect();
        self.writes.push(Box::pin(async move {
            let ok = send.write_all_chunks(&mut chunks).await.is_ok();
            Written { id, send, ok, fin }
        }));
    }

    fn written(&mut self, w: Written) {
        let Some(outbox) = self.outboxes.get_mut(&w.id) else {
            return;
        };
        if !w.ok {
            self.outboxes.remove(&w.id);
            return;
        }
        outbox.send = Some(w.send);
        if w.fin && outbox.queue.is_empty() {
            if let Some(mut send) = outbox.send.take() {
                let _ = send.finish();
            }
            self.outboxes.remove(&w.id);
        } else {
            self.start_write(w.id);
        }
    }
}
