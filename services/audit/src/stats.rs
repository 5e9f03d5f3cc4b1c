//! The supervisors' statistics, defined once (every API and page that shows them calls
//! [`statistics`]).
//!
//! Selection: the cases alive in the period (received before its end, not closed before its
//! start), of the region (referrer or holder code starts with it), channel and agency (as
//! referrer or holder). Each figure counts events that happened in the half-open period
//! `[from, to)`, by the time the agency says it happened:
//!
//! | figure | counts |
//! |---|---|
//! | received | referrals (the case's first record); by source = the referrer's kind (`self_accepted`: a mediation body registered the case itself) |
//! | signed_for / accepted / rejected | first Receipt / Accept / Reject |
//! | mediated | outcomes reported (settled + failed + withdrawn) |
//! | settled / failed | outcomes of that kind |
//! | mediation_rate | mediated / received |
//! | success_rate | settled / mediated |
//! | confirmations_requested / granted | first ConfirmationRequest / ConfirmationDecision GRANTED |
//! | overdue | cases with a limit that fell due before the end of the period (or now, if earlier) and was not met by then |
//! | closed | cases that reached CLOSED; days to closure = closed − received, median and 90th percentile |

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

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
#[derive(Debug, Clone, Default, PartialEq, sqlx::FromRow)]
pub struct Figures {
    pub received: i64,
    pub received_self_accepted: i64,
    pub received_court: i64,
    pub received_police: i64,
    pub received_petition: i64,
    pub received_procuratorate: i64,
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

const QUERY: &str = "
WITH sel AS (
    SELECT * FROM audit_cases c
    WHERE c.received_at < $2 AND (c.closed_at IS NULL OR c.closed_at >= $1)
      AND ($3 = '' OR c.referrer_code LIKE $3 || '%' OR c.holder_code LIKE $3 || '%')
      AND ($4 = 0 OR c.channel = $4)
      AND ($5 = '' OR (c.referrer_kind = $5 AND c.referrer_code = $6) OR (c.holder_kind = $5 AND c.holder_code = $6))
), late AS (
    SELECT DISTINCT d.case_id FROM audit_deadlines d JOIN sel USING (case_id)
    WHERE d.due_at < LEAST($2, now()) AND (d.met_at IS NULL OR d.met_at > d.due_at)
)
SELECT
    count(*) FILTER (WHERE received_at >= $1) AS received,
    count(*) FILTER (WHERE received_at >= $1 AND referrer_kind = 'mediation') AS received_self_accepted,
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
    count(late.case_id) AS overdue,
    count(*) FILTER (WHERE closed_at >= $1 AND closed_at < $2 AND state = 'CLOSED') AS closed,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM closed_at - received_at)::float8 / 86400)
        FILTER (WHERE closed_at >= $1 AND closed_at < $2 AND state = 'CLOSED') AS median_days_to_closure,
    percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM closed_at - received_at)::float8 / 86400)
        FILTER (WHERE closed_at >= $1 AND closed_at < $2 AND state = 'CLOSED') AS p90_days_to_closure
FROM sel LEFT JOIN late USING (case_id)";

/// The figures for `sel`.
pub async fn statistics(pool: &PgPool, sel: &Selection) -> anyhow::Result<Figures> {
    let (kind, code) = sel.agency.clone().unwrap_or_default();
    sqlx::query_as(QUERY)
        .bind(sel.from)
        .bind(sel.to)
        .bind(&sel.region)
        .bind(sel.channel)
        .bind(kind)
        .bind(code)
        .fetch_one(pool)
        .await
        .context("computing the statistics")
}
