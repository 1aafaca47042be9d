//! `smart profile` by hand, until the root binary wires it:
//!
//! ```text
//! cargo run -p smart-instance --example profile -- --duration 10s --plot /tmp/busy.svg \
//!     -- sh -c 'while :; do :; done'
//! ```

use clap::Parser;
use smart_instance::profiler::{ProfileArgs, run};

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
