//! The legal time limits of a case (DESIGN.md §1), computed from its messages: which limits
//! apply under its clock policy, when each started, when it is due (extensions with both
//! parties' consent included), and whether and when it was met.
//!
//! Interpretations, written down because the texts leave room:
//! * a mediation limit is met by the Outcome (settled, failed or withdrawn);
//! * 访调 "forward within 15 days" runs from the Referral and is met by the centre's triage
//!   (Accept, Reject or Redirect); "handle within 60 days" runs from Accept to the Outcome;
//! * 治安调解 round 2 (7 working days) runs from the end of round 1 and only applies once
//!   round 1 ended without an Outcome;
//! * an ExtensionRequest counts only if it names its limit, gives days, and every listed party
//!   consented; extensions are capped where the basis sets a cap (+30 for 诉调 and 信访, +10 for
//!   the 司法确认 decision).

use chrono::{DateTime, Utc};
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::{ClockPolicyKind, ConfirmationDecisionKind, TimeLimit, outcome};

use crate::calendar::{Period, WorkCalendar};

/// One time limit of a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlineStatus {
    pub limit: TimeLimit,
    pub legal_basis: &'static str,
    pub started_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
    /// When the event that satisfies the limit happened, if it did.
    pub met_at: Option<DateTime<Utc>>,
    pub extended_days: u32,
    pub working_days: bool,
}

impl DeadlineStatus {
    /// The contract's form of this limit's status as of `now`.
    pub fn view(&self, now: DateTime<Utc>) -> duijie_proto::v1::DeadlineView {
        use crate::time::timestamp as ts;
        duijie_proto::v1::DeadlineView {
            limit: self.limit as i32,
            legal_basis: self.legal_basis.to_owned(),
            started_at: Some(ts(self.started_at)),
            due_at: Some(ts(self.due_at)),
            met_at: self.met_at.map(ts),
            extended_days: self.extended_days,
            working_days: self.working_days,
            overdue: self.is_overdue(now),
        }
    }

    /// Past due and not met in time (as of `now`).
    pub fn is_overdue(&self, now: DateTime<Utc>) -> bool {
        match self.met_at {
            Some(met) => met > self.due_at,
            None => now > self.due_at,
        }
    }

    /// Still running (not met) as of `now`, and due within `within`.
    pub fn is_near(&self, now: DateTime<Utc>, within: chrono::Duration) -> bool {
        self.met_at.is_none() && now <= self.due_at && self.due_at - now <= within
    }
}

/// The legal basis of a limit, as cited.
pub fn legal_basis(limit: TimeLimit) -> &'static str {
    match limit {
        TimeLimit::CourtMediationOrdinary | TimeLimit::CourtMediationSimplified => {
            "最高人民法院《关于严格依法规范民事案件立案与调解工作的意见》(2025-01-01)"
        }
        TimeLimit::CourtPreFilingMediation => "《最高人民法院关于人民法院特邀调解的规定》",
        TimeLimit::PeoplesMediation => "《人民调解工作若干规定》",
        TimeLimit::ConfirmationApplication => "《中华人民共和国人民调解法》第三十三条",
        TimeLimit::ConfirmationAcceptance | TimeLimit::ConfirmationDecision => "法释〔2011〕5号",
        TimeLimit::PetitionForward | TimeLimit::PetitionHandling => "《信访工作条例》(2022)",
        TimeLimit::PoliceRoundOne | TimeLimit::PoliceRoundTwo => "公通字〔2007〕81号 第9条",
        TimeLimit::Unspecified => "",
    }
}

#[derive(Default)]
struct Facts {
    referral: Option<DateTime<Utc>>,
    receipt: Option<DateTime<Utc>>,
    triage: Option<DateTime<Utc>>,
    accept: Option<DateTime<Utc>>,
    outcome: Option<DateTime<Utc>>,
    settled_for_confirmation: Option<DateTime<Utc>>,
    confirmation_request: Option<DateTime<Utc>>,
    confirmation_accepted: Option<DateTime<Utc>>,
    confirmation_answered: Option<DateTime<Utc>>,
    confirmation_decided: Option<DateTime<Utc>>,
    extensions: Vec<(TimeLimit, u32)>,
}

fn first(slot: &mut Option<DateTime<Utc>>, at: DateTime<Utc>) {
    if slot.is_none() {
        *slot = Some(at);
    }
}

impl Facts {
    fn from(events: &[(DateTime<Utc>, &Payload)]) -> Self {
        let mut f = Facts::default();
        for (at, payload) in events {
            let at = *at;
            match payload {
                // A case a body registered itself is signed for and accepted as it is registered.
                Payload::Referral(r) if r.intake.is_some() && r.forwarded.is_none() => {
                    for slot in [&mut f.referral, &mut f.receipt, &mut f.accept, &mut f.triage] {
                        first(slot, at);
                    }
                }
                Payload::Referral(_) => first(&mut f.referral, at),
                Payload::Receipt(_) => first(&mut f.receipt, at),
                Payload::Accept(_) => {
                    first(&mut f.accept, at);
                    first(&mut f.triage, at);
                }
                Payload::Reject(_) | Payload::Redirect(_) => first(&mut f.triage, at),
                Payload::Outcome(o) => {
                    first(&mut f.outcome, at);
                    if let Some(outcome::Kind::Settled(s)) = &o.kind
                        && s.confirmation_intended
                    {
                        first(&mut f.settled_for_confirmation, at);
                    }
                }
                Payload::ConfirmationRequest(_) => first(&mut f.confirmation_request, at),
                Payload::ConfirmationDecision(d) => {
                    first(&mut f.confirmation_answered, at);
                    match d.decision() {
                        ConfirmationDecisionKind::Accepted => first(&mut f.confirmation_accepted, at),
                        ConfirmationDecisionKind::Granted | ConfirmationDecisionKind::Denied => {
                            first(&mut f.confirmation_decided, at);
                        }
                        _ => {}
                    }
                }
                Payload::ExtensionRequest(x) => {
                    let all_consented = !x.consents.is_empty() && x.consents.iter().all(|c| c.consented);
                    if all_consented && x.days > 0 && x.limit() != TimeLimit::Unspecified {
                        f.extensions.push((x.limit(), x.days));
                    }
                }
                _ => {}
            }
        }
        f
    }

    fn extension(&self, limit: TimeLimit, cap: Option<u32>) -> u32 {
        let total = self.extensions.iter().filter(|(l, _)| *l == limit).fold(0u32, |acc, (_, d)| acc.saturating_add(*d));
        cap.map_or(total, |c| total.min(c))
    }
}

/// The time limits of a case under `policy`, from its messages in order, as of `now`.
pub fn deadlines(
    policy: ClockPolicyKind,
    events: &[(DateTime<Utc>, &Payload)],
    calendar: &WorkCalendar,
    now: DateTime<Utc>,
) -> Vec<DeadlineStatus> {
    let f = Facts::from(events);
    let mut out = Vec::new();
    let mut push = |limit: TimeLimit, start: Option<DateTime<Utc>>, period: Period, cap: Option<u32>, met: Option<DateTime<Utc>>| {
        let Some(start) = start else { return };
        let extended_days = f.extension(limit, cap);
        let mut due = calendar.due(start, period);
        if extended_days > 0 {
            // The extension runs on from the last day of the original period.
            due = calendar.due(due - chrono::Duration::seconds(1), Period::Days(extended_days));
        }
        out.push(DeadlineStatus {
            limit,
            legal_basis: legal_basis(limit),
            started_at: start,
            due_at: due,
            met_at: met,
            extended_days,
            working_days: matches!(period, Period::WorkingDays(_)),
        });
    };
    match policy {
        ClockPolicyKind::CourtOrdinary => {
            push(TimeLimit::CourtMediationOrdinary, f.receipt, Period::Days(15), Some(30), f.outcome);
        }
        ClockPolicyKind::CourtSimplified => {
            push(TimeLimit::CourtMediationSimplified, f.receipt, Period::Days(7), Some(30), f.outcome);
        }
        ClockPolicyKind::CourtPreFiling => {
            push(TimeLimit::CourtPreFilingMediation, f.receipt, Period::Days(30), None, f.outcome);
        }
        ClockPolicyKind::PeoplesMediation => {
            push(TimeLimit::PeoplesMediation, f.accept, Period::Months(1), None, f.outcome);
        }
        ClockPolicyKind::Petition => {
            push(TimeLimit::PetitionForward, f.referral, Period::Days(15), None, f.triage);
            push(TimeLimit::PetitionHandling, f.accept, Period::Days(60), Some(30), f.outcome);
        }
        ClockPolicyKind::Police => {
            if let Some(accept) = f.accept {
                let round_one_due = calendar.due(accept, Period::WorkingDays(3));
                push(TimeLimit::PoliceRoundOne, Some(accept), Period::WorkingDays(3), None, f.outcome);
                let round_one_missed = f.outcome.map_or(now > round_one_due, |o| o > round_one_due);
                if round_one_missed {
                    let round_one_end = round_one_due - chrono::Duration::seconds(1);
                    push(TimeLimit::PoliceRoundTwo, Some(round_one_end), Period::WorkingDays(7), None, f.outcome);
                }
            }
        }
        ClockPolicyKind::Unspecified => {}
    }
    // 司法确认 applies to any channel whose settlement is meant for confirmation.
    push(TimeLimit::ConfirmationApplication, f.settled_for_confirmation, Period::Days(30), None, f.confirmation_request);
    push(TimeLimit::ConfirmationAcceptance, f.confirmation_request, Period::Days(3), None, f.confirmation_answered);
    push(TimeLimit::ConfirmationDecision, f.confirmation_accepted, Period::Days(15), Some(10), f.confirmation_decided);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use duijie_proto::v1::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).map(|d| d.with_timezone(&Utc)).unwrap_or_default()
    }

    fn find(ds: &[DeadlineStatus], limit: TimeLimit) -> Option<&DeadlineStatus> {
        ds.iter().find(|d| d.limit == limit)
    }

    #[test]
    fn court_limit_starts_at_receipt_and_is_extended_only_with_everyones_consent() {
        let cal = WorkCalendar::weekends_only();
        let referral = Payload::Referral(Referral::default());
        let receipt = Payload::Receipt(Receipt::default());
        let consent = |ok: bool| PartyConsent { party_id: "p1".into(), consented: ok, ..Default::default() };
        let half = Payload::ExtensionRequest(ExtensionRequest {
            limit: TimeLimit::CourtMediationOrdinary as i32,
            days: 30,
            consents: vec![consent(true), consent(false)],
            ..Default::default()
        });
        let events = vec![(at("2025-03-01T09:00:00+08:00"), &referral), (at("2025-03-03T10:00:00+08:00"), &receipt), (at("2025-03-10T10:00:00+08:00"), &half)];
        let now = at("2025-03-20T12:00:00+08:00");
        let ds = deadlines(ClockPolicyKind::CourtOrdinary, &events, &cal, now);
        let d = find(&ds, TimeLimit::CourtMediationOrdinary).cloned();
        assert_eq!(d.as_ref().map(|d| (d.started_at, d.due_at, d.extended_days)), Some((at("2025-03-03T10:00:00+08:00"), at("2025-03-19T00:00:00+08:00"), 0)));
        assert!(d.is_some_and(|d| d.is_overdue(now)), "no outcome by 03-18: overdue");

        let both = Payload::ExtensionRequest(ExtensionRequest {
            limit: TimeLimit::CourtMediationOrdinary as i32,
            days: 45,
            consents: vec![consent(true), consent(true)],
            ..Default::default()
        });
        let mut events = events;
        events.push((at("2025-03-11T10:00:00+08:00"), &both));
        let ds = deadlines(ClockPolicyKind::CourtOrdinary, &events, &cal, now);
        let d = find(&ds, TimeLimit::CourtMediationOrdinary);
        // capped at +30: last day 03-18 + 30 = 04-17 (Thursday), due 04-18 00:00 CST
        assert_eq!(d.map(|d| (d.extended_days, d.due_at)), Some((30, at("2025-04-18T00:00:00+08:00"))));
        assert!(d.is_some_and(|d| !d.is_overdue(now)));
    }

    #[test]
    fn police_rounds_count_working_days_and_round_two_only_after_a_missed_round_one() {
        let cal = WorkCalendar::bundled();
        let accept = Payload::Accept(Accept::default());
        let events = vec![(at("2025-09-25T15:00:00+08:00"), &accept)];
        let early = deadlines(ClockPolicyKind::Police, &events, &cal, at("2025-09-26T12:00:00+08:00"));
        assert_eq!(find(&early, TimeLimit::PoliceRoundOne).map(|d| (d.due_at, d.working_days)), Some((at("2025-09-30T00:00:00+08:00"), true)));
        assert!(find(&early, TimeLimit::PoliceRoundTwo).is_none());
        let late = deadlines(ClockPolicyKind::Police, &events, &cal, at("2025-10-01T12:00:00+08:00"));
        // round 1 ended 09-29; 7 working days after: 09-30, 10-09, 10-10, 10-11 (调休), 10-13, 10-14, 10-15
        assert_eq!(find(&late, TimeLimit::PoliceRoundTwo).map(|d| d.due_at), Some(at("2025-10-16T00:00:00+08:00")));
    }

    #[test]
    fn confirmation_limits_follow_the_settlement_request_and_decision() {
        let cal = WorkCalendar::weekends_only();
        let settled = Payload::Outcome(Outcome {
            kind: Some(outcome::Kind::Settled(outcome::Settled { confirmation_intended: true, ..Default::default() })),
        });
        let request = Payload::ConfirmationRequest(ConfirmationRequest::default());
        let accepted = Payload::ConfirmationDecision(ConfirmationDecision { decision: ConfirmationDecisionKind::Accepted as i32, ..Default::default() });
        let granted = Payload::ConfirmationDecision(ConfirmationDecision { decision: ConfirmationDecisionKind::Granted as i32, ..Default::default() });
        let events = vec![
            (at("2025-03-03T10:00:00+08:00"), &settled),
            (at("2025-03-05T10:00:00+08:00"), &request),
            (at("2025-03-06T10:00:00+08:00"), &accepted),
            (at("2025-03-12T10:00:00+08:00"), &granted),
        ];
        let now = at("2025-04-30T00:00:00+08:00");
        let ds = deadlines(ClockPolicyKind::CourtOrdinary, &events, &cal, now);
        for limit in [TimeLimit::ConfirmationApplication, TimeLimit::ConfirmationAcceptance, TimeLimit::ConfirmationDecision] {
            let d = find(&ds, limit);
            assert!(d.is_some_and(|d| d.met_at.is_some() && !d.is_overdue(now)), "{limit:?}: {d:?}");
        }
        assert!(find(&ds, TimeLimit::CourtMediationOrdinary).is_none(), "no receipt, no clock");
    }

    #[test]
    fn petition_forwarding_is_met_by_triage() {
        let cal = WorkCalendar::weekends_only();
        let referral = Payload::Referral(Referral::default());
        let redirect = Payload::Redirect(Redirect::default());
        let events = vec![(at("2025-03-03T10:00:00+08:00"), &referral), (at("2025-03-20T10:00:00+08:00"), &redirect)];
        let ds = deadlines(ClockPolicyKind::Petition, &events, &cal, at("2025-03-21T00:00:00+08:00"));
        let fwd = find(&ds, TimeLimit::PetitionForward);
        assert!(fwd.is_some_and(|d| d.met_at.is_some() && d.is_overdue(at("2025-03-21T00:00:00+08:00"))), "met, but late: {fwd:?}");
        assert!(find(&ds, TimeLimit::PetitionHandling).is_none(), "never accepted");
    }
}
