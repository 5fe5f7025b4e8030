//! ControllerRevision helpers shared by the DaemonSet and StatefulSet planners
//! (kube-controller-manager's `pkg/controller/history` and the `getPatch`/`Match`/
//! `ApplyRevision` helpers of both controllers).
//!
//! A revision stores the owner's pod template as the strategic merge patch Kubernetes
//! records: `{"spec": {"template": {…, "$patch": "replace"}}}`. It is named
//! `<owner>-<hash>`, carries the template's labels plus `controller-revision-hash`, and
//! has a `revision` number one past the highest of its siblings.
//!
//! Kubernetes compares revision data byte for byte as Go serializes it. Shoal compares the
//! JSON values with nulls and empty lists/objects pruned, so a revision written by another
//! client (or Go, which writes `"creationTimestamp": null`) still matches its template.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;

use crate::owner::{self, Claim, OwnerRefChange};
use crate::selector::Selector;

/// The label naming a pod's (and a revision's) revision: the template hash for DaemonSets,
/// the revision's name for StatefulSets.
pub const CONTROLLER_REVISION_HASH_LABEL: &str = "controller-revision-hash";

/// `history.ControllerRevisionName` keeps names within 253 characters by cutting the prefix.
const MAX_PREFIX_LENGTH: usize = 223;

/// `rand.SafeEncodeString`'s alphabet: no vowels (no words) and no look-alikes.
pub(crate) const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Drops what JSON cannot tell from absent: nulls, empty lists and empty objects.
pub(crate) fn prune(value: &mut serde_json::Value) -> bool {
    match value {
        serde_json::Value::Null => true,
        serde_json::Value::Array(items) => {
            for item in items.iter_mut() {
                prune(item);
            }
            items.is_empty()
        }
        serde_json::Value::Object(fields) => {
            fields.retain(|_, v| !prune(v));
            fields.is_empty()
        }
        _ => false,
    }
}

fn canonical(value: &serde_json::Value) -> serde_json::Value {
    let mut value = value.clone();
    prune(&mut value);
    value
}

/// The patch a revision stores for `template` (`getPatch`): the template under
/// `spec.template` with `"$patch": "replace"`, so applying it replaces the whole template.
pub fn template_patch(template: &PodTemplateSpec) -> serde_json::Value {
    let mut template = serde_json::to_value(template).unwrap_or(serde_json::Value::Null);
    prune(&mut template);
    if !template.is_object() {
        template = serde_json::json!({});
    }
    template["$patch"] = serde_json::Value::String("replace".into());
    serde_json::json!({ "spec": { "template": template } })
}

/// The revision's data, if any.
pub fn data(revision: &ControllerRevision) -> Option<&serde_json::Value> {
    revision.data.as_ref().map(|raw| &raw.0)
}

/// Revision data equal to `patch` once pruned (`Match` / `history.EqualRevision`).
pub fn data_matches(revision: &ControllerRevision, patch: &serde_json::Value) -> bool {
    data(revision).is_some_and(|d| canonical(d) == canonical(patch))
}

/// The template a revision restores (`ApplyRevision`: the patch replaces the template, and
/// the template is all the patch holds).
pub fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut template = data(revision)?.pointer("/spec/template")?.clone();
    if let Some(fields) = template.as_object_mut() {
        fields.remove("$patch");
    }
    serde_json::from_value(template).ok()
}

/// 32-bit FNV-1 (`hash/fnv.New32`, as `HashControllerRevision` uses).
fn fnv1_32(parts: &[&[u8]]) -> u32 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let mut hash = OFFSET_BASIS;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        hash = hash.wrapping_mul(PRIME);
        hash ^= u32::from(*byte);
    }
    hash
}

/// `rand.SafeEncodeString`: each character mapped into [`SAFE_ALPHABET`].
pub(crate) fn safe_encode(text: &str) -> String {
    text.chars()
        .map(|c| char::from(SAFE_ALPHABET[(c as usize) % SAFE_ALPHABET.len()]))
        .collect()
}

/// `history.HashControllerRevision`: FNV-1 over the data's JSON, then the collision count
/// in decimal, encoded safe. (The JSON is Shoal's canonical text, not Go's bytes, so the
/// value has Kubernetes' shape, not its exact digits.)
pub fn hash_data(data: &serde_json::Value, collision_count: Option<i32>) -> String {
    let text = canonical(data).to_string();
    let probe = collision_count.map(|c| c.to_string()).unwrap_or_default();
    safe_encode(&fnv1_32(&[text.as_bytes(), probe.as_bytes()]).to_string())
}

/// `history.ControllerRevisionName`: `<prefix>-<hash>`, the prefix cut to 223 characters.
pub fn revision_name(prefix: &str, hash: &str) -> String {
    let mut cut = prefix.len().min(MAX_PREFIX_LENGTH);
    while !prefix.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{hash}", &prefix[..cut])
}

/// `history.SortControllerRevisions`: by revision number, then creation time, then name.
pub fn by_revision(a: &ControllerRevision, b: &ControllerRevision) -> Ordering {
    a.revision
        .cmp(&b.revision)
        .then_with(|| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
        })
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// One past the highest revision number (1 for an empty history).
pub fn next_revision<'a>(revisions: impl IntoIterator<Item = &'a ControllerRevision>) -> i64 {
    revisions.into_iter().map(|r| r.revision).max().unwrap_or(0) + 1
}

/// The labels of a new revision: the template's plus `controller-revision-hash: <hash>`.
pub fn revision_labels(
    template_labels: Option<&BTreeMap<String, String>>,
    hash: &str,
) -> BTreeMap<String, String> {
    let mut labels = template_labels.cloned().unwrap_or_default();
    labels.insert(CONTROLLER_REVISION_HASH_LABEL.to_string(), hash.to_string());
    labels
}

/// A new revision (`history.NewControllerRevision`) in the owner's namespace, controlled
/// through `reference`.
pub fn new_revision(
    owner: &ObjectMeta,
    reference: OwnerReference,
    name: String,
    labels: BTreeMap<String, String>,
    annotations: Option<BTreeMap<String, String>>,
    patch: serde_json::Value,
    revision: i64,
) -> ControllerRevision {
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: owner.namespace.clone(),
            labels: Some(labels),
            annotations: annotations.filter(|a| !a.is_empty()),
            owner_references: Some(vec![reference]),
            ..ObjectMeta::default()
        },
        data: Some(RawExtension(patch)),
        revision,
    }
}

/// A revision to delete (with a `uid` precondition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionToDelete {
    pub name: String,
    pub uid: Option<String>,
}

impl RevisionToDelete {
    pub fn of(revision: &ControllerRevision) -> RevisionToDelete {
        RevisionToDelete {
            name: revision.metadata.name.clone().unwrap_or_default(),
            uid: revision.metadata.uid.clone(),
        }
    }
}

/// A revision whose number moves up (a rollback to an earlier template makes that
/// template's revision the newest). The loop sends [`RevisionNumberUpdate::merge_patch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionNumberUpdate {
    pub name: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub revision: i64,
}

impl RevisionNumberUpdate {
    pub fn of(revision: &ControllerRevision, number: i64) -> RevisionNumberUpdate {
        RevisionNumberUpdate {
            name: revision.metadata.name.clone().unwrap_or_default(),
            uid: revision.metadata.uid.clone(),
            resource_version: revision.metadata.resource_version.clone(),
            revision: number,
        }
    }

    /// The JSON merge patch, with `uid` and `resourceVersion` preconditions.
    pub fn merge_patch(&self) -> serde_json::Value {
        let mut metadata = serde_json::Map::new();
        if let Some(uid) = &self.uid {
            metadata.insert("uid".into(), uid.clone().into());
        }
        if let Some(version) = &self.resource_version {
            metadata.insert("resourceVersion".into(), version.clone().into());
        }
        serde_json::json!({ "metadata": metadata, "revision": self.revision })
    }
}

/// Labels to set on an existing pod (a StatefulSet pod's identity labels). The loop sends
/// [`PodLabelPatch::merge_patch`], with `uid` and `resourceVersion` preconditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLabelPatch {
    pub name: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub set_labels: BTreeMap<String, String>,
}

impl PodLabelPatch {
    pub fn merge_patch(&self) -> serde_json::Value {
        let mut metadata = serde_json::Map::new();
        if let Some(uid) = &self.uid {
            metadata.insert("uid".into(), uid.clone().into());
        }
        if let Some(version) = &self.resource_version {
            metadata.insert("resourceVersion".into(), version.clone().into());
        }
        metadata.insert("labels".into(), serde_json::json!(self.set_labels));
        serde_json::json!({ "metadata": metadata })
    }
}

/// The revisions a controller owns after `ClaimControllerRevisions`: its own matching
/// ones plus adopted orphans, sorted with [`by_revision`]; and the ownerReference changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClaimedRevisions {
    pub owned: Vec<ControllerRevision>,
    pub adopt: Vec<OwnerRefChange>,
    pub release: Vec<OwnerRefChange>,
}

/// Claims the namespace's revisions for `owner` with its selector (matched against the
/// revisions' labels, which are the template's).
pub fn claim_revisions(
    owner: &ObjectMeta,
    reference: &OwnerReference,
    selector: &Selector,
    revisions: &[ControllerRevision],
) -> ClaimedRevisions {
    let mut claimed = ClaimedRevisions::default();
    let owner_uid = owner.uid.as_deref().unwrap_or_default();
    for revision in revisions
        .iter()
        .filter(|r| r.metadata.namespace == owner.namespace)
    {
        let matches = selector.matches(revision.metadata.labels.as_ref());
        match owner::claim(owner, &revision.metadata, matches) {
            Claim::Owned => claimed.owned.push(revision.clone()),
            Claim::Adopt => {
                let change = OwnerRefChange::adopt(&revision.metadata, reference.clone());
                let mut adopted = revision.clone();
                change.apply_to(&mut adopted.metadata);
                claimed.adopt.push(change);
                claimed.owned.push(adopted);
            }
            Claim::Release => claimed
                .release
                .push(OwnerRefChange::release(&revision.metadata, owner_uid)),
            Claim::Ignore => {}
        }
    }
    claimed.owned.sort_by(by_revision);
    claimed
}

/// Old revisions to delete so at most `limit` non-live ones remain, oldest first.
/// `history` must be sorted with [`by_revision`]; `is_live` tells the ones in use.
pub fn history_to_truncate<'a>(
    history: &[&'a ControllerRevision],
    limit: i32,
    is_live: impl Fn(&ControllerRevision) -> bool,
) -> Vec<&'a ControllerRevision> {
    let dead: Vec<&ControllerRevision> = history.iter().copied().filter(|r| !is_live(r)).collect();
    let limit = usize::try_from(limit.max(0)).unwrap_or(0);
    let excess = dead.len().saturating_sub(limit);
    dead.into_iter().take(excess).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": image}]}
        }))
        .unwrap()
    }

    fn revision(name: &str, number: i64, patch: serde_json::Value) -> ControllerRevision {
        ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            data: Some(RawExtension(patch)),
            revision: number,
        }
    }

    #[test]
    fn patch_replaces_the_template_and_round_trips() {
        let patch = template_patch(&template("nginx:1"));
        assert_eq!(patch["spec"]["template"]["$patch"], "replace");
        assert_eq!(
            patch["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:1"
        );
        let stored = revision("web-1", 1, patch.clone());
        assert_eq!(template_of(&stored), Some(template("nginx:1")));
        assert!(data_matches(&stored, &patch));
        assert!(!data_matches(
            &stored,
            &template_patch(&template("nginx:2"))
        ));
        // Go writes empty fields the pruned comparison ignores.
        let mut go_style = patch.clone();
        go_style["spec"]["template"]["metadata"]["creationTimestamp"] = serde_json::Value::Null;
        go_style["spec"]["template"]["spec"]["containers"][0]["resources"] = serde_json::json!({});
        assert!(data_matches(&revision("web-1", 1, go_style), &patch));
    }

    #[test]
    fn hash_names_and_ordering() {
        // FNV-1 32 reference vectors.
        assert_eq!(fnv1_32(&[b""]), 0x811c_9dc5);
        assert_eq!(fnv1_32(&[b"a"]), 0x050c_5d7e);
        let patch = template_patch(&template("nginx:1"));
        let hash = hash_data(&patch, None);
        assert_eq!(hash, hash_data(&patch, None));
        assert_ne!(hash, hash_data(&patch, Some(1)));
        assert!(hash.bytes().all(|b| SAFE_ALPHABET.contains(&b)));
        assert_eq!(revision_name("web", "abc"), "web-abc");
        assert_eq!(revision_name(&"x".repeat(300), "abc").len(), 227);

        let mut revisions = [
            revision("b", 2, patch.clone()),
            revision("c", 1, patch.clone()),
            revision("a", 2, patch.clone()),
        ];
        revisions.sort_by(by_revision);
        let names: Vec<_> = revisions
            .iter()
            .map(|r| r.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["c", "a", "b"]);
        assert_eq!(next_revision(&revisions), 3);
        assert_eq!(next_revision(&[]), 1);
    }

    #[test]
    fn truncation_keeps_live_revisions_and_the_newest_dead_ones() {
        let patch = serde_json::json!({});
        let all: Vec<ControllerRevision> = (1..=5)
            .map(|n| revision(&format!("r{n}"), n, patch.clone()))
            .collect();
        let refs: Vec<&ControllerRevision> = all.iter().collect();
        let live = |r: &ControllerRevision| matches!(r.metadata.name.as_deref(), Some("r1" | "r5"));
        let doomed: Vec<_> = history_to_truncate(&refs, 1, live)
            .into_iter()
            .map(|r| r.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(doomed, ["r2", "r3"]);
        assert!(history_to_truncate(&refs, 10, live).is_empty());
    }

    #[test]
    fn patches_carry_preconditions() {
        let update = RevisionNumberUpdate {
            name: "web-1".into(),
            uid: Some("u".into()),
            resource_version: Some("7".into()),
            revision: 4,
        };
        assert_eq!(
            update.merge_patch(),
            serde_json::json!({"metadata": {"uid": "u", "resourceVersion": "7"}, "revision": 4})
        );
        let relabel = PodLabelPatch {
            name: "web-0".into(),
            uid: Some("p".into()),
            resource_version: None,
            set_labels: [("a".to_string(), "b".to_string())].into(),
        };
        assert_eq!(
            relabel.merge_patch(),
            serde_json::json!({"metadata": {"uid": "p", "labels": {"a": "b"}}})
        );
    }
}
