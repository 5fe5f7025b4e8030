//! The built-in resource catalogue: every kind the API serves, with the names discovery
//! reports (plural, singular, short names, categories) and what it supports. One table, read by
//! the API server for routing and discovery, so a kind is added in one place.

/// One served resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceDef {
    /// API group; `""` is the core (legacy `/api`) group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The URL segment: `pods`.
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Has a `status` subresource (writes to the main resource leave status alone).
    pub status: bool,
    /// Has a `scale` subresource.
    pub scale: bool,
    /// The group and version objects are stored at, when they are served at several: a CRD's
    /// storage version, or core/v1 for events.k8s.io/v1 Events (one resource in Kubernetes,
    /// seen through two APIs). Objects are converted between the two on the way in and out.
    pub storage: (&'static str, &'static str),
}

impl ResourceDef {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether objects are stored in another form than they are served in.
    pub fn converted(&self) -> bool {
        self.storage != (self.group, self.version)
    }

    /// The store key prefix of this resource: `/registry/<group>/<plural>/` of its storage
    /// group (every version of a resource shares its keys).
    pub fn key_prefix(&self) -> String {
        let group = if self.storage.0.is_empty() {
            "core"
        } else {
            self.storage.0
        };
        format!("/registry/{group}/{}/", self.plural)
    }
}

const fn def(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
) -> ResourceDef {
    ResourceDef {
        group,
        version,
        kind,
        plural,
        singular,
        namespaced,
        short_names,
        categories: &[],
        status: false,
        scale: false,
        storage: (group, version),
    }
}

const fn stored_as(mut d: ResourceDef, group: &'static str, version: &'static str) -> ResourceDef {
    d.storage = (group, version);
    d
}

const fn with_status(mut d: ResourceDef) -> ResourceDef {
    d.status = true;
    d
}

const fn with_scale(mut d: ResourceDef) -> ResourceDef {
    d.scale = true;
    d
}

const fn in_all(mut d: ResourceDef) -> ResourceDef {
    d.categories = &["all"];
    d
}

/// Every built-in resource.
pub const BUILTIN: &[ResourceDef] = &[
    with_status(def(
        "",
        "v1",
        "Namespace",
        "namespaces",
        "namespace",
        false,
        &["ns"],
    )),
    in_all(with_status(def(
        "",
        "v1",
        "Pod",
        "pods",
        "pod",
        true,
        &["po"],
    ))),
    in_all(with_status(def(
        "",
        "v1",
        "Service",
        "services",
        "service",
        true,
        &["svc"],
    ))),
    def(
        "",
        "v1",
        "Endpoints",
        "endpoints",
        "endpoints",
        true,
        &["ep"],
    ),
    with_status(def("", "v1", "Node", "nodes", "node", false, &["no"])),
    def(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        "configmap",
        true,
        &["cm"],
    ),
    def("", "v1", "Secret", "secrets", "secret", true, &[]),
    def(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
    ),
    def("", "v1", "Event", "events", "event", true, &["ev"]),
    with_status(def(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        true,
        &["pvc"],
    )),
    in_all(with_scale(with_status(def(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        true,
        &["deploy"],
    )))),
    in_all(with_scale(with_status(def(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        true,
        &["rs"],
    )))),
    in_all(with_status(def(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        true,
        &["ds"],
    ))),
    in_all(with_scale(with_status(def(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        true,
        &["sts"],
    )))),
    def(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        "controllerrevision",
        true,
        &[],
    ),
    in_all(with_status(def(
        "batch",
        "v1",
        "Job",
        "jobs",
        "job",
        true,
        &[],
    ))),
    in_all(with_status(def(
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        "cronjob",
        true,
        &["cj"],
    ))),
    def(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        "lease",
        true,
        &[],
    ),
    def(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
        &[],
    ),
    stored_as(
        def(
            "events.k8s.io",
            "v1",
            "Event",
            "events",
            "event",
            true,
            &["ev"],
        ),
        "",
        "v1",
    ),
    def(
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        "role",
        true,
        &[],
    ),
    def(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        true,
        &[],
    ),
    def(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        "clusterrole",
        false,
        &[],
    ),
    def(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        false,
        &[],
    ),
    with_status(def(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        "customresourcedefinition",
        false,
        &["crd", "crds"],
    )),
];

/// The resource served at `group`/`version` under `plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    BUILTIN
        .iter()
        .find(|d| d.group == group && d.version == version && d.plural == plural)
}

/// The API groups (other than core) with their versions, in catalogue order.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for d in BUILTIN.iter().filter(|d| !d.group.is_empty()) {
        if !out.contains(&(d.group, d.version)) {
            out.push((d.group, d.version));
        }
    }
    out
}

/// The namespaces every cluster has.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_per_group_version() {
        for (i, a) in BUILTIN.iter().enumerate() {
            for b in &BUILTIN[i + 1..] {
                assert!(
                    !(a.group == b.group && a.version == b.version && a.plural == b.plural),
                    "{} twice",
                    a.plural
                );
            }
        }
    }

    #[test]
    fn lookups() {
        let deploy = find("apps", "v1", "deployments").expect("deployments");
        assert_eq!(
            (deploy.kind, deploy.api_version()),
            ("Deployment", "apps/v1".to_string())
        );
        assert!(deploy.scale && deploy.status && deploy.namespaced);
        assert_eq!(
            find("", "v1", "pods").map(|d| d.key_prefix()),
            Some("/registry/core/pods/".into())
        );
        assert!(find("", "v1", "deployments").is_none());
        assert!(groups().contains(&("apps", "v1")));
        assert!(!groups().iter().any(|(g, _)| g.is_empty()));
    }
}
