//! The gRPC runtime every agency service shares: mutual TLS names the calling agency, health
//! and `SessionService.WhoAmI` answer, callers without a certificate from the duijie CA are refused,
//! and shutdown drains.

use std::time::Duration;

use duijie_common::CancellationToken;
use duijie_common::certs::DevCa;
use duijie_common::server::{self, TlsPem};
use duijie_proto::v1::session_service_client::SessionServiceClient;
use duijie_proto::v1::{AgencyKind, WhoAmIRequest};
use duijie_tests::node;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

struct Served {
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn serve_court(ca: &DevCa) -> anyhow::Result<Served> {
    let tls = ca.agency(&node(AgencyKind::Court, "431003"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let handle = tokio::spawn(async move {
        server::serve("court", listener, tonic::service::Routes::default(), &tls, token, Duration::from_secs(5)).await
    });
    Ok(Served { addr, shutdown, handle })
}

async fn channel(addr: std::net::SocketAddr, ca_pem: &str, client: Option<&TlsPem>) -> anyhow::Result<Channel> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some(c) = client {
        tls = tls.identity(Identity::from_pem(&c.cert, &c.key));
    }
    Ok(Channel::from_shared(format!("https://{addr}"))?.tls_config(tls)?.connect().await?)
}

#[tokio::test]
async fn the_client_certificate_names_the_calling_agency() -> anyhow::Result<()> {
    let ca = DevCa::generate("duijie test CA")?;
    let served = serve_court(&ca).await?;
    let police = ca.agency(&node(AgencyKind::Police, "431003-01"))?;
    let ch = channel(served.addr, ca.cert_pem(), Some(&police)).await?;

    let me = SessionServiceClient::new(ch.clone()).who_am_i(WhoAmIRequest {}).await?.into_inner();
    let agency = me.agency.ok_or_else(|| anyhow::anyhow!("no agency in the answer"))?;
    assert_eq!((agency.kind(), agency.code.as_str(), me.service.as_str()), (AgencyKind::Police, "431003-01", "court"));

    let health = HealthClient::new(ch).check(HealthCheckRequest { service: String::new() }).await?.into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    served.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), served.handle).await???;
    Ok(())
}

#[tokio::test]
async fn callers_without_a_certificate_from_the_duijie_ca_are_refused() -> anyhow::Result<()> {
    let ca = DevCa::generate("duijie test CA")?;
    let served = serve_court(&ca).await?;

    // No client certificate: the TLS handshake or the first call fails.
    let refused = match channel(served.addr, ca.cert_pem(), None).await {
        Err(_) => true,
        Ok(ch) => SessionServiceClient::new(ch).who_am_i(WhoAmIRequest {}).await.is_err(),
    };
    assert!(refused, "a caller without a certificate was served");

    // A certificate from another CA, claiming to be the court.
    let rogue = DevCa::generate("rogue CA")?.agency(&node(AgencyKind::Court, "431003"))?;
    let refused = match channel(served.addr, ca.cert_pem(), Some(&rogue)).await {
        Err(_) => true,
        Ok(ch) => SessionServiceClient::new(ch).who_am_i(WhoAmIRequest {}).await.is_err(),
    };
    assert!(refused, "a certificate from another CA was accepted");

    // A certificate from the right CA whose name is not an agency.
    let (cert, key) = ca.issue("someone", &["localhost"])?;
    let odd = TlsPem { ca: ca.cert_pem().as_bytes().to_vec(), cert: cert.into_bytes(), key: key.into_bytes() };
    let ch = channel(served.addr, ca.cert_pem(), Some(&odd)).await?;
    let status = SessionServiceClient::new(ch).who_am_i(WhoAmIRequest {}).await.err().ok_or_else(|| anyhow::anyhow!("served"))?;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    served.shutdown.cancel();
    Ok(())
}
