//! High availability on e2e's lab: three servers (the first with `--cluster-init`, two joined
//! with `--server` and the token, each in its own network namespace) and an agent joined to
//! the first. Under a steady write load through the API the leader is killed with SIGKILL; a
//! new one takes over, every acknowledged write is still there, and the killed server rejoins.
//! Then the leader is cut off from its peers with nftables: the minority stops accepting
//! writes, the majority goes on, and after healing the old leader serves what the majority
//! wrote. Every server is restarted in turn under load, losing nothing. Finally the agent's
//! own `--server` is stopped and the agent keeps renewing its node's Lease through another
//! server; with it back, deleting a server's Node removes that server from the store, and the
//! server stops. Throughout the kill, partition and restarts, two clients write and read
//! single-key registers through every server, and their history must be linearizable. The
//! server running the controllers and the scheduler is killed and another takes over. A
//! second lab loses quorum for good and recovers with `--cluster-reset` on the survivor.
//! Needs root, containerd and runc (CI has them).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_e2e::cluster::eventually;
use shoal_e2e::history::{violations, Operation, Outcome};
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

    /// Writes until `count` creates are acknowledged (within a minute); returns them.
    fn until_acked(
        kubectls: Vec<Kubectl>,
        prefix: &str,
        count: usize,
        what: &str,
    ) -> Vec<(String, Instant)> {
        let writer = Writer::start(kubectls, prefix);
        eventually(what, Duration::from_secs(60), || {
            (writer.acked_count() >= count).then_some(())
        });
        writer.finish()
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

/// Single-key registers (ConfigMaps `reg-N`, value in `data.v`) written and read by two
/// clients through the given servers at random, recording a history for
/// [`shoal_e2e::history::violations`]: writes store unique values with a merge patch, reads
/// are kubectl gets (quorum reads, as Kubernetes serves a GET without a resourceVersion).
struct Registers {
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Operation>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

const REGISTERS: usize = 3;

impl Registers {
    /// Starts the clients on registers whose creation `initial` records.
    fn start(kubectls: &[Kubectl], initial: Vec<Operation>) -> Registers {
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(initial));
        let threads = (0..2)
            .map(|client| {
                let (stop, history) = (Arc::clone(&stop), Arc::clone(&history));
                let kubectls = kubectls.to_vec();
                std::thread::spawn(move || {
                    let mut n = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        // A cheap deterministic spread over servers, keys and kinds.
                        let kubectl = &kubectls[(n * 7 + client) % kubectls.len()];
                        let key = format!("reg-{}", (n * 5 + client) % REGISTERS);
                        let op = if (n + client) % 3 == 0 {
                            write_register(kubectl, &key, &format!("c{client}-{n}"))
                        } else {
                            read_register(kubectl, &key)
                        };
                        history.lock().expect("history").extend(op);
                        n += 1;
                    }
                })
            })
            .collect();
        Registers {
            stop,
            history,
            threads,
        }
    }

    /// Stops the clients and checks their history; returns how many operations it held.
    fn finish_and_check(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().expect("register client");
        }
        let history = self.history.lock().expect("history").clone();
        let found = violations(&history);
        assert!(
            found.is_empty(),
            "the register history is not linearizable:\n{}",
            found.join("\n")
        );
        history.len()
    }
}

fn create_registers(kubectl: &Kubectl) -> Vec<Operation> {
    (0..REGISTERS)
        .map(|n| {
            let key = format!("reg-{n}");
            let invoked = Instant::now();
            let rv = kubectl.ok(&[
                "create",
                "configmap",
                &key,
                "--from-literal=v=initial",
                "-o",
                "jsonpath={.metadata.resourceVersion}",
            ]);
            Operation {
                key,
                written: "initial".into(),
                invoked,
                completed: Instant::now(),
                outcome: Outcome::Written {
                    revision: rv.trim().parse().expect("a resourceVersion"),
                },
            }
        })
        .collect()
}

fn write_register(kubectl: &Kubectl, key: &str, value: &str) -> Option<Operation> {
    let invoked = Instant::now();
    let out = kubectl.run(
        &[
            "patch",
            "configmap",
            key,
            "--type=merge",
            "-p",
            &format!(r#"{{"data":{{"v":"{value}"}}}}"#),
            "-o",
            "jsonpath={.metadata.resourceVersion}",
            "--request-timeout=8s",
        ],
        None,
    );
    let completed = Instant::now();
    let revision = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
    let outcome = match revision {
        Some(revision) if out.status.success() => Outcome::Written { revision },
        _ => Outcome::Unknown,
    };
    Some(Operation {
        key: key.into(),
        written: value.into(),
        invoked,
        completed,
        outcome,
    })
}

/// A failed read tells nothing: `None`.
fn read_register(kubectl: &Kubectl, key: &str) -> Option<Operation> {
    let invoked = Instant::now();
    let out = kubectl.run(
        &[
            "get",
            "configmap",
            key,
            "-o",
            "jsonpath={.data.v} {.metadata.resourceVersion}",
            "--request-timeout=8s",
        ],
        None,
    );
    let completed = Instant::now();
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (value, revision) = text.trim().split_once(' ')?;
    Some(Operation {
        key: key.into(),
        written: String::new(),
        invoked,
        completed,
        outcome: Outcome::Read {
            value: value.into(),
            revision: revision.parse().ok()?,
        },
    })
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

    // Single-key registers are written and read through every server from here until after
    // the rolling restart; their history must be linearizable.
    let all_kubectls: Vec<Kubectl> = servers.iter().map(|&i| lab.kubectl_for(i)).collect();
    let registers = Registers::start(&all_kubectls, create_registers(&lab.kubectl));

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
    let acked = Writer::until_acked(
        majority.iter().map(|&i| lab.kubectl_for(i)).collect(),
        "split",
        10,
        "the majority to go on writing",
    );
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
    let operations = registers.finish_and_check();
    eprintln!("register history: {operations} operations, linearizable");

    // The server running the controllers dies: another server takes both Leases over and
    // its controllers and scheduler do the work (a Deployment's pods are made and bound).
    let holder = |kubectl: &Kubectl, lease: &str| -> Option<String> {
        kubectl.get(&["-n", "kube-system", "get", "lease", lease, "-o", "json"])?["spec"]
            ["holderIdentity"]
            .as_str()
            .and_then(|id| id.rsplit_once('_'))
            .map(|(node, _pid)| node.to_string())
    };
    let controlling = holder(&lab.kubectl_for(first_joined), "kube-controller-manager")
        .expect("a controller leader");
    let controlling = lab.node_index(&controlling);
    let survivor = *servers
        .iter()
        .find(|&&i| i != controlling)
        .expect("another server");
    let survivor_kubectl = lab.kubectl_for(survivor);
    let killed_at = Instant::now();
    lab.kill_node(controlling);
    let dead_name = lab.nodes[controlling].name.clone();
    eventually(
        "another server to take the control-plane Leases over",
        Duration::from_secs(30),
        || {
            let taken =
                |lease| holder(&survivor_kubectl, lease).is_some_and(|node| node != dead_name);
            (taken("kube-controller-manager") && taken("kube-scheduler")).then_some(())
        },
    );
    eprintln!(
        "control plane taken over {:?} after its server was killed",
        killed_at.elapsed()
    );
    survivor_kubectl.ok(&[
        "create",
        "deployment",
        "takeover",
        "--image=registry.invalid/none:1",
        "--replicas=2",
    ]);
    eventually(
        "the new leader's controllers and scheduler to make and bind the pods",
        Duration::from_secs(30),
        || {
            let bound = survivor_kubectl
                .items(&["get", "pods", "-l", "app=takeover"])
                .iter()
                .filter(|pod| pod["spec"]["nodeName"].as_str().is_some())
                .count();
            (bound == 2).then_some(())
        },
    );
    survivor_kubectl.ok(&["delete", "deployment", "takeover"]);
    lab.start_node(controlling);

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
    let finalizers =
        lab.kubectl.json(&["get", "node", &removed_name])["metadata"]["finalizers"].to_string();
    assert!(
        finalizers.contains("shoal.io/store-member"),
        "a server's Node holds its member: {finalizers}"
    );
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
    eventually(
        "the deleted server's Node to go once its member is removed",
        Duration::from_secs(30),
        || {
            lab.kubectl
                .get(&["get", "node", &removed_name])
                .is_none()
                .then_some(())
        },
    );
    lab.kubectl_for(0)
        .ok(&["create", "configmap", "after-removal", "--from-literal=n=1"]);
}

/// Quorum lost for good (two of three servers gone): `shoal server --cluster-reset` on the
/// survivor makes it a one-member cluster with everything it had, and the two others, their
/// stores removed, join it again — k3s's recovery after losing etcd's quorum.
#[test]
fn a_survivor_resets_the_cluster_after_quorum_loss() {
    let mut lab = Lab::new(binary());
    lab.add_server(&["--cluster-init", "--disable-agent"]);
    let first = lab.add_joining_server(&["--disable-agent"]);
    let second = lab.add_joining_server(&["--disable-agent"]);
    wait_for_leader(&lab, 0, 3);
    let acked = Writer::until_acked(
        [0, first, second]
            .iter()
            .map(|&i| lab.kubectl_for(i))
            .collect(),
        "before",
        15,
        "writes through all servers",
    );

    // Two servers die for good: the survivor alone has no quorum.
    lab.kill_node(first);
    lab.kill_node(second);
    let refused = lab.kubectl_for(0).run(
        &[
            "create",
            "configmap",
            "no-quorum",
            "--from-literal=n=1",
            "--request-timeout=20s",
        ],
        None,
    );
    assert!(
        !refused.status.success(),
        "a server without quorum accepted a write"
    );

    // The survivor is reset and started as before.
    let _ = lab.stop_node(0);
    let status = lab.run_once(0, &["--cluster-reset"]);
    let log = lab.nodes[0].log_text();
    assert!(status.success(), "the reset failed: {status}\n{log}");
    assert!(log.contains("without --cluster-reset"), "{log}");
    lab.start_node(0);
    let alone = members(&lab, 0).expect("members");
    assert_eq!(alone.len(), 1, "{alone:?}");
    assert!(alone[0].voter && alone[0].leader, "{alone:?}");
    assert_all_readable(&lab.kubectl_for(0), &acked, "before");
    lab.kubectl_for(0)
        .ok(&["create", "configmap", "after-reset", "--from-literal=n=1"]);

    // The others join the new cluster with their old stores removed.
    for index in [first, second] {
        let store = lab.nodes[index].data_dir.join("server").join("store");
        std::fs::remove_dir_all(&store).expect("remove the old store");
        lab.start_node(index);
    }
    wait_for_leader(&lab, second, 3);
    for index in [first, second] {
        let kubectl = lab.kubectl_for(index);
        assert_all_readable(&kubectl, &acked, "before");
        kubectl.ok(&["get", "configmap", "after-reset"]);
    }
    lab.kubectl_for(first)
        .ok(&["create", "configmap", "rejoined", "--from-literal=n=1"]);
}
