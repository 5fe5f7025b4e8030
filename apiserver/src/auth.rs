//! Who is calling: the user a TLS client certificate names (CN = user, O = groups, as
//! Kubernetes reads them), or nobody. Anonymous callers may only read health and version, as
//! on a Kubernetes API server with anonymous auth limited to those endpoints.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::status::ApiError;

/// The authenticated caller, attached to every request as an extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    Anonymous,
    Authenticated { name: String, groups: Vec<String> },
}

impl User {
    /// Reads the user from a client certificate the TLS layer already verified against the CA.
    pub fn from_certificate(der: &[u8]) -> User {
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            return User::Anonymous;
        };
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let groups = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_string))
            .collect();
        match name {
            Some(name) if !name.is_empty() => User::Authenticated { name, groups },
            _ => User::Anonymous,
        }
    }
}

/// Paths anyone may call: health and version, and joining (which checks the join token).
fn is_public(path: &str) -> bool {
    matches!(path, "/version" | "/healthz" | "/livez" | "/readyz")
        || path == shoal_common::join::CACERTS_PATH
        || path == shoal_common::join::NODE_CREDENTIALS_PATH
        || path.starts_with("/healthz/")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/")
}

/// Middleware: rejects anonymous requests outside the public paths with 401.
pub async fn require_user(request: Request, next: Next) -> Response {
    let anonymous = !matches!(
        request.extensions().get::<User>(),
        Some(User::Authenticated { .. })
    );
    if anonymous && !is_public(request.uri().path()) {
        return ApiError::unauthorized().into_response();
    }
    next.run(request).await
}
