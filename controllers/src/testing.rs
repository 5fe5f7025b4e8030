//! Fixture helpers shared by the unit tests: objects from `serde_json::json!` and
//! instants as whole seconds since the epoch.
#![allow(clippy::unwrap_used)]

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// RFC 3339 text for `second` seconds after the epoch, for JSON fixtures.
pub fn at(second: i64) -> String {
    Timestamp::from_second(second).unwrap().to_string()
}

/// The instant `second` seconds after the epoch.
pub fn time(second: i64) -> Time {
    Time(Timestamp::from_second(second).unwrap())
}

pub fn pod(json: serde_json::Value) -> Pod {
    serde_json::from_value(json).unwrap()
}

pub fn replica_set(json: serde_json::Value) -> ReplicaSet {
    serde_json::from_value(json).unwrap()
}

pub fn deployment(json: serde_json::Value) -> Deployment {
    serde_json::from_value(json).unwrap()
}

pub fn node(json: serde_json::Value) -> Node {
    serde_json::from_value(json).unwrap()
}

pub fn daemon_set(json: serde_json::Value) -> DaemonSet {
    serde_json::from_value(json).unwrap()
}

pub fn stateful_set(json: serde_json::Value) -> StatefulSet {
    serde_json::from_value(json).unwrap()
}

pub fn claim(json: serde_json::Value) -> PersistentVolumeClaim {
    serde_json::from_value(json).unwrap()
}

pub fn job(json: serde_json::Value) -> Job {
    serde_json::from_value(json).unwrap()
}

pub fn cron_job(json: serde_json::Value) -> CronJob {
    serde_json::from_value(json).unwrap()
}

pub fn service(json: serde_json::Value) -> k8s_openapi::api::core::v1::Service {
    serde_json::from_value(json).unwrap()
}

pub fn lease(json: serde_json::Value) -> k8s_openapi::api::coordination::v1::Lease {
    serde_json::from_value(json).unwrap()
}
