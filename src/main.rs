//! The `skiff` command: run, check, compile and disassemble Skiff scripts.
//!
//! Exit codes: 0 success, 1 uncaught runtime error, 2 compile errors or bad usage.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    std::process::exit(cli::main(args));
}
