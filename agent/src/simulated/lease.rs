//! Each node's `coordination.k8s.io/v1` Lease in `kube-node-lease`, the kubelet's cheap
//! heartbeat: held by the node, renewed every few seconds, owned by the Node so it goes with it.
//! Renewals are updates of the last written Lease (one request each, as the kubelet's);
//! a stale copy (409) or a Lease deleted meanwhile (404) is read again or recreated.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};

use crate::simulated::requests::RequestGate;
use crate::simulated::SimError;

/// The namespace node Leases live in.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// A new Lease for `node_name`, owned by the Node with `node_uid` when known.
pub fn lease_object(
    node_name: &str,
    node_uid: Option<&str>,
    duration_seconds: i32,
    now: Timestamp,
) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(node_name.to_string()),
            namespace: Some(NODE_LEASE_NAMESPACE.into()),
            owner_references: node_uid.map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: node_name.to_string(),
                    uid: uid.to_string(),
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        },
        spec: Some(renewed_spec(None, node_name, duration_seconds, now)),
    }
}

/// `spec` held by `node_name` and renewed at `now`.
pub fn renewed_spec(
    spec: Option<LeaseSpec>,
    node_name: &str,
    duration_seconds: i32,
    now: Timestamp,
) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(node_name.to_string()),
        lease_duration_seconds: Some(duration_seconds),
        renew_time: Some(MicroTime(now)),
        ..spec.unwrap_or_default()
    }
}

/// One node's Lease and the copy last written.
#[derive(Debug)]
pub struct NodeLease {
    api: Api<Lease>,
    node_name: String,
    node_uid: Option<String>,
    duration_seconds: i32,
    last_written: Option<Lease>,
}

impl NodeLease {
    pub fn new(
        client: kube::Client,
        node_name: &str,
        node_uid: Option<String>,
        duration_seconds: i32,
    ) -> NodeLease {
        NodeLease {
            api: Api::namespaced(client, NODE_LEASE_NAMESPACE),
            node_name: node_name.to_string(),
            node_uid,
            duration_seconds,
            last_written: None,
        }
    }

    /// Renews the Lease (creating it if missing).
    pub async fn renew(&mut self, gate: &RequestGate) -> Result<(), SimError> {
        let base = match self.last_written.take() {
            Some(lease) => Some(lease),
            None => self.read(gate).await?,
        };
        match self.write(gate, base).await {
            Ok(stored) => {
                self.last_written = Some(stored);
                Ok(())
            }
            // Somebody else wrote or deleted it since: start again from what is stored.
            Err(e) if e.is_conflict() || e.is_not_found() => {
                let fresh = self.read(gate).await?;
                self.last_written = Some(self.write(gate, fresh).await?);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn read(&self, gate: &RequestGate) -> Result<Option<Lease>, SimError> {
        gate.send(
            || format!("reading the lease of node {}", self.node_name),
            || self.api.get_opt(&self.node_name),
        )
        .await
    }

    /// Updates `base` with a fresh renewal, or creates the Lease when there is none.
    async fn write(&self, gate: &RequestGate, base: Option<Lease>) -> Result<Lease, SimError> {
        let now = Timestamp::now();
        let params = PostParams::default();
        match base {
            Some(mut lease) => {
                lease.spec = Some(renewed_spec(
                    lease.spec.take(),
                    &self.node_name,
                    self.duration_seconds,
                    now,
                ));
                gate.send(
                    || format!("renewing the lease of node {}", self.node_name),
                    || self.api.replace(&self.node_name, &params, &lease),
                )
                .await
            }
            None => {
                let lease = lease_object(
                    &self.node_name,
                    self.node_uid.as_deref(),
                    self.duration_seconds,
                    now,
                );
                gate.send(
                    || format!("creating the lease of node {}", self.node_name),
                    || self.api.create(&params, &lease),
                )
                .await
            }
        }
    }

    pub async fn delete(&self, gate: &RequestGate) -> Result<(), SimError> {
        let params = DeleteParams::default();
        match gate
            .send(
                || format!("deleting the lease of node {}", self.node_name),
                || self.api.delete(&self.node_name, &params),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_held_by_its_node_and_owned_by_it() {
        let now = Timestamp::from_second(1_700_000_000).expect("time");
        let lease = lease_object("sim-3", Some("uid-3"), 40, now);
        let value = serde_json::to_value(&lease).expect("json");
        assert_eq!(value["metadata"]["namespace"], "kube-node-lease");
        assert_eq!(value["metadata"]["name"], "sim-3");
        assert_eq!(value["metadata"]["ownerReferences"][0]["kind"], "Node");
        assert_eq!(value["metadata"]["ownerReferences"][0]["uid"], "uid-3");
        assert_eq!(value["spec"]["holderIdentity"], "sim-3");
        assert_eq!(value["spec"]["leaseDurationSeconds"], 40);
        assert_eq!(value["spec"]["renewTime"], "2023-11-14T22:13:20.000000Z");
    }

    #[test]
    fn a_renewal_moves_only_the_renew_time_and_takes_the_lease_back() {
        let first = Timestamp::from_second(100).expect("time");
        let later = Timestamp::from_second(110).expect("time");
        let taken = LeaseSpec {
            holder_identity: Some("someone-else".into()),
            lease_transitions: Some(2),
            ..renewed_spec(None, "sim-3", 40, first)
        };
        let renewed = renewed_spec(Some(taken), "sim-3", 40, later);
        assert_eq!(renewed.holder_identity.as_deref(), Some("sim-3"));
        assert_eq!(renewed.renew_time, Some(MicroTime(later)));
        assert_eq!(renewed.lease_transitions, Some(2));
    }
}
