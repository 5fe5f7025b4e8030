//! `spec.podFailurePolicy` (`pod_failure_policy.go`): the first rule matching a failed
//! pod's exit codes or conditions decides whether the failure fails the whole Job, is
//! ignored (not counted against `backoffLimit`), or counts as usual.

use k8s_openapi::api::batch::v1::{PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodCondition};

/// What a matched rule says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Match {
    /// Present when a `FailJob` rule matched: the Job fails with this message.
    pub fail_job_message: Option<String>,
    /// False when an `Ignore` rule matched.
    pub count_failed: bool,
}

impl Match {
    fn count() -> Match {
        Match {
            fail_job_message: None,
            count_failed: true,
        }
    }
}

/// `matchPodFailurePolicy` for a failed pod. `FailIndex` belongs to per-index backoff,
/// which this planner rejects up front, so it only counts the failure.
pub(crate) fn match_pod(policy: Option<&PodFailurePolicy>, pod: &Pod) -> Match {
    let Some(policy) = policy else {
        return Match::count();
    };
    let status = pod.status.as_ref();
    for (index, rule) in policy.rules.iter().enumerate() {
        let matched: Option<String> = if let Some(requirement) = &rule.on_exit_codes {
            let containers = status.and_then(|s| s.container_statuses.as_deref());
            let init = status.and_then(|s| s.init_container_statuses.as_deref());
            matching_container(containers, requirement)
                .or_else(|| matching_container(init, requirement))
                .map(|c| {
                    let code = c
                        .state
                        .as_ref()
                        .and_then(|s| s.terminated.as_ref())
                        .map(|t| t.exit_code)
                        .unwrap_or_default();
                    format!(
                        "Container {} for pod {}/{} failed with exit code {} matching {} rule at index {}",
                        c.name,
                        pod.metadata.namespace.as_deref().unwrap_or(""),
                        pod.metadata.name.as_deref().unwrap_or(""),
                        code,
                        rule.action,
                        index
                    )
                })
        } else if let Some(patterns) = &rule.on_pod_conditions {
            let conditions = status.and_then(|s| s.conditions.as_deref());
            matching_condition(conditions, patterns).map(|c| {
                format!(
                    "Pod {}/{} has condition {} matching {} rule at index {}",
                    pod.metadata.namespace.as_deref().unwrap_or(""),
                    pod.metadata.name.as_deref().unwrap_or(""),
                    c.type_,
                    rule.action,
                    index
                )
            })
        } else {
            None
        };
        let Some(message) = matched else {
            continue;
        };
        match rule.action.as_str() {
            "Ignore" => {
                return Match {
                    fail_job_message: None,
                    count_failed: false,
                }
            }
            "Count" | "FailIndex" => return Match::count(),
            "FailJob" => {
                return Match {
                    fail_job_message: Some(message),
                    count_failed: true,
                }
            }
            // An action the API would have rejected: Kubernetes' switch falls through to
            // the next rule.
            _ => {}
        }
    }
    Match::count()
}

fn matching_container<'a>(
    statuses: Option<&'a [ContainerStatus]>,
    requirement: &PodFailurePolicyOnExitCodesRequirement,
) -> Option<&'a ContainerStatus> {
    statuses?.iter().find(|status| {
        let Some(terminated) = status.state.as_ref().and_then(|s| s.terminated.as_ref()) else {
            // Still running or terminating: no exit code to match yet.
            return false;
        };
        let name_matches = requirement
            .container_name
            .as_ref()
            .is_none_or(|n| *n == status.name);
        // Exit code 0 never matches: a container that succeeded did not fail the pod.
        name_matches
            && terminated.exit_code != 0
            && match requirement.operator.as_str() {
                "In" => requirement.values.contains(&terminated.exit_code),
                "NotIn" => !requirement.values.contains(&terminated.exit_code),
                _ => false,
            }
    })
}

fn matching_condition<'a>(
    conditions: Option<&'a [PodCondition]>,
    patterns: &[k8s_openapi::api::batch::v1::PodFailurePolicyOnPodConditionsPattern],
) -> Option<&'a PodCondition> {
    conditions?.iter().find(|c| {
        patterns
            .iter()
            .any(|p| p.type_ == c.type_ && p.status == c.status)
    })
}
