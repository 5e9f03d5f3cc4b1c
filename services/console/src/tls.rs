//! HTTPS with browser certificates (`client_certificate` sign-in): the TLS handshake checks a
//! certificate of the agencies' CA, and the agency named by its common name is attached to
//! every request of the connection — the same rule the gRPC services apply. A connection
//! without a certificate is let through to the public pages only (the parties' lookup).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use duijie_domain::AgencyNode;
use duijie_common::CancellationToken;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::ConsoleTls;

/// What [`PeerAgency`] holds for a connection that presented no certificate: such a browser
/// reaches the public pages (the parties' lookup) and nothing else.
pub const NO_CERTIFICATE: &str = "没有客户端证书";

/// The agency of the browser certificate of this connection.
#[derive(Clone, Debug)]
pub struct PeerAgency(pub Result<AgencyNode, String>);

pub fn acceptor(cfg: &ConsoleTls) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(&cfg.cert)
        .with_context(|| format!("reading {}", cfg.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .context("console certificate")?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key).with_context(|| format!("reading {}", cfg.key.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&cfg.client_ca).with_context(|| format!("reading {}", cfg.client_ca.display()))? {
        roots.add(ca.context("client CA certificate")?).context("client CA certificate")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        // Optional at the handshake so that parties, who hold no certificate, reach the public
        // lookup page; every agency page still requires one (`pages::Me`).
        .allow_unauthenticated()
        .build()
        .context("client certificate verifier")?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("console certificate and key")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections until `shutdown`, then gives those open `grace` to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let agency = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or_else(|| NO_CERTIFICATE.to_owned())
                .and_then(|der| duijie_common::server::agency_of_certificate(der.as_ref()).map_err(|e| e.to_string()));
            // The peer address too, as axum's own server gives it (the parties' lookup counts by it).
            let app = app.layer(axum::Extension(PeerAgency(agency))).layer(axum::Extension(axum::extract::ConnectInfo(peer)));
            let service = TowerToHyperService::new(app);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after the grace period");
    }
    Ok(())
}
