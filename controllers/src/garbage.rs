//! The garbage collector's decisions (kube-controller-manager's
//! `pkg/controller/garbagecollector`), generic over kinds: objects whose owners are all
//! gone are deleted; owners deleted in the foreground wait for their blocking dependents;
//! owners deleted with the orphan policy let go of their dependents first.
//!
//! [`plan`] takes a snapshot of every object of the watched kinds as [`GcObject`]s (the loop
//! builds them from whatever it watches, with [`GcObject::from_meta`]) and runs
//! `attemptToDeleteItem` and `attemptToOrphan` over the whole graph at once:
//! - a dependent whose owner references all resolve to absent objects (dangling) is deleted,
//!   propagating as its own finalizers ask (`orphan`, `foregroundDeletion`) or in the
//!   background;
//! - a dependent with at least one live owner stays, and its references to absent owners
//!   (and to owners waiting for their dependents' deletion) are patched away;
//! - a dependent whose remaining owners are being deleted in the foreground is deleted, in
//!   the foreground itself when it has dependents of its own (so the chain waits link by
//!   link), after unblocking its own references when one of its dependents is also
//!   deleting dependents (Kubernetes' cycle breaker);
//! - an owner being deleted with `foregroundDeletion` loses that finalizer once no
//!   dependent with `blockOwnerDeletion: true` is left;
//! - an owner being deleted with `orphan` has its references removed from its dependents,
//!   then loses that finalizer.
//!
//! An owner is found by UID, and must also match the reference's group, kind and name and
//! be cluster-scoped or in the dependent's namespace (a namespaced dependent cannot be owned
//! from another namespace; Kubernetes resolves the reference the same way, by name in the
//! dependent's namespace, and compares UIDs). References to kinds the loop does not watch
//! cannot be resolved here and count as live: nothing is collected on a guess.
//!
//! The loop executes, in order: owner-reference patches, deletions, finalizer removals,
//! stopping at the first failure (an owner's `orphan` finalizer must not go before its
//! dependents were released). Like Kubernetes, which re-reads an owner with a live GET
//! before treating it as absent, the loop should confirm [`GcDeletion::absent_owners`] are
//! really gone (its caches may lag a just-created owner) before deleting. Everything it
//! writes carries the observed UID and resourceVersion as preconditions.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

use crate::owner::OwnerRefChange;

/// The finalizer of an object deleted with `propagationPolicy: Foreground`.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// The finalizer of an object deleted with `propagationPolicy: Orphan`.
pub const ORPHAN_FINALIZER: &str = "orphan";

/// The input cannot be planned over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GcError {
    #[error("two objects share uid {uid:?}: {first} and {second}")]
    DuplicateUid {
        uid: String,
        first: String,
        second: String,
    },
    #[error("object {0} has no uid")]
    MissingUid(String),
}

/// An API group and kind (`apps`, `ReplicaSet`; the core group is `""`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKind {
    pub group: String,
    pub kind: String,
}

impl GroupKind {
    pub fn new(group: &str, kind: &str) -> GroupKind {
        GroupKind {
            group: group.to_string(),
            kind: kind.to_string(),
        }
    }

    /// The group of `api_version` (`apps/v1` → `apps`, `v1` → core) with `kind`.
    pub fn from_api_version(api_version: &str, kind: &str) -> GroupKind {
        let group = api_version
            .rsplit_once('/')
            .map(|(group, _)| group)
            .unwrap_or("");
        GroupKind::new(group, kind)
    }
}

/// One object as the garbage collector sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GcObject {
    pub api_version: String,
    pub kind: String,
    /// `None` for a cluster-scoped object.
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    pub resource_version: Option<String>,
    pub owner_references: Vec<OwnerReference>,
    pub deletion_timestamp: Option<Time>,
    pub finalizers: Vec<String>,
}

impl GcObject {
    /// Builds the view of an object of `api_version`/`kind` from its metadata.
    pub fn from_meta(api_version: &str, kind: &str, meta: &ObjectMeta) -> GcObject {
        GcObject {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            namespace: meta.namespace.clone().filter(|n| !n.is_empty()),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone(),
            owner_references: meta.owner_references.clone().unwrap_or_default(),
            deletion_timestamp: meta.deletion_timestamp.clone(),
            finalizers: meta.finalizers.clone().unwrap_or_default(),
        }
    }

    pub fn group_kind(&self) -> GroupKind {
        GroupKind::from_api_version(&self.api_version, &self.kind)
    }

    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
        }
    }

    fn has_finalizer(&self, finalizer: &str) -> bool {
        self.finalizers.iter().any(|f| f == finalizer)
    }

    fn being_deleted(&self) -> bool {
        self.deletion_timestamp.is_some()
    }

    /// `isDeletingDependents`: being deleted in the foreground.
    fn deleting_dependents(&self) -> bool {
        self.being_deleted() && self.has_finalizer(FOREGROUND_FINALIZER)
    }

    fn orphaning(&self) -> bool {
        self.being_deleted() && self.has_finalizer(ORPHAN_FINALIZER)
    }

    fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// Which object a write targets.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectKey {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
}

/// `propagationPolicy` of a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

impl Propagation {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Propagation::Background => "Background",
            Propagation::Foreground => "Foreground",
            Propagation::Orphan => "Orphan",
        }
    }
}

/// An object to delete, with preconditions `uid` and `resourceVersion` (a conflict means
/// its owner references may have changed: the loop resyncs instead of retrying blindly).
#[derive(Debug, Clone, PartialEq)]
pub struct GcDeletion {
    pub object: ObjectKey,
    pub resource_version: Option<String>,
    pub propagation: Propagation,
    /// The references found dangling; the loop confirms these owners are gone.
    pub absent_owners: Vec<OwnerReference>,
}

/// Why an object's owner references change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerRefPatchReason {
    /// References to absent owners, or to owners waiting for their dependents, removed
    /// from an object that has a live owner.
    RemoveDangling,
    /// References to an owner deleted with the orphan policy removed.
    Orphan,
    /// `blockOwnerDeletion` cleared before a foreground delete, to break a cycle.
    Unblock,
}

/// An object's new owner references; `change.merge_patch()` is the JSON merge patch (with
/// `uid` and `resourceVersion` preconditions).
#[derive(Debug, Clone, PartialEq)]
pub struct OwnerRefPatch {
    pub object: ObjectKey,
    pub reasons: Vec<OwnerRefPatchReason>,
    pub change: OwnerRefChange,
}

/// A finalizer the garbage collector is done with, on an owner being deleted.
#[derive(Debug, Clone, PartialEq)]
pub struct FinalizerRemoval {
    pub object: ObjectKey,
    pub resource_version: Option<String>,
    pub finalizer: String,
    /// The object's finalizers after the removal.
    pub finalizers: Vec<String>,
}

impl FinalizerRemoval {
    /// The JSON merge patch removing the finalizer (with `uid` and `resourceVersion`
    /// preconditions, since the list is replaced whole).
    pub fn merge_patch(&self) -> serde_json::Value {
        let mut metadata = serde_json::json!({
            "uid": self.object.uid,
            "finalizers": self.finalizers,
        });
        if let Some(version) = &self.resource_version {
            metadata["resourceVersion"] = serde_json::Value::String(version.clone());
        }
        serde_json::json!({ "metadata": metadata })
    }
}

/// What one garbage collection pass writes: patches, then deletions, then finalizer
/// removals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GcPlan {
    pub owner_ref_patches: Vec<OwnerRefPatch>,
    pub deletions: Vec<GcDeletion>,
    pub finalizer_removals: Vec<FinalizerRemoval>,
}

impl GcPlan {
    pub fn is_noop(&self) -> bool {
        self.owner_ref_patches.is_empty()
            && self.deletions.is_empty()
            && self.finalizer_removals.is_empty()
    }
}

/// How one owner reference of a dependent stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefState {
    /// The owner exists and is not deleting its dependents (or is of an unwatched kind).
    Solid,
    /// The owner does not exist.
    Dangling,
    /// The owner is being deleted in the foreground.
    Waiting,
}

struct Graph<'a> {
    objects: &'a [GcObject],
    by_uid: BTreeMap<&'a str, usize>,
    watched: &'a BTreeSet<GroupKind>,
    /// Owner index → (dependent index, reference) for every reference that resolves.
    dependents: BTreeMap<usize, Vec<(usize, &'a OwnerReference)>>,
}

impl<'a> Graph<'a> {
    fn build(objects: &'a [GcObject], watched: &'a BTreeSet<GroupKind>) -> Result<Self, GcError> {
        let mut by_uid: BTreeMap<&str, usize> = BTreeMap::new();
        for (index, object) in objects.iter().enumerate() {
            if object.uid.is_empty() {
                return Err(GcError::MissingUid(object.describe()));
            }
            if let Some(first) = by_uid.insert(object.uid.as_str(), index) {
                return Err(GcError::DuplicateUid {
                    uid: object.uid.clone(),
                    first: objects[first].describe(),
                    second: object.describe(),
                });
            }
        }
        let mut graph = Graph {
            objects,
            by_uid,
            watched,
            dependents: BTreeMap::new(),
        };
        for (index, object) in objects.iter().enumerate() {
            for reference in &object.owner_references {
                if let Some(owner) = graph.resolve(object, reference) {
                    graph
                        .dependents
                        .entry(owner)
                        .or_default()
                        .push((index, reference));
                }
            }
        }
        Ok(graph)
    }

    /// The owner a reference names, if it exists where the dependent can see it.
    fn resolve(&self, dependent: &GcObject, reference: &OwnerReference) -> Option<usize> {
        let index = *self.by_uid.get(reference.uid.as_str())?;
        let owner = &self.objects[index];
        let same_identity = owner.group_kind()
            == GroupKind::from_api_version(&reference.api_version, &reference.kind)
            && owner.name == reference.name;
        let visible = owner.namespace.is_none() || owner.namespace == dependent.namespace;
        (same_identity && visible).then_some(index)
    }

    /// `classifyReferences`.
    fn classify(&self, dependent: &GcObject, reference: &OwnerReference) -> RefState {
        match self.resolve(dependent, reference) {
            Some(owner) if self.objects[owner].deleting_dependents() => RefState::Waiting,
            Some(_) => RefState::Solid,
            None => {
                let kind = GroupKind::from_api_version(&reference.api_version, &reference.kind);
                if self.watched.contains(&kind) {
                    RefState::Dangling
                } else {
                    RefState::Solid
                }
            }
        }
    }

    fn dependents_of(&self, owner: usize) -> &[(usize, &'a OwnerReference)] {
        self.dependents.get(&owner).map_or(&[], Vec::as_slice)
    }
}

/// Plans one garbage collection pass over `objects` (every object of the kinds in
/// `watched`, which must include every kind the objects reference that the loop can see).
pub fn plan(objects: &[GcObject], watched: &BTreeSet<GroupKind>) -> Result<GcPlan, GcError> {
    let graph = Graph::build(objects, watched)?;
    let mut result = GcPlan::default();
    // Per object: owner UIDs to drop and whether to unblock; merged into one patch each.
    let mut drop_refs: BTreeMap<usize, (BTreeSet<&str>, Vec<OwnerRefPatchReason>)> =
        BTreeMap::new();
    let mut unblock: BTreeSet<usize> = BTreeSet::new();

    for (index, object) in objects.iter().enumerate() {
        // Owners being deleted in the foreground: done once no blocking dependent is left.
        if object.deleting_dependents() {
            let blocked = graph
                .dependents_of(index)
                .iter()
                .any(|(_, r)| r.block_owner_deletion == Some(true));
            if !blocked {
                result
                    .finalizer_removals
                    .push(finalizer_removal(object, FOREGROUND_FINALIZER));
            }
            // Its own owners are not looked at until its dependents are gone.
            continue;
        }
        // Being deleted otherwise: a one-way trip, nothing to decide.
        if object.being_deleted() || object.owner_references.is_empty() {
            continue;
        }
        let mut solid = 0;
        let mut dangling: Vec<&OwnerReference> = Vec::new();
        let mut waiting: Vec<&OwnerReference> = Vec::new();
        for reference in &object.owner_references {
            match graph.classify(object, reference) {
                RefState::Solid => solid += 1,
                RefState::Dangling => dangling.push(reference),
                RefState::Waiting => waiting.push(reference),
            }
        }
        if solid > 0 {
            if !dangling.is_empty() || !waiting.is_empty() {
                let entry = drop_refs.entry(index).or_default();
                entry
                    .0
                    .extend(dangling.iter().chain(&waiting).map(|r| r.uid.as_str()));
                entry.1.push(OwnerRefPatchReason::RemoveDangling);
            }
            continue;
        }
        let own_dependents = graph.dependents_of(index);
        let propagation = if !waiting.is_empty() && !own_dependents.is_empty() {
            // Delete in the foreground so the owner waits for the whole chain. If a
            // dependent is itself deleting dependents, a cycle may block everything:
            // stop this object from blocking its owners first.
            if own_dependents
                .iter()
                .any(|(d, _)| objects[*d].deleting_dependents())
                && object
                    .owner_references
                    .iter()
                    .any(|r| r.block_owner_deletion == Some(true))
            {
                unblock.insert(index);
            }
            Propagation::Foreground
        } else if object.has_finalizer(ORPHAN_FINALIZER) {
            Propagation::Orphan
        } else if object.has_finalizer(FOREGROUND_FINALIZER) {
            Propagation::Foreground
        } else {
            Propagation::Background
        };
        result.deletions.push(GcDeletion {
            object: object.key(),
            resource_version: object.resource_version.clone(),
            propagation,
            absent_owners: dangling.into_iter().cloned().collect(),
        });
    }

    // Owners deleted with the orphan policy: release every dependent, then the finalizer.
    for (index, owner) in objects.iter().enumerate() {
        if !owner.orphaning() {
            continue;
        }
        for (dependent, _) in graph.dependents_of(index) {
            let entry = drop_refs.entry(*dependent).or_default();
            entry.0.insert(owner.uid.as_str());
            if !entry.1.contains(&OwnerRefPatchReason::Orphan) {
                entry.1.push(OwnerRefPatchReason::Orphan);
            }
        }
        result
            .finalizer_removals
            .push(finalizer_removal(owner, ORPHAN_FINALIZER));
    }

    let patched: BTreeSet<usize> = drop_refs.keys().chain(&unblock).copied().collect();
    for index in patched {
        let object = &objects[index];
        let (dropped, mut reasons) = drop_refs.remove(&index).unwrap_or_default();
        let mut references: Vec<OwnerReference> = object
            .owner_references
            .iter()
            .filter(|r| !dropped.contains(r.uid.as_str()))
            .cloned()
            .collect();
        if unblock.contains(&index) {
            for reference in &mut references {
                if reference.block_owner_deletion == Some(true) {
                    reference.block_owner_deletion = Some(false);
                }
            }
            reasons.push(OwnerRefPatchReason::Unblock);
        }
        result.owner_ref_patches.push(OwnerRefPatch {
            object: object.key(),
            reasons,
            change: OwnerRefChange {
                name: object.name.clone(),
                uid: object.uid.clone(),
                resource_version: object.resource_version.clone(),
                owner_references: references,
            },
        });
    }
    Ok(result)
}

fn finalizer_removal(object: &GcObject, finalizer: &str) -> FinalizerRemoval {
    FinalizerRemoval {
        object: object.key(),
        resource_version: object.resource_version.clone(),
        finalizer: finalizer.to_string(),
        finalizers: object
            .finalizers
            .iter()
            .filter(|f| *f != finalizer)
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::time;

    fn reference(
        api_version: &str,
        kind: &str,
        name: &str,
        uid: &str,
        block: bool,
    ) -> OwnerReference {
        OwnerReference {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            name: name.to_string(),
            uid: uid.to_string(),
            controller: Some(true),
            block_owner_deletion: Some(block),
        }
    }

    fn object(api_version: &str, kind: &str, name: &str, owners: Vec<OwnerReference>) -> GcObject {
        GcObject {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            namespace: Some("default".to_string()),
            name: name.to_string(),
            uid: format!("uid-{name}"),
            resource_version: Some("1".to_string()),
            owner_references: owners,
            deletion_timestamp: None,
            finalizers: Vec::new(),
        }
    }

    fn deployment(name: &str) -> GcObject {
        object("apps/v1", "Deployment", name, vec![])
    }

    fn replica_set(name: &str, owner: Option<&str>) -> GcObject {
        let owners = owner
            .map(|d| {
                vec![reference(
                    "apps/v1",
                    "Deployment",
                    d,
                    &format!("uid-{d}"),
                    true,
                )]
            })
            .unwrap_or_default();
        object("apps/v1", "ReplicaSet", name, owners)
    }

    fn pod(name: &str, owner: &str) -> GcObject {
        object(
            "v1",
            "Pod",
            name,
            vec![reference(
                "apps/v1",
                "ReplicaSet",
                owner,
                &format!("uid-{owner}"),
                true,
            )],
        )
    }

    fn watched() -> BTreeSet<GroupKind> {
        [
            GroupKind::new("apps", "Deployment"),
            GroupKind::new("apps", "ReplicaSet"),
            GroupKind::new("", "Pod"),
            GroupKind::new("", "ConfigMap"),
            GroupKind::new("", "Node"),
        ]
        .into()
    }

    fn deleted_names(plan: &GcPlan) -> Vec<(&str, Propagation)> {
        plan.deletions
            .iter()
            .map(|d| (d.object.name.as_str(), d.propagation))
            .collect()
    }

    /// Deletes an object the way the API server does for `propagation`.
    fn api_delete(objects: &mut Vec<GcObject>, uid: &str, propagation: Propagation) {
        let Some(index) = objects.iter().position(|o| o.uid == uid) else {
            return;
        };
        let finalizer = match propagation {
            Propagation::Foreground => Some(FOREGROUND_FINALIZER),
            Propagation::Orphan => Some(ORPHAN_FINALIZER),
            Propagation::Background => None,
        };
        let object = &mut objects[index];
        if let Some(f) = finalizer {
            if !object.has_finalizer(f) {
                object.finalizers.push(f.to_string());
            }
        }
        if object.finalizers.is_empty() {
            objects.remove(index);
        } else if object.deletion_timestamp.is_none() {
            object.deletion_timestamp = Some(time(100));
        }
    }

    /// Executes a plan against the in-memory objects.
    fn execute(objects: &mut Vec<GcObject>, plan: &GcPlan) {
        for patch in &plan.owner_ref_patches {
            let object = objects
                .iter_mut()
                .find(|o| o.uid == patch.object.uid)
                .unwrap();
            object.owner_references = patch.change.owner_references.clone();
        }
        for deletion in &plan.deletions {
            api_delete(objects, &deletion.object.uid, deletion.propagation);
        }
        for removal in &plan.finalizer_removals {
            if let Some(index) = objects.iter().position(|o| o.uid == removal.object.uid) {
                objects[index].finalizers = removal.finalizers.clone();
                if objects[index].finalizers.is_empty() && objects[index].being_deleted() {
                    objects.remove(index);
                }
            }
        }
    }

    fn names(objects: &[GcObject]) -> Vec<&str> {
        objects.iter().map(|o| o.name.as_str()).collect()
    }

    #[test]
    fn dependents_of_absent_owners_are_deleted_in_the_background() {
        let mut cross_namespace = pod("elsewhere", "web-other");
        cross_namespace.namespace = Some("default".into());
        let mut other_owner = replica_set("web-other", None);
        other_owner.namespace = Some("other".into());
        let mut on_node = object(
            "v1",
            "Pod",
            "on-node",
            vec![reference("v1", "Node", "n1", "uid-n1", false)],
        );
        on_node.owner_references[0].controller = None;
        let mut node = object("v1", "Node", "n1", vec![]);
        node.namespace = None;
        let unwatched = object(
            "v1",
            "Pod",
            "custom-owned",
            vec![reference("example.com/v1", "Widget", "w", "uid-w", true)],
        );
        let mut renamed = pod("renamed", "web-abc");
        renamed.owner_references[0].name = "not-web-abc".into();
        let objects = vec![
            pod("orphan-1", "gone"),
            pod("owned", "web-abc"),
            replica_set("web-abc", None),
            cross_namespace,
            other_owner,
            on_node,
            node,
            unwatched,
            renamed,
        ];
        let plan = plan(&objects, &watched()).unwrap();
        assert_eq!(
            deleted_names(&plan),
            [
                ("orphan-1", Propagation::Background),
                ("elsewhere", Propagation::Background),
                ("renamed", Propagation::Background),
            ]
        );
        let deletion = &plan.deletions[0];
        assert_eq!(deletion.object.uid, "uid-orphan-1");
        assert_eq!(deletion.resource_version.as_deref(), Some("1"));
        assert_eq!(deletion.absent_owners[0].uid, "uid-gone");
        assert!(plan.owner_ref_patches.is_empty() && plan.finalizer_removals.is_empty());
    }

    #[test]
    fn dangling_dependents_keep_their_own_deletion_finalizers() {
        let mut orphaning = pod("orphaning", "gone");
        orphaning.finalizers = vec![ORPHAN_FINALIZER.into()];
        let mut foreground = pod("foreground", "gone");
        foreground.finalizers = vec![FOREGROUND_FINALIZER.into()];
        let plan = plan(&[orphaning, foreground], &watched()).unwrap();
        assert_eq!(
            deleted_names(&plan),
            [
                ("orphaning", Propagation::Orphan),
                ("foreground", Propagation::Foreground)
            ]
        );
    }

    #[test]
    fn foreground_deletion_walks_the_chain_link_by_link() {
        let mut d = deployment("web");
        d.deletion_timestamp = Some(time(50));
        d.finalizers = vec![FOREGROUND_FINALIZER.into()];
        let mut objects = vec![
            d,
            replica_set("web-abc", Some("web")),
            pod("web-abc-1", "web-abc"),
            pod("web-abc-2", "web-abc"),
        ];

        // 1. The ReplicaSet has dependents: deleted in the foreground too. The Deployment
        //    keeps its finalizer while the ReplicaSet blocks it.
        let first = plan(&objects, &watched()).unwrap();
        assert_eq!(
            deleted_names(&first),
            [("web-abc", Propagation::Foreground)]
        );
        assert!(first.finalizer_removals.is_empty());
        execute(&mut objects, &first);

        // 2. The ReplicaSet deletes its dependents; both owners wait.
        let second = plan(&objects, &watched()).unwrap();
        assert_eq!(
            deleted_names(&second),
            [
                ("web-abc-1", Propagation::Background),
                ("web-abc-2", Propagation::Background)
            ]
        );
        assert!(second.finalizer_removals.is_empty());
        execute(&mut objects, &second);

        // 3. The pods are gone: the ReplicaSet's finalizer goes, so does the ReplicaSet.
        let third = plan(&objects, &watched()).unwrap();
        assert_eq!(third.finalizer_removals.len(), 1);
        assert_eq!(third.finalizer_removals[0].object.name, "web-abc");
        assert!(third.finalizer_removals[0].finalizers.is_empty());
        execute(&mut objects, &third);
        assert_eq!(names(&objects), ["web"]);

        // 4. Then the Deployment's.
        let fourth = plan(&objects, &watched()).unwrap();
        assert_eq!(fourth.finalizer_removals[0].object.name, "web");
        let patch = fourth.finalizer_removals[0].merge_patch();
        assert_eq!(
            patch,
            serde_json::json!({"metadata": {"uid": "uid-web", "resourceVersion": "1", "finalizers": []}})
        );
        execute(&mut objects, &fourth);
        assert!(objects.is_empty());
        assert!(plan(&objects, &watched()).unwrap().is_noop());
    }

    #[test]
    fn non_blocking_dependents_do_not_hold_the_owner() {
        let mut rs = replica_set("web-abc", None);
        rs.deletion_timestamp = Some(time(50));
        rs.finalizers = vec![FOREGROUND_FINALIZER.into()];
        let mut loose = pod("loose", "web-abc");
        loose.owner_references[0].block_owner_deletion = Some(false);
        let plan = plan(&[rs, loose], &watched()).unwrap();
        // The dependent is still deleted, but the owner does not wait for it.
        assert_eq!(deleted_names(&plan), [("loose", Propagation::Background)]);
        assert_eq!(plan.finalizer_removals[0].finalizer, FOREGROUND_FINALIZER);
    }

    #[test]
    fn orphan_policy_releases_dependents_then_drops_the_finalizer() {
        let mut rs = replica_set("web-abc", None);
        rs.deletion_timestamp = Some(time(50));
        rs.finalizers = vec![ORPHAN_FINALIZER.into(), "example.com/keep".into()];
        let mut shared = pod("shared", "web-abc");
        shared
            .owner_references
            .push(reference("v1", "ConfigMap", "cfg", "uid-cfg", false));
        let mut objects = vec![
            rs,
            pod("web-abc-1", "web-abc"),
            shared,
            object("v1", "ConfigMap", "cfg", vec![]),
        ];
        let plan = plan(&objects, &watched()).unwrap();
        assert!(plan.deletions.is_empty());
        let patched: Vec<(&str, usize)> = plan
            .owner_ref_patches
            .iter()
            .map(|p| (p.object.name.as_str(), p.change.owner_references.len()))
            .collect();
        assert_eq!(patched, [("web-abc-1", 0), ("shared", 1)]);
        assert_eq!(
            plan.owner_ref_patches[1].change.owner_references[0].uid,
            "uid-cfg"
        );
        assert_eq!(
            plan.owner_ref_patches[0].reasons,
            [OwnerRefPatchReason::Orphan]
        );
        assert_eq!(
            plan.owner_ref_patches[0].change.merge_patch()["metadata"]["resourceVersion"],
            "1"
        );
        assert_eq!(plan.finalizer_removals.len(), 1);
        assert_eq!(plan.finalizer_removals[0].finalizers, ["example.com/keep"]);
        execute(&mut objects, &plan);
        // The pods survive, now ownerless; the ReplicaSet waits on its other finalizer.
        assert_eq!(names(&objects), ["web-abc", "web-abc-1", "shared", "cfg"]);
        assert!(super::plan(&objects, &watched()).unwrap().is_noop());
    }

    #[test]
    fn multiple_owners_one_live_owner_keeps_the_dependent() {
        let two = |name: &str, second: OwnerReference| {
            let mut p = pod(name, "web-abc");
            p.owner_references.push(second);
            p
        };
        let mut deleting_cfg = object("v1", "ConfigMap", "deleting", vec![]);
        deleting_cfg.deletion_timestamp = Some(time(50));
        deleting_cfg.finalizers = vec![FOREGROUND_FINALIZER.into()];
        let objects = vec![
            replica_set("web-abc", None),
            two(
                "half-dangling",
                reference("v1", "ConfigMap", "gone", "uid-gone", false),
            ),
            two(
                "half-waiting",
                reference("v1", "ConfigMap", "deleting", "uid-deleting", true),
            ),
            deleting_cfg,
            object(
                "v1",
                "Pod",
                "unknown-and-gone",
                vec![
                    reference("v1", "ConfigMap", "gone", "uid-gone", false),
                    reference("example.com/v1", "Widget", "w", "uid-w", false),
                ],
            ),
        ];
        let plan = plan(&objects, &watched()).unwrap();
        assert!(plan.deletions.is_empty(), "{:?}", plan.deletions);
        let patched: Vec<(&str, Vec<&str>)> = plan
            .owner_ref_patches
            .iter()
            .map(|p| {
                (
                    p.object.name.as_str(),
                    p.change
                        .owner_references
                        .iter()
                        .map(|r| r.uid.as_str())
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            patched,
            [
                ("half-dangling", vec!["uid-web-abc"]),
                ("half-waiting", vec!["uid-web-abc"]),
                ("unknown-and-gone", vec!["uid-w"]),
            ]
        );
        assert!(plan
            .owner_ref_patches
            .iter()
            .all(|p| p.reasons == [OwnerRefPatchReason::RemoveDangling]));
        // The deleting ConfigMap still has half-waiting blocking it.
        assert!(plan.finalizer_removals.is_empty());
    }

    #[test]
    fn a_foreground_cycle_is_unblocked_before_deleting() {
        // a is deleting dependents; b depends on a and is owner of c, which is also
        // deleting dependents and owned (blocking) by b.
        let mut a = object("v1", "ConfigMap", "a", vec![]);
        a.deletion_timestamp = Some(time(50));
        a.finalizers = vec![FOREGROUND_FINALIZER.into()];
        let b = object(
            "v1",
            "ConfigMap",
            "b",
            vec![reference("v1", "ConfigMap", "a", "uid-a", true)],
        );
        let mut c = object(
            "v1",
            "ConfigMap",
            "c",
            vec![reference("v1", "ConfigMap", "b", "uid-b", true)],
        );
        c.deletion_timestamp = Some(time(60));
        c.finalizers = vec![FOREGROUND_FINALIZER.into()];
        let plan = plan(&[a, b, c], &watched()).unwrap();
        assert_eq!(deleted_names(&plan), [("b", Propagation::Foreground)]);
        assert_eq!(plan.owner_ref_patches.len(), 1);
        let patch = &plan.owner_ref_patches[0];
        assert_eq!(patch.object.name, "b");
        assert_eq!(patch.reasons, [OwnerRefPatchReason::Unblock]);
        assert_eq!(
            patch.change.owner_references[0].block_owner_deletion,
            Some(false)
        );
        // c has no dependents left: its finalizer goes.
        assert_eq!(plan.finalizer_removals.len(), 1);
        assert_eq!(plan.finalizer_removals[0].object.name, "c");
    }

    #[test]
    fn invalid_input_is_an_error_and_objects_build_from_metadata() {
        let duplicate = vec![pod("a", "x"), pod("a", "y")];
        assert!(matches!(
            plan(&duplicate, &watched()),
            Err(GcError::DuplicateUid { .. })
        ));
        let mut no_uid = pod("b", "x");
        no_uid.uid.clear();
        assert_eq!(
            plan(&[no_uid], &watched()),
            Err(GcError::MissingUid("Pod default/b".into()))
        );

        let meta: ObjectMeta = serde_json::from_value(serde_json::json!({
            "name": "p", "namespace": "default", "uid": "u", "resourceVersion": "3",
            "finalizers": ["f"],
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r", "uid": "ur"}]
        }))
        .unwrap();
        let built = GcObject::from_meta("v1", "Pod", &meta);
        assert_eq!(built.group_kind(), GroupKind::new("", "Pod"));
        assert_eq!(built.owner_references[0].uid, "ur");
        assert_eq!(built.finalizers, ["f"]);
        assert_eq!(
            GroupKind::from_api_version("apps/v1", "ReplicaSet").group,
            "apps"
        );
    }
}
