//! Adding a region to a running stack: its agencies go into the directory file (read again by
//! the running services, no restart), its queues are declared, a service acts for them, and a
//! referral reaches them.

use duijie_proto::answered_case;
use duijie_proto::v1::*;
use duijie_tests::stack::{self, Stack, agency_ref, referral};
use tonic::Code;
use tonic_types::StatusExt as _;

fn submit_to(to: &duijie_domain::AgencyNode, code: &str) -> SubmitReferralRequest {
    SubmitReferralRequest { to: Some(agency_ref(to)), case_code: code.into(), referral: Some(referral(code, ClockPolicyKind::CourtOrdinary)) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_added_to_a_running_stack_receives_a_referral() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let court = stack.clerk(&stack::court()).await?;
    let new_centre: duijie_domain::AgencyNode = "mediation:431081".parse()?;
    let console = duijie_tests::browser::start_console(&stack).await?;
    let as_court = duijie_tests::browser::sign_in(console.addr, &stack::court()).await?;
    let referral_form = || async {
        let (status, page) = duijie_tests::browser::http(console.addr, "GET", "/cases/new", &[("Cookie", as_court.as_str())], "").await?;
        anyhow::ensure!(status == 200, "{page}");
        Ok::<_, anyhow::Error>(page)
    };
    assert!(!referral_form().await?.contains("资兴市矛盾纠纷调解中心"));

    // Not in the directory yet: refused, naming the field.
    let unknown = court.referrals().submit_referral(submit_to(&new_centre, "JF-431003-2026-R0001")).await;
    let Err(status) = &unknown else { anyhow::bail!("a referral to an agency not in the directory was taken: {unknown:?}") };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields: Vec<String> = status.get_error_details().bad_request().map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect()).unwrap_or_default();
    assert_eq!(fields, ["to"], "{status:?}");

    // The region's service (its queues declared first), then its entry in the directory file.
    let addr = stack.onboard(AgencyKind::Mediation, vec![new_centre.clone()]).await?;
    let path = stack.directory_file();
    let mut text = std::fs::read_to_string(&path)?;
    text.push_str("  - { id: \"mediation:431081\", name: \"资兴市矛盾纠纷调解中心\" }\n");
    std::fs::write(&path, text)?;

    // The running court service reads it again by itself: the referral is taken.
    duijie_tests::wait_until("the court service to know the new centre", stack::WAIT, || {
        let court = court.clone();
        let new_centre = new_centre.clone();
        async move {
            match court.referrals().submit_referral(submit_to(&new_centre, "JF-431003-2026-R0001")).await {
                Ok(_) => Ok(true),
                Err(s) if s.code() == Code::InvalidArgument && s.message().contains("unknown agency") => Ok(false),
                Err(s) => Err(s.into()),
            }
        }
    })
    .await?;
    // The running console offers the new centre on the referral form, without a restart.
    duijie_tests::wait_until("the console to offer the new centre", stack::WAIT, || async {
        Ok(referral_form().await?.contains("资兴市矛盾纠纷调解中心"))
    })
    .await?;
    // The same request again answers with the case it made.
    let case_id = court.referrals().submit_referral(submit_to(&new_centre, "JF-431003-2026-R0001")).await.and_then(answered_case)?.case_id;
    let centre = stack.clerk_at(&new_centre, addr).await?;
    let arrived = centre.wait_for(&case_id, "DELIVERED").await?;
    assert_eq!(arrived.referrer, Some(agency_ref(&stack::court())));
    centre
        .mediation()
        .sign_for(SignForRequest { case_id: case_id.clone(), receipt: Some(Receipt { signed_by: "周明".into(), ..Default::default() }) })
        .await?;
    court.wait_for(&case_id, "RECEIVED").await?;

    // A broken edit of the file leaves the last good directory in force.
    std::fs::write(&path, "agencies: [ { id: ")?;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let again = court.referrals().submit_referral(submit_to(&new_centre, "JF-431003-2026-R0002")).await.and_then(answered_case)?;
    assert!(["SUBMITTED", "DELIVERED"].contains(&again.state.as_str()), "{again:?}");
    assert!(referral_form().await?.contains("资兴市矛盾纠纷调解中心"), "the console keeps the last good directory too");
    console.handle.abort();
    stack.stop().await
}
