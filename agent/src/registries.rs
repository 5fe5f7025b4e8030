//! `registries.yaml` in k3s's format (`mirrors` with endpoints, `configs` with auth and TLS per
//! registry host), turned into containerd's `certs.d/<host>/hosts.toml` files (mirrors,
//! plain-HTTP endpoints, TLS settings) and into pull credentials the kubelet passes with each
//! CRI pull. Parsing and rendering are pure.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::cri::v1;

/// What went wrong reading registries.yaml.
#[derive(Debug, thiserror::Error)]
pub enum RegistriesError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid registries.yaml: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Registries {
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    #[serde(default)]
    pub configs: BTreeMap<String, RegistryConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Mirror {
    #[serde(default)]
    pub endpoint: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct RegistryConfig {
    pub auth: Option<Auth>,
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Auth {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub auth: String,
    #[serde(default)]
    pub identitytoken: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Tls {
    #[serde(default)]
    pub insecure_skip_verify: bool,
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

/// The registry host of an image reference, normalised as containerd does (`busybox` and
/// `library/busybox` are on `docker.io`).
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_string()
        }
        _ => "docker.io".into(),
    }
}

impl Registries {
    /// Reads the file; a missing file means no settings.
    pub fn load(path: &Path) -> Result<Registries, RegistriesError> {
        match std::fs::read_to_string(path) {
            Ok(text) if text.trim().is_empty() => Ok(Registries::default()),
            Ok(text) => serde_yaml::from_str(&text).map_err(|source| RegistriesError::Parse {
                path: path.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registries::default()),
            Err(source) => Err(RegistriesError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Credentials configured for `registry`, if any.
    pub fn auth_for(&self, registry: &str) -> Option<v1::AuthConfig> {
        let auth = self.configs.get(registry)?.auth.as_ref()?;
        Some(v1::AuthConfig {
            username: auth.username.clone(),
            password: auth.password.clone(),
            auth: auth.auth.clone(),
            identity_token: auth.identitytoken.clone(),
            ..v1::AuthConfig::default()
        })
    }

    /// `hosts.toml` per registry host: mirrors first, then the registry itself.
    pub fn hosts_files(&self) -> BTreeMap<String, String> {
        let mut files = BTreeMap::new();
        let mut hosts: Vec<&String> = self.mirrors.keys().collect();
        hosts.extend(
            self.configs
                .keys()
                .filter(|k| !self.mirrors.contains_key(*k)),
        );
        for host in hosts {
            if host == "*" {
                continue;
            }
            let server = if host == "docker.io" {
                "https://registry-1.docker.io".to_string()
            } else {
                format!("https://{host}")
            };
            let mut text = format!(
                "# Written by the shoal agent from registries.yaml.\nserver = {}\n",
                quote(&server)
            );
            let endpoints = self
                .mirrors
                .get(host)
                .map(|m| m.endpoint.clone())
                .unwrap_or_default();
            for endpoint in endpoints {
                let endpoint_host = endpoint
                    .trim_start_matches("https://")
                    .trim_start_matches("http://");
                let endpoint_host = endpoint_host
                    .split('/')
                    .next()
                    .unwrap_or(endpoint_host)
                    .to_string();
                text.push_str(&format!(
                    "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
                    quote(endpoint.trim_end_matches('/'))
                ));
                if let Some(tls) = self
                    .configs
                    .get(&endpoint_host)
                    .and_then(|c| c.tls.as_ref())
                {
                    text.push_str(&tls_lines(tls));
                }
            }
            if let Some(tls) = self.configs.get(host).and_then(|c| c.tls.as_ref()) {
                text.push_str(&format!(
                    "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
                    quote(&server)
                ));
                text.push_str(&tls_lines(tls));
            }
            files.insert(host.clone(), text);
        }
        files
    }

    /// Writes `certs.d/<host>/hosts.toml` for every configured host, removing stale ones.
    pub fn write_hosts(&self, certs_dir: &Path) -> Result<(), RegistriesError> {
        let write_err = |path: &Path, source| RegistriesError::Write {
            path: path.display().to_string(),
            source,
        };
        if let Ok(entries) = std::fs::read_dir(certs_dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        for (host, text) in self.hosts_files() {
            let dir = certs_dir.join(&host);
            std::fs::create_dir_all(&dir).map_err(|e| write_err(&dir, e))?;
            let path = dir.join("hosts.toml");
            std::fs::write(&path, text).map_err(|e| write_err(&path, e))?;
        }
        Ok(())
    }
}

fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

fn tls_lines(tls: &Tls) -> String {
    let mut out = String::new();
    if tls.insecure_skip_verify {
        out.push_str("  skip_verify = true\n");
    }
    if let Some(ca) = &tls.ca_file {
        out.push_str(&format!("  ca = {}\n", quote(ca)));
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        out.push_str(&format!("  client = [[{}, {}]]\n", quote(cert), quote(key)));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const YAML: &str = r#"
mirrors:
  docker.io:
    endpoint:
      - "http://10.0.0.1:5000"
  registry.lab:5000:
    endpoint: ["http://registry.lab:5000"]
configs:
  "registry.lab:5000":
    auth: {username: admin, password: secret}
    tls: {insecure_skip_verify: true}
"#;

    #[test]
    fn registries_yaml_becomes_hosts_files() {
        let registries: Registries = serde_yaml::from_str(YAML).unwrap();
        let files = registries.hosts_files();
        assert_eq!(
            files["docker.io"],
            "# Written by the shoal agent from registries.yaml.\nserver = \"https://registry-1.docker.io\"\n\n[host.\"http://10.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
        assert!(files["registry.lab:5000"].contains("[host.\"http://registry.lab:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"));
        assert_eq!(
            registries.auth_for("registry.lab:5000").unwrap().password,
            "secret"
        );
        assert!(registries.auth_for("docker.io").is_none());
    }

    #[test]
    fn registry_hosts_are_found_in_references() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(registry_of("localhost/shoal/pause:1"), "localhost");
        assert_eq!(registry_of("10.0.0.1:5000/app:1"), "10.0.0.1:5000");
        assert_eq!(registry_of("quay.io/x/y"), "quay.io");
    }

    #[test]
    fn a_missing_file_is_no_settings_and_a_bad_one_an_error() {
        assert_eq!(
            Registries::load(Path::new("/nonexistent/registries.yaml")).unwrap(),
            Registries::default()
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.yaml");
        std::fs::write(&path, "mirrors: [1, 2]").unwrap();
        assert!(matches!(
            Registries::load(&path),
            Err(RegistriesError::Parse { .. })
        ));
    }
}
