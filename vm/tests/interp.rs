//! Interpreter tests on hand-assembled blobs (the compiler is developed in parallel).

mod common;

use common::{f, fib};
use skiff_vm::interp::{
    Engine, ExecIo, Execution, LimitKind, Limits, RemoteFailure, SharedBuf, StartError, Status,
    TraceFrame,
};
use skiff_vm::native::NodeInfo;
use skiff_vm::store::CodeStore;
use skiff_vm::{
    Blob, BlobDebug, Const, FnRef, FunctionCode, FunctionDebug, FunctionId, Instr as I, Portable,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Setup {
    store: CodeStore,
    engine: Engine,
    hash: skiff_vm::BlobHash,
}

fn setup(functions: Vec<FunctionCode>) -> Setup {
    let mut store = CodeStore::new();
    let hash = store
        .insert(Arc::new(Blob { functions }), None)
        .expect("verifies");
    Setup {
        store,
        engine: Engine::new(),
        hash,
    }
}

impl Setup {
    fn id(&self, member: u32) -> FunctionId {
        FunctionId {
            blob: self.hash,
            member,
        }
    }
    fn start_with(
        &self,
        member: u32,
        args: Vec<Portable>,
        node: NodeInfo,
        limits: Limits,
    ) -> (Execution, SharedBuf, SharedBuf) {
        let (io, out, err) = ExecIo::capture();
        let exec = Execution::start(
            &self.engine,
            &self.store,
            self.id(member),
            args,
            node,
            limits,
            io,
        )
        .expect("starts");
        (exec, out, err)
    }
    fn start(&self, member: u32, args: Vec<Portable>) -> (Execution, SharedBuf, SharedBuf) {
        self.start_with(member, args, NodeInfo::default(), Limits::default())
    }
    /// Member 0, no arguments, under `limits`.
    fn start_limited(&self, limits: Limits) -> Execution {
        self.start_with(0, vec![], NodeInfo::default(), limits).0
    }
    /// Start `member` without arguments and without capturing output; the error is the test.
    fn try_start(&self, member: u32) -> Result<Execution, StartError> {
        Execution::start(
            &self.engine,
            &self.store,
            self.id(member),
            vec![],
            NodeInfo::default(),
            Limits::default(),
            ExecIo::null(),
        )
    }
    fn run(&self, member: u32, args: Vec<Portable>) -> Status {
        let (mut exec, _, _) = self.start(member, args);
        run_to_end(&mut exec)
    }
    /// Start `member` with `args`, answer its first remote call with `reply`, and run on.
    fn answer_first_remote(
        &self,
        member: u32,
        args: Vec<Portable>,
        reply: Result<Portable, RemoteFailure>,
    ) -> Status {
        let (mut exec, _, _) = self.start(member, args);
        exec.run(Instant::now());
        let id = exec.take_requests()[0].id;
        exec.resolve(id, reply);
        exec.run(Instant::now())
    }
}

fn with_fuel(fuel: u64) -> Limits {
    Limits {
        fuel: Some(fuel),
        ..Limits::default()
    }
}

fn run_to_end(exec: &mut Execution) -> Status {
    loop {
        match exec.run(Instant::now()) {
            Status::Yielded => continue,
            other => return other,
        }
    }
}

fn failed(status: Status) -> skiff_vm::interp::ExecError {
    match status {
        Status::Failed(e) => e,
        other => panic!("expected failure, got {other:?}"),
    }
}

fn str_const(s: &str) -> Const {
    Const::Str(s.into())
}

/// A function that throws `msg`.
fn thrower(msg: &str) -> FunctionCode {
    let mut thrower = f(0, 0, vec![I::Const { index: 0 }, I::Throw {}]);
    thrower.consts = vec![str_const(msg)];
    thrower
}

/// main: try { member1() } catch e { e["kind"] }
fn catch_kind() -> FunctionCode {
    let mut main = f(
        0,
        0,
        vec![
            I::TryBegin { handler: 4 },
            I::CallFunction { func: 0, argc: 0 },
            I::TryEnd {},
            I::Return {},
            I::Const { index: 0 },
            I::GetIndex {},
            I::Return {},
        ],
    );
    main.refs = vec![FnRef::Local(1)];
    main.consts = vec![str_const("kind")];
    main
}

#[test]
fn arithmetic_and_errors() {
    // (a * b - 3) / 2 % 5, and float mixing
    let s = setup(vec![
        f(
            2,
            2,
            vec![
                I::GetLocal { slot: 0 },
                I::GetLocal { slot: 1 },
                I::Mul {},
                I::Int { value: 3 },
                I::Sub {},
                I::Int { value: 2 },
                I::Div {},
                I::Int { value: 5 },
                I::Rem {},
                I::Return {},
            ],
        ),
        f(
            2,
            2,
            vec![
                I::GetLocal { slot: 0 },
                I::GetLocal { slot: 1 },
                I::Add {},
                I::Return {},
            ],
        ),
    ]);
    assert_eq!(
        s.run(0, vec![Portable::Int(7), Portable::Int(9)]),
        Status::Done(Portable::Int(0))
    );
    assert_eq!(
        s.run(0, vec![Portable::Int(-7), Portable::Int(3)]),
        Status::Done(Portable::Int(-2))
    );
    let e = failed(s.run(0, vec![Portable::Int(i64::MAX), Portable::Int(2)]));
    assert_eq!(e.kind, "Overflow");
    assert_eq!(
        s.run(1, vec![Portable::Int(1), Portable::Float(0.5)]),
        Status::Done(Portable::Float(1.5))
    );
    assert_eq!(
        s.run(
            1,
            vec![Portable::Str("ab".into()), Portable::Str("cd".into())]
        ),
        Status::Done(Portable::Str("abcd".into()))
    );
    let e = failed(s.run(1, vec![Portable::Int(1), Portable::Str("x".into())]));
    assert_eq!(e.kind, "TypeError");
    let div = setup(vec![f(
        0,
        0,
        vec![
            I::Int { value: 1 },
            I::Int { value: 0 },
            I::Div {},
            I::Return {},
        ],
    )]);
    assert_eq!(failed(div.run(0, vec![])).kind, "DivisionByZero");
}

#[test]
fn recursion_fib() {
    let s = setup(vec![fib()]);
    assert_eq!(
        s.run(0, vec![Portable::Int(20)]),
        Status::Done(Portable::Int(6765))
    );
    assert!(matches!(
        s.try_start(0),
        Err(StartError::Arity {
            expected: 1,
            got: 0
        })
    ));
}

#[test]
fn fib_timing() {
    // `SKIFF_FIB_N=30 cargo test --release -p skiff-vm --test interp fib -- --nocapture`
    let n: i64 = std::env::var("SKIFF_FIB_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(22);
    let s = setup(vec![fib()]);
    let (mut a, mut b) = (0i64, 1i64);
    for _ in 0..n {
        (a, b) = (b, a + b);
    }
    let t = Instant::now();
    assert_eq!(
        s.run(0, vec![Portable::Int(n)]),
        Status::Done(Portable::Int(a))
    );
    eprintln!("fib({n}) took {:?}", t.elapsed());
}

#[test]
fn closures_share_cells() {
    // main: local 0 is a cell = 0; inc = closure(+1 on upvalue); inc(); inc(); return cell + inc's view
    let mut main = f(
        0,
        2,
        vec![
            I::Int { value: 0 },
            I::NewCell { slot: 0 },
            I::CaptureLocal { slot: 0 },
            I::Closure {
                func: 0,
                captures: 1,
            },
            I::SetLocal { slot: 1 },
            I::GetLocal { slot: 1 },
            I::Call { argc: 0 },
            I::Pop {},
            I::GetLocal { slot: 1 },
            I::Call { argc: 0 },
            I::Pop {},
            // local write seen by the closure
            I::GetCell { slot: 0 },
            I::Int { value: 10 },
            I::Mul {},
            I::SetCell { slot: 0 },
            I::GetLocal { slot: 1 },
            I::Call { argc: 0 },
            I::Return {},
        ],
    );
    main.cells = vec![0];
    main.refs = vec![FnRef::Local(1)];
    let mut inc = f(
        0,
        0,
        vec![
            I::GetUpval { index: 0 },
            I::AddInt { value: 1 },
            I::SetUpval { index: 0 },
            I::GetUpval { index: 0 },
            I::Return {},
        ],
    );
    inc.upvals = 1;
    let s = setup(vec![main, inc]);
    assert_eq!(s.run(0, vec![]), Status::Done(Portable::Int(21)));
}

#[test]
fn try_catch_across_frames() {
    // thrower: throw "boom"; div: 1/0; main: try { thrower() } catch e { e }
    let mut main = f(
        0,
        0,
        vec![
            I::TryBegin { handler: 4 },
            I::CallFunction { func: 0, argc: 0 },
            I::TryEnd {},
            I::Return {},
            I::Return {},
        ],
    );
    main.refs = vec![FnRef::Local(1)];
    let mut thrower = f(
        0,
        0,
        vec![
            I::Int { value: 1 },
            I::CallFunction { func: 0, argc: 0 },
            I::Add {},
            I::Return {},
        ],
    );
    thrower.refs = vec![FnRef::Local(2)];
    let s = setup(vec![main, thrower, self::thrower("boom")]);
    assert_eq!(s.run(0, vec![]), Status::Done(Portable::Str("boom".into())));
    // uncaught: Thrown with a trace of 3 frames
    let e = failed(s.run(1, vec![]));
    assert_eq!(e.kind, "Thrown");
    assert_eq!(e.message, "boom");
    assert_eq!(e.trace.len(), 2);

    // a runtime error is an error map and is caught the same way
    let div = f(
        0,
        0,
        vec![
            I::Int { value: 1 },
            I::Int { value: 0 },
            I::Rem {},
            I::Return {},
        ],
    );
    let s = setup(vec![catch_kind(), div]);
    assert_eq!(
        s.run(0, vec![]),
        Status::Done(Portable::Str("DivisionByZero".into()))
    );
}

#[test]
fn trace_uses_debug_positions() {
    let mut store = CodeStore::new();
    let mut main = f(
        0,
        0,
        vec![I::CallFunction { func: 0, argc: 0 }, I::Return {}],
    );
    main.refs = vec![FnRef::Local(1)];
    let bad = f(
        0,
        0,
        vec![I::Nil {}, I::Int { value: 1 }, I::Add {}, I::Return {}],
    );
    let debug = BlobDebug {
        functions: vec![
            FunctionDebug {
                name: Some("main".into()),
                file: "t.skiff".into(),
                positions: vec![(1, 1), (1, 2)],
                local_names: vec![],
            },
            FunctionDebug {
                name: Some("bad".into()),
                file: "t.skiff".into(),
                positions: vec![(2, 1), (2, 5), (2, 9), (2, 10)],
                local_names: vec![],
            },
        ],
    };
    let hash = store
        .insert(
            Arc::new(Blob {
                functions: vec![main, bad],
            }),
            Some(Arc::new(debug)),
        )
        .unwrap();
    let (io, _, _) = ExecIo::capture();
    let mut exec = Execution::start(
        &Engine::new(),
        &store,
        FunctionId {
            blob: hash,
            member: 0,
        },
        vec![],
        NodeInfo {
            here: "w1".into(),
            caller: Some("main".into()),
            peers: Default::default(),
        },
        Limits::default(),
        io,
    )
    .unwrap();
    let e = failed(run_to_end(&mut exec));
    assert_eq!(e.kind, "TypeError");
    assert!(
        e.trace.iter().all(|f| f.code.is_some()),
        "frames know their code position"
    );
    let positions: Vec<TraceFrame> = e
        .trace
        .into_iter()
        .map(|f| TraceFrame { code: None, ..f })
        .collect();
    assert_eq!(
        positions,
        vec![
            TraceFrame {
                function: "bad".into(),
                file: "t.skiff".into(),
                line: 2,
                col: 9,
                peer: Some("w1".into()),
                code: None,
            },
            TraceFrame {
                function: "main".into(),
                file: "t.skiff".into(),
                line: 1,
                col: 1,
                peer: Some("w1".into()),
                code: None,
            },
        ]
    );
    // a VM error raised in a remote body names the peer
    match &e.error {
        Portable::Map(entries) => assert!(entries
            .iter()
            .any(|(k, v)| k == &Portable::Str("peer".into()) && v == &Portable::Str("w1".into()))),
        other => panic!("{other:?}"),
    }
}

/// A zero-argument closure body for spawn: prints `a1`, sleeps, prints `a2`, returns 1.
fn task_program() -> Vec<FunctionCode> {
    let mut main = f(
        0,
        1,
        vec![
            I::Function { func: 0 },
            I::Spawn {},
            I::SetLocal { slot: 0 },
            I::Const { index: 0 },
            I::CallNative { native: 0, argc: 1 },
            I::Pop {},
            I::Int { value: 5 },
            I::CallNative { native: 1, argc: 1 },
            I::Pop {},
            I::Const { index: 1 },
            I::CallNative { native: 0, argc: 1 },
            I::Pop {},
            I::GetLocal { slot: 0 },
            I::Await {},
            I::Const { index: 2 },
            I::CallNative { native: 0, argc: 1 },
            I::Pop {},
            I::Return {},
        ],
    );
    main.refs = vec![FnRef::Local(1)];
    main.consts = vec![str_const("m1"), str_const("m2"), str_const("m3")];
    main.natives = vec!["print".into(), "sleep".into()];
    let mut body = f(
        0,
        0,
        vec![
            I::Const { index: 0 },
            I::CallNative { native: 0, argc: 1 },
            I::Pop {},
            I::Int { value: 10 },
            I::CallNative { native: 1, argc: 1 },
            I::Pop {},
            I::Const { index: 1 },
            I::CallNative { native: 0, argc: 1 },
            I::Pop {},
            I::Int { value: 7 },
            I::Return {},
        ],
    );
    body.consts = vec![str_const("a1"), str_const("a2")];
    body.natives = vec!["print".into(), "sleep".into()];
    vec![main, body]
}

#[test]
fn tasks_interleave_with_sleep_and_await() {
    let s = setup(task_program());
    let (mut exec, out, _) = s.start(0, vec![]);
    let t0 = Instant::now();
    assert_eq!(
        exec.run(t0),
        Status::Blocked {
            wake_at: Some(t0 + Duration::from_millis(5))
        }
    );
    assert_eq!(out.text(), "m1\na1\n");
    assert_eq!(
        exec.run(t0 + Duration::from_millis(5)),
        Status::Blocked {
            wake_at: Some(t0 + Duration::from_millis(10))
        }
    );
    assert_eq!(out.text(), "m1\na1\nm2\n");
    assert_eq!(
        exec.run(t0 + Duration::from_millis(10)),
        Status::Done(Portable::Int(7))
    );
    assert_eq!(out.text(), "m1\na1\nm2\na2\nm3\n");
}

#[test]
fn unawaited_task_error_is_a_warning() {
    let mut main = f(
        0,
        0,
        vec![
            I::Function { func: 0 },
            I::Spawn {},
            I::Pop {},
            I::Int { value: 1 },
            I::CallNative { native: 0, argc: 1 },
            I::Pop {},
            I::Int { value: 3 },
            I::Return {},
        ],
    );
    main.refs = vec![FnRef::Local(1)];
    main.natives = vec!["sleep".into()];
    let s = setup(vec![main, thrower("task broke")]);
    let (mut exec, _, err) = s.start(0, vec![]);
    let t0 = Instant::now();
    assert!(matches!(exec.run(t0), Status::Blocked { .. }));
    assert_eq!(
        exec.run(t0 + Duration::from_millis(1)),
        Status::Done(Portable::Int(3))
    );
    assert!(err.text().contains("task broke"), "{}", err.text());
}

#[test]
fn await_rethrows_task_error() {
    let mut main = f(
        0,
        0,
        vec![
            I::Function { func: 0 },
            I::Spawn {},
            I::Await {},
            I::Return {},
        ],
    );
    main.refs = vec![FnRef::Local(1)];
    let s = setup(vec![main, thrower("bad")]);
    let e = failed(s.run(0, vec![]));
    assert_eq!(e.message, "bad");
}

/// main(x): remote("w1") [x] { body(x) } else { "fallback" }
fn remote_program(with_else: bool) -> Vec<FunctionCode> {
    let remote = if with_else {
        I::RemoteElse {
            func: 0,
            argc: 1,
            fallback: 4,
        }
    } else {
        I::Remote { func: 0, argc: 1 }
    };
    let mut main = f(
        1,
        1,
        vec![
            I::Const { index: 0 },
            I::GetLocal { slot: 0 },
            remote,
            I::Return {},
            I::Const { index: 1 },
            I::Return {},
        ],
    );
    main.consts = vec![str_const("w1"), str_const("fallback")];
    main.refs = vec![FnRef::Local(1)];
    let body = f(1, 1, vec![I::GetLocal { slot: 0 }, I::Return {}]);
    vec![main, body]
}

fn error_map(kind: &str, msg: &str) -> Portable {
    Portable::Map(vec![
        (Portable::Str("kind".into()), Portable::Str(kind.into())),
        (Portable::Str("message".into()), Portable::Str(msg.into())),
    ])
}

#[test]
fn remote_suspends_and_resolves() {
    let s = setup(remote_program(false));
    let (mut exec, _, _) = s.start(0, vec![Portable::Int(5)]);
    assert_eq!(exec.run(Instant::now()), Status::Blocked { wake_at: None });
    let reqs = exec.take_requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].target, Portable::Str("w1".into()));
    assert_eq!(reqs[0].func, s.id(1));
    assert_eq!(reqs[0].args, vec![Portable::Int(5)]);
    exec.resolve(reqs[0].id, Ok(Portable::Int(42)));
    assert_eq!(exec.run(Instant::now()), Status::Done(Portable::Int(42)));

    // a remote runtime error is raised here with the remote frames first
    let remote_frame = TraceFrame {
        function: "body".into(),
        file: "r.skiff".into(),
        line: 3,
        col: 4,
        peer: Some("w1".into()),
        code: None,
    };
    let e = failed(s.answer_first_remote(
        0,
        vec![Portable::Int(5)],
        Err(RemoteFailure {
            error: error_map("ValueError", "nope"),
            trace: vec![remote_frame.clone()],
        }),
    ));
    assert_eq!(e.kind, "ValueError");
    assert_eq!(e.trace[0], remote_frame);
    assert_eq!(e.trace.len(), 2);

    // plain Remote: even Unreachable is raised
    let status = s.answer_first_remote(
        0,
        vec![Portable::Int(5)],
        Err(RemoteFailure::new("Unreachable", "down")),
    );
    assert_eq!(failed(status).kind, "Unreachable");
}

#[test]
fn remote_else_falls_back_only_on_transport_failures() {
    let s = setup(remote_program(true));
    for (kind, expect_fallback) in [
        ("Unreachable", true),
        ("Disconnected", true),
        ("Refused", true),
        ("Timeout", true),
        ("TypeError", false),
        ("LimitExceeded", false),
    ] {
        let status = s.answer_first_remote(
            0,
            vec![Portable::Int(1)],
            Err(RemoteFailure::new(kind, "x")),
        );
        if expect_fallback {
            assert_eq!(
                status,
                Status::Done(Portable::Str("fallback".into())),
                "{kind}"
            );
        } else {
            assert_eq!(failed(status).kind, kind);
        }
    }
}

#[test]
fn remote_send_copy_rejects_cycles_and_tasks() {
    // main: l = [nil]; l[0] = l; remote("w1") [l] {..}
    let mut main = f(
        0,
        1,
        vec![
            I::Nil {},
            I::List { len: 1 },
            I::SetLocal { slot: 0 },
            I::GetLocal { slot: 0 },
            I::Int { value: 0 },
            I::GetLocal { slot: 0 },
            I::SetIndex {},
            I::Const { index: 0 },
            I::GetLocal { slot: 0 },
            I::Remote { func: 0, argc: 1 },
            I::Return {},
        ],
    );
    main.consts = vec![str_const("w1")];
    main.refs = vec![FnRef::Local(1)];
    let body = f(1, 1, vec![I::GetLocal { slot: 0 }, I::Return {}]);
    let s = setup(vec![main, body]);
    let e = failed(s.run(0, vec![]));
    assert_eq!(e.kind, "TypeError");
    assert!(e.message.contains("cyclic"), "{}", e.message);
}

#[test]
fn closures_cross_the_boundary_with_fresh_cells() {
    // make(): cell x = 41; return closure { x + 1 }
    let mut make = f(
        0,
        1,
        vec![
            I::Int { value: 41 },
            I::NewCell { slot: 0 },
            I::CaptureLocal { slot: 0 },
            I::Closure {
                func: 0,
                captures: 1,
            },
            I::Return {},
        ],
    );
    make.cells = vec![0];
    make.refs = vec![FnRef::Local(1)];
    let mut get = f(
        0,
        0,
        vec![
            I::GetUpval { index: 0 },
            I::AddInt { value: 1 },
            I::Return {},
        ],
    );
    get.upvals = 1;
    // call(f): f()
    let call = f(
        1,
        1,
        vec![I::GetLocal { slot: 0 }, I::Call { argc: 0 }, I::Return {}],
    );
    let s = setup(vec![make, get, call]);
    let closure = match s.run(0, vec![]) {
        Status::Done(p) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        closure,
        Portable::Function {
            func: s.id(1),
            captures: vec![Portable::Int(41)]
        }
    );
    assert_eq!(s.run(2, vec![closure]), Status::Done(Portable::Int(42)));
}

/// An infinite counting loop: 2 setup instructions, then 4 per iteration.
fn spin() -> Vec<FunctionCode> {
    vec![f(
        0,
        1,
        vec![
            I::Int { value: 0 },
            I::SetLocal { slot: 0 },
            I::GetLocal { slot: 0 },
            I::AddInt { value: 1 },
            I::SetLocal { slot: 0 },
            I::Jump { target: 2 },
        ],
    )]
}

#[test]
fn fuel_is_exact() {
    // a program of exactly 4 instructions
    let s = setup(vec![f(
        0,
        0,
        vec![
            I::Int { value: 1 },
            I::Int { value: 2 },
            I::Add {},
            I::Return {},
        ],
    )]);
    for (fuel, ok) in [(4, true), (3, false), (1, false)] {
        let mut exec = s.start_limited(with_fuel(fuel));
        let status = run_to_end(&mut exec);
        if ok {
            assert_eq!(status, Status::Done(Portable::Int(3)));
            assert_eq!(exec.fuel_left(), Some(0));
        } else {
            let e = failed(status);
            assert_eq!(e.limit, Some(LimitKind::OutOfFuel));
            assert_eq!(e.kind, "OutOfFuel");
        }
    }
    // an infinite loop under small slices still stops after exactly the fuel granted
    let s = setup(spin());
    let mut exec = s.start_limited(with_fuel(1000));
    exec.set_slice(7);
    let mut yields = 0;
    let e = loop {
        match exec.run(Instant::now()) {
            Status::Yielded => yields += 1,
            Status::Failed(e) => break e,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(e.limit, Some(LimitKind::OutOfFuel));
    assert_eq!(exec.fuel_left(), Some(0));
    assert_eq!(yields, 1000 / 7);
}

/// main(): the compiler's shapes of `while i < 40 { s = s + i % 7; i = i + 1 }` (with `s`
/// starting as the constant, an int or a float) and of fib(12) (`if n < 2 { n } else {...}`:
/// the `then` arm jumps to the shared `Return`) — the code the interpreter fuses most.
fn fused_shapes(start: Const) -> Vec<FunctionCode> {
    let mut main = f(
        0,
        3,
        vec![
            I::Int { value: 0 },
            I::SetLocal { slot: 1 },
            I::Const { index: 0 },
            I::SetLocal { slot: 2 },
            I::Int { value: 40 },
            I::SetLocal { slot: 0 },
            I::GetLocal { slot: 1 },
            I::GetLocal { slot: 0 },
            I::JumpIfNotLt { target: 19 },
            I::GetLocal { slot: 2 },
            I::GetLocal { slot: 1 },
            I::Int { value: 7 },
            I::Rem {},
            I::Add {},
            I::SetLocal { slot: 2 },
            I::GetLocal { slot: 1 },
            I::AddInt { value: 1 },
            I::SetLocal { slot: 1 },
            I::Jump { target: 6 },
            I::GetLocal { slot: 2 },
            I::Int { value: 12 },
            I::CallFunction { func: 0, argc: 1 },
            I::List { len: 2 },
            I::Return {},
        ],
    );
    main.consts = vec![start];
    main.refs = vec![FnRef::Local(1)];
    let mut fib = f(
        1,
        1,
        vec![
            I::GetLocal { slot: 0 },
            I::Int { value: 2 },
            I::JumpIfNotLt { target: 5 },
            I::GetLocal { slot: 0 },
            I::Jump { target: 12 },
            I::GetLocal { slot: 0 },
            I::AddInt { value: -1 },
            I::CallFunction { func: 0, argc: 1 },
            I::GetLocal { slot: 0 },
            I::AddInt { value: -2 },
            I::CallFunction { func: 0, argc: 1 },
            I::Add {},
            I::Return {},
        ],
    );
    fib.refs = vec![FnRef::Local(1)];
    vec![main, fib]
}

#[test]
fn fused_ops_charge_every_instruction() {
    let big = 1u64 << 40;
    for start in [Const::Int(0), Const::Float(0.5)] {
        let s = setup(fused_shapes(start.clone()));
        let mut exec = s.start_limited(with_fuel(big));
        let done = run_to_end(&mut exec);
        let want = match start {
            Const::Int(_) => Portable::Int(115),
            _ => Portable::Float(115.5),
        };
        assert_eq!(
            done,
            Status::Done(Portable::List(vec![want, Portable::Int(144)]))
        );
        let used = big - exec.fuel_left().unwrap();
        // main: set-up, 40 turns, the last test, the call and the list; fib(12): 233 leaf
        // calls of 6 instructions and 232 inner ones of 11
        assert_eq!(used, 6 + 40 * 13 + 3 + 5 + 233 * 6 + 232 * 11);
        // exactly `used` instructions suffice, one fewer does not
        let mut exec = s.start_limited(with_fuel(used));
        assert_eq!(run_to_end(&mut exec), done);
        assert_eq!(exec.fuel_left(), Some(0));
        let mut exec = s.start_limited(with_fuel(used - 1));
        assert_eq!(
            failed(run_to_end(&mut exec)).limit,
            Some(LimitKind::OutOfFuel)
        );
        // every slice is used to the last instruction, whatever the fused op at its end
        for slice in 1..=13 {
            let mut exec = s.start_limited(with_fuel(big));
            exec.set_slice(slice);
            let mut yields = 0;
            let status = loop {
                match exec.run(Instant::now()) {
                    Status::Yielded => yields += 1,
                    other => break other,
                }
            };
            assert_eq!(status, done, "slice {slice}");
            assert_eq!(big - exec.fuel_left().unwrap(), used, "slice {slice}");
            assert_eq!(yields, (used - 1) / slice, "slice {slice}");
        }
    }
}

/// main(): `let xs = []; for i in 0..20 { push(xs, i) }; push(xs, 7); [len(xs), xs]` in the
/// compiler's shape: the loop's `push` of two locals, a `push` of a computed value, `len`.
fn push_shapes() -> Vec<FunctionCode> {
    let mut main = f(
        0,
        2,
        vec![
            I::List { len: 0 },
            I::SetLocal { slot: 0 },
            I::Int { value: 0 },
            I::Int { value: 20 },
            I::Range {},
            I::IterStart {},
            I::IterNext { target: 13 },
            I::SetLocal { slot: 1 },
            I::GetLocal { slot: 0 },
            I::GetLocal { slot: 1 },
            I::CallNative { native: 0, argc: 2 },
            I::Pop {},
            I::Jump { target: 6 },
            I::GetLocal { slot: 0 },
            I::Int { value: 7 },
            I::CallNative { native: 0, argc: 2 },
            I::Pop {},
            I::GetLocal { slot: 0 },
            I::CallNative { native: 1, argc: 1 },
            I::GetLocal { slot: 0 },
            I::List { len: 2 },
            I::Return {},
        ],
    );
    main.natives = vec!["push".into(), "len".into()];
    vec![main]
}

#[test]
fn builtin_push_fast_path_is_exact() {
    let big = 1u64 << 40;
    let s = setup(push_shapes());
    let mut exec = s.start_limited(with_fuel(big));
    let done = run_to_end(&mut exec);
    let mut items: Vec<Portable> = (0..20).map(Portable::Int).collect();
    items.push(Portable::Int(7));
    assert_eq!(
        done,
        Status::Done(Portable::List(vec![
            Portable::Int(21),
            Portable::List(items)
        ]))
    );
    let used = big - exec.fuel_left().unwrap();
    // set-up, 20 turns of 7, the last `IterNext`, the rest
    assert_eq!(used, 6 + 20 * 7 + 1 + 9);
    assert_fuel_exact(&s, &done, used, 1..=9);
    // a host native registered as `push` shadows the builtin, fast path or not
    let mut s = setup(push_shapes());
    s.engine
        .register_native("push", |_, _| Ok(skiff_vm::Value::Int(9)));
    assert_eq!(
        s.run(0, vec![]),
        Status::Done(Portable::List(vec![
            Portable::Int(0),
            Portable::List(vec![])
        ]))
    );
    // `push` on something other than a list raises as the builtin does
    let mut code = push_shapes();
    code[0].code[0] = I::Int { value: 5 };
    let e = failed(setup(code).run(0, vec![]));
    assert_eq!(e.kind, "TypeError");
}

/// main(): `let f = fn(x) { x % 2 == 0 }; let n = 0; for i in 0..10 { if f(i) { n += 1 } };
/// n` in the compiler's shape: `f(i)` on two locals, `== 0` after the remainder.
fn local_call_shapes() -> Vec<FunctionCode> {
    let mut main = f(
        0,
        3,
        vec![
            I::Closure {
                func: 0,
                captures: 0,
            },
            I::SetLocal { slot: 0 },
            I::Int { value: 0 },
            I::SetLocal { slot: 1 },
            I::Int { value: 0 },
            I::Int { value: 10 },
            I::Range {},
            I::IterStart {},
            I::IterNext { target: 18 },
            I::SetLocal { slot: 2 },
            I::GetLocal { slot: 0 },
            I::GetLocal { slot: 2 },
            I::Call { argc: 1 },
            I::JumpIfFalse { target: 17 },
            I::GetLocal { slot: 1 },
            I::AddInt { value: 1 },
            I::SetLocal { slot: 1 },
            I::Jump { target: 8 },
            I::GetLocal { slot: 1 },
            I::Return {},
        ],
    );
    main.refs = vec![FnRef::Local(1)];
    let even = f(
        1,
        1,
        vec![
            I::GetLocal { slot: 0 },
            I::Int { value: 2 },
            I::Rem {},
            I::Int { value: 0 },
            I::Eq {},
            I::Return {},
        ],
    );
    vec![main, even]
}

/// Runs `s`'s function 0 with exactly `used` fuel (it must end as `done`), one less (it must
/// run out), and in every slice size of `slices` (each must end as `done` using `used`).
fn assert_fuel_exact(s: &Setup, done: &Status, used: u64, slices: std::ops::RangeInclusive<u64>) {
    let mut exec = s.start_limited(with_fuel(used));
    assert_eq!(&run_to_end(&mut exec), done);
    let mut exec = s.start_limited(with_fuel(used - 1));
    assert_eq!(
        failed(run_to_end(&mut exec)).limit,
        Some(LimitKind::OutOfFuel)
    );
    let big = 1u64 << 40;
    for slice in slices {
        let mut exec = s.start_limited(with_fuel(big));
        exec.set_slice(slice);
        assert_eq!(&run_to_end(&mut exec), done, "slice {slice}");
        assert_eq!(big - exec.fuel_left().unwrap(), used, "slice {slice}");
    }
}

#[test]
fn local_calls_and_constant_compares_are_exact() {
    let s = setup(local_call_shapes());
    let mut exec = s.start_limited(with_fuel(1 << 40));
    let done = run_to_end(&mut exec);
    assert_eq!(done, Status::Done(Portable::Int(5)));
    // set-up 8; the loop's steps (2, then 3 with the back edge) for 10 items; per item the
    // call (3), the body (6) and the test (1); 5 increments of 3; the end (2) and `n` (2)
    let used = 8 + (2 + 9 * 3) + 10 * 10 + 5 * 3 + 2 + 2;
    assert_eq!((1u64 << 40) - exec.fuel_left().unwrap(), used);
    assert_fuel_exact(&s, &done, used, 1..=12);
    // a local that is not a function raises as an unfused call does
    let mut code = local_call_shapes();
    code[0].code[0] = I::Int { value: 3 };
    assert_eq!(failed(setup(code).run(0, vec![])).kind, "TypeError");
}

/// main(): `let xs = [5, 6, 7]; let t = 0; let i = 0; while i < len(xs) { t += xs[i]; i += 1 }; t`
/// in the compiler's shape: the builtin `len` of a list and `xs[i]` in the loop.
fn index_shapes() -> Vec<FunctionCode> {
    let mut main = f(
        0,
        3,
        vec![
            I::Int { value: 5 },
            I::Int { value: 6 },
            I::Int { value: 7 },
            I::List { len: 3 },
            I::SetLocal { slot: 0 },
            I::Int { value: 0 },
            I::SetLocal { slot: 1 },
            I::Int { value: 0 },
            I::SetLocal { slot: 2 },
            I::GetLocal { slot: 2 },
            I::GetLocal { slot: 0 },
            I::CallNative { native: 0, argc: 1 },
            I::JumpIfNotLt { target: 23 },
            I::GetLocal { slot: 1 },
            I::GetLocal { slot: 0 },
            I::GetLocal { slot: 2 },
            I::GetIndex {},
            I::Add {},
            I::SetLocal { slot: 1 },
            I::GetLocal { slot: 2 },
            I::AddInt { value: 1 },
            I::SetLocal { slot: 2 },
            I::Jump { target: 9 },
            I::GetLocal { slot: 1 },
            I::Return {},
        ],
    );
    main.natives = vec!["len".into()];
    vec![main]
}

#[test]
fn builtin_len_and_list_index_are_exact() {
    let s = setup(index_shapes());
    let mut exec = s.start_limited(with_fuel(1 << 40));
    let done = run_to_end(&mut exec);
    assert_eq!(done, Status::Done(Portable::Int(18)));
    // set-up 9; 3 turns of 14; the last test (4) and `t` (2)
    let used = 9 + 3 * 14 + 4 + 2;
    assert_eq!((1u64 << 40) - exec.fuel_left().unwrap(), used);
    assert_fuel_exact(&s, &done, used, 1..=14);
    // past the end, and `len` of something else, raise as the unfused instructions do
    let mut code = index_shapes();
    code[0].code[15] = I::Int { value: 3 };
    assert_eq!(failed(setup(code).run(0, vec![])).kind, "IndexError");
    // `xs` an integer (`-(5 + 6)`, `Neg` for `List`): `len` raises
    let mut code = index_shapes();
    code[0].code[2] = I::Add {};
    code[0].code[3] = I::Neg {};
    assert_eq!(failed(setup(code).run(0, vec![])).kind, "TypeError");
}

#[test]
fn limits_are_not_catchable() {
    // try { loop forever } catch e { return "caught" }
    let mut code = vec![I::TryBegin { handler: 6 }];
    code.extend([
        I::Int { value: 0 },
        I::SetLocal { slot: 0 },
        I::GetLocal { slot: 0 },
        I::Pop {},
        I::Jump { target: 3 },
        I::Const { index: 0 },
        I::Return {},
    ]);
    let mut main = f(0, 1, code);
    main.consts = vec![str_const("caught")];
    let s = setup(vec![main]);
    let mut exec = s.start_limited(with_fuel(10_000));
    assert_eq!(
        failed(run_to_end(&mut exec)).limit,
        Some(LimitKind::OutOfFuel)
    );

    let limits = Limits {
        deadline: Some(Instant::now() + Duration::from_millis(20)),
        ..Limits::default()
    };
    let mut exec = s.start_limited(limits);
    let e = failed(run_to_end(&mut exec));
    assert_eq!(e.limit, Some(LimitKind::Deadline));
    assert_eq!(e.kind, "Deadline");
}

/// f() = f() (unbounded recursion); main: try { f() } catch e { e["kind"] }
fn recursion_program() -> Vec<FunctionCode> {
    let main = catch_kind();
    let mut rec = f(
        0,
        0,
        vec![I::CallFunction { func: 0, argc: 0 }, I::Return {}],
    );
    rec.refs = vec![FnRef::Local(1)];
    vec![main, rec]
}

#[test]
fn deep_recursion_is_a_catchable_stack_overflow_on_a_small_stack() {
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            let s = setup(recursion_program());
            let caught = s.run(0, vec![]);
            let uncaught = failed(s.run(1, vec![]));
            (caught, uncaught.kind)
        })
        .unwrap();
    let (caught, uncaught) = handle.join().unwrap();
    assert_eq!(caught, Status::Done(Portable::Str("StackOverflow".into())));
    assert_eq!(uncaught, "StackOverflow");
}

#[test]
fn allocation_bomb_hits_memory_limit() {
    // x = nil; loop { x = [x, x, x, x] } -- every list stays alive
    let main = f(
        0,
        1,
        vec![
            I::Nil {},
            I::SetLocal { slot: 0 },
            I::GetLocal { slot: 0 },
            I::GetLocal { slot: 0 },
            I::GetLocal { slot: 0 },
            I::GetLocal { slot: 0 },
            I::List { len: 4 },
            I::SetLocal { slot: 0 },
            I::Jump { target: 2 },
        ],
    );
    let s = setup(vec![main]);
    let before = skiff_vm::heap::live();
    let limits = Limits {
        max_heap: Some(1 << 20),
        fuel: Some(50_000_000),
        ..Limits::default()
    };
    let mut exec = s.start_limited(limits);
    let e = failed(run_to_end(&mut exec));
    assert_eq!(e.limit, Some(LimitKind::MemoryLimit));
    assert_eq!(e.kind, "MemoryLimit");
    drop(exec);
    assert!(skiff_vm::heap::live() <= before + 4096, "memory released");
}

#[test]
fn sleepers_due_together_wake_in_deadline_order() {
    // main: a = spawn { sleep(20); print("a") }; b = spawn { sleep(10); print("b") };
    //       await a; await b
    // The host comes back only after both deadlines: `b`, whose deadline is earlier, runs
    // first although `a` was spawned (and fell asleep) first.
    let sleeper = |ms: i32, text: u32| FunctionCode {
        natives: vec!["sleep".into(), "print".into()],
        consts: vec![Const::Str("a".into()), Const::Str("b".into())],
        ..f(
            0,
            0,
            vec![
                I::Int { value: ms },
                I::CallNative { native: 0, argc: 1 },
                I::Pop {},
                I::Const { index: text },
                I::CallNative { native: 1, argc: 1 },
                I::Return {},
            ],
        )
    };
    let main = FunctionCode {
        refs: vec![FnRef::Local(1), FnRef::Local(2)],
        ..f(
            0,
            2,
            vec![
                I::Closure {
                    func: 0,
                    captures: 0,
                },
                I::Spawn {},
                I::SetLocal { slot: 0 },
                I::Closure {
                    func: 1,
                    captures: 0,
                },
                I::Spawn {},
                I::SetLocal { slot: 1 },
                I::GetLocal { slot: 0 },
                I::Await {},
                I::Pop {},
                I::GetLocal { slot: 1 },
                I::Await {},
                I::Return {},
            ],
        )
    };
    let s = setup(vec![main, sleeper(20, 0), sleeper(10, 1)]);
    let (mut exec, out, _) = s.start(0, vec![]);
    let now = Instant::now();
    assert!(matches!(exec.run(now), Status::Blocked { .. }));
    let later = now + std::time::Duration::from_secs(1);
    assert_eq!(exec.run(later), Status::Done(Portable::Nil));
    assert_eq!(out.text(), "b\na\n");
}

#[test]
fn an_engine_keeps_no_values_of_ended_executions() {
    // fn hoard() { x = nil; i = 0; while i < 1000 { x = [x, x, x, x]; i = i + 1 }; sleep(1e6) }
    // main: spawn(hoard); sleep(1); return 7
    // The first task ends while `hoard` still sleeps holding its chain of lists: ending
    // the execution cancels it, and the engine keeps the emptied task table for the next
    // execution, never the task and the values on its stack.
    let hoard = FunctionCode {
        natives: vec!["sleep".into()],
        ..f(
            0,
            2,
            vec![
                I::Nil {},
                I::SetLocal { slot: 0 },
                I::Int { value: 0 },
                I::SetLocal { slot: 1 },
                I::GetLocal { slot: 1 },
                I::Int { value: 1000 },
                I::JumpIfNotLt { target: 17 },
                I::GetLocal { slot: 0 },
                I::GetLocal { slot: 0 },
                I::GetLocal { slot: 0 },
                I::GetLocal { slot: 0 },
                I::List { len: 4 },
                I::SetLocal { slot: 0 },
                I::GetLocal { slot: 1 },
                I::AddInt { value: 1 },
                I::SetLocal { slot: 1 },
                I::Jump { target: 4 },
                I::Int { value: 1_000_000 },
                I::CallNative { native: 0, argc: 1 },
                I::Return {},
            ],
        )
    };
    let main = FunctionCode {
        natives: vec!["sleep".into()],
        refs: vec![FnRef::Local(1)],
        ..f(
            0,
            0,
            vec![
                I::Closure {
                    func: 0,
                    captures: 0,
                },
                I::Spawn {},
                I::Pop {},
                I::Int { value: 1 },
                I::CallNative { native: 0, argc: 1 },
                I::Pop {},
                I::Int { value: 7 },
                I::Return {},
            ],
        )
    };
    let s = setup(vec![main, hoard]);
    let before = skiff_vm::heap::live();
    for _ in 0..3 {
        let mut exec = s.start_limited(Limits::default());
        let mut now = Instant::now();
        let status = loop {
            match exec.run(now) {
                Status::Yielded => {}
                Status::Blocked { .. } => now += std::time::Duration::from_millis(10),
                other => break other,
            }
        };
        assert_eq!(status, Status::Done(Portable::Int(7)));
        drop(exec);
        assert!(
            skiff_vm::heap::live() <= before + 4096,
            "the lists were released ({} bytes live, {before} before)",
            skiff_vm::heap::live()
        );
    }
}

#[test]
fn iteration_over_list_map_range() {
    // sum = 0; for x in c { sum = sum + x }; for strings: TypeError
    let main = f(
        1,
        2,
        vec![
            I::Int { value: 0 },
            I::SetLocal { slot: 1 },
            I::GetLocal { slot: 0 },
            I::IterStart {},
            I::IterNext { target: 10 },
            I::GetLocal { slot: 1 },
            I::Add {},
            I::SetLocal { slot: 1 },
            I::Jump { target: 4 },
            I::Nil {},
            I::GetLocal { slot: 1 },
            I::Return {},
        ],
    );
    let s = setup(vec![main]);
    let list = Portable::List(vec![Portable::Int(1), Portable::Int(2), Portable::Int(3)]);
    assert_eq!(s.run(0, vec![list]), Status::Done(Portable::Int(6)));
    assert_eq!(
        s.run(0, vec![Portable::Range(0, 5)]),
        Status::Done(Portable::Int(10))
    );
    let map = Portable::Map(vec![
        (Portable::Int(5), Portable::Nil),
        (Portable::Int(7), Portable::Nil),
    ]);
    assert_eq!(s.run(0, vec![map]), Status::Done(Portable::Int(12)));
    assert_eq!(
        failed(s.run(0, vec![Portable::Str("ab".into())])).kind,
        "TypeError"
    );
}

#[test]
fn missing_native_fails_start() {
    let mut main = f(
        0,
        0,
        vec![I::CallNative { native: 0, argc: 0 }, I::Return {}],
    );
    main.natives = vec!["no_such_native".into()];
    let s = setup(vec![main]);
    assert!(matches!(s.try_start(0), Err(StartError::MissingNative(n)) if n == "no_such_native"));
    // a host native makes it resolve
    let mut engine = Engine::new();
    engine.register_native("no_such_native", |_, _| Ok(skiff_vm::Value::Int(9)));
    let v = Execution::call(
        &engine,
        &s.store,
        s.id(0),
        vec![],
        Limits::default(),
        ExecIo::null(),
    )
    .unwrap();
    assert_eq!(v, Portable::Int(9));
}

#[test]
fn cross_blob_and_mutual_recursion() {
    // blob A: even(n)/odd(n) mutually recursive; blob B calls A.even
    let mut even = f(
        1,
        1,
        vec![
            I::GetLocal { slot: 0 },
            I::Int { value: 0 },
            I::JumpIfNotEq { target: 5 },
            I::True {},
            I::Return {},
            I::GetLocal { slot: 0 },
            I::AddInt { value: -1 },
            I::CallFunction { func: 0, argc: 1 },
            I::Return {},
        ],
    );
    even.refs = vec![FnRef::Local(1)];
    let mut odd = even.clone();
    odd.code[3] = I::False {};
    odd.refs = vec![FnRef::Local(0)];
    let mut store = CodeStore::new();
    let a = store
        .insert(
            Arc::new(Blob {
                functions: vec![even, odd],
            }),
            None,
        )
        .unwrap();
    let mut user = f(
        0,
        0,
        vec![
            I::Int { value: 7 },
            I::CallFunction { func: 0, argc: 1 },
            I::Return {},
        ],
    );
    user.refs = vec![FnRef::External(FunctionId { blob: a, member: 0 })];
    let b_blob = Arc::new(Blob {
        functions: vec![user],
    });
    assert!(
        CodeStore::new().insert(b_blob.clone(), None).is_err(),
        "dependency must be present"
    );
    let b = store.insert(b_blob, None).unwrap();
    let v = Execution::call(
        &Engine::new(),
        &store,
        FunctionId { blob: b, member: 0 },
        vec![],
        Limits::default(),
        ExecIo::null(),
    )
    .unwrap();
    assert_eq!(v, Portable::Bool(false));
}

#[test]
fn loop_timing() {
    // i = 0; while i < n { i += 1 }; `SKIFF_LOOP_N=10000000 cargo test --release ...`
    let n: i64 = std::env::var("SKIFF_LOOP_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mut main = f(
        0,
        1,
        vec![
            I::Int { value: 0 },
            I::SetLocal { slot: 0 },
            I::GetLocal { slot: 0 },
            I::Const { index: 0 },
            I::JumpIfNotLt { target: 9 },
            I::GetLocal { slot: 0 },
            I::AddInt { value: 1 },
            I::SetLocal { slot: 0 },
            I::Jump { target: 2 },
            I::GetLocal { slot: 0 },
            I::Return {},
        ],
    );
    main.consts = vec![Const::Int(n)];
    let s = setup(vec![main]);
    let t = Instant::now();
    assert_eq!(s.run(0, vec![]), Status::Done(Portable::Int(n)));
    eprintln!("loop({n}) took {:?}", t.elapsed());
}

#[test]
fn spawn_bomb_hits_memory_limit() {
    // loop { spawn f } -- the spawner never suspends, so tasks pile up
    let mut main = f(
        0,
        0,
        vec![
            I::Function { func: 0 },
            I::Spawn {},
            I::Pop {},
            I::Jump { target: 0 },
        ],
    );
    main.refs = vec![FnRef::Local(1)];
    let body = f(0, 0, vec![I::Nil {}, I::Return {}]);
    let s = setup(vec![main, body]);
    let limits = Limits {
        max_heap: Some(1 << 20),
        fuel: Some(10_000_000),
        ..Limits::default()
    };
    let mut exec = s.start_limited(limits);
    assert_eq!(
        failed(run_to_end(&mut exec)).limit,
        Some(LimitKind::MemoryLimit)
    );
}
