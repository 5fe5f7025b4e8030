//! The HTTPS listener: TLS with optional client certificates (verified against the cluster
//! CA), HTTP/1.1 and HTTP/2 on one port, the caller's identity attached to each request, and
//! a drain on shutdown (no new connections; open ones end with the process).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::auth::User;
use crate::pki::ClusterPki;

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The TLS configuration: our serving certificate; client certificates optional, but when
/// given they must chain to the cluster CA.
pub fn tls_config(pki: &ClusterPki) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let tls = |e: &dyn std::fmt::Display| ServeError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki.ca_cert_pem.as_bytes()) {
        roots.add(cert.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls(&e))?;
    let chain = CertificateDer::pem_slice_iter(pki.serving_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(&e))?;
    let key = PrivateKeyDer::from_pem_slice(pki.serving_key_pem.as_bytes()).map_err(|e| tls(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// TLS for the store's peer (Raft) traffic, both ends authenticated with certificates of the
/// peer CA (which signs nothing but servers' peer certificates): what the listener accepts
/// and how this server dials the others.
pub fn peer_tls_configs(
    pki: &ClusterPki,
) -> Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>), ServeError> {
    let tls = |e: &dyn std::fmt::Display| ServeError::Tls(format!("peer TLS: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki.peer_ca_cert_pem.as_bytes()) {
        roots.add(cert.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let roots = Arc::new(roots);
    let chain = || {
        CertificateDer::pem_slice_iter(pki.peer_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls(&e))
    };
    let key = || PrivateKeyDer::from_pem_slice(pki.peer_key_pem.as_bytes()).map_err(|e| tls(&e));
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider.clone())
            .build()
            .map_err(|e| tls(&e))?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain()?, key()?)
        .map_err(|e| tls(&e))?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain()?, key()?)
        .map_err(|e| tls(&e))?;
    Ok((Arc::new(server), Arc::new(client)))
}

/// Binds the API port.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Serves `app` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(%err, "accepting a connection failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls_stream = match acceptor.accept(stream).await {
                Ok(s) => s,
                Err(err) => {
                    tracing::debug!(%peer, %err, "TLS handshake failed");
                    return;
                }
            };
            let user = tls_stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map_or(User::Anonymous, |cert| User::from_certificate(cert));
            let service = hyper::service::service_fn(move |mut request| {
                request.extensions_mut().insert(user.clone());
                app.clone().oneshot(request)
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(err) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls_stream), service)
                .await
            {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
        });
    }
}
