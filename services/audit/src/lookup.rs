//! Parties' lookup by case code (当事人查询, issue #13): a party without an agency certificate
//! types the case code and a second factor into the console's public page, the console asks
//! `LookupCase` with its own certificate, and the answer says where the case stands, who holds
//! it, the next step and its deadline, and nothing else.
//!
//! * **Second factor.** The last six characters of any party's identity number (a trailing X in
//!   either case), or the case's access code: eight characters of HMAC-SHA256 over the case id
//!   with the secret `audit.lookup.access_code_secret` ([`access_code`]), printed on the receipt
//!   the agency hands the party (the console's case page shows it, `GetAccessCode`). Without a
//!   secret, access codes are not accepted.
//! * **One answer for every miss.** A wrong code, a wrong factor and an unknown case are all
//!   [`NOT_FOUND_MESSAGE`]; each attempt runs the same statements and the same comparisons (no
//!   early exit), so the answer's content does not tell them apart.
//! * **Rate limits** counted in the database (`audit_lookups`), so replicas share them: per
//!   client address (attempts answered in a window) and per case code (failed attempts in a
//!   window); over either, [`LIMITED_MESSAGE`] and nothing else. An attempt takes two advisory
//!   locks (address, then code) so concurrent attempts cannot both slip under a limit.
//! * **Recorded.** Every attempt, refused or answered, is a row of the append-only
//!   `audit_lookups`: time, address, code asked, case matched, outcome, which factor kind
//!   matched, the caller — never the factor.

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use duijie_common::config;
use duijie_common::envelope::timestamp as ts;
use duijie_common::server::ApiError;
use duijie_domain::calendar::WorkCalendar;
use duijie_domain::deadlines;
use duijie_proto::v1 as pb;
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::{ClockPolicyKind, Party, PartyRole};
use hmac::{Hmac, Mac as _};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use sqlx::{Connection as _, PgConnection};
use uuid::Uuid;

/// The one answer to a wrong code, a wrong factor or an unknown case.
pub const NOT_FOUND_MESSAGE: &str = "没有与该解纷码和验证信息相符的案件";

/// The answer over a rate limit.
pub const LIMITED_MESSAGE: &str = "查询次数过多，请稍后再试";

/// `audit.lookup` in the audit service's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LookupConfig {
    /// The certificate common names that may call `LookupCase` (the console's own certificate,
    /// `service-console.pem` from `duijie-bus certs --service console`).
    pub callers: Vec<String>,
    /// The secret access codes are derived from (`DUIJIE_AUDIT__LOOKUP__ACCESS_CODE_SECRET`);
    /// none: access codes are neither issued nor accepted. Never logged.
    pub access_code_secret: Option<SecretString>,
    /// At most this many answered attempts from one client address per `address_window_ms`.
    pub address_attempts: u32,
    #[serde(with = "config::duration_ms")]
    pub address_window_ms: Duration,
    /// At most this many failed attempts on one case code per `case_window_ms`; past that the
    /// code answers nobody (not even the right factor) until the window moves on.
    pub case_failures: u32,
    #[serde(with = "config::duration_ms")]
    pub case_window_ms: Duration,
}

impl Default for LookupConfig {
    fn default() -> Self {
        Self {
            callers: vec!["duijie-console".to_owned()],
            access_code_secret: None,
            address_attempts: 10,
            address_window_ms: Duration::from_secs(600),
            case_failures: 5,
            case_window_ms: Duration::from_secs(3600),
        }
    }
}

/// Crockford's base 32: no I, L, O or U, so a code copied by hand is not misread.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The access code of `case_id`: the first 40 bits of HMAC-SHA256(secret, label ‖ case id) in
/// eight characters of Crockford base 32. Deterministic, so the receipt can be printed again.
/// `None` only if the MAC refused the key, which HMAC (any key length) does not.
pub fn access_code(secret: &SecretString, case_id: Uuid) -> Option<String> {
    let mut mac = <Hmac<sha2::Sha256>>::new_from_slice(secret.expose_secret().as_bytes()).ok()?;
    mac.update(b"duijie.lookup.access-code.v1\0");
    mac.update(case_id.as_bytes());
    let tag = mac.finalize().into_bytes();
    let bits = tag.iter().take(5).fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    Some((0..8).rev().map(|i| char::from(ALPHABET[((bits >> (i * 5)) & 31) as usize])).collect())
}

/// A typed code or factor as compared: spaces and hyphens dropped, upper case, and Crockford's
/// look-alikes (O → 0, I and L → 1) read as the digits.
fn normalise_factor(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        })
        .collect()
}

/// Equality without an early exit on the first differing byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The last six characters of an identity number, upper case (a trailing x is X).
fn id_suffix(number: &str) -> Option<String> {
    let chars: Vec<char> = number.trim().chars().collect();
    (chars.len() >= 6).then(|| chars[chars.len() - 6..].iter().map(char::to_ascii_uppercase).collect())
}

/// Which factor matched, and the party it named (none for the access code).
enum Matched<'a> {
    Party(&'a Party),
    AccessCode,
}

/// Compares `factor` with every party's identity suffix and with the access code, all of them
/// whatever matched first, so a miss costs what a hit costs.
fn match_factor<'a>(factor: &str, parties: &'a [Party], code: Option<&str>) -> Option<Matched<'a>> {
    let raw: String = factor.chars().filter(|c| !c.is_whitespace()).map(|c| c.to_ascii_uppercase()).collect();
    let normalised = normalise_factor(factor);
    let mut found = None;
    for p in parties {
        let suffix = p.identity.as_ref().and_then(|i| id_suffix(&i.number)).unwrap_or_default();
        if same(suffix.as_bytes(), raw.as_bytes()) && !suffix.is_empty() && found.is_none() {
            found = Some(Matched::Party(p));
        }
    }
    let code_ok = code.is_some_and(|c| same(c.as_bytes(), normalised.as_bytes()));
    if found.is_none() && code_ok {
        found = Some(Matched::AccessCode);
    }
    found
}

/// A party's name as the lookup shows it: the first character, the rest as `*`.
pub fn mask_name(name: &str) -> String {
    let mut chars = name.trim().chars();
    match chars.next() {
        None => String::new(),
        Some(first) => std::iter::once(first).chain(std::iter::repeat_n('*', chars.count().max(1))).collect(),
    }
}

/// A party's role in plain Chinese.
pub fn role_label(role: i32) -> &'static str {
    use PartyRole as R;
    match PartyRole::try_from(role).unwrap_or(R::Unspecified) {
        R::Applicant => "申请人",
        R::Respondent => "被申请人",
        R::Plaintiff => "原告",
        R::Defendant => "被告",
        R::ThirdParty => "第三人",
        R::Victim => "被害人",
        R::Offender => "当事人",
        R::Petitioner => "信访人",
        R::Other => "利害关系人",
        R::Unspecified => "当事人",
    }
}

/// A state in plain Chinese for a party, and the next step (empty when nothing follows).
pub fn state_for_party(state: &str) -> (&'static str, &'static str) {
    match state {
        "SUBMITTED" => ("已移送调解组织", "调解组织签收案件"),
        "DELIVERED" => ("已送达调解组织", "调解组织签收案件"),
        "RECEIVED" => ("调解组织已签收", "调解组织审查是否受理"),
        "ACCEPTED" => ("已受理", "调解组织指派调解员、组织调解"),
        "IN_MEDIATION" => ("调解中", "调解员组织各方调解，请保持联系方式畅通"),
        "SETTLED" => ("调解成功", "履行调解协议；可依法申请司法确认"),
        "FAILED" => ("调解不成", "移送机构依法继续处理"),
        "WITHDRAWN" => ("已撤回调解", "移送机构依法继续处理"),
        "REJECTED" => ("不予受理", "移送机构依法继续处理"),
        "CONFIRMATION_REQUESTED" => ("已申请司法确认", "人民法院决定是否受理司法确认申请"),
        "CONFIRMATION_ACCEPTED" => ("司法确认已受理", "人民法院审查调解协议"),
        "CONFIRMED" => ("已司法确认", "履行调解协议"),
        "CONFIRMATION_DENIED" => ("司法确认驳回", "移送机构依法继续处理"),
        "PERFORMED" => ("已履行", "调解组织回访"),
        "DEFAULTED" => ("未履行", "移送机构依法继续处理"),
        "FOLLOWED_UP" => ("已回访", "调解组织结案"),
        "DISPOSED" => ("移送机构已处理", "案件办结"),
        "CLOSED" => ("已结案", ""),
        "CANCEL_REQUESTED" => ("移送机构申请撤回中", "调解组织答复撤回申请"),
        "CANCELLED" => ("已撤回", ""),
        _ => ("办理中", ""),
    }
}

/// The parties as the case's latest referral (or revised referral) lists them.
fn parties(payloads: &[(DateTime<Utc>, Payload)]) -> Vec<Party> {
    payloads
        .iter()
        .rev()
        .find_map(|(_, p)| match p {
            Payload::Referral(r) => Some(r.parties.clone()),
            Payload::Amendment(a) => a.revised.as_ref().filter(|r| !r.parties.is_empty()).map(|r| r.parties.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

#[derive(sqlx::FromRow)]
struct Candidate {
    case_id: Uuid,
    case_code: String,
    channel: i32,
    holder_kind: String,
    holder_code: String,
    state: String,
    state_since: DateTime<Utc>,
    clock_policy: i32,
    closed_at: Option<DateTime<Utc>>,
}

/// One attempt as recorded.
struct Attempt<'a> {
    address: &'a str,
    code: &'a str,
    case_id: Option<Uuid>,
    outcome: &'static str,
    factor_kind: Option<&'static str>,
    via: &'a str,
}

async fn record(conn: &mut PgConnection, a: &Attempt<'_>) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO audit_lookups (client_address, case_code, case_id, outcome, factor_kind, via) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(a.address)
    .bind(a.code)
    .bind(a.case_id)
    .bind(a.outcome)
    .bind(a.factor_kind)
    .bind(a.via)
    .execute(conn)
    .await
    .context("recording the lookup")?;
    Ok(())
}

/// Answers one lookup by `via` (the console) on `conn`, recording it.
pub async fn lookup(
    conn: &mut PgConnection,
    cfg: &LookupConfig,
    calendar: &WorkCalendar,
    via: &str,
    req: &pb::LookupCaseRequest,
    master: Option<&duijie_common::sealing::Key>,
) -> Result<pb::LookupCaseResponse, ApiError> {
    let address = req.client_address.trim();
    if address.is_empty() || address.len() > 64 {
        return Err(ApiError::invalid("client_address", "the party's address (IP) is required"));
    }
    duijie_proto::limits::check_line("client_address", address, 64)?;
    // What is recorded and counted: the code as typed, bounded (a pasted essay is not a code),
    // and storable (no control characters: PostgreSQL refuses a NUL in text).
    let code: String = req.case_code.trim().to_uppercase().chars().take(64).collect();
    duijie_proto::limits::check_line("case_code", &code, 64)?;
    let mut tx = conn.begin().await.context("starting the lookup")?;
    // Address first, then code, in every attempt: two attempts wait for each other instead of
    // both counting below a limit, and cannot deadlock.
    sqlx::query("SELECT pg_advisory_xact_lock(1310, hashtext($1))").bind(address).execute(&mut *tx).await.context("locking the address")?;
    sqlx::query("SELECT pg_advisory_xact_lock(1311, hashtext($1))").bind(&code).execute(&mut *tx).await.context("locking the code")?;
    let (by_address, by_code): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM audit_lookups WHERE client_address = $1 AND at > now() - make_interval(secs => $3) AND outcome <> 'limited'),
                (SELECT count(*) FROM audit_lookups WHERE case_code = $2 AND at > now() - make_interval(secs => $4) AND outcome = 'not_found')",
    )
    .bind(address)
    .bind(&code)
    .bind(cfg.address_window_ms.as_secs_f64())
    .bind(cfg.case_window_ms.as_secs_f64())
    .fetch_one(&mut *tx)
    .await
    .context("counting recent lookups")?;
    let mut attempt = Attempt { address, code: &code, case_id: None, outcome: "limited", factor_kind: None, via };
    if by_address >= i64::from(cfg.address_attempts) || by_code >= i64::from(cfg.case_failures) {
        record(&mut tx, &attempt).await?;
        tx.commit().await.context("committing the lookup record")?;
        tracing::info!(by_address, by_code, "lookup refused: rate limit");
        return Err(ApiError::ResourceExhausted(LIMITED_MESSAGE.to_owned()));
    }
    // Every case under the code (normally one); an empty code matches none but costs the same.
    let candidates: Vec<Candidate> = sqlx::query_as(
        "SELECT case_id, case_code, channel, holder_kind, holder_code, state, state_since, clock_policy, closed_at
         FROM audit_cases WHERE upper(case_code) = $1 AND NOT refused_only ORDER BY received_at DESC LIMIT 4",
    )
    .bind(&code)
    .fetch_all(&mut *tx)
    .await
    .context("looking up the case code")?;
    let mut answer = None;
    // With no candidate, the nil id reads nothing: the same statements run for every attempt.
    let ids: Vec<Uuid> = if candidates.is_empty() { vec![Uuid::nil()] } else { candidates.iter().map(|c| c.case_id).collect() };
    for (i, id) in ids.iter().enumerate() {
        let payloads = crate::store::case_payloads(&mut tx, *id).await?;
        let mut listed = parties(&payloads);
        // Identity numbers are sealed with the case's key; once it is erased only the access
        // code still finds the case.
        if let Some(master) = master
            && let Some(key) = crate::keys::for_lookup(&mut tx, master, *id, via).await?
        {
            let mut r = duijie_proto::v1::Referral { parties: listed, ..Default::default() };
            if duijie_common::sealing::open_referral(&key, *id, &mut r).is_err() {
                tracing::warn!(case_id = %id, "a party's sealed data does not open with its case key");
            }
            listed = r.parties;
        }
        let code_of_case = cfg.access_code_secret.as_ref().and_then(|s| access_code(s, *id));
        let matched = match_factor(&req.factor, &listed, code_of_case.as_deref());
        if let (Some(m), Some(case), None) = (matched, candidates.get(i), answer.as_ref()) {
            answer = Some(respond(case, &payloads, &m, calendar));
            attempt.case_id = Some(case.case_id);
            attempt.factor_kind = Some(match m {
                Matched::Party(_) => "id_suffix",
                Matched::AccessCode => "access_code",
            });
        }
    }
    attempt.outcome = if answer.is_some() { "found" } else { "not_found" };
    record(&mut tx, &attempt).await?;
    tx.commit().await.context("committing the lookup record")?;
    answer.ok_or_else(|| ApiError::NotFound(NOT_FOUND_MESSAGE.to_owned()))
}

fn respond(c: &Candidate, payloads: &[(DateTime<Utc>, Payload)], m: &Matched<'_>, calendar: &WorkCalendar) -> pb::LookupCaseResponse {
    let (state_label, mut next_step) = state_for_party(&c.state);
    // A case the body took in itself has no referring agency to take it back: the body closes it.
    if c.channel == duijie_proto::v1::Channel::SelfIntake as i32 && next_step == "移送机构依法继续处理" {
        next_step = "调解组织结案，并告知当事人其他解决途径";
    }
    let open = c.closed_at.is_none() && !next_step.is_empty();
    let now = Utc::now();
    let due = if open {
        let policy = ClockPolicyKind::try_from(c.clock_policy).unwrap_or(ClockPolicyKind::Unspecified);
        let refs: Vec<(DateTime<Utc>, &Payload)> = payloads.iter().map(|(t, p)| (*t, p)).collect();
        deadlines::deadlines(policy, &refs, calendar, now).iter().filter(|d| d.met_at.is_none()).map(|d| d.due_at).min()
    } else {
        None
    };
    let (party_name_masked, party_role_label) = match m {
        Matched::Party(p) => (mask_name(&p.name), role_label(p.role).to_owned()),
        Matched::AccessCode => (String::new(), String::new()),
    };
    pb::LookupCaseResponse {
        case_code: c.case_code.clone(),
        state: c.state.clone(),
        state_label: state_label.to_owned(),
        holder: Some(crate::api::agency_ref(&c.holder_kind, &c.holder_code)),
        next_step: if open { next_step.to_owned() } else { String::new() },
        next_step_due_at: due.map(ts),
        party_name_masked,
        party_role_label,
        state_since: Some(ts(c.state_since)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duijie_proto::v1::{IdDocumentType, IdentityDocument};

    fn party(name: &str, number: &str, role: PartyRole) -> Party {
        Party {
            name: name.into(),
            role: role as i32,
            identity: Some(IdentityDocument { document_type: IdDocumentType::ResidentIdCard as i32, number: number.into() }),
            ..Default::default()
        }
    }

    #[test]
    fn access_codes_are_stable_short_and_per_case() {
        let secret = SecretString::from("test secret");
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(access_code(&secret, a), access_code(&secret, a));
        assert_ne!(access_code(&secret, a), access_code(&secret, b));
        assert_ne!(access_code(&secret, a), access_code(&SecretString::from("other"), a));
        let code = access_code(&secret, a).unwrap_or_default();
        assert_eq!(code.len(), 8);
        assert!(code.bytes().all(|c| ALPHABET.contains(&c)), "{code}");
    }

    #[test]
    fn factors_match_an_id_suffix_or_the_access_code() {
        let ps = vec![party("张三", "11010519491231002X", PartyRole::Applicant), party("李四", "440524188001010014", PartyRole::Respondent)];
        assert!(matches!(match_factor("31002x", &ps, None), Some(Matched::Party(p)) if p.name == "张三"));
        assert!(matches!(match_factor(" 010014 ", &ps, None), Some(Matched::Party(p)) if p.name == "李四"));
        assert!(match_factor("010015", &ps, None).is_none());
        assert!(match_factor("", &ps, None).is_none());
        assert!(matches!(match_factor("ab1o-2xyz", &ps, Some("AB102XYZ")), Some(Matched::AccessCode)));
        assert!(match_factor("AB10-2XYZ", &ps, None).is_none(), "no secret: no access code");
    }

    #[test]
    fn names_are_masked_and_every_state_reads_plainly() {
        assert_eq!(mask_name("张三"), "张*");
        assert_eq!(mask_name("欧阳娜娜"), "欧***");
        assert_eq!(mask_name("王"), "王*");
        for s in duijie_domain::lifecycle::CaseState::ALL {
            let (label, _) = state_for_party(s.as_str());
            assert_ne!(label, "办理中", "{} has no plain label", s.as_str());
        }
    }
}
