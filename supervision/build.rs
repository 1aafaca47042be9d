//! Embeds the dashboard's chart library (uPlot, from `../ui/node_modules`, installed by
//! `scripts/setup.sh` with `npm ci`) into the binary, so every node serves `/ui` with no
//! files beside it. Without it the dashboard still works, with a note instead of the chart.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=../ui");
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let dist = Path::new("../ui/node_modules/uplot/dist");
    for (from, to, stub) in [
        (
            "uPlot.iife.min.js",
            "uplot.js",
            "window.uPlot = null; // uPlot not installed: run scripts/setup.sh and rebuild\n",
        ),
        ("uPlot.min.css", "uplot.css", "/* uPlot not installed */\n"),
    ] {
        let bytes = std::fs::read(dist.join(from)).unwrap_or_else(|_| {
            println!(
                "cargo:warning=ui/node_modules/uplot missing: the dashboard is built without its chart (run scripts/setup.sh)"
            );
            stub.as_bytes().to_vec()
        });
        std::fs::write(Path::new(&out).join(to), bytes).expect("write OUT_DIR");
    }
}
