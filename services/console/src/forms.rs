//! The console's forms: what each one asks, how its answers become a gRPC request, and the
//! checks the console makes itself (the services check everything again; their field errors are
//! mapped back onto the form's fields).

use chrono::{NaiveDate, TimeZone as _};
use duijie_common::amqp::AgencyNode;
use duijie_proto::answered_case;
use duijie_proto::v1::*;
use sha2::Digest as _;
use tonic::transport::Channel as GrpcChannel;

use crate::backend::UiError;
use crate::labels;

/// A submitted form: every (name, value) pair, in order (checkbox groups repeat a name).
#[derive(Debug, Default, Clone)]
pub struct Fields(pub Vec<(String, String)>);

impl Fields {
    pub fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v.trim())
    }
    pub fn checked(&self, name: &str) -> bool {
        !self.get(name).is_empty()
    }
    fn lines(&self, name: &str) -> Vec<String> {
        self.get(name).lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
    }
}

/// Errors collected while reading a form: (form field, Chinese message).
#[derive(Default)]
struct Check(Vec<(String, String)>);

impl Check {
    fn required<'a>(&mut self, f: &'a Fields, name: &str, label: &str) -> &'a str {
        let v = f.get(name);
        if v.is_empty() {
            self.0.push((name.into(), format!("请填写“{label}”")));
        }
        v
    }
    fn fail(&mut self, name: &str, msg: String) {
        self.0.push((name.into(), msg));
    }
    fn done(self) -> Result<(), UiError> {
        if self.0.is_empty() { Ok(()) } else { Err(UiError::Form(self.0)) }
    }
}

fn enum_value<E: TryFrom<i32>>(f: &Fields, name: &str, check: &mut Check, label: &str) -> i32 {
    match f.get(name).parse::<i32>() {
        Ok(v) if v > 0 && E::try_from(v).is_ok() => v,
        _ => {
            check.fail(name, format!("请选择“{label}”"));
            0
        }
    }
}

/// A date as the start of that day, China time (UTC+8), the way the agencies write dates.
fn date(f: &Fields, name: &str, check: &mut Check, label: &str) -> Option<prost_types::Timestamp> {
    date_at(f, name, check, label, (0, 0, 0))
}

/// A date by which something is due: the end of that day, China time.
fn due_date(f: &Fields, name: &str, check: &mut Check, label: &str) -> Option<prost_types::Timestamp> {
    date_at(f, name, check, label, (23, 59, 59))
}

fn date_at(f: &Fields, name: &str, check: &mut Check, label: &str, (h, m, sec): (u32, u32, u32)) -> Option<prost_types::Timestamp> {
    let v = f.get(name);
    if v.is_empty() {
        return None;
    }
    let parsed = NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(h, m, sec))
        .and_then(|d| chrono::FixedOffset::east_opt(8 * 3600).and_then(|tz| tz.from_local_datetime(&d).single()));
    match parsed {
        Some(t) => Some(prost_types::Timestamp { seconds: t.timestamp(), nanos: 0 }),
        None => {
            check.fail(name, format!("“{label}”不是有效日期（格式：2026-01-31）"));
            None
        }
    }
}

/// Yuan as a clerk types them (`3000`, `3000.5`, `3,000.50`, full-width comma) to fen.
pub fn yuan_to_fen(s: &str) -> Option<i64> {
    duijie_domain::money::yuan_to_fen(&s.replace([',', '，', ' '], ""))
}

/// The new-referral form for a referrer of `me`.
pub fn referral(f: &Fields, me: &AgencyNode, bodies: &[(AgencyNode, String)]) -> Result<SubmitReferralRequest, UiError> {
    let mut c = Check::default();
    let to = c.required(f, "to", "接收调解组织");
    let to = bodies.iter().find(|(n, _)| n.to_string() == to).map(|(n, _)| AgencyRef::from(n));
    if to.is_none() && !f.get("to").is_empty() {
        c.fail("to", "接收调解组织不在名录中".into());
    }
    let case_code = c.required(f, "case_code", "解纷码").to_owned();
    let mode = enum_value::<ReferralMode>(f, "mode", &mut c, "移送方式");
    let clock = enum_value::<ClockPolicyKind>(f, "clock_policy", &mut c, "计时规则");
    if clock > 0 && !labels::clock_policies(me.kind).iter().any(|k| *k as i32 == clock) {
        c.fail("clock_policy", "本机构不能选择该计时规则".into());
    }
    let registered_at = date(f, "registered_at", &mut c, "立案时间");
    let category = enum_value::<DisputeCategory>(f, "category", &mut c, "纠纷类型");
    let cause = c.required(f, "cause_of_action", "案由").to_owned();
    let facts = c.required(f, "facts", "基本事实").to_owned();
    let amount = match f.get("amount") {
        "" => None,
        v => match yuan_to_fen(v) {
            Some(minor_units) => Some(Money { currency: "CNY".into(), minor_units }),
            None => {
                c.fail("amount", "标的额应为金额（元），如 3000 或 3000.50".into());
                None
            }
        },
    };
    let mut parties = Vec::new();
    let mut consents = Vec::new();
    for i in 0..2 {
        let p = |s: &str| format!("p{i}_{s}");
        let name = f.get(&p("name"));
        if name.is_empty() {
            if i == 0 {
                c.fail(&p("name"), "请填写当事人1的姓名或名称".into());
            }
            continue;
        }
        let party_id = format!("p{}", i + 1);
        let id_type = f.get(&p("id_type")).parse::<i32>().unwrap_or(IdDocumentType::ResidentIdCard as i32);
        let number = f.get(&p("id_number"));
        parties.push(Party {
            party_id: party_id.clone(),
            role: f.get(&p("role")).parse::<i32>().unwrap_or(if i == 0 { PartyRole::Applicant as i32 } else { PartyRole::Respondent as i32 }),
            party_type: if id_type == IdDocumentType::SocialCreditCode as i32 { PartyType::LegalPerson as i32 } else { PartyType::NaturalPerson as i32 },
            name: name.to_owned(),
            identity: (!number.is_empty()).then(|| IdentityDocument { document_type: id_type, number: number.to_owned() }),
            contact: f.get(&p("contact")).to_owned(),
            address: f.get(&p("address")).to_owned(),
            ..Default::default()
        });
        if f.checked(&p("consent")) {
            consents.push(PartyConsent {
                party_id,
                consented: true,
                method: ConsentMethod::Written as i32,
                consented_at: Some(duijie_common::envelope::timestamp(chrono::Utc::now())),
            });
        }
    }
    if f.get("client_request_id").is_empty() {
        c.fail("client_request_id", "表单已失效，请刷新页面后重新填写".into());
    }
    c.done()?;
    Ok(SubmitReferralRequest {
        to,
        case_code,
        referral: Some(Referral {
            legal_basis: f.get("legal_basis").to_owned(),
            mode,
            source_reference: f.get("source_reference").to_owned(),
            registered_at,
            parties,
            category,
            cause_of_action: cause,
            facts,
            claims: f.lines("claims"),
            amount,
            consents,
            clock_policy: Some(ClockPolicy { kind: clock, ..Default::default() }),
            client_request_id: f.get("client_request_id").to_owned(),
            note: f.get("note").to_owned(),
            ..Default::default()
        }),
    })
}

/// The form field a service's field path (`referral.parties[0].identity.number`) belongs to.
pub fn form_field(path: &str) -> String {
    let path = path.strip_prefix("referral.").unwrap_or(path);
    if let Some(rest) = path.strip_prefix("parties[")
        && let Some((n, tail)) = rest.split_once(']')
    {
        let tail = tail.trim_start_matches('.');
        let field = match tail {
            "identity.number" => "id_number",
            "identity" | "identity.document_type" => "id_type",
            "" => "name",
            t => t.split('.').next().unwrap_or("name"),
        };
        return format!("p{n}_{field}");
    }
    // `outcome.settled.terms` → `terms`; `clock_policy.kind` → `clock_policy`.
    let parts: Vec<&str> = path.split('.').collect();
    match parts.as_slice() {
        ["clock_policy", ..] => "clock_policy".into(),
        [single] => (*single).into(),
        [.., last] => (*last).into(),
        [] => String::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Actions on a case
// ---------------------------------------------------------------------------------------------

/// How a field is entered.
pub enum Input {
    Text,
    Area,
    Date,
    Number,
    Select(Vec<(i32, &'static str)>),
    /// A choice whose labels come from the case (its parties).
    Named(Vec<(i32, String)>),
    /// A choice of agencies (value `<kind>:<code>`).
    Agency(Vec<(String, String)>),
    Check,
}

pub struct FieldSpec {
    pub name: &'static str,
    pub label: &'static str,
    pub input: Input,
    pub required: bool,
}

fn field(name: &'static str, label: &'static str, input: Input, required: bool) -> FieldSpec {
    FieldSpec { name, label, input, required }
}

fn options<E: Copy + Into<i32>>(all: &[E], label: fn(E) -> &'static str) -> Input {
    Input::Select(all.iter().map(|e| ((*e).into(), label(*e))).collect())
}

/// One action a clerk can take on a case.
pub struct ActionSpec {
    /// The form's `action` value.
    pub key: &'static str,
    pub kind: MessageKind,
    pub title: &'static str,
    pub fields: Vec<FieldSpec>,
}

/// The action `key` as `me` may take it on this case whatever the state now (for a submitted
/// form: the service decides whether the state still allows it, or answers a retry).
pub fn action_by_key(me: &AgencyNode, view: &CaseView, bodies: &[(AgencyNode, String)], key: &str) -> Option<ActionSpec> {
    let mut any_state = view.clone();
    any_state.allowed_next = (1..=26).collect();
    any_state.timeline.retain(|e| e.kind() != MessageKind::DispositionNotice);
    // Either form of the petition office's last step.
    for state in ["CLOSED", "FAILED"] {
        any_state.state = state.into();
        if let Some(spec) = actions_for(me, &any_state, bodies).into_iter().find(|a| a.key == key) {
            return Some(spec);
        }
    }
    None
}

/// What `me` may do with the case, given what its state allows.
pub fn actions_for(me: &AgencyNode, view: &CaseView, bodies: &[(AgencyNode, String)]) -> Vec<ActionSpec> {
    use MessageKind as K;
    let allowed: Vec<MessageKind> = view.allowed_next.iter().filter_map(|k| MessageKind::try_from(*k).ok()).collect();
    let holder = view.holder.as_ref().is_some_and(|h| h.kind == me.kind as i32 && h.code == me.code);
    let referrer = view.referrer.as_ref().is_some_and(|r| r.kind == me.kind as i32 && r.code == me.code);
    let others: Vec<(String, String)> =
        bodies.iter().filter(|(n, _)| n != me).map(|(n, name)| (n.to_string(), name.clone())).collect();
    let parties: Vec<(i32, String)> = view
        .referral
        .as_ref()
        .map(|r| r.parties.iter().enumerate().map(|(i, p)| (i as i32 + 1, format!("{}（{}）", p.name, labels::party_role(p.role())))).collect())
        .unwrap_or_default();
    // A referrer tells its final disposition once.
    let disposed = view.timeline.iter().any(|e| e.direction == "out" && e.kind() == K::DispositionNotice);
    let running_limits: Vec<(i32, &'static str)> = view
        .deadlines
        .iter()
        .filter(|d| d.met_at.is_none())
        .map(|d| (d.limit, labels::time_limit(d.limit())))
        .collect();
    let mut out = Vec::new();
    for kind in allowed {
        let spec = match kind {
            K::Receipt if holder => ActionSpec {
                key: "sign_for",
                kind,
                title: "签收",
                fields: vec![field("signed_by", "签收人", Input::Text, true), field("signer_position", "职务", Input::Text, false)],
            },
            K::Accept if holder => ActionSpec {
                key: "accept",
                kind,
                title: "受理",
                fields: vec![field("accepted_by", "受理人", Input::Text, true), field("local_reference", "本组织案号", Input::Text, false)],
            },
            K::Reject if holder => ActionSpec {
                key: "reject",
                kind,
                title: "不予受理（退回）",
                fields: vec![
                    field("reason", "理由", options(&[RejectReason::OutOfScope, RejectReason::PartyRefused, RejectReason::AlreadyHandled, RejectReason::Incomplete, RejectReason::NotCompetent, RejectReason::Other], labels::reject_reason), true),
                    field("explanation", "说明", Input::Area, true),
                ],
            },
            K::Redirect if holder && !others.is_empty() => ActionSpec {
                key: "redirect",
                kind,
                title: "转办其他调解组织",
                fields: vec![field("to", "转至", Input::Agency(others.clone()), true), field("reason", "转办理由", Input::Area, true)],
            },
            K::Assignment if holder => ActionSpec {
                key: "assign",
                kind,
                title: "指派调解员",
                fields: vec![
                    field("mediator_name", "调解员姓名", Input::Text, true),
                    field("mediator_id", "调解员编号", Input::Text, false),
                    field("tier", "调解层级", options(&labels::TIERS, labels::tier), false),
                ],
            },
            K::Escalation if holder && !others.is_empty() => ActionSpec {
                key: "escalate",
                kind,
                title: "上报上一级调解组织",
                fields: vec![
                    field("from_tier", "本级", options(&labels::TIERS[..4], labels::tier), false),
                    field("to_tier", "上报至层级", options(&labels::TIERS[1..4], labels::tier), true),
                    field("to_agency", "接收组织", Input::Agency(others.clone()), false),
                    field("reason", "上报理由", Input::Area, true),
                ],
            },
            K::Progress if holder => ActionSpec {
                key: "progress",
                kind,
                title: "报告调解进展",
                fields: vec![
                    field("stage", "阶段", options(&[ProgressStage::PartiesContacted, ProgressStage::Investigating, ProgressStage::SessionHeld, ProgressStage::AwaitingParty, ProgressStage::Appraisal, ProgressStage::Other], labels::progress_stage), true),
                    field("summary", "进展情况", Input::Area, true),
                    field("sessions_held", "已调解次数", Input::Number, false),
                ],
            },
            K::InfoRequest if holder => ActionSpec {
                key: "request_info",
                kind,
                title: "请移送机构补充材料",
                fields: vec![field("questions", "需补充的内容（每行一项）", Input::Area, true)],
            },
            K::ExtensionRequest if holder && !running_limits.is_empty() => ActionSpec {
                key: "extend",
                kind,
                title: "延长期限（须全体当事人同意）",
                fields: vec![
                    field("limit", "期限", Input::Select(running_limits.clone()), true),
                    field("days", "延长天数", Input::Number, true),
                    field("reason", "理由", Input::Area, true),
                    field("all_consented", "全体当事人已同意延长", Input::Check, true),
                ],
            },
            K::Outcome if holder => ActionSpec {
                key: "outcome",
                kind,
                title: "报告调解结果",
                fields: vec![
                    field("result", "结果", Input::Select(vec![(1, "调解成功，达成协议"), (2, "调解不成"), (3, "当事人撤回调解申请")]), true),
                    field("terms", "协议内容（每行一条；调解成功时必填）", Input::Area, false),
                    field("confirmation_intended", "当事人拟申请司法确认", Input::Check, false),
                    field("failure_reason", "调解不成的原因", options(&[FailureReason::NoAgreement, FailureReason::PartyAbsent, FailureReason::PartyRefused, FailureReason::TimeLimitExpired, FailureReason::Other], labels::failure_reason), false),
                    field("withdrawing_party", "撤回申请的当事人（撤回时）", Input::Named(parties.clone()), false),
                    field("explanation", "说明", Input::Area, false),
                ],
            },
            K::ConfirmationRequest if holder && view.channel() == Channel::Court => ActionSpec {
                key: "request_confirmation",
                kind,
                title: "申请司法确认",
                fields: vec![field("terms", "调解协议内容（每行一条，与报告的协议一致）", Input::Area, true)],
            },
            K::Performance if holder => ActionSpec {
                key: "performance",
                kind,
                title: "记录履行情况",
                fields: vec![
                    field("status", "履行情况", options(&[PerformanceStatus::Performed, PerformanceStatus::Defaulted], labels::performance), true),
                    field("note", "说明", Input::Area, false),
                ],
            },
            K::FollowUp if holder => ActionSpec {
                key: "follow_up",
                kind,
                title: "记录回访",
                fields: vec![
                    field("method", "回访方式", options(&[FollowUpMethod::Visit, FollowUpMethod::Phone, FollowUpMethod::Online], labels::follow_up_method), true),
                    field("conducted_by", "回访人", Input::Text, true),
                    field("satisfaction", "当事人评价", options(&[Satisfaction::Satisfied, Satisfaction::BasicallySatisfied, Satisfaction::Dissatisfied], labels::satisfaction), true),
                    field("summary", "回访情况", Input::Area, false),
                ],
            },
            K::Closure if holder => ActionSpec {
                key: "close",
                kind,
                title: "结案",
                fields: vec![
                    field("basis", "结案依据", options(&[ClosureBasis::Performed, ClosureBasis::Disposed, ClosureBasis::Cancelled, ClosureBasis::Other], labels::closure_basis), true),
                    field("closed_by", "结案人", Input::Text, true),
                    field("summary", "结案情况", Input::Area, false),
                ],
            },
            K::CancellationConfirmation if holder => ActionSpec {
                key: "answer_cancel",
                kind,
                title: "答复撤回申请",
                fields: vec![
                    field("confirmed", "答复", Input::Select(vec![(1, "同意撤回"), (2, "不同意撤回")]), true),
                    field("reason", "理由（不同意时必填）", Input::Area, false),
                ],
            },
            K::Amendment if referrer => ActionSpec {
                key: "amend",
                kind,
                title: "补正 / 答复补充材料",
                fields: vec![field("reason", "补正或答复内容", Input::Area, true)],
            },
            K::Cancellation if referrer => ActionSpec {
                key: "cancel",
                kind,
                title: "申请撤回",
                fields: vec![
                    field("reason", "撤回原因", options(&[CancellationReason::SettledOutside, CancellationReason::ApplicantWithdrew, CancellationReason::SentInError, CancellationReason::Duplicate, CancellationReason::HandledBySender, CancellationReason::Other], labels::cancellation_reason), true),
                    field("explanation", "说明", Input::Area, false),
                ],
            },
            K::SupervisionNotice if referrer => ActionSpec {
                key: "supervise",
                kind,
                title: "督办",
                fields: vec![
                    field("level", "督办级别", options(&[SupervisionLevel::Ordinary, SupervisionLevel::Listed], labels::supervision_level), true),
                    field("instructions", "督办要求", Input::Area, true),
                    field("respond_by", "回复期限", Input::Date, false),
                    field("supervisor", "督办人", Input::Text, false),
                ],
            },
            // 办结 follows the centre's closure; before that (a returned case) the office tells
            // its disposition like the other referrers.
            K::DispositionNotice if referrer && me.kind == AgencyKind::Petition && view.state == "CLOSED" && !disposed => ActionSpec {
                key: "close_petition",
                kind,
                title: "信访事项办结",
                fields: vec![field("document_number", "办结意见书文号", Input::Text, true), field("summary", "办结情况", Input::Area, false)],
            },
            K::DispositionNotice if referrer && !disposed && !(me.kind == AgencyKind::Petition && view.state == "CLOSED") => ActionSpec {
                key: "dispose",
                kind,
                title: "告知处理结果",
                fields: vec![
                    field("disposition", "处理结果", options(&labels::dispositions(me.kind), labels::disposition), true),
                    field("document_number", "文书编号", Input::Text, false),
                    field("summary", "说明", Input::Area, false),
                ],
            },
            K::ConfirmationDecision if referrer && me.kind == AgencyKind::Court => ActionSpec {
                key: "decide_confirmation",
                kind,
                title: "司法确认",
                fields: vec![
                    // First whether to accept the application, then (accepted) the decision.
                    field("decision", "决定", if view.state == "CONFIRMATION_ACCEPTED" {
                        options(&[ConfirmationDecisionKind::Granted, ConfirmationDecisionKind::Denied], labels::confirmation_decision)
                    } else {
                        options(&[ConfirmationDecisionKind::Accepted, ConfirmationDecisionKind::NotAccepted], labels::confirmation_decision)
                    }, true),
                    field("document_number", "裁定书文号（确认或驳回时必填）", Input::Text, false),
                    field("reason", "理由", Input::Area, false),
                ],
            },
            K::AgreementRecognition if referrer && me.kind == AgencyKind::Police => ActionSpec {
                key: "recognize",
                kind,
                title: "确认履行、不予处罚",
                fields: vec![
                    field("document_number", "文书编号", Input::Text, true),
                    field("recognised_by", "承办民警", Input::Text, true),
                    field("terms", "调解协议内容（每行一条）", Input::Area, true),
                ],
            },
            K::ReconciliationReview if referrer && me.kind == AgencyKind::Procuratorate => ActionSpec {
                key: "review",
                kind,
                title: "审查和解协议",
                fields: vec![
                    field("conclusion", "审查结论", options(&[ReviewConclusion::VoluntaryAndLawful, ReviewConclusion::NotVoluntary, ReviewConclusion::Unlawful], labels::review_conclusion), true),
                    field("reviewed_by", "承办检察官", Input::Text, true),
                    field("terms", "和解协议内容（每行一条）", Input::Area, true),
                    field("reason", "理由", Input::Area, false),
                ],
            },
            _ => continue,
        };
        out.push(spec);
    }
    out
}

/// The agreement as a document: the console keeps the text the clerk typed and sends its
/// digest, which every agency can compare with the signed paper.
fn agreement(terms: &[String]) -> AttachmentDigest {
    let text = terms.join("\n");
    AttachmentDigest {
        name: "调解协议书.txt".into(),
        media_type: "text/plain; charset=utf-8".into(),
        sha256_hex: hex(&sha2::Sha256::digest(text.as_bytes())),
        size_bytes: text.len() as u64,
        ..Default::default()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn agency_ref(s: &str) -> Option<AgencyRef> {
    AgencyRef::parse(s)
}

fn with_key<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Ok(v) = key.parse() {
        req.metadata_mut().insert("idempotency-key", v);
    }
    req
}

/// Reads the form of action `key` on the case `view` (as just read) and calls the service; the
/// answer is the case as it is now.
pub async fn perform(ch: GrpcChannel, view: &CaseView, key: &str, f: &Fields, spec: &ActionSpec) -> Result<CaseView, UiError> {
    use duijie_proto::v1::court_service_client::CourtServiceClient;
    use duijie_proto::v1::mediation_service_client::MediationServiceClient;
    use duijie_proto::v1::petition_service_client::PetitionServiceClient;
    use duijie_proto::v1::police_service_client::PoliceServiceClient;
    use duijie_proto::v1::procuratorate_service_client::ProcuratorateServiceClient;
    use duijie_proto::v1::referrals_service_client::ReferralsServiceClient;

    let mut c = Check::default();
    for s in &spec.fields {
        if s.required {
            c.required(f, s.name, s.label);
        }
    }
    let idem = f.get("idempotency_key").to_owned();
    let id = view.case_id.clone();
    let now = || Some(duijie_common::envelope::timestamp(chrono::Utc::now()));
    let num = |name: &str, c: &mut Check, label: &str| -> i32 {
        match f.get(name) {
            "" => 0,
            v => v.parse::<i32>().unwrap_or_else(|_| {
                c.fail(name, format!("“{label}”应为数字"));
                0
            }),
        }
    };
    let mut m = MediationServiceClient::new(ch.clone());
    let mut r = ReferralsServiceClient::new(ch.clone());
    let view = match key {
        "sign_for" => {
            c.done()?;
            m.sign_for(with_key(
                SignForRequest { case_id: id, receipt: Some(Receipt { signed_by: f.get("signed_by").into(), signer_position: f.get("signer_position").into(), signed_at: now() }) },
                &idem,
            ))
            .await.and_then(answered_case)?
        }
        "accept" => {
            c.done()?;
            m.accept(with_key(
                AcceptRequest { case_id: id, accept: Some(Accept { accepted_by: f.get("accepted_by").into(), local_reference: f.get("local_reference").into(), ..Default::default() }) },
                &idem,
            ))
            .await.and_then(answered_case)?
        }
        "reject" => {
            let reason = enum_value::<RejectReason>(f, "reason", &mut c, "理由");
            c.done()?;
            m.reject(with_key(RejectRequest { case_id: id, reject: Some(Reject { reason, explanation: f.get("explanation").into() }) }, &idem)).await.and_then(answered_case)?
        }
        "redirect" => {
            let to = agency_ref(f.get("to"));
            if to.is_none() {
                c.fail("to", "请选择转至的调解组织".into());
            }
            c.done()?;
            m.redirect(with_key(RedirectRequest { case_id: id, redirect: Some(Redirect { to, reason: f.get("reason").into() }) }, &idem)).await.and_then(answered_case)?
        }
        "assign" => {
            let tier = f.get("tier").parse::<i32>().unwrap_or(0);
            c.done()?;
            let mediator = Mediator { mediator_id: f.get("mediator_id").into(), name: f.get("mediator_name").into(), ..Default::default() };
            m.assign(with_key(AssignRequest { case_id: id, assignment: Some(Assignment { mediator: Some(mediator), tier, ..Default::default() }) }, &idem)).await.and_then(answered_case)?
        }
        "escalate" => {
            let from_tier = enum_value::<MediationTier>(f, "from_tier", &mut c, "本级");
            let to_tier = enum_value::<MediationTier>(f, "to_tier", &mut c, "上报至层级");
            c.done()?;
            m.escalate(with_key(
                EscalateRequest { case_id: id, escalation: Some(Escalation { from_tier, to_tier, to_agency: agency_ref(f.get("to_agency")), reason: f.get("reason").into() }) },
                &idem,
            ))
            .await.and_then(answered_case)?
        }
        "progress" => {
            let stage = enum_value::<ProgressStage>(f, "stage", &mut c, "阶段");
            let sessions = num("sessions_held", &mut c, "已调解次数");
            c.done()?;
            m.report_progress(with_key(
                ReportProgressRequest { case_id: id, progress: Some(Progress { stage, summary: f.get("summary").into(), sessions_held: sessions.max(0) as u32, ..Default::default() }) },
                &idem,
            ))
            .await.and_then(answered_case)?
        }
        "request_info" => {
            c.done()?;
            m.request_information(with_key(RequestInformationRequest { case_id: id, request: Some(InfoRequest { questions: f.lines("questions"), respond_by: None }) }, &idem))
                .await.and_then(answered_case)?
        }
        "extend" => {
            let limit = f.get("limit").parse::<i32>().unwrap_or(0);
            let days = num("days", &mut c, "延长天数");
            c.done()?;
            m.request_extension(with_key(
                RequestExtensionRequest {
                    case_id: id,
                    extension: Some(ExtensionRequest { limit, days: days.max(0) as u32, reason: f.get("reason").into(), consents: all_consents(f, "all_consented") }),
                },
                &idem,
            ))
            .await.and_then(answered_case)?
        }
        "outcome" => {
            let outcome = match f.get("result") {
                "1" => {
                    let terms = f.lines("terms");
                    if terms.is_empty() {
                        c.fail("terms", "调解成功时请填写协议内容".into());
                    }
                    outcome::Kind::Settled(outcome::Settled {
                        agreement: Some(agreement(&terms)),
                        terms,
                        signed_at: now(),
                        confirmation_intended: f.checked("confirmation_intended"),
                        ..Default::default()
                    })
                }
                "2" => {
                    let reason = enum_value::<FailureReason>(f, "failure_reason", &mut c, "调解不成的原因");
                    outcome::Kind::Failed(outcome::Failed { reason, explanation: f.get("explanation").into() })
                }
                "3" => {
                    let party = f.get("withdrawing_party").parse::<usize>().ok().and_then(|i| party_ids(f).get(i.wrapping_sub(1)).cloned());
                    if party.is_none() {
                        c.fail("withdrawing_party", "请选择撤回申请的当事人".into());
                    }
                    outcome::Kind::Withdrawn(outcome::Withdrawn { party_id: party.unwrap_or_default(), reason: f.get("explanation").into() })
                }
                _ => {
                    c.fail("result", "请选择“结果”".into());
                    outcome::Kind::Withdrawn(outcome::Withdrawn::default())
                }
            };
            c.done()?;
            m.report_outcome(with_key(ReportOutcomeRequest { case_id: id, outcome: Some(Outcome { kind: Some(outcome) }) }, &idem)).await.and_then(answered_case)?
        }
        "request_confirmation" => {
            c.done()?;
            let applicants = view.referral.as_ref().map(|r| r.parties.iter().map(|p| p.party_id.clone()).collect()).unwrap_or_default();
            m.request_confirmation(with_key(
                RequestConfirmationRequest {
                    case_id: id,
                    request: Some(ConfirmationRequest { agreement: Some(agreement(&f.lines("terms"))), applicant_party_ids: applicants, ..Default::default() }),
                },
                &idem,
            ))
            .await.and_then(answered_case)?
        }
        "performance" => {
            let status = enum_value::<PerformanceStatus>(f, "status", &mut c, "履行情况");
            c.done()?;
            m.record_performance(with_key(
                RecordPerformanceRequest { case_id: id, performance: Some(Performance { status, note: f.get("note").into(), ..Default::default() }) },
                &idem,
            ))
            .await.and_then(answered_case)?
        }
        "follow_up" => {
            let method = enum_value::<FollowUpMethod>(f, "method", &mut c, "回访方式");
            let satisfaction = enum_value::<Satisfaction>(f, "satisfaction", &mut c, "当事人评价");
            c.done()?;
            m.record_follow_up(with_key(
                RecordFollowUpRequest {
                    case_id: id,
                    follow_up: Some(FollowUp { method, conducted_by: f.get("conducted_by").into(), summary: f.get("summary").into(), satisfaction, recurred: false }),
                },
                &idem,
            ))
            .await.and_then(answered_case)?
        }
        "close" => {
            let basis = enum_value::<ClosureBasis>(f, "basis", &mut c, "结案依据");
            c.done()?;
            m.close(with_key(CloseRequest { case_id: id, closure: Some(Closure { basis, summary: f.get("summary").into(), closed_by: f.get("closed_by").into() }) }, &idem))
                .await.and_then(answered_case)?
        }
        "answer_cancel" => {
            let confirmed = f.get("confirmed") == "1";
            if !confirmed && f.get("reason").is_empty() {
                c.fail("reason", "不同意撤回时请填写理由".into());
            }
            c.done()?;
            m.answer_cancellation(with_key(
                AnswerCancellationRequest { case_id: id, answer: Some(CancellationConfirmation { confirmed, reason: f.get("reason").into() }) },
                &idem,
            ))
            .await.and_then(answered_case)?
        }
        "amend" => {
            c.done()?;
            r.amend(with_key(AmendRequest { case_id: id, amendment: Some(Amendment { reason: f.get("reason").into(), answer: f.get("reason").into(), ..Default::default() }) }, &idem))
                .await.and_then(answered_case)?
        }
        "cancel" => {
            let reason = enum_value::<CancellationReason>(f, "reason", &mut c, "撤回原因");
            c.done()?;
            r.cancel(with_key(CancelRequest { case_id: id, cancellation: Some(Cancellation { reason, explanation: f.get("explanation").into() }) }, &idem)).await.and_then(answered_case)?
        }
        "supervise" => {
            let level = enum_value::<SupervisionLevel>(f, "level", &mut c, "督办级别");
            let respond_by = due_date(f, "respond_by", &mut c, "回复期限");
            c.done()?;
            r.supervise(with_key(
                SuperviseRequest {
                    case_id: id,
                    notice: Some(SupervisionNotice { level, instructions: f.get("instructions").into(), respond_by, supervisor: f.get("supervisor").into() }),
                },
                &idem,
            ))
            .await.and_then(answered_case)?
        }
        "dispose" => {
            let disposition = enum_value::<DispositionKind>(f, "disposition", &mut c, "处理结果");
            c.done()?;
            r.dispose(with_key(
                DisposeRequest {
                    case_id: id,
                    disposition: Some(DispositionNotice { disposition, document_number: f.get("document_number").into(), summary: f.get("summary").into(), document: None }),
                },
                &idem,
            ))
            .await.and_then(answered_case)?
        }
        "close_petition" => {
            c.done()?;
            PetitionServiceClient::new(ch)
                .close_petition(with_key(
                    ClosePetitionRequest { case_id: id, document_number: f.get("document_number").into(), summary: f.get("summary").into() },
                    &idem,
                ))
                .await.and_then(answered_case)?
        }
        "decide_confirmation" => {
            let decision = enum_value::<ConfirmationDecisionKind>(f, "decision", &mut c, "决定");
            c.done()?;
            CourtServiceClient::new(ch)
                .decide_confirmation(with_key(
                    DecideConfirmationRequest {
                        case_id: id,
                        decision: Some(ConfirmationDecision { decision, reason: f.get("reason").into(), document_number: f.get("document_number").into(), document: None }),
                    },
                    &idem,
                ))
                .await.and_then(answered_case)?
        }
        "recognize" => {
            c.done()?;
            PoliceServiceClient::new(ch)
                .recognize_agreement(with_key(
                    RecognizeAgreementRequest {
                        case_id: id,
                        recognition: Some(AgreementRecognition {
                            agreement: Some(agreement(&f.lines("terms"))),
                            document_number: f.get("document_number").into(),
                            recognised_by: f.get("recognised_by").into(),
                            note: String::new(),
                        }),
                    },
                    &idem,
                ))
                .await.and_then(answered_case)?
        }
        "review" => {
            let conclusion = enum_value::<ReviewConclusion>(f, "conclusion", &mut c, "审查结论");
            c.done()?;
            ProcuratorateServiceClient::new(ch)
                .review_reconciliation(with_key(
                    ReviewReconciliationRequest {
                        case_id: id,
                        review: Some(ReconciliationReview {
                            conclusion,
                            agreement: Some(agreement(&f.lines("terms"))),
                            reviewed_by: f.get("reviewed_by").into(),
                            reason: f.get("reason").into(),
                        }),
                    },
                    &idem,
                ))
                .await.and_then(answered_case)?
        }
        other => return Err(UiError::NotFound(format!("没有“{other}”这项操作"))),
    };
    Ok(view)
}

/// The case's party ids, as the page listed them.
fn party_ids(f: &Fields) -> Vec<String> {
    f.get("party_ids").split(',').filter(|p| !p.is_empty()).map(str::to_owned).collect()
}

/// Every party of the case consented (the clerk ticked the box after asking them).
fn all_consents(f: &Fields, name: &str) -> Vec<PartyConsent> {
    if !f.checked(name) {
        return Vec::new();
    }
    party_ids(f)
        .into_iter()
        .map(|p| PartyConsent {
            party_id: p,
            consented: true,
            method: ConsentMethod::Written as i32,
            consented_at: Some(duijie_common::envelope::timestamp(chrono::Utc::now())),
        })
        .collect()
}

/// The case as `ch`'s agency sees it.
pub async fn read_case(ch: GrpcChannel, case_id: &str) -> Result<CaseView, UiError> {
    use duijie_proto::v1::cases_service_client::CasesServiceClient;
    Ok(CasesServiceClient::new(ch).get_case(GetCaseRequest { case_id: case_id.to_owned() }).await.and_then(answered_case)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_as_typed_becomes_fen() {
        assert_eq!(yuan_to_fen("3000"), Some(300_000));
        assert_eq!(yuan_to_fen("3,000.5"), Some(300_050));
        assert_eq!(yuan_to_fen("0.07"), Some(7));
        for bad in ["", "-1", "1.234", "三千", "1e5", "."] {
            assert_eq!(yuan_to_fen(bad), None, "{bad}");
        }
    }

    #[test]
    fn service_field_paths_land_on_form_fields() {
        assert_eq!(form_field("referral.parties[0].identity.number"), "p0_id_number");
        assert_eq!(form_field("referral.parties[1].name"), "p1_name");
        assert_eq!(form_field("referral.clock_policy.kind"), "clock_policy");
        assert_eq!(form_field("to"), "to");
        assert_eq!(form_field("receipt.signed_by"), "signed_by");
    }
}
