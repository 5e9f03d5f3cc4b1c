//! Round trip of one fully populated sample of every payload kind, and the
//! ways an envelope is refused; the shape of the agency APIs' answers.

use std::collections::{BTreeSet, HashMap};

use duijie_proto::prost::Message as _;
use duijie_proto::prost_types::{self, Duration, Timestamp};
use duijie_proto::v1::{
    self, AgencyKind, AgencyRef, Channel, ClockPolicyKind, Envelope, MessageKind,
    envelope::Payload, outcome,
};
use duijie_proto::{
    CaseAnswer as _, ContractError, ENVELOPE_CONTENT_TYPE, RoutingKey, SCHEMA_VERSION,
    answered_case,
};

// ---------------------------------------------------------------------------
// Sample builders
// ---------------------------------------------------------------------------

const CASE_ID: &str = "0192f0c1-7c2d-7a3e-8f10-2b3c4d5e6f70";
const MESSAGE_ID: &str = "0192f0c1-7c2d-7a3e-8f10-2b3c4d5e6f71";
const CAUSATION_ID: &str = "0192f0c1-7c2d-7a3e-8f10-2b3c4d5e6f72";

fn ts(offset_seconds: i64) -> Timestamp {
    Timestamp {
        seconds: 1_780_000_000 + offset_seconds,
        nanos: 123_000_000,
    }
}

fn agency(kind: AgencyKind, code: &str) -> AgencyRef {
    AgencyRef::new(kind, code)
}

fn attachment(name: &str) -> v1::AttachmentDigest {
    v1::AttachmentDigest {
        name: name.to_owned(),
        media_type: "application/pdf".to_owned(),
        sha256_hex: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned(),
        size_bytes: 48_213,
        location: format!("s3://duijie-docs/431003/{name}"),
    }
}

fn party(id: &str, role: v1::PartyRole, name: &str, number: &str) -> v1::Party {
    v1::Party {
        party_id: id.to_owned(),
        role: role as i32,
        party_type: v1::PartyType::NaturalPerson as i32,
        name: name.to_owned(),
        identity: Some(v1::IdentityDocument {
            document_type: v1::IdDocumentType::ResidentIdCard as i32,
            number: number.to_owned(),
        }),
        contact: "13800000000".to_owned(),
        address: "湖南省郴州市北湖区人民路1号".to_owned(),
        representative: "李律师".to_owned(),
        sealed: vec![0x01, 0x02],
    }
}

fn consent(party_id: &str) -> v1::PartyConsent {
    v1::PartyConsent {
        party_id: party_id.to_owned(),
        consented: true,
        consented_at: Some(ts(60)),
        method: v1::ConsentMethod::Written as i32,
    }
}

fn clock_policy() -> v1::ClockPolicy {
    v1::ClockPolicy {
        kind: ClockPolicyKind::CourtOrdinary as i32,
        legal_basis: "最高人民法院《关于严格依法规范民事案件立案与调解工作的意见》".to_owned(),
        basis_version: "2025-01-01".to_owned(),
    }
}

fn deadline() -> v1::Deadline {
    v1::Deadline {
        limit: v1::TimeLimit::CourtMediationOrdinary as i32,
        policy: ClockPolicyKind::CourtOrdinary as i32,
        legal_basis: "最高人民法院《关于严格依法规范民事案件立案与调解工作的意见》".to_owned(),
        basis_version: "2025-01-01".to_owned(),
        started_at: Some(ts(0)),
        due_at: Some(ts(15 * 86_400)),
        started_by_message_id: CAUSATION_ID.to_owned(),
        extended_days: 30,
        working_days: true,
    }
}

fn mediator(id: &str, name: &str) -> v1::Mediator {
    v1::Mediator {
        mediator_id: id.to_owned(),
        name: name.to_owned(),
        contact: "0735-2222222".to_owned(),
    }
}

fn referral() -> v1::Referral {
    v1::Referral {
        intake: Some(v1::Intake {
            source: v1::IntakeSource::Hotline148 as i32,
            risk_level: v1::RiskLevel::Medium as i32,
            received_by: "周接待".to_owned(),
        }),
        legal_basis: "《中华人民共和国民事诉讼法》第125条".to_owned(),
        mode: v1::ReferralMode::Entrusted as i32,
        source_reference: "(2026)湘1003民诉前调123号".to_owned(),
        registered_at: Some(ts(-86_400)),
        parties: vec![
            party("p1", v1::PartyRole::Plaintiff, "张三", "431003199001011234"),
            party("p2", v1::PartyRole::Defendant, "王五", "43100319851231567X"),
        ],
        category: v1::DisputeCategory::PrivateLending as i32,
        cause_of_action: "民间借贷纠纷".to_owned(),
        facts: "2024年3月被告向原告借款5万元, 约定一年内归还, 至今未还。".to_owned(),
        claims: vec![
            "判令被告归还借款50000元".to_owned(),
            "承担诉讼费用".to_owned(),
        ],
        amount: Some(v1::Money::cny(5_000_000)),
        attachments: vec![attachment("起诉状.pdf"), attachment("借条.jpg")],
        consents: vec![consent("p1"), consent("p2")],
        clock_policy: Some(clock_policy()),
        client_request_id: "court-431003-req-000001".to_owned(),
        note: "当事人均同意诉前调解".to_owned(),
        // Only a mediation body's hand-over sets this; populated here so the round trip
        // covers every field.
        forwarded: Some(v1::ForwardedCase {
            original_referrer: Some(v1::AgencyRef { kind: v1::AgencyKind::Court as i32, code: "431003".to_owned() }),
            forwarded_by: Some(v1::AgencyRef { kind: v1::AgencyKind::Mediation as i32, code: "431003".to_owned() }),
            reason: v1::MessageKind::Redirect as i32,
            history: vec![vec![0x0a, 0x01, 0x41]],
            original_envelope: vec![0x0a, 0x01, 0x42],
            original_signature: vec![0x30, 0x01],
            original_signer_cert: vec![0x30, 0x02],
        }),
    }
}

fn settled() -> outcome::Settled {
    outcome::Settled {
        agreement: Some(attachment("调解协议书.pdf")),
        terms: vec!["王五于2026年6月30日前归还张三45000元".to_owned()],
        amount: Some(v1::Money::cny(4_500_000)),
        signed_at: Some(ts(3 * 86_400)),
        confirmation_intended: true,
        performed_on_the_spot: true,
    }
}

/// One fully populated payload of `kind`; `None` only for `Unspecified`.
/// The match is exhaustive: a new kind without a sample does not compile.
fn sample(kind: MessageKind) -> Option<Payload> {
    let payload = match kind {
        MessageKind::Unspecified => return None,
        MessageKind::Referral => Payload::Referral(referral()),
        MessageKind::Amendment => Payload::Amendment(v1::Amendment {
            reason: "补充被告现住址".to_owned(),
            revised: Some(referral()),
            changed_fields: vec!["parties".to_owned()],
            answer: "被告现住北湖区燕泉街道".to_owned(),
        }),
        MessageKind::Cancellation => Payload::Cancellation(v1::Cancellation {
            reason: v1::CancellationReason::SettledOutside as i32,
            explanation: "双方已自行和解".to_owned(),
        }),
        MessageKind::SupervisionNotice => Payload::SupervisionNotice(v1::SupervisionNotice {
            level: v1::SupervisionLevel::Listed as i32,
            instructions: "请于3日内反馈调解进展".to_owned(),
            respond_by: Some(ts(3 * 86_400)),
            supervisor: "赵主任".to_owned(),
        }),
        MessageKind::Receipt => Payload::Receipt(v1::Receipt {
            signed_by: "刘芳".to_owned(),
            signer_position: "窗口受理员".to_owned(),
            signed_at: Some(ts(3_600)),
        }),
        MessageKind::Accept => Payload::Accept(v1::Accept {
            accepted_by: "刘芳".to_owned(),
            local_reference: "北调受〔2026〕88号".to_owned(),
            clock_policy: Some(clock_policy()),
            note: "分流至镇调委会".to_owned(),
        }),
        MessageKind::Reject => Payload::Reject(v1::Reject {
            reason: v1::RejectReason::OutOfScope as i32,
            explanation: "属于行政复议范围".to_owned(),
        }),
        MessageKind::Redirect => Payload::Redirect(v1::Redirect {
            to: Some(agency(AgencyKind::Mediation, "431003-TRAFFIC")),
            reason: "交通事故纠纷转交通调委会".to_owned(),
        }),
        MessageKind::Assignment => Payload::Assignment(v1::Assignment {
            mediator: Some(mediator("M-017", "陈调解")),
            co_mediators: vec![mediator("M-021", "周调解")],
            tier: v1::MediationTier::Town as i32,
            committee: Some(agency(AgencyKind::Mediation, "431003-102")),
            first_session_at: Some(ts(2 * 86_400)),
        }),
        MessageKind::Escalation => Payload::Escalation(v1::Escalation {
            from_tier: v1::MediationTier::Village as i32,
            to_tier: v1::MediationTier::Town as i32,
            to_agency: Some(agency(AgencyKind::Mediation, "431003-102")),
            reason: "村级调解未果".to_owned(),
        }),
        MessageKind::Progress => Payload::Progress(v1::Progress {
            stage: v1::ProgressStage::SessionHeld as i32,
            summary: "已组织首次面对面调解".to_owned(),
            sessions_held: 1,
            next_session_at: Some(ts(5 * 86_400)),
        }),
        MessageKind::InfoRequest => Payload::InfoRequest(v1::InfoRequest {
            questions: vec!["请提供借条原件照片".to_owned()],
            respond_by: Some(ts(2 * 86_400)),
        }),
        MessageKind::ExtensionRequest => Payload::ExtensionRequest(v1::ExtensionRequest {
            limit: v1::TimeLimit::CourtMediationOrdinary as i32,
            days: 30,
            reason: "双方同意继续协商还款方案".to_owned(),
            consents: vec![consent("p1"), consent("p2")],
        }),
        MessageKind::Outcome => Payload::Outcome(v1::Outcome {
            kind: Some(outcome::Kind::Settled(settled())),
        }),
        MessageKind::ConfirmationRequest => Payload::ConfirmationRequest(v1::ConfirmationRequest {
            agreement: Some(attachment("调解协议书.pdf")),
            agreement_signed_at: Some(ts(3 * 86_400)),
            applicant_party_ids: vec!["p1".to_owned(), "p2".to_owned()],
            documents: vec![attachment("司法确认申请书.pdf")],
            court: Some(v1::AgencyRef::new(v1::AgencyKind::Court, "431003")),
            case_referrer: Some(v1::AgencyRef::new(v1::AgencyKind::Police, "431003-01")),
            case_referral: Some(referral()),
        }),
        MessageKind::ConfirmationDecision => {
            Payload::ConfirmationDecision(v1::ConfirmationDecision {
                decision: v1::ConfirmationDecisionKind::Granted as i32,
                reason: "协议内容不违反法律规定".to_owned(),
                document_number: "(2026)湘1003民特45号".to_owned(),
                document: Some(attachment("民事裁定书.pdf")),
            })
        }
        MessageKind::AgreementRecognition => {
            Payload::AgreementRecognition(v1::AgreementRecognition {
                agreement: Some(attachment("治安调解协议书.pdf")),
                document_number: "郴北公(燕)调字〔2026〕12号".to_owned(),
                recognised_by: "民警孙某".to_owned(),
                note: "已当场履行赔偿".to_owned(),
            })
        }
        MessageKind::ReconciliationReview => {
            Payload::ReconciliationReview(v1::ReconciliationReview {
                conclusion: v1::ReviewConclusion::VoluntaryAndLawful as i32,
                agreement: Some(attachment("刑事和解协议书.pdf")),
                reviewed_by: "检察官吴某".to_owned(),
                reason: "双方自愿, 内容合法".to_owned(),
            })
        }
        MessageKind::Performance => Payload::Performance(v1::Performance {
            status: v1::PerformanceStatus::Performed as i32,
            amount_performed: Some(v1::Money::cny(4_500_000)),
            note: "已全额转账".to_owned(),
        }),
        MessageKind::FollowUp => Payload::FollowUp(v1::FollowUp {
            method: v1::FollowUpMethod::Phone as i32,
            conducted_by: "陈调解".to_owned(),
            summary: "双方关系缓和".to_owned(),
            satisfaction: v1::Satisfaction::Satisfied as i32,
            recurred: true,
        }),
        MessageKind::Closure => Payload::Closure(v1::Closure {
            basis: v1::ClosureBasis::Performed as i32,
            summary: "协议履行完毕, 回访满意, 案结事了".to_owned(),
            closed_by: "刘芳".to_owned(),
        }),
        MessageKind::DispositionNotice => Payload::DispositionNotice(v1::DispositionNotice {
            disposition: v1::DispositionKind::FiledForTrial as i32,
            document_number: "(2026)湘1003民初456号".to_owned(),
            summary: "调解不成, 已登记立案".to_owned(),
            document: Some(attachment("受理通知书.pdf")),
        }),
        MessageKind::DeliveryEvidence => Payload::DeliveryEvidence(v1::DeliveryEvidence {
            evidence_type: v1::EvidenceType::Delivered as i32,
            message_id: CAUSATION_ID.to_owned(),
            message_kind: MessageKind::Referral as i32,
            delivered_to: Some(agency(AgencyKind::Mediation, "431003")),
            consumer: "mediation-svc@pod-7".to_owned(),
            delivered_at: Some(ts(5)),
            envelope_sha256_hex: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                .to_owned(),
            reason: "n/a".to_owned(),
        }),
        MessageKind::DeadlineWarning => Payload::DeadlineWarning(v1::DeadlineWarning {
            deadline: Some(deadline()),
            remaining: Some(Duration {
                seconds: 2 * 86_400,
                nanos: 1,
            }),
        }),
        MessageKind::DeadlineBreached => Payload::DeadlineBreached(v1::DeadlineBreached {
            deadline: Some(deadline()),
            overdue_by: Some(Duration {
                seconds: 3_600,
                nanos: 1,
            }),
        }),
        MessageKind::CancellationConfirmation => {
            Payload::CancellationConfirmation(v1::CancellationConfirmation {
                confirmed: true,
                reason: "尚未达成协议, 同意撤回".to_owned(),
            })
        }
    };
    Some(payload)
}

/// A valid envelope around `payload`, sent by an agency allowed to send it.
fn envelope(payload: Payload) -> Envelope {
    let kind = payload.kind();
    let sender_kind = kind
        .allowed_senders()
        .first()
        .copied()
        .unwrap_or(AgencyKind::Unspecified);
    let recipient = match sender_kind {
        AgencyKind::Mediation => agency(AgencyKind::Court, "431003"),
        _ => agency(AgencyKind::Mediation, "431003-102"),
    };
    let sender_code = if sender_kind == AgencyKind::Bus {
        "bus"
    } else {
        "431003"
    };
    Envelope {
        message_id: MESSAGE_ID.to_owned(),
        case_id: CASE_ID.to_owned(),
        case_code: "JF-431003-2026-000123".to_owned(),
        channel: Channel::Court as i32,
        sender: Some(agency(sender_kind, sender_code)),
        recipient: Some(recipient),
        kind: 0,
        occurred_at: Some(ts(0)),
        causation_id: CAUSATION_ID.to_owned(),
        schema_version: SCHEMA_VERSION,
        trace: Some(v1::TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            tracestate: "duijie=1".to_owned(),
        }),
        payload: None,
        passed_on: Some(v1::PassedOn { original: vec![0x0a, 0x01, 0x31], signature: vec![0x30, 0x02], signer_cert: vec![0x30, 0x03] }),
    }
    .with_payload(payload)
}

fn valid_referral_envelope() -> Envelope {
    envelope(Payload::Referral(referral()))
}

// ---------------------------------------------------------------------------
// "Every field is set" check driven by the compiled descriptors
// ---------------------------------------------------------------------------

/// Message descriptors by fully qualified name (`.duijie.v1.Outcome.Settled`).
fn descriptors() -> HashMap<String, prost_types::DescriptorProto> {
    fn add(
        prefix: &str,
        msgs: &[prost_types::DescriptorProto],
        out: &mut HashMap<String, prost_types::DescriptorProto>,
    ) {
        for m in msgs {
            let name = format!("{prefix}.{}", m.name());
            add(&name, &m.nested_type, out);
            out.insert(name, m.clone());
        }
    }
    let set = prost_types::FileDescriptorSet::decode(duijie_proto::FILE_DESCRIPTOR_SET)
        .unwrap_or_default();
    let mut out = HashMap::new();
    for file in &set.file {
        add(
            &format!(".{}", file.package()),
            &file.message_type,
            &mut out,
        );
    }
    out
}

fn read_varint(buf: &mut &[u8]) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().unwrap_or((&0, &[]));
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    value
}

/// Pushes onto `missing` the path of every field of `type_name` (and of the
/// `duijie.v1` messages inside it) that `bytes` does not carry. For a oneof
/// one member is enough. A field at its default value is not encoded, so it
/// counts as missing: samples must use non-default values everywhere.
fn missing_fields(
    descs: &HashMap<String, prost_types::DescriptorProto>,
    type_name: &str,
    bytes: &[u8],
    path: &str,
    missing: &mut Vec<String>,
) {
    let Some(desc) = descs.get(type_name) else {
        missing.push(format!("{path}: no descriptor for {type_name}"));
        return;
    };
    let mut present: BTreeSet<i32> = BTreeSet::new();
    let mut buf = bytes;
    while !buf.is_empty() {
        let key = read_varint(&mut buf);
        let number = i32::try_from(key >> 3).unwrap_or(0);
        present.insert(number);
        match key & 7 {
            0 => {
                read_varint(&mut buf);
            }
            1 => buf = &buf[8.min(buf.len())..],
            5 => buf = &buf[4.min(buf.len())..],
            2 => {
                let len = usize::try_from(read_varint(&mut buf)).unwrap_or(usize::MAX);
                let (inner, rest) = buf.split_at(len.min(buf.len()));
                buf = rest;
                let field = desc.field.iter().find(|f| f.number() == number);
                if let Some(field) = field {
                    let is_message =
                        field.r#type() == prost_types::field_descriptor_proto::Type::Message;
                    if is_message && field.type_name().starts_with(".duijie.") {
                        let inner_path = format!("{path}.{}", field.name());
                        missing_fields(descs, field.type_name(), inner, &inner_path, missing);
                    }
                }
            }
            other => missing.push(format!("{path}: unexpected wire type {other}")),
        }
    }
    let mut oneofs_seen: BTreeSet<i32> = BTreeSet::new();
    for field in &desc.field {
        if present.contains(&field.number()) {
            if field.oneof_index.is_some() {
                oneofs_seen.insert(field.oneof_index());
            }
        } else if field.oneof_index.is_none() {
            missing.push(format!("{path}.{}", field.name()));
        }
    }
    for (index, oneof) in desc.oneof_decl.iter().enumerate() {
        let index = i32::try_from(index).unwrap_or(-1);
        if !oneofs_seen.contains(&index) {
            missing.push(format!("{path}.{} (oneof)", oneof.name()));
        }
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn all_lists_every_kind_exactly_once() {
    let known: Vec<MessageKind> = (1..=1_000)
        .filter_map(|v| MessageKind::try_from(v).ok())
        .collect();
    assert_eq!(known, MessageKind::ALL.to_vec());
    let segments: BTreeSet<&str> = MessageKind::ALL
        .iter()
        .map(|k| k.routing_segment())
        .collect();
    assert_eq!(segments.len(), MessageKind::ALL.len());
    for kind in MessageKind::ALL {
        assert_eq!(
            MessageKind::from_routing_segment(kind.routing_segment()),
            Some(kind)
        );
        assert!(!kind.allowed_senders().is_empty(), "{kind:?} has no sender");
    }
    assert_eq!(MessageKind::from_routing_segment("unspecified"), None);
    assert_eq!(
        MessageKind::ConfirmationDecision.routing_segment(),
        "confirmation_decision"
    );
    assert_eq!(MessageKind::FollowUp.routing_segment(), "follow_up");
}

#[test]
fn every_kind_round_trips_fully_populated() {
    let descs = descriptors();
    assert!(
        descs.contains_key(".duijie.v1.Envelope"),
        "descriptor set lacks Envelope"
    );
    for kind in MessageKind::ALL {
        let payload = sample(kind).unwrap_or_else(|| panic!("no sample for {kind:?}"));
        assert_eq!(payload.kind(), kind);
        let env = envelope(payload);
        assert_eq!(env.kind(), kind);
        assert_eq!(env.payload_kind(), Some(kind));

        let bytes = env.encode_to_vec();
        let decoded =
            Envelope::decode(bytes.as_slice()).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert_eq!(decoded, env, "{kind:?} changed in the round trip");
        assert_eq!(Envelope::decode_checked(&bytes), Ok(env.clone()));

        let mut missing = Vec::new();
        missing_fields(
            &descs,
            ".duijie.v1.Envelope",
            &bytes,
            "Envelope",
            &mut missing,
        );
        assert!(
            missing.is_empty(),
            "{kind:?}: sample leaves fields unset: {missing:?}"
        );

        assert_eq!(env.check(), Ok(()), "{kind:?}");
        assert_eq!(env.check_sender_kind(), Ok(()), "{kind:?}");
        let recipient = env.recipient.clone().unwrap_or_default();
        let expected = format!(
            "{}.{}.{}",
            recipient.kind().as_str(),
            recipient.code,
            kind.routing_segment()
        );
        assert_eq!(env.routing_key(), Ok(expected.clone()), "{kind:?}");
        let parsed = RoutingKey::parse(&expected).unwrap_or_else(|| panic!("{expected}"));
        assert_eq!(parsed.kind, kind);
        assert_eq!(parsed.to_string(), expected);
    }
}

#[test]
fn payload_field_number_is_19_plus_kind() {
    for kind in MessageKind::ALL {
        let Some(payload) = sample(kind) else {
            continue;
        };
        let only_payload = Envelope {
            payload: Some(payload),
            ..Envelope::default()
        };
        let bytes = only_payload.encode_to_vec();
        let mut buf = bytes.as_slice();
        let key = read_varint(&mut buf);
        assert_eq!(key >> 3, 19 + kind as u64, "{kind:?}");
    }
}

#[test]
fn every_outcome_variant_round_trips() {
    let variants = [
        outcome::Kind::Settled(settled()),
        outcome::Kind::Failed(outcome::Failed {
            reason: v1::FailureReason::PartyAbsent as i32,
            explanation: "被申请人两次未到场".to_owned(),
        }),
        outcome::Kind::Withdrawn(outcome::Withdrawn {
            party_id: "p1".to_owned(),
            reason: "申请人撤回调解申请".to_owned(),
        }),
    ];
    let descs = descriptors();
    for variant in variants {
        let env = envelope(Payload::Outcome(v1::Outcome {
            kind: Some(variant),
        }));
        let bytes = env.encode_to_vec();
        assert_eq!(Envelope::decode_checked(&bytes), Ok(env.clone()));
        let mut missing = Vec::new();
        missing_fields(
            &descs,
            ".duijie.v1.Envelope",
            &bytes,
            "Envelope",
            &mut missing,
        );
        assert!(missing.is_empty(), "{missing:?}");
    }
}

#[test]
fn routing_key_of_a_referral() {
    let env = valid_referral_envelope();
    assert_eq!(
        env.routing_key().as_deref(),
        Ok("mediation.431003-102.referral")
    );
}

#[test]
fn kind_payload_mismatch_is_refused() {
    let mut env = valid_referral_envelope();
    env.set_kind(MessageKind::Receipt);
    assert_eq!(
        env.check(),
        Err(ContractError::KindMismatch {
            declared: MessageKind::Receipt,
            payload: MessageKind::Referral,
        })
    );
    assert!(env.routing_key().is_err());

    env.kind = 0;
    assert_eq!(env.check(), Err(ContractError::UnknownKind(0)));
    env.kind = 999;
    assert_eq!(env.check(), Err(ContractError::UnknownKind(999)));
}

#[test]
fn bad_uuids_are_refused() {
    let bad = [
        "",
        "not-a-uuid",
        "0192F0C1-7C2D-7A3E-8F10-2B3C4D5E6F70",
        "0192f0c17c2d7a3e8f102b3c4d5e6f70",
        "{0192f0c1-7c2d-7a3e-8f10-2b3c4d5e6f70}",
        "urn:uuid:0192f0c1-7c2d-7a3e-8f10-2b3c4d5e6f70",
        "00000000-0000-0000-0000-000000000000",
        "0192f0c1-7c2d-7a3e-8f10-2b3c4d5e6f7g",
    ];
    for value in bad {
        let mut env = valid_referral_envelope();
        env.message_id = value.to_owned();
        assert!(
            matches!(
                env.check(),
                Err(ContractError::InvalidUuid {
                    field: "message_id",
                    ..
                })
            ),
            "message_id {value:?} accepted"
        );
        let mut env = valid_referral_envelope();
        env.case_id = value.to_owned();
        assert!(
            matches!(
                env.check(),
                Err(ContractError::InvalidUuid {
                    field: "case_id",
                    ..
                })
            ),
            "case_id {value:?} accepted"
        );
        if !value.is_empty() {
            let mut env = valid_referral_envelope();
            env.causation_id = value.to_owned();
            assert!(
                matches!(
                    env.check(),
                    Err(ContractError::InvalidUuid {
                        field: "causation_id",
                        ..
                    })
                ),
                "causation_id {value:?} accepted"
            );
        }
    }
    let mut first = valid_referral_envelope();
    first.causation_id.clear();
    assert_eq!(first.check(), Ok(()), "a first message has no causation id");
    let mut v4 = valid_referral_envelope();
    v4.message_id = uuid::Uuid::new_v4().to_string();
    v4.case_id = uuid::Uuid::now_v7().to_string();
    assert_eq!(v4.check(), Ok(()));
}

#[test]
fn missing_payload_is_refused() {
    let mut env = valid_referral_envelope();
    env.payload = None;
    assert_eq!(env.check(), Err(ContractError::MissingPayload));
    assert_eq!(env.routing_key(), Err(ContractError::MissingPayload));
}

#[test]
fn bad_agency_codes_are_refused() {
    for code in [
        "",
        "431003.102",
        "431003 102",
        "mediation:431003",
        "*",
        "#",
        "法院",
        &"9".repeat(65),
    ] {
        let mut env = valid_referral_envelope();
        env.recipient = Some(agency(AgencyKind::Mediation, code));
        assert!(
            matches!(
                env.check(),
                Err(ContractError::InvalidAgencyCode {
                    role: "recipient",
                    ..
                })
            ),
            "recipient code {code:?} accepted"
        );
        assert!(env.routing_key().is_err());
        let mut env = valid_referral_envelope();
        env.sender = Some(agency(AgencyKind::Court, code));
        assert!(
            matches!(
                env.check(),
                Err(ContractError::InvalidAgencyCode { role: "sender", .. })
            ),
            "sender code {code:?} accepted"
        );
    }
    let mut env = valid_referral_envelope();
    env.sender = None;
    assert_eq!(
        env.check(),
        Err(ContractError::MissingAgency { role: "sender" })
    );
    let mut env = valid_referral_envelope();
    env.recipient = Some(AgencyRef {
        kind: 0,
        code: "431003".to_owned(),
    });
    assert_eq!(
        env.check(),
        Err(ContractError::InvalidAgencyKind {
            role: "recipient",
            value: 0
        })
    );
}

#[test]
fn other_header_faults_are_refused() {
    let mut env = valid_referral_envelope();
    env.channel = 0;
    assert_eq!(env.check(), Err(ContractError::InvalidChannel(0)));
    let mut env = valid_referral_envelope();
    env.occurred_at = None;
    assert_eq!(env.check(), Err(ContractError::MissingOccurredAt));
    let mut env = valid_referral_envelope();
    env.schema_version = 0;
    assert_eq!(env.check(), Err(ContractError::MissingSchemaVersion));
}

#[test]
fn sender_column_is_available_but_separate() {
    let mut env = envelope(sample(MessageKind::Receipt).unwrap_or_else(|| panic!("sample")));
    env.sender = Some(agency(AgencyKind::Police, "431003"));
    assert_eq!(env.check(), Ok(()));
    assert_eq!(
        env.check_sender_kind(),
        Err(ContractError::SenderNotAllowed {
            sender: AgencyKind::Police,
            kind: MessageKind::Receipt,
        })
    );
}

#[test]
fn garbage_bytes_fail_to_decode() {
    let garbage: [&[u8]; 3] = [&[0xff; 16], &[0x0a, 0x80], &[0x07]];
    for bytes in garbage {
        assert!(Envelope::decode(bytes).is_err(), "{bytes:?} decoded");
        assert!(matches!(
            Envelope::decode_checked(bytes),
            Err(ContractError::Decode(_))
        ));
    }
    let bytes = valid_referral_envelope().encode_to_vec();
    let truncated = &bytes[..bytes.len() - 3];
    assert!(
        Envelope::decode(truncated).is_err(),
        "truncated envelope decoded"
    );
    // Empty input decodes to an empty envelope, which the check refuses.
    assert!(matches!(
        Envelope::decode_checked(&[]),
        Err(ContractError::InvalidUuid { .. })
    ));
}

#[test]
fn agency_kind_names() {
    let names = [
        "court",
        "procuratorate",
        "police",
        "petition",
        "mediation",
        "bus",
    ];
    for (kind, name) in AgencyKind::ALL.iter().zip(names) {
        assert_eq!(kind.as_str(), name);
        assert_eq!(AgencyKind::parse(name), Some(*kind));
    }
    assert_eq!(AgencyKind::parse("Court"), None);
    assert_eq!(AgencyKind::parse("unspecified"), None);
    let court = AgencyRef::parse("court:431003");
    assert_eq!(court, Some(agency(AgencyKind::Court, "431003")));
    assert_eq!(
        court.map(|c| c.to_string()).as_deref(),
        Some("court:431003")
    );
    assert_eq!(AgencyRef::parse("court:43.1003"), None);
    assert_eq!(RoutingKey::parse("mediation.431003-102.referral.x"), None);
    assert_eq!(RoutingKey::parse("mediation..referral"), None);
    assert_eq!(RoutingKey::parse("judge.431003.referral"), None);
}

#[test]
fn identity_numbers_are_masked_in_debug() {
    let env = valid_referral_envelope();
    let debug = format!("{env:?}");
    assert!(
        !debug.contains("431003199001011234"),
        "identity number leaked: {debug}"
    );
    assert!(debug.contains("4310**********1234"));
    let short = v1::IdentityDocument {
        document_type: v1::IdDocumentType::Passport as i32,
        number: "E1234567".to_owned(),
    };
    assert_eq!(short.masked_number(), "E******7");
}

#[test]
fn constants() {
    assert_eq!(
        ENVELOPE_CONTENT_TYPE,
        "application/x-protobuf; proto=duijie.v1.Envelope"
    );
    assert_eq!(SCHEMA_VERSION, 1);
}

// ---------------------------------------------------------------------------
// The agency APIs' answers
// ---------------------------------------------------------------------------

/// Every RPC answers with its own `<Method>Response`; the 25 that read or act on one case
/// carry it as `CaseView case = 1`, and nothing else.
#[test]
fn every_case_rpc_answers_with_its_own_response_wrapping_the_case() {
    let set = prost_types::FileDescriptorSet::decode(duijie_proto::FILE_DESCRIPTOR_SET)
        .unwrap_or_default();
    let messages = descriptors();
    let mut case_rpcs = Vec::new();
    for file in set.file.iter().filter(|f| f.package() == "duijie.v1") {
        for service in &file.service {
            assert!(service.name().ends_with("Service"), "{}", service.name());
            for method in &service.method {
                let output = method.output_type();
                assert_eq!(output, format!(".duijie.v1.{}Response", method.name()));
                let fields = &messages[output].field;
                if fields.iter().any(|f| f.type_name() == ".duijie.v1.CaseView") {
                    assert_eq!(fields.len(), 1, "{output}");
                    assert_eq!((fields[0].name(), fields[0].number()), ("case", 1), "{output}");
                    case_rpcs.push(format!("{}.{}", service.name(), method.name()));
                }
            }
        }
    }
    assert_eq!(case_rpcs.len(), 26, "{case_rpcs:?}");
}

#[test]
fn a_case_answer_is_the_view_in_field_1() {
    let view = v1::CaseView {
        case_id: CASE_ID.to_owned(),
        case_code: "JF-431003-2026-000123".to_owned(),
        state: "DELIVERED".to_owned(),
        ..Default::default()
    };
    let answer = v1::SignForResponse::from(view.clone());
    assert_eq!(answer.case(), Some(&view));
    // On the wire: tag (field 1, length-delimited), length, the encoded view.
    let mut expected = vec![0x0a];
    expected.extend(view.encode_length_delimited_to_vec());
    assert_eq!(answer.encode_to_vec(), expected);
    assert_eq!(answered_case(tonic::Response::new(answer)).ok(), Some(view));
    let empty = answered_case(tonic::Response::new(v1::GetCaseResponse::default()));
    assert_eq!(empty.err().map(|s| s.code()), Some(tonic::Code::Internal));
}
