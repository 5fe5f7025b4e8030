//! Running the `nft` binary: a script goes in on stdin (`nft -f -`, as kube-proxy's knftables
//! does) and is applied as one transaction, or only checked (`nft -c`).

use std::io::Write;
use std::process::{Command, Stdio};

/// Why a script was not applied.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("nft rejected the script ({status}): {stderr}")]
    Rejected { status: String, stderr: String },
}

/// How to run nft: the program and the arguments before nft's own (e.g. `ip netns exec NAME
/// nft` to work in another network namespace).
#[derive(Debug, Clone)]
pub struct Nft {
    command: Vec<String>,
}

impl Default for Nft {
    fn default() -> Self {
        Nft {
            command: vec!["nft".into()],
        }
    }
}

impl Nft {
    /// nft inside the named network namespace (`ip netns exec`).
    pub fn in_netns(name: &str) -> Self {
        Nft {
            command: ["ip", "netns", "exec", name, "nft"]
                .map(String::from)
                .to_vec(),
        }
    }

    /// Applies `script` atomically.
    pub fn apply(&self, script: &str) -> Result<(), NftError> {
        self.run(&["-f", "-"], script)
    }

    /// Checks `script` against the kernel without applying it.
    pub fn check(&self, script: &str) -> Result<(), NftError> {
        self.run(&["-c", "-f", "-"], script)
    }

    /// Runs a command (e.g. `list table ip NAME`) and returns its output.
    pub fn output(&self, args: &[&str]) -> Result<String, NftError> {
        let out = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| self.spawn_error(source))?;
        if !out.status.success() {
            return Err(rejected(out.status, &out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.command[0]);
        command.args(&self.command[1..]);
        command
    }

    fn spawn_error(&self, source: std::io::Error) -> NftError {
        NftError::Spawn {
            program: self.command.join(" "),
            source,
        }
    }

    fn run(&self, args: &[&str], script: &str) -> Result<(), NftError> {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| self.spawn_error(source))?;
        // A write error means nft exited early; its status and stderr say why.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(script.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|source| self.spawn_error(source))?;
        if !out.status.success() {
            return Err(rejected(out.status, &out.stderr));
        }
        Ok(())
    }
}

fn rejected(status: std::process::ExitStatus, stderr: &[u8]) -> NftError {
    let mut stderr = String::from_utf8_lossy(stderr).into_owned();
    // A huge script's error can quote much of it: keep the start, which names the problem.
    if stderr.len() > 4000 {
        let mut cut = 4000;
        while !stderr.is_char_boundary(cut) {
            cut -= 1;
        }
        stderr.truncate(cut);
        stderr.push_str(" …");
    }
    NftError::Rejected {
        status: status.to_string(),
        stderr,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// Tests that run nft (even in check mode, which talks to the kernel) need root.
    pub(crate) fn assert_root() {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata("/proc/self").map(|m| m.uid()).ok(),
            Some(0),
            "this test runs nft against the kernel: run it as root"
        );
    }

    #[test]
    fn rejection_carries_nfts_message() {
        assert_root();
        let err = Nft::default()
            .check("add table ip shoal-nft-test\nadd chain ip shoal-nft-test c { bogus }\n")
            .unwrap_err();
        match err {
            NftError::Rejected { stderr, .. } => assert!(stderr.contains("Error"), "{stderr}"),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let nft = Nft {
            command: vec!["/nonexistent/nft".into()],
        };
        assert!(matches!(nft.apply(""), Err(NftError::Spawn { .. })));
    }
}
