//! The simulator's error type: a bad configuration, or an API request that failed for good
//! (after the retries [`crate::simulated::requests`] makes).

/// Why the simulator could not start or a request to the API failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration cannot describe a valid set of nodes.
    #[error("invalid simulator configuration: {0}")]
    Config(String),
    /// A request failed with an error that retrying does not cure, or kept failing.
    #[error("{action}: {source}")]
    Api {
        /// What the request was for ("registering node sim-3").
        action: String,
        #[source]
        source: kube::Error,
    },
    /// The pod watch ended, which it never does while the API answers.
    #[error("the pod watch ended")]
    WatchEnded,
}

impl SimError {
    /// The HTTP status the API answered with, if it answered.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            SimError::Api {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status_code() == Some(404)
    }

    pub fn is_conflict(&self) -> bool {
        self.status_code() == Some(409)
    }
}
