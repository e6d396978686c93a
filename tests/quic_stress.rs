//! Stress tests of the QUIC node over real loopback connections (set-up shared with
//! `quic_node.rs` in `common/`):
//!
//! - **Loss**: `main`'s endpoint sits on a seeded [`skiff_transport::LossySocket`] dropping
//!   10% of the datagrams it sends and 10% of those it receives, so every datagram between
//!   the two nodes crosses exactly one 10% filter. 1000 calls of an exported function take a
//!   distinct 1 MiB bytes argument each (above the sidecar threshold, and distinct so the
//!   sidecar dedup cannot skip any) and return its length and SHA-256, checked against the
//!   digest computed here; 16 calls are in flight at a time. Both nodes use BBR
//!   ([`Congestion::Bbr`]), which took 51 s here in a debug build on 2 cores; under CUBIC,
//!   the default, the same test passes too but took 381 s (each loss shrinks the window),
//!   too long for every CI run. Then [`LONE_CALLS`] calls one at a time, each its
//!   connection's only call, whose caller reads the answer itself: every one must be
//!   answered, each but a few read by its caller.
//! - **Concurrency**: 10⁴ calls started at once. The callee's wire limit on calls in flight
//!   per connection (`max_calls_in_flight`, default 128; excess calls are refused with
//!   `LimitExceeded`) and the QUIC stream limit are raised to admit all of them, and each
//!   call sleeps so they overlap on the callee. Every call must get its own correct result;
//!   the callee's counters must return to zero; the growth of the process's peak RSS
//!   (`VmHWM`, reset first through `/proc/self/clear_refs`) must stay under
//!   [`RSS_GROWTH_BOUND`].
//!
//! The tests run one at a time (a shared lock) so the memory measure sees one test only.
//! Timings and measures are printed (`cargo test --test quic_stress -- --nocapture`).

mod common;

use bytes::Bytes;
use common::{cluster, compile, shutdown, Setup};
use skiff::node::{Node, NodeError};
use skiff::Portable;
use skiff_transport::{Congestion, LossConfig};
use skiff_vm::fuzz::Rng;
use skiff_vm::BlobHash;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// One test at a time, so the peak-RSS measure is not another test's.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Calls over the lossy link.
const LOSSY_CALLS: usize = 1000;
/// Size of each call's bytes argument.
const PAYLOAD: usize = 1 << 20;
/// Lossy calls in flight at a time.
const LOSSY_CONCURRENCY: usize = 16;
/// Calls over the lossy link one at a time, after the concurrent ones.
const LONE_CALLS: usize = 200;
/// Size of each lone call's bytes argument (above the sidecar threshold).
const LONE_PAYLOAD: usize = 100 << 10;
/// Fraction of datagrams lost, each direction.
const LOSS: f64 = 0.10;

/// Calls started at once.
const CONCURRENT_CALLS: usize = 10_000;
/// How long each of them sleeps on the callee (so they overlap there).
const CALL_SLEEP_MS: i64 = 200;
/// Bound on the growth of the peak RSS while the 10⁴ calls run.
const RSS_GROWTH_BOUND: u64 = 512 << 20;

/// A whole call's limit: generous, a failure here is a lost call, not slowness.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Drops a node that was shared with call tasks (all finished by now).
async fn shutdown_shared(node: Arc<Node>) {
    match Arc::try_unwrap(node) {
        Ok(node) => node.shutdown().await,
        Err(_) => panic!("a call task still holds the node"),
    }
}

/// Waits (up to 10 s) until `node` serves nothing.
async fn wait_idle(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.counters().calls_active > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// 1 MiB of deterministic noise; call `i` overwrites the first 8 bytes with `i`.
fn base_payload() -> Vec<u8> {
    let mut rng = Rng::new(0x2545_F491_4F6C_DD1D);
    (0..PAYLOAD).map(|_| rng.next_u64() as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_loss_still_completes_1000_calls_with_a_1_mib_sidecar() {
    let _serial = SERIAL.lock().await;
    let setup = Setup {
        tweak: |name, config| {
            if name == "main" {
                config.loss = Some(LossConfig::symmetric(LOSS, 0x5eed));
            }
            // A loss-tolerant controller: the same retransmission work, minutes less waiting
            // for CUBIC's window to recover (see the module doc).
            config.transport.congestion = Congestion::Bbr;
        },
        ..Setup::default()
    };
    let mut nodes = cluster(&["a"], setup).await;
    let a = nodes.pop().unwrap();
    let main = Arc::new(nodes.pop().unwrap());
    a.load(&compile("fn digest(data) { [len(data), sha256(data)] }"))
        .await
        .unwrap();

    let base = Arc::new(base_payload());
    let t0 = Instant::now();
    let mut calls = JoinSet::new();
    let mut next = 0usize;
    let mut done = 0usize;
    let mut seen = HashSet::new();
    loop {
        while next < LOSSY_CALLS && calls.len() < LOSSY_CONCURRENCY {
            let (main, base, i) = (main.clone(), base.clone(), next);
            calls.spawn(async move {
                let mut data = base.to_vec();
                data[..8].copy_from_slice(&(i as u64).to_le_bytes());
                let want = digest_of(&data);
                let got = call_digest(&main, data).await;
                (i, want, got)
            });
            next += 1;
        }
        let Some(joined) = calls.join_next().await else {
            break;
        };
        let (i, want, got) = joined.unwrap();
        let got = got.unwrap_or_else(|e| panic!("call {i} failed: {e}"));
        assert_eq!(got, want, "call {i}");
        assert!(seen.insert(i));
        done += 1;
    }
    let elapsed = t0.elapsed();
    assert_eq!(done, LOSSY_CALLS);

    let loss = main.loss_stats().expect("main is lossy");
    let wire = main.stats("a").unwrap();
    eprintln!(
        "{LOSSY_CALLS} calls x {} KiB at {:.0}% loss, {LOSSY_CONCURRENCY} in flight: {elapsed:?}; \
         datagrams sent {} dropped {}, received {} dropped {}; sidecar bytes sent {}",
        PAYLOAD >> 10,
        LOSS * 100.0,
        loss.sent(),
        loss.dropped_outgoing(),
        loss.received(),
        loss.dropped_incoming(),
        wire.sidecar_bytes_sent,
    );
    assert!(
        loss.dropped_outgoing() > 0,
        "no outgoing datagram was dropped"
    );
    assert!(
        loss.dropped_incoming() > 0,
        "no incoming datagram was dropped"
    );
    // Roughly the configured rate (thousands of datagrams each way).
    let out_rate = loss.dropped_outgoing() as f64 / (loss.sent() + loss.dropped_outgoing()) as f64;
    assert!(
        (0.07..0.13).contains(&out_rate),
        "outgoing loss rate {out_rate}"
    );
    // Every payload crossed the lossy link in full: no sidecar was deduplicated away.
    assert!(
        wire.sidecar_bytes_sent >= (LOSSY_CALLS * PAYLOAD) as u64,
        "{wire:?}"
    );

    // One at a time: the lone call's stream wakes its caller, lost datagrams and all.
    let read_before = main.counters().answers_read_by_caller;
    for i in 0..LONE_CALLS {
        let data = vec![i as u8; LONE_PAYLOAD];
        let want = digest_of(&data);
        let got = call_digest(&main, data).await;
        assert_eq!(
            got.unwrap_or_else(|e| panic!("lone call {i} failed: {e}")),
            want
        );
    }
    let read = main.counters().answers_read_by_caller - read_before;
    eprintln!(
        "{LONE_CALLS} lone calls at {:.0}% loss: {read} answers read by their caller",
        LOSS * 100.0
    );
    assert!(read as usize >= LONE_CALLS / 2, "{read} of {LONE_CALLS}");

    wait_idle(&a).await;
    let c = a.counters();
    assert_eq!(
        (c.calls_served, c.calls_cancelled, c.calls_active),
        ((LOSSY_CALLS + LONE_CALLS) as u64, 0, 0)
    );
    shutdown_shared(main).await;
    shutdown(vec![a]).await;
}

/// `main`'s call of `a`'s `digest(data)`.
async fn call_digest(main: &Node, data: Vec<u8>) -> Result<Portable, NodeError> {
    let arg = Portable::Bytes(Bytes::from(data));
    main.call("a", "digest", vec![arg], Some(CALL_TIMEOUT))
        .await
}

/// What `digest(data)` answers: the length and SHA-256 of `data`, computed here.
fn digest_of(data: &[u8]) -> Portable {
    Portable::List(vec![
        Portable::Int(data.len() as i64),
        Portable::Bytes(Bytes::copy_from_slice(&BlobHash::of(data).0)),
    ])
}

/// `VmRSS` or `VmHWM` of this process, in bytes.
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: u64 = line
        .trim_start_matches(field)
        .trim_start_matches(':')
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib << 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_calls_complete_with_none_lost_and_bounded_memory() {
    let _serial = SERIAL.lock().await;
    let setup = Setup {
        tweak: |_, config| {
            // Admit every call at once: the wire's per-connection limit and QUIC's stream
            // limit (one bidirectional stream per call).
            let room = CONCURRENT_CALLS + 64;
            config.wire.limits.max_calls_in_flight = room;
            config.transport.max_concurrent_bidi_streams = room as u32;
        },
        ..Setup::default()
    };
    let mut nodes = cluster(&["a"], setup).await;
    let a = Arc::new(nodes.pop().unwrap());
    let main = Arc::new(nodes.pop().unwrap());
    a.load(&compile(&format!(
        "fn work(i) {{ sleep({CALL_SLEEP_MS}); [i, i * i] }}"
    )))
    .await
    .unwrap();
    // Warm up: connection, hello, code.
    let v = main
        .call("a", "work", vec![Portable::Int(-1)], Some(CALL_TIMEOUT))
        .await
        .unwrap();
    assert_eq!(v, Portable::List(vec![Portable::Int(-1), Portable::Int(1)]));

    // Reset the peak RSS to the current RSS (Linux >= 4.0), so VmHWM below is this phase's.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let rss_before = proc_status_bytes("VmRSS");
    let peak_active = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (a, peak_active, sampling) = (a.clone(), peak_active.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak_active.fetch_max(a.counters().calls_active, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let t0 = Instant::now();
    let mut calls = JoinSet::new();
    for i in 0..CONCURRENT_CALLS as i64 {
        let main = main.clone();
        calls.spawn(async move {
            let got = main
                .call("a", "work", vec![Portable::Int(i)], Some(CALL_TIMEOUT))
                .await;
            (i, got)
        });
    }
    let started = t0.elapsed();
    let mut seen = HashSet::new();
    while let Some(joined) = calls.join_next().await {
        let (i, got) = joined.unwrap();
        let got = got.unwrap_or_else(|e| panic!("call {i} failed: {e}"));
        assert_eq!(
            got,
            Portable::List(vec![Portable::Int(i), Portable::Int(i * i)]),
            "call {i}"
        );
        assert!(seen.insert(i), "call {i} answered twice");
    }
    let elapsed = t0.elapsed();
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    assert_eq!(seen.len(), CONCURRENT_CALLS, "calls lost");

    let rss_after = proc_status_bytes("VmRSS");
    let peak = proc_status_bytes("VmHWM");
    let growth = peak.saturating_sub(rss_before);
    let peak_active = peak_active.load(Ordering::Relaxed);
    eprintln!(
        "{CONCURRENT_CALLS} concurrent calls ({CALL_SLEEP_MS} ms each): all started in \
         {started:?}, all done in {elapsed:?}; peak executions on the callee {peak_active}; \
         RSS before {} MiB, after {} MiB, peak {} MiB (peak reset: {reset})",
        rss_before >> 20,
        rss_after >> 20,
        peak >> 20,
    );
    assert!(
        growth < RSS_GROWTH_BOUND,
        "peak RSS grew by {} MiB (bound {} MiB)",
        growth >> 20,
        RSS_GROWTH_BOUND >> 20
    );
    // Far more calls overlapped on the callee than the default limit of 128 would allow.
    assert!(peak_active > 128, "peak executions {peak_active}");

    wait_idle(&a).await;
    let c = a.counters();
    assert_eq!(
        (c.calls_served, c.calls_cancelled, c.calls_active),
        (CONCURRENT_CALLS as u64 + 1, 0, 0)
    );
    let wire = main.stats("a").unwrap();
    assert_eq!(wire.error_replies_sent, 0, "{wire:?}");
    shutdown_shared(main).await;
    shutdown_shared(a).await;
}
