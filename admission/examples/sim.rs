//! Runs `smart sim` from this crate alone (the root binary mounts the same flags):
//! `cargo run --release -p smart-admission --example sim -- --help`.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use clap::Parser;
use smart_admission::sim::{SimArgs, run};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: SimArgs,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli.args) {
        eprintln!("smart sim: {e}");
        std::process::exit(2);
    }
}
