//! The case data keys (README, Party data; `duijie_common::sealing`): the audit service is their
//! custodian. A key is made for the agency that opens a case, kept wrapped by the master key,
//! given to the case's current holder on request, and erased on a supervisor's order; every
//! release goes into the append-only `audit_key_releases`.

use chrono::{DateTime, Utc};
use duijie_common::sealing::Key;
use duijie_common::server::ApiError;
use duijie_domain::AgencyNode;
use duijie_proto::v1::AgencyKind;
use secrecy::{ExposeSecret as _, SecretString};
use sqlx::PgConnection;
use uuid::Uuid;

/// The key custody's configuration (`audit.keys`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct KeysConfig {
    /// The master key that wraps every case key: 64 hex digits, from the environment only
    /// (`DUIJIE_AUDIT__KEYS__MASTER_KEY`) or a KMS in front of it. Losing it loses every case's
    /// party data; never logged.
    pub master_key: Option<SecretString>,
}

impl KeysConfig {
    /// The master key; the service does not start without one.
    pub fn master(&self) -> anyhow::Result<Key> {
        let hex = self
            .master_key
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("audit.keys.master_key is not set (DUIJIE_AUDIT__KEYS__MASTER_KEY, 64 hex digits): case keys could not be kept"))?;
        Key::from_hex(hex.expose_secret())
    }
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    wrapped: Option<Vec<u8>>,
    issued_to: String,
    first_holder: String,
    erased_at: Option<DateTime<Utc>>,
}

/// How a key row is read.
#[derive(Clone, Copy)]
enum Lock {
    /// A release: an erasure waits for it.
    Share,
    /// An erasure.
    Update,
}

async fn row(conn: &mut PgConnection, case_id: Uuid, lock: Lock) -> Result<Option<KeyRow>, ApiError> {
    let sql = match lock {
        Lock::Share => "SELECT wrapped, issued_to, first_holder, erased_at FROM audit_case_keys WHERE case_id = $1 FOR SHARE",
        Lock::Update => "SELECT wrapped, issued_to, first_holder, erased_at FROM audit_case_keys WHERE case_id = $1 FOR UPDATE",
    };
    sqlx::query_as(sql).bind(case_id).fetch_optional(conn).await.map_err(|e| ApiError::Unexpected(anyhow::Error::new(e).context("reading a case key")))
}

async fn record(conn: &mut PgConnection, case_id: Uuid, who: &str, action: &str, purpose: &str) -> Result<(), ApiError> {
    sqlx::query("INSERT INTO audit_key_releases (case_id, agency, action, purpose) VALUES ($1, $2, $3, $4)")
        .bind(case_id)
        .bind(who)
        .bind(action)
        .bind(purpose)
        .execute(conn)
        .await
        .map_err(|e| ApiError::Unexpected(anyhow::Error::new(e).context("recording a key release")))?;
    Ok(())
}

fn unwrap(master: &Key, case_id: Uuid, r: &KeyRow) -> Result<Key, ApiError> {
    let wrapped = r.wrapped.as_ref().ok_or_else(erased)?;
    master
        .unwrap_key(case_id, wrapped)
        .map_err(|e| ApiError::Unexpected(anyhow::anyhow!("case key of {case_id} does not unwrap with the master key: {e}")))
}

fn erased() -> ApiError {
    ApiError::FailedPrecondition("the case's data key was erased: its parties' data can no longer be read".into())
}

/// The key of case `case_id` for `who`, who opens it (its referrer, or the body registering it):
/// made on the first call, the same one on a retry by the same agency.
pub async fn issue(conn: &mut PgConnection, master: &Key, case_id: Uuid, who: &AgencyNode, holder: &AgencyNode) -> Result<Key, ApiError> {
    if matches!(who.kind(), AgencyKind::Supervisor | AgencyKind::Bus) {
        return Err(ApiError::PermissionDenied(format!("{who}: only an agency that opens a case gets its key")));
    }
    let name = who.to_string();
    // A case the log already has is its referrer's to seal (an amendment): nobody else may
    // claim its key (e.g. a case opened before party data was sealed).
    let referrer: Option<(String, String)> =
        sqlx::query_as("SELECT referrer_kind, referrer_code FROM audit_cases WHERE case_id = $1 AND NOT refused_only")
            .bind(case_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| ApiError::Unexpected(anyhow::Error::new(e).context("reading the case's referrer")))?;
    if let Some((kind, code)) = referrer
        && !(who.kind_str() == kind && who.code() == code)
    {
        return Err(ApiError::PermissionDenied(format!("{who}: only the referrer of case {case_id} seals its parties' data")));
    }
    let fresh = Key::generate().map_err(ApiError::Unexpected)?;
    let wrapped = master.wrap(case_id, &fresh).map_err(ApiError::Unexpected)?;
    // One statement, so two concurrent retries of one submit end with one key.
    let inserted = sqlx::query(
        "INSERT INTO audit_case_keys (case_id, wrapped, issued_to, first_holder) VALUES ($1, $2, $3, $4) ON CONFLICT (case_id) DO NOTHING",
    )
    .bind(case_id)
    .bind(&wrapped)
    .bind(&name)
    .bind(holder.to_string())
        .execute(&mut *conn)
        .await
        .map_err(|e| ApiError::Unexpected(anyhow::Error::new(e).context("storing a case key")))?
        .rows_affected()
        == 1;
    let key = if inserted {
        fresh
    } else {
        let r = row(conn, case_id, Lock::Share).await?.ok_or_else(|| ApiError::Unexpected(anyhow::anyhow!("case key {case_id} vanished")))?;
        if r.erased_at.is_some() {
            return Err(erased());
        }
        if r.issued_to != name {
            return Err(ApiError::PermissionDenied(format!("{who}: the key of case {case_id} was made for another agency")));
        }
        unwrap(master, case_id, &r)?
    };
    record(conn, case_id, &name, "issued", "").await?;
    Ok(key)
}

/// The key of case `case_id` for `who`, which must be the case's current holder (as the log
/// has it) — or, while the log has not recorded the case yet, the agency it was made for or
/// the body it was sent to.
pub async fn open(conn: &mut PgConnection, master: &Key, case_id: Uuid, who: &AgencyNode, purpose: &str) -> Result<Key, ApiError> {
    let name = who.to_string();
    // Shared lock: an erasure (which locks the row for update) waits for this release to be
    // recorded, or this release sees the key erased — never a key handed out after its erasure.
    let r = row(conn, case_id, Lock::Share).await?.ok_or_else(|| ApiError::NotFound(format!("no data key for case {case_id}")))?;
    if r.erased_at.is_some() {
        return Err(erased());
    }
    let holder: Option<(String, String)> =
        sqlx::query_as("SELECT holder_kind, holder_code FROM audit_cases WHERE case_id = $1 AND NOT refused_only")
            .bind(case_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| ApiError::Unexpected(anyhow::Error::new(e).context("reading the case's holder")))?;
    let allowed = match &holder {
        Some((kind, code)) => who.kind_str() == kind && who.code() == code,
        None => r.issued_to == name || r.first_holder == name,
    };
    if !allowed {
        return Err(ApiError::PermissionDenied(format!("{who}: only the holder of case {case_id} reads its parties' data")));
    }
    let key = unwrap(master, case_id, &r)?;
    record(conn, case_id, &name, "opened", purpose).await?;
    Ok(key)
}

/// Erases the key of case `case_id` on `who`'s order (a supervisor of the case's region).
/// Returns when it was erased (now, or earlier).
pub async fn erase(conn: &mut PgConnection, case_id: Uuid, who: &AgencyNode, reason: &str) -> Result<DateTime<Utc>, ApiError> {
    if who.kind() != AgencyKind::Supervisor {
        return Err(ApiError::PermissionDenied(format!("{who}: erasing a case's data is a supervisor's decision")));
    }
    if reason.trim().is_empty() {
        return Err(ApiError::invalid("reason", "the lawful ground for erasing is required"));
    }
    let region: Option<bool> = sqlx::query_scalar("SELECT referrer_code LIKE $2 || '%' OR holder_code LIKE $2 || '%' FROM audit_cases WHERE case_id = $1")
        .bind(case_id)
        .bind(who.code())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| ApiError::Unexpected(anyhow::Error::new(e).context("reading the case's region")))?;
    if region != Some(true) {
        return Err(ApiError::NotFound(format!("no case {case_id} in region {}", who.code())));
    }
    let r = row(conn, case_id, Lock::Update).await?.ok_or_else(|| ApiError::NotFound(format!("no data key for case {case_id}")))?;
    if let Some(at) = r.erased_at {
        return Ok(at);
    }
    let at: DateTime<Utc> = sqlx::query_scalar(
        "UPDATE audit_case_keys SET wrapped = NULL, erased_at = now(), erased_by = $2, erase_reason = $3 WHERE case_id = $1 RETURNING erased_at",
    )
    .bind(case_id)
    .bind(who.to_string())
    .bind(reason)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| ApiError::Unexpected(anyhow::Error::new(e).context("erasing a case key")))?;
    record(conn, case_id, &who.to_string(), "erased", reason).await?;
    Ok(at)
}

/// The key of a case for the audit service's own use (the parties' lookup compares a party's
/// identity suffix): `None` if it has none or it was erased.
/// Each use is recorded as a release to the audit service itself, for `via`'s lookup.
pub async fn for_lookup(conn: &mut PgConnection, master: &Key, case_id: Uuid, via: &str) -> anyhow::Result<Option<Key>> {
    let wrapped: Option<Option<Vec<u8>>> = sqlx::query_scalar("SELECT wrapped FROM audit_case_keys WHERE case_id = $1 FOR SHARE")
        .bind(case_id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(key) = wrapped.flatten().and_then(|w| master.unwrap_key(case_id, &w).ok()) else { return Ok(None) };
    record(conn, case_id, duijie_common::signing::AUDIT_SIGNER, "opened", &format!("parties' lookup via {via}")).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Some(key))
}

/// Every release of the case's key, oldest first: (agency, when, action, purpose).
pub async fn releases(conn: &mut PgConnection, case_id: Uuid) -> anyhow::Result<Vec<(String, DateTime<Utc>, String, String)>> {
    Ok(sqlx::query_as("SELECT agency, at, action, purpose FROM audit_key_releases WHERE case_id = $1 ORDER BY id")
        .bind(case_id)
        .fetch_all(conn)
        .await?)
}
