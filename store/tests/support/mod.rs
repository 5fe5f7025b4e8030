//! A store cluster in one test process: each member is a `RaftStore` on its own tokio runtime
//! (so killing a member drops everything it runs at once, as a crash does) with its own data
//! directory, a loopback peer port and certificates from a throwaway CA.

#![allow(clippy::unwrap_used, dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use shoal_store::{Bootstrap, NetworkFaults, PeerConfig, RaftStore, RaftStoreConfig, StoreError};
use tempfile::TempDir;

/// A certificate authority for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
}

/// A member's certificate and key, and the CA they chain to.
#[derive(Clone)]
pub struct MemberCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivatePkcs8KeyDer<'static>>,
    pub ca: CertificateDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for 127.0.0.1 and localhost, good as server and as client.
    pub fn member(&self, name: &str) -> MemberCert {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        MemberCert {
            chain: vec![cert.der().clone()],
            key: Arc::new(PrivatePkcs8KeyDer::from(key.serialize_der())),
            ca: self.cert.clone(),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Arc<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    Arc::new(roots)
}

impl MemberCert {
    /// Server TLS that requires a client certificate from the CA (or, with `optional`, lets
    /// clients without one through the handshake).
    pub fn server_config(&self, optional: bool) -> Arc<rustls::ServerConfig> {
        let builder = WebPkiClientVerifier::builder_with_provider(roots(&self.ca), provider());
        let verifier = if optional {
            builder.allow_unauthenticated().build().unwrap()
        } else {
            builder.build().unwrap()
        };
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(
                    self.chain.clone(),
                    PrivateKeyDer::Pkcs8(self.key.clone_key()),
                )
                .unwrap(),
        )
    }

    /// Client TLS presenting this certificate and trusting the CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots(&self.ca))
                .with_client_auth_cert(
                    self.chain.clone(),
                    PrivateKeyDer::Pkcs8(self.key.clone_key()),
                )
                .unwrap(),
        )
    }
}

/// Client TLS trusting the CA but presenting no certificate.
pub fn client_config_without_certificate(ca: &MemberCert) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(&ca.ca))
            .with_no_client_auth(),
    )
}

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One member: its runtime, store and the knobs a test turns.
pub struct Node {
    pub id: u64,
    pub addr: String,
    pub dir: PathBuf,
    pub faults: NetworkFaults,
    runtime: Option<tokio::runtime::Runtime>,
    store: Option<RaftStore>,
}

impl Node {
    pub fn store(&self) -> &RaftStore {
        self.store.as_ref().expect("the member was killed")
    }

    pub fn alive(&self) -> bool {
        self.store.is_some()
    }

    /// Stops the member at once, as a crash would: its runtime and every task on it go.
    ///
    /// Its database is never closed: sled 0.34 serialises all databases of a process behind
    /// one global lock, and closing one that a crash left with unflushed writes flushes them
    /// while holding that lock, which can deadlock with the other members still writing (one
    /// database per process, as in production, does not meet this). A killed member's
    /// directory therefore cannot be opened again by this process; [`Node::stop`] can.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        if let Some(store) = self.store.take() {
            std::mem::forget(store);
        }
    }

    /// Stops the member cleanly (Raft stopped, everything flushed), so its directory can be
    /// opened again.
    pub async fn stop(&mut self) {
        if let Some(store) = self.store.take() {
            let stopping = store.clone();
            self.on_runtime(async move { stopping.shutdown().await })
                .await
                .unwrap();
            drop(store);
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Runs `future` on the member's own runtime.
    pub async fn on_runtime<F>(&self, future: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime
            .as_ref()
            .expect("the member was killed")
            .spawn(future)
            .await
            .unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Knobs for a member's configuration.
pub type Tweak = Arc<dyn Fn(&mut RaftStoreConfig) + Send + Sync>;

/// Opens a member on a runtime of its own.
pub async fn open_member(
    dir: &Path,
    cert: &MemberCert,
    port: u16,
    bootstrap: Bootstrap,
    node_id: Option<u64>,
    tweak: &Tweak,
) -> Result<Node, StoreError> {
    let tls = (cert.server_config(false), cert.client_config());
    open_member_with_tls(dir, tls, port, bootstrap, node_id, tweak).await
}

/// [`open_member`] with the given server and client TLS.
pub async fn open_member_with_tls(
    dir: &Path,
    (tls_server, tls_client): (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>),
    port: u16,
    bootstrap: Bootstrap,
    node_id: Option<u64>,
    tweak: &Tweak,
) -> Result<Node, StoreError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let faults = NetworkFaults::default();
    let addr = format!("127.0.0.1:{port}");
    let mut config = RaftStoreConfig::new(dir);
    config.node_id = node_id;
    config.advertise = addr.clone();
    config.bootstrap = bootstrap;
    config.cache_bytes = 8 * 1024 * 1024;
    config.peer = Some(PeerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        tls_server,
        tls_client,
        faults: faults.clone(),
    });
    tweak(&mut config);
    // A killed member's database may take a moment to be released by its last thread.
    let deadline = Instant::now() + Duration::from_secs(10);
    let store = loop {
        match runtime
            .spawn(RaftStore::open(config.clone()))
            .await
            .unwrap()
        {
            Err(StoreError::Io(m)) if m.contains("locked") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => {
                runtime.shutdown_background();
                return Err(err);
            }
            Ok(store) => break store,
        }
    };
    Ok(Node {
        id: store.node_id(),
        addr,
        dir: dir.to_path_buf(),
        faults,
        runtime: Some(runtime),
        store: Some(store),
    })
}

/// A cluster of members sharing one CA.
pub struct Cluster {
    pub ca: TestCa,
    pub nodes: Vec<Node>,
    pub tweak: Tweak,
    dir: TempDir,
}

impl Cluster {
    /// `size` members: the first starts the cluster, the others join through `add_member`
    /// called on the first.
    pub async fn start(size: usize) -> Cluster {
        Cluster::start_with(size, Arc::new(|_| {})).await
    }

    pub async fn start_with(size: usize, tweak: Tweak) -> Cluster {
        let mut cluster = Cluster {
            ca: TestCa::new("test store CA"),
            nodes: Vec::new(),
            tweak,
            dir: TempDir::new().unwrap(),
        };
        let first = cluster.open(Bootstrap::Init).await.unwrap();
        cluster.nodes.push(first);
        for _ in 1..size {
            cluster.join().await;
        }
        cluster
    }

    pub fn member_dir(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("member-{n}"))
    }

    /// Opens one more member (not added yet); its directory is numbered after the others.
    pub async fn open(&self, bootstrap: Bootstrap) -> Result<Node, StoreError> {
        let n = self.nodes.len();
        let cert = self.ca.member(&format!("member-{n}"));
        open_member(
            &self.member_dir(n),
            &cert,
            free_port(),
            bootstrap,
            None,
            &self.tweak,
        )
        .await
    }

    /// Opens a new member and adds it through the first live member.
    pub async fn join(&mut self) -> &Node {
        let node = self.open(Bootstrap::Join).await.unwrap();
        let via = self.any_live().store().clone();
        tokio::time::timeout(
            Duration::from_secs(60),
            via.add_member(node.id, node.addr.clone()),
        )
        .await
        .expect("add_member took over a minute")
        .unwrap();
        node.store()
            .wait_ready(Duration::from_secs(30))
            .await
            .unwrap();
        self.nodes.push(node);
        self.nodes.last().unwrap()
    }

    pub fn any_live(&self) -> &Node {
        self.nodes.iter().find(|n| n.alive()).unwrap()
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes.iter().find(|n| n.id == id).unwrap()
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap()
    }

    /// Waits until the live members `among` agree on one leader among them.
    pub async fn leader_among(&self, among: &[u64], within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let leaders: Vec<Option<u64>> = among
                .iter()
                .map(|id| self.node(*id).store().leader())
                .collect();
            if let Some(Some(leader)) = leaders.first() {
                if among.contains(leader) && leaders.iter().all(|l| *l == Some(*leader)) {
                    return *leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader among {among:?} within {within:?}: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn leader(&self) -> u64 {
        let live: Vec<u64> = self
            .nodes
            .iter()
            .filter(|n| n.alive())
            .map(|n| n.id)
            .collect();
        self.leader_among(&live, Duration::from_secs(10)).await
    }

    /// The ids of live members other than `leader`.
    pub fn others(&self, leader: u64) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.alive() && n.id != leader)
            .map(|n| n.id)
            .collect()
    }

    /// Drops all traffic between `group` and every other member.
    pub fn partition(&self, group: &[u64]) {
        for node in &self.nodes {
            let inside = group.contains(&node.id);
            let cut: Vec<u64> = self
                .nodes
                .iter()
                .filter(|other| group.contains(&other.id) != inside)
                .map(|other| other.id)
                .collect();
            node.faults.drop_traffic_with(cut);
        }
    }

    pub fn heal(&self) {
        for node in &self.nodes {
            node.faults.heal();
        }
    }
}

/// Retries `attempt` until it succeeds or `within` passes.
pub async fn eventually<T, E: std::fmt::Debug, F, Fut>(within: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(err) if Instant::now() >= deadline => {
                panic!("still failing after {within:?}: {err:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
