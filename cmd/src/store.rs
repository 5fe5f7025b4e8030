//! `shoal store`: the servers' replicated store seen from the command line, through any
//! server's members endpoint with the cluster token (so it works on any machine holding it).

use anyhow::{Context, Result};
use shoal_agent::join::JoinClient;
use shoal_common::join::{StoreMember, MEMBERS_PATH, SERVER_USER};

use crate::cli::{StoreCommand, StoreTarget};

pub async fn run(command: StoreCommand) -> Result<()> {
    match command {
        StoreCommand::Members { target } => {
            let client = connect(&target).await?;
            let body = client.call("GET", MEMBERS_PATH, SERVER_USER, None).await?;
            let members: Vec<StoreMember> =
                serde_json::from_slice(&body).context("the server's member list")?;
            print!("{}", members_table(&members));
            Ok(())
        }
        StoreCommand::RemoveMember { target, id } => {
            let client = connect(&target).await?;
            client
                .call(
                    "DELETE",
                    &format!("{MEMBERS_PATH}?id={id}"),
                    SERVER_USER,
                    None,
                )
                .await?;
            println!("member {id} removed");
            Ok(())
        }
    }
}

async fn connect(target: &StoreTarget) -> Result<JoinClient> {
    let url = target
        .server
        .clone()
        .unwrap_or_else(|| format!("https://127.0.0.1:{}", shoal_common::DEFAULT_HTTPS_PORT));
    let token = match &target.token {
        Some(token) => token.clone(),
        None => {
            let path = target.data_dir.join("server").join("token");
            std::fs::read_to_string(&path)
                .with_context(|| format!("no --token, and reading {}", path.display()))?
                .trim()
                .to_string()
        }
    };
    Ok(JoinClient::connect(&url, &token).await?)
}

/// The members as a kubectl-style table.
fn members_table(members: &[StoreMember]) -> String {
    let mut out = format!(
        "{:<22}{:<24}{:<9}{}\n",
        "ID", "PEER-ADDRESS", "ROLE", "LEADER"
    );
    for member in members {
        out.push_str(&format!(
            "{:<22}{:<24}{:<9}{}\n",
            member.id,
            member.peer_address,
            if member.voter { "voter" } else { "learner" },
            if member.leader { "*" } else { "" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_print_as_a_table() {
        let table = members_table(&[
            StoreMember {
                id: 1,
                peer_address: "10.0.0.1:6444".into(),
                voter: true,
                leader: true,
            },
            StoreMember {
                id: 77,
                peer_address: "10.0.0.2:6444".into(),
                voter: false,
                leader: false,
            },
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("ID") && lines[0].contains("PEER-ADDRESS"));
        assert!(
            lines[1].contains("10.0.0.1:6444")
                && lines[1].contains("voter")
                && lines[1].ends_with('*')
        );
        assert!(lines[2].starts_with("77") && lines[2].contains("learner"));
    }
}
