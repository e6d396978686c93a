//! The entry of a bench binary that doubles as profiling loops: with one of its loops'
//! environment variables set, it runs that loop and exits (status 2, with the reason on
//! stderr, if the variable's value is wrong); otherwise it runs its criterion benchmarks.

/// A profiling loop: runs the loop its variable's value names, or says why it cannot.
pub type ProfilingLoop = fn(&str) -> Result<(), String>;

/// Runs the first loop of `loops` whose variable is set, else `benches` and criterion's
/// summary (what `criterion_main!` does).
pub fn run(loops: &[(&str, ProfilingLoop)], benches: fn()) {
    for (var, run) in loops {
        if let Ok(spec) = std::env::var(var) {
            if let Err(e) = run(&spec) {
                eprintln!("{e}");
                std::process::exit(2);
            }
            return;
        }
    }
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
