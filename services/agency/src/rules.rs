//! Input rules of what an agency sends (a referral's content, an extension's consents, an
//! amendment), and the one mapping of the desk's refusals onto each edge: a gRPC error for the
//! caller, a dead-letter reason for a message received.
//!
//! The bounds every message keeps (lengths, list sizes, enum values, times, currencies, text
//! without control characters) are the contract's, [`duijie_proto::limits`], checked here at the
//! gRPC edge and by `Envelope::check` at the bus edge; this module adds what a request must say
//! (required fields, valid identity numbers, the parties' consent) and what needs the case
//! (consents and applicants naming the case's parties).

use anyhow::Context as _;
use duijie_common::inbox::HandleError;
use duijie_common::server::ApiError;
use duijie_domain::Refusal;
use duijie_proto::v1::envelope::Payload;
use duijie_proto::limits;
use duijie_proto::v1::{ClockPolicyKind, ExtensionRequest, Referral, TimeLimit};
use prost::Message as _;

pub use duijie_proto::limits::MAX_EXTENSION_DAYS;

/// A refusal of the desk as the caller's gRPC error.
pub fn refused(r: Refusal) -> ApiError {
    match r {
        Refusal::Incomplete { kind, field } => ApiError::invalid(format!("{}.{field}", kind.routing_segment()), "is required"),
        Refusal::BadAgency { field, reason } => ApiError::invalid(field, reason),
        Refusal::NotPermitted { .. } | Refusal::NotAParty { .. } => ApiError::PermissionDenied(r.to_string()),
        Refusal::NotAllowed { .. } | Refusal::AlreadyReferred(_) | Refusal::NotForThisCase(_) | Refusal::Malformed(_) => {
            ApiError::FailedPrecondition(r.to_string())
        }
    }
}

/// A refusal of the desk as the reason a received message is dead-lettered.
/// A step the state does not allow (yet) is held and tried again: what it waits for may still
/// be on its way (a crossing message, one overtaken by a retry).
pub fn rejected(r: Refusal) -> HandleError {
    match r {
        Refusal::NotAllowed { .. } => HandleError::Early(format!("refused: {r}")),
        r => HandleError::Rejected(format!("refused: {r}")),
    }
}

/// Input checks of a referral, naming the field at fault: a referral without parties is told
/// so (rather than that its consents name none), then the contract's bounds (so no later
/// message quotes a value of unbounded size), then what a referral must say.
pub fn validate_referral(r: &Referral) -> Result<(), ApiError> {
    if r.parties.is_empty() {
        return Err(ApiError::invalid("parties", "at least one party is required"));
    }
    limits::check_referral(r)?;
    for (i, p) in r.parties.iter().enumerate() {
        if p.name.trim().is_empty() {
            return Err(ApiError::invalid(format!("parties[{i}].name"), "is required"));
        }
        if !p.sealed.is_empty() {
            return Err(ApiError::invalid(format!("parties[{i}].sealed"), "is set by the service that seals the parties' data, never by a client"));
        }
        if let Some(id) = &p.identity {
            duijie_domain::identity::validate(id.document_type(), &id.number)
                .map_err(|e| ApiError::invalid(format!("parties[{i}].identity.number"), e.to_string()))?;
        }
    }
    if let Some(m) = &r.amount
        && m.minor_units < 0
    {
        return Err(ApiError::invalid("amount", "must not be negative"));
    }
    if r.clock_policy.as_ref().is_none_or(|c| c.kind() == ClockPolicyKind::Unspecified) {
        return Err(ApiError::invalid("clock_policy", "is required"));
    }
    if r.facts.trim().is_empty() {
        return Err(ApiError::invalid("facts", "are required"));
    }
    // Mediation is voluntary (人民调解法 第三条): a referral records the consent of the parties
    // who agreed to it; the bounds above hold each consent to a party of the referral, once.
    if !r.consents.iter().any(|c| c.consented) {
        return Err(ApiError::invalid("consents", "at least one party's consent to mediation is required"));
    }
    Ok(())
}

/// The field of its `<Method>Request` that carries a case action's message (`receipt` of
/// `SignForRequest`), so a refusal names the field as the caller wrote it.
pub fn request_field(payload: &Payload) -> &'static str {
    match payload {
        Payload::Amendment(_) => "amendment",
        Payload::Cancellation(_) => "cancellation",
        Payload::SupervisionNotice(_) => "notice",
        Payload::DispositionNotice(_) => "disposition",
        Payload::ConfirmationDecision(_) => "decision",
        Payload::AgreementRecognition(_) => "recognition",
        Payload::ReconciliationReview(_) => "review",
        Payload::Receipt(_) => "receipt",
        Payload::Accept(_) => "accept",
        Payload::Reject(_) => "reject",
        Payload::Redirect(_) => "redirect",
        Payload::Assignment(_) => "assignment",
        Payload::Escalation(_) => "escalation",
        Payload::Progress(_) => "progress",
        Payload::InfoRequest(_) | Payload::ConfirmationRequest(_) => "request",
        Payload::ExtensionRequest(_) => "extension",
        Payload::Outcome(_) => "outcome",
        Payload::Performance(_) => "performance",
        Payload::FollowUp(_) => "follow_up",
        Payload::Closure(_) => "closure",
        Payload::CancellationConfirmation(_) => "answer",
        // Not case actions of a client: named as the contract names them.
        Payload::Referral(_) | Payload::DeliveryEvidence(_) | Payload::DeadlineWarning(_) | Payload::DeadlineBreached(_) => {
            payload.kind().routing_segment()
        }
    }
}

/// The contract's bounds on a case action's message, its fields named under `field` (the
/// request's field that carries it, e.g. `receipt` of `SignForRequest`).
pub fn check_bounds(payload: &Payload, field: &str) -> Result<(), ApiError> {
    limits::check_payload(payload).map_err(|v| ApiError::from(v.within(field)))
}

/// Checks what `payload` carries against the case's stored referral; for an amendment, returns
/// the referral (and clock policy) as amended.
pub fn check_payload(payload: &Payload, stored: &[u8]) -> Result<Option<(Vec<u8>, i32)>, ApiError> {
    match payload {
        Payload::ExtensionRequest(x) => {
            if !(1..=MAX_EXTENSION_DAYS).contains(&x.days) {
                return Err(ApiError::invalid("extension.days", format!("must be 1 to {MAX_EXTENSION_DAYS}")));
            }
            if x.limit() == TimeLimit::Unspecified {
                return Err(ApiError::invalid("extension.limit", "name the time limit to extend"));
            }
            let parties = party_ids(stored)?;
            if let Some(i) = x.consents.iter().position(|c| !parties.contains(&c.party_id)) {
                return Err(ApiError::invalid(format!("extension.consents[{i}].party_id"), "is not the id of a party of the case"));
            }
            match missing_consent(stored, x)? {
                Some(p) => Err(ApiError::invalid("extension.consents", format!("party {p} has not consented"))),
                None => Ok(None),
            }
        }
        Payload::ConfirmationRequest(c) => {
            let parties = party_ids(stored)?;
            match c.applicant_party_ids.iter().position(|p| !parties.contains(p)) {
                Some(i) => Err(ApiError::invalid(format!("request.applicant_party_ids[{i}]"), "is not the id of a party of the case")),
                None => Ok(None),
            }
        }
        Payload::Amendment(a) => match &a.revised {
            Some(revised) => {
                validate_referral(revised).map_err(|e| e.within("amendment.revised"))?;
                Ok(Some(amended(stored, revised)?))
            }
            None => Ok(None),
        },
        _ => Ok(None),
    }
}

/// The party ids of the stored referral.
fn party_ids(stored: &[u8]) -> anyhow::Result<Vec<String>> {
    Ok(Referral::decode(stored).context("decoding the stored referral")?.parties.into_iter().map(|p| p.party_id).collect())
}

/// The first party of the stored referral that has not consented to extension `x`, if any
/// (an extension needs every party's consent).
fn missing_consent(stored: &[u8], x: &ExtensionRequest) -> anyhow::Result<Option<String>> {
    let parties = Referral::decode(stored).context("decoding the stored referral")?.parties;
    Ok(parties
        .into_iter()
        .find(|p| !x.consents.iter().any(|c| c.party_id == p.party_id && c.consented))
        .map(|p| p.party_id))
}

/// The stored referral after an amendment, and its clock policy: the revised content, keeping
/// what the referrer cannot change by amending (its request id, the forwarding of a handed-on
/// case, and the clock policy when the revision names none).
pub fn amended(stored: &[u8], revised: &Referral) -> anyhow::Result<(Vec<u8>, i32)> {
    let old = Referral::decode(stored).context("decoding the stored referral")?;
    let mut new = revised.clone();
    new.client_request_id = old.client_request_id;
    new.forwarded = old.forwarded;
    if new.clock_policy.as_ref().is_none_or(|c| c.kind() == ClockPolicyKind::Unspecified) {
        new.clock_policy = old.clock_policy;
    }
    let clock = new.clock_policy.as_ref().map_or(0, |c| c.kind);
    Ok((new.encode_to_vec(), clock))
}
