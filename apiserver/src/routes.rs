//! The router: which handler serves which path. Endpoints not served yet answer with the
//! `NotFound` status Kubernetes gives for unknown paths.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde_json::json;

use crate::rest::{self, Api};
use crate::status::ApiError;
use crate::{auth, discovery, openapi};

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

async fn stream_exec(
    state: State<Arc<Api>>,
    Path((namespace, name)): Path<(String, String)>,
    request: Request,
) -> axum::response::Response {
    rest::pod_stream(state, Path((namespace, name, "exec".into())), request).await
}

async fn stream_attach(
    state: State<Arc<Api>>,
    Path((namespace, name)): Path<(String, String)>,
    request: Request,
) -> axum::response::Response {
    rest::pod_stream(state, Path((namespace, name, "attach".into())), request).await
}

async fn stream_portforward(
    state: State<Arc<Api>>,
    Path((namespace, name)): Path<(String, String)>,
    request: Request,
) -> axum::response::Response {
    rest::pod_stream(
        state,
        Path((namespace, name, "portforward".into())),
        request,
    )
    .await
}

/// The API's router over `api`.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/version", get(|| async { Json(version_info()) }))
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(health))
        .route(
            "/api",
            get(|State(api): State<Arc<Api>>, headers: axum::http::HeaderMap| async move {
                discovery_root(&api, &headers, true)
            }),
        )
        .route(
            "/apis",
            get(|State(api): State<Arc<Api>>, headers: axum::http::HeaderMap| async move {
                discovery_root(&api, &headers, false)
            }),
        )
        .route(
            "/api/v1",
            get(|State(api): State<Arc<Api>>| async move { group_version(&api, "", "v1") }),
        )
        .route(
            "/apis/{group}/{version}",
            get(|State(api): State<Arc<Api>>, Path((group, version)): Path<(String, String)>| async move {
                group_version(&api, &group, &version)
            }),
        )
        .route(
            "/openapi/v2",
            get(|State(api): State<Arc<Api>>, headers: axum::http::HeaderMap| openapi_v2(api, headers)),
        )
        .route(
            "/openapi/v3",
            get(|State(api): State<Arc<Api>>| async move { Json(openapi::root(&api.crds.served())) }),
        )
        .route(
            "/openapi/v3/api/{version}",
            get(|State(api): State<Arc<Api>>, Path(version): Path<String>| async move {
                openapi_document(&api, "", &version)
            }),
        )
        .route(
            "/openapi/v3/apis/{group}/{version}",
            get(|State(api): State<Arc<Api>>, Path((group, version)): Path<(String, String)>| async move {
                openapi_document(&api, &group, &version)
            }),
        )
        .route(shoal_common::join::CACERTS_PATH, get(crate::join::cacerts))
        .route(
            shoal_common::join::NODE_CREDENTIALS_PATH,
            axum::routing::post(crate::join::node_credentials),
        )
        .route(
            shoal_common::join::SERVER_BOOTSTRAP_PATH,
            axum::routing::post(crate::join::server_bootstrap),
        )
        .route(shoal_common::join::MEMBERS_PATH, any(crate::join::members))
        .route(crate::join::STORE_SNAPSHOTS_PATH, any(crate::join::store_snapshots))
        .route("/api/v1/namespaces/{namespace}/pods/{name}/exec", any(stream_exec))
        .route("/api/v1/namespaces/{namespace}/pods/{name}/attach", any(stream_attach))
        .route("/api/v1/namespaces/{namespace}/pods/{name}/portforward", any(stream_portforward))
        .route("/api/v1/{*rest}", any(rest::core))
        .route("/apis/{group}/{version}/{*rest}", any(rest::grouped))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&api),
            auth::require_user,
        ))
        .with_state(api)
}

/// Request bodies larger than this are refused (Kubernetes' own limit is 3 MiB).
const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// `/openapi/v2`, protobuf when the client asks for it (kubectl does), else JSON.
async fn openapi_v2(api: Arc<Api>, headers: axum::http::HeaderMap) -> Response {
    let protobuf = rest::header_str(&headers, header::ACCEPT).contains("protobuf");
    // The first request after a CRD change builds the document: off the async workers.
    let encoded = match tokio::task::spawn_blocking(move || api.openapi_v2.get(&api.crds)).await {
        Ok(encoded) => encoded,
        Err(err) => {
            return ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                err.to_string(),
            )
            .into_response()
        }
    };
    if protobuf {
        (
            [(header::CONTENT_TYPE, openapi::v2::PROTOBUF)],
            encoded.protobuf.clone(),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/json")],
            encoded.json.clone(),
        )
            .into_response()
    }
}

fn openapi_document(api: &Api, group: &str, version: &str) -> Response {
    match openapi::group_version(group, version, &api.crds.served()) {
        Some(doc) => Json(&*doc).into_response(),
        None => ApiError::not_found_path(&format!("/openapi/v3/{group}/{version}")).into_response(),
    }
}

/// `/api` or `/apis`: aggregated discovery when the client asks for it, else the legacy lists.
fn discovery_root(api: &Api, headers: &axum::http::HeaderMap, core: bool) -> Response {
    let accept = rest::header_str(headers, header::ACCEPT);
    match discovery::aggregated_version(accept) {
        Some(version) => (
            [(
                header::CONTENT_TYPE,
                discovery::aggregated_content_type(version),
            )],
            Json(discovery::aggregated(core, version, &api.crds.all())),
        )
            .into_response(),
        None if core => Json(discovery::api_versions(&api.server_address)).into_response(),
        None => Json(discovery::api_groups(&api.crds.all())).into_response(),
    }
}

fn group_version(api: &Api, group: &str, version: &str) -> Response {
    match discovery::resource_list(group, version, &api.crds.all()) {
        Some(list) => Json(list).into_response(),
        None => ApiError::not_found_path(&format!("/apis/{group}/{version}")).into_response(),
    }
}
