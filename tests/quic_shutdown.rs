//! Graceful shutdown over real loopback QUIC: a call in flight finishes within the grace
//! period and its caller gets the right result; a call still running when the grace period
//! ends is cut and its caller promptly gets a `Disconnected` error saying the node shut
//! down; a new call after shutdown began is `Refused`.

mod common;

use common::{cluster, compile, run, s, shutdown, Setup};
use skiff::node::{Node, ShutdownReport};
use skiff::Portable;
use std::time::{Duration, Instant};

/// `main` calls `w` (which sleeps `ms`) and reports `[kind, message]` or the value.
fn call_source(ms: u64) -> String {
    format!(
        r#"try {{ remote("w") [] {{ sleep({ms}); "done" }} }} catch e {{ [e.kind, e.message] }}"#
    )
}

async fn shutdown_after(w: Node, delay: Duration, grace: Duration) -> (ShutdownReport, Duration) {
    tokio::time::sleep(delay).await;
    let t0 = Instant::now();
    let report = w.shutdown_with(grace).await;
    (report, t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_finishes_within_the_grace_period_and_new_calls_are_refused() {
    let mut nodes = cluster(&["w"], Setup::default()).await;
    let w = nodes.remove(1);
    let main = &nodes[0];
    // Warm the connection so the timings below measure the shutdown, not the dial.
    assert_eq!(
        run(main, r#"remote("w") [] { here() }"#).await.unwrap(),
        s("w")
    );
    let late = compile(
        r#"fn late() { try { remote("w") [] { "ran" } } catch e { [e.kind, e.message] } }"#,
    );
    main.load(&late).await.unwrap();
    let source = call_source(300);
    let t0 = Instant::now();
    let (in_flight, newcomer, (report, took)) = tokio::join!(
        run(main, &source),
        async {
            // Shutdown starts at ~100 ms; this call arrives during the grace period.
            tokio::time::sleep(Duration::from_millis(180)).await;
            main.run_export("late", Vec::new()).await
        },
        shutdown_after(w, Duration::from_millis(100), Duration::from_secs(5)),
    );
    assert_eq!(in_flight.unwrap(), s("done"));
    let newcomer = newcomer.unwrap();
    let Portable::List(items) = &newcomer else {
        panic!("{newcomer:?}")
    };
    assert_eq!(items[0], s("Refused"), "{newcomer:?}");
    let Portable::Str(message) = &items[1] else {
        panic!("{newcomer:?}")
    };
    assert!(message.contains("shutting down"), "{message}");
    assert_eq!(
        report,
        ShutdownReport {
            drained: true,
            cancelled: 0
        }
    );
    // The shutdown waited for the call (≈200 ms left), not for the whole grace period.
    assert!(took < Duration::from_millis(2000), "shutdown took {took:?}");
    assert!(t0.elapsed() < Duration::from_millis(2500));
    // Afterwards `w` is gone: a call fails with a failover kind.
    let after = run(main, r#"try { remote("w") [] { 1 } } catch e { e.kind }"#)
        .await
        .unwrap();
    assert!(
        [s("Unreachable"), s("Disconnected")].contains(&after),
        "{after:?}"
    );
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_outliving_the_grace_period_is_cut_with_a_clear_error() {
    let mut nodes = cluster(&["w"], Setup::default()).await;
    let w = nodes.remove(1);
    let main = &nodes[0];
    let source = call_source(10_000);
    let t0 = Instant::now();
    let (cut, (report, took)) = tokio::join!(
        run(main, &source),
        shutdown_after(w, Duration::from_millis(100), Duration::from_millis(200)),
    );
    let elapsed = t0.elapsed();
    let cut = cut.unwrap();
    let Portable::List(items) = &cut else {
        panic!("{cut:?}")
    };
    assert_eq!(items[0], s("Disconnected"), "{cut:?}");
    let Portable::Str(message) = &items[1] else {
        panic!("{cut:?}")
    };
    assert!(
        message.contains("node `w` shut down before the call finished"),
        "{message}"
    );
    assert_eq!(
        report,
        ShutdownReport {
            drained: false,
            cancelled: 1
        }
    );
    // Cut at the 200 ms grace, answered at once: far from the 10 s sleep.
    assert!(elapsed < Duration::from_millis(2000), "took {elapsed:?}");
    assert!(took < Duration::from_millis(1800), "shutdown took {took:?}");
    shutdown(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_back_of_an_execution_in_flight_is_still_served_during_the_grace_period() {
    // main → w → v, and v calls back w while w is shutting down: the call-back belongs to
    // w's execution in flight (its hop chain passes through w), so it is served.
    let mut nodes = cluster(&["w", "v"], Setup::default()).await;
    let w = nodes.remove(1);
    let main = &nodes[0];
    let source =
        r#"remote("w") [] { remote("v") [] { sleep(300); remote(caller()) [] { here() } } }"#;
    let (v, (report, took)) = tokio::join!(
        run(main, source),
        shutdown_after(w, Duration::from_millis(100), Duration::from_secs(5)),
    );
    assert_eq!(v.unwrap(), s("w"));
    assert_eq!(
        report,
        ShutdownReport {
            drained: true,
            cancelled: 0
        }
    );
    assert!(took < Duration::from_millis(2000), "shutdown took {took:?}");
    shutdown(nodes).await;
}
