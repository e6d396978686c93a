//! Peers taking turns, and the paired ratio: shared by the bench files that compare Skiff
//! with a peer (`#[path = "support/paired.rs"] mod paired;`). Under `support/`, so that cargo
//! does not take it for a bench target of its own.
//!
//! Criterion measures the peers of a row one after the other, seconds apart, and this shared
//! host's speed drifts over seconds (another tenant's load): the ratio of two criterion
//! medians taken in different stretches moved by a fifth and more from run to run. So the
//! peers of a row take turns: every sample of every peer runs rounds of one block of each
//! peer's iterations, back to back (in [`Rounds::order`]), and every round's times are kept
//! ([`Rounds`]). Skiff's time ÷ a peer's in the same round cancels the drift; the median of
//! that over all rounds is the row's paired ratio, which `benches/report.py` reports and
//! judges the bars by.
//!
//! A paired ratio can still move with the host's load (a loaded host slowed Skiff's one-thread
//! round trip more than quinn's echo), so a row's rounds are also split into stretches in the
//! order they ran, each with its ratio and the peer's time there.
//!
//! Each block also records the process's CPU time, so a row reports how much CPU an
//! iteration of each peer took and how many cores it kept busy: the ratio of times is the
//! ratio of CPU times ÷ the ratio of cores busy.
//!
//! Invariant: every round holds one [`Turn`] per peer, in the order of the names given to
//! [`Rounds::write`], whatever order the turns were taken in ([`Rounds::order`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The subject every peer is compared with.
const SUBJECT: &str = "skiff";

/// A peer's CPU is reported only if its blocks took at least this long on average: the
/// process's CPU time is read in 10 ms ticks, and over shorter blocks it was visibly skewed
/// (`host_call`'s 50 µs blocks of Lua showed 1.28 cores busy on one thread).
const MIN_CPU_BLOCK: Duration = Duration::from_millis(1);

/// A row's rounds are also split into this many stretches in the order they ran, each with its
/// own paired ratio and the peer's time per iteration there: how the ratio moved with the
/// host's speed over the run (`benches/report.py` lists them for the rows with a bar).
const STRETCHES: usize = 10;

/// Stretches are written only for a row of at least this many rounds per stretch.
const MIN_STRETCH_ROUNDS: usize = 20;

/// One peer's block in a round of turns.
pub struct Turn {
    iters: u64,
    wall: Duration,
    /// CPU time of the whole process (every thread) during the block; `None` where it cannot
    /// be read.
    cpu: Option<Duration>,
}

impl Turn {
    fn per_iter(&self) -> f64 {
        self.wall.as_secs_f64() / self.iters as f64
    }
}

/// A block being measured: [`TurnStart::now`] before it, [`TurnStart::finish`] after.
pub struct TurnStart {
    at: Instant,
    cpu: Option<Duration>,
}

impl TurnStart {
    pub fn now() -> TurnStart {
        let cpu = process_cpu();
        TurnStart {
            at: Instant::now(),
            cpu,
        }
    }

    /// The block that started here ended now, after `iters` iterations.
    pub fn finish(self, iters: u64) -> Turn {
        let wall = self.at.elapsed();
        let cpu = process_cpu()
            .zip(self.cpu)
            .map(|(after, before)| after.saturating_sub(before));
        Turn { iters, wall, cpu }
    }
}

/// CPU time this process has used so far, all threads (Linux: `utime + stime` of
/// `/proc/self/stat`, in the kernel's fixed 100 Hz clock ticks; summed over a row's rounds
/// the tick is fine enough). `None` elsewhere.
fn process_cpu() -> Option<Duration> {
    const TICKS_PER_SECOND: u64 = 100;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) in parentheses: state is the
    // 3rd field of the line, utime the 14th, stime the 15th.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / TICKS_PER_SECOND,
    ))
}

/// The rounds of turns of one row, from criterion's warm-up and measurement of every peer.
#[derive(Default)]
pub struct Rounds(Mutex<Vec<Vec<Turn>>>);

/// The sizes of the blocks `iters` iterations take turns in: `block` each, the last the rest.
pub fn blocks(iters: u64, block: u64) -> impl Iterator<Item = u64> {
    let block = block.max(1);
    (0..iters.div_ceil(block)).map(move |i| block.min(iters - i * block))
}

impl Rounds {
    /// The order the `peers` of the row take their turns in, in its next round (indices into
    /// the row's peers, the subject first): the subject and the peer after it, the one its
    /// bar compares it with, swap places every other round of the row (counted over all its
    /// samples: a sample of one transfer is one round), and any other peers keep theirs
    /// after them. So each of the two follows the other, and whatever ran last, equally
    /// often: the turn before a turn moves its time (`benches/README.md`, twenty-fourth
    /// session).
    pub fn order(&self, peers: usize) -> impl Iterator<Item = usize> {
        let odd = self.0.lock().unwrap_or_else(|e| e.into_inner()).len() % 2 == 1;
        let swap = odd && peers >= 2;
        (0..peers).map(move |i| if swap && i < 2 { 1 - i } else { i })
    }

    /// Keeps a round: one turn per peer, each with the peer's index, in the order they were
    /// taken ([`Rounds::order`]). Returns the wall time of peer `which`'s turn, the time
    /// criterion is measuring.
    pub fn record(&self, mut round: Vec<(usize, Turn)>, which: usize) -> Duration {
        round.sort_by_key(|&(peer, _)| peer);
        let round: Vec<Turn> = round.into_iter().map(|(_, turn)| turn).collect();
        let timed = round[which].wall;
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(round);
        timed
    }

    /// Writes `<criterion home>/paired/<row>.json` (`/` in `row` as `_`): the number of
    /// rounds; for each peer, the median over rounds of Skiff's time ÷ the peer's; for each
    /// peer, the same over each of [`STRETCHES`] stretches of the rounds in the order they
    /// ran, with the peer's median time per iteration there (a row of enough rounds); for each
    /// peer, its CPU time per iteration and the cores it kept busy (sums over all rounds);
    /// then `extra` (more fields, each starting with `, `). `peers` names the turns of each
    /// round in order. `benches/report.py` reads it. Nothing is written when criterion only
    /// checks the benchmarks (`cargo test --benches`) or when its filter left the row out.
    pub fn write(&self, row: &str, peers: &[&str], extra: impl FnOnce() -> String) {
        if !measuring() {
            return;
        }
        let rounds = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if rounds.is_empty() {
            // Criterion's filter left the row out: keep what an earlier run wrote.
            return;
        }
        let Some(skiff) = peers.iter().position(|&p| p == SUBJECT) else {
            return;
        };
        let others = || peers.iter().enumerate().filter(move |&(i, _)| i != skiff);
        let ratios: Vec<String> = others()
            .map(|(i, peer)| format!("\"{peer}\": {:.4}", paired_ratio(&rounds, skiff, i)))
            .collect();
        // The same over each stretch of the run, with the peer's time there (the host's speed).
        let stretches: Vec<String> = if rounds.len() < STRETCHES * MIN_STRETCH_ROUNDS {
            Vec::new()
        } else {
            others()
                .map(|(i, peer)| format!("\"{peer}\": [{}]", stretches(&rounds, skiff, i)))
                .collect()
        };
        let cpu: Vec<String> = peers
            .iter()
            .enumerate()
            .filter_map(|(i, peer)| {
                let (mut iters, mut wall, mut cpu) = (0, Duration::ZERO, Duration::ZERO);
                for turn in rounds.iter().map(|t| &t[i]) {
                    iters += turn.iters;
                    wall += turn.wall;
                    cpu += turn.cpu?;
                }
                if wall / (rounds.len() as u32) < MIN_CPU_BLOCK {
                    return None;
                }
                Some(format!(
                    "\"{peer}\": {{\"per_iter\": {:.9}, \"cores\": {:.3}}}",
                    cpu.as_secs_f64() / iters.max(1) as f64,
                    cpu.as_secs_f64() / wall.as_secs_f64().max(f64::MIN_POSITIVE)
                ))
            })
            .collect();
        let json = format!(
            "{{\"row\": \"{row}\", \"rounds\": {}, \"ratios\": {{{}}}, \"stretches\": {{{}}}, \
             \"cpu\": {{{}}}{}}}\n",
            rounds.len(),
            ratios.join(", "),
            stretches.join(", "),
            cpu.join(", "),
            extra()
        );
        let dir = criterion_home().join("paired");
        let path = dir.join(format!("{}.json", row.replace('/', "_")));
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, json)) {
            eprintln!(
                "!!! {row}: paired ratios not written to {}: {e}",
                path.display()
            );
        }
    }
}

/// The median over `rounds` of peer `skiff`'s time per iteration ÷ peer `other`'s in the same
/// round.
fn paired_ratio(rounds: &[Vec<Turn>], skiff: usize, other: usize) -> f64 {
    median(
        rounds
            .iter()
            .map(|t| t[skiff].per_iter() / t[other].per_iter())
            .collect(),
    )
}

/// [`STRETCHES`] stretches of `rounds` in the order they ran, each as `[peer's median time
/// per iteration, paired ratio]` of peer `skiff` to peer `other` there, comma-separated.
fn stretches(rounds: &[Vec<Turn>], skiff: usize, other: usize) -> String {
    let stretch = |s: usize| {
        let part = &rounds[s * rounds.len() / STRETCHES..(s + 1) * rounds.len() / STRETCHES];
        let peer_time = median(part.iter().map(|t| t[other].per_iter()).collect());
        format!("[{peer_time:.9}, {:.4}]", paired_ratio(part, skiff, other))
    };
    (0..STRETCHES).map(stretch).collect::<Vec<_>>().join(", ")
}

/// The median of `values` (the upper one of an even count; NaN if there are none).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Where criterion keeps its results (as criterion finds it).
fn criterion_home() -> std::path::PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "target".into())
        .join("criterion")
}

/// Whether this is a measuring run (`cargo bench`), not criterion's one-pass check.
pub fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}
