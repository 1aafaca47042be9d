//! Which programs Agent86 may run as service instances.
//!
//! Whoever can admit a service names its command, and Agent86 runs it on the node: without
//! a limit, admitting a service is a shell on every node. So a node runs only the commands
//! its operator allowed (`[agent] allowed_commands`), as Nomad keeps `raw_exec` off until an
//! operator turns it on. An entry is a prefix of the command line: the program, then
//! optionally its first arguments (`["smart", "distributor"]` allows `smart distributor
//! --listen ...` and nothing else of `smart`). A program named without a `/` matches
//! itself as written (found on `PATH`) and, for `smart`, this very binary at whatever path
//! it runs from; a program with a `/` matches that path only. `["*"]` allows everything
//! (for test rigs and trusted single-user machines).
//!
//! An allowed program could still be steered by its environment (`LD_PRELOAD` loads any
//! library into it), so unless everything is allowed, variables that choose code (`LD_*`,
//! `PATH`) are refused too.

use std::path::PathBuf;

/// What a node may run. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandPolicy {
    allowed: Vec<Vec<String>>,
    /// This binary's canonical path, which `smart` entries also match.
    own_exe: Option<PathBuf>,
}

/// Why a command may not run here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandRefused {
    /// No entry of the allow-list is a prefix of it.
    #[error(
        "command `{0}` is not allowed on this node (its [agent] allowed_commands lists the programs services may run)"
    )]
    NotAllowed(String),
    /// An environment variable that chooses what code runs.
    #[error("environment variable {0} is not allowed for a service (it chooses what code runs)")]
    Environment(String),
    /// An empty command.
    #[error("empty command")]
    Empty,
}

impl CommandPolicy {
    /// Everything may run (the engine's default for tests; a node takes its config's list).
    pub fn any() -> Self {
        Self {
            allowed: vec![vec!["*".into()]],
            own_exe: None,
        }
    }

    /// The commands `allowed` permits; `own_exe` is this binary (which `smart` entries
    /// match wherever it lies).
    pub fn new(allowed: Vec<Vec<String>>, own_exe: Option<PathBuf>) -> Self {
        let own_exe = own_exe.map(|p| p.canonicalize().unwrap_or(p));
        Self { allowed, own_exe }
    }

    fn allows_everything(&self) -> bool {
        self.allowed.iter().any(|e| e.len() == 1 && e[0] == "*")
    }

    fn program_matches(&self, entry: &str, program: &str) -> bool {
        if entry == program {
            return true;
        }
        if entry == "smart"
            && let Some(own) = &self.own_exe
            && program.contains('/')
        {
            let p = PathBuf::from(program);
            return p.canonicalize().unwrap_or(p) == *own;
        }
        false
    }

    /// Whether `command` with `env` may run here.
    pub fn check(
        &self,
        command: &[String],
        env: &[(String, String)],
    ) -> Result<(), CommandRefused> {
        let Some(program) = command.first() else {
            return Err(CommandRefused::Empty);
        };
        if self.allows_everything() {
            return Ok(());
        }
        let permitted = self.allowed.iter().any(|entry| {
            !entry.is_empty()
                && entry.len() <= command.len()
                && self.program_matches(&entry[0], program)
                && entry[1..] == command[1..entry.len()]
        });
        if !permitted {
            return Err(CommandRefused::NotAllowed(shown(command)));
        }
        if let Some((k, _)) = env
            .iter()
            .find(|(k, _)| k.starts_with("LD_") || k == "PATH")
        {
            return Err(CommandRefused::Environment(k.clone()));
        }
        Ok(())
    }
}

/// A command as an error shows it: its words, at most 200 characters.
fn shown(command: &[String]) -> String {
    let s = command.join(" ");
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_allowed_prefixes_run() {
        let own = std::env::current_exe().unwrap();
        let p = CommandPolicy::new(
            vec![cmd(&["smart", "distributor"]), cmd(&["/opt/vod/bin/vod"])],
            Some(own.clone()),
        );
        let own_s = own.display().to_string();
        assert_eq!(
            p.check(&cmd(&["smart", "distributor", "--listen", "x"]), &[]),
            Ok(())
        );
        assert_eq!(p.check(&cmd(&[&own_s, "distributor"]), &[]), Ok(()));
        assert_eq!(
            p.check(&cmd(&["/opt/vod/bin/vod", "any", "thing"]), &[]),
            Ok(())
        );
        for bad in [
            cmd(&["sh", "-c", "id > /tmp/x"]),
            cmd(&["smart", "repair", "--force"]),
            cmd(&["smart"]),
            cmd(&[&own_s, "keys"]),
            cmd(&["/tmp/smart", "distributor"]),
            cmd(&["vod"]),
        ] {
            assert!(
                matches!(p.check(&bad, &[]), Err(CommandRefused::NotAllowed(_))),
                "{bad:?}"
            );
        }
        assert_eq!(p.check(&[], &[]), Err(CommandRefused::Empty));
        let preload = [("LD_PRELOAD".to_string(), "/tmp/x.so".to_string())];
        assert_eq!(
            p.check(&cmd(&["smart", "distributor"]), &preload),
            Err(CommandRefused::Environment("LD_PRELOAD".into()))
        );
        assert_eq!(
            p.check(
                &cmd(&["smart", "distributor"]),
                &[("RUST_LOG".into(), "info".into())]
            ),
            Ok(())
        );
    }

    #[test]
    fn a_star_allows_everything() {
        let p = CommandPolicy::new(vec![cmd(&["*"])], None);
        assert_eq!(p.check(&cmd(&["sh", "-c", "true"]), &[]), Ok(()));
        assert_eq!(CommandPolicy::any().check(&cmd(&["anything"]), &[]), Ok(()));
    }
}
