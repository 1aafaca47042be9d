//! `smart profile` by hand, until the root binary wires it:
//!
//! ```text
//! cargo run -p smart-instance --example profile -- --duration 10s --plot /tmp/busy.svg \
//!     -- sh -c 'while :; do :; done'
//! ```

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use clap::Parser;
use smart_agent99::{ProfileArgs, run};

/// Profile a service (Agent99).
#[derive(Parser)]
#[command(name = "profile")]
struct Cli {
    #[command(flatten)]
    args: ProfileArgs,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli.args) {
        eprintln!("profile: {e}");
        std::process::exit(1);
    }
}
