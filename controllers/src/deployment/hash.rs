//! The pod-template hash that names a Deployment's ReplicaSets and labels their pods
//! (`controller.ComputeHash`), and template equality ignoring that label
//! (`EqualIgnoreHash`).
//!
//! Kubernetes hashes a Go-specific dump of the template; Shoal hashes the template's
//! canonical JSON instead (FNV-1a 32, then the collision count as 8 little-endian bytes,
//! encoded with `rand.SafeEncodeString`), so names have the same shape but not the same
//! value as in Kubernetes.

use k8s_openapi::api::core::v1::PodTemplateSpec;

use crate::revision::{prune, safe_encode};

/// The label carrying the hash on ReplicaSets, their selectors, templates and pods.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

fn fnv1a32(parts: &[&[u8]]) -> u32 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let mut hash = OFFSET_BASIS;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

/// The template's canonical JSON: k8s-openapi writes fields in a fixed order and maps
/// sorted; pruned as [`prune`] says (Go's semantic equality also treats nil and empty
/// slices and maps alike).
fn canonical(template: &PodTemplateSpec, drop_hash_label: bool) -> serde_json::Value {
    let mut value = serde_json::to_value(template).unwrap_or(serde_json::Value::Null);
    if drop_hash_label {
        if let Some(labels) = value
            .pointer_mut("/metadata/labels")
            .and_then(serde_json::Value::as_object_mut)
        {
            labels.remove(POD_TEMPLATE_HASH_LABEL);
        }
    }
    prune(&mut value);
    value
}

/// The hash of a Deployment's template with its collision count.
pub fn compute_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let json = canonical(template, false).to_string();
    let mut collision_bytes = [0u8; 8];
    if let Some(count) = collision_count {
        collision_bytes[..4].copy_from_slice(&(count as u32).to_le_bytes());
    }
    let parts: &[&[u8]] = match collision_count {
        Some(_) => &[json.as_bytes(), &collision_bytes],
        None => &[json.as_bytes()],
    };
    safe_encode(&fnv1a32(parts).to_string())
}

/// Templates equal once the pod-template-hash label is ignored.
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    canonical(a, true) == canonical(b, true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::revision::SAFE_ALPHABET;

    fn template(json: serde_json::Value) -> PodTemplateSpec {
        serde_json::from_value(json).unwrap()
    }

    fn web() -> PodTemplateSpec {
        template(serde_json::json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}
        }))
    }

    #[test]
    fn fnv_and_encoding_match_the_reference_algorithms() {
        // FNV-1a 32 test vectors.
        assert_eq!(fnv1a32(&[b""]), 0x811c_9dc5);
        assert_eq!(fnv1a32(&[b"a"]), 0xe40c_292c);
        assert_eq!(fnv1a32(&[b"foo", b"bar"]), fnv1a32(&[b"foobar"]));
        // Digits map to 4..9 and b, c, d, f.
        assert_eq!(safe_encode("0123456789"), "456789bcdf");
    }

    #[test]
    fn hash_is_stable_and_changes_with_template_and_collisions() {
        let hash = compute_hash(&web(), None);
        assert_eq!(hash, compute_hash(&web(), None));
        assert!((1..=10).contains(&hash.len()));
        assert!(hash.bytes().all(|b| SAFE_ALPHABET.contains(&b)));
        let mut changed = web();
        changed.spec.as_mut().unwrap().containers[0].image = Some("nginx:2".into());
        assert_ne!(hash, compute_hash(&changed, None));
        assert_ne!(hash, compute_hash(&web(), Some(1)));
        assert_ne!(compute_hash(&web(), Some(1)), compute_hash(&web(), Some(2)));
    }

    #[test]
    fn equality_ignores_the_hash_label_and_empty_fields() {
        let mut labelled = web();
        labelled
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(POD_TEMPLATE_HASH_LABEL.into(), "abc".into());
        assert!(equal_ignore_hash(&web(), &labelled));
        let with_empty = template(serde_json::json!({
            "metadata": {"labels": {"app": "web"}, "annotations": {}},
            "spec": {"containers": [{"name": "c", "image": "nginx:1", "env": []}]}
        }));
        assert!(equal_ignore_hash(&web(), &with_empty));
        let mut other_label = web();
        other_label
            .metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert("v".into(), "2".into());
        assert!(!equal_ignore_hash(&web(), &other_label));
    }
}
