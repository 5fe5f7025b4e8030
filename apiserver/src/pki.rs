//! The cluster's certificates and secrets, created on a server's first start and reused after:
//! a CA (ECDSA P-256, 10 years), the API server's serving certificate (1 year, with the names
//! and addresses clients use to reach it; reissued when they change or it nears expiry), the
//! admin client certificate (`system:admin` in `system:masters`), the kubeconfig that uses it,
//! and the node join token in k3s's `K10<sha256 of the CA>::server:<secret>` form so a joining
//! node can check the CA it is shown.
//!
//! The ServiceAccount token signing key (`service-account.key`, ECDSA P-256) is made once too.
//! So is a second CA for the store's peer (Raft) traffic (`peer-ca.*`, as etcd keeps its own
//! peer CA), with which each server issues its own peer certificate (`peer.*`, server and
//! client use, its addresses as SANs). A joining server gets both CAs and the signing key from
//! an existing one ([`ClusterPki::bootstrap`], [`install_bootstrap`]), then makes its own leaves.
//!
//! Files live in `<data-dir>/server/tls/` (keys mode 0600) and `<data-dir>/server/token`.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom as _;
use shoal_common::join::{
    join_token, parse_join_token, JoinedCluster, ServerBootstrap, TokenError, NODES_GROUP,
    NODE_USER_PREFIX,
};
use time::{Duration, OffsetDateTime};

const CA_CERT: &str = "server-ca.crt";
const CA_KEY: &str = "server-ca.key";
const SERVING_CERT: &str = "serving.crt";
const SERVING_KEY: &str = "serving.key";
const SERVING_META: &str = "serving.meta";
const ADMIN_CERT: &str = "client-admin.crt";
const ADMIN_KEY: &str = "client-admin.key";
const SERVICE_ACCOUNT_KEY: &str = "service-account.key";
const PEER_CA_CERT: &str = "peer-ca.crt";
const PEER_CA_KEY: &str = "peer-ca.key";
const PEER_CERT: &str = "peer.crt";
const PEER_KEY: &str = "peer.key";
const PEER_META: &str = "peer.meta";

/// The user and group the admin client certificate names (Kubernetes' superuser group).
pub const ADMIN_USER: &str = "system:admin";
pub const ADMIN_GROUP: &str = "system:masters";

/// Leaf certificates are reissued when less than this much validity is left.
const RENEW_BEFORE: Duration = Duration::days(90);

/// Why the PKI could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the random number generator failed")]
    Random,
    #[error(transparent)]
    BadToken(#[from] TokenError),
    #[error("{path} holds another join token than --token; a cluster's token cannot change")]
    TokenMismatch { path: PathBuf },
    #[error("the certificate request is not a valid PKCS#10 request: {0}")]
    BadRequest(String),
}

/// Who the serving certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingIdentity {
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl ServingIdentity {
    /// The names Kubernetes' API server certificate carries, plus this node's own.
    pub fn kubernetes(node_name: &str, cluster_domain: &str, ips: Vec<IpAddr>) -> Self {
        let mut dns_names: Vec<String> = [
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            format!("kubernetes.default.svc.{cluster_domain}"),
            "localhost".to_string(),
            node_name.to_string(),
        ]
        .into_iter()
        .collect();
        dns_names.dedup();
        let mut ips = ips;
        ips.sort();
        ips.dedup();
        ServingIdentity { dns_names, ips }
    }

    fn describe(&self) -> String {
        let mut out = String::new();
        for name in &self.dns_names {
            let _ = writeln!(out, "dns {name}");
        }
        for ip in &self.ips {
            let _ = writeln!(out, "ip {ip}");
        }
        out
    }
}

/// The loaded PKI, PEM-encoded.
#[derive(Clone)]
pub struct ClusterPki {
    pub ca_cert_pem: String,
    /// The CA's key, which signs node client certificates.
    ca_key_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    /// The secret half of the join token.
    pub token_secret: String,
    /// Signs and verifies ServiceAccount tokens (ECDSA P-256, PKCS#8 PEM).
    pub service_account_key_pem: String,
    pub peer_ca_cert_pem: String,
    peer_ca_key_pem: String,
    /// This server's certificate for the store's peer traffic (both directions).
    pub peer_cert_pem: String,
    pub peer_key_pem: String,
}

impl std::fmt::Debug for ClusterPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPki").finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes a file atomically (temp file, fsync, rename) with the given mode, also when it
/// already existed with another one. For keys, kubeconfigs and tokens.
pub fn write_file_atomic(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    write_file_atomic(path, contents, mode).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn random_bytes<const N: usize>() -> Result<[u8; N], PkiError> {
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    Ok(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn leaf_params(common_name: &str, validity: Duration) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + validity;
    params.serial_number = Some(SerialNumber::from_slice(&random_bytes::<16>()?));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    Ok(params)
}

impl ClusterPki {
    /// Loads the PKI under `server_dir` (`<data-dir>/server`), creating what is missing and
    /// reissuing the serving certificate when `identity` changed or it nears expiry. `token`
    /// (a bare secret or a full `K10…` token, from `--token`) becomes the join secret of a new
    /// cluster and must match the stored one of an existing cluster.
    pub fn load_or_create(
        server_dir: &Path,
        identity: &ServingIdentity,
        token: Option<&str>,
    ) -> Result<Self, PkiError> {
        let wanted_secret = token.map(parse_join_token).transpose()?;
        let tls = server_dir.join("tls");
        std::fs::create_dir_all(&tls).map_err(|source| PkiError::Io {
            path: tls.clone(),
            source,
        })?;

        let (ca_cert_pem, ca_key) = load_or_create_ca(&tls, CA_CERT, CA_KEY, "shoal-server-ca")?;
        let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, &ca_key)?;

        let (serving_cert_pem, serving_key_pem) = {
            let mut params = leaf_params("kube-apiserver", Duration::days(365))?;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            load_or_issue_leaf(
                &tls,
                [SERVING_CERT, SERVING_KEY, SERVING_META],
                identity,
                params,
                &issuer,
            )?
        };

        let (admin_cert_pem, admin_key_pem) =
            match (read(&tls.join(ADMIN_CERT))?, read(&tls.join(ADMIN_KEY))?) {
                (Some(cert), Some(key)) => (cert, key),
                _ => {
                    let key = KeyPair::generate()?;
                    let mut params = leaf_params(ADMIN_USER, Duration::days(365))?;
                    params
                        .distinguished_name
                        .push(DnType::OrganizationName, ADMIN_GROUP);
                    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                    let cert = params.signed_by(&key, &issuer)?;
                    write(&tls.join(ADMIN_KEY), &key.serialize_pem(), 0o600)?;
                    write(&tls.join(ADMIN_CERT), &cert.pem(), 0o644)?;
                    (cert.pem(), key.serialize_pem())
                }
            };

        let sa_key_path = tls.join(SERVICE_ACCOUNT_KEY);
        let service_account_key_pem = match read(&sa_key_path)? {
            Some(pem) => {
                KeyPair::from_pem(&pem).map_err(|e| PkiError::Invalid {
                    path: sa_key_path.clone(),
                    reason: e.to_string(),
                })?;
                pem
            }
            None => {
                let pem = KeyPair::generate()?.serialize_pem();
                write(&sa_key_path, &pem, 0o600)?;
                pem
            }
        };

        let (peer_ca_cert_pem, peer_ca_key) =
            load_or_create_ca(&tls, PEER_CA_CERT, PEER_CA_KEY, "shoal-peer-ca")?;
        let (peer_cert_pem, peer_key_pem) = {
            let issuer = Issuer::from_ca_cert_pem(&peer_ca_cert_pem, &peer_ca_key)?;
            let mut params = leaf_params("shoal-peer", Duration::days(365))?;
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let peer_identity = ServingIdentity {
                dns_names: vec!["localhost".into()],
                ips: identity.ips.clone(),
            };
            load_or_issue_leaf(
                &tls,
                [PEER_CERT, PEER_KEY, PEER_META],
                &peer_identity,
                params,
                &issuer,
            )?
        };

        let token_path = server_dir.join("token");
        let token_secret = match read(&token_path)? {
            Some(stored) => {
                let stored = parse_join_token(stored.trim())?;
                if wanted_secret
                    .as_ref()
                    .is_some_and(|wanted| !stored.secret_matches(&wanted.secret))
                {
                    return Err(PkiError::TokenMismatch { path: token_path });
                }
                stored.secret
            }
            None => {
                let secret = match wanted_secret {
                    Some(wanted) => wanted.secret,
                    None => hex(&random_bytes::<16>()?),
                };
                write(
                    &token_path,
                    &format!("{}\n", join_token(&ca_cert_pem, &secret)),
                    0o600,
                )?;
                secret
            }
        };

        Ok(ClusterPki {
            peer_ca_cert_pem,
            peer_ca_key_pem: peer_ca_key.serialize_pem(),
            peer_cert_pem,
            peer_key_pem,
            ca_key_pem: ca_key.serialize_pem(),
            ca_cert_pem,
            serving_cert_pem,
            serving_key_pem,
            admin_cert_pem,
            admin_key_pem,
            token_secret,
            service_account_key_pem,
        })
    }

    /// The full join token agents are given.
    pub fn join_token(&self) -> String {
        join_token(&self.ca_cert_pem, &self.token_secret)
    }

    /// Signs a node's client certificate (`system:node:<name>` in `system:nodes`, one year)
    /// for the key in `csr_pem`; the request's own subject and extensions are ignored.
    pub fn sign_node_client(&self, node_name: &str, csr_pem: &str) -> Result<String, PkiError> {
        let key = KeyPair::from_pem(&self.ca_key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_cert_pem, &key)?;
        let mut request = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadRequest(e.to_string()))?;
        let mut params = leaf_params(
            &format!("{NODE_USER_PREFIX}{node_name}"),
            Duration::days(365),
        )?;
        params
            .distinguished_name
            .push(DnType::OrganizationName, NODES_GROUP);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        request.params = params;
        Ok(request.signed_by(&issuer)?.pem())
    }

    /// The keys a joining server needs (sent over verified TLS to a holder of the token).
    pub fn bootstrap(&self, cluster: JoinedCluster) -> ServerBootstrap {
        ServerBootstrap {
            ca_cert: self.ca_cert_pem.clone(),
            ca_key: self.ca_key_pem.clone(),
            peer_ca_cert: self.peer_ca_cert_pem.clone(),
            peer_ca_key: self.peer_ca_key_pem.clone(),
            service_account_key: self.service_account_key_pem.clone(),
            cluster,
        }
    }

    /// A kubeconfig for the admin user against `server_url` (`https://127.0.0.1:6443`).
    pub fn admin_kubeconfig(&self, server_url: &str) -> String {
        kubeconfig(
            server_url,
            &self.ca_cert_pem,
            &self.admin_cert_pem,
            &self.admin_key_pem,
        )
    }
}

/// The leaf in `files` (certificate, key, and a note of the names it was issued for), reused
/// while it is for `identity` and not near expiry, else issued from `params` (to which the
/// identity's names are added) and written.
fn load_or_issue_leaf(
    tls: &Path,
    [cert_file, key_file, meta_file]: [&str; 3],
    identity: &ServingIdentity,
    mut params: CertificateParams,
    issuer: &Issuer<'_, &KeyPair>,
) -> Result<(String, String), PkiError> {
    let meta = read(&tls.join(meta_file))?;
    let wanted = identity.describe();
    let current = match (read(&tls.join(cert_file))?, read(&tls.join(key_file))?) {
        (Some(cert), Some(key)) => Some((cert, key)),
        _ => None,
    };
    if let (Some(pair), Some(meta)) = (current, meta) {
        if still_valid(&meta, &wanted) {
            return Ok(pair);
        }
    }
    let key = KeyPair::generate()?;
    for name in &identity.dns_names {
        params
            .subject_alt_names
            .push(SanType::DnsName(name.clone().try_into()?));
    }
    for ip in &identity.ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    let cert = params.signed_by(&key, issuer)?;
    let expires = params.not_after.unix_timestamp();
    write(&tls.join(key_file), &key.serialize_pem(), 0o600)?;
    write(&tls.join(cert_file), &cert.pem(), 0o644)?;
    write(
        &tls.join(meta_file),
        &format!("{wanted}expires {expires}\n"),
        0o644,
    )?;
    tracing::info!(certificate = cert_file, "issued a certificate");
    Ok((cert.pem(), key.serialize_pem()))
}

/// Whether `server_dir` (`<data-dir>/server`) already holds a cluster CA.
pub fn has_cluster_ca(server_dir: &Path) -> bool {
    server_dir.join("tls").join(CA_CERT).exists()
}

/// Writes what an existing server gave a joining one into `server_dir`, before
/// [`ClusterPki::load_or_create`] loads it and issues this server's own certificates and
/// token file. A data directory that already holds other keys is refused: joining never
/// replaces a cluster's identity.
pub fn install_bootstrap(server_dir: &Path, bundle: &ServerBootstrap) -> Result<(), PkiError> {
    let tls = server_dir.join("tls");
    let files = [
        (CA_CERT, &bundle.ca_cert, 0o644),
        (CA_KEY, &bundle.ca_key, 0o600),
        (PEER_CA_CERT, &bundle.peer_ca_cert, 0o644),
        (PEER_CA_KEY, &bundle.peer_ca_key, 0o600),
        (SERVICE_ACCOUNT_KEY, &bundle.service_account_key, 0o600),
    ];
    for (file, contents, _) in files {
        let path = tls.join(file);
        if let Some(existing) = read(&path)? {
            if existing != *contents {
                return Err(PkiError::Invalid {
                    path,
                    reason: "this data directory belongs to another cluster; \
                             remove it to join this one"
                        .into(),
                });
            }
        }
    }
    for (file, contents, mode) in files {
        write(&tls.join(file), contents, mode)?;
    }
    Ok(())
}

fn still_valid(meta: &str, wanted: &str) -> bool {
    let Some((sans, expiry)) = meta.rsplit_once("expires ") else {
        return false;
    };
    let Ok(expires) = expiry.trim().parse::<i64>() else {
        return false;
    };
    sans == wanted
        && OffsetDateTime::now_utc() + RENEW_BEFORE
            < OffsetDateTime::from_unix_timestamp(expires).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn load_or_create_ca(
    tls: &Path,
    cert_file: &str,
    key_file: &str,
    name: &str,
) -> Result<(String, KeyPair), PkiError> {
    let cert_path = tls.join(cert_file);
    let key_path = tls.join(key_file);
    match (read(&cert_path)?, read(&key_path)?) {
        (Some(cert), Some(key)) => {
            let key = KeyPair::from_pem(&key).map_err(|e| PkiError::Invalid {
                path: key_path.clone(),
                reason: e.to_string(),
            })?;
            Issuer::from_ca_cert_pem(&cert, &key).map_err(|e| PkiError::Invalid {
                path: cert_path.clone(),
                reason: e.to_string(),
            })?;
            Ok((cert, key))
        }
        (None, None) => {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            let now = OffsetDateTime::now_utc();
            params.not_before = now - Duration::hours(1);
            params.not_after = now + Duration::days(3650);
            params.serial_number = Some(SerialNumber::from_slice(&random_bytes::<16>()?));
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let mut dn = DistinguishedName::new();
            dn.push(
                DnType::CommonName,
                format!("{name}@{}", now.unix_timestamp()),
            );
            params.distinguished_name = dn;
            let cert = params.self_signed(&key)?;
            write(&key_path, &key.serialize_pem(), 0o600)?;
            write(&cert_path, &cert.pem(), 0o644)?;
            tracing::info!(ca = name, "created a CA");
            Ok((cert.pem(), key))
        }
        // Half a CA is never silently replaced: every issued certificate hangs off it.
        (Some(_), None) => Err(PkiError::Invalid {
            path: key_path,
            reason: "the CA certificate exists but its key is missing".into(),
        }),
        (None, Some(_)) => Err(PkiError::Invalid {
            path: cert_path,
            reason: "the CA key exists but its certificate is missing".into(),
        }),
    }
}

/// A kubeconfig with one cluster, one client-certificate user and one context, all "default".
pub use shoal_common::join::kubeconfig;

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(ip: &str) -> ServingIdentity {
        ServingIdentity::kubernetes("node-1", "cluster.local", vec![ip.parse().expect("ip")])
    }

    #[test]
    fn created_once_then_reused() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let first =
            ClusterPki::load_or_create(dir.path(), &identity("127.0.0.1"), None).expect("create");
        let again =
            ClusterPki::load_or_create(dir.path(), &identity("127.0.0.1"), None).expect("load");
        assert_eq!(first.ca_cert_pem, again.ca_cert_pem);
        assert_eq!(first.serving_cert_pem, again.serving_cert_pem);
        assert_eq!(first.admin_cert_pem, again.admin_cert_pem);
        assert_eq!(first.join_token(), again.join_token());
        assert_eq!(first.service_account_key_pem, again.service_account_key_pem);
        let mode = |name: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(dir.path().join("tls").join(name))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(CA_KEY), 0o600);
        assert_eq!(mode(SERVING_KEY), 0o600);
        assert_eq!(mode(ADMIN_KEY), 0o600);
        assert_eq!(mode(SERVICE_ACCOUNT_KEY), 0o600);
    }

    #[test]
    fn a_new_address_reissues_the_serving_certificate_under_the_same_ca() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let first =
            ClusterPki::load_or_create(dir.path(), &identity("127.0.0.1"), None).expect("create");
        let moved =
            ClusterPki::load_or_create(dir.path(), &identity("10.0.0.5"), None).expect("reissue");
        assert_eq!(first.ca_cert_pem, moved.ca_cert_pem);
        assert_ne!(first.serving_cert_pem, moved.serving_cert_pem);
        assert_eq!(first.admin_cert_pem, moved.admin_cert_pem);
    }

    #[test]
    fn half_a_ca_is_refused() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        ClusterPki::load_or_create(dir.path(), &identity("127.0.0.1"), None).expect("create");
        std::fs::remove_file(dir.path().join("tls").join(CA_KEY)).expect("rm");
        let err = ClusterPki::load_or_create(dir.path(), &identity("127.0.0.1"), None)
            .expect_err("refuse");
        assert!(err.to_string().contains("key is missing"), "{err}");
        std::fs::write(dir.path().join("tls").join(CA_KEY), "not a key").expect("write");
        assert!(ClusterPki::load_or_create(dir.path(), &identity("127.0.0.1"), None).is_err());
    }

    #[test]
    fn join_tokens_pin_the_ca() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let pki =
            ClusterPki::load_or_create(dir.path(), &identity("127.0.0.1"), None).expect("create");
        let token = pki.join_token();
        assert!(token.starts_with("K10") && token.contains("::server:"));
        let written = std::fs::read_to_string(dir.path().join("token")).expect("token file");
        assert_eq!(written.trim(), token);
        let parsed = parse_join_token(&token).expect("parse");
        assert_eq!(parsed.secret, pki.token_secret);
        assert!(parsed.trusts(&pki.ca_cert_pem));
        assert!(!parsed.trusts("another CA"));
        let bare = parse_join_token("just-a-secret").expect("bare");
        assert_eq!(
            (bare.ca_hash, bare.secret.as_str()),
            (None, "just-a-secret")
        );
        for bad in [
            "",
            "K10abc::server:x",
            "K10",
            &format!("K10{}::server:", "a".repeat(64)),
        ] {
            assert!(parse_join_token(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_token_flag_sets_a_new_clusters_secret_and_must_match_an_old_one() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let pki = ClusterPki::load_or_create(dir.path(), &identity("127.0.0.1"), Some("s3cret"))
            .expect("create");
        assert_eq!(pki.token_secret, "s3cret");
        let full = pki.join_token();
        ClusterPki::load_or_create(dir.path(), &identity("127.0.0.1"), Some(&full))
            .expect("the full token names the same secret");
        ClusterPki::load_or_create(dir.path(), &identity("127.0.0.1"), None).expect("no flag");
        let err = ClusterPki::load_or_create(dir.path(), &identity("127.0.0.1"), Some("other"))
            .expect_err("another secret");
        assert!(err.to_string().contains("another join token"), "{err}");
    }

    #[test]
    fn node_client_certificates_name_the_node_and_chain_to_the_ca() {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let dir = tempfile::TempDir::new().expect("tempdir");
        let pki =
            ClusterPki::load_or_create(dir.path(), &identity("127.0.0.1"), None).expect("create");
        let key = KeyPair::generate().expect("key");
        let mut asked = CertificateParams::default();
        asked
            .distinguished_name
            .push(DnType::CommonName, "system:admin"); // ignored: the node cannot choose
        let csr = asked
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let pem = pki.sign_node_client("worker-1", &csr).expect("sign");
        let der = rustls_pki_der(&pem);
        let (_, cert) = X509Certificate::from_der(&der).expect("parse");
        let user = crate::auth::User::from_certificate(&der);
        assert_eq!(
            user,
            crate::auth::User::Authenticated {
                name: "system:node:worker-1".into(),
                groups: vec!["system:nodes".into()],
            }
        );
        assert_eq!(
            cert.public_key().raw,
            rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        );
        let ca_der = rustls_pki_der(&pki.ca_cert_pem);
        let (_, ca) = X509Certificate::from_der(&ca_der).expect("ca");
        cert.verify_signature(Some(ca.public_key()))
            .expect("signed by the CA");
        assert!(matches!(
            pki.sign_node_client("worker-1", "not a request"),
            Err(PkiError::BadRequest(_))
        ));
    }

    fn rustls_pki_der(pem: &str) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject as _;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("pem")
            .to_vec()
    }

    #[test]
    fn a_joining_server_shares_the_keys_and_makes_its_own_leaves() {
        let first_dir = tempfile::TempDir::new().expect("tempdir");
        let first = ClusterPki::load_or_create(first_dir.path(), &identity("10.0.0.1"), Some("t"))
            .expect("first server");
        let bundle = first.bootstrap(JoinedCluster {
            cluster_cidr: "10.42.0.0/16".into(),
            service_cidr: "10.43.0.0/16".into(),
            cluster_dns: "10.43.0.10".into(),
            cluster_domain: "cluster.local".into(),
        });
        let second_dir = tempfile::TempDir::new().expect("tempdir");
        install_bootstrap(second_dir.path(), &bundle).expect("install");
        let second =
            ClusterPki::load_or_create(second_dir.path(), &identity("10.0.0.2"), Some("t"))
                .expect("second server");
        assert_eq!(second.ca_cert_pem, first.ca_cert_pem);
        assert_eq!(second.peer_ca_cert_pem, first.peer_ca_cert_pem);
        assert_eq!(
            second.service_account_key_pem,
            first.service_account_key_pem
        );
        assert_eq!(second.join_token(), first.join_token());
        assert_ne!(second.serving_cert_pem, first.serving_cert_pem);
        assert_ne!(second.peer_cert_pem, first.peer_cert_pem);
        // Installing the same keys again is harmless; another cluster's are refused.
        install_bootstrap(second_dir.path(), &bundle).expect("same keys again");
        let other_dir = tempfile::TempDir::new().expect("tempdir");
        let other = ClusterPki::load_or_create(other_dir.path(), &identity("10.0.0.3"), None)
            .expect("another cluster");
        let err = install_bootstrap(other_dir.path(), &bundle).expect_err("other cluster");
        assert!(err.to_string().contains("another cluster"), "{err}");
        assert_eq!(
            std::fs::read_to_string(other_dir.path().join("tls").join(CA_CERT)).expect("ca"),
            other.ca_cert_pem,
            "nothing was overwritten"
        );
    }

    /// Peer TLS accepts another server's peer certificate and refuses a certificate of the
    /// cluster CA (a node's or the admin's): the peer port is for servers only.
    #[tokio::test]
    async fn the_peer_port_takes_servers_only() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let first_dir = tempfile::TempDir::new().expect("tempdir");
        let first = ClusterPki::load_or_create(first_dir.path(), &identity("127.0.0.1"), Some("t"))
            .expect("first");
        let second_dir = tempfile::TempDir::new().expect("tempdir");
        install_bootstrap(
            second_dir.path(),
            &first.bootstrap(JoinedCluster {
                cluster_cidr: String::new(),
                service_cidr: String::new(),
                cluster_dns: String::new(),
                cluster_domain: String::new(),
            }),
        )
        .expect("install");
        let second = ClusterPki::load_or_create(second_dir.path(), &identity("127.0.0.1"), None)
            .expect("second");
        let (server_config, _) = crate::server::peer_tls_configs(&first).expect("first tls");
        let (_, client_config) = crate::server::peer_tls_configs(&second).expect("second tls");

        let handshake = |client_config: std::sync::Arc<rustls::ClientConfig>| {
            let server_config = server_config.clone();
            async move {
                let (client_io, server_io) = tokio::io::duplex(64 * 1024);
                let acceptor = tokio_rustls::TlsAcceptor::from(server_config);
                let server = tokio::spawn(async move {
                    let mut stream = acceptor.accept(server_io).await?;
                    let mut byte = [0u8; 1];
                    stream.read_exact(&mut byte).await?;
                    Ok::<u8, std::io::Error>(byte[0])
                });
                let connector = tokio_rustls::TlsConnector::from(client_config);
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
                let client = async {
                    let mut stream = connector.connect(name, client_io).await?;
                    stream.write_all(&[7]).await?;
                    stream.flush().await?;
                    Ok::<_, std::io::Error>(stream)
                };
                let _stream = client.await;
                server.await.expect("join")
            }
        };
        assert_eq!(handshake(client_config).await.expect("peer accepted"), 7);

        let admin = crate::node_proxy::client_config(&first.admin_cert_pem, &first.admin_key_pem)
            .expect("admin client");
        assert!(
            handshake(admin).await.is_err(),
            "a cluster-CA certificate was accepted"
        );
    }
}
