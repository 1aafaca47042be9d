//! `smart`: the SMART peer binary. See the README and `../shared/DESIGN.md`.

fn main() {
    println!("smart");
}
