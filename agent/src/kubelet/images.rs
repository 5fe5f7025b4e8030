//! Getting a container's image onto the node before it starts: `imagePullPolicy` (with
//! Kubernetes' default: `Always` for `:latest` or untagged images, else `IfNotPresent`), and
//! credentials from the pod's `imagePullSecrets` (`.dockerconfigjson`) or the node's
//! `registries.yaml` for the image's registry.

use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::api::Api;
use shoal_controllers::events::EventType;

use crate::cri::v1;
use crate::kubelet::Shared;
use crate::registries::registry_of;

/// Why the image is not there, as the container's waiting reason and message.
#[derive(Debug, Clone)]
pub struct PullFailure {
    pub reason: &'static str,
    pub message: String,
}

/// The pull policy Kubernetes defaults to for `image`.
pub fn pull_policy(container: &Container) -> String {
    if let Some(policy) = &container.image_pull_policy {
        return policy.clone();
    }
    let image = container.image.as_deref().unwrap_or_default();
    let last = image.rsplit('/').next().unwrap_or(image);
    let tag = if last.contains('@') {
        Some("digest")
    } else {
        last.split_once(':').map(|(_, t)| t)
    };
    match tag {
        None | Some("latest") => "Always".into(),
        Some(_) => "IfNotPresent".into(),
    }
}

/// Makes sure the container's image is present, pulling it per policy.
pub async fn ensure(shared: &Shared, pod: &Pod, container: &Container) -> Result<(), PullFailure> {
    let image = container.image.clone().unwrap_or_default();
    let policy = pull_policy(container);
    let present = shared
        .cri
        .image_status(&image)
        .await
        .ok()
        .flatten()
        .is_some();
    if policy == "Never" {
        return if present {
            Ok(())
        } else {
            Err(PullFailure {
                reason: "ErrImageNeverPull",
                message: format!(
                    "Container image \"{image}\" is not present with pull policy of Never"
                ),
            })
        };
    }
    if present && policy != "Always" {
        return Ok(());
    }
    shared.event(
        pod,
        EventType::Normal,
        "Pulling",
        &format!("Pulling image \"{image}\""),
    );
    let started = std::time::Instant::now();
    let auth = credentials(shared, pod, &image).await;
    match shared.cri.pull_image(&image, auth, None).await {
        Ok(_) => {
            shared.event(
                pod,
                EventType::Normal,
                "Pulled",
                &format!(
                    "Successfully pulled image \"{image}\" in {:.3}s",
                    started.elapsed().as_secs_f64()
                ),
            );
            Ok(())
        }
        Err(err) => Err(PullFailure {
            reason: "ErrImagePull",
            message: format!("failed to pull image \"{image}\": {err}"),
        }),
    }
}

/// Credentials for `image`'s registry: the pod's pull secrets first, then registries.yaml.
async fn credentials(shared: &Shared, pod: &Pod, image: &str) -> Option<v1::AuthConfig> {
    let registry = registry_of(image);
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let secrets: Api<Secret> = Api::namespaced(shared.client.clone(), ns);
    for reference in pod
        .spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.as_ref())
        .into_iter()
        .flatten()
    {
        let Ok(Some(secret)) = secrets.get_opt(&reference.name).await else {
            continue;
        };
        let Some(config) = secret
            .data
            .as_ref()
            .and_then(|d| d.get(".dockerconfigjson"))
        else {
            continue;
        };
        if let Some(auth) = docker_config_auth(&config.0, &registry) {
            return Some(auth);
        }
    }
    shared.settings.registries.auth_for(&registry)
}

/// The entry for `registry` in a `.dockerconfigjson`.
pub fn docker_config_auth(config: &[u8], registry: &str) -> Option<v1::AuthConfig> {
    let value: serde_json::Value = serde_json::from_slice(config).ok()?;
    let auths = value.get("auths")?.as_object()?;
    let matches = |key: &str| {
        let key = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let key = key.split('/').next().unwrap_or(key);
        key == registry
            || (registry == "docker.io"
                && (key == "index.docker.io" || key == "registry-1.docker.io"))
    };
    let (_, entry) = auths.iter().find(|(k, _)| matches(k))?;
    let field = |name: &str| {
        entry
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    Some(v1::AuthConfig {
        username: field("username"),
        password: field("password"),
        auth: field("auth"),
        ..v1::AuthConfig::default()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(image: &str, policy: Option<&str>) -> Container {
        serde_json::from_value(json!({"name": "c", "image": image, "imagePullPolicy": policy}))
            .unwrap()
    }

    #[test]
    fn default_pull_policy_follows_the_tag() {
        assert_eq!(pull_policy(&container("busybox", None)), "Always");
        assert_eq!(pull_policy(&container("busybox:latest", None)), "Always");
        assert_eq!(
            pull_policy(&container("localhost:5000/busybox:1.36", None)),
            "IfNotPresent"
        );
        assert_eq!(
            pull_policy(&container("localhost:5000/busybox", None)),
            "Always"
        );
        assert_eq!(
            pull_policy(&container("busybox@sha256:abc", None)),
            "IfNotPresent"
        );
        assert_eq!(pull_policy(&container("busybox", Some("Never"))), "Never");
    }

    #[test]
    fn pull_secrets_are_matched_by_registry() {
        let config = json!({"auths": {"https://index.docker.io/v1/": {"auth": "dTpw"}, "r.example:5000": {"username": "u", "password": "p"}}});
        let bytes = serde_json::to_vec(&config).unwrap();
        assert_eq!(
            docker_config_auth(&bytes, "r.example:5000")
                .unwrap()
                .username,
            "u"
        );
        assert_eq!(
            docker_config_auth(&bytes, "docker.io").unwrap().auth,
            "dTpw"
        );
        assert!(docker_config_auth(&bytes, "quay.io").is_none());
    }
}
