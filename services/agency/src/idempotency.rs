//! At most once per idempotency key: an action a clerk retries (a second click, a client's
//! retry after a timeout) is answered with the case as it is, not taken again.

use anyhow::Context as _;
use duijie_domain::AgencyNode;
use sqlx::PgConnection;
use uuid::Uuid;

/// What a key says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The first request with this key: take the action.
    First,
    /// A retry: the key was used before, for this case.
    Retry { case_id: Uuid },
}

/// Claims `key` of `owner` for an action on `case_id`, inside the action's transaction (the
/// case row is locked, so a concurrent retry waits and then finds the key).
pub async fn claim(tx: &mut PgConnection, owner: &AgencyNode, key: &str, case_id: Uuid) -> anyhow::Result<Claim> {
    let first = sqlx::query(
        "INSERT INTO action_requests (owner_kind, owner_code, request_id, case_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
    )
    .bind(owner.kind_str())
    .bind(owner.code())
    .bind(key)
    .bind(case_id)
    .execute(&mut *tx)
    .await
    .context("recording the request id")?
    .rows_affected()
        == 1;
    if first {
        return Ok(Claim::First);
    }
    let earlier: Uuid = sqlx::query_scalar("SELECT case_id FROM action_requests WHERE owner_kind = $1 AND owner_code = $2 AND request_id = $3")
        .bind(owner.kind_str())
        .bind(owner.code())
        .bind(key)
        // Read committed: the conflicting insert waited for the first request's commit.
        .fetch_one(tx)
        .await
        .context("reading the earlier request")?;
    Ok(Claim::Retry { case_id: earlier })
}
