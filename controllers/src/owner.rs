//! ownerReference helpers and the adopt/release decision of Kubernetes'
//! `ControllerRefManager.ClaimObject`: a controller owns the objects whose controller
//! reference carries its UID, adopts matching orphans and releases owned objects its
//! selector no longer matches.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// The ownerReference with `controller: true`, if any (there is at most one).
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// True when the object's controller reference points at `owner_uid`.
pub fn is_controlled_by(meta: &ObjectMeta, owner_uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == owner_uid)
}

/// A controller reference as `metav1.NewControllerRef` builds it.
pub fn controller_ref(api_version: &str, kind: &str, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: name.to_string(),
        uid: uid.to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// What a controller does with one candidate object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Controlled by us and matching: ours.
    Owned,
    /// An orphan that matches: take it (it is ours from now on).
    Adopt,
    /// Controlled by us but no longer matching: drop the controller reference.
    Release,
    /// Someone else's, or not for us.
    Ignore,
}

/// Kubernetes' claim decision. `owner` is the controller's metadata, `object` the
/// candidate's and `selector_matches` whether the controller's selector matches it.
/// A controller being deleted neither adopts nor releases; an object being deleted is
/// never adopted.
pub fn claim(owner: &ObjectMeta, object: &ObjectMeta, selector_matches: bool) -> Claim {
    let owner_deleting = owner.deletion_timestamp.is_some();
    match controller_of(object) {
        Some(reference) if Some(&reference.uid) != owner.uid.as_ref() => Claim::Ignore,
        Some(_) if selector_matches => Claim::Owned,
        Some(_) if owner_deleting => Claim::Ignore,
        Some(_) => Claim::Release,
        None if owner_deleting || !selector_matches => Claim::Ignore,
        None if object.deletion_timestamp.is_some() => Claim::Ignore,
        None if owner.namespace.is_some() && owner.namespace != object.namespace => Claim::Ignore,
        None => Claim::Adopt,
    }
}

/// A change to one object's ownerReferences (adoption or release). The loop sends
/// [`OwnerRefChange::merge_patch`] as a JSON merge patch; it carries the observed `uid`
/// (a recreated object with the same name must not be touched) and `resourceVersion`
/// (the list is replaced whole, so a concurrent change must conflict, not be lost).
#[derive(Debug, Clone, PartialEq)]
pub struct OwnerRefChange {
    pub name: String,
    pub uid: String,
    pub resource_version: Option<String>,
    /// The object's complete ownerReferences after the change.
    pub owner_references: Vec<OwnerReference>,
}

impl OwnerRefChange {
    /// Adds `reference` (a controller reference) to the object's references.
    pub fn adopt(object: &ObjectMeta, reference: OwnerReference) -> OwnerRefChange {
        let mut owner_references: Vec<OwnerReference> =
            object.owner_references.clone().unwrap_or_default();
        owner_references.retain(|r| r.uid != reference.uid);
        owner_references.push(reference);
        OwnerRefChange::with_references(object, owner_references)
    }

    /// Removes every reference to `owner_uid`.
    pub fn release(object: &ObjectMeta, owner_uid: &str) -> OwnerRefChange {
        let owner_references = object
            .owner_references
            .iter()
            .flatten()
            .filter(|r| r.uid != owner_uid)
            .cloned()
            .collect();
        OwnerRefChange::with_references(object, owner_references)
    }

    fn with_references(object: &ObjectMeta, owner_references: Vec<OwnerReference>) -> Self {
        OwnerRefChange {
            name: object.name.clone().unwrap_or_default(),
            uid: object.uid.clone().unwrap_or_default(),
            resource_version: object.resource_version.clone(),
            owner_references,
        }
    }

    /// The JSON merge patch (RFC 7386) that performs the change.
    pub fn merge_patch(&self) -> serde_json::Value {
        let mut metadata = serde_json::json!({
            "uid": self.uid,
            "ownerReferences": self.owner_references,
        });
        if let Some(version) = &self.resource_version {
            metadata["resourceVersion"] = serde_json::Value::String(version.clone());
        }
        serde_json::json!({ "metadata": metadata })
    }

    /// Applies the change to a local copy (tests and simulations).
    pub fn apply_to(&self, object: &mut ObjectMeta) {
        object.owner_references = if self.owner_references.is_empty() {
            None
        } else {
            Some(self.owner_references.clone())
        };
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn meta(json: serde_json::Value) -> ObjectMeta {
        serde_json::from_value(json).unwrap()
    }

    fn owner() -> ObjectMeta {
        meta(serde_json::json!({"name": "web", "namespace": "default", "uid": "rs-1"}))
    }

    fn owned_by(uid: &str) -> ObjectMeta {
        meta(serde_json::json!({
            "name": "p", "namespace": "default", "uid": "pod-1", "resourceVersion": "7",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "cm-1"},
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "o", "uid": uid,
                 "controller": true, "blockOwnerDeletion": true}
            ]
        }))
    }

    #[test]
    fn controller_reference_is_the_one_with_controller_true() {
        let object = owned_by("rs-1");
        assert_eq!(controller_of(&object).unwrap().uid, "rs-1");
        assert!(is_controlled_by(&object, "rs-1"));
        assert!(!is_controlled_by(&object, "cm-1"));
        let reference = controller_ref("apps/v1", "ReplicaSet", "web", "rs-1");
        assert_eq!(reference.controller, Some(true));
        assert_eq!(reference.block_owner_deletion, Some(true));
    }

    #[test]
    fn claim_decisions() {
        let orphan = meta(serde_json::json!({"name": "p", "namespace": "default"}));
        assert_eq!(claim(&owner(), &orphan, true), Claim::Adopt);
        assert_eq!(claim(&owner(), &orphan, false), Claim::Ignore);
        assert_eq!(claim(&owner(), &owned_by("rs-1"), true), Claim::Owned);
        assert_eq!(claim(&owner(), &owned_by("rs-1"), false), Claim::Release);
        assert_eq!(claim(&owner(), &owned_by("other"), true), Claim::Ignore);

        let mut deleting_orphan = orphan.clone();
        deleting_orphan.deletion_timestamp = Some(k8s_openapi::jiff::Timestamp::UNIX_EPOCH.into());
        assert_eq!(claim(&owner(), &deleting_orphan, true), Claim::Ignore);

        let mut deleting_owner = owner();
        deleting_owner.deletion_timestamp = Some(k8s_openapi::jiff::Timestamp::UNIX_EPOCH.into());
        assert_eq!(claim(&deleting_owner, &orphan, true), Claim::Ignore);
        assert_eq!(
            claim(&deleting_owner, &owned_by("rs-1"), false),
            Claim::Ignore
        );
        assert_eq!(
            claim(&deleting_owner, &owned_by("rs-1"), true),
            Claim::Owned
        );

        let elsewhere = meta(serde_json::json!({"name": "p", "namespace": "other"}));
        assert_eq!(claim(&owner(), &elsewhere, true), Claim::Ignore);
    }

    #[test]
    fn adopt_and_release_keep_other_references() {
        let orphan = meta(serde_json::json!({
            "name": "p", "uid": "pod-1", "resourceVersion": "3",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "cm-1"}]
        }));
        let adopt = OwnerRefChange::adopt(
            &orphan,
            controller_ref("apps/v1", "ReplicaSet", "web", "rs-1"),
        );
        assert_eq!(adopt.owner_references.len(), 2);
        assert_eq!(
            adopt.merge_patch(),
            serde_json::json!({"metadata": {
                "uid": "pod-1", "resourceVersion": "3",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "cm-1"},
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs-1",
                     "controller": true, "blockOwnerDeletion": true}
                ]
            }})
        );

        let release = OwnerRefChange::release(&owned_by("rs-1"), "rs-1");
        assert_eq!(release.owner_references.len(), 1);
        assert_eq!(release.owner_references[0].uid, "cm-1");
        let mut object = owned_by("rs-1");
        release.apply_to(&mut object);
        assert!(controller_of(&object).is_none());
    }
}
