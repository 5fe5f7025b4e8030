//! ADD, CHECK and DEL through the plugin library against real network namespaces: a "node"
//! namespace (where the bridge and host veths go, so the machine's own network is never
//! touched) and two "pod" namespaces, all named `shoaltest-<pid>-…` and deleted at the end,
//! also when the test fails. Needs root: skipped (with a message) otherwise.

mod support;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::Command as Process;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_net::cni::{self, Command, Request};
use support::{in_netns, ip, ip_json, is_root, Netns};

fn request(command: Command, id: &str, netns: Option<&Netns>) -> Request {
    support::cni_request(command, id, netns)
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo from inside `from` to `to` over a raw socket: true when a reply came.
fn ping(from: &Path, to: Ipv4Addr) -> bool {
    ping_within(from, to, Duration::from_secs(5))
}

fn ping_within(from: &Path, to: Ipv4Addr, patience: Duration) -> bool {
    in_netns(from, || {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        const SOCK_RAW: i32 = 3;
        let sock = Socket::new(Domain::IPV4, Type::from(SOCK_RAW), Some(Protocol::ICMPV4))
            .expect("raw socket");
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let id = (std::process::id() & 0xffff) as u16;
        let deadline = Instant::now() + patience;
        let mut seq: u16 = 0;
        while Instant::now() < deadline {
            seq += 1;
            let mut packet = vec![8, 0, 0, 0];
            packet.extend_from_slice(&id.to_be_bytes());
            packet.extend_from_slice(&seq.to_be_bytes());
            packet.extend_from_slice(b"shoaltest");
            let sum = checksum(&packet);
            packet[2..4].copy_from_slice(&sum.to_be_bytes());
            sock.send_to(&packet, &SockAddr::from(SocketAddrV4::new(to, 0)))
                .expect("send echo");
            let mut buf = [0u8; 1500];
            while let Ok(n) = (&sock).read(&mut buf) {
                let ihl = usize::from(buf[0] & 0x0f) * 4;
                if n < ihl + 8 {
                    continue;
                }
                let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
                let icmp = &buf[ihl..n];
                if src == to && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() {
                    return true;
                }
            }
        }
        false
    })
}

#[test]
fn add_check_del_in_network_namespaces() {
    if !is_root() {
        eprintln!("skipped: add_check_del_in_network_namespaces needs root (network namespaces)");
        return;
    }
    let node = Netns::add("node");
    let pod_a = Netns::add("a");
    let pod_b = Netns::add("b");
    let state = tempfile::tempdir().expect("tempdir");
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "shoaltest",
        "type": "shoal-cni",
        "bridge": "shoaltestbr0",
        "subnet": "10.99.7.0/24",
        "mtu": 1400,
        "dataDir": state.path(),
    })
    .to_string();
    let conf_040 = conf.replace("\"1.0.0\"", "\"0.4.0\"");
    let gateway = Ipv4Addr::new(10, 99, 7, 1);
    let run =
        |req: Request, conf: &str| in_netns(&node.path(), || cni::execute(&req, conf.as_bytes()));

    // ADD the first pod.
    let out = run(request(Command::Add, "pod-a", Some(&pod_a)), &conf).expect("ADD a");
    let result: Value = serde_json::from_str(&out).expect("result json");
    let veth_a = cni::host_veth_name("pod-a", "eth0");
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["interfaces"][0]["name"], veth_a.as_str());
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(
        result["interfaces"][1]["sandbox"],
        pod_a.path().display().to_string()
    );
    assert_eq!(result["ips"][0]["address"], "10.99.7.2/24");
    assert_eq!(result["ips"][0]["gateway"], "10.99.7.1");
    assert_eq!(result["ips"][0]["interface"], 1);
    assert_eq!(result["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(result["dns"], serde_json::json!({}));

    // Inside the pod: eth0 up with the address and MTU, lo up, the default route.
    let addrs = ip_json(&pod_a, &["addr", "show", "dev", "eth0"]).expect("eth0 in pod a");
    let eth0 = &addrs[0];
    assert_eq!(eth0["mtu"], 1400);
    assert!(eth0["flags"]
        .as_array()
        .expect("flags")
        .contains(&"UP".into()));
    assert_eq!(
        result["interfaces"][1]["mac"], eth0["address"],
        "result carries eth0's MAC"
    );
    let inet = eth0["addr_info"]
        .as_array()
        .expect("addr_info")
        .iter()
        .find(|a| a["family"] == "inet")
        .expect("an IPv4 address");
    assert_eq!(inet["local"], "10.99.7.2");
    assert_eq!(inet["prefixlen"], 24);
    let lo = ip_json(&pod_a, &["link", "show", "dev", "lo"]).expect("lo");
    assert!(lo[0]["flags"]
        .as_array()
        .expect("flags")
        .contains(&"UP".into()));
    let routes = ip_json(&pod_a, &["route", "show", "default"]).expect("routes");
    assert_eq!(routes[0]["gateway"], "10.99.7.1");
    assert_eq!(routes[0]["dev"], "eth0");

    // On the node: the bridge holds the gateway; the host veth is its hairpin port.
    let bridge = ip_json(&node, &["addr", "show", "dev", "shoaltestbr0"]).expect("bridge");
    assert!(bridge[0]["addr_info"]
        .as_array()
        .expect("addr_info")
        .iter()
        .any(|a| a["local"] == "10.99.7.1" && a["prefixlen"] == 24));
    let port = ip_json(&node, &["-d", "link", "show", "dev", &veth_a]).expect("host veth");
    assert_eq!(port[0]["master"], "shoaltestbr0");
    assert_eq!(port[0]["mtu"], 1400);
    assert_eq!(port[0]["linkinfo"]["info_slave_data"]["hairpin"], true);

    assert!(
        ping(&pod_a.path(), gateway),
        "pod a cannot ping the gateway"
    );
    let nobody = Ipv4Addr::new(10, 99, 7, 250);
    assert!(
        !ping_within(&pod_a.path(), nobody, Duration::from_secs(1)),
        "an echo reply from an address nobody holds"
    );

    // A repeated ADD is idempotent.
    let again = run(request(Command::Add, "pod-a", Some(&pod_a)), &conf).expect("ADD a again");
    let again: Value = serde_json::from_str(&again).expect("json");
    assert_eq!(again["ips"], result["ips"]);
    assert_eq!(again["interfaces"], result["interfaces"]);

    // A second pod, in a 0.4.0 configuration; the pods reach each other.
    let out = run(request(Command::Add, "pod-b", Some(&pod_b)), &conf_040).expect("ADD b");
    let result_b: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(result_b["cniVersion"], "0.4.0");
    assert_eq!(result_b["ips"][0]["address"], "10.99.7.3/24");
    assert_eq!(result_b["ips"][0]["version"], "4");
    assert!(
        ping(&pod_b.path(), gateway),
        "pod b cannot ping the gateway"
    );
    assert!(
        ping(&pod_a.path(), Ipv4Addr::new(10, 99, 7, 3)),
        "a cannot ping b"
    );
    assert!(
        ping(&pod_b.path(), Ipv4Addr::new(10, 99, 7, 2)),
        "b cannot ping a"
    );

    // CHECK passes, and fails once the address is gone.
    run(request(Command::Check, "pod-a", Some(&pod_a)), &conf_040).expect("CHECK a");
    ip(&["-n", &pod_b.name, "addr", "flush", "dev", "eth0"]);
    let err = run(request(Command::Check, "pod-b", Some(&pod_b)), &conf).expect_err("CHECK b");
    assert_eq!(err.code(), cni::error::code::CHECK_FAILED, "{err}");

    // DEL removes the veth pair and releases the address; repeating it is fine, and so is a
    // DEL without a namespace.
    run(request(Command::Del, "pod-a", Some(&pod_a)), &conf).expect("DEL a");
    assert!(ip_json(&pod_a, &["link", "show", "dev", "eth0"]).is_none());
    assert!(ip_json(&node, &["link", "show", "dev", &veth_a]).is_none());
    assert!(!state.path().join("10.99.7.2").exists());
    assert!(state.path().join("10.99.7.3").exists());
    run(request(Command::Del, "pod-a", Some(&pod_a)), &conf).expect("DEL a again");
    run(request(Command::Del, "pod-a", None), &conf).expect("DEL a without netns");
    let err = run(request(Command::Check, "pod-a", Some(&pod_a)), &conf).expect_err("CHECK");
    assert_eq!(err.code(), cni::error::code::CHECK_FAILED);

    // The next pod gets the next address, not the one just released.
    let out = run(request(Command::Add, "pod-c", Some(&pod_a)), &conf).expect("ADD c");
    let result_c: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(result_c["ips"][0]["address"], "10.99.7.4/24");
    run(request(Command::Del, "pod-c", Some(&pod_a)), &conf).expect("DEL c");
    drop(pod_b);
    run(request(Command::Del, "pod-b", None), &conf).expect("DEL b after its netns went");
    assert!(ip_json(
        &node,
        &["link", "show", "dev", &cni::host_veth_name("pod-b", "eth0")]
    )
    .is_none());
    let left: Vec<_> = std::fs::read_dir(state.path())
        .expect("state")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_string_lossy().parse::<Ipv4Addr>().is_ok())
        .collect();
    assert!(left.is_empty(), "addresses left: {left:?}");
}

/// When run as the child of [`run_from_env_speaks_cni_over_stdio`]: be the plugin.
#[test]
fn plugin_process_entry() {
    if std::env::var_os("SHOALTEST_BE_PLUGIN").is_some() {
        std::process::exit(cni::run_from_env());
    }
}

/// Execs this test binary as the plugin (as containerd would exec `shoal-cni`): the
/// environment and stdin in, the JSON document's last line and the exit code out.
fn exec_plugin(env: &[(&str, &str)], stdin: &str) -> (Value, i32) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Process::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "plugin_process_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SHOALTEST_BE_PLUGIN", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("plugin output");
    let text = String::from_utf8_lossy(&out.stdout);
    // The test harness prints its own words first; the plugin's document ends the output.
    let start = text.find('{').unwrap_or(0);
    let doc = serde_json::from_str(text[start..].trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    (doc, out.status.code().unwrap_or(-1))
}

#[test]
fn run_from_env_speaks_cni_over_stdio() {
    let (doc, code) = exec_plugin(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
    assert_eq!(code, 0);
    assert_eq!(doc["cniVersion"], "0.4.0");
    assert!(doc["supportedVersions"]
        .as_array()
        .expect("versions")
        .contains(&"1.0.0".into()));

    let (doc, code) = exec_plugin(
        &[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")],
        r#"{"cniVersion":"0.3.1","name":"n","subnet":"10.99.8.0/24"}"#,
    );
    assert_eq!(code, 1);
    assert_eq!(doc["cniVersion"], "0.3.1");
    assert_eq!(doc["code"], 4);
    assert_eq!(
        doc["msg"],
        "invalid environment: CNI_CONTAINERID is not set"
    );
}
