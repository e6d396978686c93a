//! Nodes whose VM loop is a task of the host's `LocalSet` (`Node::start_local`): everything a
//! node does runs on the thread that drives the set, here a current-thread runtime, over real
//! QUIC on 127.0.0.1.

mod common;

use common::{check_nested_hops, cluster, cluster_on, compile, shutdown, Setup};
use skiff::Portable;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};
use std::time::Duration;
use tokio::task::LocalSet;

/// Runs `test` on a current-thread runtime inside a `LocalSet` it is given.
fn on_one_thread<F: std::future::Future<Output = ()>>(test: impl FnOnce(Rc<LocalSet>) -> F) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = Rc::new(LocalSet::new());
    local.block_on(&rt, test(local.clone()));
}

/// How many threads of this process are a node's VM thread (`skiff-vm-NAME`).
fn vm_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .filter(|name| name.starts_with("skiff-vm-"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn local_nodes_hop_and_answer_without_a_thread_of_their_own() {
    on_one_thread(|local| async move {
        let nodes = cluster_on(&["a", "b"], Setup::default(), Some(&local)).await;
        check_nested_hops(&nodes[0]).await;
        let module = compile("fn add(x, y) { x + y }");
        nodes[1].load(&module).await.unwrap();
        let sum = nodes[0]
            .call("a", "add", vec![Portable::Int(40), Portable::Int(2)], None)
            .await
            .unwrap();
        assert_eq!(sum, Portable::Int(42));
        // Every task of theirs (quinn's drivers included) is a task of the set, not of the
        // runtime: on this thread, none wakes another through the runtime's scheduler.
        let on_runtime = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        assert_eq!(on_runtime, 0, "local nodes spawn no runtime task");
        if cfg!(target_os = "linux") {
            assert_eq!(vm_threads(), 0, "local nodes start no VM thread");
            // The same check sees the thread of a node started the default way.
            let threaded = cluster(&[], Setup::default()).await;
            // A round trip through its VM loop: the thread has named itself by then.
            threaded[0].context_names().await.unwrap();
            assert_eq!(vm_threads(), 1);
            shutdown(threaded).await;
        }
        shutdown(nodes).await;
    });
}

#[test]
fn a_large_value_hashed_while_sent_crosses_between_local_nodes() {
    // No retain budget: the sender hashes the sidecar on the runtime's blocking pool while
    // it writes it, and the receiver checks that hash before the call runs.
    on_one_thread(|local| async move {
        let setup = Setup {
            tweak: |_, config| config.wire.sidecar_retain_bytes = 0,
            ..Setup::default()
        };
        let nodes = cluster_on(&["a"], setup, Some(&local)).await;
        nodes[1]
            .load(&compile("fn size(data) { len(data) }"))
            .await
            .unwrap();
        let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
        for _ in 0..2 {
            let arg = Portable::Bytes(data.clone().into());
            let size = nodes[0].call("a", "size", vec![arg], None).await.unwrap();
            assert_eq!(size, Portable::Int(8 << 20));
        }
        let stats = nodes[0].stats("a").unwrap();
        assert_eq!(stats.sidecar_bytes_sent, 16 << 20, "{stats:?}");
        assert_eq!(stats.sidecar_bytes_hashed, 16 << 20, "{stats:?}");
        shutdown(nodes).await;
    });
}

#[test]
fn a_long_execution_does_not_hold_up_other_calls_on_its_thread() {
    on_one_thread(|local| async move {
        let nodes = cluster_on(&["a"], Setup::default(), Some(&local)).await;
        let module = compile("fn spin() { while true { } }\nfn echo(x) { x }");
        nodes[1].load(&module).await.unwrap();
        let main = &nodes[0];
        {
            let spin = main.call("a", "spin", Vec::new(), Some(Duration::from_secs(60)));
            tokio::pin!(spin);
            // `spin` never ends on its own; `echo` is answered while it runs, because the VM
            // loop yields to the connections between execution slices.
            let echoed = tokio::select! {
                r = &mut spin => panic!("spin ended: {r:?}"),
                r = async {
                    // Let `spin` start on `a` first.
                    while nodes[1].counters().calls_active == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    main.call("a", "echo", vec![Portable::Int(7)], None).await
                } => r.unwrap(),
            };
            assert_eq!(echoed, Portable::Int(7));
            assert_eq!(nodes[1].counters().calls_active, 1, "spin still runs");
        }
        shutdown(nodes).await;
    });
}

#[test]
fn a_caller_polled_for_every_task_of_its_set_still_reads_its_own_answers() {
    on_one_thread(|local| async move {
        let nodes = cluster_on(&["a"], Setup::default(), Some(&local)).await;
        nodes[1].load(&compile("fn echo(x) { x }")).await.unwrap();
        // A task of the set that never waits: the set's `run_until`, where this test awaits
        // its calls, is polled again and again with nothing new for the call, and the answers
        // (several packets each) arrive in between.
        let busy = local.spawn_local(async {
            loop {
                tokio::task::yield_now().await;
            }
        });
        let payload: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let calls = 100;
        let answered = tokio::time::timeout(Duration::from_secs(30), async {
            for i in 0..calls {
                let mut arg = payload.clone();
                arg[0] = i as u8;
                let echoed = nodes[0]
                    .call("a", "echo", vec![Portable::Bytes(arg.clone().into())], None)
                    .await
                    .unwrap();
                assert_eq!(echoed, Portable::Bytes(arg.into()), "call {i}");
            }
        })
        .await;
        busy.abort();
        answered.expect("every call answered within 30 s");
        let read_by_caller = nodes[0].counters().answers_read_by_caller;
        assert!(
            read_by_caller >= calls / 2,
            "{read_by_caller} of {calls} answers read by their caller"
        );
        shutdown(nodes).await;
    });
}

/// A waker that counts its wake-ups and passes each on to the waker it was last given.
struct Counting {
    wakes: AtomicUsize,
    to: Mutex<Option<Waker>>,
}

impl Wake for Counting {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        if let Some(waker) = &*self.to.lock().unwrap() {
            waker.wake_by_ref();
        }
    }
}

#[test]
fn a_caller_reading_its_own_answer_is_not_woken_by_it() {
    on_one_thread(|local| async move {
        let nodes = cluster_on(&["a"], Setup::default(), Some(&local)).await;
        nodes[1].load(&compile("fn echo(x) { x }")).await.unwrap();
        let main = &nodes[0];
        main.call("a", "echo", vec![Portable::Int(0)], None)
            .await
            .unwrap();
        let read_before = main.counters().answers_read_by_caller;
        let calls = 20;
        // Polls of a call that returned its answer, and how many of them woke the call.
        let (mut answered, mut woke_itself) = (0, 0);
        for i in 0..calls {
            let counting = Arc::new(Counting {
                wakes: AtomicUsize::new(0),
                to: Mutex::new(None),
            });
            let waker = Waker::from(counting.clone());
            let mut call = std::pin::pin!(main.call("a", "echo", vec![Portable::Int(i)], None));
            let echoed = std::future::poll_fn(|cx| {
                *counting.to.lock().unwrap() = Some(cx.waker().clone());
                let before = counting.wakes.load(Ordering::SeqCst);
                let polled = call.as_mut().poll(&mut Context::from_waker(&waker));
                if polled.is_ready() {
                    answered += 1;
                    if counting.wakes.load(Ordering::SeqCst) != before {
                        woke_itself += 1;
                    }
                }
                polled
            })
            .await
            .unwrap();
            assert_eq!(echoed, Portable::Int(i));
        }
        let read_by_caller = main.counters().answers_read_by_caller - read_before;
        // The property is about answers the caller reads itself, which on one thread with
        // one call in flight are (nearly) all of them.
        assert!(
            read_by_caller >= calls as u64 / 2,
            "{read_by_caller} of {calls} answers read by their caller"
        );
        assert_eq!(answered, calls);
        assert_eq!(
            woke_itself, 0,
            "a caller's own answer woke it (a wasted turn; on a multi-thread runtime, its \
             task scheduled again from inside its poll)"
        );
        shutdown(nodes).await;
    });
}
