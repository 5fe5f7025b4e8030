//! The router: which handler serves which path. Endpoints not served yet answer with the
//! `NotFound` status Kubernetes gives for unknown paths.

use axum::extract::Request;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::auth;
use crate::status::ApiError;

/// What `/version` reports.
pub fn version_info() -> serde_json::Value {
    let kube = shoal_common::KUBERNETES_VERSION.trim_start_matches('v');
    let mut parts = kube.split('.');
    let major = parts.next().unwrap_or("1");
    let minor = parts.next().unwrap_or("0");
    json!({
        "major": major,
        "minor": minor,
        "gitVersion": format!("v{kube}+shoal.{}", shoal_common::VERSION),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    })
}

/// Kubernetes names architectures as Go does.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

async fn health() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "ok")
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found_path(request.uri().path())
}

/// The API's router.
pub fn router() -> Router {
    Router::new()
        .route("/version", get(|| async { Json(version_info()) }))
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(health))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(auth::require_user))
}
