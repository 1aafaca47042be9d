fn main() {
    eprintln!("vod: not built yet");
    std::process::exit(2);
}
