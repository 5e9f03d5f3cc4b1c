//! The referral lifecycle: which message a case's current state allows and where it leads.
//! Both sides of a handoff (the referring agency and the mediation centre) run the same machine
//! over the same messages, so they agree on the state; a message the state does not allow is
//! refused with the state and what it allows.
//!
//! ```text
//! SUBMITTED → DELIVERED → RECEIVED → ACCEPTED | REJECTED | (REDIRECT → SUBMITTED at the new holder)
//! ACCEPTED → IN_MEDIATION (assign, escalate, progress, extend) → SETTLED | FAILED | WITHDRAWN
//! SETTLED → [CONFIRMATION_REQUESTED → CONFIRMATION_ACCEPTED → CONFIRMED | CONFIRMATION_DENIED]
//!         → PERFORMED | DEFAULTED;  PERFORMED → FOLLOWED_UP → CLOSED
//! returned (REJECTED, FAILED, WITHDRAWN, DEFAULTED, CONFIRMATION_DENIED) → disposition → CLOSED
//! SETTLED | PERFORMED | FOLLOWED_UP → disposition → DISPOSED → closure → CLOSED
//! open states → CANCEL_REQUESTED → CANCELLED (confirmed) | back where it was (refused)
//! ```

use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::{AgencyRef, ConfirmationDecisionKind, DispositionKind, EvidenceType, MessageKind, PerformanceStatus, outcome};

use crate::agency::AgencyNode;

/// Where a case stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CaseState {
    Submitted,
    Delivered,
    Received,
    Accepted,
    InMediation,
    Settled,
    Failed,
    Withdrawn,
    Rejected,
    ConfirmationRequested,
    ConfirmationAccepted,
    Confirmed,
    ConfirmationDenied,
    Performed,
    Defaulted,
    FollowedUp,
    Disposed,
    Closed,
    CancelRequested,
    Cancelled,
}

impl CaseState {
    /// The name shown to users and stored in databases.
    pub fn as_str(self) -> &'static str {
        match self {
            CaseState::Submitted => "SUBMITTED",
            CaseState::Delivered => "DELIVERED",
            CaseState::Received => "RECEIVED",
            CaseState::Accepted => "ACCEPTED",
            CaseState::InMediation => "IN_MEDIATION",
            CaseState::Settled => "SETTLED",
            CaseState::Failed => "FAILED",
            CaseState::Withdrawn => "WITHDRAWN",
            CaseState::Rejected => "REJECTED",
            CaseState::ConfirmationRequested => "CONFIRMATION_REQUESTED",
            CaseState::ConfirmationAccepted => "CONFIRMATION_ACCEPTED",
            CaseState::Confirmed => "CONFIRMED",
            CaseState::ConfirmationDenied => "CONFIRMATION_DENIED",
            CaseState::Performed => "PERFORMED",
            CaseState::Defaulted => "DEFAULTED",
            CaseState::FollowedUp => "FOLLOWED_UP",
            CaseState::Disposed => "DISPOSED",
            CaseState::Closed => "CLOSED",
            CaseState::CancelRequested => "CANCEL_REQUESTED",
            CaseState::Cancelled => "CANCELLED",
        }
    }

    /// Every state.
    pub const ALL: [CaseState; 20] = [
        CaseState::Submitted,
        CaseState::Delivered,
        CaseState::Received,
        CaseState::Accepted,
        CaseState::InMediation,
        CaseState::Settled,
        CaseState::Failed,
        CaseState::Withdrawn,
        CaseState::Rejected,
        CaseState::ConfirmationRequested,
        CaseState::ConfirmationAccepted,
        CaseState::Confirmed,
        CaseState::ConfirmationDenied,
        CaseState::Performed,
        CaseState::Defaulted,
        CaseState::FollowedUp,
        CaseState::Disposed,
        CaseState::Closed,
        CaseState::CancelRequested,
        CaseState::Cancelled,
    ];

    /// Parses [`CaseState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The case went back to the referring agency without a performed agreement (退回).
    pub fn is_returned(self) -> bool {
        matches!(
            self,
            CaseState::Rejected
                | CaseState::Failed
                | CaseState::Withdrawn
                | CaseState::Defaulted
                | CaseState::ConfirmationDenied
        )
    }

    /// Nothing more happens to the case.
    pub fn is_final(self) -> bool {
        matches!(self, CaseState::Closed | CaseState::Cancelled)
    }

    /// The message kinds this state allows (besides bus evidence and deadline notices, which are
    /// always recorded).
    pub fn allowed(self) -> Vec<MessageKind> {
        use MessageKind as K;
        let mut kinds: Vec<MessageKind> = match self {
            CaseState::Submitted | CaseState::Delivered => vec![K::Receipt, K::Amendment, K::Cancellation],
            CaseState::Received => {
                vec![K::Accept, K::Reject, K::Redirect, K::InfoRequest, K::Amendment, K::Cancellation]
            }
            CaseState::Accepted | CaseState::InMediation => vec![
                K::Assignment,
                K::Escalation,
                K::Progress,
                K::InfoRequest,
                K::ExtensionRequest,
                K::Outcome,
                K::Redirect,
                K::Amendment,
                K::Cancellation,
            ],
            CaseState::Settled => vec![
                K::ConfirmationRequest,
                K::Performance,
                K::ReconciliationReview,
                K::DispositionNotice,
            ],
            CaseState::ConfirmationRequested | CaseState::ConfirmationAccepted => vec![K::ConfirmationDecision],
            CaseState::Confirmed => vec![K::Performance],
            CaseState::Performed => vec![
                K::AgreementRecognition,
                K::ReconciliationReview,
                K::FollowUp,
                K::Closure,
                K::DispositionNotice,
            ],
            CaseState::FollowedUp => vec![K::FollowUp, K::Closure, K::DispositionNotice],
            CaseState::Disposed => vec![K::Closure],
            // The one step after closure: the petition office's 信访办结 (a petition-closed
            // disposition on the petition channel, once; `Case` and the services hold it to that).
            CaseState::Closed => vec![K::DispositionNotice],
            CaseState::CancelRequested => vec![K::CancellationConfirmation],
            s if s.is_returned() => vec![K::DispositionNotice],
            CaseState::Failed
            | CaseState::Withdrawn
            | CaseState::Rejected
            | CaseState::ConfirmationDenied
            | CaseState::Defaulted
            | CaseState::Cancelled => vec![],
        };
        if !self.is_final() {
            kinds.push(K::SupervisionNotice);
        }
        kinds
    }
}

impl std::fmt::Display for CaseState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Why a message about a case was refused: the one refusal of the case desk, for the send path
/// (mapped to a gRPC status), the receive path (the dead-letter reason) and the audit store
/// (recorded, state unchanged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The state does not allow this kind.
    #[error("case is {state}; {kind} is not allowed now (allowed: {})", list(.allowed))]
    NotAllowed { state: CaseState, kind: MessageKind, allowed: Vec<MessageKind> },
    /// The kind is allowed but the payload lacks what the transition needs.
    #[error("{kind}: {field} is required")]
    Incomplete { kind: MessageKind, field: &'static str },
    /// A referral for a case that already exists.
    #[error("the case already exists (state {0})")]
    AlreadyReferred(CaseState),
    /// This kind of agency does not send this kind of message, or not from its side of the case.
    #[error("{agency}: a {} may not send {kind}", .agency.kind().as_str())]
    NotPermitted { agency: AgencyNode, kind: MessageKind },
    /// Only the two ends of the handoff speak for a case.
    #[error("{agency} is neither the referrer nor the holder of this case")]
    NotAParty { agency: String },
    /// A field names no agency that can take the case.
    #[error("{field}: {reason}")]
    BadAgency { field: &'static str, reason: String },
    /// The message is allowed in this state, but not for this case.
    #[error("{0}")]
    NotForThisCase(String),
    /// The message contradicts itself or its envelope (only another system's message can).
    #[error("{0}")]
    Malformed(String),
}

fn list(kinds: &[MessageKind]) -> String {
    kinds.iter().map(|k| k.routing_segment()).collect::<Vec<_>>().join(", ")
}

/// A case's position in the lifecycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    pub state: CaseState,
    /// The state a cancel request interrupted, restored if the centre refuses the cancel.
    pub before_cancel: Option<CaseState>,
}

/// What applying a message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub from: CaseState,
    pub to: CaseState,
    /// The agency that holds the case now, when the message moved it (redirect, escalation).
    pub new_holder: Option<AgencyRef>,
}

impl Lifecycle {
    /// A new case: its referral was just sent.
    pub fn referred() -> Self {
        Self { state: CaseState::Submitted, before_cancel: None }
    }

    /// A case resumed from storage.
    pub fn at(state: CaseState, before_cancel: Option<CaseState>) -> Self {
        Self { state, before_cancel }
    }

    /// Checks `payload` against the state without changing anything.
    pub fn check(&self, payload: &Payload) -> Result<Step, Refusal> {
        self.clone().apply(payload)
    }

    /// Follows a message the sender's own machine accepted (the history a handed-on case
    /// carries): applied where this machine allows it, otherwise the state is left as it was.
    pub fn follow(&mut self, payload: &Payload) {
        // A refusal leaves the state as it was: the sender decided, and its record is kept.
        let _ = self.apply(payload);
    }

    /// Applies a holder's message that crossed the referrer's cancel request (sent before the
    /// holder saw it). It moves on the state the cancel interrupted, so both ends agree on where
    /// a refused cancel returns to, and the case waits for the cancel's answer as before — unless
    /// the message leaves the case where a cancel no longer applies (a rejection, an outcome):
    /// then the cancel lost the race, the holder records it without answering, and the case is
    /// where the holder's message put it, at both ends and in the audit store, whatever the order
    /// the two messages were seen in.
    pub fn apply_crossing(&mut self, payload: &Payload) -> Result<Step, Refusal> {
        let Some(before) = self.before_cancel else { return self.apply(payload) };
        let from = self.state;
        let mut interrupted = Lifecycle::at(before, None);
        let step = interrupted.apply(payload).map_err(|r| match r {
            Refusal::NotAllowed { kind, .. } => Refusal::NotAllowed { state: from, kind, allowed: from.allowed() },
            other => other,
        })?;
        if interrupted.state.allowed().contains(&MessageKind::Cancellation) {
            self.before_cancel = Some(interrupted.state);
        } else {
            *self = interrupted;
        }
        Ok(Step { from, to: self.state, new_holder: step.new_holder })
    }

    /// Applies `payload`, or says why the state does not allow it.
    pub fn apply(&mut self, payload: &Payload) -> Result<Step, Refusal> {
        use CaseState as S;
        let kind = payload.kind();
        let from = self.state;
        // Evidence and deadline notices are facts about the bus: recorded in any state.
        match payload {
            // Evidence moves a case only when it says the referral itself was delivered.
            Payload::DeliveryEvidence(ev)
                if ev.evidence_type() != EvidenceType::Delivered || ev.message_kind() != MessageKind::Referral =>
            {
                return Ok(Step { from, to: from, new_holder: None });
            }
            Payload::DeliveryEvidence(_) => {
                if from == S::Submitted {
                    self.state = S::Delivered;
                }
                // Delivered while a cancel is pending: a refused cancel goes back to DELIVERED.
                if from == S::CancelRequested && self.before_cancel == Some(S::Submitted) {
                    self.before_cancel = Some(S::Delivered);
                }
                return Ok(Step { from, to: self.state, new_holder: None });
            }
            Payload::DeadlineWarning(_) | Payload::DeadlineBreached(_) => {
                return Ok(Step { from, to: from, new_holder: None });
            }
            Payload::Referral(_) => return Err(Refusal::AlreadyReferred(from)),
            _ => {}
        }
        let allowed = from.allowed();
        if !allowed.contains(&kind) {
            return Err(Refusal::NotAllowed { state: from, kind, allowed });
        }
        let mut new_holder = None;
        let to = match payload {
            Payload::Amendment(_) | Payload::SupervisionNotice(_) | Payload::InfoRequest(_) => from,
            Payload::AgreementRecognition(_) | Payload::ReconciliationReview(_) => from,
            Payload::Cancellation(_) => {
                self.before_cancel = Some(from);
                S::CancelRequested
            }
            Payload::CancellationConfirmation(c) => {
                let back = self.before_cancel.take().unwrap_or(S::Submitted);
                if c.confirmed { S::Cancelled } else { back }
            }
            Payload::Receipt(_) => S::Received,
            Payload::Accept(_) => S::Accepted,
            Payload::Reject(_) => S::Rejected,
            Payload::Redirect(r) => {
                new_holder = Some(r.to.clone().ok_or(Refusal::Incomplete { kind, field: "to" })?);
                S::Submitted
            }
            Payload::Escalation(e) => {
                new_holder = e.to_agency.clone();
                S::InMediation
            }
            Payload::Assignment(_) | Payload::Progress(_) | Payload::ExtensionRequest(_) => S::InMediation,
            Payload::Outcome(o) => match &o.kind {
                Some(outcome::Kind::Settled(_)) => S::Settled,
                Some(outcome::Kind::Failed(_)) => S::Failed,
                Some(outcome::Kind::Withdrawn(_)) => S::Withdrawn,
                None => return Err(Refusal::Incomplete { kind, field: "kind" }),
            },
            Payload::ConfirmationRequest(_) => S::ConfirmationRequested,
            Payload::ConfirmationDecision(d) => match (from, d.decision()) {
                (S::ConfirmationRequested, ConfirmationDecisionKind::Accepted) => S::ConfirmationAccepted,
                (S::ConfirmationRequested, ConfirmationDecisionKind::NotAccepted) => S::ConfirmationDenied,
                (_, ConfirmationDecisionKind::Granted) => S::Confirmed,
                (_, ConfirmationDecisionKind::Denied) => S::ConfirmationDenied,
                (_, ConfirmationDecisionKind::Accepted | ConfirmationDecisionKind::NotAccepted) => {
                    return Err(Refusal::NotAllowed { state: from, kind, allowed: vec![MessageKind::ConfirmationDecision] });
                }
                (_, ConfirmationDecisionKind::Unspecified) => return Err(Refusal::Incomplete { kind, field: "decision" }),
            },
            Payload::Performance(p) => match p.status() {
                PerformanceStatus::Performed => S::Performed,
                PerformanceStatus::Defaulted => S::Defaulted,
                PerformanceStatus::Unspecified => return Err(Refusal::Incomplete { kind, field: "status" }),
            },
            Payload::FollowUp(_) => S::FollowedUp,
            Payload::Closure(_) => S::Closed,
            Payload::DispositionNotice(d) => {
                if from == S::Closed && d.disposition() != DispositionKind::PetitionClosed {
                    // A closed case is over: only a petition's 办结 follows the centre's closure.
                    return Err(Refusal::NotForThisCase(format!(
                        "case is CLOSED; the only disposition after closure is the petition office's \
                         {} (信访办结), not {}",
                        DispositionKind::PetitionClosed.as_str_name(),
                        d.disposition().as_str_name()
                    )));
                }
                if from.is_returned() || from == S::Closed {
                    S::Closed
                } else {
                    S::Disposed
                }
            }
            Payload::Referral(_)
            | Payload::DeliveryEvidence(_)
            | Payload::DeadlineWarning(_)
            | Payload::DeadlineBreached(_) => from, // handled above
        };
        self.state = to;
        Ok(Step { from, to, new_holder })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duijie_proto::v1::*;

    fn settled() -> Payload {
        Payload::Outcome(Outcome { kind: Some(outcome::Kind::Settled(outcome::Settled::default())) })
    }
    fn failed() -> Payload {
        Payload::Outcome(Outcome { kind: Some(outcome::Kind::Failed(outcome::Failed::default())) })
    }
    fn decision(d: ConfirmationDecisionKind) -> Payload {
        Payload::ConfirmationDecision(ConfirmationDecision { decision: d as i32, ..Default::default() })
    }
    fn performance(p: PerformanceStatus) -> Payload {
        Payload::Performance(Performance { status: p as i32, ..Default::default() })
    }
    fn agency(kind: AgencyKind, code: &str) -> AgencyRef {
        AgencyRef { kind: kind as i32, code: code.into() }
    }

    fn run(steps: &[Payload]) -> Result<Lifecycle, Refusal> {
        let mut lc = Lifecycle::referred();
        for p in steps {
            lc.apply(p)?;
        }
        Ok(lc)
    }

    fn delivered() -> Payload {
        Payload::DeliveryEvidence(DeliveryEvidence {
            evidence_type: EvidenceType::Delivered as i32,
            message_kind: MessageKind::Referral as i32,
            ..Default::default()
        })
    }

    fn start() -> Vec<Payload> {
        vec![
            delivered(),
            Payload::Receipt(Receipt::default()),
            Payload::Accept(Accept::default()),
            Payload::Assignment(Assignment::default()),
        ]
    }

    #[test]
    fn court_channel_settled_confirmed_performed_followed_up_closed() {
        let mut steps = start();
        steps.extend([
            settled(),
            Payload::ConfirmationRequest(ConfirmationRequest::default()),
            decision(ConfirmationDecisionKind::Accepted),
            decision(ConfirmationDecisionKind::Granted),
            performance(PerformanceStatus::Performed),
            Payload::FollowUp(FollowUp::default()),
            Payload::Closure(Closure::default()),
        ]);
        assert_eq!(run(&steps).map(|l| l.state), Ok(CaseState::Closed));
    }

    #[test]
    fn court_channel_failed_returned_filed_for_trial_closed() {
        let mut steps = start();
        steps.push(failed());
        let lc = run(&steps).map(|l| l.state);
        assert_eq!(lc, Ok(CaseState::Failed));
        assert!(CaseState::Failed.is_returned());
        steps.push(Payload::DispositionNotice(DispositionNotice::default()));
        assert_eq!(run(&steps).map(|l| l.state), Ok(CaseState::Closed));
    }

    #[test]
    fn police_petition_and_procuratorate_channels_close() {
        // 警调: settled, performed, police recognises the agreement, closed.
        let mut police = start();
        police.extend([
            settled(),
            performance(PerformanceStatus::Performed),
            Payload::AgreementRecognition(AgreementRecognition::default()),
            Payload::Closure(Closure::default()),
        ]);
        assert_eq!(run(&police).map(|l| l.state), Ok(CaseState::Closed));
        // 访调: supervised, escalated village → town, settled, performed, closed, petition closed.
        let mut petition = start();
        petition.extend([
            Payload::SupervisionNotice(SupervisionNotice::default()),
            Payload::Escalation(Escalation {
                to_agency: Some(agency(AgencyKind::Mediation, "431003-102")),
                ..Default::default()
            }),
            settled(),
            performance(PerformanceStatus::Performed),
            Payload::Closure(Closure::default()),
            Payload::DispositionNotice(DispositionNotice { disposition: DispositionKind::PetitionClosed as i32, ..Default::default() }),
        ]);
        assert_eq!(run(&petition).map(|l| l.state), Ok(CaseState::Closed));
        // 检调: settled, reconciliation reviewed, non-prosecution disposed, closed.
        let mut procuratorate = start();
        procuratorate.extend([
            settled(),
            Payload::ReconciliationReview(ReconciliationReview::default()),
            Payload::DispositionNotice(DispositionNotice::default()),
            Payload::Closure(Closure::default()),
        ]);
        assert_eq!(run(&procuratorate).map(|l| l.state), Ok(CaseState::Closed));
    }

    #[test]
    fn out_of_order_steps_are_refused_naming_the_state_and_what_is_allowed() {
        let mut lc = Lifecycle::referred();
        let err = lc.apply(&settled());
        let Err(Refusal::NotAllowed { state, kind, allowed }) = err.clone() else { panic!("{err:?}") };
        assert_eq!((state, kind), (CaseState::Submitted, MessageKind::Outcome));
        assert!(allowed.contains(&MessageKind::Receipt));
        assert!(err.err().is_some_and(|e| e.to_string().contains("case is SUBMITTED")));
        assert_eq!(lc.state, CaseState::Submitted, "a refused message changes nothing");
        assert_eq!(
            lc.apply(&Payload::Referral(Referral::default())),
            Err(Refusal::AlreadyReferred(CaseState::Submitted))
        );
        assert!(matches!(
            run(&[Payload::Receipt(Receipt::default()), Payload::Closure(Closure::default())]),
            Err(Refusal::NotAllowed { state: CaseState::Received, .. })
        ));
    }

    #[test]
    fn cancel_is_final_only_when_the_centre_confirms_it() {
        let mut lc = run(&[Payload::Receipt(Receipt::default())]).unwrap_or_else(|_| Lifecycle::referred());
        lc.apply(&Payload::Cancellation(Cancellation::default())).ok();
        assert_eq!(lc.state, CaseState::CancelRequested);
        lc.apply(&Payload::CancellationConfirmation(CancellationConfirmation { confirmed: false, ..Default::default() })).ok();
        assert_eq!(lc.state, CaseState::Received, "a refused cancel puts the case back");
        lc.apply(&Payload::Cancellation(Cancellation::default())).ok();
        lc.apply(&Payload::CancellationConfirmation(CancellationConfirmation { confirmed: true, ..Default::default() })).ok();
        assert_eq!(lc.state, CaseState::Cancelled);
        assert!(lc.state.is_final());
        assert!(lc.apply(&Payload::SupervisionNotice(SupervisionNotice::default())).is_err());
    }

    #[test]
    fn evidence_arriving_during_a_cancel_request_is_kept_for_a_refusal() {
        let mut lc = Lifecycle::referred();
        lc.apply(&Payload::Cancellation(Cancellation::default())).ok();
        lc.apply(&delivered()).ok();
        assert_eq!(lc.state, CaseState::CancelRequested);
        lc.apply(&Payload::CancellationConfirmation(CancellationConfirmation { confirmed: false, ..Default::default() })).ok();
        assert_eq!(lc.state, CaseState::Delivered);
    }

    #[test]
    fn redirect_hands_the_case_to_another_committee() {
        let mut lc = run(&[Payload::Receipt(Receipt::default())]).unwrap_or_else(|_| Lifecycle::referred());
        let to = agency(AgencyKind::Mediation, "431003-103");
        let step = lc.apply(&Payload::Redirect(Redirect { to: Some(to.clone()), reason: "labour dispute".into() }));
        assert_eq!(step.map(|s| (s.to, s.new_holder)), Ok((CaseState::Submitted, Some(to))));
        assert_eq!(
            lc.clone().apply(&Payload::Redirect(Redirect::default())),
            Err(Refusal::NotAllowed { state: CaseState::Submitted, kind: MessageKind::Redirect, allowed: CaseState::Submitted.allowed() })
        );
        lc.state = CaseState::Received;
        assert_eq!(lc.apply(&Payload::Redirect(Redirect::default())), Err(Refusal::Incomplete { kind: MessageKind::Redirect, field: "to" }));
    }

    #[test]
    fn a_closed_case_takes_nothing_but_a_petitions_closing() {
        let mut closed = start();
        closed.extend([settled(), performance(PerformanceStatus::Performed), Payload::Closure(Closure::default())]);
        let lc = run(&closed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(lc.state, CaseState::Closed);
        let notice = |d: DispositionKind| Payload::DispositionNotice(DispositionNotice { disposition: d as i32, ..Default::default() });
        for d in [DispositionKind::FiledForTrial, DispositionKind::Penalty, DispositionKind::NonProsecution, DispositionKind::Other, DispositionKind::Unspecified] {
            let r = lc.check(&notice(d));
            assert!(matches!(&r, Err(Refusal::NotForThisCase(m)) if m.contains("CLOSED")), "{d:?}: {r:?}");
        }
        assert_eq!(lc.check(&notice(DispositionKind::PetitionClosed)).map(|s| s.to), Ok(CaseState::Closed));
        for p in [Payload::Closure(Closure::default()), Payload::SupervisionNotice(SupervisionNotice::default()), settled(), Payload::FollowUp(FollowUp::default())] {
            assert!(matches!(lc.check(&p), Err(Refusal::NotAllowed { state: CaseState::Closed, .. })), "{p:?}");
        }
    }

    #[test]
    fn every_state_round_trips_its_name() {
        for s in CaseState::ALL {
            assert_eq!(CaseState::parse(s.as_str()), Some(s));
        }
    }
}
