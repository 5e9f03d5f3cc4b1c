//! Party data protected and erasable (issue #14 item 4): identity numbers, contacts and
//! addresses are sealed with a key per case before anything is stored or sent, so no database
//! of an agency or of the audit store holds them in clear; only the holder reads them, each
//! read recorded; erasing one case's key makes its parties' data unreadable everywhere while the
//! audit log still verifies, and leaves every other case as it was.

use duijie_proto::v1::*;
use duijie_proto::v1::envelope;
use duijie_tests::stack::{self, Clerk, Stack, agency_ref, referral};
use duijie_tests::{node, wait_until};
use sqlx::Connection as _;
use tonic::Code;
use uuid::Uuid;

/// The first party's identity number in `stack::referral`.
const ID_NUMBER: &str = "11010519491231002X";

async fn submit(court: &Clerk, code: &str) -> anyhow::Result<String> {
    let mut r = referral(code, ClockPolicyKind::CourtPreFiling);
    r.parties[0].contact = "13800000000".into();
    r.parties[0].address = "郴州市苏仙区人民路1号".into();
    court.submit(&stack::centre(), code, r).await
}

fn first_id_number(v: &CaseView) -> String {
    v.referral.as_ref().and_then(|r| r.parties.first()).and_then(|p| p.identity.as_ref()).map(|i| i.number.clone()).unwrap_or_default()
}

/// How many rows of `sql` (a `SELECT count(*) … WHERE position($1 IN <bytes>) > 0`) hold the
/// identity number in clear in the database `name`.
async fn clear_copies(stack: &Stack, name: &str, sql: &str) -> anyhow::Result<i64> {
    let mut db = sqlx::PgConnection::connect_with(&stack.database(name)?.connect_options()).await?;
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).bind(ID_NUMBER.as_bytes()).fetch_one(&mut db).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parties_are_sealed_everywhere_read_by_the_holder_only_and_erased_with_their_case_key() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (court, centre) = (stack.clerk(&stack::court()).await?, stack.clerk(&stack::centre()).await?);
    let supervisor = node(AgencyKind::Supervisor, "431003");
    let mut audit = stack.auditor(&supervisor).await?;
    let (a, b) = (submit(&court, "JF-431003-2026-PD0001").await?, submit(&court, "JF-431003-2026-PD0002").await?);
    centre.wait_for(&a, "DELIVERED").await?;
    centre.wait_for(&b, "DELIVERED").await?;
    // Both referrals and their evidence recorded, so the log names the centre as holder.
    for id in [&a, &b] {
        wait_until("the case in the audit store", stack::WAIT, || {
            let (mut au, id) = (audit.clone(), id.clone());
            async move {
                let t = au.get_timeline(GetTimelineRequest { case_id: id, ..Default::default() }).await?.into_inner();
                Ok(t.records.iter().any(|r| r.kind() == MessageKind::DeliveryEvidence))
            }
        })
        .await?;
    }

    // No database holds the identity number in clear: the court's and the centre's copies of the
    // case, their timelines and outboxes, and the audit log (the envelopes as published, so what
    // crossed the broker too).
    for service in ["court", "mediation"] {
        for sql in [
            "SELECT count(*) FROM cases WHERE position($1 IN referral) > 0",
            "SELECT count(*) FROM case_events WHERE position($1 IN envelope) > 0",
            "SELECT count(*) FROM outbox WHERE position($1 IN payload) > 0",
        ] {
            assert_eq!(clear_copies(&stack, service, sql).await?, 0, "{service}: {sql}");
        }
    }
    assert_eq!(clear_copies(&stack, "audit", "SELECT count(*) FROM audit_log WHERE position($1 IN envelope) > 0").await?, 0);

    // The holder reads them (its read recorded); the referrer and the audit timeline do not.
    let at_centre = centre.case(&a).await?;
    assert_eq!(first_id_number(&at_centre), ID_NUMBER);
    assert!(at_centre.referral.as_ref().is_some_and(|r| r.parties[0].contact == "13800000000" && r.parties[0].address.starts_with("郴州")), "the holder reaches the parties");
    let at_court = court.case(&a).await?;
    assert_eq!(first_id_number(&at_court), "");
    assert!(at_court.parties_sealed);
    let timeline = audit.get_timeline(GetTimelineRequest { case_id: a.clone(), ..Default::default() }).await?.into_inner();
    let releases: Vec<(String, String)> =
        timeline.key_releases.iter().map(|k| (k.agency.as_ref().map(|r| format!("{}:{}", r.kind().as_str(), r.code)).unwrap_or_default(), k.action.clone())).collect();
    assert!(releases.contains(&("court:431003".into(), "issued".into())), "{releases:?}");
    assert!(releases.contains(&("mediation:431003".into(), "opened".into())), "every read of the parties' data is recorded: {releases:?}");
    // The key goes to the holder only.
    let police = stack.auditor(&stack::police()).await?.open_case_key(OpenCaseKeyRequest { case_id: a.clone(), purpose: "curious".into() }).await;
    assert_eq!(police.map(|_| ()).map_err(|s| s.code()), Err(Code::PermissionDenied));
    let referrer = stack.auditor(&stack::court()).await?.open_case_key(OpenCaseKeyRequest { case_id: a.clone(), purpose: "view".into() }).await;
    assert_eq!(referrer.map(|_| ()).map_err(|s| s.code()), Err(Code::PermissionDenied), "the referrer does not reach the parties");
    // The parties' lookup finds the case by the last six characters of the identity number.
    let mut console = stack.auditor_named("duijie-console").await?;
    let lookup = |code: &str| LookupCaseRequest { case_code: code.into(), factor: ID_NUMBER[12..].into(), client_address: "192.0.2.7".into() };
    assert!(console.lookup_case(lookup("JF-431003-2026-PD0001")).await.is_ok());

    // Erasure: refused to anyone but a supervisor of the region, and without a ground.
    let by_court = stack.auditor(&stack::court()).await?.erase_case(EraseCaseRequest { case_id: a.clone(), reason: "done".into() }).await;
    assert_eq!(by_court.map(|_| ()).map_err(|s| s.code()), Err(Code::PermissionDenied));
    let no_ground = audit.erase_case(EraseCaseRequest { case_id: a.clone(), reason: " ".into() }).await;
    assert_eq!(no_ground.map(|_| ()).map_err(|s| s.code()), Err(Code::InvalidArgument));
    let erased = audit.erase_case(EraseCaseRequest { case_id: a.clone(), reason: "当事人申请删除个人信息（个人信息保护法第四十七条）".into() }).await?.into_inner();
    assert!(erased.erased_at.is_some());

    // Case A's parties are gone for everyone, the holder included; the log still verifies.
    let after = centre.case(&a).await?;
    assert_eq!(first_id_number(&after), "");
    assert!(after.parties_erased && after.parties_sealed, "{after:?}");
    assert_eq!(after.state, "DELIVERED", "the case itself goes on");
    let again = stack.auditor(&stack::court()).await?.issue_case_key(IssueCaseKeyRequest { case_id: a.clone(), holder: Some(agency_ref(&stack::centre())) }).await;
    assert_eq!(again.map(|_| ()).map_err(|s| s.code()), Err(Code::FailedPrecondition), "an erased key is not made again");
    assert_eq!(console.lookup_case(lookup("JF-431003-2026-PD0001")).await.map(|_| ()).map_err(|s| s.code()), Err(Code::NotFound));
    let verified = audit.verify(VerifyRequest::default()).await?.into_inner();
    assert!(verified.ok, "crypto-shredding leaves the chain verifying: {verified:?}");
    let mut db = sqlx::PgConnection::connect_with(&stack.database("audit")?.connect_options()).await?;
    let key: Option<Vec<u8>> = sqlx::query_scalar("SELECT wrapped FROM audit_case_keys WHERE case_id = $1").bind(Uuid::parse_str(&a)?).fetch_one(&mut db).await?;
    assert!(key.is_none(), "the key itself is gone");

    // Case B is untouched.
    assert_eq!(first_id_number(&centre.case(&b).await?), ID_NUMBER);
    assert!(console.lookup_case(lookup("JF-431003-2026-PD0002")).await.is_ok());
    // A sender that puts party data on the bus in clear, even correctly signed, is refused by
    // the recipient and recorded as refused (the log holds it, but as a refusal).
    let clear_id = Uuid::now_v7();
    let clear = duijie_common::envelope::build(
        &duijie_common::envelope::Header {
            case_id: clear_id,
            case_code: "JF-431003-2026-PD0009".into(),
            channel: Channel::Court,
            sender: stack::court(),
            recipient: stack::centre(),
            causation_id: None,
        },
        envelope::Payload::Referral(referral("PD-9", ClockPolicyKind::CourtPreFiling)),
    );
    stack.bus.publish_signed(&clear, &duijie_tests::signer_for(stack.ca(), &[stack::court()])?).await?;
    let deadline = tokio::time::Instant::now() + stack::WAIT;
    let reason = loop {
        let reason: Option<Option<String>> = sqlx::query_scalar("SELECT refused FROM audit_log WHERE message_id = $1")
            .bind(Uuid::parse_str(&clear.message_id)?)
            .fetch_optional(&mut db)
            .await?;
        if let Some(r) = reason {
            break r;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the clear referral never reached the audit store");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(reason.is_some_and(|r| r.contains("in clear")));
    // Kept without the data that came in clear.
    assert_eq!(clear_copies(&stack, "audit", "SELECT count(*) FROM audit_log WHERE position($1 IN envelope) > 0").await?, 0);
    assert!(audit.verify(VerifyRequest::default()).await?.into_inner().ok);
    let mut dead = Vec::new();
    while !dead.iter().any(|d: &duijie_tests::DeadMessage| d.reason.as_deref().is_some_and(|r| r.contains("in clear"))) {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the centre did not refuse the clear referral: {dead:?}");
        dead.extend(stack.bus.drain_dead().await?);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(centre.case(&clear_id.to_string()).await.map(|_| ()).map_err(|s| s.code()), Err(Code::NotFound));

    // A client may not hand in sealed data of its own.
    let mut forged = referral("PD-3", ClockPolicyKind::CourtPreFiling);
    forged.parties[0].sealed = vec![1, 2, 3];
    let refused = court
        .referrals()
        .submit_referral(SubmitReferralRequest { to: Some(agency_ref(&stack::centre())), case_code: "JF-431003-2026-PD0003".into(), referral: Some(forged) })
        .await;
    assert_eq!(refused.map(|_| ()).map_err(|s| s.code()), Err(Code::InvalidArgument));
    stack.stop().await
}
