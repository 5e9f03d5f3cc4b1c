//! The case actions: for every step an agency can take on a case, who may take it, its gRPC
//! method, its form fields and its Chinese label, in one table. The services check a sender's
//! side and kind against it, the console draws its buttons and forms from it, the CLI names
//! the steps with it. The states an action is allowed in are the lifecycle's
//! ([`CaseState::allowed`]); adding an action is one row here and one handler in its service.

use duijie_proto::v1::{AgencyKind, Channel, MessageKind};

use crate::lifecycle::CaseState;

/// Which end of the handoff takes an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The referring agency (court, police, petition office, procuratorate).
    Referrer,
    /// The mediation body holding the case.
    Holder,
}

/// How a form field is entered (the console picks the widget and, for choices, the options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    Text,
    /// Several lines (one item per line where the label says so).
    Area,
    Date,
    Number,
    Check,
    /// One value of an enumeration of the contract.
    Choice,
    /// One of the case's parties.
    Party,
    /// Another mediation body of the directory.
    Agency,
    /// A court of the directory.
    Court,
    /// One of the case's running time limits.
    RunningLimit,
}

/// One field of an action's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    /// The label a clerk reads (Simplified Chinese).
    pub label: &'static str,
    pub input: Input,
    pub required: bool,
}

const fn f(name: &'static str, label: &'static str, input: Input, required: bool) -> Field {
    Field { name, label, input, required }
}

/// One action on a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    /// Stable key (console form value, CLI step name).
    pub key: &'static str,
    /// The message it sends.
    pub kind: MessageKind,
    /// The gRPC method that takes it.
    pub rpc: &'static str,
    /// What the clerk sees on the button and above the form (Simplified Chinese).
    pub label: &'static str,
    pub side: Side,
    /// Only these kinds of agency take it (empty: every kind the contract lets send `kind`).
    pub only: &'static [AgencyKind],
    pub fields: &'static [Field],
}

use Input::*;
use MessageKind as K;

/// Every action, holder's first, in the order a case meets them.
pub const ACTIONS: &[Action] = &[
    Action { key: "sign_for", kind: K::Receipt, rpc: "SignFor", label: "签收", side: Side::Holder, only: &[],
        fields: &[f("signed_by", "签收人", Text, true), f("signer_position", "职务", Text, false)] },
    Action { key: "accept", kind: K::Accept, rpc: "Accept", label: "受理", side: Side::Holder, only: &[],
        fields: &[f("accepted_by", "受理人", Text, true), f("local_reference", "本组织案号", Text, false)] },
    Action { key: "reject", kind: K::Reject, rpc: "Reject", label: "不予受理（退回）", side: Side::Holder, only: &[],
        fields: &[f("reason", "理由", Choice, true), f("explanation", "说明", Area, true)] },
    Action { key: "redirect", kind: K::Redirect, rpc: "Redirect", label: "转办其他调解组织", side: Side::Holder, only: &[],
        fields: &[f("to", "转至", Agency, true), f("reason", "转办理由", Area, true)] },
    Action { key: "assign", kind: K::Assignment, rpc: "Assign", label: "指派调解员", side: Side::Holder, only: &[],
        fields: &[f("mediator_name", "调解员姓名", Text, true), f("mediator_id", "调解员编号", Text, false), f("tier", "调解层级", Choice, false)] },
    Action { key: "escalate", kind: K::Escalation, rpc: "Escalate", label: "上报上一级调解组织", side: Side::Holder, only: &[],
        fields: &[
            f("from_tier", "本级", Choice, false),
            f("to_tier", "上报至层级", Choice, true),
            f("to_agency", "接收组织", Agency, false),
            f("reason", "上报理由", Area, true),
        ] },
    Action { key: "progress", kind: K::Progress, rpc: "ReportProgress", label: "报告调解进展", side: Side::Holder, only: &[],
        fields: &[f("stage", "阶段", Choice, true), f("summary", "进展情况", Area, true), f("sessions_held", "已调解次数", Number, false)] },
    Action { key: "request_info", kind: K::InfoRequest, rpc: "RequestInformation", label: "请移送机构补充材料", side: Side::Holder, only: &[],
        fields: &[f("questions", "需补充的内容（每行一项）", Area, true)] },
    Action { key: "extend", kind: K::ExtensionRequest, rpc: "RequestExtension", label: "延长期限（须全体当事人同意）", side: Side::Holder, only: &[],
        fields: &[
            f("limit", "期限", RunningLimit, true),
            f("days", "延长天数", Number, true),
            f("reason", "理由", Area, true),
            f("all_consented", "全体当事人已同意延长", Check, true),
        ] },
    Action { key: "outcome", kind: K::Outcome, rpc: "ReportOutcome", label: "报告调解结果", side: Side::Holder, only: &[],
        fields: &[
            f("result", "结果", Choice, true),
            f("terms", "协议内容（每行一条；调解成功时必填）", Area, false),
            f("confirmation_intended", "当事人拟申请司法确认", Check, false),
            f("failure_reason", "调解不成的原因", Choice, false),
            f("withdrawing_party", "撤回申请的当事人（撤回时）", Party, false),
            f("explanation", "说明", Area, false),
        ] },
    Action { key: "request_confirmation", kind: K::ConfirmationRequest, rpc: "RequestConfirmation", label: "申请司法确认", side: Side::Holder, only: &[],
        fields: &[
            f("terms", "调解协议内容（每行一条，与报告的协议一致）", Area, true),
            f("court", "受理法院（移送法院受理时可不选）", Court, false),
            f("agreement_signed_on", "协议签订日期（不填则以报告调解成功之日计）", Date, false),
        ] },
    Action { key: "performance", kind: K::Performance, rpc: "RecordPerformance", label: "记录履行情况", side: Side::Holder, only: &[],
        fields: &[f("status", "履行情况", Choice, true), f("note", "说明", Area, false)] },
    Action { key: "follow_up", kind: K::FollowUp, rpc: "RecordFollowUp", label: "记录回访", side: Side::Holder, only: &[],
        fields: &[
            f("method", "回访方式", Choice, true),
            f("conducted_by", "回访人", Text, true),
            f("satisfaction", "当事人评价", Choice, true),
            f("summary", "回访情况", Area, false),
        ] },
    Action { key: "close", kind: K::Closure, rpc: "Close", label: "结案", side: Side::Holder, only: &[],
        fields: &[f("basis", "结案依据", Choice, true), f("closed_by", "结案人", Text, true), f("summary", "结案情况", Area, false)] },
    Action { key: "answer_cancel", kind: K::CancellationConfirmation, rpc: "AnswerCancellation", label: "答复撤回申请", side: Side::Holder, only: &[],
        fields: &[f("confirmed", "答复", Choice, true), f("reason", "理由（不同意时必填）", Area, false)] },
    Action { key: "amend", kind: K::Amendment, rpc: "Amend", label: "补正 / 答复补充材料", side: Side::Referrer, only: &[],
        fields: &[f("reason", "补正或答复内容", Area, true)] },
    Action { key: "cancel", kind: K::Cancellation, rpc: "Cancel", label: "申请撤回", side: Side::Referrer, only: &[],
        fields: &[f("reason", "撤回原因", Choice, true), f("explanation", "说明", Area, false)] },
    Action { key: "supervise", kind: K::SupervisionNotice, rpc: "Supervise", label: "督办", side: Side::Referrer, only: &[],
        fields: &[
            f("level", "督办级别", Choice, true),
            f("instructions", "督办要求", Area, true),
            f("respond_by", "回复期限", Date, false),
            f("supervisor", "督办人", Text, false),
        ] },
    // 办结 follows the centre's closure; before that (a returned case) the office tells its
    // disposition like the other referrers.
    Action { key: "close_petition", kind: K::DispositionNotice, rpc: "ClosePetition", label: "信访事项办结", side: Side::Referrer, only: &[AgencyKind::Petition],
        fields: &[f("document_number", "办结意见书文号", Text, true), f("summary", "办结情况", Area, false)] },
    Action { key: "dispose", kind: K::DispositionNotice, rpc: "Dispose", label: "告知处理结果", side: Side::Referrer, only: &[],
        fields: &[f("disposition", "处理结果", Choice, true), f("document_number", "文书编号", Text, false), f("summary", "说明", Area, false)] },
    Action { key: "decide_confirmation", kind: K::ConfirmationDecision, rpc: "DecideConfirmation", label: "司法确认", side: Side::Referrer, only: &[AgencyKind::Court],
        fields: &[
            // First whether to accept the application, then (accepted) the decision.
            f("decision", "决定", Choice, true),
            f("document_number", "裁定书文号（确认或驳回时必填）", Text, false),
            f("reason", "理由", Area, false),
        ] },
    Action { key: "recognize", kind: K::AgreementRecognition, rpc: "RecognizeAgreement", label: "确认履行、不予处罚", side: Side::Referrer, only: &[AgencyKind::Police],
        fields: &[f("document_number", "文书编号", Text, true), f("recognised_by", "承办民警", Text, true), f("terms", "调解协议内容（每行一条）", Area, true)] },
    Action { key: "review", kind: K::ReconciliationReview, rpc: "ReviewReconciliation", label: "审查和解协议", side: Side::Referrer, only: &[AgencyKind::Procuratorate],
        fields: &[
            f("conclusion", "审查结论", Choice, true),
            f("reviewed_by", "承办检察官", Text, true),
            f("terms", "和解协议内容（每行一条）", Area, true),
            f("reason", "理由", Area, false),
        ] },
];

/// The action `key`.
pub fn by_key(key: &str) -> Option<&'static Action> {
    ACTIONS.iter().find(|a| a.key == key)
}

/// The actions that send `kind` (one, but two for a disposition: 告知处理结果 and 信访办结).
pub fn for_kind(kind: MessageKind) -> impl Iterator<Item = &'static Action> {
    ACTIONS.iter().filter(move |a| a.kind == kind)
}

/// What a case looks like to the actions: its state, channel, and whether the referrer has told
/// its disposition already.
#[derive(Debug, Clone, Copy)]
pub struct Situation {
    pub state: CaseState,
    pub channel: Channel,
    /// The referrer sent its DispositionNotice already (it tells it once).
    pub disposed: bool,
}

impl Action {
    /// Whether an agency of `kind` on `side` of a case may take this action at all.
    pub fn taken_by(&self, side: Side, kind: AgencyKind) -> bool {
        self.side == side && self.kind.allowed_senders().contains(&kind) && (self.only.is_empty() || self.only.contains(&kind))
    }

    /// The states that allow it (the lifecycle's rule).
    pub fn states(&self) -> Vec<CaseState> {
        CaseState::ALL.into_iter().filter(|s| s.allowed().contains(&self.kind)).collect()
    }

    /// Whether `kind` on `side` may take it in `at` (the console shows it; the service may still
    /// refuse details, e.g. a ruling that needs the application accepted first).
    pub fn offered(&self, side: Side, kind: AgencyKind, at: Situation) -> bool {
        if !self.taken_by(side, kind) || !crate::case::allowed_on(at.channel, at.state).contains(&self.kind) {
            return false;
        }
        let open = !at.state.is_final();
        let petition_closing = kind == AgencyKind::Petition && at.state == CaseState::Closed;
        match self.key {
            // 司法确认 goes to a named court, whichever channel the case came from.
            "request_confirmation" => open,
            // 信访办结 is the one step after the centre closed the case.
            "close_petition" => petition_closing && !at.disposed,
            "dispose" => open && !at.disposed,
            _ => open,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_an_agency_sends_has_an_action_and_keys_are_unique() {
        for kind in (1..=30).filter_map(|k| MessageKind::try_from(k).ok()) {
            let bus = matches!(kind, K::DeliveryEvidence | K::DeadlineWarning | K::DeadlineBreached | K::Referral);
            assert_eq!(for_kind(kind).next().is_some(), !bus, "{kind}");
        }
        for (i, a) in ACTIONS.iter().enumerate() {
            assert!(ACTIONS[..i].iter().all(|b| b.key != a.key && b.rpc != a.rpc), "{} twice", a.key);
            assert!(!a.label.is_empty() && a.fields.iter().any(|f| f.required), "{}", a.key);
        }
    }

    /// The gRPC service each side's action is a method of.
    fn services_for(a: &Action) -> Vec<String> {
        match a.side {
            Side::Holder => vec!["MediationService".into()],
            Side::Referrer => {
                let kinds: Vec<AgencyKind> = if a.only.is_empty() { a.kind.allowed_senders().to_vec() } else { a.only.to_vec() };
                let own = kinds.iter().map(|k| {
                    let name = k.as_str();
                    format!("{}{}Service", name[..1].to_uppercase(), &name[1..])
                });
                std::iter::once("ReferralsService".to_owned()).chain(own).collect()
            }
        }
    }

    #[test]
    fn every_action_names_a_method_of_its_sides_service() {
        use duijie_proto::prost::Message as _;
        let set = duijie_proto::prost_types::FileDescriptorSet::decode(duijie_proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_else(|e| panic!("descriptor set: {e}"));
        let methods: Vec<(String, String)> = set
            .file
            .iter()
            .flat_map(|f| f.service.iter())
            .flat_map(|s| s.method.iter().map(move |m| (s.name().to_owned(), m.name().to_owned())))
            .collect();
        for a in ACTIONS {
            let services = services_for(a);
            assert!(
                methods.iter().any(|(s, m)| m == a.rpc && services.contains(s)),
                "{}: no method {} in {services:?}",
                a.key,
                a.rpc
            );
        }
    }

    #[test]
    fn sides_follow_the_contract() {
        for a in ACTIONS {
            let mediation = a.kind.allowed_senders().contains(&AgencyKind::Mediation);
            assert_eq!(a.side == Side::Holder, mediation, "{}", a.key);
            assert!(!a.states().is_empty(), "{} is allowed in no state", a.key);
        }
        let decide = by_key("decide_confirmation").map(|a| (a.taken_by(Side::Referrer, AgencyKind::Court), a.taken_by(Side::Referrer, AgencyKind::Police)));
        assert_eq!(decide, Some((true, false)));
        assert!(by_key("dispose").is_some_and(|a| a.taken_by(Side::Referrer, AgencyKind::Police)));
        assert!(by_key("sign_for").is_some_and(|a| !a.taken_by(Side::Referrer, AgencyKind::Mediation)));
    }

    #[test]
    fn a_disposition_is_told_once_and_a_closed_petition_is_closed_by_the_office() {
        let at = |state, disposed| Situation { state, channel: Channel::Petition, disposed };
        let keys = |kind, s: Situation| {
            ACTIONS.iter().filter(|a| a.offered(Side::Referrer, kind, s)).map(|a| a.key).collect::<Vec<_>>()
        };
        assert_eq!(keys(AgencyKind::Petition, at(CaseState::Closed, false)), vec!["close_petition"]);
        assert_eq!(keys(AgencyKind::Petition, at(CaseState::Closed, true)), Vec::<&str>::new());
        assert!(keys(AgencyKind::Petition, at(CaseState::Failed, false)).contains(&"dispose"));
        assert!(keys(AgencyKind::Court, at(CaseState::Failed, false)).contains(&"dispose"));
        assert_eq!(keys(AgencyKind::Court, at(CaseState::Closed, false)), Vec::<&str>::new(), "nothing on a closed case but 办结");
        assert_eq!(keys(AgencyKind::Court, at(CaseState::Cancelled, false)), Vec::<&str>::new());
        assert!(ACTIONS.iter().any(|a| a.offered(Side::Holder, AgencyKind::Mediation, at(CaseState::Settled, false)) && a.key == "request_confirmation"), "any court may confirm a petition case's agreement");
    }
}
