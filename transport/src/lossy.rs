//! A UDP socket that loses datagrams on purpose, for loss-tolerance tests.
//!
//! [`LossySocket`] wraps any quinn [`AsyncUdpSocket`] and drops a configurable fraction of
//! outgoing and/or incoming datagrams, decided by a seeded PRNG (SplitMix64), so a test can
//! say "10% loss" and QUIC's recovery has to do the rest. Build an endpoint on it with
//! [`crate::Endpoint::bind_lossy`] (or any `quinn::Endpoint::new_with_abstract_socket`).
//!
//! Invariants:
//! - A dropped outgoing datagram is reported as sent (`Ok`), exactly like a datagram lost in
//!   the network; a dropped incoming datagram is never shown to quinn.
//! - Drops are per datagram, also inside GRO batches (received batches are compacted in
//!   place); the socket advertises one segment per transmit so quinn never builds GSO
//!   batches for it.
//! - The same seed gives the same drop decisions for the same sequence of datagrams; with
//!   concurrent senders the interleaving (and so the exact datagrams hit) may vary, the rate
//!   does not.
//! - A loss fraction is clamped to `[0, 1]`; NaN means no loss.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};

/// How much to lose.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossConfig {
    /// Fraction of outgoing datagrams dropped, 0.0..=1.0.
    pub outgoing: f64,
    /// Fraction of incoming datagrams dropped, 0.0..=1.0.
    pub incoming: f64,
    /// PRNG seed.
    pub seed: u64,
}

impl LossConfig {
    /// Drop `fraction` of datagrams in both directions.
    pub fn symmetric(fraction: f64, seed: u64) -> Self {
        Self {
            outgoing: fraction,
            incoming: fraction,
            seed,
        }
    }

    /// Drop `fraction` of outgoing datagrams only.
    pub fn outgoing(fraction: f64, seed: u64) -> Self {
        Self {
            outgoing: fraction,
            incoming: 0.0,
            seed,
        }
    }
}

/// Counters of a [`LossySocket`], shared with whoever holds the handle.
#[derive(Debug, Default)]
pub struct LossStats {
    sent: AtomicU64,
    dropped_out: AtomicU64,
    received: AtomicU64,
    dropped_in: AtomicU64,
}

impl LossStats {
    /// Outgoing datagrams handed to the real socket.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
    /// Outgoing datagrams dropped.
    pub fn dropped_outgoing(&self) -> u64 {
        self.dropped_out.load(Ordering::Relaxed)
    }
    /// Incoming datagrams passed to quinn.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
    /// Incoming datagrams dropped.
    pub fn dropped_incoming(&self) -> u64 {
        self.dropped_in.load(Ordering::Relaxed)
    }
}

/// A datagram-dropping wrapper around a quinn socket.
pub struct LossySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    /// Drop when `next_random() < threshold`; 0 = never, u64::MAX ≈ always.
    out_threshold: u64,
    in_threshold: u64,
    config: LossConfig,
    rng: AtomicU64,
    stats: Arc<LossStats>,
}

impl fmt::Debug for LossySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LossySocket")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish()
    }
}

/// Maximum batches of fully dropped datagrams drained in one `poll_recv` before yielding.
const MAX_DRAIN: usize = 64;

fn threshold(fraction: f64) -> u64 {
    if fraction.is_nan() || fraction <= 0.0 {
        0
    } else if fraction >= 1.0 {
        u64::MAX
    } else {
        // Exact enough: 2^64 * fraction, below 2^64 since fraction < 1.
        (fraction * 18_446_744_073_709_551_616.0) as u64
    }
}

impl LossySocket {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, config: LossConfig) -> Self {
        Self {
            inner,
            out_threshold: threshold(config.outgoing),
            in_threshold: threshold(config.incoming),
            config,
            rng: AtomicU64::new(config.seed),
            stats: Arc::new(LossStats::default()),
        }
    }

    /// Bind a UDP socket on `addr` and wrap it, using quinn's tokio runtime (must be called
    /// inside a tokio runtime).
    pub fn bind(addr: SocketAddr, config: LossConfig) -> io::Result<Arc<Self>> {
        let socket = std::net::UdpSocket::bind(addr)?;
        let inner = quinn::TokioRuntime.wrap_udp_socket(socket)?;
        Ok(Arc::new(Self::new(inner, config)))
    }

    /// The shared counters.
    pub fn stats(&self) -> Arc<LossStats> {
        self.stats.clone()
    }

    /// The configuration.
    pub fn config(&self) -> LossConfig {
        self.config
    }

    /// SplitMix64 over an atomic counter: lock-free and deterministic per call sequence.
    fn next_random(&self) -> u64 {
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn drop_now(&self, threshold: u64) -> bool {
        threshold != 0 && self.next_random() < threshold
    }

    fn send_one(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if self.drop_now(self.out_threshold) {
            self.stats.dropped_out.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.inner.try_send(transmit)?;
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Drop datagrams from the first `n` received batches; returns how many batches remain
    /// (moved to the front of `bufs` / `meta`).
    fn filter_received(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
        n: usize,
    ) -> usize {
        let n = n.min(bufs.len()).min(meta.len());
        let mut kept = 0;
        for i in 0..n {
            let m = meta[i];
            let Some(data) = bufs[i].get_mut(..m.len) else {
                continue;
            };
            let stride = if m.stride == 0 { m.len } else { m.stride };
            let mut read = 0;
            let mut write = 0;
            while read < m.len {
                let seg = stride.min(m.len - read);
                if self.drop_now(self.in_threshold) {
                    self.stats.dropped_in.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    if read != write {
                        data.copy_within(read..read + seg, write);
                    }
                    write += seg;
                }
                read += seg;
            }
            if write > 0 {
                meta[i].len = write;
                if kept != i {
                    meta.swap(kept, i);
                    bufs.swap(kept, i);
                }
                kept += 1;
            }
        }
        kept
    }
}

impl AsyncUdpSocket for LossySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        match transmit.segment_size {
            Some(seg) if seg > 0 && transmit.contents.len() > seg => {
                // Defensive: quinn does not batch for us (max_transmit_segments is 1). On
                // WouldBlock mid-batch quinn resends the whole batch; duplicates are harmless
                // in QUIC.
                for chunk in transmit.contents.chunks(seg) {
                    self.send_one(&Transmit {
                        destination: transmit.destination,
                        ecn: transmit.ecn,
                        contents: chunk,
                        segment_size: None,
                        src_ip: transmit.src_ip,
                    })?;
                }
                Ok(())
            }
            _ => self.send_one(transmit),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        for _ in 0..MAX_DRAIN {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            if self.in_threshold == 0 {
                self.stats.received.fetch_add(n as u64, Ordering::Relaxed);
                return Poll::Ready(Ok(n));
            }
            let kept = self.filter_received(bufs, meta, n);
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
        // Everything drained so far was dropped; let others run, then come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(-1.0), 0);
        assert_eq!(threshold(f64::NAN), 0);
        assert_eq!(threshold(1.0), u64::MAX);
        assert_eq!(threshold(2.0), u64::MAX);
        let half = threshold(0.5);
        assert!(half > u64::MAX / 2 - 1000 && half < u64::MAX / 2 + 1000);
    }

    #[tokio::test]
    async fn drop_rate_is_close_to_configured() {
        let socket =
            LossySocket::bind("127.0.0.1:0".parse().unwrap(), LossConfig::outgoing(0.1, 7))
                .unwrap();
        let hits = (0..100_000)
            .filter(|_| socket.drop_now(socket.out_threshold))
            .count();
        assert!((9_000..11_000).contains(&hits), "{hits}");
    }

    #[tokio::test]
    async fn receive_filter_compacts_gro_batches() {
        let socket = LossySocket::bind(
            "127.0.0.1:0".parse().unwrap(),
            LossConfig {
                outgoing: 0.0,
                incoming: 0.5,
                seed: 3,
            },
        )
        .unwrap();
        // Three batches: segments of 10, 10, 5 bytes (GRO), one lone datagram, 4 x 4 bytes.
        let originals: Vec<Vec<u8>> = vec![
            (0..25).collect(),
            (100..107).collect(),
            (200..216).collect(),
        ];
        let strides = [10usize, 7, 4];
        let mut storage: Vec<Vec<u8>> = originals
            .iter()
            .map(|o| {
                let mut b = o.clone();
                b.resize(64, 0xee);
                b
            })
            .collect();
        let mut metas: Vec<RecvMeta> = originals
            .iter()
            .zip(strides)
            .map(|(o, stride)| RecvMeta {
                len: o.len(),
                stride,
                ..RecvMeta::default()
            })
            .collect();
        let segments_in: usize = originals
            .iter()
            .zip(strides)
            .map(|(o, s)| o.len().div_ceil(s))
            .sum();
        let mut bufs: Vec<IoSliceMut<'_>> =
            storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let kept = socket.filter_received(&mut bufs, &mut metas, 3);
        let stats = socket.stats();
        assert_eq!(
            (stats.received() + stats.dropped_incoming()) as usize,
            segments_in
        );
        assert!(stats.dropped_incoming() > 0 && stats.received() > 0);
        // Every kept segment is an original segment, in order, with its original length.
        let all_segments: Vec<Vec<u8>> = originals
            .iter()
            .zip(strides)
            .flat_map(|(o, s)| o.chunks(s).map(<[u8]>::to_vec).collect::<Vec<_>>())
            .collect();
        let mut cursor = 0;
        let mut seen = 0;
        for (buf, meta) in bufs.iter().zip(&metas).take(kept) {
            assert!(meta.len > 0);
            for seg in buf[..meta.len].chunks(meta.stride) {
                let at = all_segments[cursor..]
                    .iter()
                    .position(|s| s == seg)
                    .expect("kept bytes are an original segment");
                cursor += at + 1;
                seen += 1;
            }
        }
        assert_eq!(seen as u64, stats.received());
    }

    #[tokio::test]
    async fn same_seed_same_decisions() {
        let a = LossySocket::bind(
            "127.0.0.1:0".parse().unwrap(),
            LossConfig::outgoing(0.3, 42),
        )
        .unwrap();
        let b = LossySocket::bind(
            "127.0.0.1:0".parse().unwrap(),
            LossConfig::outgoing(0.3, 42),
        )
        .unwrap();
        let da: Vec<bool> = (0..1000).map(|_| a.drop_now(a.out_threshold)).collect();
        let db: Vec<bool> = (0..1000).map(|_| b.drop_now(b.out_threshold)).collect();
        assert_eq!(da, db);
    }
}
