//! The `smart` command line without a cluster: versions, completions, the man page, `config
//! check`, tokens, and exit codes when nothing answers.

// A test, example or bench target links every dependency of its package; the lint
// is meant for the library.
#![allow(unused_crate_dependencies)]

use std::process::{Command, Output};

fn smart(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_smart"))
        .args(args)
        .env_remove("SMART_ADDR")
        .env_remove("SMART_TOKEN")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn version_names_the_crate_and_protocol_versions() {
    let v: serde_json::Value =
        serde_json::from_str(&stdout(&smart(&["version", "--json"]))).unwrap();
    assert_eq!(v["cli"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["cli"]["api_version"], smart_api::API_VERSION);
    assert_eq!(
        v["cli"]["wire_version"],
        smart_transport::frame::PROTOCOL_VERSION
    );
    assert_eq!(
        v["cli"]["heartbeat_version"],
        smart_proto::heartbeat::VERSION
    );
    assert!(v["node"].is_null());
    assert!(stdout(&smart(&["version"])).contains("message API v"));
}

#[test]
fn completions_and_the_man_page_come_from_the_clap_definitions() {
    let bash = stdout(&smart(&["completions", "bash"]));
    for cmd in [
        "status", "nodes", "services", "events", "admit", "stop", "locate", "drain", "undrain",
    ] {
        assert!(bash.contains(cmd), "bash completion lacks {cmd}");
    }
    assert!(stdout(&smart(&["completions", "zsh"])).contains("#compdef smart"));
    let man = stdout(&smart(&["man"]));
    assert!(
        man.contains(".TH smart") && man.contains("undrain"),
        "{man}"
    );
}

#[test]
fn config_check_accepts_the_shipped_configs_and_names_what_is_wrong() {
    let root = env!("CARGO_MANIFEST_DIR");
    for f in [
        "config/example.toml",
        "config/loopback-3/n1.toml",
        "config/loopback-3/n3.toml",
    ] {
        let out = stdout(&smart(&["config", "check", &format!("{root}/{f}")]));
        assert!(out.contains(": ok: node n"), "{out}");
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("n.toml");
    std::fs::write(
        &p,
        "node_id = 1\ndata_dir = \"d\"\nlisten = \"127.0.0.1:7101\"\ncluster_key_file = \"k\"\nnode_key_file = \"n1.key\"\nnode_public_keys_file = \"nodes.pub\"\nhttp_listen = \"127.0.0.1:0\"\n[election]\nmembers = [1]\n",
    )
    .unwrap();
    let out = smart(&["config", "check", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("n.toml") && err.contains("http_listen"),
        "{err}"
    );
}

#[test]
fn tokens_new_appends_a_digest_and_prints_the_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("tokens.toml");
    let f = f.to_str().unwrap();
    let t = stdout(&smart(&[
        "tokens", "new", "--scope", "admin", "--name", "ci", "--file", f,
    ]));
    let token = t.trim();
    assert!(token.starts_with("smart_") && token.len() == 70, "{token}");
    let text = std::fs::read_to_string(f).unwrap();
    assert!(
        !text.contains(token) && text.contains("scope = \"admin\""),
        "{text}"
    );
    stdout(&smart(&["tokens", "new", "--file", f]));
    assert_eq!(
        text.matches("[[token]]").count() + 1,
        std::fs::read_to_string(f)
            .unwrap()
            .matches("[[token]]")
            .count()
    );
}

#[test]
fn admin_commands_say_how_they_failed_in_their_exit_code() {
    // Nothing listens on port 1: unreachable.
    let out = smart(&["status", "--addr", "http://127.0.0.1:1", "--token", "x"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // No address at all: a usage error.
    let out = smart(&["nodes"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = smart(&["admit", "v", "--addr", "http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2), "no command and no --client");
}

#[test]
fn the_three_host_deployment_configs_pass_config_check() {
    // As docs/operations.md ("Three machines") installs them: each config beside the keys
    // `smart keys` made and a tokens file `smart tokens new` wrote.
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    for i in 1..=3 {
        std::fs::copy(
            format!("{root}/deploy/three-hosts/n{i}.toml"),
            dir.path().join(format!("n{i}.toml")),
        )
        .unwrap();
    }
    let d = dir.path().to_str().unwrap();
    assert!(
        smart(&["keys", "--dir", d, "--nodes", "1,2,3"])
            .status
            .success()
    );
    let tokens = dir.path().join("tokens.toml");
    let out = smart(&[
        "tokens",
        "new",
        "--scope",
        "admin",
        "--name",
        "ops",
        "--file",
        tokens.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 1..=3 {
        let p = dir.path().join(format!("n{i}.toml"));
        let out = stdout(&smart(&["config", "check", p.to_str().unwrap()]));
        assert!(
            out.contains(&format!(
                ": ok: node n{i}, listen 0.0.0.0:7101, advertise 10.0.0.1{i}:7101, data plane 10.0.0.1{i}"
            )),
            "{out}"
        );
    }
}

/// `smart repair` refuses a data dir a running node holds (its lock), and an epoch no real
/// cluster reaches unless forced; it repairs a stopped node's.
#[test]
fn repair_refuses_a_live_data_dir_and_an_absurd_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // A running node holds the lock (the kernel's flock, as `smart node` takes it).
    let lock = std::fs::File::create(dir.path().join("lock")).unwrap();
    lock.try_lock().unwrap();
    let o = smart(&["repair", "--data-dir", d, "--epoch", "12"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("in use by another process"), "{err}");
    drop(lock);
    let o = smart(&[
        "repair",
        "--data-dir",
        d,
        "--epoch",
        &(1u64 << 40).to_string(),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--force"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout(&smart(&["repair", "--data-dir", d, "--epoch", "12"])).contains("12"));
    let big = (1u64 << 40).to_string();
    assert!(
        stdout(&smart(&[
            "repair",
            "--data-dir",
            d,
            "--epoch",
            &big,
            "--force"
        ]))
        .contains(&big)
    );
}
