//! A StatefulSet pod's identity and storage (`stateful_set_utils.go`): the ordinal in its
//! name, the pod built for an ordinal at a revision (name, hostname, subdomain, identity
//! labels, claim volumes) and the PersistentVolumeClaims built from the claim templates.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{controller_ref_for, POD_INDEX_LABEL, POD_NAME_LABEL};
use crate::revision::CONTROLLER_REVISION_HASH_LABEL;

/// `getParentNameAndOrdinal`: `<parent>-<digits>` (the ordinal must fit an i32), else `None`.
pub fn parent_and_ordinal(name: &str) -> Option<(&str, i32)> {
    let (parent, digits) = name.rsplit_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((parent, digits.parse().ok()?))
}

/// The ordinal of one of `set`'s pods (`None` for a pod that is not a member).
pub fn member_ordinal(set_name: &str, pod: &Pod) -> Option<i32> {
    let name = pod.metadata.name.as_deref()?;
    match parent_and_ordinal(name) {
        Some((parent, ordinal)) if parent == set_name => Some(ordinal),
        _ => None,
    }
}

pub fn pod_name(set_name: &str, ordinal: i32) -> String {
    format!("{set_name}-{ordinal}")
}

/// `getPersistentVolumeClaimName`: `<template>-<set>-<ordinal>`.
pub fn claim_name(template: &str, set_name: &str, ordinal: i32) -> String {
    format!("{template}-{set_name}-{ordinal}")
}

fn set_name(set: &StatefulSet) -> &str {
    set.metadata.name.as_deref().unwrap_or_default()
}

fn claim_templates(set: &StatefulSet) -> &[PersistentVolumeClaim] {
    set.spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_deref())
        .unwrap_or_default()
}

fn template_name(claim: &PersistentVolumeClaim) -> &str {
    claim.metadata.name.as_deref().unwrap_or_default()
}

/// The identity labels (`updateIdentity`): pod name and index.
pub fn identity_labels(set_name: &str, ordinal: i32) -> BTreeMap<String, String> {
    [
        (POD_NAME_LABEL.to_string(), pod_name(set_name, ordinal)),
        (POD_INDEX_LABEL.to_string(), ordinal.to_string()),
    ]
    .into()
}

/// The claims the pod at `ordinal` uses (`getPersistentVolumeClaims`): each template
/// renamed, in the set's namespace, its labels plus the selector's `matchLabels`; when
/// the retention policy deletes claims with the set, controlled by the set (as Kubernetes'
/// `updateClaimOwnerRefForSetAndPod` leaves a fresh claim).
pub fn claims_for(
    set: &StatefulSet,
    ordinal: i32,
    owned_by_set: bool,
) -> Vec<PersistentVolumeClaim> {
    let match_labels = set
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    claim_templates(set)
        .iter()
        .map(|template| {
            let mut labels = template.metadata.labels.clone().unwrap_or_default();
            labels.extend(match_labels.clone());
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name(template_name(template), set_name(set), ordinal)),
                    namespace: set.metadata.namespace.clone(),
                    labels: Some(labels),
                    annotations: template.metadata.annotations.clone(),
                    owner_references: owned_by_set.then(|| vec![controller_ref_for(set)]),
                    ..ObjectMeta::default()
                },
                spec: template.spec.clone(),
                status: None,
            }
        })
        .collect()
}

/// The pod at `ordinal` built from `template` (the revision's), labelled with the
/// revision's name (`newVersionedStatefulSetPod`): name `<set>-<ordinal>`, hostname the
/// name, subdomain the governing service, identity labels, and a volume per claim template
/// (replacing a template volume of the same name).
pub fn new_pod(set: &StatefulSet, template: &PodTemplateSpec, ordinal: i32, revision: &str) -> Pod {
    let name = pod_name(set_name(set), ordinal);
    let template_meta = template.metadata.clone().unwrap_or_default();
    let mut labels = template_meta.labels.unwrap_or_default();
    labels.extend(identity_labels(set_name(set), ordinal));
    labels.insert(
        CONTROLLER_REVISION_HASH_LABEL.to_string(),
        revision.to_string(),
    );
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    spec.subdomain = set.spec.as_ref().and_then(|s| s.service_name.clone());
    let templates = claim_templates(set);
    let mut volumes: Vec<Volume> = templates
        .iter()
        .map(|t| Volume {
            name: template_name(t).to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(template_name(t), set_name(set), ordinal),
                read_only: None,
            }),
            ..Volume::default()
        })
        .collect();
    volumes.extend(
        spec.volumes
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|v| !templates.iter().any(|t| template_name(t) == v.name)),
    );
    spec.volumes = Some(volumes).filter(|v| !v.is_empty());
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: template_meta.annotations,
            finalizers: template_meta.finalizers,
            owner_references: Some(vec![controller_ref_for(set)]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The claim template names and the ordinal of a claim named `<template>-<set>-<ordinal>`.
pub fn claim_ordinal(set: &StatefulSet, claim: &PersistentVolumeClaim) -> Option<i32> {
    let name = claim.metadata.name.as_deref()?;
    claim_templates(set).iter().find_map(|template| {
        let prefix = format!("{}-{}-", template_name(template), set_name(set));
        let digits = name.strip_prefix(&prefix)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_parse_like_the_regex() {
        assert_eq!(parent_and_ordinal("web-0"), Some(("web", 0)));
        assert_eq!(parent_and_ordinal("my-web-12"), Some(("my-web", 12)));
        assert_eq!(parent_and_ordinal("web-"), None);
        assert_eq!(parent_and_ordinal("web-1a"), None);
        assert_eq!(parent_and_ordinal("web"), None);
        assert_eq!(parent_and_ordinal("web-99999999999"), None);
    }
}
