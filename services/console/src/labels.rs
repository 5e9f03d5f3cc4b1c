//! Chinese names for everything the console shows: states, channels, message kinds, time
//! limits and the choices of each form. One table per enum so that a new value is a compile
//! error here rather than an English word on a clerk's screen.

use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::*;

pub fn state(s: &str) -> &'static str {
    match s {
        "SUBMITTED" => "已移送",
        "DELIVERED" => "已送达",
        "RECEIVED" => "已签收",
        "ACCEPTED" => "已受理",
        "IN_MEDIATION" => "调解中",
        "SETTLED" => "调解成功",
        "FAILED" => "调解不成",
        "WITHDRAWN" => "已撤回调解",
        "REJECTED" => "不予受理",
        "CONFIRMATION_REQUESTED" => "已申请司法确认",
        "CONFIRMATION_ACCEPTED" => "司法确认已受理",
        "CONFIRMED" => "已司法确认",
        "CONFIRMATION_DENIED" => "司法确认驳回",
        "PERFORMED" => "已履行",
        "DEFAULTED" => "未履行",
        "FOLLOWED_UP" => "已回访",
        "DISPOSED" => "已处理",
        "CLOSED" => "已结案",
        "CANCEL_REQUESTED" => "申请撤回中",
        "CANCELLED" => "已撤回",
        _ => "未知状态",
    }
}

/// Every state, in lifecycle order (the domain's list), for the list filter.
pub fn states() -> impl Iterator<Item = &'static str> {
    duijie_domain::lifecycle::CaseState::ALL.into_iter().map(|s| s.as_str())
}

pub fn channel(c: Channel) -> &'static str {
    match c {
        Channel::Court => "诉调",
        Channel::Police => "警调",
        Channel::Petition => "访调",
        Channel::Procuratorate => "检调",
        Channel::SelfIntake => "自行受理",
        Channel::Unspecified => "—",
    }
}

pub const CHANNELS: [Channel; 5] = [Channel::Court, Channel::Police, Channel::Petition, Channel::Procuratorate, Channel::SelfIntake];

/// How a self-accepted dispute came in (受理来源).
pub fn intake_source(s: IntakeSource) -> &'static str {
    match s {
        IntakeSource::WalkIn => "来访",
        IntakeSource::Hotline148 => "148热线",
        IntakeSource::Hotline12345 => "12345热线",
        IntakeSource::Online => "网上申请",
        IntakeSource::GridScreening => "网格排查",
        IntakeSource::DepartmentTransfer => "部门移交",
        IntakeSource::Unspecified => "—",
    }
}

pub const INTAKE_SOURCES: [IntakeSource; 6] = [
    IntakeSource::WalkIn,
    IntakeSource::Hotline148,
    IntakeSource::Hotline12345,
    IntakeSource::Online,
    IntakeSource::GridScreening,
    IntakeSource::DepartmentTransfer,
];

/// 风险等级.
pub fn risk_level(r: RiskLevel) -> &'static str {
    match r {
        RiskLevel::Low => "低",
        RiskLevel::Medium => "中",
        RiskLevel::High => "高",
        RiskLevel::Unspecified => "—",
    }
}

pub fn agency_kind(k: AgencyKind) -> &'static str {
    match k {
        AgencyKind::Court => "人民法院",
        AgencyKind::Procuratorate => "人民检察院",
        AgencyKind::Police => "公安机关",
        AgencyKind::Petition => "信访部门",
        AgencyKind::Mediation => "调解组织",
        AgencyKind::Bus => "对接平台",
        AgencyKind::Supervisor => "综治中心",
        AgencyKind::Unspecified => "—",
    }
}

pub fn message_kind(k: MessageKind) -> &'static str {
    use MessageKind as K;
    match k {
        K::Referral => "移送调解",
        K::Amendment => "补正/答复",
        K::Cancellation => "申请撤回",
        K::SupervisionNotice => "督办",
        K::Receipt => "签收",
        K::Accept => "受理",
        K::Reject => "不予受理",
        K::Redirect => "转办",
        K::Assignment => "指派调解员",
        K::Escalation => "上报",
        K::Progress => "调解进展",
        K::InfoRequest => "补充材料",
        K::ExtensionRequest => "申请延期",
        K::Outcome => "调解结果",
        K::ConfirmationRequest => "申请司法确认",
        K::ConfirmationDecision => "司法确认决定",
        K::AgreementRecognition => "确认履行",
        K::ReconciliationReview => "和解协议审查",
        K::Performance => "履行情况",
        K::FollowUp => "回访",
        K::Closure => "结案",
        K::DispositionNotice => "处理结果告知",
        K::DeliveryEvidence => "送达回证",
        K::DeadlineWarning => "期限预警",
        K::DeadlineBreached => "超期提醒",
        K::CancellationConfirmation => "撤回答复",
        K::Unspecified => "—",
    }
}

pub fn time_limit(l: TimeLimit) -> &'static str {
    use TimeLimit as L;
    match l {
        L::CourtMediationOrdinary => "普通程序调解期限（15日）",
        L::CourtMediationSimplified => "简易程序调解期限（7日）",
        L::CourtPreFilingMediation => "诉前调解期限（30日）",
        L::PeoplesMediation => "人民调解期限（30日）",
        L::ConfirmationApplication => "司法确认申请期限（30日）",
        L::ConfirmationAcceptance => "司法确认受理期限（3日）",
        L::ConfirmationDecision => "司法确认审查期限（15日）",
        L::PetitionForward => "信访转送期限（15日）",
        L::PetitionHandling => "信访办理期限（60日）",
        L::PoliceRoundOne => "治安调解第一次期限（3个工作日）",
        L::PoliceRoundTwo => "治安调解第二次期限（3个工作日）",
        L::Unspecified => "—",
    }
}

pub fn clock_policy(k: ClockPolicyKind) -> &'static str {
    use ClockPolicyKind as C;
    match k {
        C::CourtOrdinary => "诉中委托调解（普通程序，15日）",
        C::CourtSimplified => "诉中委托调解（简易程序，7日）",
        C::CourtPreFiling => "诉前调解（30日）",
        C::PeoplesMediation => "人民调解（30日）",
        C::Petition => "信访事项（60日）",
        C::Police => "治安调解（3个工作日）",
        C::Unspecified => "—",
    }
}


pub fn referral_mode(m: ReferralMode) -> &'static str {
    use ReferralMode as M;
    match m {
        M::Delegated => "委派调解",
        M::Entrusted => "委托调解",
        M::PreLitigation => "诉前调解",
        M::PoliceTransfer => "公安移送",
        M::PetitionTransfer => "信访转送",
        M::CriminalReconciliation => "刑事和解",
        M::Other => "其他",
        M::Unspecified => "—",
    }
}


pub fn category(c: DisputeCategory) -> &'static str {
    use DisputeCategory as D;
    match c {
        D::MarriageFamily => "婚姻家庭纠纷",
        D::Neighbour => "邻里纠纷",
        D::PropertyManagement => "物业纠纷",
        D::Land => "土地纠纷",
        D::Labour => "劳动争议",
        D::TrafficAccident => "交通事故纠纷",
        D::Medical => "医疗纠纷",
        D::Contract => "合同纠纷",
        D::PrivateLending => "民间借贷纠纷",
        D::Consumer => "消费纠纷",
        D::Tort => "损害赔偿纠纷",
        D::Construction => "建设工程纠纷",
        D::RequisitionDemolition => "征地拆迁纠纷",
        D::Environment => "环境污染纠纷",
        D::PublicSecurity => "治安纠纷",
        D::MinorCriminal => "轻微刑事案件",
        D::Other => "其他纠纷",
        D::Unspecified => "—",
    }
}

pub fn party_role(r: PartyRole) -> &'static str {
    use PartyRole as R;
    match r {
        R::Applicant => "申请人",
        R::Respondent => "被申请人",
        R::Plaintiff => "原告",
        R::Defendant => "被告",
        R::ThirdParty => "第三人",
        R::Victim => "被害人",
        R::Offender => "犯罪嫌疑人",
        R::Petitioner => "信访人",
        R::Other => "其他",
        R::Unspecified => "—",
    }
}

pub fn id_type(t: IdDocumentType) -> &'static str {
    use IdDocumentType as T;
    match t {
        T::ResidentIdCard => "居民身份证",
        T::Passport => "护照",
        T::HkMacaoPermit => "港澳居民来往内地通行证",
        T::TaiwanPermit => "台湾居民来往大陆通行证",
        T::ForeignPermanentResident => "外国人永久居留身份证",
        T::SocialCreditCode => "统一社会信用代码",
        T::Other => "其他证件",
        T::Unspecified => "—",
    }
}

pub fn disposition(d: DispositionKind) -> &'static str {
    use DispositionKind as D;
    match d {
        D::FiledForTrial => "转立案审理",
        D::SuitWithdrawn => "撤诉",
        D::Adjudicated => "已判决",
        D::Penalty => "依法处罚",
        D::NoPenalty => "不予处罚",
        D::NonProsecution => "不起诉",
        D::Prosecuted => "提起公诉",
        D::PetitionClosed => "信访办结",
        D::Other => "其他",
        D::Unspecified => "—",
    }
}


pub fn tier(t: MediationTier) -> &'static str {
    use MediationTier as T;
    match t {
        T::Village => "村（社区）级",
        T::Town => "乡镇（街道）级",
        T::District => "县（区）级",
        T::Municipal => "市级",
        T::Professional => "行业性专业性",
        T::Unspecified => "—",
    }
}

pub const TIERS: [MediationTier; 5] =
    [MediationTier::Village, MediationTier::Town, MediationTier::District, MediationTier::Municipal, MediationTier::Professional];

pub fn reject_reason(r: RejectReason) -> &'static str {
    use RejectReason as R;
    match r {
        R::OutOfScope => "不属于调解范围",
        R::PartyRefused => "当事人不同意调解",
        R::AlreadyHandled => "已经处理",
        R::Incomplete => "材料不全",
        R::NotCompetent => "不属本组织管辖",
        R::Other => "其他",
        R::Unspecified => "—",
    }
}

pub fn cancellation_reason(r: CancellationReason) -> &'static str {
    use CancellationReason as R;
    match r {
        R::SettledOutside => "当事人已自行和解",
        R::ApplicantWithdrew => "申请人撤回",
        R::SentInError => "误移送",
        R::Duplicate => "重复移送",
        R::HandledBySender => "本机构自行处理",
        R::Other => "其他",
        R::Unspecified => "—",
    }
}

pub fn supervision_level(l: SupervisionLevel) -> &'static str {
    match l {
        SupervisionLevel::Ordinary => "一般督办",
        SupervisionLevel::Listed => "挂牌督办",
        SupervisionLevel::Unspecified => "—",
    }
}

pub fn progress_stage(s: ProgressStage) -> &'static str {
    use ProgressStage as S;
    match s {
        S::PartiesContacted => "已联系当事人",
        S::Investigating => "调查了解中",
        S::SessionHeld => "已开展调解",
        S::AwaitingParty => "等待当事人",
        S::Appraisal => "鉴定评估中",
        S::Other => "其他",
        S::Unspecified => "—",
    }
}

pub fn failure_reason(r: FailureReason) -> &'static str {
    use FailureReason as R;
    match r {
        R::NoAgreement => "未达成协议",
        R::PartyAbsent => "当事人未到场",
        R::PartyRefused => "当事人拒绝调解",
        R::TimeLimitExpired => "调解期限届满",
        R::Other => "其他",
        R::Unspecified => "—",
    }
}

pub fn confirmation_decision(d: ConfirmationDecisionKind) -> &'static str {
    use ConfirmationDecisionKind as D;
    match d {
        D::Accepted => "受理司法确认申请",
        D::NotAccepted => "不予受理",
        D::Granted => "确认调解协议有效",
        D::Denied => "驳回申请",
        D::Unspecified => "—",
    }
}

pub fn review_conclusion(c: ReviewConclusion) -> &'static str {
    match c {
        ReviewConclusion::VoluntaryAndLawful => "自愿合法",
        ReviewConclusion::NotVoluntary => "非自愿",
        ReviewConclusion::Unlawful => "内容违法",
        ReviewConclusion::Unspecified => "—",
    }
}

pub fn performance(p: PerformanceStatus) -> &'static str {
    match p {
        PerformanceStatus::Performed => "已履行",
        PerformanceStatus::Defaulted => "未履行",
        PerformanceStatus::Unspecified => "—",
    }
}

pub fn follow_up_method(m: FollowUpMethod) -> &'static str {
    match m {
        FollowUpMethod::Visit => "上门回访",
        FollowUpMethod::Phone => "电话回访",
        FollowUpMethod::Online => "网上回访",
        FollowUpMethod::Unspecified => "—",
    }
}

pub fn satisfaction(s: Satisfaction) -> &'static str {
    match s {
        Satisfaction::Satisfied => "满意",
        Satisfaction::BasicallySatisfied => "基本满意",
        Satisfaction::Dissatisfied => "不满意",
        Satisfaction::Unspecified => "—",
    }
}

pub fn closure_basis(b: ClosureBasis) -> &'static str {
    match b {
        ClosureBasis::Performed => "协议已履行",
        ClosureBasis::Disposed => "移送机构已处理",
        ClosureBasis::Cancelled => "已撤回",
        ClosureBasis::Other => "其他",
        ClosureBasis::Unspecified => "—",
    }
}

/// A service's field path (`referral.parties[0].identity.number`) as the clerk knows it.
pub fn field(path: &str) -> String {
    let path = path.strip_prefix("referral.").unwrap_or(path);
    if let Some(rest) = path.strip_prefix("parties[")
        && let Some((n, tail)) = rest.split_once(']')
    {
        let who = n.parse::<usize>().map_or_else(|_| "当事人".to_owned(), |i| format!("当事人{}", i + 1));
        let what = match tail.trim_start_matches('.') {
            "identity.number" => "证件号码",
            "identity" | "identity.document_type" => "证件类型",
            "name" => "姓名/名称",
            "role" => "身份",
            "contact" => "联系方式",
            _ => "信息",
        };
        return format!("{who}{what}");
    }
    match path {
        "to" => "接收调解组织",
        "case_code" => "解纷码",
        "parties" => "当事人",
        "amount" => "标的额",
        "clock_policy" | "clock_policy.kind" => "计时规则",
        "facts" => "基本事实",
        "registered_at" => "立案时间",
        "cause_of_action" => "案由",
        "claims" => "请求事项",
        "consents" => "当事人同意调解",
        "mode" => "移送方式",
        "category" => "纠纷类型",
        "legal_basis" => "法律依据",
        "client_request_id" => "表单标识",
        "idempotency-key" => "操作标识",
        p if p.ends_with("document_number") => "文书编号",
        p if p.ends_with("reason") || p.ends_with("explanation") => "理由",
        p if p.ends_with("signed_by") => "签收人",
        p if p.ends_with("accepted_by") => "受理人",
        p if p.ends_with("mediator") => "调解员",
        p if p.ends_with("instructions") => "督办要求",
        p if p.ends_with("closed_by") => "结案人",
        p if p.ends_with("basis") => "结案依据",
        p if p.ends_with("agreement") || p.ends_with("sha256_hex") => "调解协议",
        p if p.ends_with("terms") => "协议内容",
        p if p.ends_with("applicant_party_ids") => "申请人",
        p if p.ends_with("status") => "履行情况",
        p if p.ends_with("days") => "延长天数",
        p if p.ends_with("limit") => "期限",
        p if p.ends_with("questions") => "需补充的内容",
        p if p.ends_with("stage") => "阶段",
        p if p.ends_with("consents") => "当事人同意",
        p if p.ends_with("to_agency") || p.ends_with(".to") => "接收组织",
        p if p.ends_with("tier") => "调解层级",
        _ => "此项",
    }
    .to_owned()
}

/// What is wrong with a field, in Chinese, from the service's (English) description.
pub fn problem(path: &str, description: &str) -> String {
    let d = description.to_ascii_lowercase();
    if path.ends_with("identity.number") {
        return "无效，请核对证件类型与号码（居民身份证号码为18位，末位校验码须正确）".into();
    }
    if d.contains("required") {
        "为必填项".into()
    } else if d.contains("negative") {
        "不能为负数".into()
    } else if d.contains("unknown agency") || d.contains("not a valid agency") {
        "不在机构名录中".into()
    } else if d.contains("mediation body") {
        "只能是调解组织".into()
    } else if d.contains("consented") {
        "须经全部当事人同意".into()
    } else if d.contains("must be 1 to") {
        "超出允许范围".into()
    } else if d.contains("already used") {
        "该操作已提交过，请刷新页面后重试".into()
    } else {
        "填写有误".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_field_paths_read_as_the_clerk_knows_them() {
        assert_eq!(field("referral.parties[0].identity.number"), "当事人1证件号码");
        assert_eq!(field("referral.parties[1].name"), "当事人2姓名/名称");
        assert_eq!(field("decision.document_number"), "文书编号");
        assert_eq!(field("referral.facts"), "基本事实");
        assert_eq!(problem("referral.parties[0].identity.number", "check digit mismatch"), "无效，请核对证件类型与号码（居民身份证号码为18位，末位校验码须正确）");
        assert_eq!(problem("receipt.signed_by", "is required"), "为必填项");
    }

    #[test]
    fn every_state_has_a_chinese_name() {
        assert!(states().all(|s| state(s) != "未知状态"));
    }
}


/// A label and the clerk's own text after it (the label alone when there is no text).
fn with_text(label: &str, text: &str) -> String {
    match text.trim() {
        "" => label.to_owned(),
        t => format!("{label}: {t}"),
    }
}

/// A timeline entry's one-line summary (摘要), in Chinese, from the typed message: the contract's
/// enums by their labels here, the clerks' own text as they wrote it, agencies by `agency` (their
/// display names). A new message kind is a compile error here, never an English word on a screen.
pub fn summary(payload: &Payload, agency: impl Fn(Option<&AgencyRef>) -> String) -> String {
    use duijie_proto::v1::outcome::Kind;
    match payload {
        Payload::Referral(r) => match &r.forwarded {
            Some(f) => format!("由{}移交（{}）", agency(f.forwarded_by.as_ref()), message_kind(f.reason())),
            None => format!("当事人{}名；{}", r.parties.len(), r.cause_of_action),
        },
        Payload::Amendment(a) => a.reason.clone(),
        Payload::Cancellation(c) => with_text(cancellation_reason(c.reason()), &c.explanation),
        Payload::SupervisionNotice(n) => with_text(supervision_level(n.level()), &n.instructions),
        Payload::Receipt(r) => format!("签收人：{}", r.signed_by),
        Payload::Accept(a) => format!("受理人：{}", a.accepted_by),
        Payload::Reject(r) => with_text(reject_reason(r.reason()), &r.explanation),
        Payload::Redirect(r) => with_text(&format!("转至{}", agency(r.to.as_ref())), &r.reason),
        Payload::Assignment(a) => a.mediator.as_ref().map(|m| format!("调解员：{}", m.name)).unwrap_or_default(),
        Payload::Escalation(e) => {
            let to = e.to_agency.as_ref().map(|a| format!(" {}", agency(Some(a)))).unwrap_or_default();
            format!("{} → {}{to}", tier(e.from_tier()), tier(e.to_tier()))
        }
        Payload::Progress(p) => p.summary.clone(),
        Payload::InfoRequest(q) => q.questions.join("；"),
        Payload::ExtensionRequest(x) => format!("{}延长{}天", time_limit(x.limit()), x.days),
        Payload::Outcome(o) => match &o.kind {
            Some(Kind::Settled(s)) => format!("达成协议：{}", s.terms.join("；")),
            Some(Kind::Failed(f)) => format!("调解不成：{}", failure_reason(f.reason())),
            Some(Kind::Withdrawn(_)) => "撤回调解".into(),
            None => String::new(),
        },
        Payload::ConfirmationRequest(_) => "申请司法确认".into(),
        Payload::ConfirmationDecision(d) => format!("{} {}", confirmation_decision(d.decision()), d.document_number).trim_end().to_owned(),
        Payload::AgreementRecognition(a) => format!("确认履行 {}", a.document_number).trim_end().to_owned(),
        Payload::ReconciliationReview(r) => review_conclusion(r.conclusion()).to_owned(),
        Payload::Performance(p) => performance(p.status()).to_owned(),
        Payload::FollowUp(f) => with_text(satisfaction(f.satisfaction()), &f.summary),
        Payload::Closure(c) => with_text(closure_basis(c.basis()), &c.summary),
        Payload::CancellationConfirmation(c) => {
            if c.confirmed { "同意撤回".into() } else { format!("不同意撤回：{}", c.reason) }
        }
        Payload::DispositionNotice(d) => format!("{} {}", disposition(d.disposition()), d.document_number).trim_end().to_owned(),
        Payload::DeliveryEvidence(e) => match e.evidence_type() {
            EvidenceType::NotDelivered => "未能送达".into(),
            _ => "已送达".into(),
        },
        Payload::DeadlineWarning(w) => format!("{}即将届满", w.deadline.as_ref().map_or("期限", |d| time_limit(d.limit()))),
        Payload::DeadlineBreached(b) => format!("{}已届满", b.deadline.as_ref().map_or("期限", |d| time_limit(d.limit()))),
    }
}

#[cfg(test)]
mod summary_tests {
    use super::*;
    use duijie_domain::agency::ref_str;

    fn zh(p: Payload) -> String {
        summary(&p, ref_str)
    }

    #[test]
    fn summaries_read_in_chinese() {
        let party = Party::default;
        let referral = Referral { parties: vec![party(), party()], cause_of_action: "相邻关系纠纷".into(), ..Default::default() };
        assert_eq!(zh(Payload::Referral(referral)), "当事人2名；相邻关系纠纷");
        assert_eq!(zh(Payload::Receipt(Receipt { signed_by: "王明".into(), ..Default::default() })), "签收人：王明");
        let failed = outcome::Kind::Failed(outcome::Failed { reason: FailureReason::NoAgreement as i32, ..Default::default() });
        assert_eq!(zh(Payload::Outcome(Outcome { kind: Some(failed) })), "调解不成：未达成协议");
        let evidence = |t: EvidenceType| DeliveryEvidence { evidence_type: t as i32, message_kind: MessageKind::Referral as i32, ..Default::default() };
        assert_eq!(zh(Payload::DeliveryEvidence(evidence(EvidenceType::Delivered))), "已送达");
        assert_eq!(zh(Payload::DeliveryEvidence(evidence(EvidenceType::NotDelivered))), "未能送达");
        let closure = Closure { basis: ClosureBasis::Performed as i32, summary: "案结事了".into(), ..Default::default() };
        assert_eq!(zh(Payload::Closure(closure)), "协议已履行: 案结事了");
    }

    #[test]
    fn agencies_and_enums_are_named_not_spelled() {
        let town = AgencyRef::new(AgencyKind::Mediation, "431003-102");
        let escalation = Escalation { from_tier: MediationTier::Village as i32, to_tier: MediationTier::Town as i32, to_agency: Some(town.clone()), reason: String::new() };
        let named = summary(&Payload::Escalation(escalation), |a| if a == Some(&town) { "白露塘镇调委会".into() } else { "?".into() });
        assert_eq!(named, "村（社区）级 → 乡镇（街道）级 白露塘镇调委会");
        let forwarded = Referral { forwarded: Some(ForwardedCase { forwarded_by: Some(town), reason: MessageKind::Redirect as i32, ..Default::default() }), ..Default::default() };
        assert_eq!(zh(Payload::Referral(forwarded)), "由mediation:431003-102移交（转办）");
        let notice = DispositionNotice { disposition: DispositionKind::Other as i32, ..Default::default() };
        assert_eq!(zh(Payload::DispositionNotice(notice)), "其他");
        let extension = ExtensionRequest { limit: TimeLimit::PeoplesMediation as i32, days: 15, ..Default::default() };
        assert_eq!(zh(Payload::ExtensionRequest(extension)), "人民调解期限（30日）延长15天");
        for p in [Payload::Cancellation(Cancellation::default()), Payload::ConfirmationDecision(ConfirmationDecision::default())] {
            let s = zh(p);
            assert!(!s.chars().any(|c| c.is_ascii_uppercase()), "no enum name in English: {s}");
        }
    }
}
