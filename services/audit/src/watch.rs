//! Deadline notices: a running limit due within `warn_before` gets a DeadlineWarning, a limit
//! past due a DeadlineBreached, each sent once (again after an extension moves the due time) to
//! the referring agency and to the holder, through the audit service's outbox.

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use duijie_common::amqp::Topology;
use duijie_domain::AgencyNode;
use duijie_common::envelope::{self, Header, timestamp as ts};
use duijie_common::outbox::{self, RelayWaker};
use duijie_common::CancellationToken;
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::{AgencyKind, Channel, Deadline, DeadlineBreached, DeadlineWarning, TimeLimit};
use sqlx::PgPool;
use uuid::Uuid;

/// The agency code the audit service signs its notices with (kind `bus`).
pub const NOTICE_SENDER_CODE: &str = "audit";

#[derive(sqlx::FromRow)]
struct Due {
    case_id: Uuid,
    time_limit: i32,
    started_at: DateTime<Utc>,
    due_at: DateTime<Utc>,
    case_code: String,
    channel: i32,
    clock_policy: i32,
    referrer_kind: String,
    referrer_code: String,
    holder_kind: String,
    holder_code: String,
    /// The court a confirmation was applied to, when it is not the referrer (its limits are
    /// the court's to meet).
    court_kind: Option<String>,
    court_code: Option<String>,
    breached: bool,
}

fn duration(d: chrono::Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.num_seconds().max(0), nanos: 0 }
}

/// One pass: stages the notices now due; returns how many envelopes it staged.
pub async fn notify_once(pool: &PgPool, topology: &Topology, warn_before: Duration) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await.context("beginning")?;
    let due: Vec<Due> = sqlx::query_as(
        "SELECT d.case_id, d.time_limit, d.started_at, d.due_at, c.case_code, c.channel, c.clock_policy,
                c.referrer_kind, c.referrer_code, c.holder_kind, c.holder_code, c.court_kind, c.court_code,
                d.due_at <= now() AS breached
         FROM audit_deadlines d JOIN audit_cases c USING (case_id)
         WHERE d.met_at IS NULL AND c.closed_at IS NULL
           AND ((d.due_at <= now() AND d.breached_at IS NULL)
             OR (d.due_at > now() AND d.due_at <= now() + $1 AND d.warned_at IS NULL))
         ORDER BY d.due_at
         LIMIT 500
         FOR UPDATE OF d SKIP LOCKED",
    )
    .bind(chrono::Duration::from_std(warn_before).unwrap_or(chrono::Duration::hours(24)))
    .fetch_all(&mut *tx)
    .await
    .context("finding limits that are near or past")?;
    let now = Utc::now();
    let mut staged = 0;
    for d in &due {
        let limit = TimeLimit::try_from(d.time_limit).unwrap_or(TimeLimit::Unspecified);
        let deadline = Deadline {
            limit: d.time_limit,
            policy: d.clock_policy,
            legal_basis: duijie_domain::deadlines::legal_basis(limit).to_owned(),
            started_at: Some(ts(d.started_at)),
            due_at: Some(ts(d.due_at)),
            working_days: matches!(limit, TimeLimit::PoliceRoundOne | TimeLimit::PoliceRoundTwo),
            ..Default::default()
        };
        let payload = if d.breached {
            Payload::DeadlineBreached(DeadlineBreached { deadline: Some(deadline), overdue_by: Some(duration(now - d.due_at)) })
        } else {
            Payload::DeadlineWarning(DeadlineWarning { deadline: Some(deadline), remaining: Some(duration(d.due_at - now)) })
        };
        let mut recipients = Vec::new();
        let court = d.court_kind.as_ref().zip(d.court_code.as_ref());
        for (kind, code) in [(&d.referrer_kind, &d.referrer_code), (&d.holder_kind, &d.holder_code)].into_iter().chain(court) {
            if let Some(k) = AgencyKind::parse(kind)
                && let Ok(node) = AgencyNode::new(k, code)
                && !recipients.contains(&node)
            {
                recipients.push(node);
            }
        }
        for to in recipients {
            let header = Header {
                case_id: d.case_id,
                case_code: d.case_code.clone(),
                channel: Channel::try_from(d.channel).unwrap_or(Channel::Unspecified),
                sender: AgencyNode::new(AgencyKind::Bus, NOTICE_SENDER_CODE)?,
                recipient: to,
                causation_id: None,
            };
            let mut env = envelope::build(&header, payload.clone());
            outbox::stage(&mut tx, topology, &mut env).await.context("staging a deadline notice")?;
            staged += 1;
        }
        let column = if d.breached { "breached_at" } else { "warned_at" };
        sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE audit_deadlines SET {column} = now() WHERE case_id = $1 AND time_limit = $2")))
            .bind(d.case_id)
            .bind(d.time_limit)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await.context("committing the notices")?;
    let breaches = due.iter().filter(|d| d.breached).count() as u64;
    ::metrics::counter!("duijie_deadline_breaches_total").increment(breaches);
    ::metrics::counter!("duijie_deadline_warnings_total").increment(due.len() as u64 - breaches);
    Ok(staged)
}

/// Runs [`notify_once`] every `every` until `shutdown`.
pub async fn run(
    pool: PgPool,
    topology: Topology,
    waker: RelayWaker,
    warn_before: Duration,
    every: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        match notify_once(&pool, &topology, warn_before).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(notices = n, "deadline notices staged");
                waker.wake();
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "deadline scan failed; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
    }
}
