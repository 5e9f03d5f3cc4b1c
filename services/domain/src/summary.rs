//! A message in one line, in English, for logs and the operators' CLI. The console renders the
//! same typed message in Chinese itself (timeline entries carry the message, not this text).

use duijie_proto::v1::AgencyRef;
use duijie_proto::v1::envelope::Payload;

use crate::agency::ref_str;

/// A one-line summary of a message for timelines.
pub fn english(payload: &Payload) -> String {
    use duijie_proto::v1::outcome::Kind;
    let agency = |a: Option<&AgencyRef>| ref_str(a);
    match payload {
        Payload::Referral(r) => match &r.forwarded {
            Some(f) => format!("handed on by {} ({})", agency(f.forwarded_by.as_ref()), f.reason().routing_segment()),
            None => format!("{} parties; {}", r.parties.len(), r.cause_of_action),
        },
        Payload::Amendment(a) => a.reason.clone(),
        Payload::Cancellation(c) => format!("{}: {}", c.reason().as_str_name(), c.explanation),
        Payload::SupervisionNotice(n) => format!("{}: {}", n.level().as_str_name(), n.instructions),
        Payload::Receipt(r) => format!("signed for by {}", r.signed_by),
        Payload::Accept(a) => format!("accepted by {}", a.accepted_by),
        Payload::Reject(r) => format!("{}: {}", r.reason().as_str_name(), r.explanation),
        Payload::Redirect(r) => format!("to {}: {}", agency(r.to.as_ref()), r.reason),
        Payload::Assignment(a) => a.mediator.as_ref().map(|m| format!("mediator {}", m.name)).unwrap_or_default(),
        Payload::Escalation(e) => format!("{} → {} {}", e.from_tier().as_str_name(), e.to_tier().as_str_name(), agency(e.to_agency.as_ref())),
        Payload::Progress(p) => p.summary.clone(),
        Payload::InfoRequest(q) => q.questions.join("; "),
        Payload::ExtensionRequest(x) => format!("{} +{} days", x.limit().as_str_name(), x.days),
        Payload::Outcome(o) => match &o.kind {
            Some(Kind::Settled(s)) => format!("settled: {}", s.terms.join("; ")),
            Some(Kind::Failed(f)) => format!("failed: {}", f.reason().as_str_name()),
            Some(Kind::Withdrawn(_)) => "withdrawn".into(),
            None => String::new(),
        },
        Payload::ConfirmationRequest(_) => "judicial confirmation requested".into(),
        Payload::ConfirmationDecision(d) => format!("{} {}", d.decision().as_str_name(), d.document_number),
        Payload::AgreementRecognition(a) => format!("recognised {}", a.document_number),
        Payload::ReconciliationReview(r) => r.conclusion().as_str_name().to_owned(),
        Payload::Performance(p) => p.status().as_str_name().to_owned(),
        Payload::FollowUp(f) => format!("{}: {}", f.satisfaction().as_str_name(), f.summary),
        Payload::Closure(c) => format!("{}: {}", c.basis().as_str_name(), c.summary),
        Payload::CancellationConfirmation(c) => if c.confirmed { "cancel confirmed".into() } else { format!("cancel refused: {}", c.reason) },
        Payload::DispositionNotice(d) => format!("{} {}", d.disposition().as_str_name(), d.document_number),
        Payload::DeliveryEvidence(e) => format!("{} {} to {}", e.evidence_type().as_str_name(), e.message_kind().routing_segment(), agency(e.delivered_to.as_ref())),
        Payload::DeadlineWarning(_) => "deadline near".into(),
        Payload::DeadlineBreached(_) => "deadline passed".into(),
    }
}

