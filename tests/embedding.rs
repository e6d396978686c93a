//! The embedding API as a host uses it: typed natives, calls by export name, results
//! converted back, limits, compile errors reported together.

use skiff::{Engine, Error, Limits, Portable};

#[test]
fn typed_natives_and_calls() {
    let mut engine = Engine::new(Limits::default());
    engine.register_fn("add", |a: i64, b: i64| a + b);
    engine.register_fn("shout", |s: String| s.to_uppercase());
    let module = engine
        .compile(
            "fn f(x) { add(x, 1) }\nfn g(s) { shout(s) + \"!\" }",
            "t.skiff",
        )
        .unwrap();
    assert_eq!(engine.call::<i64>(&module, "f", (41,)).unwrap(), 42);
    assert_eq!(engine.call::<String>(&module, "g", ("hi",)).unwrap(), "HI!");
    assert!(matches!(
        engine.call::<i64>(&module, "nope", ()),
        Err(Error::NoSuchFunction(_))
    ));
}

#[test]
fn native_errors_and_type_mismatches_are_catchable() {
    let mut engine = Engine::new(Limits::default());
    engine.register_fn(
        "half",
        |n: i64| if n % 2 == 0 { Ok(n / 2) } else { Err("odd") },
    );
    let module = engine
        .compile(
            "fn f(x) { try { half(x) } catch e { e.kind + \": \" + e.message } }",
            "t.skiff",
        )
        .unwrap();
    assert_eq!(engine.call::<i64>(&module, "f", (8,)).unwrap(), 4);
    assert_eq!(
        engine.call::<String>(&module, "f", (3,)).unwrap(),
        "HostError: odd"
    );
    let err: String = engine.call(&module, "f", ("x",)).unwrap();
    assert!(err.starts_with("TypeError"), "{err}");
}

#[test]
fn results_are_deep_copies() {
    let engine = Engine::new(Limits::default());
    let module = engine
        .compile("fn f() { let l = [1, {\"a\": b\"\\x00\"}]; l }", "t.skiff")
        .unwrap();
    let value: Portable = engine.call(&module, "f", ()).unwrap();
    assert_eq!(
        value,
        Portable::List(vec![
            Portable::Int(1),
            Portable::Map(vec![(
                Portable::Str("a".into()),
                Portable::Bytes(vec![0u8].into())
            )]),
        ])
    );
}

#[test]
fn limits_stop_runaway_calls() {
    let engine = Engine::new(Limits {
        fuel: Some(10_000),
        ..Limits::default()
    });
    let module = engine
        .compile("fn spin() { while true { } }", "t.skiff")
        .unwrap();
    match engine.call::<Portable>(&module, "spin", ()) {
        Err(Error::Runtime(e)) => assert_eq!(e.kind, "OutOfFuel"),
        other => panic!("expected OutOfFuel, got {other:?}"),
    }
}

#[test]
fn every_compile_error_is_reported() {
    let engine = Engine::new(Limits::default());
    match engine.compile("fn f() { a + b }", "t.skiff") {
        Err(Error::Compile(diagnostics)) => assert_eq!(diagnostics.len(), 2, "{diagnostics:?}"),
        other => panic!("expected compile errors, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn repeated_calls_reuse_verified_code_but_never_trust_changed_blobs() {
    let engine = Engine::new(Limits::default());
    let a = engine.compile("fn f(x) { x + 1 }", "a.skiff").unwrap();
    let b = engine.compile("fn f(x) { x * 10 }", "b.skiff").unwrap();
    // Alternating modules (and a clone, which shares the blobs) each run their own code.
    for _ in 0..3 {
        assert_eq!(engine.call::<i64>(&a, "f", (4,)).unwrap(), 5);
        assert_eq!(engine.call::<i64>(&a.clone(), "f", (4,)).unwrap(), 5);
        assert_eq!(engine.call::<i64>(&b, "f", (4,)).unwrap(), 40);
    }
    // A module whose blob no longer matches its hash is refused, even right after the
    // genuine module ran (its verified code is not reused for a different blob).
    let tampered = with_add_int_bumped(&a, a.exports["f"].blob);
    assert_eq!(engine.call::<i64>(&a, "f", (1,)).unwrap(), 2);
    let err = engine.call::<i64>(&tampered, "f", (1,)).unwrap_err();
    assert!(matches!(err, Error::Host(_)), "{err}");
    assert_eq!(engine.call::<i64>(&a, "f", (2,)).unwrap(), 3);
}

/// A `Function` handle answers as `Engine::call` does — values, errors, conversions, fresh
/// contexts on every call — and keeps running the code it verified when it was made: a
/// module changed afterwards does not reach it.
#[test]
fn a_function_handle_calls_like_engine_call_on_the_code_it_verified() {
    let mut engine = Engine::new(Limits::default());
    let module = engine
        .compile(
            "fn f(x) { x + 1 }\n\
             fn bump() { let n = context_get(\"n\"); context_set(\"n\", if n == nil { 1 } else { n + 1 }); context_get(\"n\") }\n\
             fn ratio(x) { 10 / x }",
            "h.skiff",
        )
        .unwrap();
    let f = engine.function(&module, "f").unwrap();
    let bump = engine.function(&module, "bump").unwrap();
    let ratio = engine.function(&module, "ratio").unwrap();
    for i in 0..3 {
        let by_name = engine.call::<i64>(&module, "f", (i,)).unwrap();
        assert_eq!(f.call::<i64>((i,)).unwrap(), by_name);
        assert_eq!(bump.call::<i64>(()).unwrap(), 1);
    }
    match ratio.call::<i64>((0,)) {
        Err(Error::Runtime(e)) => assert_eq!(e.kind, "DivisionByZero"),
        other => panic!("expected a runtime error, got {other:?}"),
    }
    assert_eq!(ratio.call::<i64>((5,)).unwrap(), 2);
    assert!(matches!(f.call::<String>((1,)), Err(Error::Result(_))));
    assert!(matches!(
        engine.function(&module, "nope"),
        Err(Error::NoSuchFunction(name)) if name == "nope"
    ));
    // The changed blob no longer matches its address: a handle made from that module runs
    // nothing (its call is refused, as `Engine::call`'s is), the one made before is intact.
    let tampered = with_add_int_bumped(&module, module.exports["f"].blob);
    let changed = engine.function(&tampered, "f").unwrap();
    let err = changed.call::<i64>((1,)).unwrap_err();
    assert!(matches!(err, Error::Host(_)), "{err}");
    assert_eq!(f.call::<i64>((1,)).unwrap(), 2);
    // It holds no borrow of the engine: natives registered later serve handles made later.
    engine.register_fn("triple", |x: i64| x * 3);
    let with_native = engine.compile("fn t(x) { triple(x) }", "n.skiff").unwrap();
    let t = engine.function(&with_native, "t").unwrap();
    assert_eq!(t.call::<i64>((5,)).unwrap(), 15);
    assert_eq!(f.call::<i64>((2,)).unwrap(), 3);
}

/// `module` with blob `hash` replaced by a copy whose one `AddInt` adds one more: still
/// valid code (`x + 1` becomes `x + 2`), so only the content address can tell.
fn with_add_int_bumped(module: &skiff::Module, hash: skiff_vm::BlobHash) -> skiff::Module {
    let mut changed = (*module.blobs[&hash]).clone();
    let mut edited = 0;
    for function in &mut changed.functions {
        for instr in &mut function.code {
            if let skiff_vm::Instr::AddInt { value } = instr {
                *value += 1;
                edited += 1;
            }
        }
    }
    assert_eq!(edited, 1, "the test expects one AddInt in the blob");
    let mut tampered = module.clone();
    tampered.blobs.insert(hash, std::sync::Arc::new(changed));
    tampered
}

/// A repeated call checks the blobs it can run, not the whole module, but all of those: a
/// changed blob that the called function calls, or that an argument's function runs, is
/// refused even right after genuine calls.
#[test]
fn repeated_calls_check_every_blob_they_reach() {
    let engine = Engine::new(Limits::default());
    let module = engine
        .compile(
            "fn g(x) { x + 1 }\nfn f(x) { g(x) * 2 }\nfn apply(h, x) { h(x) }",
            "r.skiff",
        )
        .unwrap();
    let g = module.exports["g"];
    let g_value = || Portable::Function {
        func: g,
        captures: vec![],
    };
    let apply_g = || vec![g_value(), Portable::Int(1)];
    assert_eq!(engine.call::<i64>(&module, "f", (1,)).unwrap(), 4);
    assert_eq!(engine.call::<i64>(&module, "apply", apply_g()).unwrap(), 2);
    let tampered = with_add_int_bumped(&module, g.blob);
    // `f`'s own blob is unchanged; the `g` it calls is not.
    let err = engine.call::<i64>(&tampered, "f", (1,)).unwrap_err();
    assert!(matches!(err, Error::Host(_)), "{err}");
    assert_eq!(engine.call::<i64>(&module, "apply", apply_g()).unwrap(), 2);
    // `apply` never names `g`; its argument does.
    let err = engine
        .call::<i64>(&tampered, "apply", apply_g())
        .unwrap_err();
    assert!(matches!(err, Error::Host(_)), "{err}");
    assert_eq!(engine.call::<i64>(&module, "f", (1,)).unwrap(), 4);
}

/// Calling many functions whose reaches are long (each calls the one before) fills and
/// empties the engine's cache of reaches; results stay right, and a changed blob at the
/// bottom of the chain is still refused from its top.
#[test]
fn many_long_reaches_keep_calls_checked() {
    let engine = Engine::new(Limits::default());
    let mut source = String::from("fn f0(x) { x + 1 }\n");
    for i in 1..40 {
        source.push_str(&format!("fn f{i}(x) {{ f{}(x) + 1 }}\n", i - 1));
    }
    let module = engine.compile(&source, "chain.skiff").unwrap();
    for round in 0..2 {
        for i in (0..40).rev().chain(0..40) {
            let got = engine
                .call::<i64>(&module, &format!("f{i}"), (round,))
                .unwrap();
            assert_eq!(got, round + i + 1);
        }
    }
    let tampered = with_add_int_bumped(&module, module.exports["f0"].blob);
    let err = engine.call::<i64>(&tampered, "f39", (0,)).unwrap_err();
    assert!(matches!(err, Error::Host(_)), "{err}");
    assert_eq!(engine.call::<i64>(&module, "f39", (0,)).unwrap(), 40);
}

#[test]
fn each_call_starts_afresh_on_the_cluster_kept_between_calls() {
    let mut engine = Engine::new(Limits::default());
    let module = engine
        .compile(
            "fn bump() { let n = context_get(\"n\"); context_set(\"n\", if n == nil { 1 } else { n + 1 }); context_get(\"n\") }\nfn twice(x) { x * 2 }",
            "t.skiff",
        )
        .unwrap();
    // State a call leaves in its context is gone by the next call: each starts as on a new
    // cluster, though the cluster (and the programs it linked) is kept.
    for _ in 0..3 {
        assert_eq!(engine.call::<i64>(&module, "bump", ()).unwrap(), 1);
        assert_eq!(engine.call::<i64>(&module, "twice", (21,)).unwrap(), 42);
    }
    // A native registered after calls is there for the next call.
    engine.register_fn("triple", |x: i64| x * 3);
    let with_native = engine.compile("fn f(x) { triple(x) }", "n.skiff").unwrap();
    assert_eq!(engine.call::<i64>(&with_native, "f", (5,)).unwrap(), 15);
    assert_eq!(engine.call::<i64>(&module, "bump", ()).unwrap(), 1);
}

#[test]
fn a_call_from_inside_a_call_runs_on_a_cluster_of_its_own() {
    use std::cell::RefCell;
    use std::rc::Rc;
    // The native calls back into the engine (through a shared handle) while the outer call
    // runs: the inner call must not find the outer call's cluster in use.
    type Callee = Option<(Rc<Engine>, skiff::Module)>;
    let slot: Rc<RefCell<Callee>> = Rc::default();
    let mut engine = Engine::new(Limits::default());
    let inner = slot.clone();
    engine.register_fn("inner", move |x: i64| {
        let guard = inner.borrow();
        let (engine, module) = guard.as_ref().expect("set before the call");
        engine
            .call::<i64>(module, "g", (x,))
            .map_err(|e| e.to_string())
    });
    let module = engine
        .compile(
            "fn f(x) { inner(x) + 1 }\nfn g(x) { context_set(\"k\", x); x * 10 }",
            "t.skiff",
        )
        .unwrap();
    let engine = Rc::new(engine);
    *slot.borrow_mut() = Some((engine.clone(), module.clone()));
    for _ in 0..2 {
        assert_eq!(engine.call::<i64>(&module, "f", (4,)).unwrap(), 41);
        assert_eq!(engine.call::<i64>(&module, "g", (1,)).unwrap(), 10);
    }
    slot.borrow_mut().take();
}

#[test]
fn a_finished_execution_answers_the_same_when_run_again() {
    use skiff_vm::interp::{Engine as VmEngine, ExecIo, Execution, Limits as VmLimits};
    use skiff_vm::native::NodeInfo;
    use skiff_vm::{CodeStore, Status};
    let source = "fn pairs(n) {\n  let l = []\n  for i in 0..n { push(l, [i, str(i)]) }\n  l\n}\n\
                  fn boom() { throw {\"kind\": \"Boom\", \"message\": \"no\"} }";
    let out = skiff_compiler::compile(source, "t.skiff", &Default::default());
    let module = out.module.expect("compiles");
    let mut store = CodeStore::new();
    store.add_module(&module).unwrap();
    let engine = VmEngine::new();
    let start = |f: &str, args: Vec<Portable>| {
        Execution::start(
            &engine,
            &store,
            module.exports[f],
            args,
            NodeInfo::default(),
            VmLimits::default(),
            ExecIo::null(),
        )
        .expect("starts")
    };
    let now = std::time::Instant::now;
    let mut exec = start("pairs", vec![Portable::Int(3)]);
    let first = exec.run(now());
    let Status::Done(Portable::List(items)) = &first else {
        panic!("{first:?}")
    };
    assert_eq!(items.len(), 3);
    assert_eq!(
        items[2],
        Portable::List(vec![Portable::Int(2), Portable::Str("2".into())])
    );
    assert_eq!(exec.run(now()), first);
    // Cancelling a finished execution changes nothing.
    exec.cancel();
    assert_eq!(exec.run(now()), first);

    let mut exec = start("boom", vec![]);
    let Status::Failed(e) = exec.run(now()) else {
        panic!("boom returned")
    };
    assert_eq!((e.kind.as_str(), e.message.as_str()), ("Boom", "no"));
    assert_eq!(exec.run(now()), Status::Failed(e));
}

#[test]
fn executions_started_from_one_link_cache_stay_independent() {
    use skiff_vm::interp::program::LinkCache;
    use skiff_vm::interp::{Engine as VmEngine, ExecIo, Execution, Limits as VmLimits};
    use skiff_vm::native::NodeInfo;
    use skiff_vm::{CodeStore, Status};
    let source = "fn apply(f, x) { f(x) }\nfn inc(x) { x + 1 }\nfn dbl(x) { x * 2 }";
    let out = skiff_compiler::compile(source, "t.skiff", &Default::default());
    let module = out.module.expect("compiles");
    // Separate blobs: an argument's function is linked when the argument is imported.
    assert_ne!(module.exports["apply"].blob, module.exports["inc"].blob);
    let mut store = CodeStore::new();
    store.add_module(&module).unwrap();
    let engine = VmEngine::new();
    let mut cache = LinkCache::new();
    let run = |cache: &mut LinkCache, f: &str, x: Portable| {
        let linked = cache
            .get(&engine, &store, module.exports["apply"])
            .expect("links");
        let f = Portable::Function {
            func: module.exports[f],
            captures: Vec::new(),
        };
        let mut exec = Execution::start_linked(
            &engine,
            &store,
            linked,
            &[f, x],
            NodeInfo::default(),
            VmLimits::default(),
            ExecIo::null(),
        )
        .expect("starts");
        match exec.run(std::time::Instant::now()) {
            Status::Done(v) => Ok(v),
            Status::Failed(e) => Err(e.to_string()),
            other => panic!("{other:?}"),
        }
    };
    // Each argument links its function into that execution's copy of the program; the
    // cached one, shared by the next execution, is not changed by it.
    assert_eq!(
        run(&mut cache, "inc", Portable::Int(5)),
        Ok(Portable::Int(6))
    );
    assert_eq!(
        run(&mut cache, "dbl", Portable::Int(5)),
        Ok(Portable::Int(10))
    );
    assert_eq!(
        run(&mut cache, "inc", Portable::Int(1)),
        Ok(Portable::Int(2))
    );
    assert_eq!(cache.len(), 1, "one entry function, linked once");
    cache.clear();
    assert_eq!(
        run(&mut cache, "inc", Portable::Int(9)),
        Ok(Portable::Int(10))
    );
    // A cache too small for the program keeps nothing and still runs it.
    let mut tiny = LinkCache::with_limit(1);
    assert_eq!(
        run(&mut tiny, "dbl", Portable::Int(4)),
        Ok(Portable::Int(8))
    );
    assert!(tiny.is_empty());
    // Cleared after its blob left the store, the cache links again, and so fails: it keeps
    // nothing of the program it last handed out.
    let apply = module.exports["apply"];
    assert!(cache.get(&engine, &store, apply).is_ok());
    store.remove_with_dependents(&std::iter::once(apply.blob).collect());
    cache.clear();
    assert!(cache.get(&engine, &store, apply).is_err());
}

/// A writer shared with the test, to compare what two runs printed and warned.
#[derive(Clone, Default)]
struct Captured(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_quick_run_is_a_start_and_a_run_that_builds_no_execution_for_a_call_ending_at_once() {
    use skiff_vm::interp::program::Linked;
    use skiff_vm::interp::{Engine as VmEngine, ExecIo, Execution, Limits as VmLimits};
    use skiff_vm::native::NodeInfo;
    use skiff_vm::{CodeStore, QuickRun, Status};
    use std::time::{Duration, Instant};
    let source = "fn echo(x) { x }\n\
                  fn sum(n) { let s = 0\n for i in 0..n { s = s + i }\n s }\n\
                  fn boom() { throw {\"kind\": \"Boom\", \"message\": \"no\"} }\n\
                  fn says(x) { print(x)\n x }\n\
                  fn naps() { sleep(1)\n 1 }\n\
                  fn forks() { spawn { throw \"lost\" }\n 2 }\n\
                  fn waits() { let t = spawn { 3 }\n await t }\n\
                  fn hops() { remote(\"w\") [] { 1 } }\n\
                  fn grows(n) { let l = []\n for i in 0..n { push(l, \"x{i}\") }\n len(l) }\n\
                  fn deep(n) { if n == 0 { 0 } else { 1 + deep(n - 1) } }";
    let out = skiff_compiler::compile(source, "t.skiff", &Default::default());
    let module = out.module.expect("compiles");
    let mut store = CodeStore::new();
    store.add_module(&module).unwrap();
    let engine = VmEngine::new();
    let link = |f: &str| Linked::link(&store, &Default::default(), module.exports[f]).unwrap();
    // What a call printed and warned, and its statuses until it ended (sleeps slept, remote
    // calls answered with their count).
    let finish = |mut status: Status, exec: Option<Box<Execution>>, io: &Captured| {
        let mut statuses = vec![status.clone()];
        if let Some(mut exec) = exec {
            while let Err(next) = status.clone().ended() {
                for r in exec.take_requests() {
                    exec.resolve(r.id, Ok(Portable::Int(r.id as i64)));
                }
                if let Some(at) = next.wake_at {
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                }
                status = exec.run(Instant::now());
                statuses.push(status.clone());
            }
        }
        (statuses, String::from_utf8(io.0.borrow().clone()).unwrap())
    };
    let both = |f: &str, args: &[Portable], limits: VmLimits, slice: u64| {
        let captured = |c: &Captured| ExecIo {
            out: Box::new(c.clone()),
            err: Box::new(c.clone()),
        };
        let (quick_io, full_io) = (Captured::default(), Captured::default());
        let now = Instant::now();
        let run = Execution::run_quick(
            &engine,
            &store,
            link(f),
            args,
            &NodeInfo::default(),
            limits.clone(),
            captured(&quick_io),
            slice,
            now,
        )
        .expect("starts");
        let (status, exec) = match run {
            QuickRun::Done(value) => (Status::Done(value), None),
            QuickRun::Started(status, exec) => (status, Some(exec)),
        };
        let built = exec.is_some();
        let quick = finish(status, exec, &quick_io);
        let mut exec = Execution::start_linked(
            &engine,
            &store,
            link(f),
            args,
            NodeInfo::default(),
            limits,
            captured(&full_io),
        )
        .expect("starts");
        exec.set_slice(slice);
        let full = finish(exec.run(now), Some(Box::new(exec)), &full_io);
        assert_eq!(quick, full, "{f}: a quick run and an execution's");
        (quick.0, built)
    };
    let none = VmLimits::default;
    let slice = 100_000;
    let bytes = Portable::Bytes(vec![7u8; 64].into());

    // Calls that end as their one task: no execution built.
    for (f, args) in [
        ("echo", vec![bytes]),
        ("sum", vec![Portable::Int(100)]),
        ("says", vec![Portable::Str("hi".into())]),
        ("grows", vec![Portable::Int(10)]),
    ] {
        let (statuses, built) = both(f, &args, none(), slice);
        assert!(
            matches!(statuses[..], [Status::Done(_)]),
            "{f}: {statuses:?}"
        );
        assert!(!built, "{f}");
    }
    // Everything else: an execution, in the state a run leaves it in, going on from there.
    let ahead = VmLimits {
        deadline: Some(Instant::now() + Duration::from_secs(60)),
        ..none()
    };
    let past = VmLimits {
        deadline: Some(Instant::now() - Duration::from_millis(1)),
        ..none()
    };
    let cases = [
        ("boom", vec![], none(), slice, "Failed"),
        (
            "sum",
            vec![Portable::Int(1000)],
            VmLimits {
                fuel: Some(50),
                ..none()
            },
            slice,
            "Failed",
        ),
        (
            "grows",
            vec![Portable::Int(100_000)],
            VmLimits {
                max_heap: Some(64 << 10),
                ..none()
            },
            slice * 100,
            "Failed",
        ),
        ("echo", vec![Portable::Int(1)], past, slice, "Failed"),
        (
            "deep",
            vec![Portable::Int(100)],
            VmLimits {
                max_depth: 10,
                ..none()
            },
            slice,
            "Failed",
        ),
        ("sum", vec![Portable::Int(1000)], none(), 100, "Yielded"),
        ("sum", vec![Portable::Int(1000)], ahead, 100, "Yielded"),
        ("naps", vec![], none(), slice, "Blocked"),
        ("forks", vec![], none(), slice, "Done"),
        ("waits", vec![], none(), slice, "Done"),
        ("hops", vec![], none(), slice, "Blocked"),
    ];
    for (f, args, limits, slice, first) in cases {
        let (statuses, built) = both(f, &args, limits, slice);
        assert!(built, "{f}");
        assert!(
            format!("{:?}", statuses[0]).starts_with(first),
            "{f}: {statuses:?}"
        );
        assert!(statuses.last().unwrap().clone().ended().is_ok(), "{f} ends");
    }
}
