//! Interpreter benchmarks: Skiff against Lua 5.4 (`mlua`, vendored) and rhai, side by side.
//!
//! Every workload is written once per engine — the same algorithm, the same sizes, each in the
//! engine's own idiom where the languages differ (noted per workload) — and measured in the
//! same run, so the ratios in `benches/README.md` compare like with like on one machine:
//!
//! | group          | what it stresses                                                     |
//! |----------------|----------------------------------------------------------------------|
//! | `fib30`        | recursive calls and integer arithmetic: `fib(30)`                     |
//! | `loop10m`      | a 10,000,000-iteration `while` loop: compare, add, remainder, branch   |
//! | `string1m`     | building one string from 1,000,000 pieces (`str(i)` for i < 1M)       |
//! | `list1m`       | building a 1,000,000-element list by appending                        |
//! | `closures`     | closure-heavy `map`/`filter` over a 100,000-element list, 10 rounds   |
//! | `binarytrees12`| binary-trees (depth 12, lists as nodes): allocation and recursion     |
//! | `host_call`    | host→VM call of a trivial function (`add1(41)`), per call             |
//! | `host_call_2k` | the same call into a module with 2,000 other functions                |
//! | `tasks`        | 20,000 rounds of 8 tasks spawned, then awaited in order               |
//!
//! Skiff and Lua (the bars' peer) take turns, iteration by iteration (the `host_call` rows:
//! blocks of 1,000), and each row's paired ratio goes to `<criterion home>/paired/<group>.json`
//! (`support/paired.rs`): measured one after the other, seconds apart, the two medians'
//! ratio moved with this host's stretches (`fib30` 0.62 in one run, 0.93 in another).
//! rhai, 10–40× slower, is measured on its own as before.
//!
//! Each engine calls its entry function the way a host calling it repeatedly would: Skiff
//! through a `skiff::Function` handle (`Engine::function`, looked up and verified once),
//! Lua through the `mlua::Function` its chunk returned, rhai by name with `call_fn`.
//!
//! Before anything is timed, each engine runs each workload once and its result is compared
//! with the value computed in Rust: a broken engine cannot look fast. An engine that fails
//! that check (or fails to compile its program) is reported loudly on stderr and left out of
//! that group, so the other engines are still measured.
//!
//! Idiom differences: Skiff strings are immutable, so `string1m` collects pieces in a list and
//! `join`s them (Lua: table + `table.concat`; rhai, whose strings are mutable and which has no
//! `join`, appends with `+=`). rhai arrays are values, so `t[0]` in binary-trees copies the
//! subtree — that is rhai's semantics and part of its cost. Lua has no built-in `map`/`filter`,
//! so they are written in Lua, as Skiff's are written in Skiff (its prelude); rhai's are
//! natives calling back into closures. `tasks`: Lua's nearest equivalent of a task is a
//! coroutine (created per task, resumed once to get its value); rhai has none, so the row
//! has no rhai.
//!
//! Under `cargo test --benches` (no `--bench` flag) the sizes shrink (e.g. `fib(15)`) so CI
//! checks every engine's correctness quickly in a debug build.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-bench cargo bench --bench interp`; see
//! `benches/README.md` for the whole suite and the report script. With `SKIFF_INTERP_LOOP`
//! set, the binary runs one engine's workload in a loop for profilers instead
//! ([`profiling_loop`]).

use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{black_box, criterion_group, BenchmarkGroup, Criterion};

#[path = "support/entry.rs"]
mod entry;
#[path = "support/paired.rs"]
mod paired;
use paired::{blocks, Rounds, TurnStart};

/// One workload, written for every engine.
struct Workload {
    /// Criterion group name.
    group: &'static str,
    /// Skiff program; `entry` is called with `arg`.
    skiff: &'static str,
    /// Lua chunk whose value is the entry function.
    lua: &'static str,
    /// rhai script defining `entry` (`None`: rhai has no equivalent, the row has no rhai).
    rhai: Option<&'static str>,
    entry: &'static str,
    arg: i64,
    /// The correct result, computed in Rust.
    expected: i64,
}

/// Rounds of the `closures` workload (fixed in every program).
const CLOSURE_ROUNDS: i64 = 10;

/// `cargo test --benches` (CI) runs each benchmark once without `--bench`: then the
/// workloads shrink so the correctness checks stay quick in a debug build.
fn quick() -> bool {
    !paired::measuring()
}

/// Workload sizes: the real ones, or the quick ones under `cargo test`.
struct Sizes {
    fib: i64,
    spin: i64,
    build: i64,
    closures: i64,
    trees: i64,
    /// Rounds of `tasks` (8 tasks each).
    task_rounds: i64,
    /// Functions besides `add1` in `host_call_2k`'s module.
    other_functions: usize,
}

fn sizes() -> Sizes {
    if quick() {
        Sizes {
            fib: 15,
            spin: 10_000,
            build: 10_000,
            closures: 1_000,
            trees: 6,
            task_rounds: 100,
            other_functions: 100,
        }
    } else {
        Sizes {
            fib: 30,
            spin: 10_000_000,
            build: 1_000_000,
            closures: 100_000,
            trees: 12,
            task_rounds: 20_000,
            other_functions: 2_000,
        }
    }
}

fn fib(n: i64) -> i64 {
    let (mut a, mut b) = (0i64, 1i64);
    for _ in 0..n {
        (a, b) = (b, a + b);
    }
    a
}

fn loop_expected(n: i64) -> i64 {
    (0..n).map(|i| i % 7).sum()
}

fn string_expected(n: i64) -> i64 {
    (0..n).map(|i| i.to_string().len() as i64).sum()
}

fn closures_expected(n: i64, rounds: i64) -> i64 {
    (0..rounds)
        .map(|k| (0..n).map(|x| x * 3 + k).filter(|x| x % 2 == 0).count() as i64)
        .sum()
}

fn trees_expected(maxd: i64) -> i64 {
    let nodes = |d: i64| (1i64 << (d + 1)) - 1;
    let mut total = nodes(maxd + 1);
    let mut d = 4;
    while d <= maxd {
        total += (1i64 << (maxd - d + 4)) * nodes(d);
        d += 2;
    }
    total + nodes(maxd)
}

/// `add1` after `n` other functions, in each engine's syntax (Skiff, Lua, rhai): a host
/// calling into a large module. Built once per run and leaked, to sit beside the other
/// workloads' static sources.
fn many_functions(n: usize) -> [&'static str; 3] {
    let (mut skiff, mut lua, mut rhai) = (
        String::new(),
        String::from("local fs = {}\n"),
        String::new(),
    );
    for i in 0..n {
        skiff.push_str(&format!("fn f{i}(x) {{ x * {i} + 1 }}\n"));
        lua.push_str(&format!("fs[{i}] = function(x) return x * {i} + 1 end\n"));
        rhai.push_str(&format!("fn f{i}(x) {{ x * {i} + 1 }}\n"));
    }
    skiff.push_str("fn add1(x) { x + 1 }\n");
    lua.push_str("local function add1(x) return x + 1 end\nreturn add1\n");
    rhai.push_str("fn add1(x) { x + 1 }\n");
    [skiff, lua, rhai].map(|s| &*Box::leak(s.into_boxed_str()))
}

fn workloads() -> Vec<Workload> {
    let n = sizes();
    let [skiff_2k, lua_2k, rhai_2k] = many_functions(n.other_functions);
    vec![
        Workload {
            group: "fib30",
            skiff: r#"
fn fib(n) { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } }
"#,
            lua: r#"
local function fib(n)
  if n < 2 then return n end
  return fib(n - 1) + fib(n - 2)
end
return fib
"#,
            rhai: Some(
                r#"
fn fib(n) { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } }
"#,
            ),
            entry: "fib",
            arg: n.fib,
            expected: fib(n.fib),
        },
        Workload {
            group: "loop10m",
            skiff: r#"
fn spin(n) {
  let i = 0
  let s = 0
  while i < n {
    s = s + i % 7
    i = i + 1
  }
  s
}
"#,
            lua: r#"
local function spin(n)
  local i = 0
  local s = 0
  while i < n do
    s = s + i % 7
    i = i + 1
  end
  return s
end
return spin
"#,
            rhai: Some(
                r#"
fn spin(n) {
  let i = 0;
  let s = 0;
  while i < n {
    s = s + i % 7;
    i = i + 1;
  }
  s
}
"#,
            ),
            entry: "spin",
            arg: n.spin,
            expected: loop_expected(n.spin),
        },
        Workload {
            group: "string1m",
            skiff: r#"
fn build(n) {
  let parts = []
  for i in 0..n { push(parts, str(i)) }
  len(join(parts, ""))
}
"#,
            lua: r#"
local function build(n)
  local parts = {}
  for i = 0, n - 1 do parts[i + 1] = tostring(i) end
  return #table.concat(parts)
end
return build
"#,
            rhai: Some(
                r#"
fn build(n) {
  let s = "";
  for i in 0..n { s += i.to_string(); }
  s.len()
}
"#,
            ),
            entry: "build",
            arg: n.build,
            expected: string_expected(n.build),
        },
        Workload {
            group: "list1m",
            skiff: r#"
fn build(n) {
  let xs = []
  for i in 0..n { push(xs, i) }
  len(xs) + xs[n - 1]
}
"#,
            lua: r#"
local function build(n)
  local xs = {}
  for i = 0, n - 1 do xs[#xs + 1] = i end
  return #xs + xs[n]
end
return build
"#,
            rhai: Some(
                r#"
fn build(n) {
  let xs = [];
  for i in 0..n { xs.push(i); }
  xs.len() + xs[n - 1]
}
"#,
            ),
            entry: "build",
            arg: n.build,
            expected: n.build + n.build - 1,
        },
        Workload {
            group: "closures",
            skiff: r#"
const ROUNDS = 10
fn closures(n) {
  let xs = []
  for i in 0..n { push(xs, i) }
  let total = 0
  for r in 0..ROUNDS {
    let k = r
    let m = map(xs, fn(x) { x * 3 + k })
    let f = filter(m, fn(x) { x % 2 == 0 })
    total += len(f)
  }
  total
}
"#,
            lua: r#"
local function map(t, f)
  local r = {}
  for i = 1, #t do r[i] = f(t[i]) end
  return r
end
local function filter(t, f)
  local r, n = {}, 0
  for i = 1, #t do
    local v = t[i]
    if f(v) then n = n + 1; r[n] = v end
  end
  return r
end
local function closures(n)
  local xs = {}
  for i = 0, n - 1 do xs[i + 1] = i end
  local total = 0
  for r = 0, 10 - 1 do
    local k = r
    local m = map(xs, function(x) return x * 3 + k end)
    local f = filter(m, function(x) return x % 2 == 0 end)
    total = total + #f
  end
  return total
end
return closures
"#,
            rhai: Some(
                r#"
fn closures(n) {
  let xs = [];
  for i in 0..n { xs.push(i); }
  let total = 0;
  for r in 0..10 {
    let k = r;
    let m = xs.map(|x| x * 3 + k);
    let f = m.filter(|x| x % 2 == 0);
    total += f.len();
  }
  total
}
"#,
            ),
            entry: "closures",
            arg: n.closures,
            expected: closures_expected(n.closures, CLOSURE_ROUNDS),
        },
        Workload {
            group: "binarytrees12",
            skiff: r#"
fn make(d) { if d == 0 { [] } else { [make(d - 1), make(d - 1)] } }
fn check(t) { if len(t) == 0 { 1 } else { 1 + check(t[0]) + check(t[1]) } }
fn pow2(e) {
  let p = 1
  let i = 0
  while i < e { p = p * 2; i += 1 }
  p
}
fn trees(maxd) {
  let total = check(make(maxd + 1))
  let long = make(maxd)
  let d = 4
  while d <= maxd {
    let iters = pow2(maxd - d + 4)
    let i = 0
    while i < iters { total += check(make(d)); i += 1 }
    d += 2
  }
  total + check(long)
}
"#,
            lua: r#"
local function make(d)
  if d == 0 then return {} end
  return { make(d - 1), make(d - 1) }
end
local function check(t)
  if #t == 0 then return 1 end
  return 1 + check(t[1]) + check(t[2])
end
local function pow2(e)
  local p, i = 1, 0
  while i < e do p = p * 2; i = i + 1 end
  return p
end
local function trees(maxd)
  local total = check(make(maxd + 1))
  local long = make(maxd)
  local d = 4
  while d <= maxd do
    local iters = pow2(maxd - d + 4)
    local i = 0
    while i < iters do total = total + check(make(d)); i = i + 1 end
    d = d + 2
  end
  return total + check(long)
end
return trees
"#,
            rhai: Some(
                r#"
fn make(d) { if d == 0 { [] } else { [make(d - 1), make(d - 1)] } }
fn check(t) { if t.len() == 0 { 1 } else { 1 + check(t[0]) + check(t[1]) } }
fn pow2(e) {
  let p = 1;
  let i = 0;
  while i < e { p = p * 2; i += 1; }
  p
}
fn trees(maxd) {
  let total = check(make(maxd + 1));
  let long = make(maxd);
  let d = 4;
  while d <= maxd {
    let iters = pow2(maxd - d + 4);
    let i = 0;
    while i < iters { total += check(make(d)); i += 1; }
    d += 2;
  }
  total + check(long)
}
"#,
            ),
            entry: "trees",
            arg: n.trees,
            expected: trees_expected(n.trees),
        },
        Workload {
            group: "host_call",
            skiff: "fn add1(x) { x + 1 }\n",
            lua: "local function add1(x) return x + 1 end\nreturn add1\n",
            rhai: Some("fn add1(x) { x + 1 }\n"),
            entry: "add1",
            arg: 41,
            expected: 42,
        },
        Workload {
            group: "host_call_2k",
            skiff: skiff_2k,
            lua: lua_2k,
            rhai: Some(rhai_2k),
            entry: "add1",
            arg: 41,
            expected: 42,
        },
        Workload {
            group: "tasks",
            skiff: r#"
fn tasks(rounds) {
  let total = 0
  for r in 0..rounds {
    let ts = []
    for i in 0..8 { push(ts, spawn { i * r }) }
    for t in ts { total += await t }
  }
  total
}
"#,
            lua: r#"
local function tasks(rounds)
  local total = 0
  for r = 0, rounds - 1 do
    local ts = {}
    for i = 0, 7 do ts[i + 1] = coroutine.create(function() return i * r end) end
    for k = 1, 8 do
      local _, v = coroutine.resume(ts[k])
      total = total + v
    end
  end
  return total
end
return tasks
"#,
            rhai: None,
            entry: "tasks",
            arg: n.task_rounds,
            expected: 28 * n.task_rounds * (n.task_rounds - 1) / 2,
        },
    ]
}

/// Reports an engine that cannot run a workload correctly; it is left out of the group
/// (the caller returns what this returns: nothing, or no runner).
fn broken<T: Default>(engine: &str, w: &Workload, why: String) -> T {
    eprintln!(
        "\n!!! {engine} FAILED the correctness check for `{}` and is NOT measured: {why}\n",
        w.group
    );
    T::default()
}

/// One iteration of a workload in one engine, its result checked once before timing.
type Runner = Box<dyn FnMut()>;

fn skiff_runner(w: &Workload) -> Option<Runner> {
    let engine = skiff::Engine::new(skiff::Limits::default());
    let module = match engine.compile(w.skiff, &format!("{}.skiff", w.group)) {
        Ok(m) => m,
        Err(e) => return broken("skiff", w, format!("compile: {e}")),
    };
    let function = match engine.function(&module, w.entry) {
        Ok(f) => f,
        Err(e) => return broken("skiff", w, format!("lookup: {e}")),
    };
    match function.call::<i64>((w.arg,)) {
        Ok(v) if v == w.expected => {}
        Ok(v) => return broken("skiff", w, format!("got {v}, want {}", w.expected)),
        Err(e) => return broken("skiff", w, format!("run: {e}")),
    }
    let arg = w.arg;
    Some(Box::new(move || {
        function.call::<i64>((black_box(arg),)).unwrap();
    }))
}

fn lua_runner(w: &Workload) -> Option<Runner> {
    let lua = mlua::Lua::new();
    let f: mlua::Function = match lua.load(w.lua).set_name(w.group).eval() {
        Ok(f) => f,
        Err(e) => return broken("lua54", w, format!("load: {e}")),
    };
    match f.call::<i64>(w.arg) {
        Ok(v) if v == w.expected => {}
        Ok(v) => return broken("lua54", w, format!("got {v}, want {}", w.expected)),
        Err(e) => return broken("lua54", w, format!("run: {e}")),
    }
    let arg = w.arg;
    Some(Box::new(move || {
        // The state lives as long as the function that runs in it.
        let _state = &lua;
        f.call::<i64>(black_box(arg)).unwrap();
    }))
}

/// Skiff and Lua take turns (`support/paired.rs`): every sample of either runs rounds of one
/// block of Skiff's iterations and one of Lua's; criterion gets the measured engine's time,
/// the rounds give the paired ratio. A block is one iteration, or 1,000 of `host_call`'s (its
/// iterations are too short to time one by one).
fn bench_in_turn(g: &mut BenchmarkGroup<'_, WallTime>, w: &Workload) {
    let mut runners: Vec<(&str, Runner)> = [("skiff", skiff_runner(w)), ("lua54", lua_runner(w))]
        .into_iter()
        .filter_map(|(name, runner)| Some((name, runner?)))
        .collect();
    let block = if w.group.starts_with("host_call") {
        1000
    } else {
        1
    };
    let rounds = Rounds::default();
    for which in 0..runners.len() {
        let name = runners[which].0;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for n in blocks(iters, block) {
                    let mut round = Vec::with_capacity(runners.len());
                    for at in rounds.order(runners.len()) {
                        let start = TurnStart::now();
                        (0..n).for_each(|_| (runners[at].1)());
                        round.push((at, start.finish(n)));
                    }
                    timed += rounds.record(round, which);
                }
                timed
            })
        });
    }
    let names: Vec<&str> = runners.iter().map(|(name, _)| *name).collect();
    rounds.write(w.group, &names, String::new);
}

fn bench_rhai(g: &mut BenchmarkGroup<'_, WallTime>, w: &Workload) {
    let mut engine = rhai::Engine::new();
    // rhai's release default; debug builds of rhai default to 8, too shallow for fib.
    engine.set_max_call_levels(64);
    let Some(source) = w.rhai else {
        return;
    };
    let ast = match engine.compile(source) {
        Ok(a) => a,
        Err(e) => return broken("rhai", w, format!("compile: {e}")),
    };
    let call =
        || engine.call_fn::<i64>(&mut rhai::Scope::new(), &ast, w.entry, (black_box(w.arg),));
    match call() {
        Ok(v) if v == w.expected => {}
        Ok(v) => return broken("rhai", w, format!("got {v}, want {}", w.expected)),
        Err(e) => return broken("rhai", w, format!("run: {e}")),
    }
    g.bench_function("rhai", |b| b.iter(|| call().unwrap()));
}

fn interpreters(c: &mut Criterion) {
    for w in workloads() {
        let mut g = c.benchmark_group(w.group);
        if w.group.starts_with("host_call") {
            // Microsecond-scale: more samples are cheap.
            g.sample_size(50).measurement_time(Duration::from_secs(2));
        }
        bench_in_turn(&mut g, &w);
        bench_rhai(&mut g, &w);
        g.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = interpreters
}

/// The environment variable that turns the bench binary into a profiling loop
/// ([`profiling_loop`]) instead of the benchmarks.
const LOOP_VAR: &str = "SKIFF_INTERP_LOOP";

/// `SKIFF_INTERP_LOOP=<skiff|lua54>:<group>:<iterations>`: `iterations` iterations of one
/// engine's runner of one workload, built and checked as the benchmarks build it (the real
/// sizes with `--bench` among the arguments), then the time per iteration on stderr. An
/// iteration of `host_call` is one call. Profilers run the loop twice with different counts
/// and read the difference: per iteration, with the start-up taken out (benches/README.md,
/// "Twenty-ninth session").
fn profiling_loop(spec: &str) -> Result<(), String> {
    let bad = || format!("{LOOP_VAR}: expected <skiff|lua54>:<group>:<iterations>, got {spec:?}");
    let mut parts = spec.splitn(3, ':');
    let (Some(engine), Some(group), Some(count)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let iterations: u64 = count.parse().map_err(|_| bad())?;
    let w = workloads()
        .into_iter()
        .find(|w| w.group == group)
        .ok_or_else(|| format!("{LOOP_VAR}: no workload {group:?}"))?;
    let runner = match engine {
        "skiff" => skiff_runner(&w),
        "lua54" => lua_runner(&w),
        _ => return Err(bad()),
    };
    // A runner that failed its check has said why on stderr.
    let mut run = runner.ok_or_else(|| format!("{LOOP_VAR}: {engine} cannot run {group}"))?;
    let start = Instant::now();
    for _ in 0..iterations {
        run();
    }
    eprintln!(
        "{engine} {group}: {iterations} iterations, {:.1} ns per iteration",
        start.elapsed().as_secs_f64() * 1e9 / iterations.max(1) as f64
    );
    Ok(())
}

fn main() {
    entry::run(&[(LOOP_VAR, profiling_loop)], benches);
}
