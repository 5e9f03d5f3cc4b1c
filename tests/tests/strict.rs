//! Strict input at every edge (issue #14, item 5): random requests through the input rules and
//! through the real gRPC API of a running stack, random bytes through the bus decoder, random
//! message sequences through the case desk. Nothing panics, nothing answers INTERNAL, every
//! refusal of a request is INVALID_ARGUMENT naming one field (or OUT_OF_RANGE for a request
//! over the size limit), what the API accepts every receiver on the bus accepts, and the
//! services' memory stays bounded under a flood of large refused requests.

use duijie_agency::validate_referral;
use duijie_common::envelope::{self, Header};
use duijie_common::inbox::decode_envelope;
use duijie_domain::lifecycle::CaseState;
use duijie_domain::{AgencyNode, Case, Effects, Lifecycle, Message};
use duijie_proto::limits::{self, MAX_REQUEST_BYTES};
use duijie_proto::prost::Message as _;
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::*;
use duijie_proto::answered_case;
use duijie_tests::stack::{self, Stack, agency_ref, referral};
use futures::StreamExt as _;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tonic::Code;
use tonic_types::StatusExt as _;

// ------------------------------------------------------------------------------------------
// Strategies
// ------------------------------------------------------------------------------------------

/// Strings a fuzzer would try: empty, plain, any Unicode (control characters included), the
/// characters the rules single out, and long runs up to past the request limit.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        3 => "[A-Za-z0-9 \\-]{1,24}",
        3 => "\\PC{1,40}",
        2 => any::<String>(),
        2 => prop::sample::select(vec!["张\u{0}三", "JF\u{202E}321", "a\u{2066}b", "bell\u{7}", "line\nbreak", "tab\there", "c1\u{85}", "  ", "nobody"])
            .prop_map(str::to_owned),
        1 => (prop::sample::select(vec!["事", "a", "\u{0}"]), 1usize..30_000).prop_map(|(c, n)| c.repeat(n)),
    ]
}

/// Enum values: the contract's own, and numbers it does not know.
fn any_enum() -> impl Strategy<Value = i32> {
    prop_oneof![4 => -1i32..30, 1 => any::<i32>()]
}

fn any_time() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    prop_oneof![
        2 => Just(None),
        3 => (limits::MIN_TIME_SECONDS..=limits::MAX_TIME_SECONDS, 0i32..1_000_000_000)
            .prop_map(|(seconds, nanos)| Some(prost_types::Timestamp { seconds, nanos })),
        2 => (any::<i64>(), any::<i32>()).prop_map(|(seconds, nanos)| Some(prost_types::Timestamp { seconds, nanos })),
    ]
}

fn any_money() -> impl Strategy<Value = Option<Money>> {
    let currency = prop_oneof![3 => Just("CNY".to_owned()), 1 => Just("USD".to_owned()), 2 => Just(String::new()), 2 => Just("XXX".to_owned()), 1 => Just("cny".to_owned()), 1 => nasty_string()];
    let units = prop_oneof![3 => 0i64..10_000_000, 2 => any::<i64>(), 1 => Just(i64::MAX), 1 => Just(limits::MAX_MINOR_UNITS + 1)];
    prop_oneof![1 => Just(None), 4 => (currency, units).prop_map(|(currency, minor_units)| Some(Money { currency, minor_units }))]
}

fn any_party() -> impl Strategy<Value = Party> {
    (nasty_string(), any_enum(), any_enum(), nasty_string(), prop::option::of((any_enum(), nasty_string())), nasty_string(), nasty_string())
        .prop_map(|(party_id, role, party_type, name, identity, contact, address)| Party {
            party_id,
            role,
            party_type,
            name,
            identity: identity.map(|(document_type, number)| IdentityDocument { document_type, number }),
            contact,
            address,
            representative: String::new(),
            sealed: Vec::new(),
        })
}

/// One change a fuzzer makes to a valid referral request.
#[derive(Debug, Clone)]
enum Mutation {
    Text(usize, String),
    Enum(usize, i32),
    Time(usize, Option<prost_types::Timestamp>),
    Amount(Option<Money>),
    Party(usize, Party),
    ManyParties(usize),
    DuplicatePartyId,
    Consents(usize, String),
    Claims(usize, String),
    Attachment(String, u64),
    CaseCode(String),
    To(i32, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (0usize..10, nasty_string()).prop_map(|(i, s)| Mutation::Text(i, s)),
        3 => (0usize..7, any_enum()).prop_map(|(i, v)| Mutation::Enum(i, v)),
        2 => (0usize..2, any_time()).prop_map(|(i, t)| Mutation::Time(i, t)),
        2 => any_money().prop_map(Mutation::Amount),
        2 => (0usize..3, any_party()).prop_map(|(i, p)| Mutation::Party(i, p)),
        1 => prop_oneof![0usize..5, 90usize..130].prop_map(Mutation::ManyParties),
        1 => Just(Mutation::DuplicatePartyId),
        2 => (0usize..4, nasty_string()).prop_map(|(i, s)| Mutation::Consents(i, s)),
        1 => (0usize..80, nasty_string()).prop_map(|(n, s)| Mutation::Claims(n, s)),
        1 => (nasty_string(), any::<u64>()).prop_map(|(h, n)| Mutation::Attachment(h, n)),
        2 => nasty_string().prop_map(Mutation::CaseCode),
        1 => (any_enum(), nasty_string()).prop_map(|(k, c)| Mutation::To(k, c)),
    ]
}

fn apply(req: &mut SubmitReferralRequest, m: Mutation) {
    let Some(r) = req.referral.as_mut() else { return };
    // Earlier mutations may have emptied the lists: a change to an entry that is not there is
    // no change.
    match m {
        Mutation::Text(i, s) => match (i, r.parties.len()) {
            (0, _) => r.legal_basis = s,
            (1, _) => r.source_reference = s,
            (2, _) => r.cause_of_action = s,
            (3, _) => r.facts = s,
            (4, _) => r.note = s,
            (5, _) => r.client_request_id = s,
            (6, 1..) => r.parties[0].name = s,
            (7, 1..) => r.parties[0].party_id = s,
            (8, 2..) => r.parties[1].address = s,
            (_, 1..) => r.parties[0].identity.get_or_insert_with(Default::default).number = s,
            _ => {}
        },
        Mutation::Enum(i, v) => match (i, r.parties.len()) {
            (0, _) => r.mode = v,
            (1, _) => r.category = v,
            (2, 1..) => r.parties[0].role = v,
            (3, 2..) => r.parties[1].party_type = v,
            (4, 1..) => r.parties[0].identity.get_or_insert_with(Default::default).document_type = v,
            (5, _) => r.clock_policy.get_or_insert_with(Default::default).kind = v,
            _ => r.consents.iter_mut().take(1).for_each(|c| c.method = v),
        },
        Mutation::Time(0, t) => r.registered_at = t,
        Mutation::Time(_, t) => r.consents.iter_mut().take(1).for_each(|c| c.consented_at = t),
        Mutation::Amount(m) => r.amount = m,
        Mutation::Party(i, p) => match r.parties.get_mut(i) {
            Some(slot) => *slot = p,
            None => r.parties.push(p),
        },
        Mutation::ManyParties(n) => {
            r.parties = (0..n).map(|i| Party { party_id: format!("p{i}"), name: "某".into(), ..Default::default() }).collect();
        }
        Mutation::DuplicatePartyId => {
            if let [a, b, ..] = r.parties.as_mut_slice() {
                b.party_id.clone_from(&a.party_id);
            }
        }
        Mutation::Consents(0, _) => r.consents.clear(),
        Mutation::Consents(1, s) => r.consents.push(PartyConsent { party_id: s, consented: true, ..Default::default() }),
        Mutation::Consents(2, _) => {
            if let Some(c) = r.consents.first().cloned() {
                r.consents.push(c);
            }
        }
        Mutation::Consents(_, s) => r.consents.iter_mut().take(1).for_each(|c| c.party_id = s.clone()),
        Mutation::Claims(n, s) => r.claims = vec![s; n],
        Mutation::Attachment(sha256_hex, size_bytes) => r.attachments.push(AttachmentDigest { sha256_hex, size_bytes, ..Default::default() }),
        Mutation::CaseCode(s) => req.case_code = s,
        Mutation::To(kind, code) => req.to = Some(AgencyRef { kind, code }),
    }
}

/// A valid request, unique per `n`, changed by `mutations`.
fn request(n: u64, mutations: Vec<Mutation>) -> SubmitReferralRequest {
    let mut req = SubmitReferralRequest {
        to: Some(agency_ref(&stack::centre())),
        case_code: format!("JF-431003-2026-S{n:06}"),
        referral: Some(referral(&format!("strict-{n}"), ClockPolicyKind::CourtOrdinary)),
    };
    for m in mutations {
        apply(&mut req, m);
    }
    req
}

fn fuzzed_request() -> impl Strategy<Value = (u64, Vec<Mutation>)> {
    (any::<u64>(), prop::collection::vec(mutation(), 0..4))
}

// ------------------------------------------------------------------------------------------
// The rules, the decoder and the desk (no servers)
// ------------------------------------------------------------------------------------------

fn header(case_code: &str) -> Header {
    Header {
        case_id: uuid::Uuid::now_v7(),
        case_code: case_code.to_owned(),
        channel: Channel::Court,
        sender: stack::court(),
        recipient: stack::centre(),
        causation_id: None,
    }
}

/// What the gRPC edge accepts, every receiver on the bus accepts: the rules of the two edges
/// are the same rules.
#[test]
fn random_referrals_through_the_rules_agree_with_the_bus() {
    let mut runner = TestRunner::new(Config { cases: 2_000, failure_persistence: None, ..Config::default() });
    let result = runner.run(&fuzzed_request(), |(n, mutations)| {
        let req = request(n, mutations);
        let Some(r) = req.referral.clone() else { return Ok(()) };
        let accepted = validate_referral(&r).is_ok() && limits::check_case_code("case_code", &req.case_code).is_ok();
        if accepted {
            let env = envelope::build(&header(&req.case_code), Payload::Referral(r.clone()));
            prop_assert_eq!(env.check(), Ok(()), "accepted at the API, refused on the bus");
            prop_assert!(req.encoded_len() <= MAX_REQUEST_BYTES, "a request the rules accept fits the size limit");
            prop_assert_eq!(decode_envelope(&env.encode_to_vec()).ok(), Some(env));
        } else if let Err(v) = limits::check_referral(&r) {
            // Refused by the contract's bounds: the bus refuses it too.
            let env = envelope::build(&header("JF-1"), Payload::Referral(r));
            let expected = format!("referral.{}", v.field);
            let refused = matches!(env.check(), Err(duijie_proto::ContractError::Content(c)) if c.field == expected);
            prop_assert!(refused, "the bus does not refuse {}", expected);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Random bytes, and valid envelopes with bits flipped, cut short or spliced: the decoder
/// refuses or accepts, never panics, and what it accepts keeps the contract.
#[test]
fn random_envelope_bytes_through_the_decoder() {
    let valid = envelope::build(&header("JF-431003-2026-000001"), Payload::Referral(referral("bytes-1", ClockPolicyKind::CourtOrdinary))).encode_to_vec();
    let receipt = envelope::build(&header("JF-431003-2026-000001"), Payload::Receipt(Receipt { signed_by: "王明".into(), ..Default::default() })).encode_to_vec();
    let bytes = prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..2_048),
        3 => (prop::sample::select(vec![valid, receipt]), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), any::<prop::sample::Index>(), any::<bool>())
            .prop_map(|(mut b, flips, cut, truncate)| {
                for (at, x) in flips {
                    let i = at.index(b.len());
                    b[i] ^= x;
                }
                if truncate {
                    b.truncate(cut.index(b.len() + 1));
                }
                b
            }),
    ];
    let mut runner = TestRunner::new(Config { cases: 5_000, failure_persistence: None, ..Config::default() });
    let result = runner.run(&bytes, |b| {
        if let Ok(env) = decode_envelope(&b) {
            prop_assert_eq!(env.check(), Ok(()));
            prop_assert_eq!(decode_envelope(&env.encode_to_vec()).ok(), Some(env));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let huge = vec![0u8; limits::MAX_ENVELOPE_BYTES + 1];
    assert!(decode_envelope(&huge).is_err_and(|e| e.contains("larger than")), "refused before decoding");
}

/// A payload of any kind with random enum values and agencies.
fn any_payload() -> impl Strategy<Value = Payload> {
    let agency = prop_oneof![
        Just(None),
        prop::sample::select(vec![stack::centre(), stack::town(), stack::court(), stack::petition(), stack::police()]).prop_map(|n| Some(AgencyRef::from(&n))),
        (any_enum(), "[0-9\\-]{0,8}").prop_map(|(kind, code)| Some(AgencyRef { kind, code })),
    ];
    (0u8..26, any_enum(), agency).prop_map(|(k, e, a)| match k {
        0 => Payload::Referral(Referral::default()),
        1 => Payload::Amendment(Amendment::default()),
        2 => Payload::Cancellation(Cancellation { reason: e, ..Default::default() }),
        3 => Payload::SupervisionNotice(SupervisionNotice::default()),
        4 => Payload::Receipt(Receipt { signed_by: "王明".into(), ..Default::default() }),
        5 => Payload::Accept(Accept::default()),
        6 => Payload::Reject(Reject { reason: e, ..Default::default() }),
        7 => Payload::Redirect(Redirect { to: a, ..Default::default() }),
        8 => Payload::Assignment(Assignment { committee: a, ..Default::default() }),
        9 => Payload::Escalation(Escalation { to_agency: a, ..Default::default() }),
        10 => Payload::Progress(Progress::default()),
        11 => Payload::InfoRequest(InfoRequest::default()),
        12 => Payload::ExtensionRequest(ExtensionRequest { limit: e, ..Default::default() }),
        13 => Payload::Outcome(Outcome {
            kind: match e.rem_euclid(4) {
                0 => None,
                1 => Some(outcome::Kind::Settled(Default::default())),
                2 => Some(outcome::Kind::Failed(Default::default())),
                _ => Some(outcome::Kind::Withdrawn(Default::default())),
            },
        }),
        14 => Payload::ConfirmationRequest(ConfirmationRequest { court: a, ..Default::default() }),
        15 => Payload::ConfirmationDecision(ConfirmationDecision { decision: e, ..Default::default() }),
        16 => Payload::AgreementRecognition(AgreementRecognition::default()),
        17 => Payload::ReconciliationReview(ReconciliationReview { conclusion: e, ..Default::default() }),
        18 => Payload::Performance(Performance { status: e, ..Default::default() }),
        19 => Payload::FollowUp(FollowUp::default()),
        20 => Payload::Closure(Closure { basis: e, ..Default::default() }),
        21 => Payload::DispositionNotice(DispositionNotice { disposition: e, ..Default::default() }),
        22 => Payload::DeliveryEvidence(DeliveryEvidence { evidence_type: e, message_kind: e, delivered_to: a, ..Default::default() }),
        23 => Payload::DeadlineWarning(DeadlineWarning::default()),
        24 => Payload::DeadlineBreached(DeadlineBreached::default()),
        _ => Payload::CancellationConfirmation(CancellationConfirmation { confirmed: e % 2 == 0, ..Default::default() }),
    })
}

/// Random messages from random agencies through both ends' desks and the audit store's: no
/// panic; a final state stays final; a closed case takes nothing but the petition office's one
/// 办结; the case's parties never change but by a hand-over to a mediation body.
#[test]
fn random_message_sequences_through_the_desk() {
    let agencies = vec![stack::court(), stack::petition(), stack::centre(), stack::town(), stack::police(), duijie_tests::node(AgencyKind::Bus, "431003")];
    let step = (any::<prop::sample::Index>(), any::<bool>(), any_payload());
    let run = (any::<bool>(), prop::collection::vec(step, 1..60));
    let mut runner = TestRunner::new(Config { cases: 3_000, failure_persistence: None, ..Config::default() });
    let result = runner.run(&run, |(petition, steps)| {
        let (channel, referrer) = if petition { (Channel::Petition, stack::petition()) } else { (Channel::Court, stack::court()) };
        let mut case = Case::referred(channel, referrer.clone(), stack::centre());
        let mut petition_closings = 0;
        for (who, outgoing, payload) in steps {
            let sender = who.get(&agencies);
            let before = case.lifecycle.clone();
            let decided = if outgoing {
                case.decide(Message::Outgoing { sender, payload: &payload })
            } else {
                let owner = if *sender == case.holder { case.referrer.clone() } else { case.holder.clone() };
                case.decide(Message::Incoming { owner: &owner, sender, payload: &payload })
            };
            let observed = case.decide(Message::Observed { sender, recipient: &case.holder, payload: &payload });
            let _ = observed; // deciding is enough: it must not panic
            let Ok(effects) = decided else { continue };
            let (lifecycle, new_holder): (Lifecycle, Option<AgencyNode>) = match effects {
                Effects::Send { lifecycle, new_holder, .. } | Effects::Apply { lifecycle, new_holder, .. } => (lifecycle, new_holder),
                Effects::Record | Effects::PassOn { .. } => continue,
            };
            let bus = matches!(payload, Payload::DeliveryEvidence(_) | Payload::DeadlineWarning(_) | Payload::DeadlineBreached(_));
            if before.state == CaseState::Cancelled {
                prop_assert!(bus && lifecycle.state == CaseState::Cancelled, "a cancelled case moved: {payload:?}");
            }
            if before.state == CaseState::Closed && !bus {
                prop_assert_eq!(channel, Channel::Petition, "a closed {:?} case took {:?}", channel, payload);
                let closing = matches!(&payload, Payload::DispositionNotice(d) if d.disposition() == DispositionKind::PetitionClosed);
                prop_assert!(closing, "a closed case took {:?}", payload);
                petition_closings += 1;
            }
            if before.state.is_final() {
                prop_assert_eq!(lifecycle.state, before.state);
            }
            if let Some(h) = &new_holder {
                prop_assert_eq!(h.kind(), AgencyKind::Mediation);
                case.holder = h.clone();
            }
            case.lifecycle = lifecycle;
            prop_assert_eq!(CaseState::parse(case.lifecycle.state.as_str()), Some(case.lifecycle.state));
        }
        let _ = petition_closings; // once-only is the services' (their timelines), tested live
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ------------------------------------------------------------------------------------------
// The live API
// ------------------------------------------------------------------------------------------

fn violations(s: &tonic::Status) -> Vec<String> {
    s.get_error_details().bad_request().map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect()).unwrap_or_default()
}

/// What any refusal of a request may be: never INTERNAL or UNKNOWN; INVALID_ARGUMENT names one
/// field; OUT_OF_RANGE only for a request over the size limit.
fn check_answer<T: std::fmt::Debug>(what: &str, size: usize, answer: &Result<T, tonic::Status>) -> Result<(), TestCaseError> {
    let Err(s) = answer else { return Ok(()) };
    match s.code() {
        Code::InvalidArgument => {
            let fields = violations(s);
            prop_assert!(fields.len() == 1 && !fields[0].is_empty(), "{what}: INVALID_ARGUMENT without one named field: {s:?}");
        }
        Code::OutOfRange => prop_assert!(size > MAX_REQUEST_BYTES, "{what}: OUT_OF_RANGE for {size} bytes: {s:?}"),
        Code::FailedPrecondition | Code::PermissionDenied | Code::NotFound => {}
        _ => prop_assert!(false, "{what}: {:?} {}", s.code(), s.message()),
    }
    Ok(())
}

fn vm_rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/self/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_through_the_live_api() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let court = stack.clerk(&stack::court()).await?;
    let centre = stack.clerk(&stack::centre()).await?;
    let case = court.referrals().submit_referral(request(0, Vec::new())).await.and_then(answered_case)?;
    let handle = tokio::runtime::Handle::current();

    // Random referrals: each refused with one named field, or taken.
    let referrals = {
        let court = court.clone();
        let handle = handle.clone();
        tokio::task::spawn_blocking(move || {
            let mut runner = TestRunner::new(Config { cases: 250, failure_persistence: None, ..Config::default() });
            let taken = std::sync::atomic::AtomicU32::new(0);
            let result = runner.run(&fuzzed_request(), |(n, mutations)| {
                let req = request(n, mutations);
                let size = req.encoded_len();
                let expected_ok = req.referral.as_ref().is_some_and(|r| validate_referral(r).is_ok()) && limits::check_case_code("case_code", &req.case_code).is_ok();
                let answer = handle.block_on(court.referrals().submit_referral(req.clone()));
                check_answer("SubmitReferral", size, &answer)?;
                if answer.is_ok() {
                    taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    prop_assert!(expected_ok, "taken, though the rules refuse it: {req:?}");
                }
                Ok(())
            });
            result.map(|()| taken.into_inner()).map_err(|e| anyhow::anyhow!("{e}"))
        })
        .await??
    };
    assert!(referrals > 0, "some random referrals are valid and taken");

    // Random content in case actions on a live case: refused by field or state, never INTERNAL.
    let actions = {
        let centre = centre.clone();
        let court = court.clone();
        let id = case.case_id.clone();
        tokio::task::spawn_blocking(move || {
            let mut runner = TestRunner::new(Config { cases: 150, failure_persistence: None, ..Config::default() });
            let strategy = (0u8..6, nasty_string(), nasty_string(), any_enum(), any_time(), any_money());
            runner
                .run(&strategy, |(which, a, b, e, t, m)| {
                    let (what, size, answer) = match which {
                        0 => {
                            let r = SignForRequest { case_id: id.clone(), receipt: Some(Receipt { signed_by: a, signer_position: b, signed_at: t }) };
                            ("SignFor", r.encoded_len(), handle.block_on(centre.mediation().sign_for(r)).map(|_| ()))
                        }
                        1 => {
                            let r = SuperviseRequest { case_id: id.clone(), notice: Some(SupervisionNotice { level: e, instructions: a, respond_by: t, supervisor: b }) };
                            ("Supervise", r.encoded_len(), handle.block_on(court.referrals().supervise(r)).map(|_| ()))
                        }
                        2 => {
                            let r = RequestInformationRequest { case_id: id.clone(), request: Some(InfoRequest { questions: vec![a, b], respond_by: t }) };
                            ("RequestInformation", r.encoded_len(), handle.block_on(centre.mediation().request_information(r)).map(|_| ()))
                        }
                        3 => {
                            let r = ReportOutcomeRequest {
                                case_id: id.clone(),
                                outcome: Some(Outcome { kind: Some(outcome::Kind::Settled(outcome::Settled { terms: vec![a], amount: m, signed_at: t, agreement: Some(AttachmentDigest { sha256_hex: b, ..Default::default() }), ..Default::default() })) }),
                            };
                            ("ReportOutcome", r.encoded_len(), handle.block_on(centre.mediation().report_outcome(r)).map(|_| ()))
                        }
                        4 => {
                            let r = CancelRequest { case_id: a, cancellation: Some(Cancellation { reason: e, explanation: b }) };
                            ("Cancel", r.encoded_len(), handle.block_on(court.referrals().cancel(r)).map(|_| ()))
                        }
                        _ => {
                            let r = ListCasesRequest { state: a, channel: e, page_size: 10, page_token: b };
                            ("ListCases", r.encoded_len(), handle.block_on(centre.cases().list_cases(r)).map(|_| ()))
                        }
                    };
                    check_answer(what, size, &answer)
                })
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
    };
    actions.await??;

    // Still serving, and the case still where the actions left it, readable.
    court.case(&case.case_id).await?;
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_fuzzer_found_is_refused_naming_the_field() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let court = stack.clerk(&stack::court()).await?;
    type Change = fn(&mut SubmitReferralRequest);
    let with = |n: u64, change: Change| {
        let mut r = request(n, Vec::new());
        change(&mut r);
        r
    };
    let cases: Vec<(Change, &str)> = vec![
        (|r| r.referral.iter_mut().for_each(|x| x.registered_at = Some(prost_types::Timestamp { seconds: 4_607_000_000_000_000_000, nanos: 0 })), "referral.registered_at"),
        (|r| r.referral.iter_mut().for_each(|x| x.registered_at = Some(prost_types::Timestamp { seconds: 1_780_000_000, nanos: -5 })), "referral.registered_at"),
        (|r| r.referral.iter_mut().for_each(|x| x.category = 9999), "referral.category"),
        (|r| r.referral.iter_mut().for_each(|x| x.parties[0].role = 777), "referral.parties[0].role"),
        (|r| r.referral.iter_mut().for_each(|x| x.amount = Some(Money { currency: String::new(), minor_units: 100 })), "referral.amount.currency"),
        (|r| r.referral.iter_mut().for_each(|x| x.amount = Some(Money { currency: "XXX".into(), minor_units: 100 })), "referral.amount.currency"),
        (|r| r.referral.iter_mut().for_each(|x| x.consents[0].party_id = "nobody".into()), "referral.consents[0].party_id"),
        (|r| r.referral.iter_mut().for_each(|x| x.consents.clear()), "referral.consents"),
        (|r| r.referral.iter_mut().for_each(|x| x.parties[1].party_id = "p1".into()), "referral.parties[1].party_id"),
        (|r| r.referral.iter_mut().for_each(|x| x.parties[0].name = "张\u{0}三".into()), "referral.parties[0].name"),
        (|r| r.referral.iter_mut().for_each(|x| x.facts = "事".repeat(limits::MAX_TEXT + 1)), "referral.facts"),
        (|r| r.referral.iter_mut().for_each(|x| x.parties = (0..10_001).map(|i| Party { party_id: format!("p{i}"), name: "某".into(), ..Default::default() }).collect()), "referral.parties"),
        (|r| r.referral.iter_mut().for_each(|x| x.amount = Some(Money::cny(i64::MAX))), "referral.amount.minor_units"),
        (|r| r.case_code = "J".repeat(4096), "case_code"),
        (|r| r.case_code = "JF-431003\u{202E}-2026-1".into(), "case_code"),
        (|r| r.case_code = "JF-\u{0}".into(), "case_code"),
    ];
    for (n, (change, field)) in cases.into_iter().enumerate() {
        let req = with(1_000 + n as u64, change);
        let size = req.encoded_len();
        let answer = court.referrals().submit_referral(req).await;
        if size > MAX_REQUEST_BYTES {
            // 10,001 parties: over the size limit, refused by the transport before it is read.
            assert!(matches!(&answer, Err(s) if s.code() == Code::OutOfRange), "{field}: {answer:?}");
            continue;
        }
        assert!(matches!(&answer, Err(s) if s.code() == Code::InvalidArgument && violations(s) == [field]), "{field}: {answer:?}");
    }
    // A 1 MB case code: refused whole, not an index error.
    let answer = court.referrals().submit_referral(with(2_000, |r| r.case_code = "J".repeat(1 << 20))).await;
    assert!(matches!(&answer, Err(s) if s.code() == Code::OutOfRange), "{answer:?}");
    // Nothing of it reached the court's cases.
    let listed = court.cases().list_cases(ListCasesRequest { page_size: 500, ..Default::default() }).await?.into_inner();
    assert!(listed.cases.is_empty(), "{:?}", listed.cases);
    // The audit store's reads by case code: a NUL is refused, not a database error.
    for code in ["JF-\u{0}", "JF\u{202E}1"] {
        let t = stack.auditor(&stack::court()).await?.get_timeline(GetTimelineRequest { case_code: code.into(), ..Default::default() }).await;
        assert!(matches!(&t, Err(s) if s.code() == Code::InvalidArgument && violations(s) == ["case_code"]), "{t:?}");
        let ask = LookupCaseRequest { case_code: code.into(), factor: "31002X".into(), client_address: "10.9.9.9".into() };
        let l = stack.auditor_named("duijie-console").await?.lookup_case(ask).await;
        assert!(matches!(&l, Err(s) if s.code() == Code::InvalidArgument && violations(s) == ["case_code"]), "{l:?}");
    }
    let ask = LookupCaseRequest { case_code: "JF-1".into(), factor: "31002X".into(), client_address: "10.\u{0}".into() };
    let l = stack.auditor_named("duijie-console").await?.lookup_case(ask).await;
    assert!(matches!(&l, Err(s) if s.code() == Code::InvalidArgument), "{l:?}");
    stack.stop().await
}

/// A few hundred requests near and over the size limit, all refused: the process's memory
/// (every service of the stack runs in it) stays within a generous bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_under_big_refused_requests() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let court = stack.clerk(&stack::court()).await?;
    // Warm up the connection and the service's code paths first.
    for n in 0..20 {
        let r = court.referrals().submit_referral(request(3_000 + n, vec![Mutation::Text(3, "事".repeat(limits::MAX_TEXT + 1))])).await;
        assert!(matches!(&r, Err(s) if s.code() == Code::InvalidArgument), "{r:?}");
    }
    let before = vm_rss_kib()?;
    let big_facts = "事".repeat(150_000); // 450 KB: under the size limit, over the facts limit
    let huge_code = "J".repeat(1 << 20); // 1 MB: over the size limit
    let mut calls = futures::stream::FuturesUnordered::new();
    for n in 0..300u64 {
        let mut c = court.referrals();
        let req = if n % 2 == 0 {
            request(4_000 + n, vec![Mutation::Text(3, big_facts.clone())])
        } else {
            request(4_000 + n, vec![Mutation::CaseCode(huge_code.clone())])
        };
        calls.push(async move { (n, c.submit_referral(req).await) });
        if calls.len() >= 8
            && let Some((n, r)) = calls.next().await
        {
            let expected = if n % 2 == 0 { Code::InvalidArgument } else { Code::OutOfRange };
            assert!(matches!(&r, Err(s) if s.code() == expected), "{n}: {r:?}");
        }
    }
    while let Some((n, r)) = calls.next().await {
        let expected = if n % 2 == 0 { Code::InvalidArgument } else { Code::OutOfRange };
        assert!(matches!(&r, Err(s) if s.code() == expected), "{n}: {r:?}");
    }
    let after = vm_rss_kib()?;
    let grown_mib = after.saturating_sub(before) / 1024;
    eprintln!("VmRSS {} MiB before, {} MiB after 300 big refused requests (+{grown_mib} MiB)", before / 1024, after / 1024);
    assert!(grown_mib < 128, "memory grew by {grown_mib} MiB");
    // Still serving.
    let taken = court.referrals().submit_referral(request(5_000, Vec::new())).await;
    assert!(taken.is_ok(), "{taken:?}");
    stack.stop().await
}
