//! The supervisors' statistics, defined once (every API and page that shows them calls
//! [`statistics`] or, on connections it holds, [`statistics_on`]).
//!
//! Selection: the cases alive in the period (received before its end, not closed before its
//! start), of the region (referrer or holder code starts with it), channel and agency (as
//! referrer or holder). Each figure counts events that happened in the half-open period
//! `[from, to)`, by the time the agency says it happened:
//!
//! | figure | counts |
//! |---|---|
//! | received | referrals (the case's first record); by source = the referrer's kind (`self_accepted`: a mediation body registered the case itself, CHANNEL_SELF_INTAKE) |
//! | received by intake source | self-accepted cases received, by the intake's `IntakeSource` (来访, 148, 12345, 网上, 网格排查, 部门移交) |
//! | signed_for / accepted / rejected | first Receipt / Accept / Reject |
//! | mediated | outcomes reported (settled + failed + withdrawn) |
//! | settled / failed | outcomes of that kind |
//! | mediation_rate | mediated / received |
//! | success_rate | settled / mediated |
//! | confirmations_requested / granted | first ConfirmationRequest / ConfirmationDecision GRANTED |
//! | overdue | cases with a limit that fell due before the end of the period (or now, if earlier) and was not met by its due time (`audit_cases.overdue_since`) |
//! | closed | cases that reached CLOSED; days to closure = closed − received, median and 90th percentile (`percentile_cont`) |
//! | refused_messages | messages of the selected cases recorded (by recording time) in the period that took no effect: refused by the case's lifecycle or the rights matrix, or for their signature |
//! | signature_refusals | of those, refused for their signature (unsigned, forged, wrong signer), cases known only from refused messages included |
//!
//! A message that was refused counts for nothing else: it moves no case and no date above, and
//! a case known only from refused messages (`audit_cases.refused_only`, e.g. a forged referral)
//! is not a case.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::{Connection as _, PgConnection, PgPool};

/// Which cases the statistics count.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Agency code prefix; empty for all.
    pub region: String,
    /// `Channel` as its number; 0 for all.
    pub channel: i32,
    /// `(kind, code)` of one agency, as referrer or holder.
    pub agency: Option<(String, String)>,
}

/// The figures (see the module documentation for each definition).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub received: i64,
    pub received_self_accepted: i64,
    pub received_court: i64,
    pub received_police: i64,
    pub received_petition: i64,
    pub received_procuratorate: i64,
    /// Self-accepted cases received, by `IntakeSource` (its number, 1…6), every source listed.
    pub received_by_intake_source: Vec<(i32, i64)>,
    pub signed_for: i64,
    pub accepted: i64,
    pub rejected: i64,
    pub mediated: i64,
    pub settled: i64,
    pub failed: i64,
    pub confirmations_requested: i64,
    pub confirmations_granted: i64,
    pub overdue: i64,
    pub closed: i64,
    pub median_days_to_closure: Option<f64>,
    pub p90_days_to_closure: Option<f64>,
    pub refused_messages: i64,
    pub signature_refusals: i64,
}

impl Figures {
    pub fn mediation_rate(&self) -> f64 {
        ratio(self.mediated, self.received)
    }
    pub fn success_rate(&self) -> f64 {
        ratio(self.settled, self.mediated)
    }
}

#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn ratio(a: i64, b: i64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// The cases of the selection (see the module documentation); $1 from, $2 to.
const SELECTION: &str = "NOT c.refused_only AND";

/// [`SELECTION`], cases known only from refused messages included.
const SELECTION_ANY: &str = "
    c.received_at < $2 AND (c.closed_at IS NULL OR c.closed_at >= $1)
    AND ($3 = '' OR c.referrer_code LIKE $3 || '%' OR c.holder_code LIKE $3 || '%')
    AND ($4 = 0 OR c.channel = $4)
    AND ($5 = '' OR (c.referrer_kind = $5 AND c.referrer_code = $6) OR (c.holder_kind = $5 AND c.holder_code = $6))";

/// Every count: plain aggregates, so PostgreSQL scans the selection in parallel.
const COUNTS: &str = "
SELECT
    count(*) FILTER (WHERE received_at >= $1) AS received,
    count(*) FILTER (WHERE received_at >= $1 AND channel = 5) AS received_self_accepted,
    count(*) FILTER (WHERE received_at >= $1 AND channel = 5 AND intake_source = 1) AS intake_walk_in,
    count(*) FILTER (WHERE received_at >= $1 AND channel = 5 AND intake_source = 2) AS intake_hotline_148,
    count(*) FILTER (WHERE received_at >= $1 AND channel = 5 AND intake_source = 3) AS intake_hotline_12345,
    count(*) FILTER (WHERE received_at >= $1 AND channel = 5 AND intake_source = 4) AS intake_online,
    count(*) FILTER (WHERE received_at >= $1 AND channel = 5 AND intake_source = 5) AS intake_grid_screening,
    count(*) FILTER (WHERE received_at >= $1 AND channel = 5 AND intake_source = 6) AS intake_department_transfer,
    count(*) FILTER (WHERE received_at >= $1 AND referrer_kind = 'court') AS received_court,
    count(*) FILTER (WHERE received_at >= $1 AND referrer_kind = 'police') AS received_police,
    count(*) FILTER (WHERE received_at >= $1 AND referrer_kind = 'petition') AS received_petition,
    count(*) FILTER (WHERE received_at >= $1 AND referrer_kind = 'procuratorate') AS received_procuratorate,
    count(*) FILTER (WHERE signed_at >= $1 AND signed_at < $2) AS signed_for,
    count(*) FILTER (WHERE accepted_at >= $1 AND accepted_at < $2) AS accepted,
    count(*) FILTER (WHERE rejected_at >= $1 AND rejected_at < $2) AS rejected,
    count(*) FILTER (WHERE outcome_at >= $1 AND outcome_at < $2) AS mediated,
    count(*) FILTER (WHERE outcome_at >= $1 AND outcome_at < $2 AND outcome = 'settled') AS settled,
    count(*) FILTER (WHERE outcome_at >= $1 AND outcome_at < $2 AND outcome = 'failed') AS failed,
    count(*) FILTER (WHERE confirmation_requested_at >= $1 AND confirmation_requested_at < $2) AS confirmations_requested,
    count(*) FILTER (WHERE confirmation_granted_at >= $1 AND confirmation_granted_at < $2) AS confirmations_granted,
    count(*) FILTER (WHERE overdue_since < LEAST($2, now())) AS overdue,
    count(*) FILTER (WHERE closed_at >= $1 AND closed_at < $2 AND state = 'CLOSED') AS closed
FROM audit_cases c WHERE";

/// Days from referral to closure among the cases closed in the period (an index-only scan of
/// `audit_cases_closure`; an ordered-set aggregate, so apart from the parallel counts).
const DAYS_TO_CLOSURE: &str = "
SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), percentile_cont(0.9) WITHIN GROUP (ORDER BY d)
FROM (SELECT date_part('epoch', closed_at - received_at) / 86400 AS d FROM audit_cases c
      WHERE state = 'CLOSED' AND closed_at >= $1 AND closed_at < $2 AND";

/// Refused messages recorded in the period (a partial index keeps them apart from the log).
const REFUSED: &str = "
SELECT count(*) FILTER (WHERE NOT c.refused_only OR l.refused LIKE 'signature:%'),
       count(*) FILTER (WHERE l.refused LIKE 'signature:%')
FROM audit_log l JOIN audit_cases c USING (case_id)
WHERE l.refused IS NOT NULL AND l.recorded_at >= $1 AND l.recorded_at < $2 AND";

#[derive(sqlx::FromRow)]
struct Counts {
    #[sqlx(skip)]
    refused: (i64, i64),
    received: i64,
    received_self_accepted: i64,
    received_court: i64,
    received_police: i64,
    received_petition: i64,
    received_procuratorate: i64,
    intake_walk_in: i64,
    intake_hotline_148: i64,
    intake_hotline_12345: i64,
    intake_online: i64,
    intake_grid_screening: i64,
    intake_department_transfer: i64,
    signed_for: i64,
    accepted: i64,
    rejected: i64,
    mediated: i64,
    settled: i64,
    failed: i64,
    confirmations_requested: i64,
    confirmations_granted: i64,
    overdue: i64,
    closed: i64,
}

/// Binds the selection's parameters ($1 … $6) in order.
fn bind<'q, O>(
    q: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    sel: &'q Selection,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    let (kind, code) = sel.agency.as_ref().map_or(("", ""), |(k, c)| (k.as_str(), c.as_str()));
    q.bind(sel.from).bind(sel.to).bind(&sel.region).bind(sel.channel).bind(kind).bind(code)
}

/// The figures for `sel` from `pool` (tools and tests): on one connection, and on a second
/// beside it only if one is idle (never waiting for a second while holding one).
pub async fn statistics(pool: &PgPool, sel: &Selection) -> anyhow::Result<Figures> {
    let mut first = pool.acquire().await.context("acquiring a connection")?;
    let mut second = pool.try_acquire();
    statistics_on(&mut first, second.as_deref_mut(), sel).await
}

/// The figures for `sel` on `conn`, and with `second` the two statements side by side (the
/// counts scan in parallel workers; the closure times come from an index) — a call passes a
/// second connection only when one was free at once, so it never waits for one while holding
/// the first.
pub async fn statistics_on(conn: &mut PgConnection, second: Option<&mut PgConnection>, sel: &Selection) -> anyhow::Result<Figures> {
    let (c, (median, p90)) = match second {
        Some(other) => tokio::try_join!(counts(conn, sel), days_to_closure(other, sel))?,
        None => (counts(conn, sel).await?, days_to_closure(conn, sel).await?),
    };
    Ok(Figures {
        received: c.received,
        received_self_accepted: c.received_self_accepted,
        received_court: c.received_court,
        received_police: c.received_police,
        received_petition: c.received_petition,
        received_procuratorate: c.received_procuratorate,
        received_by_intake_source: vec![
            (1, c.intake_walk_in),
            (2, c.intake_hotline_148),
            (3, c.intake_hotline_12345),
            (4, c.intake_online),
            (5, c.intake_grid_screening),
            (6, c.intake_department_transfer),
        ],
        signed_for: c.signed_for,
        accepted: c.accepted,
        rejected: c.rejected,
        mediated: c.mediated,
        settled: c.settled,
        failed: c.failed,
        confirmations_requested: c.confirmations_requested,
        confirmations_granted: c.confirmations_granted,
        overdue: c.overdue,
        closed: c.closed,
        median_days_to_closure: median,
        p90_days_to_closure: p90,
        refused_messages: c.refused.0,
        signature_refusals: c.refused.1,
    })
}

async fn counts(conn: &mut PgConnection, sel: &Selection) -> anyhow::Result<Counts> {
    let mut tx = conn.begin().await.context("beginning")?;
    // No JIT compile for a statement that runs in well under a second.
    sqlx::raw_sql("SET LOCAL jit = off").execute(&mut *tx).await?;
    let mut c: Counts = bind(sqlx::query_as(sqlx::AssertSqlSafe(format!("{COUNTS} {SELECTION} {SELECTION_ANY}"))), sel)
        .fetch_one(&mut *tx)
        .await
        .context("counting")?;
    c.refused = bind(sqlx::query_as(sqlx::AssertSqlSafe(format!("{REFUSED} {SELECTION_ANY}"))), sel)
        .fetch_one(&mut *tx)
        .await
        .context("counting refused messages")?;
    tx.commit().await?;
    Ok(c)
}

async fn days_to_closure(conn: &mut PgConnection, sel: &Selection) -> anyhow::Result<(Option<f64>, Option<f64>)> {
    let mut tx = conn.begin().await.context("beginning")?;
    sqlx::raw_sql("SET LOCAL jit = off; SET LOCAL work_mem = '64MB'").execute(&mut *tx).await?;
    let d: (Option<f64>, Option<f64>) = bind(sqlx::query_as(sqlx::AssertSqlSafe(format!("{DAYS_TO_CLOSURE} {SELECTION} {SELECTION_ANY}) closed"))), sel)
        .fetch_one(&mut *tx)
        .await
        .context("days to closure")?;
    tx.commit().await?;
    Ok(d)
}
