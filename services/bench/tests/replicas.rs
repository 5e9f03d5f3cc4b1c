//! Issue #15: two replicas of the mediation service and two of the audit service, each a
//! process of its own, under a lifecycle load; the mediation replica that consumes the
//! partitions is killed with SIGKILL midway. Every case ends in the same state at its referrer,
//! its holder and the audit store; nothing is applied twice, nothing is dead-lettered, the audit
//! log verifies.
//!
//! Runs on the fault servers (second RabbitMQ node, second PostgreSQL cluster, in the serial
//! nextest group `fault-servers`) so its load does not slow the tests beside it, and on the debug
//! service binaries (`scripts/test.sh` builds them before the tests).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use duijie_bench::stack::{ProcessStack, StackOptions};
use duijie_cli::demo::{self, DemoConfig};
use sqlx::PgPool;

/// Cases driven through their whole lifecycle: 500 in the test suite (about 3 minutes on the debug
/// binaries and 2 cores); `DUIJIE_REPLICA_CASES=2000` for the full run (README, Tests).
fn cases() -> u32 {
    std::env::var("DUIJIE_REPLICA_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(500)
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

/// `state` of every case at each of its agencies: (case id, owner) → state.
async fn states(pool: &PgPool) -> anyhow::Result<HashMap<(String, String), String>> {
    let rows: Vec<(String, String, String)> = sqlx::query_as("SELECT case_id::text, owner_kind || ':' || owner_code, state FROM cases").fetch_all(pool).await?;
    Ok(rows.into_iter().map(|(c, o, s)| ((c, o), s)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mediation_replica_killed_midway_loses_nothing_and_applies_nothing_twice() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize()?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let opts = StackOptions {
        bin_dir: target.join("debug"),
        root: root.clone(),
        amqp_url: env_or("DUIJIE_FAULT_AMQP_URL", "amqp://duijie:duijie@127.0.0.1:5673/%2f"),
        database_url: env_or("DUIJIE_FAULT_DATABASE_URL", "postgres://duijie:duijie@127.0.0.1:5433/duijie"),
    };
    let mut stack = ProcessStack::start(&opts).await?;
    let outcome = run(&mut stack).await;
    stack.stop().await;
    if outcome.is_ok() {
        stack.cleanup().await;
    } else {
        eprintln!("replicas: logs kept in {}", stack.dir.display());
    }
    outcome
}

async fn run(stack: &mut ProcessStack) -> anyhow::Result<()> {
    // The first mediation process started first: it is the active consumer of every mediation
    // partition. A second mediation and a second audit replica join; the clerks talk to the
    // second mediation replica (it answers for the same database).
    let first_mediation = stack.service("mediation")?.pid;
    stack.spawn_replica("audit").await?;
    stack.spawn_replica("mediation").await?;
    let agencies = stack.agencies()?;

    let n = cases();
    let cfg = DemoConfig {
        cases: n,
        seed: 15,
        mixed: false,
        concurrency: 24,
        step_timeout: Duration::from_secs(120),
        poll: Duration::from_millis(500),
        observer: None,
        arrivals: None,
    };
    let progress = indicatif::ProgressBar::hidden();
    progress.set_length(u64::from(n));
    let load = demo::run(&agencies, &cfg, &progress);
    // Midway, SIGKILL the mediation replica that holds the partitions.
    let killer = {
        let progress = progress.clone();
        async move {
            while progress.position() < u64::from(n / 2) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let report = {
        tokio::pin!(load);
        tokio::select! {
            report = &mut load => report,
            () = killer => {
                stack.kill(first_mediation).await?;
                eprintln!("replicas: killed mediation pid {first_mediation} with SIGKILL after {} of {n} cases", progress.position());
                load.await
            }
        }
    };
    let failed: Vec<_> = report.failures().map(|c| format!("{}: {:?}", c.case_code, c.error)).collect();
    assert!(failed.is_empty(), "{} of {n} cases did not go as planned, e.g. {:?}", failed.len(), failed.first());
    assert!(stack.services.iter().all(|s| s.pid != first_mediation), "the killed replica is gone");

    // The audit store catches up with everything sent.
    let amqp = stack.connector.connect("replicas check").await?;
    let ch = amqp.create_channel().await?;
    duijie_bench::system::wait_caught_up(stack, &ch, Duration::from_secs(180)).await?;
    let dead = stack.queue_depth(&ch, &stack.topology.dead_queue()).await?;
    assert_eq!(dead, 0, "nothing dead-lettered");
    let _ = amqp.close(200, "done".into()).await;

    // The same state at the referrer, the holder and the audit store, for every case.
    let audit = stack.service("audit")?.pool.clone();
    let recorded: Vec<(String, String, String, String)> =
        sqlx::query_as("SELECT case_id::text, referrer_kind || ':' || referrer_code, holder_kind || ':' || holder_code, state FROM audit_cases WHERE NOT refused_only")
            .fetch_all(&audit)
            .await?;
    assert_eq!(recorded.len(), usize::try_from(n)?, "every case is in the audit store");
    let mut at: HashMap<(String, String), String> = HashMap::new();
    for name in ["court", "procuratorate", "police", "petition", "mediation"] {
        at.extend(states(&stack.service(name)?.pool).await?);
    }
    let mut differ = Vec::new();
    for (case, referrer, holder, state) in &recorded {
        for side in [referrer, holder] {
            match at.get(&(case.clone(), side.clone())) {
                Some(s) if s == state => {}
                other => differ.push(format!("{case} at {side}: {other:?}, audit store {state}")),
            }
        }
    }
    assert!(differ.is_empty(), "{} sides differ from the audit store, e.g. {:?}", differ.len(), differ.first());

    // Nothing applied twice: one audit record per message, one timeline row per message and
    // agency (the inbox keeps each message once per service, whichever replica applied it).
    let twice: i64 = sqlx::query_scalar("SELECT count(*) FROM (SELECT message_id FROM audit_log GROUP BY message_id HAVING count(*) > 1) d").fetch_one(&audit).await?;
    assert_eq!(twice, 0, "audit records of one message");
    for name in ["court", "procuratorate", "police", "petition", "mediation"] {
        let pool = &stack.service(name)?.pool;
        let twice: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM case_events GROUP BY owner_kind, owner_code, message_id HAVING count(*) > 1) d",
        )
        .fetch_one(pool)
        .await?;
        assert_eq!(twice, 0, "{name}: a message in a timeline twice");
    }

    // The audit log verifies, from the surviving replicas' database.
    let report = duijie_audit::verify::verify_log(&audit).await?;
    assert!(report.broken.is_none(), "the audit log does not verify: {:?}", report.broken);
    eprintln!("replicas: {n} cases, every side agrees, log verified ({} records)", report.records_checked);
    Ok(())
}
