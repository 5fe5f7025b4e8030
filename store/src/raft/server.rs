//! The answering side of peer connections: accepts mutual-TLS connections on the peer port,
//! reads request frames and answers each as soon as its handler is done (many at once per
//! connection; Raft appends, which a leader sends one at a time, in turn as they are read).
//! Answers are written by the task that made them (`outbox.rs`). A connection whose client presented no certificate is closed whatever the TLS
//! configuration allowed: only members holding a certificate of the cluster's CA may speak.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::client::{NetworkFaults, PeerWriter};
use super::outbox::Outbox;
use super::wire::{
    encode_frame, read_frame, Header, Request, RequestFrame, Response, ResponseFrame,
};

/// How long a peer may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What answers peer requests (the store member).
pub(crate) trait Handler: Send + Sync + 'static {
    fn handle(&self, header: Header, request: Request) -> impl Future<Output = Response> + Send;
}

async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, not held across the caller's awaits.
    let _ = stop.wait_for(|stopped| *stopped).await.map(|_| ());
}

/// Accepts peer connections until `stop` turns true.
pub(crate) async fn serve<H: Handler>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handler: Arc<H>,
    faults: NetworkFaults,
    stop: watch::Receiver<bool>,
) {
    let mut stopped = stop.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, remote)) => {
                    tokio::spawn(connection(
                        tcp,
                        remote,
                        acceptor.clone(),
                        Arc::clone(&handler),
                        faults.clone(),
                        stop.clone(),
                    ));
                }
                Err(err) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(%err, "accepting a peer connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = until_stopped(&mut stopped) => return,
        }
    }
}

async fn connection<H: Handler>(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    handler: Arc<H>,
    faults: NetworkFaults,
    mut stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            tracing::warn!(%remote, %err, "refused a store peer connection: TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::warn!(%remote, "refused a store peer connection: TLS handshake timed out");
            return;
        }
    };
    if tls
        .get_ref()
        .1
        .peer_certificates()
        .is_none_or(|certs| certs.is_empty())
    {
        tracing::warn!(%remote, "refused a store peer connection without a client certificate");
        return;
    }
    let (mut reader, writer) = tokio::io::split(tls);
    let out = Outbox::new(Box::new(writer) as PeerWriter);
    loop {
        let frame = tokio::select! {
            frame = read_frame::<_, RequestFrame>(&mut reader) => frame,
            () = until_stopped(&mut stop) => break,
            // A write failed: the stream is unusable.
            () = out.closed() => break,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(err) => {
                tracing::debug!(%remote, %err, "store peer connection ended");
                break;
            }
        };
        if faults.drops(frame.header.from) {
            continue;
        }
        let inline = matches!(frame.body, Request::AppendEntries(_));
        let handler = Arc::clone(&handler);
        let out = Arc::clone(&out);
        let answer = async move {
            let RequestFrame { id, header, body } = frame;
            let kind = body.kind();
            let response = handler.handle(header, body).await;
            match encode_frame(&ResponseFrame { id, body: response }) {
                Ok(bytes) => {
                    if let Err(err) = out.send(bytes).await {
                        tracing::debug!(%err, kind, "answering a store peer");
                    }
                }
                Err(err) => tracing::error!(%err, kind, "encoding a peer response"),
            }
        };
        // A leader's appends (heartbeats included) come one at a time: openraft 0.9's
        // replication waits for each answer before it sends the next. Answered here, they hold
        // nothing up and spare every write a hand-off to a task of its own; everything else
        // (forwarded requests, votes, snapshots) is answered concurrently.
        if inline {
            answer.await;
        } else {
            tokio::spawn(answer);
        }
    }
    out.close();
}
