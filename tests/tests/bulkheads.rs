//! Bulkheads between a service's gRPC calls and its bus work (issue #12), end to end against the
//! five services: many clients polling cases that have not arrived yet neither deadlock the
//! calls' pool nor stop the inbox, and a flood of calls against a small pool is answered "busy"
//! while the relay and the consumers keep delivering.
//!
//! Both are made deterministic with locks in the mediation service's database instead of load:
//! a lock on its `inbox` table holds its consumers back (so the referrals have not arrived while
//! the clients first poll), and a lock on one case row holds calls, and with them every
//! connection of the calls' pool, for as long as the test needs. No assertion is about time.

use std::sync::{Arc, Mutex};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use duijie_common::config::DatabaseConfig;
use duijie_common::server::{BUSY_MESSAGE, OUTAGE_MESSAGE, is_busy};
use duijie_proto::answered_case;
use duijie_proto::v1::*;
use duijie_tests::stack::{self, Clerk, Stack, agency_ref, referral};
use duijie_tests::wait_until;
use sqlx::{Connection as _, PgConnection};
use tokio::task::JoinSet;
use tonic::Code;

/// A liveness bound for a poller (never reached when things work), not a speed target.
const POLL_DEADLINE: Duration = Duration::from_secs(120);

/// The services these tests do not call get one connection for calls and one for the bus, so
/// that a stack with a larger mediation pool stays within the test stacks' connection budget
/// (README, "Database connections").
fn idle_services_small(name: &str, db: &mut DatabaseConfig) {
    if matches!(name, "police" | "procuratorate" | "petition") {
        db.max_connections = 2;
        db.bus_connections = 1;
    }
}

async fn submit(court: &Clerk, n: usize) -> anyhow::Result<String> {
    let view = court
        .referrals()
        .submit_referral(SubmitReferralRequest {
            to: Some(agency_ref(&stack::centre())),
            case_code: format!("JF-431003-2026-B{n:05}"),
            referral: Some(referral(&format!("bulkhead-{n}"), ClockPolicyKind::CourtOrdinary)),
        })
        .await
        .and_then(answered_case)?;
    Ok(view.case_id)
}

/// Polls `id` as `clerk` until the answer is `done` (OK for the centre that receives the case,
/// PERMISSION_DENIED for a committee of the same service reading the centre's case). Until then
/// only NOT_FOUND is acceptable, and the first answer must be NOT_FOUND: the inbox is held back
/// until every poller has had one. Returns how many polls it took.
async fn poll(clerk: Clerk, id: String, done: Code, first_answers: Arc<AtomicUsize>) -> anyhow::Result<usize> {
    let started = tokio::time::Instant::now();
    let mut polls = 0;
    loop {
        let code = match clerk.case(&id).await {
            Ok(_) => Code::Ok,
            Err(s) if matches!(s.code(), Code::NotFound | Code::PermissionDenied) => s.code(),
            Err(s) => anyhow::bail!("{} polling {id}: unexpected answer {:?} {:?}", clerk.who, s.code(), s.message()),
        };
        polls += 1;
        if polls == 1 {
            anyhow::ensure!(code == Code::NotFound, "{} polling {id}: {code:?} before the case could arrive", clerk.who);
            first_answers.fetch_add(1, Ordering::SeqCst);
        }
        if code == done {
            return Ok(polls);
        }
        anyhow::ensure!(code == Code::NotFound, "{} polling {id}: {code:?}, expected NOT_FOUND or {done:?}", clerk.who);
        anyhow::ensure!(started.elapsed() < POLL_DEADLINE, "{} polling {id}: the case never arrived", clerk.who);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The deadlock: about 100 clients polling `GetCase` on referrals the mediation centre
/// has not received yet, against a 10-connection pool for calls. Each call holds one connection
/// at a time (the "not found here, another agency's?" question is asked on the connection the
/// call already has), so all of them are answered — NOT_FOUND until the case arrives, then the
/// case, or PERMISSION_DENIED for the town committee reading the centre's case — and the inbox,
/// on the bus's own pool, drains while the polling goes on.
#[tokio::test]
async fn a_hundred_clients_polling_cases_not_yet_arrived_all_finish_and_the_inbox_drains() -> anyhow::Result<()> {
    const CASES: usize = 20;
    const CENTRE_POLLERS_PER_CASE: usize = 4; // plus one town committee poller per case: 100 in all
    // The mediation service's calls get 10 connections; its bus work keeps 2.
    let stack = Stack::start_with(stack::test_gate(), |name, db| {
        if name == "mediation" {
            db.max_connections = 12;
            db.bus_connections = 2;
        }
        idle_services_small(name, db);
    })
    .await?;
    let court = stack.clerk(&stack::court()).await?;
    let centre = stack.clerk(&stack::centre()).await?;
    let town = stack.clerk(&stack::town()).await?;
    let mediation = stack.service(AgencyKind::Mediation)?;
    let applied_before: u64 = mediation.consumers.iter().map(|c| c.applied.load(Ordering::SeqCst)).sum();

    // Hold the mediation inbox back: its consumers' first statement of a batch inserts into
    // `inbox`, which waits for this lock; reading cases does not.
    let mut lock = PgConnection::connect_with(&stack.database("mediation")?.connect_options()).await?;
    let mut held = lock.begin().await?;
    sqlx::query("LOCK TABLE inbox IN EXCLUSIVE MODE").execute(&mut *held).await?;

    let mut ids = Vec::with_capacity(CASES);
    for n in 0..CASES {
        ids.push(submit(&court, n).await?);
    }
    let first_answers = Arc::new(AtomicUsize::new(0));
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let mut pollers = JoinSet::new();
    for id in &ids {
        let clients = std::iter::once((town.clone(), Code::PermissionDenied))
            .chain(std::iter::repeat_n((centre.clone(), Code::Ok), CENTRE_POLLERS_PER_CASE));
        for (clerk, done) in clients {
            let (id, first_answers, failure) = (id.clone(), first_answers.clone(), failure.clone());
            pollers.spawn(async move {
                let polled = poll(clerk, id, done, first_answers).await;
                if let (Err(e), Ok(mut f)) = (&polled, failure.lock()) {
                    f.get_or_insert_with(|| format!("{e:#}"));
                }
                polled
            });
        }
    }
    let clients = pollers.len();
    assert_eq!(clients, 100);
    // Every client has been told NOT_FOUND once while nothing could arrive; then the inbox moves.
    wait_until("every client's first answer", stack::WAIT, || {
        let (seen, failure) = (first_answers.clone(), failure.clone());
        async move {
            if let Some(f) = failure.lock().map_err(|_| anyhow::anyhow!("a poller panicked"))?.clone() {
                anyhow::bail!(f);
            }
            Ok(seen.load(Ordering::SeqCst) == clients)
        }
    })
    .await?;
    held.rollback().await?;
    drop(lock);

    let mut polls = 0;
    while let Some(done) = pollers.join_next().await {
        polls += done??;
    }
    assert!(polls >= clients, "{polls} polls");
    // Every referral was taken and its delivery evidence went back to the court.
    for id in &ids {
        court.wait_for(id, "DELIVERED").await?;
    }
    let applied: u64 = mediation.consumers.iter().map(|c| c.applied.load(Ordering::SeqCst)).sum();
    assert!(applied - applied_before >= CASES as u64, "the inbox applied {} messages", applied - applied_before);
    let dead: u64 = mediation.consumers.iter().map(|c| c.dead_lettered.load(Ordering::SeqCst)).sum();
    assert_eq!(dead, 0);
    stack.stop().await
}

/// The starvation: a flood of calls against the mediation service's calls' pool (2
/// connections here, busy after waiting 300 ms for one). Two `SignFor` calls on a case whose
/// row the test has locked hold both connections; every other call meanwhile is answered
/// `UNAVAILABLE` with the busy message (not "a dependency is unavailable": the database is up).
/// A referral sent during the flood still arrives, and its delivery evidence still goes back:
/// the consumer and the relay work on the bus's own pool.
#[tokio::test]
async fn a_flood_of_calls_is_answered_busy_while_the_relay_and_the_consumer_deliver() -> anyhow::Result<()> {
    const FLOODERS: usize = 16;
    let stack = Stack::start_with(stack::test_gate(), |name, db| {
        if name == "mediation" {
            db.max_connections = 6;
            db.bus_connections = 4;
            db.busy_after_ms = Duration::from_millis(300);
        }
        idle_services_small(name, db);
    })
    .await?;
    let court = stack.clerk(&stack::court()).await?;
    let centre = stack.clerk(&stack::centre()).await?;
    let first = submit(&court, 1).await?;
    centre.wait_for(&first, "DELIVERED").await?;

    // Lock the centre's copy of the case, then let two SignFor calls block on it, each holding
    // one of the two connections of the calls' pool.
    let db = stack.database("mediation")?;
    let mut lock = PgConnection::connect_with(&db.connect_options()).await?;
    let watch = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect_with(db.connect_options()).await?;
    let mut held = lock.begin().await?;
    sqlx::query("SELECT 1 FROM cases WHERE case_id = $1::uuid FOR UPDATE").bind(&first).execute(&mut *held).await?;
    let sign = |clerk: Clerk, id: String| async move {
        let receipt = Receipt { signed_by: "王明".into(), signer_position: "收案员".into(), ..Default::default() };
        clerk.mediation().sign_for(SignForRequest { case_id: id, receipt: Some(receipt) }).await
    };
    let holders = [tokio::spawn(sign(centre.clone(), first.clone())), tokio::spawn(sign(centre.clone(), first.clone()))];
    wait_until("both connections of the calls' pool waiting on the locked case", stack::WAIT, || {
        let watch = watch.clone();
        let returned = holders.iter().any(|h| h.is_finished());
        async move {
            anyhow::ensure!(!returned, "a SignFor on the locked case returned before the lock was released");
            let waiting: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")
                    .fetch_one(&watch)
                    .await?;
            Ok(waiting == 2)
        }
    })
    .await?;

    // The flood: reads and actions, each answered once its wait for a connection is over.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut flood = JoinSet::new();
    for n in 0..FLOODERS {
        let (clerk, id, stop, answered) = (centre.clone(), first.clone(), stop.clone(), answered.clone());
        flood.spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let answer = if n % 2 == 0 { clerk.case(&id).await.map(|_| ()) } else { sign(clerk.clone(), id.clone()).await.map(|_| ()) };
                answers.push(answer);
                answered.fetch_add(1, Ordering::SeqCst);
            }
            answers
        });
    }
    let counted = answered.clone();
    wait_until("the flood's first answers", stack::WAIT, || {
        let counted = counted.clone();
        async move { Ok(counted.load(Ordering::SeqCst) >= FLOODERS) }
    })
    .await?;

    // Meanwhile a referral reaches the centre and its delivery evidence reaches the court.
    let second = submit(&court, 2).await?;
    court.wait_for(&second, "DELIVERED").await?;
    let arrived: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM cases WHERE case_id = $1::uuid)").bind(&second).fetch_one(&watch).await?;
    assert!(arrived, "the centre stored the referral sent during the flood");

    stop.store(true, Ordering::SeqCst);
    let mut busy = 0;
    while let Some(answers) = flood.join_next().await {
        for answer in answers? {
            let status = answer.err().ok_or_else(|| anyhow::anyhow!("a flood call got a connection the blocked calls hold"))?;
            assert!(is_busy(&status), "{:?} {:?}", status.code(), status.message());
            assert_eq!(status.message(), BUSY_MESSAGE);
            assert_ne!(status.message(), OUTAGE_MESSAGE);
            busy += 1;
        }
    }
    assert!(busy >= FLOODERS, "{busy} busy answers");

    // Unlocked, the two blocked calls finish: one signs for the case, the other finds it signed.
    held.rollback().await?;
    let mut signed = 0;
    for h in holders {
        match h.await? {
            Ok(_) => signed += 1,
            Err(s) if s.code() == Code::FailedPrecondition => {}
            Err(s) => anyhow::bail!("a blocked call: {:?} {:?}", s.code(), s.message()),
        }
    }
    assert!(signed >= 1);
    watch.close().await;
    court.wait_for(&first, "RECEIVED").await?;
    assert_eq!(centre.case(&second).await?.state, "DELIVERED", "calls are answered again");
    stack.stop().await
}
