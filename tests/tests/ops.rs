//! What an operator's tools see (issue #16): every service's `/metrics` as Prometheus scrapes
//! it, the plaintext health port Kubernetes probes, and `duijie-<service> migrate`, the
//! deployment's migration job.

use std::collections::HashMap;
use std::process::Stdio;

use duijie_proto::v1::*;
use duijie_tests::browser::http;
use duijie_tests::stack::{self, Stack, agency_ref, referral};
use duijie_tests::wait_until;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// One scrape of `addr`'s `/metrics`: each sample line's series (`name{labels}`) and value.
async fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<HashMap<String, f64>> {
    let (status, resp) = http(addr, "GET", "/metrics", &[], "").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}: {resp}");
    anyhow::ensure!(resp.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "not Prometheus text: {resp}");
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let mut samples = HashMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| anyhow::anyhow!("not a sample line: {line}"))?;
        samples.insert(series.to_owned(), value.parse()?);
    }
    Ok(samples)
}

/// The value of the first series named `name` whose labels include every one of `labels`.
fn value(samples: &HashMap<String, f64>, name: &str, labels: &[&str]) -> Option<f64> {
    samples
        .iter()
        .filter(|(series, _)| series.split('{').next() == Some(name) && labels.iter().all(|l| series.contains(l)))
        .map(|(_, v)| *v)
        .reduce(f64::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_a_referral_from_the_court_s_call_to_the_audit_store() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (court, centre) = (stack.clerk(&stack::court()).await?, stack.clerk(&stack::centre()).await?);
    let court_metrics = stack.service(AgencyKind::Court)?.metrics_addr.ok_or_else(|| anyhow::anyhow!("the court serves no /metrics"))?;
    let audit_metrics = stack.audit.as_ref().and_then(|a| a.metrics_addr).ok_or_else(|| anyhow::anyhow!("the audit service serves no /metrics"))?;

    let id = court.submit(&stack::centre(), "JF-431003-2026-OPS001", referral("ops-1", ClockPolicyKind::CourtPreFiling)).await?;
    centre.wait_for(&id, "DELIVERED").await?;
    // A bad request: refused, and counted under its code.
    let bad = court
        .referrals()
        .submit_referral(SubmitReferralRequest { to: Some(agency_ref(&stack::centre())), case_code: String::new(), referral: None })
        .await;
    assert_eq!(bad.as_ref().map_err(tonic::Status::code).err(), Some(tonic::Code::InvalidArgument));
    // A method no service implements: counted as `unknown`, so callers cannot grow the labels.
    let mut raw = tonic::client::Grpc::new(court.ch.clone());
    raw.ready().await?;
    let nothing: Result<tonic::Response<()>, tonic::Status> = raw
        .unary(tonic::Request::new(()), http::uri::PathAndQuery::from_static("/duijie.v1.NoSuchService/Nothing"), tonic_prost::ProstCodec::default())
        .await;
    assert_eq!(nothing.map_err(|s| s.code()).err(), Some(tonic::Code::Unimplemented));

    wait_until("the audit store to count the referral and the relay to empty the court's outbox", stack::WAIT, || async {
        let (c, a) = (scrape(court_metrics).await?, scrape(audit_metrics).await?);
        Ok(value(&c, "duijie_outbox_depth", &[]) == Some(0.0) && value(&a, "duijie_audit_appended_total", &[]).is_some_and(|n| n >= 2.0))
    })
    .await?;
    let m = scrape(court_metrics).await?;
    let submit = "method=\"/duijie.v1.ReferralsService/SubmitReferral\"";
    assert!(value(&m, "duijie_grpc_requests_total", &[submit, "code=\"Ok\""]).is_some_and(|n| n >= 1.0), "the submit counted as Ok");
    assert!(value(&m, "duijie_grpc_requests_total", &[submit, "code=\"InvalidArgument\""]).is_some_and(|n| n >= 1.0), "the bad request counted");
    assert!(value(&m, "duijie_grpc_requests_total", &["method=\"unknown\"", "code=\"Unimplemented\""]).is_some_and(|n| n >= 1.0));
    assert!(!m.keys().any(|s| s.contains("NoSuchService")), "an unimplemented path is not a label");
    assert!(value(&m, "duijie_grpc_request_seconds_count", &[submit]).is_some_and(|n| n >= 2.0), "latency histogram per method");
    assert!(value(&m, "duijie_relay_published_total", &[]).is_some_and(|n| n >= 1.0));
    assert!(value(&m, "duijie_relay_confirm_seconds_count", &[]).is_some_and(|n| n >= 1.0));
    assert_eq!(value(&m, "duijie_outbox_oldest_age_seconds", &[]), Some(0.0), "an empty outbox has no age");
    assert_eq!(value(&m, "duijie_audit_gate_open", &[]), Some(1.0), "the gate is open");
    assert!(value(&m, "duijie_db_pool_connections", &["pool=\"api\"", "state=\"idle\""]).is_some());
    assert!(value(&m, "duijie_consumer_apply_seconds_count", &["queue=\""]).is_some_and(|n| n >= 1.0), "the centre applied a batch");
    assert_eq!(value(&m, "duijie_dead_letters_total", &[]), None, "nothing dead-lettered");
    let a = scrape(audit_metrics).await?;
    assert!(value(&a, "duijie_audit_lag_seconds", &[]).is_some());
    assert!(value(&a, "duijie_consumer_applied_total", &[".audit.tap.p"]).is_some_and(|n| n >= 2.0), "per tap partition");
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_port_answers_health_in_plaintext_and_says_when_the_service_stops() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let addr = stack.service(AgencyKind::Mediation)?.health_addr.ok_or_else(|| anyhow::anyhow!("no health port"))?;
    let plain = async |addr: std::net::SocketAddr| tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await;
    let mut health = HealthClient::new(plain(addr).await?);
    let status = |r: tonic::Response<tonic_health::pb::HealthCheckResponse>| r.into_inner().status();
    assert_eq!(status(health.check(HealthCheckRequest { service: String::new() }).await?), ServingStatus::Serving);
    wait_until("the audit gate to read open on the probe port", stack::WAIT, || {
        let mut h = health.clone();
        async move { Ok(h.check(HealthCheckRequest { service: "duijie.audit_gate".into() }).await?.into_inner().status() == ServingStatus::Serving) }
    })
    .await?;
    // Only health: the referral API is not on this port.
    let mut referrals = duijie_proto::v1::referrals_service_client::ReferralsServiceClient::new(plain(addr).await?);
    let refused = referrals.submit_referral(SubmitReferralRequest::default()).await;
    assert_eq!(refused.map_err(|s| s.code()).err(), Some(tonic::Code::Unimplemented));
    assert_eq!(
        health.check(HealthCheckRequest { service: "duijie.v1.NoSuchService".into() }).await.map_err(|s| s.code()).err(),
        Some(tonic::Code::NotFound)
    );
    // Stopped (as on SIGTERM): the port goes away with the service, and a probe fails.
    stack.stop_service(AgencyKind::Mediation).await?;
    let answered = match plain(addr).await {
        Ok(ch) => HealthClient::new(ch).check(HealthCheckRequest { service: String::new() }).await.map(|r| r.into_inner().status()).ok(),
        Err(_) => None,
    };
    assert_ne!(answered, Some(ServingStatus::Serving), "a stopped service must not read as serving");
    stack.stop().await
}

/// The service binaries test.sh builds beside this test (`target/debug`).
fn binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(std::path::Path::parent).ok_or_else(|| anyhow::anyhow!("no target directory above {}", exe.display()))?;
    let bin = dir.join(name);
    anyhow::ensure!(bin.exists(), "{} is not built: run `cargo build --workspace --bins` first (scripts/test.sh does)", bin.display());
    Ok(bin)
}

/// `duijie-<svc> migrate` with the configuration of `config/<svc>` and the database `db`.
async fn migrate(svc: &str, db: &duijie_common::config::DatabaseConfig, args: &[&str]) -> anyhow::Result<(Option<i32>, String)> {
    use secrecy::ExposeSecret as _;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tokio::process::Command::new(binary(&format!("duijie-{svc}"))?)
        .args(args)
        .current_dir(&root)
        .env("DUIJIE_CONFIG_DIR", root.join("config").join(svc))
        .env("DUIJIE_DATABASE__HOST", &db.host)
        .env("DUIJIE_DATABASE__PORT", db.port.to_string())
        .env("DUIJIE_DATABASE__USERNAME", &db.username)
        .env("DUIJIE_DATABASE__PASSWORD", db.password.expose_secret())
        .env("DUIJIE_DATABASE__DATABASE", &db.database)
        .env("DUIJIE_DATABASE__ACQUIRE_TIMEOUT_MS", "3000")
        .env("DUIJIE_AMQP__URL", "amqp://nobody:nothing@127.0.0.1:1/%2f")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await?;
    Ok((out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_prepares_a_fresh_database_once_and_exits_without_the_broker() -> anyhow::Result<()> {
    let mut bus = duijie_tests::TestBus::new().await?;
    for svc in ["court", "audit"] {
        let db = bus.extra_database_config().await?;
        // No broker needed (the URL above reaches nothing): a migration job runs before it.
        let (code, out) = migrate(svc, &db, &["migrate"]).await?;
        assert_eq!(code, Some(0), "{svc} migrate: {out}");
        let pool = duijie_common::db::pool(&db);
        let tables: Vec<String> = sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'").fetch_all(&pool).await?;
        assert!(tables.iter().any(|t| t == "outbox") && tables.iter().any(|t| t == "inbox_held"), "{svc}: bus tables in {tables:?}");
        let wanted = if svc == "audit" { "audit_cases" } else { "cases" };
        assert!(tables.iter().any(|t| t == wanted), "{svc}: {wanted} in {tables:?}");
        let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&pool).await?;
        // Again: nothing to do, still success (a pre-upgrade job runs on every release).
        let (code, out) = migrate(svc, &db, &["migrate"]).await?;
        assert_eq!(code, Some(0), "{svc} migrate again: {out}");
        assert_eq!(sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations").fetch_one(&pool).await?, applied);
        pool.close().await;
    }
    // A database that cannot be reached: exit 1 with the reason; an unknown command: exit 2.
    let mut nowhere = bus.extra_database_config().await?;
    nowhere.port = 1;
    let (code, out) = migrate("court", &nowhere, &["migrate"]).await?;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("migrate") && out.contains("migrating"), "says what failed: {out}");
    let (code, out) = migrate("court", &nowhere, &["migrat"]).await?;
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("usage: duijie-court [migrate]"), "{out}");
    bus.cleanup(&[]).await
}
