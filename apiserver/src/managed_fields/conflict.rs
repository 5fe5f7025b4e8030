//! Why an apply fails: an invalid configuration, or conflicts with other managers, reported in
//! Kubernetes' words (the message `kubectl` prints and the per-field status causes).

use serde_json::{json, Value};

use super::entries::{Identity, Operation};
use super::path::Path;

/// A field the applier would change that another manager owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    pub operation: Operation,
    /// The API version the other manager wrote with (named in messages for updaters only).
    pub api_version: String,
    pub subresource: Option<String>,
    pub path: Path,
}

impl Conflict {
    /// How Kubernetes names the other manager: `"kubectl" using apps/v1` for an updater,
    /// `"ci"` for an applier, with `with subresource "status"` when it wrote a subresource.
    pub fn manager_description(&self) -> String {
        let mut text = quoted(&self.manager);
        if let Some(subresource) = &self.subresource {
            text = format!("{text} with subresource {}", quoted(subresource));
        }
        if self.operation == Operation::Update {
            text = format!("{text} using {}", self.api_version);
        }
        text
    }

    /// The `metav1.StatusCause` Kubernetes reports for the conflict.
    pub fn cause(&self) -> Value {
        json!({
            "type": "FieldManagerConflict",
            "message": format!("conflict with {}", self.manager_description()),
            "field": self.path.to_string(),
        })
    }

    pub(crate) fn identifier(&self) -> String {
        Identity::new(
            &self.manager,
            self.operation,
            &self.api_version,
            self.subresource.as_deref(),
        )
        .identifier()
    }
}

/// Go's `%q` for the names Kubernetes prints; JSON string quoting agrees for them.
fn quoted(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

/// Kubernetes' message: `Apply failed with 1 conflict: conflict with "x" using apps/v1:
/// .spec.replicas`, or for several, one `conflicts with <manager>:` block per manager (sorted
/// by manager identifier) listing `- <path>` lines.
pub fn conflicts_message(conflicts: &[Conflict]) -> String {
    if let [only] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            only.manager_description(),
            only.path
        );
    }
    let mut sorted: Vec<&Conflict> = conflicts.iter().collect();
    // Stable: paths keep their order within a manager.
    sorted.sort_by_key(|c| c.identifier());
    let mut lines = Vec::new();
    let mut current: Option<String> = None;
    for conflict in sorted {
        let identifier = conflict.identifier();
        if current.as_ref() != Some(&identifier) {
            lines.push(format!(
                "conflicts with {}:",
                conflict.manager_description()
            ));
            current = Some(identifier);
        }
        lines.push(format!("- {}", conflict.path));
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

/// Why an apply was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApplyError {
    /// The applied configuration cannot be applied (not an object, wrong kind, unkeyable
    /// list items…).
    #[error("{0}")]
    Invalid(String),
    /// Fields owned by other managers would change; retry with `force` to take them over.
    #[error("{}", conflicts_message(.0))]
    Conflicts(Vec<Conflict>),
}

impl ApplyError {
    /// The HTTP status code Kubernetes answers with.
    pub fn code(&self) -> u16 {
        match self {
            ApplyError::Invalid(_) => 400,
            ApplyError::Conflicts(_) => 409,
        }
    }

    /// The `metav1.Status` reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ApplyError::Invalid(_) => "BadRequest",
            ApplyError::Conflicts(_) => "Conflict",
        }
    }

    /// The `metav1.Status` body; conflicts carry one `FieldManagerConflict` cause per field.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        if let ApplyError::Conflicts(conflicts) = self {
            let causes: Vec<Value> = conflicts.iter().map(Conflict::cause).collect();
            status["details"] = json!({ "causes": causes });
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflict(manager: &str, operation: Operation, path: &[&str]) -> Conflict {
        Conflict {
            manager: manager.into(),
            operation,
            api_version: "apps/v1".into(),
            subresource: None,
            path: Path::fields(path),
        }
    }

    #[test]
    fn one_conflict_reads_as_kubernetes_writes_it() {
        let error = ApplyError::Conflicts(vec![conflict(
            "kubectl-client-side-apply",
            Operation::Update,
            &["spec", "replicas"],
        )]);
        assert_eq!(
            error.to_string(),
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using \
             apps/v1: .spec.replicas"
        );
    }

    #[test]
    fn several_conflicts_are_grouped_by_sorted_manager() {
        let error = ApplyError::Conflicts(vec![
            conflict("x", Operation::Update, &["spec", "replicas"]),
            conflict("ci", Operation::Apply, &["spec", "paused"]),
            conflict(
                "x",
                Operation::Update,
                &["spec", "template", "spec", "hostname"],
            ),
        ]);
        assert_eq!(
            error.to_string(),
            "Apply failed with 3 conflicts: conflicts with \"ci\":\n- .spec.paused\n\
             conflicts with \"x\" using apps/v1:\n- .spec.replicas\n\
             - .spec.template.spec.hostname"
        );
    }

    #[test]
    fn status_carries_a_cause_per_field() {
        let mut on_status = conflict("hpa", Operation::Update, &["spec", "replicas"]);
        on_status.subresource = Some("scale".into());
        let status = ApplyError::Conflicts(vec![on_status]).status();
        assert_eq!(status["code"], 409);
        assert_eq!(status["reason"], "Conflict");
        assert_eq!(
            status["details"]["causes"][0],
            json!({
                "type": "FieldManagerConflict",
                "message": "conflict with \"hpa\" with subresource \"scale\" using apps/v1",
                "field": ".spec.replicas"
            })
        );
        let invalid = ApplyError::Invalid("bad".into()).status();
        assert_eq!(
            (invalid["code"].clone(), invalid["reason"].clone()),
            (json!(400), json!("BadRequest"))
        );
    }
}
