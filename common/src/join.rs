//! How a node joins a cluster, shared by the server that admits it and the agent that asks:
//! the join token in k3s's `K10<sha256 of the CA>::server:<secret>` form (the hash lets the
//! node check the CA it is shown before trusting it), the two endpoints, the messages they
//! exchange, and the kubeconfig a node (or an admin) ends up with.
//!
//! The exchange, as k3s does it: the node fetches the CA from [`CACERTS_PATH`] without
//! verifying TLS, checks it against the token's hash, then — now verifying the server — sends
//! a CSR for its own key to [`NODE_CREDENTIALS_PATH`] with HTTP Basic `node:<secret>`, and gets
//! back a client certificate for `system:node:<name>` in `system:nodes` plus the cluster's
//! addresses. The node's private key never leaves it.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Serves the cluster CA (PEM) to anyone: a joining node checks it against its token.
pub const CACERTS_PATH: &str = "/cacerts";
/// Signs a node's client certificate for a caller holding the join token.
pub const NODE_CREDENTIALS_PATH: &str = "/v1-shoal/node-credentials";
/// The Basic-auth user a node presents with the token's secret (k3s's).
pub const JOIN_USER: &str = "node";
/// Gives a joining server the cluster's keys (CA, peer CA, ServiceAccount signing key).
pub const SERVER_BOOTSTRAP_PATH: &str = "/v1-shoal/server-bootstrap";
/// Lists (GET), adds (POST) and removes (DELETE `?id=N`) the store's members.
pub const MEMBERS_PATH: &str = "/v1-shoal/members";
/// The Basic-auth user a server presents with the token's secret (k3s's token names it).
pub const SERVER_USER: &str = "server";
/// The group node client certificates name (Kubernetes' node authorizer's).
pub const NODES_GROUP: &str = "system:nodes";
/// The user-name prefix of node client certificates.
pub const NODE_USER_PREFIX: &str = "system:node:";

/// Why a join token cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid join token: {0}")]
pub struct TokenError(&'static str);

/// `K10<sha256 hex of the CA bundle>::server:<secret>`, as k3s writes it.
pub fn join_token(ca_cert_pem: &str, secret: &str) -> String {
    format!("K10{}::server:{secret}", sha256_hex(ca_cert_pem.as_bytes()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A join token taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The SHA-256 of the CA the node must see, when the token pins one.
    pub ca_hash: Option<String>,
    pub secret: String,
}

impl JoinToken {
    /// Whether `ca_cert_pem` is the CA this token pins (true when it pins none).
    pub fn trusts(&self, ca_cert_pem: &str) -> bool {
        self.ca_hash
            .as_deref()
            .is_none_or(|h| h == sha256_hex(ca_cert_pem.as_bytes()))
    }

    /// Whether `presented` (a Basic-auth password) is this token's secret, in time that does
    /// not depend on where they differ.
    pub fn secret_matches(&self, presented: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Parses a full `K10…::user:secret` token or a bare secret (which pins no CA).
pub fn parse_join_token(token: &str) -> Result<JoinToken, TokenError> {
    if token.is_empty() {
        return Err(TokenError("empty"));
    }
    let Some(rest) = token.strip_prefix("K10") else {
        return Ok(JoinToken {
            ca_hash: None,
            secret: token.to_string(),
        });
    };
    let (hash, credentials) = rest.split_once("::").ok_or(TokenError("no '::'"))?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TokenError("the CA hash is not 64 hex digits"));
    }
    let secret = match credentials.split_once(':') {
        Some((_user, secret)) => secret,
        None => credentials,
    };
    if secret.is_empty() {
        return Err(TokenError("no secret"));
    }
    Ok(JoinToken {
        ca_hash: Some(hash.to_ascii_lowercase()),
        secret: secret.to_string(),
    })
}

/// What a node sends to [`NODE_CREDENTIALS_PATH`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCredentialsRequest {
    pub node_name: String,
    /// A PKCS#10 request (PEM) for the node's own key; its subject is ignored.
    pub csr: String,
}

/// What the server answers: the node's client certificate and what it must know of the
/// cluster to run pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCredentials {
    /// `system:node:<name>` in `system:nodes`, signed by the cluster CA (PEM).
    pub client_cert: String,
    /// The cluster CA (PEM).
    pub ca_cert: String,
    pub cluster: JoinedCluster,
}

/// The cluster-wide settings a node takes from the server rather than from its own flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinedCluster {
    /// `--cluster-cidr` as written ([`crate::CidrList`]): one CIDR, or two comma-separated
    /// for a dual-stack cluster — so what servers before dual-stack kept still reads.
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: String,
    /// `--service-cidr`, the same way.
    #[serde(rename = "serviceCIDR")]
    pub service_cidr: String,
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: String,
    pub cluster_domain: String,
}

/// What a joining server is given: the keys every server of a cluster shares. Sent only over
/// TLS verified against the token's CA hash, to a caller presenting the token's secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerBootstrap {
    pub ca_cert: String,
    pub ca_key: String,
    /// The CA of the store's peer (Raft) traffic, apart from the cluster CA so that no node
    /// or user certificate can reach the peer port.
    pub peer_ca_cert: String,
    pub peer_ca_key: String,
    pub service_account_key: String,
    pub cluster: JoinedCluster,
}

impl std::fmt::Debug for ServerBootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBootstrap")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// One member of the servers' replicated store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreMember {
    pub id: u64,
    /// Where the other members reach its peer port (`IP:port`).
    pub peer_address: String,
    /// A voter (counts for quorum) or a learner still catching up.
    #[serde(default)]
    pub voter: bool,
    #[serde(default)]
    pub leader: bool,
}

/// A kubeconfig with one cluster, one client-certificate user and one context, all "default"
/// (as k3s names them).
pub fn kubeconfig(server_url: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: {server_url}\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\npreferences: {{}}\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(ca_pem),
        b64(cert_pem),
        b64(key_pem),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_pin_the_ca_they_were_made_for() {
        let token = join_token("CA PEM", "s3cret");
        assert!(token.starts_with("K10") && token.ends_with("::server:s3cret"));
        let parsed = parse_join_token(&token).unwrap();
        assert_eq!(parsed.secret, "s3cret");
        assert!(parsed.trusts("CA PEM"));
        assert!(!parsed.trusts("another CA"));
        // Upper-case hex is the same hash.
        let upper = format!("K10{}::server:s3cret", &token[3..67].to_ascii_uppercase());
        assert!(parse_join_token(&upper).unwrap().trusts("CA PEM"));
    }

    #[test]
    fn a_bare_secret_pins_nothing() {
        let bare = parse_join_token("just-a-secret").unwrap();
        assert_eq!(bare.ca_hash, None);
        assert_eq!(bare.secret, "just-a-secret");
        assert!(bare.trusts("any CA"));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "K10abc::server:x",
            "K10",
            &format!("K10{}::server:", "a".repeat(64)),
            &format!("K10{}:server:x", "a".repeat(64)),
            &format!("K10{}::server:x", "g".repeat(64)),
        ] {
            assert!(parse_join_token(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_compare_exactly() {
        let token = parse_join_token("abc").unwrap();
        assert!(token.secret_matches("abc"));
        for other in ["", "ab", "abd", "abcd", "ABC"] {
            assert!(!token.secret_matches(other), "{other}");
        }
    }

    #[test]
    fn messages_use_kubernetes_style_field_names() {
        let answer = NodeCredentials {
            client_cert: "C".into(),
            ca_cert: "CA".into(),
            cluster: JoinedCluster {
                cluster_cidr: "10.42.0.0/16".into(),
                service_cidr: "10.43.0.0/16".into(),
                cluster_dns: "10.43.0.10".into(),
                cluster_domain: "cluster.local".into(),
            },
        };
        let json = serde_json::to_value(&answer).unwrap();
        assert_eq!(json["clientCert"], "C");
        assert_eq!(json["cluster"]["clusterCIDR"], "10.42.0.0/16");
        assert_eq!(json["cluster"]["clusterDNS"], "10.43.0.10");
        assert_eq!(json["cluster"]["clusterDomain"], "cluster.local");
        let back: NodeCredentials = serde_json::from_value(json).unwrap();
        assert_eq!(back, answer);
    }

    #[test]
    fn kubeconfig_carries_the_credentials() {
        let yaml = kubeconfig("https://127.0.0.1:6443", "CA", "CERT", "KEY");
        assert!(yaml.contains("server: https://127.0.0.1:6443"));
        assert!(yaml.contains(&format!(
            "client-key-data: {}",
            base64::engine::general_purpose::STANDARD.encode("KEY")
        )));
        assert!(yaml.contains("current-context: default"));
    }
}
