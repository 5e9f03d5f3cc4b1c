//! The console's forms: what each one asks, how its answers become a gRPC request, and the
//! checks the console makes itself (the services check everything again; their field errors are
//! mapped back onto the form's fields).

use chrono::{NaiveDate, TimeZone as _};
use duijie_domain::actions::{self, Action, Field, Input, Side, Situation};
use duijie_domain::{AgencyNode, CaseState, referrers};
use duijie_proto::answered_case;
use duijie_proto::v1::court_service_client::CourtServiceClient;
use duijie_proto::v1::mediation_service_client::MediationServiceClient;
use duijie_proto::v1::petition_service_client::PetitionServiceClient;
use duijie_proto::v1::police_service_client::PoliceServiceClient;
use duijie_proto::v1::procuratorate_service_client::ProcuratorateServiceClient;
use duijie_proto::v1::referrals_service_client::ReferralsServiceClient;
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

/// The 自行受理 form of a mediation body: the dispute as on a referral, with how it came in,
/// its risk level and who received it (the service puts it on the people's mediation clock).
pub fn intake(f: &Fields, me: &AgencyNode) -> Result<RegisterCaseRequest, UiError> {
    let r = referral(f, me, &[])?;
    Ok(RegisterCaseRequest { case_code: r.case_code, referral: r.referral })
}

/// The new-referral form for a referrer of `me` (for a mediation body: its own intake, see [`intake`]).
pub fn referral(f: &Fields, me: &AgencyNode, bodies: &[(AgencyNode, String)]) -> Result<SubmitReferralRequest, UiError> {
    let mut c = Check::default();
    let own = me.kind() == AgencyKind::Mediation;
    let (to, mode, clock, intake) = if own {
        let source = enum_value::<IntakeSource>(f, "source", &mut c, "受理来源");
        let risk_level = enum_value::<RiskLevel>(f, "risk_level", &mut c, "风险等级");
        let received_by = c.required(f, "received_by", "接待人").to_owned();
        (None, 0, ClockPolicyKind::PeoplesMediation as i32, Some(Intake { source, risk_level, received_by }))
    } else {
        let to = c.required(f, "to", "接收调解组织");
        let to = to.parse::<AgencyNode>().ok().filter(|n| bodies.iter().any(|(b, _)| b == n)).map(|n| AgencyRef::from(&n));
        if to.is_none() && !f.get("to").is_empty() {
            c.fail("to", "接收调解组织不在名录中".into());
        }
        let mode = enum_value::<ReferralMode>(f, "mode", &mut c, "移送方式");
        let clock = enum_value::<ClockPolicyKind>(f, "clock_policy", &mut c, "计时规则");
        if clock > 0 && !referrers::of(me.kind()).is_some_and(|r| r.clock_policies.iter().any(|k| *k as i32 == clock)) {
            c.fail("clock_policy", "本机构不能选择该计时规则".into());
        }
        (to, mode, clock, None)
    };
    let case_code = c.required(f, "case_code", "解纷码").to_owned();
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
            intake,
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

// Which actions exist, who takes them, in which situation, their keys, titles and fields are
// the domain's table (`duijie_domain::actions`), shared with the services and the CLI. The
// console adds only what a browser needs: the choices of each choice field, and one arm per
// action that turns the posted form into its request.

/// How a field is drawn.
pub enum Widget {
    Text,
    Area,
    Date,
    Number,
    Check,
    /// One of these (value, label).
    Select(Vec<(String, String)>),
}

/// One field of an action's form, as drawn for this case.
pub struct FieldSpec {
    /// The table's field: name, label, required.
    pub field: &'static Field,
    pub widget: Widget,
}

/// One action a clerk can take on a case: the table's row with its form as drawn for this case.
pub struct ActionSpec {
    pub action: &'static Action,
    pub fields: Vec<FieldSpec>,
}

/// `(value, label)` of each of `all`.
fn options<E: Copy + Into<i32>>(all: &[E], label: fn(E) -> &'static str) -> Vec<(String, String)> {
    all.iter().map(|e| ((*e).into().to_string(), label(*e).to_owned())).collect()
}

/// The choices of a choice field (`Input::Choice`) of action `key`, for an agency of `me` with
/// the case in `state`; empty if the console has none (a test keeps that from happening).
fn choices(key: &str, field: &str, me: AgencyKind, state: Option<CaseState>) -> Vec<(String, String)> {
    use ConfirmationDecisionKind as D;
    let fixed = |v: &[(i32, &str)]| v.iter().map(|(n, l)| (n.to_string(), (*l).to_owned())).collect();
    match (key, field) {
        ("reject", "reason") => options(
            &[RejectReason::OutOfScope, RejectReason::PartyRefused, RejectReason::AlreadyHandled, RejectReason::Incomplete, RejectReason::NotCompetent, RejectReason::Other],
            labels::reject_reason,
        ),
        ("assign", "tier") => options(&labels::TIERS, labels::tier),
        ("escalate", "from_tier") => options(&labels::TIERS[..4], labels::tier),
        ("escalate", "to_tier") => options(&labels::TIERS[1..4], labels::tier),
        ("progress", "stage") => options(
            &[ProgressStage::PartiesContacted, ProgressStage::Investigating, ProgressStage::SessionHeld, ProgressStage::AwaitingParty, ProgressStage::Appraisal, ProgressStage::Other],
            labels::progress_stage,
        ),
        // The values `request` reads: 1 settled, 2 failed, 3 withdrawn.
        ("outcome", "result") => fixed(&[(1, "调解成功，达成协议"), (2, "调解不成"), (3, "当事人撤回调解申请")]),
        ("outcome", "failure_reason") => options(
            &[FailureReason::NoAgreement, FailureReason::PartyAbsent, FailureReason::PartyRefused, FailureReason::TimeLimitExpired, FailureReason::Other],
            labels::failure_reason,
        ),
        ("performance", "status") => options(&[PerformanceStatus::Performed, PerformanceStatus::Defaulted], labels::performance),
        ("follow_up", "method") => options(&[FollowUpMethod::Visit, FollowUpMethod::Phone, FollowUpMethod::Online], labels::follow_up_method),
        ("follow_up", "satisfaction") => {
            options(&[Satisfaction::Satisfied, Satisfaction::BasicallySatisfied, Satisfaction::Dissatisfied], labels::satisfaction)
        }
        ("close", "basis") => options(&[ClosureBasis::Performed, ClosureBasis::Disposed, ClosureBasis::Cancelled, ClosureBasis::Other], labels::closure_basis),
        // 1 confirms, anything else refuses (`request`).
        ("answer_cancel", "confirmed") => fixed(&[(1, "同意撤回"), (2, "不同意撤回")]),
        ("cancel", "reason") => options(
            &[
                CancellationReason::SettledOutside,
                CancellationReason::ApplicantWithdrew,
                CancellationReason::SentInError,
                CancellationReason::Duplicate,
                CancellationReason::HandledBySender,
                CancellationReason::Other,
            ],
            labels::cancellation_reason,
        ),
        ("supervise", "level") => options(&[SupervisionLevel::Ordinary, SupervisionLevel::Listed], labels::supervision_level),
        // The dispositions the services accept from this kind of referrer.
        ("dispose", "disposition") => referrers::of(me).map(|r| options(r.dispositions, labels::disposition)).unwrap_or_default(),
        // First whether to accept the application, then (accepted) the decision.
        ("decide_confirmation", "decision") => match state {
            Some(CaseState::ConfirmationAccepted) => options(&[D::Granted, D::Denied], labels::confirmation_decision),
            _ => options(&[D::Accepted, D::NotAccepted], labels::confirmation_decision),
        },
        ("review", "conclusion") => options(
            &[ReviewConclusion::VoluntaryAndLawful, ReviewConclusion::NotVoluntary, ReviewConclusion::Unlawful],
            labels::review_conclusion,
        ),
        _ => Vec::new(),
    }
}

/// Which end of the case `me` is, if either (the body holding a self-accepted case is its
/// holder; the court a confirmation was applied to decides as a referring court would).
fn side_of(me: &AgencyNode, view: &CaseView) -> Option<Side> {
    if me.is(view.holder.as_ref()) {
        Some(Side::Holder)
    } else if me.is(view.referrer.as_ref()) || me.is(view.court.as_ref()) {
        Some(Side::Referrer)
    } else {
        None
    }
}

/// What the choices of one case's forms are made of.
struct CaseChoices<'a> {
    me: &'a AgencyNode,
    state: Option<CaseState>,
    /// The mediation bodies other than `me` (a case is handed on to one of them).
    others: Vec<(String, String)>,
    /// The directory's courts (a confirmation is applied for at one of them).
    courts: Vec<(String, String)>,
    parties: Vec<(String, String)>,
    /// The case's time limits still running (the ones an extension can be asked for).
    running_limits: Vec<(String, String)>,
}

impl<'a> CaseChoices<'a> {
    fn new(me: &'a AgencyNode, view: &CaseView, bodies: &[(AgencyNode, String)]) -> Self {
        let parties = view
            .referral
            .as_ref()
            .map(|r| r.parties.iter().enumerate().map(|(i, p)| ((i + 1).to_string(), format!("{}（{}）", p.name, labels::party_role(p.role())))).collect())
            .unwrap_or_default();
        Self {
            me,
            state: CaseState::parse(&view.state),
            others: bodies
                .iter()
                .filter(|(n, _)| n != me && n.kind() == AgencyKind::Mediation)
                .map(|(n, name)| (n.to_string(), name.clone()))
                .collect(),
            courts: bodies.iter().filter(|(n, _)| n.kind() == AgencyKind::Court).map(|(n, name)| (n.to_string(), name.clone())).collect(),
            parties,
            running_limits: view.deadlines.iter().filter(|d| d.met_at.is_none()).map(|d| (d.limit.to_string(), labels::time_limit(d.limit()).to_owned())).collect(),
        }
    }

    /// `action`'s form for this case; `None` when one of its choices has nothing to choose from
    /// (no other body to hand the case to, no running limit to extend), so it cannot be taken.
    fn form(&self, action: &'static Action) -> Option<ActionSpec> {
        let mut fields = Vec::with_capacity(action.fields.len());
        for field in action.fields {
            let (widget, must_choose) = match field.input {
                Input::Text => (Widget::Text, false),
                Input::Area => (Widget::Area, false),
                Input::Date => (Widget::Date, false),
                Input::Number => (Widget::Number, false),
                Input::Check => (Widget::Check, false),
                Input::Choice => (Widget::Select(choices(action.key, field.name, self.me.kind(), self.state)), true),
                // Only a withdrawal names a party: the outcome form stands without one.
                Input::Party => (Widget::Select(self.parties.clone()), false),
                Input::Agency => (Widget::Select(self.others.clone()), true),
                Input::Court => (Widget::Select(self.courts.clone()), false),
                Input::RunningLimit => (Widget::Select(self.running_limits.clone()), true),
            };
            if must_choose && matches!(&widget, Widget::Select(o) if o.is_empty()) {
                return None;
            }
            fields.push(FieldSpec { field, widget });
        }
        Some(ActionSpec { action, fields })
    }
}

/// Whether `me`'s side of the case told its disposition already (a referrer tells it once).
fn disposed(view: &CaseView) -> bool {
    view.timeline.iter().any(|e| e.direction == "out" && e.kind() == MessageKind::DispositionNotice)
}

/// The action `key` if `me`'s side of the case takes it at all, whatever the state now (for a
/// submitted form: the service decides whether the state still allows it, or answers a retry).
pub fn action_by_key(me: &AgencyNode, view: &CaseView, key: &str) -> Option<&'static Action> {
    let action = actions::by_key(key)?;
    side_of(me, view).filter(|side| action.taken_by(*side, me.kind())).map(|_| action)
}

/// What `me` may do with the case now: the table's actions offered to its side and kind in the
/// case's situation, in the table's order. While the case is open the service's `allowed_next`
/// has the last word; on a closed case it offers nothing (the case is over for the centre), and
/// the table's one step after closure, the petition office's 信访办结, stands on its own.
pub fn actions_for(me: &AgencyNode, view: &CaseView, bodies: &[(AgencyNode, String)]) -> Vec<ActionSpec> {
    let (Some(side), Some(state)) = (side_of(me, view), CaseState::parse(&view.state)) else {
        return Vec::new();
    };
    let at = Situation { state, channel: view.channel(), disposed: disposed(view) };
    let allowed: Vec<MessageKind> = view.allowed_next.iter().filter_map(|k| MessageKind::try_from(*k).ok()).collect();
    let choices = CaseChoices::new(me, view, bodies);
    actions::ACTIONS
        .iter()
        .filter(|a| a.offered(side, me.kind(), at) && (state.is_final() || allowed.contains(&a.kind)))
        .filter_map(|a| choices.form(a))
        .collect()
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

/// The agency a choice names (`kind:code`).
fn agency_ref(s: &str) -> Option<AgencyRef> {
    s.parse::<AgencyNode>().ok().map(|n| AgencyRef::from(&n))
}

fn with_key<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Ok(v) = key.parse() {
        req.metadata_mut().insert("idempotency-key", v);
    }
    req
}

/// Declares [`Call`]: one variant per RPC that takes a case action, named as the table's `rpc`,
/// and how each is sent.
macro_rules! calls {
    ($($rpc:ident($request:ident) => $client:ident . $method:ident),* $(,)?) => {
        /// The request of one case action, ready to send.
        // One per request, sent at once: its size does not matter.
        #[allow(clippy::large_enum_variant)]
        pub enum Call {
            $($rpc($request),)*
        }

        impl Call {
            /// The gRPC method that takes it (the table's [`Action::rpc`]).
            pub fn rpc(&self) -> &'static str {
                match self {
                    $(Call::$rpc(_) => stringify!($rpc),)*
                }
            }

            /// Sends it as `ch`'s agency with the form's idempotency key; the answer is the case as
            /// it is now.
            async fn send(self, ch: GrpcChannel, key: &str) -> Result<CaseView, UiError> {
                Ok(match self {
                    $(Call::$rpc(r) => $client::new(ch).$method(with_key(r, key)).await.and_then(answered_case)?,)*
                })
            }
        }
    };
}

calls! {
    SignFor(SignForRequest) => MediationServiceClient.sign_for,
    Accept(AcceptRequest) => MediationServiceClient.accept,
    Reject(RejectRequest) => MediationServiceClient.reject,
    Redirect(RedirectRequest) => MediationServiceClient.redirect,
    Assign(AssignRequest) => MediationServiceClient.assign,
    Escalate(EscalateRequest) => MediationServiceClient.escalate,
    ReportProgress(ReportProgressRequest) => MediationServiceClient.report_progress,
    RequestInformation(RequestInformationRequest) => MediationServiceClient.request_information,
    RequestExtension(RequestExtensionRequest) => MediationServiceClient.request_extension,
    ReportOutcome(ReportOutcomeRequest) => MediationServiceClient.report_outcome,
    RequestConfirmation(RequestConfirmationRequest) => MediationServiceClient.request_confirmation,
    RecordPerformance(RecordPerformanceRequest) => MediationServiceClient.record_performance,
    RecordFollowUp(RecordFollowUpRequest) => MediationServiceClient.record_follow_up,
    Close(CloseRequest) => MediationServiceClient.close,
    AnswerCancellation(AnswerCancellationRequest) => MediationServiceClient.answer_cancellation,
    Amend(AmendRequest) => ReferralsServiceClient.amend,
    Cancel(CancelRequest) => ReferralsServiceClient.cancel,
    Supervise(SuperviseRequest) => ReferralsServiceClient.supervise,
    Dispose(DisposeRequest) => ReferralsServiceClient.dispose,
    ClosePetition(ClosePetitionRequest) => PetitionServiceClient.close_petition,
    DecideConfirmation(DecideConfirmationRequest) => CourtServiceClient.decide_confirmation,
    RecognizeAgreement(RecognizeAgreementRequest) => PoliceServiceClient.recognize_agreement,
    ReviewReconciliation(ReviewReconciliationRequest) => ProcuratorateServiceClient.review_reconciliation,
}

/// Reads the form of `action` on the case `view` (as just read) and calls the service; the
/// answer is the case as it is now.
pub async fn perform(ch: GrpcChannel, view: &CaseView, action: &Action, f: &Fields) -> Result<CaseView, UiError> {
    let call = request(view, action, f)?;
    tracing::debug!(case_id = %view.case_id, action = action.key, rpc = call.rpc(), "acting on a case");
    call.send(ch, f.get("idempotency_key")).await
}

/// The request the form of `action` asks for: the table's required fields first, then one arm
/// per action (every key of the table has one; tested).
fn request(view: &CaseView, action: &Action, f: &Fields) -> Result<Call, UiError> {
    let mut c = Check::default();
    for field in action.fields.iter().filter(|field| field.required) {
        c.required(f, field.name, field.label);
    }
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
    let call = match action.key {
        "sign_for" => Call::SignFor(SignForRequest {
            case_id: id,
            receipt: Some(Receipt { signed_by: f.get("signed_by").into(), signer_position: f.get("signer_position").into(), signed_at: now() }),
        }),
        "accept" => Call::Accept(AcceptRequest {
            case_id: id,
            accept: Some(Accept { accepted_by: f.get("accepted_by").into(), local_reference: f.get("local_reference").into(), ..Default::default() }),
        }),
        "reject" => {
            let reason = enum_value::<RejectReason>(f, "reason", &mut c, "理由");
            Call::Reject(RejectRequest { case_id: id, reject: Some(Reject { reason, explanation: f.get("explanation").into() }) })
        }
        "redirect" => {
            let to = agency_ref(f.get("to"));
            if to.is_none() {
                c.fail("to", "请选择转至的调解组织".into());
            }
            Call::Redirect(RedirectRequest { case_id: id, redirect: Some(Redirect { to, reason: f.get("reason").into() }) })
        }
        "assign" => {
            let tier = f.get("tier").parse::<i32>().unwrap_or(0);
            let mediator = Mediator { mediator_id: f.get("mediator_id").into(), name: f.get("mediator_name").into(), ..Default::default() };
            Call::Assign(AssignRequest { case_id: id, assignment: Some(Assignment { mediator: Some(mediator), tier, ..Default::default() }) })
        }
        "escalate" => {
            let from_tier = enum_value::<MediationTier>(f, "from_tier", &mut c, "本级");
            let to_tier = enum_value::<MediationTier>(f, "to_tier", &mut c, "上报至层级");
            Call::Escalate(EscalateRequest {
                case_id: id,
                escalation: Some(Escalation { from_tier, to_tier, to_agency: agency_ref(f.get("to_agency")), reason: f.get("reason").into() }),
            })
        }
        "progress" => {
            let stage = enum_value::<ProgressStage>(f, "stage", &mut c, "阶段");
            let sessions = num("sessions_held", &mut c, "已调解次数");
            Call::ReportProgress(ReportProgressRequest {
                case_id: id,
                progress: Some(Progress { stage, summary: f.get("summary").into(), sessions_held: sessions.max(0) as u32, ..Default::default() }),
            })
        }
        "request_info" => Call::RequestInformation(RequestInformationRequest {
            case_id: id,
            request: Some(InfoRequest { questions: f.lines("questions"), respond_by: None }),
        }),
        "extend" => {
            let limit = f.get("limit").parse::<i32>().unwrap_or(0);
            let days = num("days", &mut c, "延长天数");
            Call::RequestExtension(RequestExtensionRequest {
                case_id: id,
                extension: Some(ExtensionRequest { limit, days: days.max(0) as u32, reason: f.get("reason").into(), consents: all_consents(f, "all_consented") }),
            })
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
            Call::ReportOutcome(ReportOutcomeRequest { case_id: id, outcome: Some(Outcome { kind: Some(outcome) }) })
        }
        "request_confirmation" => {
            let applicants = view.referral.as_ref().map(|r| r.parties.iter().map(|p| p.party_id.clone()).collect()).unwrap_or_default();
            Call::RequestConfirmation(RequestConfirmationRequest {
                case_id: id,
                request: Some(ConfirmationRequest {
                    agreement: Some(agreement(&f.lines("terms"))),
                    agreement_signed_at: date(f, "agreement_signed_on", &mut c, "协议签订日期"),
                    applicant_party_ids: applicants,
                    court: agency_ref(f.get("court")),
                    ..Default::default()
                }),
            })
        }
        "performance" => {
            let status = enum_value::<PerformanceStatus>(f, "status", &mut c, "履行情况");
            Call::RecordPerformance(RecordPerformanceRequest {
                case_id: id,
                performance: Some(Performance { status, note: f.get("note").into(), ..Default::default() }),
            })
        }
        "follow_up" => {
            let method = enum_value::<FollowUpMethod>(f, "method", &mut c, "回访方式");
            let satisfaction = enum_value::<Satisfaction>(f, "satisfaction", &mut c, "当事人评价");
            Call::RecordFollowUp(RecordFollowUpRequest {
                case_id: id,
                follow_up: Some(FollowUp { method, conducted_by: f.get("conducted_by").into(), summary: f.get("summary").into(), satisfaction, recurred: false }),
            })
        }
        "close" => {
            let basis = enum_value::<ClosureBasis>(f, "basis", &mut c, "结案依据");
            Call::Close(CloseRequest { case_id: id, closure: Some(Closure { basis, summary: f.get("summary").into(), closed_by: f.get("closed_by").into() }) })
        }
        "answer_cancel" => {
            let confirmed = f.get("confirmed") == "1";
            if !confirmed && f.get("reason").is_empty() {
                c.fail("reason", "不同意撤回时请填写理由".into());
            }
            Call::AnswerCancellation(AnswerCancellationRequest {
                case_id: id,
                answer: Some(CancellationConfirmation { confirmed, reason: f.get("reason").into() }),
            })
        }
        "amend" => Call::Amend(AmendRequest {
            case_id: id,
            amendment: Some(Amendment { reason: f.get("reason").into(), answer: f.get("reason").into(), ..Default::default() }),
        }),
        "cancel" => {
            let reason = enum_value::<CancellationReason>(f, "reason", &mut c, "撤回原因");
            Call::Cancel(CancelRequest { case_id: id, cancellation: Some(Cancellation { reason, explanation: f.get("explanation").into() }) })
        }
        "supervise" => {
            let level = enum_value::<SupervisionLevel>(f, "level", &mut c, "督办级别");
            let respond_by = due_date(f, "respond_by", &mut c, "回复期限");
            Call::Supervise(SuperviseRequest {
                case_id: id,
                notice: Some(SupervisionNotice { level, instructions: f.get("instructions").into(), respond_by, supervisor: f.get("supervisor").into() }),
            })
        }
        "dispose" => {
            let disposition = enum_value::<DispositionKind>(f, "disposition", &mut c, "处理结果");
            Call::Dispose(DisposeRequest {
                case_id: id,
                disposition: Some(DispositionNotice { disposition, document_number: f.get("document_number").into(), summary: f.get("summary").into(), document: None }),
            })
        }
        "close_petition" => Call::ClosePetition(ClosePetitionRequest {
            case_id: id,
            document_number: f.get("document_number").into(),
            summary: f.get("summary").into(),
        }),
        "decide_confirmation" => {
            let decision = enum_value::<ConfirmationDecisionKind>(f, "decision", &mut c, "决定");
            Call::DecideConfirmation(DecideConfirmationRequest {
                case_id: id,
                decision: Some(ConfirmationDecision { decision, reason: f.get("reason").into(), document_number: f.get("document_number").into(), document: None }),
            })
        }
        "recognize" => Call::RecognizeAgreement(RecognizeAgreementRequest {
            case_id: id,
            recognition: Some(AgreementRecognition {
                agreement: Some(agreement(&f.lines("terms"))),
                document_number: f.get("document_number").into(),
                recognised_by: f.get("recognised_by").into(),
                note: String::new(),
            }),
        }),
        "review" => {
            let conclusion = enum_value::<ReviewConclusion>(f, "conclusion", &mut c, "审查结论");
            Call::ReviewReconciliation(ReviewReconciliationRequest {
                case_id: id,
                review: Some(ReconciliationReview {
                    conclusion,
                    agreement: Some(agreement(&f.lines("terms"))),
                    reviewed_by: f.get("reviewed_by").into(),
                    reason: f.get("reason").into(),
                }),
            })
        }
        other => return Err(UiError::NotFound(format!("没有“{other}”这项操作"))),
    };
    c.done()?;
    Ok(call)
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

    fn node(s: &str) -> AgencyNode {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// A case between `referrer` and `holder` in `state`, with what the service allows `me`
    /// next (its `allowed_next`: nothing once the case is over).
    fn case(referrer: &AgencyNode, holder: &AgencyNode, state: CaseState) -> CaseView {
        let allowed = if state.is_final() { Vec::new() } else { state.allowed() };
        CaseView {
            case_id: "0190a4c8-0000-7000-8000-000000000001".into(),
            state: state.as_str().into(),
            channel: duijie_domain::case::channel_of(referrer.kind()).unwrap_or_default() as i32,
            referrer: Some(referrer.into()),
            holder: Some(holder.into()),
            allowed_next: allowed.into_iter().map(|k| k as i32).collect(),
            referral: Some(Referral {
                parties: vec![Party { party_id: "p1".into(), name: "张三".into(), ..Default::default() }],
                ..Default::default()
            }),
            deadlines: vec![DeadlineView { limit: TimeLimit::PeoplesMediation as i32, ..Default::default() }],
            ..Default::default()
        }
    }

    fn keys(me: &AgencyNode, view: &CaseView, bodies: &[(AgencyNode, String)]) -> Vec<&'static str> {
        actions_for(me, view, bodies).iter().map(|a| a.action.key).collect()
    }

    /// A value every field of its kind accepts.
    fn value(input: Input) -> &'static str {
        match input {
            Input::Text | Input::Area => "x",
            Input::Date => "2026-01-31",
            Input::Number | Input::Choice | Input::Party | Input::RunningLimit => "1",
            Input::Check => "on",
            Input::Agency => "mediation:431003-102",
            Input::Court => "court:431003",
        }
    }

    #[test]
    fn every_action_of_the_table_has_a_form_that_calls_its_rpc() {
        let view = case(&node("court:431003"), &node("mediation:431003"), CaseState::Accepted);
        for a in actions::ACTIONS {
            let mut pairs = vec![("party_ids".to_owned(), "p1".to_owned())];
            pairs.extend(a.fields.iter().map(|fl| (fl.name.to_owned(), value(fl.input).to_owned())));
            match request(&view, a, &Fields(pairs)) {
                Ok(call) => assert_eq!(call.rpc(), a.rpc, "{}", a.key),
                Err(e) => panic!("{}: {e}", a.key),
            }
            // Each required field is asked for by its label.
            match request(&view, a, &Fields::default()) {
                Err(UiError::Form(errors)) => {
                    for fl in a.fields.iter().filter(|fl| fl.required) {
                        assert!(errors.iter().any(|(n, m)| n == fl.name && m.contains(fl.label)), "{}.{}: {errors:?}", a.key, fl.name);
                    }
                }
                _ => panic!("{}: an empty form went through", a.key),
            }
        }
        let unknown = Action { key: "no_such_action", ..actions::ACTIONS[0] };
        assert!(matches!(request(&view, &unknown, &Fields::default()), Err(UiError::NotFound(_))));
    }

    #[test]
    fn every_choice_of_the_table_has_options_for_every_agency_that_takes_it() {
        for a in actions::ACTIONS {
            for kind in AgencyKind::ALL.into_iter().filter(|k| a.taken_by(a.side, *k)) {
                for state in a.states() {
                    for fl in a.fields.iter().filter(|fl| fl.input == Input::Choice) {
                        assert!(!choices(a.key, fl.name, kind, Some(state)).is_empty(), "{}.{} for {kind} in {state}", a.key, fl.name);
                    }
                }
            }
        }
        // What each referrer may report, as the services accept it: 其他 too.
        let court = choices("dispose", "disposition", AgencyKind::Court, Some(CaseState::Failed));
        assert!(court.iter().any(|(v, _)| *v == (DispositionKind::Other as i32).to_string()), "{court:?}");
        assert!(!court.iter().any(|(v, _)| *v == (DispositionKind::Penalty as i32).to_string()), "{court:?}");
    }

    #[test]
    fn each_side_is_offered_what_the_table_and_the_service_allow() {
        let (court, centre, town) = (node("court:431003"), node("mediation:431003"), node("mediation:431003-102"));
        let bodies = vec![(centre.clone(), "中心".to_owned()), (town.clone(), "镇".to_owned())];
        let delivered = case(&court, &centre, CaseState::Delivered);
        assert_eq!(keys(&centre, &delivered, &bodies), ["sign_for"]);
        assert_eq!(keys(&court, &delivered, &bodies), ["amend", "cancel", "supervise"]);
        assert!(keys(&town, &delivered, &bodies).is_empty(), "neither end of the case");
        assert!(keys(&node("police:431003-01"), &delivered, &bodies).is_empty());

        let received = case(&court, &centre, CaseState::Received);
        assert_eq!(keys(&centre, &received, &bodies), ["accept", "reject", "redirect", "request_info"]);
        // Nowhere to hand the case: no 转办, no 上报.
        let alone = vec![(centre.clone(), "中心".to_owned())];
        assert_eq!(keys(&centre, &received, &alone), ["accept", "reject", "request_info"]);
        let accepted = case(&court, &centre, CaseState::Accepted);
        assert!(!keys(&centre, &accepted, &alone).contains(&"escalate"));
        assert!(keys(&centre, &accepted, &bodies).contains(&"escalate"));
        // The service's allowed_next has the last word while the case is open.
        let mut limited = received.clone();
        limited.allowed_next = vec![MessageKind::Accept as i32];
        assert_eq!(keys(&centre, &limited, &bodies), ["accept"]);

        // 司法确认 at a named court, whichever channel; the court decides it, also one that did
        // not refer the case (then only that).
        let settled = case(&court, &centre, CaseState::Settled);
        assert!(keys(&centre, &settled, &bodies).contains(&"request_confirmation"));
        let police = node("police:431003-01");
        assert!(keys(&centre, &case(&police, &centre, CaseState::Settled), &bodies).contains(&"request_confirmation"));
        assert_eq!(keys(&court, &case(&court, &centre, CaseState::ConfirmationRequested), &bodies), ["supervise", "decide_confirmation"]);
        let mut applied = case(&police, &centre, CaseState::ConfirmationRequested);
        applied.court = Some(AgencyRef::from(&court));
        applied.allowed_next = vec![MessageKind::ConfirmationDecision as i32];
        assert_eq!(keys(&court, &applied, &bodies), ["decide_confirmation"]);
    }

    #[test]
    fn a_referrer_tells_its_disposition_once_and_the_petition_office_closes_a_closed_case() {
        let (petition, village) = (node("petition:431003"), node("mediation:431003-102-05"));
        let returned = case(&petition, &village, CaseState::Rejected);
        assert_eq!(keys(&petition, &returned, &[]), ["supervise", "dispose"]);
        let mut told = returned.clone();
        told.timeline.push(TimelineEntry { kind: MessageKind::DispositionNotice as i32, direction: "out".into(), ..Default::default() });
        assert_eq!(keys(&petition, &told, &[]), ["supervise"], "told once");

        // The centre closed the case: the service allows nothing more, the table offers 办结.
        let closed = case(&petition, &village, CaseState::Closed);
        assert!(closed.allowed_next.is_empty());
        assert_eq!(keys(&petition, &closed, &[]), ["close_petition"]);
        let mut done = closed.clone();
        done.timeline.push(TimelineEntry { kind: MessageKind::DispositionNotice as i32, direction: "out".into(), ..Default::default() });
        assert!(keys(&petition, &done, &[]).is_empty(), "办结 once");
        assert!(keys(&village, &closed, &[]).is_empty());
        let court = node("court:431003");
        assert!(keys(&court, &case(&court, &node("mediation:431003"), CaseState::Closed), &[]).is_empty());

        // A submitted form is found by its key whatever the state, for its side and kind only.
        assert!(action_by_key(&petition, &returned, "close_petition").is_some());
        assert!(action_by_key(&petition, &returned, "sign_for").is_none());
        assert!(action_by_key(&village, &returned, "sign_for").is_some());
        assert!(action_by_key(&court, &returned, "dispose").is_none(), "not its case");
        assert!(action_by_key(&petition, &returned, "decide_confirmation").is_none(), "a court's step");
    }
}
