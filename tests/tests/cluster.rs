//! The bus on a three-node RabbitMQ cluster (issue #15): quorum queues replicated on all three
//! nodes; the node leading the most of the test's queues is killed with SIGKILL under load and
//! started again, or stopped with SIGSTOP for 20 s and continued ("cut off and back"). Every
//! referral and every action a client was told was taken reaches the other side and the audit
//! store (0 lost), and nothing is applied twice: no timeline or audit record twice, nothing
//! dead-lettered, nothing left unsent.
//!
//! The services run in-process against the cluster `scripts/deps.sh --cluster` starts
//! (`duijie-c1@localhost` … `duijie-c3@localhost`, [`duijie_tests::cluster`]); each connects to
//! one node first and has the other two as `amqp.cluster_urls`, the first nodes spread over
//! the three. Only the cluster's nodes are disturbed, so the tests beside these on the shared
//! servers are not; nextest runs these one at a time (`.config/nextest.toml`, group `cluster`).
//! Without the cluster in the environment they fail and say to run `scripts/deps.sh --cluster`.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use duijie_proto::answered_case;
use duijie_proto::v1::*;
use duijie_tests::cluster::Cluster;
use duijie_tests::stack::{self, Clerk, Stack, agency_ref, referral, settled};
use duijie_tests::{node, wait_until};
use sqlx::Connection as _;
use tokio::task::JoinSet;
use tonic::Code;

/// Cases per test, each through five steps (submit, sign for, accept, assign, outcome), each
/// step awaited on the other side before the next.
const CASES: usize = 300;
/// Cases in flight at once.
const CONCURRENCY: usize = 24;
/// How long one step may take, retries and the wait for the other side included: a message
/// that does not arrive within it counts as lost.
const STEP_DEADLINE: Duration = Duration::from_secs(90);
/// How long the cut-off node stays stopped.
const STOPPED_FOR: Duration = Duration::from_secs(20);
/// How long the node's copies may take to catch up once it is back.
const CATCH_UP: Duration = Duration::from_secs(120);

/// How the stack's connections are named on the broker: `cluster-test-<service>:<purpose>`.
const CONNECTION_PREFIX: &str = "cluster-test-";

/// Which node each of the stack's connections tries first: spread over the three, so a node
/// that goes away always takes some services' connections with it.
fn first_node(name: &str, nodes: usize) -> usize {
    const ORDER: [&str; 7] = ["test", "audit", "court", "procuratorate", "police", "petition", "mediation"];
    ORDER.iter().position(|n| *n == name).unwrap_or(0) % nodes
}

async fn start_stack(cluster: &Cluster) -> anyhow::Result<Stack> {
    // Formed, or about to be (the test before may have just brought a node back).
    cluster.wait_formed(Duration::from_secs(30)).await?;
    let n = cluster.nodes.len();
    Stack::start_on_brokers(|name| cluster.amqp(first_node(name, n), &format!("{CONNECTION_PREFIX}{name}"))).await
}

/// The load: the four referring agencies send cases to the district centre, which takes each
/// through sign-for, acceptance, assignment and a settled outcome.
struct Load {
    tag: &'static str,
    referrers: Vec<(Clerk, ClockPolicyKind)>,
    centre: Clerk,
    /// Cases whose last step the referrer saw.
    done: AtomicUsize,
    /// Calls answered with a transient error and tried again, by code.
    retried: std::sync::Mutex<BTreeMap<String, usize>>,
}

/// A case the load finished: its id and referrer.
struct Finished {
    id: String,
    referrer: usize,
}

impl Load {
    async fn new(stack: &Stack, tag: &'static str) -> anyhow::Result<Arc<Self>> {
        let mut referrers = Vec::new();
        for (who, clock) in [
            (stack::court(), ClockPolicyKind::CourtOrdinary),
            (stack::police(), ClockPolicyKind::Police),
            (stack::petition(), ClockPolicyKind::Petition),
            (stack::procuratorate(), ClockPolicyKind::PeoplesMediation),
        ] {
            referrers.push((stack.clerk(&who).await?, clock));
        }
        let centre = stack.clerk(&stack::centre()).await?;
        Ok(Arc::new(Self { tag, referrers, centre, done: AtomicUsize::new(0), retried: Default::default() }))
    }

    fn done(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }

    /// Calls `call` until it answers, trying again (same request, same idempotency key) while
    /// the answer is transient: the audit gate closed while the audit service reconnects, a
    /// busy service.
    async fn call<F, Fut>(&self, what: &str, mut call: F) -> anyhow::Result<CaseView>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<CaseView, tonic::Status>>,
    {
        let started = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(s) if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded) && started.elapsed() < STEP_DEADLINE => {
                    if let Ok(mut r) = self.retried.lock() {
                        *r.entry(format!("{:?}", s.code())).or_default() += 1;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(s) => anyhow::bail!("{what}: {:?} {}", s.code(), s.message()),
            }
        }
    }

    /// Waits until `clerk` sees case `id` in `state`; a message that does not arrive within
    /// [`STEP_DEADLINE`] is lost.
    async fn arrived(&self, clerk: &Clerk, id: &str, state: &str) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(20);
        let mut last;
        loop {
            match clerk.case(id).await {
                Ok(v) if v.state == state => return Ok(()),
                Ok(v) => last = v.state,
                Err(s) if matches!(s.code(), Code::NotFound | Code::Unavailable) => last = format!("{:?}", s.code()),
                Err(s) => anyhow::bail!("{} reading case {id}: {:?} {}", clerk.who, s.code(), s.message()),
            }
            anyhow::ensure!(
                started.elapsed() < STEP_DEADLINE,
                "LOST: {} never saw case {id} as {state} within {STEP_DEADLINE:?} (last: {last})",
                clerk.who
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// One case through its five steps.
    async fn case(&self, i: usize) -> anyhow::Result<Finished> {
        let r = i % self.referrers.len();
        let (referrer, clock) = &self.referrers[r];
        let centre = &self.centre;
        let key = |step: &str| format!("cluster-{}-{i}-{step}", self.tag);
        let id = self
            .call("submit", || async {
                referrer
                    .referrals()
                    .submit_referral(SubmitReferralRequest {
                        to: Some(agency_ref(&stack::centre())),
                        case_code: format!("JF-431003-2026-{}{i:05}", self.tag),
                        referral: Some(referral(&key("submit"), *clock)),
                    })
                    .await
                    .and_then(answered_case)
            })
            .await?
            .case_id;
        self.arrived(centre, &id, "DELIVERED").await?;
        self.call("sign for", || async {
            let receipt = Receipt { signed_by: "王明".into(), ..Default::default() };
            centre.mediation().sign_for(keyed(SignForRequest { case_id: id.clone(), receipt: Some(receipt) }, &key("sign"))).await.and_then(answered_case)
        })
        .await?;
        self.arrived(referrer, &id, "RECEIVED").await?;
        self.call("accept", || async {
            let accept = Accept { accepted_by: "王明".into(), ..Default::default() };
            centre.mediation().accept(keyed(AcceptRequest { case_id: id.clone(), accept: Some(accept) }, &key("accept"))).await.and_then(answered_case)
        })
        .await?;
        self.arrived(referrer, &id, "ACCEPTED").await?;
        self.call("assign", || async {
            let mediator = Mediator { mediator_id: "M-07".into(), name: "赵调解".into(), ..Default::default() };
            let assignment = Assignment { mediator: Some(mediator), ..Default::default() };
            centre.mediation().assign(keyed(AssignRequest { case_id: id.clone(), assignment: Some(assignment) }, &key("assign"))).await.and_then(answered_case)
        })
        .await?;
        self.arrived(referrer, &id, "IN_MEDIATION").await?;
        self.call("report outcome", || async {
            let req = ReportOutcomeRequest { case_id: id.clone(), outcome: Some(settled(false)) };
            centre.mediation().report_outcome(keyed(req, &key("outcome"))).await.and_then(answered_case)
        })
        .await?;
        self.arrived(referrer, &id, "SETTLED").await?;
        self.done.fetch_add(1, Ordering::SeqCst);
        Ok(Finished { id, referrer: r })
    }

    /// Drives [`CASES`] cases, [`CONCURRENCY`] at a time; every case must finish. The first case
    /// that fails ends the load (the others in flight are dropped).
    async fn run(self: Arc<Self>) -> anyhow::Result<Vec<Finished>> {
        let mut tasks = JoinSet::new();
        let mut finished = Vec::with_capacity(CASES);
        let mut next = 0;
        while next < CASES || !tasks.is_empty() {
            while next < CASES && tasks.len() < CONCURRENCY {
                let (load, i) = (self.clone(), next);
                tasks.spawn(async move { load.case(i).await.map_err(|e| format!("case {i}: {e:#}")) });
                next += 1;
            }
            let failure = match tasks.join_next().await {
                Some(Ok(Ok(f))) => {
                    finished.push(f);
                    continue;
                }
                Some(Ok(Err(e))) => e,
                Some(Err(e)) => format!("a case's task failed: {e}"),
                None => continue,
            };
            tasks.abort_all();
            anyhow::bail!("{failure} ({} of {CASES} cases finished, {} in flight)", finished.len(), tasks.len());
        }
        Ok(finished)
    }
}

/// `msg` with an `idempotency-key`, so a retried action is taken once.
fn keyed<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Ok(v) = tonic::metadata::MetadataValue::try_from(key) {
        req.metadata_mut().insert("idempotency-key", v);
    }
    req
}

/// The kinds the load sends, each once per case, on both sides and in the audit store.
const STEPS: [MessageKind; 5] = [MessageKind::Referral, MessageKind::Receipt, MessageKind::Accept, MessageKind::Assignment, MessageKind::Outcome];

/// Problems with one list of message ids: a message twice, or a step not there exactly once.
fn check_once(problems: &mut Vec<String>, whose: &str, id: &str, entries: &[(String, MessageKind)]) {
    let mut seen = HashSet::new();
    for (m, kind) in entries {
        if !seen.insert(m) {
            problems.push(format!("TWICE: {whose} has message {m} ({kind:?}) of case {id} twice"));
        }
    }
    for step in STEPS {
        let n = entries.iter().filter(|(_, k)| *k == step).count();
        if n != 1 {
            problems.push(format!("{}: {whose} has {n} {step:?} of case {id}", if n == 0 { "LOST" } else { "TWICE" }));
        }
    }
}

/// 0 lost, 0 applied twice, across the agencies, the audit store and the bus.
async fn check_everything(stack: &Stack, load: &Load, finished: &[Finished]) -> anyhow::Result<()> {
    anyhow::ensure!(finished.len() == CASES, "{} of {CASES} cases finished", finished.len());
    let supervisor = node(AgencyKind::Supervisor, "431003");
    let audit = stack.auditor(&supervisor).await?;
    // The audit store may still be appending the last outcomes.
    for f in finished {
        let settled = wait_until(&format!("the audit store to record case {} settled", f.id), STEP_DEADLINE, || {
            let mut audit = audit.clone();
            let id = f.id.clone();
            async move {
                let t = audit.get_timeline(GetTimelineRequest { case_id: id, ..Default::default() }).await?.into_inner();
                Ok(t.case.is_some_and(|c| c.state == "SETTLED"))
            }
        })
        .await;
        if let Err(e) = settled {
            // What it recorded, in its order: a step recorded as refused took no effect.
            let t = audit.clone().get_timeline(GetTimelineRequest { case_id: f.id.clone(), ..Default::default() }).await?.into_inner();
            let records: Vec<String> = t
                .records
                .iter()
                .map(|r| format!("{:?} -> {}{}", r.kind(), r.state_after, if r.refused.is_empty() { String::new() } else { format!(" (REFUSED: {})", r.refused) }))
                .collect();
            return Err(e.context(format!("LOST at the audit store: case {} there is {:?}; its records: {records:#?}", f.id, t.case.map(|c| c.state))));
        }
    }
    let mut problems = Vec::new();
    for f in finished {
        let (referrer, _) = &load.referrers[f.referrer];
        let mut everything = HashSet::new();
        for clerk in [referrer, &load.centre] {
            let v = clerk.case(&f.id).await?;
            if v.state != "SETTLED" {
                problems.push(format!("{} sees case {} as {}", clerk.who, f.id, v.state));
            }
            let entries: Vec<(String, MessageKind)> = v.timeline.iter().map(|t| (t.message_id.clone(), t.kind())).collect();
            check_once(&mut problems, &clerk.who.to_string(), &f.id, &entries);
            everything.extend(entries.into_iter().map(|(m, _)| m));
        }
        let mut a = audit.clone();
        let t = a.get_timeline(GetTimelineRequest { case_id: f.id.clone(), ..Default::default() }).await?.into_inner();
        let recorded: Vec<(String, MessageKind)> = t.records.iter().map(|r| (r.message_id.clone(), r.kind())).collect();
        check_once(&mut problems, "the audit store", &f.id, &recorded);
        // Every step here was taken by the agencies: one the audit store recorded as refused
        // took no effect there (its view of the case, its statistics and limits, miss it).
        for r in t.records.iter().filter(|r| !r.refused.is_empty()) {
            problems.push(format!("REFUSED: the audit store recorded {:?} {} of case {} as refused: {}", r.kind(), r.message_id, f.id, r.refused));
        }
        let recorded: HashSet<&String> = recorded.iter().map(|(m, _)| m).collect();
        for m in everything.iter().filter(|m| !recorded.contains(m)) {
            problems.push(format!("LOST: message {m} of case {} is in an agency's timeline, not in the audit store", f.id));
        }
    }
    anyhow::ensure!(problems.is_empty(), "{} problem(s); the first: {:#?}", problems.len(), &problems[..problems.len().min(20)]);

    // The whole log: no message recorded twice, and it verifies.
    let pool = stack.audit.as_ref().map(|a| a.pool.clone()).ok_or_else(|| anyhow::anyhow!("the audit service is stopped"))?;
    let twice: i64 = sqlx::query_scalar("SELECT count(*) FROM (SELECT message_id FROM audit_log GROUP BY message_id HAVING count(*) > 1) d")
        .fetch_one(&pool)
        .await?;
    assert_eq!(twice, 0, "no message is in the audit log twice");
    let verified = audit.clone().verify(VerifyRequest::default()).await?.into_inner();
    assert!(verified.ok, "the audit log verifies: {verified:?}");

    // Nothing left unsent, nothing dead-lettered, no signature refused.
    for name in ["audit", "court", "procuratorate", "police", "petition", "mediation"] {
        let cfg = stack.database(name)?.clone();
        wait_until(&format!("the {name} service's outbox to empty"), STEP_DEADLINE, || {
            let cfg = cfg.clone();
            async move {
                let mut conn = sqlx::PgConnection::connect_with(&cfg.connect_options()).await?;
                let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&mut conn).await?;
                let _ = conn.close().await;
                Ok(unsent == 0)
            }
        })
        .await?;
    }
    let dead = stack.bus.drain_dead().await?;
    assert!(dead.is_empty(), "nothing was dead-lettered: {:?}", dead.iter().map(|d| (&d.reason, &d.original_routing_key)).collect::<Vec<_>>());
    Ok(())
}

/// The agency services' consumer and relay figures: (consumer restarts + relay restarts, report
/// line). (The audit store's side is its log, checked above: no message recorded twice.)
fn consumer_stats(stack: &Stack) -> anyhow::Result<(u64, String)> {
    let (mut applied, mut duplicates, mut restarts, mut dead, mut bad) = (0, 0, 0, 0, 0);
    let all = stack.services.iter().flat_map(|(_, s)| s.consumers.iter());
    for c in all {
        applied += c.applied.load(Ordering::SeqCst);
        duplicates += c.duplicates.load(Ordering::SeqCst);
        restarts += c.restarts.load(Ordering::SeqCst);
        dead += c.dead_lettered.load(Ordering::SeqCst);
        bad += c.bad_signatures.load(Ordering::SeqCst);
    }
    let (mut published, mut relay_restarts, mut nacked, mut returned) = (0, 0, 0, 0);
    for (_, s) in &stack.services {
        published += s.relay.published.load(Ordering::SeqCst);
        relay_restarts += s.relay.restarts.load(Ordering::SeqCst);
        nacked += s.relay.nacked.load(Ordering::SeqCst);
        returned += s.relay.returned.load(Ordering::SeqCst);
    }
    anyhow::ensure!(dead == 0, "consumers dead-lettered {dead} message(s)");
    anyhow::ensure!(bad == 0, "consumers refused {bad} signature(s)");
    Ok((
        restarts + relay_restarts,
        format!(
            "consumers: applied {applied}, duplicates skipped {duplicates}, restarts {restarts}; relays: published {published}, restarts {relay_restarts}, nacked {nacked}, returned {returned}"
        ),
    ))
}

/// Every quorum queue of the test is replicated on all the cluster's nodes.
async fn assert_replicated_everywhere(cluster: &Cluster, via: usize, prefix: &str) -> anyhow::Result<usize> {
    let queues = cluster.queues(via, prefix).await?;
    anyhow::ensure!(!queues.is_empty(), "the test's queues are quorum queues");
    for q in &queues {
        anyhow::ensure!(q.members.len() == cluster.nodes.len(), "{} has members {:?}, not all {} nodes", q.name, q.members, cluster.nodes.len());
    }
    Ok(queues.len())
}

/// The load's result; if it failed, with what the test's queues held then (messages ready and
/// unacknowledged, consumers, leader) and the stack's connections on each node.
async fn with_queues<T>(cluster: &Cluster, prefix: &str, result: anyhow::Result<T>) -> anyhow::Result<T> {
    match result {
        Ok(v) => Ok(v),
        Err(e) => {
            let queues = cluster.describe(prefix, CONNECTION_PREFIX).await.unwrap_or_else(|d| format!("(could not list them: {d:#})"));
            Err(e.context(format!("the queues of {prefix}:\n{queues}")))
        }
    }
}

/// Waits until the load has done `n` cases (or ended).
async fn load_reached(load: &Load, n: usize) -> anyhow::Result<()> {
    wait_until(&format!("{n} cases to be done"), STEP_DEADLINE, || async { Ok(load.done() >= n) }).await
}

/// The node a cluster test fails ([`Trial::target`]).
struct Target {
    index: usize,
    led: usize,
    name: String,
    other: usize,
    done: usize,
}

/// A cluster test under way: the machine's cluster held for it alone, a stack on it whose quorum
/// queues are replicated on every node, and its load (not started yet).
struct Trial {
    cluster: Cluster,
    /// One cluster test at a time on this machine, whichever worktree runs it.
    _exclusive: duijie_tests::cluster::ClusterLock,
    stack: Stack,
    prefix: String,
    queues: usize,
    load: Arc<Load>,
    t0: Instant,
}

impl Trial {
    async fn start(tag: &'static str) -> anyhow::Result<Self> {
        let cluster = Cluster::from_env()?;
        let exclusive = cluster.exclusive().await?;
        let t0 = Instant::now();
        let stack = start_stack(&cluster).await?;
        let prefix = stack.prefix().to_owned();
        let queues = assert_replicated_everywhere(&cluster, 0, &prefix).await?;
        let load = Load::new(&stack, tag).await?;
        eprintln!("stack up in {:.1?}, {queues} quorum queues on all {} nodes", t0.elapsed(), cluster.nodes.len());
        Ok(Self { cluster, _exclusive: exclusive, stack, prefix, queues, load, t0 })
    }

    /// A quarter into the load, the node to fail: the one leading the most queues (`index`,
    /// `led` of them, `name`), another node to ask meanwhile (`other`), and the cases done then.
    async fn target(&self) -> anyhow::Result<Target> {
        load_reached(&self.load, CASES / 4).await?;
        let (index, led) = self.cluster.busiest_leader(0, &self.prefix).await?;
        let name = self.cluster.nodes[index].name.clone();
        let other = (index + 1) % self.cluster.nodes.len();
        Ok(Target { index, led, name, other, done: self.load.done() })
    }

    /// Waits (at most `within`) until every queue has a leader and none is node `name`, asking
    /// node `via`.
    async fn leaders_left(&self, name: &str, via: usize, within: Duration) -> anyhow::Result<()> {
        wait_until("the queues it led to have leaders elsewhere", within, || async {
            let qs = self.cluster.leaders(via, &self.prefix).await?;
            Ok(qs.iter().all(|q| !q.leader.is_empty() && q.leader != name))
        })
        .await
    }

    /// Runs the load with `fault` beside it; what the load finished, and what the fault returned.
    async fn run<T>(&self, fault: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<(Vec<Finished>, T)> {
        let load_started = Instant::now();
        let (finished, fault) = tokio::join!(self.load.clone().run(), fault);
        let (finished, fault) = (with_queues(&self.cluster, &self.prefix, finished).await?, fault?);
        eprintln!("load: {CASES} cases in {:.1?}, calls retried: {:?}", load_started.elapsed(), self.load.retried.lock().map(|r| r.clone()).unwrap_or_default());
        Ok((finished, fault))
    }

    /// After the load: every case right on every side, the cluster whole again with every queue on
    /// every node (asked of node `via`, the one that failed), the stack stopped. Returns the
    /// consumers' restarts.
    async fn finish(self, finished: &[Finished], via: usize) -> anyhow::Result<u64> {
        check_everything(&self.stack, &self.load, finished).await?;
        let (restarts, stats) = consumer_stats(&self.stack)?;
        eprintln!("{stats}");
        self.cluster.wait_formed(CATCH_UP).await?;
        assert_replicated_everywhere(&self.cluster, via, &self.prefix).await?;
        eprintln!("test done in {:.1?}", self.t0.elapsed());
        self.stack.stop().await?;
        Ok(restarts)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_leading_the_most_queues_killed_under_load_and_restarted_loses_nothing_and_applies_nothing_twice() -> anyhow::Result<()> {
    let trial = Trial::start("K").await?;
    let (cluster, prefix, load, queues) = (&trial.cluster, trial.prefix.as_str(), &trial.load, trial.queues);
    let fault = async {
        let Target { index: target, led, name, other, done: done_at_kill } = trial.target().await?;
        let killed_at = Instant::now();
        let killed = cluster.kill(target).await?;
        eprintln!("killed {name} (pid {}), leader of {led} of {queues} queues, with {done_at_kill} of {CASES} cases done", killed.pid);
        // The two others elect new leaders for what it led.
        trial.leaders_left(&name, other, Duration::from_secs(60)).await?;
        let elected = killed_at.elapsed();
        // Down a while longer under load, then back.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let restarting = Instant::now();
        cluster.start(target).await?;
        let back = restarting.elapsed();
        let pid = cluster.beam_pid(target).await?;
        anyhow::ensure!(pid != killed.pid, "{name} runs as a new process");
        killed.disarm();
        cluster.wait_caught_up(target, prefix, CATCH_UP).await?;
        eprintln!(
            "{name}: new leaders elected {elected:.1?} after the kill; restarted and back in the cluster in {back:.1?}, caught up {:.1?} after the kill, {} cases done then",
            killed_at.elapsed(),
            load.done()
        );
        anyhow::Ok((done_at_kill, target))
    };
    let (finished, (done_at_kill, target)) = trial.run(fault).await?;
    assert!(done_at_kill < CASES / 2, "the node was killed in the middle of the load ({done_at_kill} of {CASES} cases done)");
    let restarts = trial.finish(&finished, target).await?;
    assert!(restarts >= 1, "the services saw a connection go ({restarts} consumer restarts)");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_leading_the_most_queues_cut_off_under_load_and_back_loses_nothing_and_applies_nothing_twice() -> anyhow::Result<()> {
    let trial = Trial::start("S").await?;
    let (cluster, prefix, load, queues) = (&trial.cluster, trial.prefix.as_str(), &trial.load, trial.queues);
    let fault = async {
        let Target { index: target, led, name, other, done: done_at_stop } = trial.target().await?;
        let stopped = cluster.stop(target).await?;
        let stopped_at = Instant::now();
        eprintln!("stopped {name} (pid {}), leader of {led} of {queues} queues, with {done_at_stop} of {CASES} cases done", stopped.pid);
        // The two others elect new leaders for what it led while it answers nothing.
        let moved = trial.leaders_left(&name, other, STOPPED_FOR).await;
        let elected = stopped_at.elapsed();
        tokio::time::sleep(STOPPED_FOR.saturating_sub(stopped_at.elapsed())).await;
        let done_while_stopped = load.done() - done_at_stop;
        stopped.resume().await?;
        eprintln!(
            "{name} continued after {:.1?}; {}; {done_while_stopped} cases done while it was stopped",
            stopped_at.elapsed(),
            match &moved {
                Ok(()) => format!("new leaders elected {elected:.1?} after the stop"),
                Err(e) => format!("leaders not seen moving: {e:#}"),
            }
        );
        moved?;
        let resumed = Instant::now();
        // Cut off for longer than net_ticktime (10 s), it comes back partitioned from the others
        // and the cluster heals (autoheal, scripts/deps.sh): give it the moment to notice.
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.wait_formed(CATCH_UP).await?;
        cluster.wait_caught_up(target, prefix, CATCH_UP).await?;
        eprintln!("{name}: back and caught up {:.1?} after SIGCONT, {} cases done then", resumed.elapsed(), load.done());
        anyhow::Ok((done_at_stop, target))
    };
    let (finished, (done_at_stop, target)) = trial.run(fault).await?;
    assert!(done_at_stop < CASES / 2, "the node was stopped in the middle of the load ({done_at_stop} of {CASES} cases done)");
    trial.finish(&finished, target).await?;
    Ok(())
}
