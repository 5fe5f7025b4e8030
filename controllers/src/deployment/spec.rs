//! The Deployment spec as the controller uses it: apps/v1 defaults filled in and
//! `maxSurge`/`maxUnavailable` resolved to pod counts (`ResolveFenceposts`, `MaxSurge`,
//! `MaxUnavailable` in Kubernetes' `deployment_util.go`).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::DeploymentError;

/// apps/v1 defaults, applied when the stored object lacks the field.
pub const DEFAULT_REPLICAS: i32 = 1;
pub const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i32 = 600;
const DEFAULT_MAX_SURGE_AND_UNAVAILABLE: &str = "25%";

/// An `IntOrString` that is neither an int nor a `"<n>%"` string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntOrPercentError {
    #[error("invalid value for IntOrString: invalid type: string is not a percentage ({0:?})")]
    NotAPercentage(String),
    #[error("invalid value for IntOrString: invalid value {0:?}")]
    InvalidNumber(String),
}

/// `intstr.GetScaledValueFromIntOrPercent`: an int as is, a percent of `total` rounded
/// up or down.
pub fn scaled_value(
    value: &IntOrString,
    total: i32,
    round_up: bool,
) -> Result<i32, IntOrPercentError> {
    match value {
        IntOrString::Int(n) => Ok(*n),
        IntOrString::String(text) => {
            let digits = text
                .strip_suffix('%')
                .ok_or_else(|| IntOrPercentError::NotAPercentage(text.clone()))?;
            let percent: i64 = digits
                .parse()
                .map_err(|_| IntOrPercentError::InvalidNumber(text.clone()))?;
            // Float arithmetic as in Kubernetes, so rounding matches for any input.
            let exact = percent as f64 * f64::from(total) / 100.0;
            let rounded = if round_up {
                exact.ceil()
            } else {
                exact.floor()
            };
            Ok(rounded as i32)
        }
    }
}

/// `ResolveFenceposts`: surge rounds up, unavailable rounds down, and when both come out
/// 0 one pod may be unavailable so the rollout can move at all.
pub fn resolve_fenceposts(
    max_surge: &IntOrString,
    max_unavailable: &IntOrString,
    desired: i32,
) -> Result<(i32, i32), IntOrPercentError> {
    let surge = scaled_value(max_surge, desired, true)?;
    let unavailable = scaled_value(max_unavailable, desired, false)?;
    if surge == 0 && unavailable == 0 {
        return Ok((0, 1));
    }
    Ok((surge, unavailable))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RollingUpdate,
    Recreate,
}

/// The resolved spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub replicas: i32,
    pub strategy: Strategy,
    /// Pods allowed above `replicas` (0 for Recreate).
    pub max_surge: i32,
    /// Pods allowed below `replicas` (0 for Recreate or 0 replicas; never above replicas).
    pub max_unavailable: i32,
    pub min_ready_seconds: i32,
    /// `None` when the deadline is disabled (`math.MaxInt32`).
    pub progress_deadline_seconds: Option<i32>,
    /// `None` when history is unlimited (`math.MaxInt32`).
    pub revision_history_limit: Option<i32>,
    pub paused: bool,
}

impl Params {
    pub fn resolve(d: &Deployment) -> Result<Params, DeploymentError> {
        let spec = d.spec.as_ref().ok_or(DeploymentError::MissingSpec)?;
        let replicas = spec.replicas.unwrap_or(DEFAULT_REPLICAS);
        let strategy_spec = spec.strategy.as_ref();
        let strategy = match strategy_spec.and_then(|s| s.type_.as_deref()) {
            None | Some("RollingUpdate") => Strategy::RollingUpdate,
            Some("Recreate") => Strategy::Recreate,
            Some(other) => return Err(DeploymentError::UnknownStrategy(other.to_string())),
        };
        let (max_surge, max_unavailable) = match strategy {
            Strategy::Recreate => (0, 0),
            Strategy::RollingUpdate => {
                let rolling = strategy_spec.and_then(|s| s.rolling_update.as_ref());
                let default = IntOrString::String(DEFAULT_MAX_SURGE_AND_UNAVAILABLE.to_string());
                let surge = rolling
                    .and_then(|r| r.max_surge.clone())
                    .unwrap_or(default.clone());
                let unavailable = rolling
                    .and_then(|r| r.max_unavailable.clone())
                    .unwrap_or(default);
                let (surge, unavailable) = resolve_fenceposts(&surge, &unavailable, replicas)?;
                // MaxUnavailable: nothing may be unavailable of nothing, and never more
                // than everything.
                let unavailable = if replicas == 0 {
                    0
                } else {
                    unavailable.min(replicas)
                };
                (surge, unavailable)
            }
        };
        let unlimited = |value: i32| (value != i32::MAX).then_some(value);
        Ok(Params {
            replicas,
            strategy,
            max_surge,
            max_unavailable,
            min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
            progress_deadline_seconds: unlimited(
                spec.progress_deadline_seconds
                    .unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS),
            ),
            revision_history_limit: unlimited(
                spec.revision_history_limit
                    .unwrap_or(DEFAULT_REVISION_HISTORY_LIMIT),
            ),
            paused: spec.paused.unwrap_or(false),
        })
    }

    /// `replicas + maxSurge`: the most pods all ReplicaSets may ask for together.
    pub fn max_total(&self) -> i32 {
        self.replicas + self.max_surge
    }

    /// `replicas - maxUnavailable`: the fewest available pods a rollout may leave.
    pub fn min_available(&self) -> i32 {
        self.replicas - self.max_unavailable
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::deployment;

    fn percent(s: &str) -> IntOrString {
        IntOrString::String(s.to_string())
    }

    #[test]
    fn percentages_round_surge_up_and_unavailable_down() {
        assert_eq!(
            resolve_fenceposts(&percent("25%"), &percent("25%"), 10),
            Ok((3, 2))
        );
        assert_eq!(
            resolve_fenceposts(&percent("30%"), &percent("30%"), 5),
            Ok((2, 1))
        );
        assert_eq!(
            resolve_fenceposts(&IntOrString::Int(2), &IntOrString::Int(0), 10),
            Ok((2, 0))
        );
        assert_eq!(
            resolve_fenceposts(&percent("100%"), &percent("0%"), 3),
            Ok((3, 0))
        );
    }

    #[test]
    fn zero_surge_and_zero_unavailable_allow_one_unavailable() {
        assert_eq!(
            resolve_fenceposts(&IntOrString::Int(0), &IntOrString::Int(0), 4),
            Ok((0, 1))
        );
        // 10% of 3 rounds down to 0 unavailable and 0% surge: still one.
        assert_eq!(
            resolve_fenceposts(&percent("0%"), &percent("10%"), 3),
            Ok((0, 1))
        );
    }

    #[test]
    fn bad_percentages_are_errors() {
        assert_eq!(
            scaled_value(&percent("25"), 10, true),
            Err(IntOrPercentError::NotAPercentage("25".into()))
        );
        assert_eq!(
            scaled_value(&percent("x%"), 10, true),
            Err(IntOrPercentError::InvalidNumber("x%".into()))
        );
        let d = deployment(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {}, "template": {},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "lots"}}}
        }));
        assert!(matches!(
            Params::resolve(&d),
            Err(DeploymentError::IntOrPercent(_))
        ));
    }

    #[test]
    fn defaults_follow_apps_v1() {
        let d = deployment(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {}, "template": {}}
        }));
        let params = Params::resolve(&d).unwrap();
        assert_eq!(params.replicas, 1);
        assert_eq!(params.strategy, Strategy::RollingUpdate);
        // 25% of 1: surge rounds up to 1, unavailable down to 0.
        assert_eq!((params.max_surge, params.max_unavailable), (1, 0));
        assert_eq!(params.progress_deadline_seconds, Some(600));
        assert_eq!(params.revision_history_limit, Some(10));

        let recreate = deployment(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"replicas": 4, "selector": {}, "template": {},
                "progressDeadlineSeconds": i32::MAX, "revisionHistoryLimit": i32::MAX,
                "strategy": {"type": "Recreate"}}
        }));
        let params = Params::resolve(&recreate).unwrap();
        assert_eq!((params.max_surge, params.max_unavailable), (0, 0));
        assert_eq!(params.progress_deadline_seconds, None);
        assert_eq!(params.revision_history_limit, None);

        let unknown = deployment(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {}, "template": {}, "strategy": {"type": "BlueGreen"}}
        }));
        assert_eq!(
            Params::resolve(&unknown),
            Err(DeploymentError::UnknownStrategy("BlueGreen".into()))
        );
    }

    #[test]
    fn max_unavailable_is_capped_and_zero_for_zero_replicas() {
        let d = |replicas: i32| {
            deployment(serde_json::json!({
                "metadata": {"name": "web"},
                "spec": {"replicas": replicas, "selector": {}, "template": {},
                    "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 5}}}
            }))
        };
        assert_eq!(Params::resolve(&d(3)).unwrap().max_unavailable, 3);
        assert_eq!(Params::resolve(&d(0)).unwrap().max_unavailable, 0);
    }
}
