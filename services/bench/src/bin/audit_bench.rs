//! `duijie-audit-bench`: fills an audit database with ≥ 10M generated log records (in SQL, over
//! the 13 months up to now, one partition per month) and 1M cases with their projections, then
//! measures through the real `AuditService` gRPC service (mTLS, in process): case-timeline latency
//! p50/p99 over random cases, and the time of a one-year statistics query. Targets: timeline
//! p99 ≤ 10 ms, one-year statistics ≤ 1 s. The filled database is kept and reused by the next
//! run with the same size (`--refill` to start over).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use duijie_bench::append::{AppendShape, append_rate, node, templates};
use duijie_common::CancellationToken;
use duijie_common::certs::DevCa;
use duijie_common::config::DatabaseConfig;
use duijie_proto::v1::audit_service_client::AuditServiceClient;
use duijie_proto::v1::*;
use hdrhistogram::Histogram;
use sqlx::{Connection as _, PgConnection, PgPool};
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(about = "Audit store at scale: case-timeline latency and one-year statistics over ≥ 10M log records")]
struct Args {
    /// Instead: measure the append rate (envelopes per second the audit store records, in
    /// batches of `--batch` as its consumer commits them, one transaction each) with this many
    /// envelopes, on a fresh database `<database>_append`.
    #[arg(long)]
    append: Option<usize>,
    /// Envelopes per batch (transaction) for `--append` (the consumer's `batch_max`).
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Hash chains the audit store spreads cases over for `--append` (`audit.chains`).
    #[arg(long, default_value_t = 1)]
    chains: u32,
    /// Concurrent writers for `--append`, each appending its own share of the cases in its own
    /// transactions (with `--chains` ≥ writers they append different chains).
    #[arg(long, default_value_t = 1)]
    writers: usize,
    /// Log records to generate.
    #[arg(long, default_value_t = 10_000_000)]
    records: i64,
    /// Records per case (cases = records / this).
    #[arg(long, default_value_t = 10)]
    per_case: i64,
    /// Timelines to fetch for the latency figures.
    #[arg(long, default_value_t = 2000)]
    samples: usize,
    /// Runs of the one-year statistics query.
    #[arg(long, default_value_t = 5)]
    stats_runs: usize,
    /// Drop and regenerate the data even if a database of this size exists.
    #[arg(long)]
    refill: bool,
    /// Name of the benchmark database (created next to DUIJIE_DATABASE_URL's).
    #[arg(long, default_value = "duijie_bench_audit")]
    database: String,
    #[arg(long, env = "DUIJIE_DATABASE_URL", default_value = "postgres://duijie:duijie@127.0.0.1:5432/duijie", hide_env_values = true)]
    database_url: String,
}

/// Consecutive stretches of the log, each with its own set of cases.
const BLOCKS: i64 = 10;

async fn fill(pool: &PgPool, records: i64, per_case: i64) -> anyhow::Result<()> {
    let cases = records / per_case;
    let mut conn = pool.acquire().await?;
    sqlx::raw_sql("SET synchronous_commit = off; SET maintenance_work_mem = '512MB'; SET work_mem = '256MB'").execute(&mut *conn).await?;
    // Partitions for the 13 months up to now (the service creates the coming ones).
    sqlx::raw_sql(
        "DO $$ DECLARE m date := date_trunc('month', now() AT TIME ZONE 'UTC')::date; BEGIN
           FOR i IN -13..0 LOOP
             EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF audit_log FOR VALUES FROM (%L) TO (%L)',
               'audit_log_' || to_char(m + make_interval(months => i), 'YYYY_MM'),
               (m + make_interval(months => i))::timestamp AT TIME ZONE 'UTC',
               (m + make_interval(months => i + 1))::timestamp AT TIME ZONE 'UTC');
           END LOOP; END $$",
    )
    .execute(&mut *conn)
    .await
    .context("creating partitions")?;
    sqlx::raw_sql("CREATE TEMP TABLE bench_templates (i int PRIMARY KEY, kind text, env bytea)").execute(&mut *conn).await?;
    let t = templates()?;
    let n_templates = i32::try_from(t.len())?;
    for (i, (kind, env)) in t.iter().enumerate() {
        sqlx::query("INSERT INTO bench_templates VALUES ($1, $2, $3)").bind(i32::try_from(i)?).bind(kind).bind(env).execute(&mut *conn).await?;
    }
    // The log spans 395 days ending now, in `BLOCKS` consecutive blocks of `w` cases each; a
    // case's records are spread over its block (about 40 days, so a timeline touches two or
    // three monthly partitions): record g is in block b = (g-1) / (w·per_case), belongs to case
    // b·w + (g-1) % w and is that case's ((g-1) % (w·per_case)) / w + 1-th record.
    let w = cases / BLOCKS;
    let chunk = 1_000_000;
    let started = Instant::now();
    let mut from = 1;
    while from <= records {
        let to = (from + chunk - 1).min(records);
        sqlx::query(
            "INSERT INTO audit_log (chain, seq, recorded_at, case_id, case_seq, message_id, kind, channel, sender, recipient,
                                    occurred_at, causation_id, trace_id, state_after, envelope, case_prev_hash, hash)
             SELECT 0, g, ts, md5('case' || c)::uuid, k::int, md5('msg' || g)::uuid, t.kind, 1 + (c % 4)::int,
                    'court:4310' || lpad((c % 20)::text, 2, '0'), 'mediation:4310' || lpad((c % 20)::text, 2, '0'),
                    ts, NULL, md5(g::text), 'IN_MEDIATION', t.env, ''::bytea, sha256(int8send(g))
             FROM generate_series($1::bigint, $2::bigint) g,
                  LATERAL (SELECT ((g - 1) / ($3 * $6)) * $3 + (g - 1) % $3 AS c,
                                  ((g - 1) % ($3 * $6)) / $3 + 1 AS k,
                                  now() - interval '395 days' + (g::float8 / $4) * interval '395 days' AS ts) x,
                  bench_templates t
             WHERE t.i = (k - 1) % $5",
        )
        .bind(from)
        .bind(to)
        .bind(w)
        .bind(records as f64)
        .bind(n_templates)
        .bind(per_case)
        .execute(&mut *conn)
        .await
        .context("generating log records")?;
        eprintln!("  {to:>11} records ({:.0?})", started.elapsed());
        from = to + 1;
    }
    sqlx::query("UPDATE audit_chains SET last_seq = $1 WHERE chain = 0").bind(records).execute(&mut *conn).await?;
    // One projection row per case: received with its first record; most signed for and
    // accepted, 70 % with an outcome (60 % of them settled), 60 % closed.
    sqlx::query(
        "INSERT INTO audit_cases (case_id, case_code, channel, referrer_kind, referrer_code, holder_kind, holder_code, state,
                                  state_since, clock_policy, received_at, signed_at, accepted_at, rejected_at, outcome, outcome_at,
                                  confirmation_requested_at, confirmation_granted_at, closed_at, last_case_seq, last_hash, chain)
         SELECT md5('case' || c)::uuid, 'JF-' || c, 1 + (c % 4)::int,
                (ARRAY['court','police','petition','procuratorate'])[1 + c % 4], '4310' || lpad((c % 20)::text, 2, '0'),
                'mediation', '4310' || lpad((c % 20)::text, 2, '0'),
                CASE WHEN c % 10 < 6 THEN 'CLOSED' ELSE 'IN_MEDIATION' END, r + interval '1 day', 1, r,
                CASE WHEN c % 10 < 9 THEN r + interval '1 day' END,
                CASE WHEN c % 20 < 17 THEN r + interval '2 days' END,
                CASE WHEN c % 20 = 17 THEN r + interval '2 days' END,
                CASE WHEN c % 10 < 7 THEN (CASE WHEN c % 10 < 4 THEN 'settled' ELSE 'failed' END) END,
                CASE WHEN c % 10 < 7 THEN r + (10 + c % 30) * interval '1 day' END,
                CASE WHEN c % 10 = 0 THEN r + interval '12 days' END,
                CASE WHEN c % 20 = 0 THEN r + interval '20 days' END,
                CASE WHEN c % 10 < 6 THEN r + (30 + c % 30) * interval '1 day' END,
                $2::int, ''::bytea, 0
         FROM generate_series(0, $1 - 1) c,
              -- the time of the case's first record (see the log above)
              LATERAL (SELECT now() - interval '395 days'
                              + (((c / $4) * $4 * $5 + c % $4 + 1)::float8 / $3) * interval '395 days' AS r) x",
    )
    .bind(cases)
    .bind(i32::try_from(per_case)?)
    .bind(records as f64)
    .bind(w)
    .bind(per_case)
    .execute(&mut *conn)
    .await
    .context("generating cases")?;
    sqlx::query(
        "INSERT INTO audit_deadlines (case_id, time_limit, started_at, due_at, met_at)
         SELECT case_id, 1, signed_at, signed_at + interval '15 days', outcome_at FROM audit_cases WHERE signed_at IS NOT NULL",
    )
    .execute(&mut *conn)
    .await
    .context("generating deadlines")?;
    sqlx::query(
        "UPDATE audit_cases c SET overdue_since = d.due_at FROM audit_deadlines d
         WHERE d.case_id = c.case_id AND (d.met_at IS NULL OR d.met_at > d.due_at)",
    )
    .execute(&mut *conn)
    .await
    .context("noting overdue cases")?;
    for table in ["audit_log", "audit_cases", "audit_deadlines"] {
        // One statement each: VACUUM refuses to run inside the implicit block of a multi-statement string.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}"))).execute(&mut *conn).await?;
    }
    eprintln!("  filled in {:.0?}", started.elapsed());
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(n) = args.append {
        let shape = AppendShape { batch: args.batch, chains: args.chains, writers: args.writers };
        let rate = append_rate(&args.database_url, &args.database, n, shape).await?;
        println!(
            "audit append rate: {n} envelopes in {:.1} s = {:.0} envelopes/s ({:.3} ms each), {} cases, batches of {}, {} chains, {} writers (log verified)",
            rate.seconds,
            rate.per_second(),
            rate.seconds * 1000.0 / n as f64,
            rate.cases,
            shape.batch,
            shape.chains,
            shape.writers
        );
        return Ok(());
    }
    anyhow::ensure!(
        args.per_case > 0 && args.records % (args.per_case * BLOCKS) == 0,
        "--records must be a multiple of {BLOCKS} × --per-case"
    );
    let admin = DatabaseConfig::from_url(&args.database_url)?;
    let mut conn = PgConnection::connect_with(&admin.connect_options()).await.context("connecting to PostgreSQL")?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)").bind(&args.database).fetch_one(&mut conn).await?;
    let cfg = DatabaseConfig { database: args.database.clone(), max_connections: 8, ..admin.clone() };
    let mut reuse = false;
    if exists && !args.refill {
        let pool = duijie_common::db::pool(&cfg);
        let head: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM audit_chains WHERE chain = 0").fetch_optional(&pool).await.ok().flatten();
        reuse = head == Some(args.records);
        pool.close().await;
    }
    if !reuse {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, args.database))).execute(&mut conn).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{}""#, args.database))).execute(&mut conn).await?;
    }
    let _ = conn.close().await;
    let pool = duijie_common::db::pool(&cfg);
    duijie_audit::migrator().run(&pool).await.context("migrating")?;
    if reuse {
        eprintln!("reusing {} with {} records (--refill to regenerate)", args.database, args.records);
    } else {
        eprintln!("filling {} with {} records, {} cases", args.database, args.records, args.records / args.per_case);
        fill(&pool, args.records, args.per_case).await?;
    }
    // As autovacuum would have by now (index-only scans need the visibility map).
    sqlx::raw_sql("VACUUM ANALYZE audit_cases").execute(&pool).await?;
    let size: String = sqlx::query_scalar("SELECT pg_size_pretty(pg_database_size(current_database()))").fetch_one(&pool).await?;
    let partitions: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'audit_log'")
        .fetch_one(&pool)
        .await?;

    // The real AuditService over mTLS, in this process.
    let ca = DevCa::generate("bench CA")?;
    let server_tls = ca.agency(&node(AgencyKind::Court, "bench")?)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let routes = tonic::service::Routes::new(duijie_audit::api::AuditApi::server(pool.clone()));
    let token = shutdown.clone();
    let server = tokio::spawn(async move {
        duijie_common::server::serve("audit", listener, routes, &server_tls, token, Duration::from_secs(5)).await
    });
    let supervisor = ca.agency(&node(AgencyKind::Supervisor, "4310")?)?;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost")
        .identity(tonic::transport::Identity::from_pem(&supervisor.cert, &supervisor.key));
    let channel = tonic::transport::Channel::from_shared(format!("https://{addr}"))?.tls_config(tls)?.connect().await?;
    let mut client = AuditServiceClient::new(channel);

    // Case timelines of random cases (a warm-up pass first, as a running service would be).
    let cases = args.records / args.per_case;
    let pick = |i: usize| -> i64 { (i as i64).wrapping_mul(2_654_435_761).rem_euclid(cases) };
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT md5('case' || c)::uuid FROM unnest($1::bigint[]) c")
        .bind((0..args.samples).map(pick).collect::<Vec<_>>())
        .fetch_all(&pool)
        .await?;
    for id in ids.iter().take(200) {
        client.get_timeline(GetTimelineRequest { case_id: id.to_string(), ..Default::default() }).await?;
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut records_seen = 0;
    for id in &ids {
        let t = Instant::now();
        let tl = client.get_timeline(GetTimelineRequest { case_id: id.to_string(), ..Default::default() }).await?.into_inner();
        hist.record(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX))?;
        records_seen += tl.records.len();
    }

    // One-year statistics for the whole region.
    let now = chrono::Utc::now();
    let year = GetStatisticsRequest {
        from: Some(prost_types::Timestamp { seconds: (now - chrono::Duration::days(365)).timestamp(), nanos: 0 }),
        to: Some(prost_types::Timestamp { seconds: now.timestamp(), nanos: 0 }),
        region: "4310".into(),
        ..Default::default()
    };
    let mut runs = Vec::new();
    let mut figures = GetStatisticsResponse::default();
    for _ in 0..args.stats_runs.max(1) {
        let t = Instant::now();
        figures = client.get_statistics(year.clone()).await?.into_inner();
        runs.push(t.elapsed());
    }
    let mut sorted = runs.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];

    let ms = |us: u64| us as f64 / 1000.0;
    println!("audit store benchmark (database {}, {size}, {partitions} partitions)", args.database);
    println!("  log records            {:>12}", args.records);
    println!("  cases                  {:>12}", cases);
    println!(
        "  case timeline (gRPC)   p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  over {} cases, {:.1} records each   (target p99 <= 10 ms)",
        ms(hist.value_at_quantile(0.50)),
        ms(hist.value_at_quantile(0.99)),
        ms(hist.max()),
        ids.len(),
        records_seen as f64 / ids.len().max(1) as f64
    );
    println!(
        "  one-year statistics    median {:.0} ms  runs {:?}   (target <= 1000 ms)",
        median.as_secs_f64() * 1000.0,
        runs.iter().map(|d| format!("{:.0} ms", d.as_secs_f64() * 1000.0)).collect::<Vec<_>>()
    );
    println!(
        "    received {} mediated {} settled {} mediation rate {:.3} success rate {:.3} closed {} overdue {} median days {:.1} p90 {:.1}",
        figures.received,
        figures.mediated,
        figures.settled,
        figures.mediation_rate,
        figures.success_rate,
        figures.closed,
        figures.overdue,
        figures.median_days_to_closure,
        figures.p90_days_to_closure
    );
    shutdown.cancel();
    let _ = server.await;
    Ok(())
}
