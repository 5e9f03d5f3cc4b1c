//! The live feed of an agency's case changes (`CasesService.Watch`): a client that resumes from
//! its last cursor, across a restart of the service, misses nothing and sees nothing twice.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context as _;
use duijie_proto::v1::*;
use duijie_tests::stack::{self, Clerk, Stack, referral};
use tonic::Code;
use tonic::codec::Streaming;

async fn submit(court: &Clerk, code: &str, request: &str) -> anyhow::Result<String> {
    court.submit(&stack::centre(), code, referral(request, ClockPolicyKind::CourtOrdinary)).await
}

/// Reads changes until every message id in `want` was seen (or a minute passed).
async fn read_until(feed: &mut Streaming<WatchResponse>, seen: &mut Vec<WatchResponse>, want: &HashSet<String>) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + stack::WAIT;
    while !want.iter().all(|m| seen.iter().any(|c| &c.message_id == m)) {
        let next = tokio::time::timeout_at(deadline, feed.message())
            .await
            .with_context(|| format!("the feed did not bring {:?} in time; it brought {:?}", want, seen.iter().map(|c| (&c.kind, &c.message_id)).collect::<Vec<_>>()))??
            .context("the feed ended")?;
        assert!(!next.case_id.is_empty(), "a start marker in the middle of the stream: {next:?}");
        seen.push(next);
    }
    Ok(())
}

/// The message ids of the centre's timelines of `cases`.
async fn timeline_ids(centre: &Clerk, cases: &[&str]) -> anyhow::Result<HashSet<String>> {
    let mut ids = HashSet::new();
    for id in cases {
        for item in centre.case(id).await?.timeline {
            ids.insert(item.message_id);
        }
    }
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumed_from_its_cursor_after_a_restart_misses_nothing_and_repeats_nothing() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let court = stack.clerk(&stack::court()).await?;
    let centre = stack.clerk(&stack::centre()).await?;

    // Bad input, and an agency this service does not act for.
    for bad in ["not-a-cursor", "12-x", "-1"] {
        let refused = centre.cases().watch(WatchRequest { cursor: bad.into() }).await;
        assert!(matches!(&refused, Err(s) if s.code() == Code::InvalidArgument), "{bad:?}: {refused:?}");
    }
    let stranger = stack.clerk_on(&stack::court(), AgencyKind::Mediation).await?;
    let refused = stranger.cases().watch(WatchRequest::default()).await;
    assert!(matches!(&refused, Err(s) if s.code() == Code::PermissionDenied), "{refused:?}");

    // From now: the first response is where the stream starts.
    let mut feed = centre.cases().watch(WatchRequest::default()).await?.into_inner();
    let start = feed.message().await?.context("no start")?;
    assert!(start.case_id.is_empty() && !start.cursor.is_empty(), "{start:?}");

    let a = submit(&court, "JF-431003-2026-000901", "feed-a").await?;
    let b = submit(&court, "JF-431003-2026-000902", "feed-b").await?;
    centre.wait_for(&a, "DELIVERED").await?;
    centre.wait_for(&b, "DELIVERED").await?;
    centre
        .mediation()
        .sign_for(SignForRequest { case_id: a.clone(), receipt: Some(Receipt { signed_by: "王明".into(), ..Default::default() }) })
        .await?;
    court.wait_for(&a, "RECEIVED").await?;
    let mut seen = Vec::new();
    read_until(&mut feed, &mut seen, &timeline_ids(&centre, &[&a, &b]).await?).await?;
    let first = seen.first().context("nothing seen")?;
    assert_eq!((first.case_id.as_str(), first.kind(), first.direction.as_str(), first.state_after.as_str()), (a.as_str(), MessageKind::Referral, "in", "DELIVERED"));
    let cursor = seen.last().map(|c| c.cursor.clone()).context("no cursor")?;
    drop(feed);

    // While nobody watches: the court cancels b, the centre's service restarts, the centre
    // accepts a and the cancellation arrives.
    court.referrals().cancel(CancelRequest { case_id: b.clone(), cancellation: Some(Cancellation { reason: CancellationReason::SettledOutside as i32, explanation: "当事人已自行和解".into() }) }).await?;
    stack.restart_service(AgencyKind::Mediation).await?;
    let centre = stack.clerk(&stack::centre()).await?;
    centre.mediation().accept(AcceptRequest { case_id: a.clone(), accept: Some(Accept { accepted_by: "王明".into(), ..Default::default() }) }).await?;
    centre.wait_for(&b, "CANCEL_REQUESTED").await?;
    court.wait_for(&a, "ACCEPTED").await?;
    // The court's delivery evidence for the accept is the last message of a at the centre.
    duijie_tests::wait_until("the evidence of the accept back at the centre", stack::WAIT, || {
        let (centre, a) = (centre.clone(), a.clone());
        async move {
            let v = centre.case(&a).await?;
            Ok(v.timeline.last().is_some_and(|t| t.kind() == MessageKind::DeliveryEvidence) && v.timeline.iter().any(|t| t.kind() == MessageKind::Accept))
        }
    })
    .await?;

    // Resumed from the cursor: the first response says so, then exactly what was not seen.
    let mut feed = centre.cases().watch(WatchRequest { cursor: cursor.clone() }).await?.into_inner();
    let resumed = feed.message().await?.context("no start")?;
    assert_eq!((resumed.case_id.as_str(), resumed.cursor.as_str()), ("", cursor.as_str()));
    let all = timeline_ids(&centre, &[&a, &b]).await?;
    read_until(&mut feed, &mut seen, &all).await?;
    // Nothing more comes (a change beyond the timelines would be a duplicate or a stranger).
    let extra = tokio::time::timeout(Duration::from_millis(500), feed.message()).await;
    assert!(extra.is_err(), "an extra change: {extra:?}");
    let ids: Vec<&String> = seen.iter().map(|c| &c.message_id).collect();
    assert_eq!(ids.len(), ids.iter().collect::<HashSet<_>>().len(), "a change seen twice: {ids:?}");
    assert_eq!(ids.iter().map(|s| (*s).clone()).collect::<HashSet<_>>(), all);
    // Every change of a case in its timeline's order, and with the state it led to.
    for id in [&a, &b] {
        let timeline = centre.case(id).await?.timeline;
        let fed: Vec<(String, String)> = seen.iter().filter(|c| &c.case_id == id).map(|c| (c.message_id.clone(), c.state_after.clone())).collect();
        let want: Vec<(String, String)> = timeline.iter().map(|t| (t.message_id.clone(), t.state_after.clone())).collect();
        assert_eq!(fed, want, "case {id}");
    }
    // From the start ("0"): the same changes again, in the same order.
    let mut again = centre.cases().watch(WatchRequest { cursor: "0".into() }).await?.into_inner();
    assert!(again.message().await?.is_some_and(|s| s.case_id.is_empty()));
    let mut replay = Vec::new();
    read_until(&mut again, &mut replay, &all).await?;
    assert_eq!(replay.iter().map(|c| &c.cursor).collect::<Vec<_>>(), seen.iter().map(|c| &c.cursor).collect::<Vec<_>>());
    stack.stop().await
}
