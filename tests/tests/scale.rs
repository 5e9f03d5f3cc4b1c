//! Scale-out (issue #15) on one stack: a message that arrives before its case allows it is held
//! and applied once what it waited for has arrived; what is addressed to an agency outside the
//! directory never enters an outbox; replicas of a service share its partitions.

use std::sync::atomic::Ordering;

use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::*;
use duijie_proto::answered_case;
use duijie_tests::stack::{self, Stack, WAIT, agency_ref, referral};
use duijie_tests::wait_until;
use tonic::Code;

/// The held, released and expired counts of the `kind` service's partition consumers.
fn holds(stack: &Stack, kind: AgencyKind) -> anyhow::Result<(u64, u64, u64)> {
    let s = stack.service(kind)?;
    let sum = |f: &dyn Fn(&duijie_common::inbox::ConsumerStats) -> u64| s.consumers.iter().map(|c| f(c)).sum::<u64>();
    Ok((sum(&|c| c.held.load(Ordering::Relaxed)), sum(&|c| c.released.load(Ordering::Relaxed)), sum(&|c| c.expired.load(Ordering::Relaxed))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_overtook_its_referral_is_held_and_applied_after_it() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let court = stack::court();
    let signer = duijie_tests::signer_for(stack.ca(), std::slice::from_ref(&court))?;
    let case_id = uuid::Uuid::now_v7();
    let h = stack::to_centre(case_id, "JF-431003-2026-S0001", &court);
    // The court's 督办 notice reaches the centre before the referral it follows (as a message
    // overtaken by a retry would): the centre does not know the case yet.
    let notice = duijie_common::envelope::build(&h, Payload::SupervisionNotice(SupervisionNotice { instructions: "请尽快签收".into(), ..Default::default() }));
    stack.bus.publish_signed(&notice, &signer).await?;
    wait_until("the notice to be held", WAIT, || async { Ok(holds(&stack, AgencyKind::Mediation)?.0 >= 1) }).await?;
    let mut referral_env = duijie_common::envelope::build(&h, Payload::Referral(referral("s-1", ClockPolicyKind::CourtPreFiling)));
    duijie_tests::without_party_data(&mut referral_env);
    stack.bus.publish_signed(&referral_env, &signer).await?;

    let centre = stack.clerk(&stack::centre()).await?;
    wait_until("the held notice to be applied after the referral", WAIT, || async {
        let v = centre.case(&case_id.to_string()).await?;
        Ok(v.timeline.iter().any(|e| e.message_id == notice.message_id && e.kind() == MessageKind::SupervisionNotice && e.direction == "in"))
    })
    .await?;
    let v = centre.case(&case_id.to_string()).await?;
    let order: Vec<MessageKind> = v.timeline.iter().filter(|e| e.direction == "in").map(|e| e.kind()).collect();
    assert_eq!(order.first(), Some(&MessageKind::Referral), "the referral first, then what waited for it: {order:?}");
    let (held, released, expired) = holds(&stack, AgencyKind::Mediation)?;
    assert!(held >= 1 && released >= 1 && expired == 0, "held {held}, released {released}, expired {expired}");
    assert!(stack.bus.drain_dead().await?.is_empty(), "nothing dead-lettered");
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agency_outside_the_directory_is_refused_before_staging_and_its_message_is_dead_lettered_after_the_hold() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let court = stack.clerk(&stack::court()).await?;

    // A clerk's referral to an agency the directory does not list: refused, nothing staged.
    let stranger: duijie_domain::AgencyNode = "mediation:439999".parse()?;
    let refused = court
        .referrals()
        .submit_referral(SubmitReferralRequest {
            to: Some(agency_ref(&stranger)),
            case_code: "JF-431003-2026-S0002".into(),
            referral: Some(referral("s-2", ClockPolicyKind::CourtOrdinary)),
        })
        .await;
    assert_eq!(refused.as_ref().map_err(tonic::Status::code).err(), Some(Code::InvalidArgument), "{refused:?}");
    let court_db = duijie_common::db::pool(stack.database("court")?);
    let staged: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE routing_key LIKE '%439999%'").fetch_one(&court_db).await?;
    assert_eq!(staged, 0, "nothing for the stranger entered the court's outbox");

    // A court the directory does not list sends a well-signed referral straight onto the bus:
    // the centre cannot give it delivery evidence (its recipient is outside the directory, so
    // it may not be staged), holds it while a directory reload might bring the court, then
    // dead-letters it with the reason. No case is opened.
    let outsider: duijie_domain::AgencyNode = "court:439999".parse()?;
    let signer = duijie_tests::signer_for(stack.ca(), std::slice::from_ref(&outsider))?;
    let case_id = uuid::Uuid::now_v7();
    let mut env = duijie_common::envelope::build(&stack::to_centre(case_id, "JF-439999-2026-S0003", &outsider), Payload::Referral(referral("s-3", ClockPolicyKind::CourtOrdinary)));
    duijie_tests::without_party_data(&mut env);
    stack.bus.publish_signed(&env, &signer).await?;
    let found = std::sync::Mutex::new(Vec::new());
    wait_until("the outsider's referral in the dead letters", WAIT, || async {
        let more = stack.bus.drain_dead().await?;
        let mut f = found.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        f.extend(more);
        Ok(!f.is_empty())
    })
    .await?;
    let dead = found.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].message_id.as_deref(), Some(env.message_id.as_str()));
    let reason = dead[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("held for") && reason.contains("court:439999 is not in the agency directory"), "{reason}");
    let (held, _, expired) = holds(&stack, AgencyKind::Mediation)?;
    assert!(held >= 1 && expired == 1, "held {held}, expired {expired}");
    let centre = stack.clerk(&stack::centre()).await?;
    assert_eq!(centre.case(&case_id.to_string()).await.map_err(|s| s.code()).err(), Some(Code::NotFound), "no case opened");
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_of_the_centre_share_its_partitions_and_one_stopping_loses_nothing() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let second = stack.start_replica(AgencyKind::Mediation).await?;
    let court = stack.clerk(&stack::court()).await?;
    let submit = |n: usize| {
        let court = court.clone();
        async move {
            let code = format!("JF-431003-2026-R{n:04}");
            let req = SubmitReferralRequest { to: Some(agency_ref(&stack::centre())), case_code: code.clone(), referral: Some(referral(&code, ClockPolicyKind::CourtOrdinary)) };
            court.referrals().submit_referral(req).await.and_then(answered_case).map(|c| c.case_id)
        }
    };
    let mut cases = Vec::new();
    for n in 0..40 {
        cases.push(submit(n).await?);
    }
    // Both replicas answer for the centre (one database), whichever consumes a partition.
    let via_second = stack.clerk_at(&stack::centre(), second).await?;
    for id in &cases {
        via_second.wait_for(id, "DELIVERED").await?;
    }
    // The first replica stops; the second takes its partitions over and more cases arrive.
    stack.stop_service(AgencyKind::Mediation).await?;
    for n in 40..80 {
        cases.push(submit(n).await?);
    }
    for id in &cases {
        via_second.wait_for(id, "DELIVERED").await?;
        let v = via_second.case(id).await?;
        let referrals = v.timeline.iter().filter(|e| e.kind() == MessageKind::Referral && e.direction == "in").count();
        assert_eq!(referrals, 1, "applied once: {v:?}");
    }
    assert!(stack.bus.drain_dead().await?.is_empty(), "nothing dead-lettered");
    stack.stop().await
}
