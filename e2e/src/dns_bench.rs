//! `shoal-bench dns`: the cluster DNS server (the same handler and sockets the agent runs)
//! on a loopback port, with an index of many Services, asked by closed-loop UDP clients in
//! this process: each sends a question, waits for the answer, sends the next. Reports
//! questions per second and latency percentiles per mix, and how long building the index
//! takes (what every Service or EndpointSlice change costs).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use shoal_net::dns::forward::Forwarder;
use shoal_net::dns::server::{serve, Handler, Listeners, SharedIndex};
use shoal_net::dns::{Index, ZoneConfig};
use tokio::net::UdpSocket;

use crate::latency::{millis, Latencies};

/// Flags of `shoal-bench dns`.
#[derive(Debug, Clone, clap::Args)]
pub struct DnsArgs {
    /// Services in the index (one in ten headless, with three endpoints each).
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// Concurrent clients (each one question at a time).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// How long each mix runs.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
}

const NAMESPACES: usize = 10;

fn zone() -> ZoneConfig {
    ZoneConfig {
        domain: "cluster.local".into(),
        dns_ip: "10.43.0.10".parse().expect("literal address"),
        reverse_cidrs: vec![
            "10.43.0.0/16".parse().expect("literal CIDR"),
            "10.42.0.0/16".parse().expect("literal CIDR"),
        ],
        ttl: shoal_net::dns::records::DEFAULT_TTL,
    }
}

/// `count` Services `svc-<i>` in namespaces `ns-<i % 10>`; every tenth is headless with
/// three ready endpoints, the others have a ClusterIP; each has a named port.
fn cluster(count: usize) -> Result<(Vec<Service>, Vec<EndpointSlice>)> {
    let mut services = Vec::with_capacity(count);
    let mut slices = Vec::new();
    for i in 0..count {
        let (name, namespace) = (format!("svc-{i}"), format!("ns-{}", i % NAMESPACES));
        let headless = i % 10 == 0;
        let ip = format!("10.43.{}.{}", 1 + i / 250, 1 + i % 250);
        services.push(serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": if headless { "None".to_string() } else { ip },
                     "ports": [{"name": "http", "port": 80}]}}))?);
        let endpoints: Vec<_> = (0..3)
            .map(|e| {
                json!({"addresses": [format!("10.42.{}.{}", i % 250, 1 + e)],
                            "conditions": {"ready": true}})
            })
            .collect();
        slices.push(serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-abcde"), "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080}]}))?);
    }
    Ok((services, slices))
}

/// What the clients ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mix {
    /// A of `svc-<i>.ns-<j>.svc.cluster.local`, random Services.
    ServiceA,
    /// What a pod's resolver sends for `svc-<i>` with ndots:5 and Kubernetes' search path:
    /// the own-namespace expansion (an answer) or a foreign one first (NXDOMAIN).
    SearchPath,
    /// SRV `_http._tcp.svc-<i>.ns-<j>.svc.cluster.local` (headless ones list endpoints).
    Srv,
}

impl Mix {
    fn label(self) -> &'static str {
        match self {
            Mix::ServiceA => "A, full name",
            Mix::SearchPath => "search path (½ NXDOMAIN)",
            Mix::Srv => "SRV, named port",
        }
    }

    /// The question for draw `n`, and whether its answer is NXDOMAIN.
    fn question(self, n: u64, services: usize) -> (String, RecordType, bool) {
        let i = usize::try_from(n % services as u64).unwrap_or(0);
        let ns = i % NAMESPACES;
        match self {
            Mix::ServiceA => (
                format!("svc-{i}.ns-{ns}.svc.cluster.local."),
                RecordType::A,
                false,
            ),
            Mix::SearchPath if n % 2 == 0 => (
                format!("svc-{i}.ns-{}.svc.cluster.local.", (ns + 1) % NAMESPACES),
                RecordType::A,
                true,
            ),
            Mix::SearchPath => (
                format!("svc-{i}.ns-{ns}.svc.cluster.local."),
                RecordType::A,
                false,
            ),
            Mix::Srv => (
                format!("_http._tcp.svc-{i}.ns-{ns}.svc.cluster.local."),
                RecordType::SRV,
                false,
            ),
        }
    }
}

/// A small deterministic generator (xorshift64*), so runs ask the same questions.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// One client: questions until `until`; its latencies and how many answers were wrong.
async fn client(
    server: SocketAddr,
    mix: Mix,
    services: usize,
    seed: u64,
    until: Instant,
) -> Result<(Latencies, usize)> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(server).await?;
    let mut state = seed | 1;
    let mut latencies = Latencies::with_capacity(100_000);
    let mut wrong = 0;
    let mut buf = vec![0u8; 4096];
    let mut id: u16 = 0;
    while Instant::now() < until {
        id = id.wrapping_add(1);
        let (name, rtype, expected_nx) = mix.question(next(&mut state), services);
        let mut message = Message::query();
        message.metadata.id = id;
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(&name)?, rtype));
        let bytes = message.to_vec()?;
        let start = Instant::now();
        socket.send(&bytes).await?;
        let answer = loop {
            let len = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
                .await
                .context("no answer within 2 s")??;
            let answer = Message::from_vec(&buf[..len])?;
            if answer.metadata.id == id {
                break answer;
            }
        };
        latencies.record(start.elapsed());
        let good = match answer.metadata.response_code {
            ResponseCode::NXDomain => expected_nx,
            ResponseCode::NoError => !expected_nx && !answer.answers.is_empty(),
            _ => false,
        };
        if !good {
            wrong += 1;
        }
    }
    Ok((latencies, wrong))
}

/// Runs the benchmark and prints a Markdown report.
pub async fn run(args: &DnsArgs) -> Result<()> {
    if args.services == 0 || args.clients == 0 {
        bail!("--services and --clients must be at least 1");
    }
    let (services, slices) = cluster(args.services)?;
    let mut builds = Latencies::with_capacity(5);
    let mut index = Index::empty(zone(), 0);
    for _ in 0..5 {
        let start = Instant::now();
        index = Index::build(zone(), 1, &services, &slices);
        builds.record(start.elapsed());
    }
    let names = index.len();
    let build = builds.summary().context("no builds")?;

    let listeners = Listeners::bind("127.0.0.1:0".parse()?).await?;
    let addr = listeners.local_addr()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let handler = Handler::new(
        zone(),
        SharedIndex::with(index),
        Forwarder::new(vec![], Duration::from_secs(1)),
    );
    let server = tokio::spawn(serve(listeners, handler, stopped));

    println!(
        "Cluster DNS: {} Services ({} names indexed), UDP on loopback, {} closed-loop clients, {} s per mix\n",
        args.services, names, args.clients, args.seconds
    );
    println!(
        "index build: p50 {:.2} ms, max {:.2} ms\n",
        millis(build.p50),
        millis(build.max)
    );
    println!("| questions | clients | answers/s | p50 | p99 | max | wrong |");
    println!("|---|---|---|---|---|---|---|");
    for mix in [Mix::ServiceA, Mix::SearchPath, Mix::Srv] {
        for clients in [1, args.clients] {
            let until = Instant::now() + Duration::from_secs(args.seconds);
            let start = Instant::now();
            let tasks: Vec<_> = (0..clients)
                .map(|c| {
                    tokio::spawn(client(
                        addr,
                        mix,
                        args.services,
                        0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1),
                        until,
                    ))
                })
                .collect();
            let mut all = Latencies::default();
            let mut wrong = 0;
            for task in tasks {
                let (latencies, bad) = task.await??;
                all.merge(latencies);
                wrong += bad;
            }
            let elapsed = start.elapsed().as_secs_f64();
            let count = all.len();
            let summary = all.summary().context("no answers")?;
            println!(
                "| {} | {} | {:.0} | {:.3} ms | {:.3} ms | {:.2} ms | {} |",
                mix.label(),
                clients,
                count as f64 / elapsed,
                millis(summary.p50),
                millis(summary.p99),
                millis(summary.max),
                wrong
            );
        }
    }
    stop.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn questions_name_existing_services() {
        let (services, slices) = cluster(100).unwrap();
        let index = Index::build(zone(), 1, &services, &slices);
        let mut state = 7;
        for mix in [Mix::ServiceA, Mix::SearchPath, Mix::Srv] {
            for _ in 0..50 {
                let (name, rtype, nx) = mix.question(next(&mut state), 100);
                let outcome = index.lookup(&Name::from_ascii(&name).unwrap(), rtype);
                if nx {
                    assert!(
                        matches!(outcome, shoal_net::dns::Outcome::NxDomain { .. }),
                        "{name}: {outcome:?}"
                    );
                } else {
                    assert!(
                        matches!(outcome, shoal_net::dns::Outcome::Answer { .. }),
                        "{name}: {outcome:?}"
                    );
                }
            }
        }
    }
}
