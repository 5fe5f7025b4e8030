//! High availability on e2e's lab: three servers (the first with `--cluster-init`, two joined
//! with `--server` and the token, each in its own network namespace) and an agent joined to
//! the first. Under a steady write load through the API the leader is killed with SIGKILL; a
//! new one takes over, every acknowledged write is still there, and the killed server rejoins.
//! Then the leader is cut off from its peers with nftables: the minority stops accepting
//! writes, the majority goes on, and after healing the old leader serves what the majority
//! wrote. Every server is restarted in turn under load, losing nothing. Finally the agent's
//! own `--server` is stopped and the agent keeps renewing its node's Lease through another
//! server; with it back, deleting a server's Node removes that server from the store, and the
//! server stops. Needs root, containerd and runc (CI has them).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_e2e::cluster::eventually;
use shoal_e2e::kubectl::Kubectl;
use shoal_e2e::lab::{Lab, API_PORT};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_shoal"))
}

/// One row of `shoal store members`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    id: String,
    peer_address: String,
    voter: bool,
    leader: bool,
}

/// `shoal store members` asked through server `index`.
fn members(lab: &Lab, index: usize) -> Result<Vec<Member>, String> {
    let out = Command::new(binary())
        .args(["store", "members", "--server"])
        .arg(format!("https://{}:{API_PORT}", lab.nodes[index].ip))
        .args(["--token", &lab.token])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some(Member {
                id: fields.first()?.to_string(),
                peer_address: fields.get(1)?.to_string(),
                voter: *fields.get(2)? == "voter",
                leader: fields.get(3) == Some(&"*"),
            })
        })
        .collect())
}

/// The lab index of the server leading the store, once three voters agree on one.
fn wait_for_leader(lab: &Lab, ask: usize, voters: usize) -> usize {
    eventually(
        &format!("a leader among {voters} voters"),
        Duration::from_secs(60),
        || {
            let list = members(lab, ask).ok()?;
            if list.iter().filter(|m| m.voter).count() != voters {
                return None;
            }
            let leader = list.iter().find(|m| m.leader)?;
            let ip = leader.peer_address.rsplit_once(':')?.0;
            lab.nodes.iter().position(|n| n.ip == ip)
        },
    )
}

/// Creates ConfigMaps `<prefix>-N` through the given servers in turn until stopped, recording
/// which creates were acknowledged and when.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, Instant)>>>,
    failed: Arc<Mutex<Vec<Instant>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(kubectls: Vec<Kubectl>, prefix: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let (stop_flag, acked_list, failed_list) =
            (Arc::clone(&stop), Arc::clone(&acked), Arc::clone(&failed));
        let prefix = prefix.to_string();
        let thread = std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop_flag.load(Ordering::SeqCst) {
                let name = format!("{prefix}-{n}");
                let kubectl = &kubectls[n % kubectls.len()];
                n += 1;
                let out = kubectl.run(
                    &[
                        "create",
                        "configmap",
                        &name,
                        "--from-literal=n=1",
                        "--request-timeout=8s",
                    ],
                    None,
                );
                if out.status.success() {
                    acked_list
                        .lock()
                        .expect("acked")
                        .push((name, Instant::now()));
                } else {
                    failed_list.lock().expect("failed").push(Instant::now());
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Writer {
            stop,
            acked,
            failed,
            thread: Some(thread),
        }
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().expect("acked").len()
    }

    /// Stops and returns the acknowledged names.
    fn finish(mut self) -> Vec<(String, Instant)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("writer thread");
        }
        self.acked.lock().expect("acked").clone()
    }
}

/// Every name in `acked` is readable through `kubectl`.
fn assert_all_readable(kubectl: &Kubectl, acked: &[(String, Instant)], prefix: &str) {
    let stored: BTreeSet<String> = kubectl
        .items(&["get", "configmaps"])
        .iter()
        .filter_map(|cm| cm["metadata"]["name"].as_str().map(String::from))
        .filter(|name| name.starts_with(&format!("{prefix}-")))
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .map(|(name, _)| name)
        .filter(|name| !stored.contains(*name))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged writes lost: {lost:?} (of {})",
        acked.len()
    );
}

/// Cuts node `index` off from its peers' store traffic (the API port stays open).
fn partition(lab: &Lab, index: usize) {
    let rules = "table inet shoal-partition {
        chain input { type filter hook input priority -10; policy accept; tcp dport 6444 drop; tcp sport 6444 drop; }
        chain output { type filter hook output priority -10; policy accept; tcp dport 6444 drop; tcp sport 6444 drop; }
    }";
    let file = lab.dir.path().join("partition.nft");
    std::fs::write(&file, rules).expect("nft rules");
    let out = lab.exec_on(index, "nft", &["-f", &file.to_string_lossy()]);
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn heal(lab: &Lab, index: usize) {
    let out = lab.exec_on(
        index,
        "nft",
        &["delete", "table", "inet", "shoal-partition"],
    );
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn lease_renewed(lab: &Lab, node: &str) -> Option<String> {
    lab.kubectl
        .get(&["-n", "kube-node-lease", "get", "lease", node, "-o", "json"])
        .and_then(|lease| lease["spec"]["renewTime"].as_str().map(String::from))
}

#[test]
fn three_servers_survive_a_dead_leader_and_a_partition() {
    let mut lab = Lab::new(binary());
    lab.add_server(&["--cluster-init", "--disable-agent"]);
    let first_joined = lab.add_joining_server(&["--disable-agent"]);
    // This one runs an agent too: its Node is how it is removed at the end.
    let second_joined = lab.add_joining_server(&[]);
    let agent = lab.add_agent(&[]);
    lab.wait_ready(Duration::from_secs(120));
    let servers = [0, first_joined, second_joined];

    // Three voters, one leader, and the `kubernetes` endpoints list all three servers.
    let leader = wait_for_leader(&lab, first_joined, 3);
    let endpoint_ips = || -> BTreeSet<String> {
        lab.kubectl
            .json(&["get", "endpoints", "kubernetes"])
            .pointer("/subsets/0/addresses")
            .and_then(|a| a.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a["ip"].as_str().map(String::from))
            .collect()
    };
    let all_ips: BTreeSet<String> = servers.iter().map(|&i| lab.nodes[i].ip.clone()).collect();
    eventually(
        "the kubernetes endpoints to list every server",
        Duration::from_secs(30),
        || (endpoint_ips() == all_ips).then_some(()),
    );

    // SIGKILL the leader under a write load through the two others.
    let others: Vec<usize> = servers.iter().copied().filter(|&i| i != leader).collect();
    let writer = Writer::start(others.iter().map(|&i| lab.kubectl_for(i)).collect(), "kill");
    eventually("writes before the kill", Duration::from_secs(30), || {
        (writer.acked_count() >= 10).then_some(())
    });
    let killed_at = Instant::now();
    lab.kill_node(leader);
    let acked_before = writer.acked_count();
    eventually(
        "writes to resume after the leader died",
        Duration::from_secs(30),
        || (writer.acked_count() >= acked_before + 10).then_some(()),
    );
    let failures = writer.failed.lock().expect("failed").len();
    let acked = writer.finish();
    let resumed = acked
        .iter()
        .map(|(_, at)| *at)
        .find(|at| *at > killed_at)
        .map(|at| at.duration_since(killed_at));
    eprintln!(
        "leader killed: first acknowledged write after {resumed:?}; {failures} failed attempts; {} acknowledged",
        acked.len()
    );
    let new_leader = wait_for_leader(&lab, others[0], 3);
    assert_ne!(new_leader, leader, "the dead server still leads");
    assert_all_readable(&lab.kubectl_for(others[0]), &acked, "kill");

    // The killed server comes back as a member and serves everything (a linearizable read).
    lab.start_node(leader);
    assert_all_readable(&lab.kubectl_for(leader), &acked, "kill");

    // Partition the current leader from its peers.
    let isolated = wait_for_leader(&lab, others[0], 3);
    let majority: Vec<usize> = servers.iter().copied().filter(|&i| i != isolated).collect();
    partition(&lab, isolated);
    let minority_write = lab.kubectl_for(isolated).run(
        &[
            "create",
            "configmap",
            "minority",
            "--from-literal=n=1",
            "--request-timeout=20s",
        ],
        None,
    );
    assert!(
        !minority_write.status.success(),
        "the isolated server accepted a write"
    );
    let writer = Writer::start(
        majority.iter().map(|&i| lab.kubectl_for(i)).collect(),
        "split",
    );
    eventually(
        "the majority to go on writing",
        Duration::from_secs(60),
        || (writer.acked_count() >= 10).then_some(()),
    );
    let acked = writer.finish();
    heal(&lab, isolated);
    let isolated_kubectl = lab.kubectl_for(isolated);
    eventually(
        "the healed server to serve the majority's writes",
        Duration::from_secs(60),
        || {
            let listed = isolated_kubectl.run(&["get", "configmaps", "-o", "json"], None);
            let names: BTreeSet<String> =
                serde_json::from_slice::<serde_json::Value>(&listed.stdout).ok()?["items"]
                    .as_array()?
                    .iter()
                    .filter_map(|cm| cm["metadata"]["name"].as_str().map(String::from))
                    .collect();
            acked.iter().all(|(n, _)| names.contains(n)).then_some(())
        },
    );
    assert!(
        isolated_kubectl
            .get(&["get", "configmap", "minority"])
            .is_none(),
        "a write refused during the partition appeared later"
    );

    // Every server restarted in turn under a write load through all of them: writes through
    // a server that is down fail, nothing acknowledged is lost.
    let writer = Writer::start(
        servers.iter().map(|&i| lab.kubectl_for(i)).collect(),
        "rolling",
    );
    for &index in &servers {
        let acked_before = writer.acked_count();
        let _ = lab.stop_node(index);
        lab.start_node(index);
        eventually(
            "writes while the servers restart in turn",
            Duration::from_secs(60),
            || (writer.acked_count() >= acked_before + 5).then_some(()),
        );
    }
    let acked = writer.finish();
    wait_for_leader(&lab, first_joined, 3);
    for &index in &servers {
        assert_all_readable(&lab.kubectl_for(index), &acked, "rolling");
    }

    // The agent's --server (server 0) stops: it keeps its node alive through the others.
    let agent_name = lab.nodes[agent].name.clone();
    let _ = lab.stop_node(0);
    lab.kubectl = lab.kubectl_for(first_joined);
    let before = lease_renewed(&lab, &agent_name).expect("the agent's lease");
    eventually(
        "the agent to renew its lease through another server",
        Duration::from_secs(40),
        || {
            lease_renewed(&lab, &agent_name)
                .filter(|renewed| *renewed != before)
                .map(|_| ())
        },
    );

    // A joined server restarts while the server it joined through (its --server) is down.
    let _ = lab.stop_node(first_joined);
    lab.start_node(first_joined);
    lab.kubectl_for(first_joined).ok(&[
        "create",
        "configmap",
        "without-server-0",
        "--from-literal=n=1",
    ]);

    // Deleting a server's Node removes its store member; the removed server stops.
    lab.start_node(0);
    wait_for_leader(&lab, first_joined, 3);
    let removed_name = lab.nodes[second_joined].name.clone();
    lab.kubectl
        .ok(&["delete", "node", &removed_name, "--wait=false"]);
    let status = eventually(
        "the removed server to stop",
        Duration::from_secs(60),
        || lab.exited(second_joined),
    );
    assert!(!status.success(), "a removed server exited 0");
    assert!(
        lab.nodes[second_joined]
            .log_text()
            .contains("removed from the cluster"),
        "{}",
        lab.nodes[second_joined].log_text()
    );
    let remaining = members(&lab, first_joined).expect("members");
    assert_eq!(
        remaining.iter().filter(|m| m.voter).count(),
        2,
        "{remaining:?}"
    );
    lab.kubectl_for(0)
        .ok(&["create", "configmap", "after-removal", "--from-literal=n=1"]);
}
