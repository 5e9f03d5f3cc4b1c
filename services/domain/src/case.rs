//! The case desk: one case as one agency node keeps it, and the one place that decides what a
//! message about it does — on the way out (an agency acts), on the way in (another agency's
//! message arrives) and for the audit store (a message seen on the bus). Pure code: the
//! lifecycle, the rights of the two ends, hand-over, crossing messages and the evidence rule,
//! tested without servers. The services load a [`Case`], call [`Case::decide`], and store what
//! the [`Effects`] say.

use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::{AgencyKind, Channel, MessageKind, Referral};

use crate::actions::Side;
use crate::agency::{AgencyNode, ref_str};
use crate::lifecycle::{CaseState, Lifecycle, Refusal, Step};

/// A case: who referred it, who holds it now, and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub channel: Channel,
    /// The referring agency (court, police, petition office, procuratorate); the holder answers it.
    /// On a self-accepted case (CHANNEL_SELF_INTAKE) the mediation body that registered it.
    pub referrer: AgencyNode,
    /// The mediation body that has the case now.
    pub holder: AgencyNode,
    /// The court examining the case's judicial confirmation application when it is not the
    /// referrer (named in the ConfirmationRequest); it speaks only to decide on it.
    pub court: Option<AgencyNode>,
    pub lifecycle: Lifecycle,
}

/// Where an agency stands to a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Referrer,
    Holder,
    /// The court a confirmation application was made to, not being the referrer.
    Court,
    /// Neither end: a body that handed the case on, or a stranger.
    Other,
}

/// A message about the case, as the desk sees it.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    /// `sender`, an agency this service acts for, sends `payload` to the other end.
    Outgoing { sender: &'a AgencyNode, payload: &'a Payload },
    /// `owner`'s copy of the case receives `payload`, sent by `sender` (for delivery evidence:
    /// the agency the evidence names as `delivered_to`, for whom the bus speaks).
    Incoming { owner: &'a AgencyNode, sender: &'a AgencyNode, payload: &'a Payload },
    /// The audit store saw `payload` from `sender` to `recipient` on the bus.
    Observed { sender: &'a AgencyNode, recipient: &'a AgencyNode, payload: &'a Payload },
}

/// What a message does to the case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effects {
    /// Send it: the case moves to `lifecycle` (and `new_holder`), the message goes to
    /// `recipient` (and a copy to `copy_to`: the referrer of a confirmation another court
    /// examines), and a case handed to another body goes there as a forwarded referral. `court`:
    /// the court a confirmation application names, when it is not the referrer.
    Send {
        lifecycle: Lifecycle,
        new_holder: Option<AgencyNode>,
        recipient: AgencyNode,
        copy_to: Option<AgencyNode>,
        hand_over: Option<AgencyNode>,
        court: Option<AgencyNode>,
    },
    /// Apply it: the case moves to `lifecycle` (and `new_holder`, `court` as for `Send`);
    /// `evidence` says whether the sender is owed delivery evidence.
    Apply { lifecycle: Lifecycle, new_holder: Option<AgencyNode>, court: Option<AgencyNode>, evidence: bool },
    /// Record it in the timeline with no effect on the case (evidence from a body that handed
    /// the case on; what still reaches a body that handed it on).
    Record,
    /// A body that handed the case on before the referrer heard of it passes the referrer's
    /// message on to the current holder (a new message caused by the original), and owes the
    /// referrer its evidence.
    PassOn { to: AgencyNode },
}

/// Bus facts: recorded in any state, never acknowledged with evidence.
fn bus_fact(p: &Payload) -> bool {
    matches!(p, Payload::DeliveryEvidence(_) | Payload::DeadlineWarning(_) | Payload::DeadlineBreached(_))
}

/// The channel a referring agency's referrals travel on (`None` for agencies that do not refer).
pub fn channel_of(kind: AgencyKind) -> Option<Channel> {
    match kind {
        AgencyKind::Court => Some(Channel::Court),
        AgencyKind::Police => Some(Channel::Police),
        AgencyKind::Petition => Some(Channel::Petition),
        AgencyKind::Procuratorate => Some(Channel::Procuratorate),
        _ => None,
    }
}

/// What a self-accepted case does not know: its registering body asks, amends, cancels and
/// disposes nothing (it is the holder, or handed the case on), so these kinds never apply.
const NO_REFERRER: [MessageKind; 4] = [MessageKind::InfoRequest, MessageKind::Amendment, MessageKind::Cancellation, MessageKind::DispositionNotice];

/// The kinds `state` allows on `channel`: the lifecycle's rule, except that a self-accepted case
/// has no referrer to answer or to dispose of it, so its holder closes a returned case itself
/// (a failed mediation: 终结, the parties told of their other remedies).
pub fn allowed_on(channel: Channel, state: CaseState) -> Vec<MessageKind> {
    let mut kinds = state.allowed();
    // After closure only the petition office closes its petition (信访办结); a court, police or
    // procuratorate case is over when the centre closes it.
    if state == CaseState::Closed && channel != Channel::Petition {
        kinds.retain(|k| *k != MessageKind::DispositionNotice);
    }
    if channel == Channel::SelfIntake {
        kinds.retain(|k| !NO_REFERRER.contains(k));
        if state.is_returned() {
            kinds.insert(0, MessageKind::Closure);
        }
    }
    kinds
}

/// The field of a hand-over message that names the new holder.
fn hand_over_field(p: &Payload) -> &'static str {
    match p {
        Payload::Redirect(_) => "redirect.to",
        _ => "escalation.to_agency",
    }
}

impl Case {
    /// A case `referrer` just referred to `holder`.
    pub fn referred(channel: Channel, referrer: AgencyNode, holder: AgencyNode) -> Self {
        Self { channel, referrer, holder, court: None, lifecycle: Lifecycle::referred() }
    }

    /// `court`'s copy of a case `holder` applied to it for judicial confirmation, not having
    /// been referred by it: it opens with the application.
    pub fn applied_to(court: AgencyNode, channel: Channel, referrer: AgencyNode, holder: AgencyNode) -> Self {
        Self { channel, referrer, holder, court: Some(court), lifecycle: Lifecycle::at(CaseState::ConfirmationRequested, None) }
    }

    /// The court a confirmation application goes to: the one it names, or else the referrer
    /// if that is a court.
    pub fn confirming_court(&self, request: &duijie_proto::v1::ConfirmationRequest) -> Result<AgencyNode, Refusal> {
        let field = "confirmation_request.court";
        let court = match &request.court {
            Some(c) if !c.code.is_empty() || c.kind != 0 => {
                AgencyNode::from_ref(Some(c)).map_err(|e| Refusal::BadAgency { field, reason: format!("not a valid agency: {e}") })?
            }
            _ if self.referrer.kind() == AgencyKind::Court => return Ok(self.referrer.clone()),
            _ => {
                return Err(Refusal::NotForThisCase(format!(
                    "name the court to apply to (confirmation_request.court): this case's referrer is {}, not a court",
                    self.referrer
                )));
            }
        };
        if court.kind() != AgencyKind::Court {
            return Err(Refusal::BadAgency { field, reason: format!("{court} is not a court") });
        }
        Ok(court)
    }

    /// Whether `payload` from `sender` to `recipient` is the referrer's copy of a confirmation
    /// another court examines (the application, or that court's decision): the referrer
    /// follows it, the audit store records it without moving the case a second time.
    pub fn is_copy(&self, sender: &AgencyNode, recipient: &AgencyNode, payload: &Payload) -> bool {
        if *recipient != self.referrer || self.referrer == self.holder {
            return false;
        }
        match payload {
            Payload::ConfirmationRequest(r) => *sender == self.holder && self.confirming_court(r).is_ok_and(|c| c != self.referrer),
            Payload::ConfirmationDecision(_) => self.court.as_ref() == Some(sender),
            _ => false,
        }
    }

    /// A case `body` took in itself (自行受理): the body is both ends, and the case starts
    /// signed for and accepted.
    pub fn registered(body: AgencyNode) -> Self {
        Self { channel: Channel::SelfIntake, referrer: body.clone(), holder: body, court: None, lifecycle: Lifecycle::at(CaseState::Accepted, None) }
    }

    /// How `agency` stands to the case (the body holding a self-accepted case is its holder).
    pub fn role_of(&self, agency: &AgencyNode) -> Role {
        if *agency == self.holder {
            Role::Holder
        } else if *agency == self.referrer {
            Role::Referrer
        } else if self.court.as_ref() == Some(agency) {
            Role::Court
        } else {
            Role::Other
        }
    }

    /// The kinds the case's state allows on its channel ([`allowed_on`]).
    pub fn allowed(&self) -> Vec<MessageKind> {
        allowed_on(self.channel, self.lifecycle.state)
    }

    /// What `owner` may send next: nothing once the case is over or handed on.
    pub fn allowed_next(&self, owner: &AgencyNode) -> Vec<MessageKind> {
        match self.role_of(owner) {
            _ if self.lifecycle.state.is_final() => Vec::new(),
            Role::Other => Vec::new(),
            // A court the application was made to only decides on it.
            Role::Court => self.allowed().into_iter().filter(|k| *k == MessageKind::ConfirmationDecision).collect(),
            Role::Referrer | Role::Holder => self.allowed(),
        }
    }

    /// Moves `lifecycle` by `payload` under the case's channel ([`allowed_on`]); `crossed`: a
    /// holder's message that crossed the referrer's cancel request.
    fn step(&self, lifecycle: &mut Lifecycle, payload: &Payload, crossed: bool) -> Result<Step, Refusal> {
        let from = lifecycle.state;
        if from == CaseState::Closed && !bus_fact(payload) && !matches!(payload, Payload::Referral(_)) {
            let (kind, allowed) = (payload.kind(), allowed_on(self.channel, from));
            if !allowed.contains(&kind) {
                return Err(Refusal::NotAllowed { state: from, kind, allowed });
            }
        }
        if self.channel == Channel::SelfIntake && !bus_fact(payload) && !matches!(payload, Payload::Referral(_)) {
            let (kind, allowed) = (payload.kind(), allowed_on(self.channel, from));
            if !allowed.contains(&kind) {
                return Err(Refusal::NotAllowed { state: from, kind, allowed });
            }
            if kind == MessageKind::Closure && from.is_returned() {
                lifecycle.state = CaseState::Closed;
                return Ok(Step { from, to: CaseState::Closed, new_holder: None });
            }
        }
        let step = if crossed { lifecycle.apply_crossing(payload) } else { lifecycle.apply(payload) };
        step.map_err(|r| match r {
            Refusal::NotAllowed { state, kind, .. } => Refusal::NotAllowed { state, kind, allowed: allowed_on(self.channel, state) },
            other => other,
        })
    }

    /// Decides what `msg` does, or why the case refuses it. Nothing changes here: the caller
    /// stores the effects (state, holder, timeline, outbox) in one transaction.
    pub fn decide(&self, msg: Message<'_>) -> Result<Effects, Refusal> {
        match msg {
            Message::Outgoing { sender, payload } => self.outgoing(sender, payload),
            Message::Incoming { owner, sender, payload } => self.incoming(Some(owner), sender, payload),
            Message::Observed { sender, recipient, payload } => {
                if self.is_copy(sender, recipient, payload) {
                    return Ok(Effects::Record);
                }
                self.incoming(None, sender, payload)
            }
        }
    }

    fn outgoing(&self, sender: &AgencyNode, payload: &Payload) -> Result<Effects, Refusal> {
        let kind = payload.kind();
        if matches!(payload, Payload::Referral(_)) {
            return Err(Refusal::AlreadyReferred(self.lifecycle.state));
        }
        let role = self.role_of(sender);
        let side = match role {
            Role::Referrer => Side::Referrer,
            Role::Holder => Side::Holder,
            // The court applied to decides as a referring court would.
            Role::Court if kind == MessageKind::ConfirmationDecision => Side::Referrer,
            Role::Court => return Err(Refusal::NotPermitted { agency: sender.clone(), kind }),
            Role::Other => return Err(Refusal::NotAParty { agency: sender.to_string() }),
        };
        if !crate::actions::for_kind(kind).any(|a| a.taken_by(side, sender.kind())) {
            return Err(Refusal::NotPermitted { agency: sender.clone(), kind });
        }
        // A confirmation goes to the court applied to; a referrer that is not that court gets
        // a copy of the application and of the court's decisions.
        let (court, confirmation_copy) = match payload {
            Payload::ConfirmationRequest(r) => {
                let court = self.confirming_court(r)?;
                let copy = (self.referrer != court && self.referrer != self.holder).then(|| self.referrer.clone());
                (Some(court).filter(|c| *c != self.referrer), copy)
            }
            Payload::ConfirmationDecision(_) if role == Role::Court => {
                (None, (self.referrer != self.holder).then(|| self.referrer.clone()))
            }
            _ => (None, None),
        };
        let mut lifecycle = self.lifecycle.clone();
        let step = self.step(&mut lifecycle, payload, false)?;
        let new_holder = self.new_holder(payload, step.new_holder.as_ref())?;
        // Handing the case to another body: only to a mediation body other than the holder.
        let hand_over = new_holder.clone().filter(|h| *h != self.holder);
        if let Some(to) = &hand_over
            && to.kind() != AgencyKind::Mediation
        {
            return Err(Refusal::BadAgency { field: hand_over_field(payload), reason: "a case is handed on only to a mediation body".into() });
        }
        // Referrers (and the court applied to) talk to the holder; the holder answers the
        // referrer, except for a confirmation application, which goes to its court.
        let recipient = match (&court, side) {
            (Some(c), _) => c.clone(),
            (None, Side::Referrer) => self.holder.clone(),
            (None, Side::Holder) => self.referrer.clone(),
        };
        Ok(Effects::Send { lifecycle, new_holder, recipient, copy_to: confirmation_copy, hand_over, court })
    }

    /// A message arriving at `owner`'s copy (`None`: seen by the audit store on the bus).
    fn incoming(&self, owner: Option<&AgencyNode>, sender: &AgencyNode, payload: &Payload) -> Result<Effects, Refusal> {
        if matches!(payload, Payload::Referral(_)) {
            return Err(Refusal::AlreadyReferred(self.lifecycle.state));
        }
        let speaker = self.role_of(sender);
        let notice = matches!(payload, Payload::DeadlineWarning(_) | Payload::DeadlineBreached(_));
        // A referral is delivered to its holder: evidence of that from the referrer (or a court)
        // about itself is a lie, whoever signed it.
        if let Payload::DeliveryEvidence(ev) = payload
            && ev.message_kind() == MessageKind::Referral
            && matches!(speaker, Role::Referrer | Role::Court)
        {
            return Err(Refusal::NotPermitted { agency: sender.clone(), kind: payload.kind() });
        }
        match speaker {
            // Evidence from a body that handed the case on (it took a message and passed it on)
            // is a fact to record; deadline notices come from the audit store for any copy.
            Role::Other if matches!(payload, Payload::DeliveryEvidence(_)) => return Ok(Effects::Record),
            Role::Other if !notice => return Err(Refusal::NotAParty { agency: sender.to_string() }),
            Role::Other => {}
            Role::Referrer | Role::Holder | Role::Court if bus_fact(payload) => {}
            Role::Court if !matches!(payload, Payload::ConfirmationDecision(_)) => {
                return Err(Refusal::NotPermitted { agency: sender.clone(), kind: payload.kind() });
            }
            Role::Referrer | Role::Holder | Role::Court => {
                let side = if speaker == Role::Holder { Side::Holder } else { Side::Referrer };
                if !crate::actions::for_kind(payload.kind()).any(|a| a.taken_by(side, sender.kind())) {
                    return Err(Refusal::NotPermitted { agency: sender.clone(), kind: payload.kind() });
                }
            }
        }
        if owner.is_some_and(|o| self.role_of(o) == Role::Other) {
            // This body handed the case on. The referrer's message goes on to the current holder
            // instead of stopping at a body that no longer acts on the case; anything else (the
            // new holder's evidence for the forwarded referral) is only recorded.
            return Ok(if speaker == Role::Referrer && !bus_fact(payload) { Effects::PassOn { to: self.holder.clone() } } else { Effects::Record });
        }
        if owner.is_some()
            && speaker == Role::Referrer
            && matches!(payload, Payload::Cancellation(_))
            && !self.lifecycle.state.allowed().contains(&MessageKind::Cancellation)
        {
            // The holder rejected the case or reported its outcome before the cancel arrived: the
            // cancel lost the race, and the referrer learns so from the holder's message that
            // crossed it (`Lifecycle::apply_crossing`). Nothing to answer.
            return Ok(Effects::Record);
        }
        let mut lifecycle = self.lifecycle.clone();
        let crossed = speaker == Role::Holder
            && lifecycle.state == CaseState::CancelRequested
            && !matches!(payload, Payload::CancellationConfirmation(_));
        let step = self.step(&mut lifecycle, payload, crossed)?;
        let new_holder = self.new_holder(payload, step.new_holder.as_ref())?;
        // What the sending desk refuses (a hand-over to anything but a mediation body), the
        // receiving one refuses too: only another system's message could carry it.
        if new_holder.as_ref().is_some_and(|h| h.kind() != AgencyKind::Mediation) {
            return Err(Refusal::BadAgency { field: hand_over_field(payload), reason: "a case is handed on only to a mediation body".into() });
        }
        let court = match payload {
            Payload::ConfirmationRequest(r) => Some(self.confirming_court(r)?).filter(|c| *c != self.referrer),
            _ => None,
        };
        Ok(Effects::Apply { lifecycle, new_holder, court, evidence: owner.is_some() && !bus_fact(payload) })
    }

    fn new_holder(&self, payload: &Payload, named: Option<&duijie_proto::v1::AgencyRef>) -> Result<Option<AgencyNode>, Refusal> {
        named
            .map(|h| {
                AgencyNode::from_ref(Some(h))
                    .map_err(|e| Refusal::BadAgency { field: hand_over_field(payload), reason: format!("not a valid agency: {e}") })
            })
            .transpose()
    }

    /// The case `owner` takes on from a referral `sender` sent it: referred by a referring
    /// agency, or handed on by a mediation body (then the referral names the original referrer
    /// and how far the case had come). The history a handed-on case carries is replayed by the
    /// caller with [`Lifecycle::follow`].
    pub fn receive(owner: &AgencyNode, sender: &AgencyNode, channel: Channel, referral: &Referral) -> Result<Case, Refusal> {
        let Some(f) = &referral.forwarded else {
            if channel_of(sender.kind()).is_none() {
                return Err(Refusal::NotPermitted { agency: sender.clone(), kind: MessageKind::Referral });
            }
            return Ok(Case { lifecycle: Lifecycle::at(CaseState::Delivered, None), ..Case::referred(channel, sender.clone(), owner.clone()) });
        };
        // Only a mediation body hands a case on, in its own name, for a case a referring agency sent.
        if sender.kind() != AgencyKind::Mediation || !sender.is(f.forwarded_by.as_ref()) {
            return Err(Refusal::Malformed(format!(
                "a forwarded referral comes from the mediation body that hands the case on, not {} for {}",
                sender,
                ref_str(f.forwarded_by.as_ref())
            )));
        }
        // A self-accepted case handed on keeps the body that registered it as its referrer.
        let original = AgencyNode::from_ref(f.original_referrer.as_ref())
            .ok()
            .filter(|n| channel_of(n.kind()).is_some() || (channel == Channel::SelfIntake && n.kind() == AgencyKind::Mediation))
            .ok_or_else(|| Refusal::Malformed("a forwarded referral names no referring agency as its original referrer".into()))?;
        let state = match f.reason() {
            MessageKind::Redirect => CaseState::Delivered,
            MessageKind::Escalation => CaseState::InMediation,
            other => return Err(Refusal::Malformed(format!("a case is not handed on by {other}"))),
        };
        Ok(Case { channel, referrer: original, holder: owner.clone(), court: None, lifecycle: Lifecycle::at(state, None) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duijie_proto::v1::*;

    fn node(s: &str) -> AgencyNode {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }
    fn court() -> AgencyNode {
        node("court:431003")
    }
    fn centre() -> AgencyNode {
        node("mediation:431003")
    }
    fn town() -> AgencyNode {
        node("mediation:431003-102")
    }
    fn case_at(state: CaseState) -> Case {
        Case { lifecycle: Lifecycle::at(state, None), ..Case::referred(Channel::Court, court(), centre()) }
    }
    fn delivered(kind: MessageKind) -> Payload {
        Payload::DeliveryEvidence(DeliveryEvidence {
            evidence_type: EvidenceType::Delivered as i32,
            message_kind: kind as i32,
            delivered_to: Some(AgencyRef::from(&centre())),
            ..Default::default()
        })
    }
    fn receipt() -> Payload {
        Payload::Receipt(Receipt { signed_by: "王明".into(), ..Default::default() })
    }
    fn accept() -> Payload {
        Payload::Accept(Accept::default())
    }
    fn cancel() -> Payload {
        Payload::Cancellation(Cancellation::default())
    }
    fn answer(confirmed: bool) -> Payload {
        Payload::CancellationConfirmation(CancellationConfirmation { confirmed, ..Default::default() })
    }
    fn redirect(to: &AgencyNode) -> Payload {
        Payload::Redirect(Redirect { to: Some(AgencyRef::from(to)), reason: "labour dispute".into() })
    }
    fn escalate(to: &AgencyNode) -> Payload {
        Payload::Escalation(Escalation { to_agency: Some(AgencyRef::from(to)), ..Default::default() })
    }
    fn settled() -> Payload {
        Payload::Outcome(Outcome { kind: Some(outcome::Kind::Settled(outcome::Settled::default())) })
    }
    fn out(c: &Case, sender: &AgencyNode, payload: &Payload) -> Result<Effects, Refusal> {
        c.decide(Message::Outgoing { sender, payload })
    }
    fn into(c: &Case, owner: &AgencyNode, sender: &AgencyNode, payload: &Payload) -> Result<Effects, Refusal> {
        c.decide(Message::Incoming { owner, sender, payload })
    }
    /// Applies what the desk decided, as the services store it.
    fn apply(c: &mut Case, e: &Effects) {
        match e {
            Effects::Send { lifecycle, new_holder, court, .. } | Effects::Apply { lifecycle, new_holder, court, .. } => {
                c.lifecycle = lifecycle.clone();
                if let Some(h) = new_holder {
                    c.holder = h.clone();
                }
                if court.is_some() {
                    c.court.clone_from(court);
                }
            }
            Effects::Record | Effects::PassOn { .. } => {}
        }
    }
    fn send(c: &mut Case, sender: &AgencyNode, p: &Payload) {
        let e = out(c, sender, p).unwrap_or_else(|r| panic!("{sender} sending {}: {r}", p.kind()));
        apply(c, &e);
    }
    fn take(c: &mut Case, owner: &AgencyNode, sender: &AgencyNode, p: &Payload) {
        let e = into(c, owner, sender, p).unwrap_or_else(|r| panic!("{owner} receiving {}: {r}", p.kind()));
        apply(c, &e);
    }
    /// Both ends run the desk over the same messages: the sender's copy decides `Send`, the
    /// recipient's copy `Apply`; returns both after the message.
    fn exchange(sent: &mut Case, got: &mut Case, from: &AgencyNode, to: &AgencyNode, p: &Payload) {
        let e = out(sent, from, p).unwrap_or_else(|r| panic!("{from} sending {}: {r}", p.kind()));
        apply(sent, &e);
        let e = into(got, to, from, p).unwrap_or_else(|r| panic!("{to} receiving {}: {r}", p.kind()));
        apply(got, &e);
    }

    #[test]
    fn both_ends_agree_through_every_step_of_a_court_case() {
        let mut at_court = Case::referred(Channel::Court, court(), centre());
        let mut at_centre = Case::receive(&centre(), &court(), Channel::Court, &Referral::default()).unwrap_or_else(|r| panic!("{r}"));
        assert_eq!((at_centre.referrer.clone(), at_centre.holder.clone(), at_centre.lifecycle.state), (court(), centre(), CaseState::Delivered));
        let e = into(&at_court, &court(), &centre(), &delivered(MessageKind::Referral));
        assert_eq!(e.as_ref().map(|e| matches!(e, Effects::Apply { evidence: false, .. })), Ok(true), "evidence earns no evidence");
        apply(&mut at_court, &e.unwrap_or(Effects::Record));
        for p in [receipt(), accept(), Payload::Assignment(Assignment::default()), settled(), Payload::ConfirmationRequest(ConfirmationRequest::default())] {
            exchange(&mut at_centre, &mut at_court, &centre(), &court(), &p);
            assert_eq!(at_centre.lifecycle, at_court.lifecycle, "after {}", p.kind());
        }
        for d in [ConfirmationDecisionKind::Accepted, ConfirmationDecisionKind::Granted] {
            let p = Payload::ConfirmationDecision(ConfirmationDecision { decision: d as i32, ..Default::default() });
            exchange(&mut at_court, &mut at_centre, &court(), &centre(), &p);
        }
        for p in [
            Payload::Performance(Performance { status: PerformanceStatus::Performed as i32, ..Default::default() }),
            Payload::FollowUp(FollowUp::default()),
            Payload::Closure(Closure::default()),
        ] {
            exchange(&mut at_centre, &mut at_court, &centre(), &court(), &p);
        }
        assert_eq!((at_court.lifecycle.state, at_centre.lifecycle.state), (CaseState::Closed, CaseState::Closed));
        assert!(at_centre.allowed_next(&centre()).is_empty(), "nothing more on a closed case");
    }

    fn decision(d: ConfirmationDecisionKind) -> Payload {
        Payload::ConfirmationDecision(ConfirmationDecision { decision: d as i32, ..Default::default() })
    }
    fn apply_to(court: &AgencyNode) -> Payload {
        Payload::ConfirmationRequest(ConfirmationRequest { court: Some(AgencyRef::from(court)), ..Default::default() })
    }

    #[test]
    fn a_self_accepted_case_escalates_settles_is_confirmed_by_a_named_court_and_closes() {
        let village = node("mediation:431003-102-05");
        let mut at_village = Case::registered(village.clone());
        assert_eq!((at_village.lifecycle.state, at_village.role_of(&village)), (CaseState::Accepted, Role::Holder));
        let next = at_village.allowed_next(&village);
        assert!(next.contains(&MessageKind::Escalation) && next.contains(&MessageKind::Outcome), "{next:?}");
        assert!(!next.contains(&MessageKind::InfoRequest), "there is no referrer to ask");
        // Its messages go to itself: recorded by the audit store only.
        assert!(matches!(out(&at_village, &village, &Payload::Assignment(Assignment::default())), Ok(Effects::Send { recipient, copy_to: None, .. }) if recipient == village));
        assert!(matches!(out(&at_village, &village, &Payload::InfoRequest(InfoRequest::default())), Err(Refusal::NotAllowed { .. })));
        // Escalated to the town committee, which answers the village from then on.
        send(&mut at_village, &village, &escalate(&town()));
        assert_eq!((at_village.holder.clone(), at_village.role_of(&village)), (town(), Role::Referrer));
        let forwarded = Referral {
            forwarded: Some(ForwardedCase {
                original_referrer: Some(AgencyRef::from(&village)),
                forwarded_by: Some(AgencyRef::from(&village)),
                reason: MessageKind::Escalation as i32,
                history: vec![],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut at_town = Case::receive(&town(), &village, Channel::SelfIntake, &forwarded).unwrap_or_else(|r| panic!("{r}"));
        assert_eq!((at_town.referrer.clone(), at_town.lifecycle.state), (village.clone(), CaseState::InMediation));
        exchange(&mut at_town, &mut at_village, &town(), &village, &settled());
        // Judicial confirmation: the court must be named (the referrer is no court).
        let unnamed = out(&at_town, &town(), &Payload::ConfirmationRequest(ConfirmationRequest::default()));
        assert!(matches!(&unnamed, Err(Refusal::NotForThisCase(m)) if m.contains("confirmation_request.court")), "{unnamed:?}");
        assert!(matches!(out(&at_town, &town(), &apply_to(&centre())), Err(Refusal::BadAgency { field: "confirmation_request.court", .. })));
        let e = out(&at_town, &town(), &apply_to(&court()));
        assert!(matches!(&e, Ok(Effects::Send { recipient, copy_to: Some(v), court: Some(c), .. }) if *recipient == court() && *v == village && *c == court()), "{e:?}");
        apply(&mut at_town, &e.unwrap_or(Effects::Record));
        take(&mut at_village, &village, &town(), &apply_to(&court()));
        assert_eq!((at_village.court.clone(), at_village.role_of(&court())), (Some(court()), Role::Court));
        // The court opens its copy from the application and decides; the village gets copies.
        let mut at_court = Case::applied_to(court(), Channel::SelfIntake, village.clone(), town());
        assert_eq!(at_court.allowed_next(&court()), vec![MessageKind::ConfirmationDecision]);
        for d in [ConfirmationDecisionKind::Accepted, ConfirmationDecisionKind::Granted] {
            let e = out(&at_court, &court(), &decision(d));
            assert!(matches!(&e, Ok(Effects::Send { recipient, copy_to: Some(v), .. }) if *recipient == town() && *v == village), "{e:?}");
            apply(&mut at_court, &e.unwrap_or(Effects::Record));
            take(&mut at_town, &town(), &court(), &decision(d));
            take(&mut at_village, &village, &court(), &decision(d));
        }
        assert!(matches!(out(&at_court, &court(), &Payload::SupervisionNotice(SupervisionNotice::default())), Err(Refusal::NotPermitted { .. })), "the court only decides");
        for p in [Payload::Performance(Performance { status: PerformanceStatus::Performed as i32, ..Default::default() }), Payload::Closure(Closure::default())] {
            exchange(&mut at_town, &mut at_village, &town(), &village, &p);
        }
        assert_eq!((at_town.lifecycle.state, at_village.lifecycle.state, at_court.lifecycle.state), (CaseState::Closed, CaseState::Closed, CaseState::Confirmed));
        // The audit store moves the case on the originals and records the village's copies.
        let mut log = Case { court: None, ..at_town.clone() };
        log.lifecycle = Lifecycle::at(CaseState::Settled, None);
        let seen = |c: &Case, s: &AgencyNode, r: &AgencyNode, p: &Payload| c.decide(Message::Observed { sender: s, recipient: r, payload: p });
        assert_eq!(seen(&log, &town(), &village, &apply_to(&court())), Ok(Effects::Record));
        let e = seen(&log, &town(), &court(), &apply_to(&court()));
        apply(&mut log, &e.unwrap_or(Effects::Record));
        assert_eq!((log.lifecycle.state, log.court.clone()), (CaseState::ConfirmationRequested, Some(court())));
        assert_eq!(seen(&log, &court(), &village, &decision(ConfirmationDecisionKind::Accepted)), Ok(Effects::Record));
        assert!(matches!(seen(&log, &court(), &town(), &decision(ConfirmationDecisionKind::Accepted)), Ok(Effects::Apply { .. })));
    }

    #[test]
    fn a_closed_case_takes_only_the_petition_offices_closing_at_either_end_and_in_the_log() {
        let notice = |d: DispositionKind| Payload::DispositionNotice(DispositionNotice { disposition: d as i32, ..Default::default() });
        // A court case the centre closed: the court's disposition is refused on every path (a
        // forged notice over the bus included).
        let closed = case_at(CaseState::Closed);
        for d in [DispositionKind::FiledForTrial, DispositionKind::PetitionClosed] {
            assert!(matches!(out(&closed, &court(), &notice(d)), Err(Refusal::NotAllowed { state: CaseState::Closed, .. })), "{d:?}");
            assert!(matches!(into(&closed, &centre(), &court(), &notice(d)), Err(Refusal::NotAllowed { .. })), "{d:?}");
            let seen = closed.decide(Message::Observed { sender: &court(), recipient: &centre(), payload: &notice(d) });
            assert!(matches!(seen, Err(Refusal::NotAllowed { .. })), "{d:?}");
        }
        assert!(closed.allowed().is_empty(), "{:?}", closed.allowed());
        // A petition case: the office's 办结, and nothing else.
        let petition = node("petition:431003");
        let closed = Case { channel: Channel::Petition, referrer: petition.clone(), ..case_at(CaseState::Closed) };
        assert_eq!(closed.allowed(), vec![MessageKind::DispositionNotice]);
        assert!(matches!(out(&closed, &petition, &notice(DispositionKind::PetitionClosed)), Ok(Effects::Send { .. })));
        assert!(matches!(into(&closed, &centre(), &petition, &notice(DispositionKind::PetitionClosed)), Ok(Effects::Apply { .. })));
        assert!(matches!(out(&closed, &petition, &notice(DispositionKind::Other)), Err(Refusal::NotForThisCase(_))));
        assert!(matches!(out(&closed, &centre(), &Payload::Closure(Closure::default())), Err(Refusal::NotAllowed { .. })));
    }

    #[test]
    fn a_hand_over_to_anything_but_a_mediation_body_is_refused_on_arrival_too() {
        // Found by the property test: the sending desk refused it, the receiving one took it.
        let received = case_at(CaseState::Received);
        let to_court = redirect(&node("court:431004"));
        assert!(matches!(out(&received, &centre(), &to_court), Err(Refusal::BadAgency { field: "redirect.to", .. })));
        assert!(matches!(into(&received, &court(), &centre(), &to_court), Err(Refusal::BadAgency { field: "redirect.to", .. })));
        let seen = received.decide(Message::Observed { sender: &centre(), recipient: &court(), payload: &to_court });
        assert!(matches!(seen, Err(Refusal::BadAgency { .. })), "{seen:?}");
    }

    #[test]
    fn a_self_accepted_case_that_failed_is_closed_by_its_holder() {
        let body = centre();
        let mut c = Case::registered(body.clone());
        let failed = Payload::Outcome(Outcome { kind: Some(outcome::Kind::Failed(outcome::Failed::default())) });
        send(&mut c, &body, &failed);
        let next = c.allowed_next(&body);
        assert!(next.contains(&MessageKind::Closure) && !next.contains(&MessageKind::DispositionNotice), "{next:?}");
        send(&mut c, &body, &Payload::Closure(Closure::default()));
        assert_eq!(c.lifecycle.state, CaseState::Closed);
        // A referred case that failed still waits for its referrer's disposition.
        let referred = case_at(CaseState::Failed);
        assert!(matches!(out(&referred, &centre(), &Payload::Closure(Closure::default())), Err(Refusal::NotAllowed { .. })));
    }

    #[test]
    fn a_police_case_is_confirmed_by_a_court_with_copies_to_the_police() {
        let police = node("police:431003-01");
        let mut at_centre = Case { channel: Channel::Police, referrer: police.clone(), ..case_at(CaseState::Settled) };
        let mut at_police = at_centre.clone();
        let e = out(&at_centre, &centre(), &apply_to(&court()));
        assert!(matches!(&e, Ok(Effects::Send { recipient, copy_to: Some(p), .. }) if *recipient == court() && *p == police), "{e:?}");
        apply(&mut at_centre, &e.unwrap_or(Effects::Record));
        take(&mut at_police, &police, &centre(), &apply_to(&court()));
        let mut at_court = Case::applied_to(court(), Channel::Police, police.clone(), centre());
        for d in [ConfirmationDecisionKind::Accepted, ConfirmationDecisionKind::Denied] {
            send(&mut at_court, &court(), &decision(d));
            take(&mut at_centre, &centre(), &court(), &decision(d));
            take(&mut at_police, &police, &court(), &decision(d));
        }
        assert_eq!((at_centre.lifecycle.state, at_police.lifecycle.state), (CaseState::ConfirmationDenied, CaseState::ConfirmationDenied));
        // Another court has no say.
        let other = node("court:431000");
        assert!(matches!(into(&at_centre, &centre(), &other, &decision(ConfirmationDecisionKind::Granted)), Err(Refusal::NotAParty { .. })));
        // The referring court of a 诉调 case still decides without being named, and no copy goes out.
        let e = out(&case_at(CaseState::Settled), &centre(), &Payload::ConfirmationRequest(ConfirmationRequest::default()));
        assert!(matches!(&e, Ok(Effects::Send { recipient, copy_to: None, court: None, .. }) if *recipient == court()), "{e:?}");
    }

    #[test]
    fn each_end_sends_only_its_own_steps() {
        let c = case_at(CaseState::Received);
        assert!(matches!(out(&c, &court(), &accept()), Err(Refusal::NotPermitted { .. })), "a court does not accept for the centre");
        assert!(matches!(out(&c, &centre(), &cancel()), Err(Refusal::NotPermitted { .. })), "the centre does not cancel the court's referral");
        assert!(matches!(out(&c, &town(), &accept()), Err(Refusal::NotAParty { .. })), "another committee has no say");
        assert!(matches!(into(&c, &court(), &court(), &accept()), Err(Refusal::NotPermitted { .. })));
        let police = node("police:431003-01");
        let e = into(&c, &centre(), &police, &Payload::SupervisionNotice(SupervisionNotice::default()));
        assert_eq!(e, Err(Refusal::NotAParty { agency: "police:431003-01".into() }));
        assert!(e.err().is_some_and(|r| r.to_string().contains("neither the referrer nor the holder")));
        // Only a court decides a confirmation, and only a court's case is confirmed by its referrer.
        let settled_case = Case { channel: Channel::Police, referrer: police.clone(), ..case_at(CaseState::Settled) };
        let refused = out(&settled_case, &centre(), &Payload::ConfirmationRequest(ConfirmationRequest::default()));
        assert!(matches!(&refused, Err(Refusal::NotForThisCase(m)) if m.contains("police:431003-01")), "{refused:?}");
        let p = Payload::ConfirmationDecision(ConfirmationDecision { decision: ConfirmationDecisionKind::Granted as i32, ..Default::default() });
        assert!(matches!(out(&case_at(CaseState::ConfirmationAccepted), &police, &p), Err(Refusal::NotAParty { .. })));
    }

    #[test]
    fn refusals_name_the_state_and_what_it_allows() {
        let c = case_at(CaseState::Submitted);
        let r = out(&c, &centre(), &settled());
        let Err(Refusal::NotAllowed { state, kind, allowed }) = r.clone() else { panic!("{r:?}") };
        assert_eq!((state, kind), (CaseState::Submitted, MessageKind::Outcome));
        assert_eq!(allowed, CaseState::Submitted.allowed());
        let text = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("case is SUBMITTED") && text.contains("receipt"), "{text}");
        assert_eq!(out(&c, &court(), &Payload::Referral(Referral::default())), Err(Refusal::AlreadyReferred(CaseState::Submitted)));
        assert_eq!(
            out(&case_at(CaseState::Received), &centre(), &Payload::Redirect(Redirect::default())),
            Err(Refusal::Incomplete { kind: MessageKind::Redirect, field: "to" })
        );
    }

    #[test]
    fn evidence_counts_only_for_a_delivered_referral() {
        let c = case_at(CaseState::Submitted);
        let moved = |p: &Payload| match into(&c, &court(), &centre(), p) {
            Ok(Effects::Apply { lifecycle, .. }) => lifecycle.state,
            other => panic!("{other:?}"),
        };
        assert_eq!(moved(&delivered(MessageKind::Referral)), CaseState::Delivered);
        assert_eq!(moved(&delivered(MessageKind::Amendment)), CaseState::Submitted, "evidence for another message");
        let not_delivered = Payload::DeliveryEvidence(DeliveryEvidence {
            evidence_type: EvidenceType::NotDelivered as i32,
            message_kind: MessageKind::Referral as i32,
            ..Default::default()
        });
        assert_eq!(moved(&not_delivered), CaseState::Submitted);
        // After delivery: recorded, no change; from a body that handed the case on: only recorded.
        let later = case_at(CaseState::Accepted);
        assert!(matches!(into(&later, &court(), &centre(), &delivered(MessageKind::Referral)), Ok(Effects::Apply { lifecycle, .. }) if lifecycle.state == CaseState::Accepted));
        assert_eq!(into(&later, &court(), &town(), &delivered(MessageKind::Referral)), Ok(Effects::Record));
        // Deadline notices come from the bus for either end.
        let bus = node("bus:audit");
        assert!(matches!(into(&later, &court(), &bus, &Payload::DeadlineBreached(DeadlineBreached::default())), Ok(Effects::Apply { evidence: false, .. })));
    }

    #[test]
    fn redirect_hands_the_case_to_another_committee_which_answers_the_referrer() {
        let mut at_centre = case_at(CaseState::Received);
        let e = out(&at_centre, &centre(), &redirect(&town()));
        let Ok(Effects::Send { lifecycle, new_holder, recipient, hand_over, .. }) = e.clone() else { panic!("{e:?}") };
        assert_eq!((lifecycle.state, new_holder, recipient, hand_over), (CaseState::Submitted, Some(town()), court(), Some(town())));
        apply(&mut at_centre, &e.unwrap_or(Effects::Record));
        assert_eq!(at_centre.role_of(&centre()), Role::Other, "the centre handed it on");
        assert!(at_centre.allowed_next(&centre()).is_empty());
        // The town committee takes it from the centre's forwarded referral, answering the court.
        let forwarded = Referral {
            forwarded: Some(ForwardedCase {
                original_referrer: Some(AgencyRef::from(&court())),
                forwarded_by: Some(AgencyRef::from(&centre())),
                reason: MessageKind::Redirect as i32,
                history: vec![],
                ..Default::default()
            }),
            ..Default::default()
        };
        let at_town = Case::receive(&town(), &centre(), Channel::Court, &forwarded).unwrap_or_else(|r| panic!("{r}"));
        assert_eq!((at_town.referrer.clone(), at_town.holder.clone(), at_town.lifecycle.state), (court(), town(), CaseState::Delivered));
        assert!(matches!(out(&at_town, &town(), &receipt()), Ok(Effects::Send { recipient, .. }) if recipient == court()));
        // Only the body handing on forwards a case, and only a referring agency's case.
        assert!(matches!(Case::receive(&town(), &court(), Channel::Court, &forwarded), Err(Refusal::Malformed(_))));
        let mut not_referrer = forwarded.clone();
        if let Some(f) = &mut not_referrer.forwarded {
            f.original_referrer = Some(AgencyRef::from(&node("mediation:9")));
        }
        assert!(matches!(Case::receive(&town(), &centre(), Channel::Court, &not_referrer), Err(Refusal::Malformed(_))));
        assert!(matches!(Case::receive(&town(), &centre(), Channel::Court, &Referral::default()), Err(Refusal::NotPermitted { .. })), "a committee refers nothing itself");
        // Handing on goes to a mediation body only.
        let to_court = out(&case_at(CaseState::Received), &centre(), &redirect(&node("court:1")));
        assert!(matches!(to_court, Err(Refusal::BadAgency { field: "redirect.to", .. })), "{to_court:?}");
    }

    #[test]
    fn escalation_moves_the_case_up_and_the_referrer_follows() {
        let village = node("mediation:431003-102-05");
        let mut at_village = Case { holder: village.clone(), ..case_at(CaseState::InMediation) };
        let mut at_court = at_village.clone();
        exchange(&mut at_village, &mut at_court, &village, &court(), &escalate(&town()));
        assert_eq!((at_village.holder.clone(), at_court.holder.clone()), (town(), town()));
        assert_eq!(at_court.lifecycle.state, CaseState::InMediation);
        // Escalating within the same body names no new holder to forward to.
        let same = out(&case_at(CaseState::InMediation), &centre(), &escalate(&centre()));
        assert!(matches!(same, Ok(Effects::Send { hand_over: None, .. })), "{same:?}");
    }

    #[test]
    fn a_referrers_message_crossing_a_hand_over_is_passed_on_to_the_new_holder() {
        // The centre redirected to the town committee; the court's 督办 was already on its way.
        let mut at_centre = case_at(CaseState::Received);
        send(&mut at_centre, &centre(), &redirect(&town()));
        let notice = Payload::SupervisionNotice(SupervisionNotice::default());
        assert_eq!(into(&at_centre, &centre(), &court(), &notice), Ok(Effects::PassOn { to: town() }));
        // What else reaches the centre now is only recorded: the town's evidence for the forwarded referral.
        let town_evidence = Payload::DeliveryEvidence(DeliveryEvidence {
            evidence_type: EvidenceType::Delivered as i32,
            message_kind: MessageKind::Referral as i32,
            delivered_to: Some(AgencyRef::from(&town())),
            ..Default::default()
        });
        assert_eq!(into(&at_centre, &centre(), &town(), &town_evidence), Ok(Effects::Record));
        // The court, told of the redirect, takes the new holder's receipt.
        let mut at_court = case_at(CaseState::Received);
        take(&mut at_court, &court(), &centre(), &redirect(&town()));
        assert!(matches!(into(&at_court, &court(), &town(), &receipt()), Ok(Effects::Apply { .. })));
        assert!(matches!(into(&at_court, &court(), &centre(), &accept()), Err(Refusal::NotAParty { .. })), "the former holder no longer speaks");
    }

    #[test]
    fn a_cancel_crossing_an_accept_leaves_both_ends_in_agreement() {
        // The court asks to cancel while the centre, not yet aware, accepts the case.
        let mut at_court = case_at(CaseState::Received);
        let mut at_centre = case_at(CaseState::Received);
        let sent_cancel = out(&at_court, &court(), &cancel()).unwrap_or(Effects::Record);
        apply(&mut at_court, &sent_cancel);
        let sent_accept = out(&at_centre, &centre(), &accept()).unwrap_or(Effects::Record);
        apply(&mut at_centre, &sent_accept);
        // Each receives the other's message.
        let e = into(&at_court, &court(), &centre(), &accept());
        assert!(matches!(&e, Ok(Effects::Apply { lifecycle, .. }) if lifecycle.state == CaseState::CancelRequested && lifecycle.before_cancel == Some(CaseState::Accepted)), "{e:?}");
        apply(&mut at_court, &e.unwrap_or(Effects::Record));
        take(&mut at_centre, &centre(), &court(), &cancel());
        assert_eq!(at_court.lifecycle, at_centre.lifecycle, "both wait for the answer, interrupted at ACCEPTED");
        // The centre refuses the cancel: both go back to ACCEPTED.
        exchange(&mut at_centre, &mut at_court, &centre(), &court(), &answer(false));
        assert_eq!((at_court.lifecycle.state, at_centre.lifecycle.state), (CaseState::Accepted, CaseState::Accepted));
        // A holder's step the interrupted state does not allow is still refused, naming the wait.
        let mut waiting = case_at(CaseState::Received);
        send(&mut waiting, &court(), &cancel());
        let r = into(&waiting, &court(), &centre(), &settled());
        assert!(matches!(&r, Err(Refusal::NotAllowed { state: CaseState::CancelRequested, kind: MessageKind::Outcome, .. })), "{r:?}");
        // The centre itself answers the cancel before it works on: its own accept waits.
        let mut centre_waiting = case_at(CaseState::Received);
        take(&mut centre_waiting, &centre(), &court(), &cancel());
        assert!(matches!(out(&centre_waiting, &centre(), &accept()), Err(Refusal::NotAllowed { state: CaseState::CancelRequested, .. })));
    }

    #[test]
    fn a_cancel_that_lost_the_race_to_an_outcome_or_a_rejection_leaves_the_case_where_the_holder_put_it() {
        for (at, holders_step, result) in [
            (CaseState::InMediation, settled(), CaseState::Settled),
            (CaseState::Received, Payload::Reject(Reject::default()), CaseState::Rejected),
        ] {
            let mut at_court = case_at(at);
            let mut at_centre = case_at(at);
            send(&mut at_court, &court(), &cancel());
            send(&mut at_centre, &centre(), &holders_step);
            // The centre, past where a cancel applies, records the cancel without answering it.
            assert_eq!(into(&at_centre, &centre(), &court(), &cancel()), Ok(Effects::Record), "from {at}");
            // The court takes the centre's step instead of waiting for an answer that never comes.
            take(&mut at_court, &court(), &centre(), &holders_step);
            assert_eq!(at_court.lifecycle, Lifecycle::at(result, None), "from {at}");
            assert_eq!(at_court.lifecycle, at_centre.lifecycle);
            // The audit store ends there too, whichever of the two it sees first.
            for order in [[&cancel(), &holders_step], [&holders_step, &cancel()]] {
                let mut log = case_at(at);
                for p in order {
                    let sender = if matches!(p, Payload::Cancellation(_)) { court() } else { centre() };
                    let recipient = if sender == court() { centre() } else { court() };
                    if let Ok(e) = log.decide(Message::Observed { sender: &sender, recipient: &recipient, payload: p }) {
                        apply(&mut log, &e);
                    }
                }
                assert_eq!(log.lifecycle, Lifecycle::at(result, None), "audit, from {at}");
            }
        }
    }

    #[test]
    fn a_cancel_crossing_a_redirect_follows_the_case_to_its_new_holder() {
        let mut at_court = case_at(CaseState::Received);
        send(&mut at_court, &court(), &cancel());
        let e = into(&at_court, &court(), &centre(), &redirect(&town()));
        assert!(matches!(&e, Ok(Effects::Apply { new_holder: Some(h), lifecycle, .. }) if *h == town() && lifecycle.before_cancel == Some(CaseState::Submitted)), "{e:?}");
        apply(&mut at_court, &e.unwrap_or(Effects::Record));
        // The new holder answers the cancel, and the court takes its answer.
        let e = into(&at_court, &court(), &town(), &answer(true));
        assert!(matches!(&e, Ok(Effects::Apply { lifecycle, .. }) if lifecycle.state == CaseState::Cancelled), "{e:?}");
    }

    #[test]
    fn the_audit_store_follows_the_same_desk() {
        let c = case_at(CaseState::Received);
        let seen = c.decide(Message::Observed { sender: &centre(), recipient: &court(), payload: &accept() });
        assert!(matches!(seen, Ok(Effects::Apply { evidence: false, ref lifecycle, .. }) if lifecycle.state == CaseState::Accepted));
        let refused = c.decide(Message::Observed { sender: &centre(), recipient: &court(), payload: &settled() });
        assert!(matches!(refused, Err(Refusal::NotAllowed { .. })));
        assert_eq!(c.decide(Message::Observed { sender: &town(), recipient: &court(), payload: &delivered(MessageKind::Referral) }), Ok(Effects::Record));
    }
}
