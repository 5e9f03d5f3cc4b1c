//! The system benchmark (`scripts/bench.sh --system`): the whole stack under sustained load, as
//! clerks would load it.
//!
//! 1. Starts the real stack as separate processes ([`crate::stack`]) and drives a few warm-up
//!    cases through it.
//! 2. Idle: measures the CPU the stack uses over `--idle-secs` of no traffic — every service
//!    process, PostgreSQL (its postmaster, background processes and the backends of the
//!    stack's databases) and RabbitMQ's beam — from `/proc/<pid>/stat`.
//! 3. Load: drives `--cases` cases through their whole lifecycle over gRPC, `--concurrency` in
//!    flight, with the CLI's demo planner (`duijie_cli::demo`: the four channels; settled with or
//!    without judicial confirmation, failed, rejected, withdrawn, redirected and escalated cases;
//!    closures and the referrers' dispositions). Every call is timed per gRPC method; a sampler
//!    watches the audit tap's backlog.
//! 4. Catch-up: how long after the last case the audit store has recorded everything; its lag
//!    (recorded − occurred) over every record of the load; how often the agency services' audit
//!    gate closed (their logs) and how often `SubmitReferral` was refused `UNAVAILABLE`.
//! 5. Stops the stack and measures, in the same run, the audit store's append rate in isolation
//!    ([`crate::append`]) and the bus's end-to-end rate ([`crate::bus`]).
//!
//! The last line has a fixed form for scripts:
//! `system: <cases/s> cases/s, <calls/s> calls/s, rpc p99 <ms> ms, audit max lag <s> s, gate closed <n>, audit/bus <ratio>`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use duijie_cli::demo::{self, CallObserver, DemoConfig};
use duijie_common::CancellationToken;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;

use crate::bus::{BusArgs, BusUnderTest};
use crate::cpu::{self, Children, ProcessGroup};
use crate::stack::{ProcessStack, StackArgs};

/// What the system benchmark does.
#[derive(clap::Args, Debug, Clone)]
pub struct SystemArgs {
    /// Cases driven through their whole lifecycle.
    #[arg(long, default_value_t = 3000)]
    pub cases: u32,
    /// Cases in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seed of the cases' plans (channels, outcomes, paths).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Cases driven before anything is measured (connections, caches).
    #[arg(long, default_value_t = 16)]
    pub warmup_cases: u32,
    /// Seconds of no traffic over which the idle stack's CPU is measured (0: skip).
    #[arg(long, default_value_t = 30)]
    pub idle_secs: u64,
    /// The longest a driver waits between two looks at the other side of a handoff (ms); it
    /// looks after 5 ms, then twice as long each time up to this.
    #[arg(long, default_value_t = 100)]
    pub poll_ms: u64,
    /// Learn that a handoff arrived from the agencies' live feeds (`CasesService.Watch`) and read
    /// the case once, instead of looking at it until it arrived (as clients without the feed do).
    #[arg(long)]
    pub watch: bool,
    /// How long one step may take, retries included (seconds).
    #[arg(long, default_value_t = 120)]
    pub step_timeout_secs: u64,
    /// How long the audit store may take to catch up after the load (seconds).
    #[arg(long, default_value_t = 900)]
    pub catch_up_timeout_secs: u64,
    /// Envelopes for the bus's end-to-end rate (0: skip).
    #[arg(long, default_value_t = 10_000)]
    pub bus_messages: usize,
    /// Envelopes for the audit store's append rate in isolation (0: skip).
    #[arg(long, default_value_t = 10_000)]
    pub append_messages: usize,
    /// Keep the databases and queues afterwards (the logs in target/sysbench/ are always kept).
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// The figures' names for PostgreSQL: the backends of each service's database, and what serves the whole
/// cluster (postmaster, checkpointer, WAL writer, autovacuum, …; busy when other clients are).
const PG_BACKENDS: &str = "PostgreSQL for";
const PG_SHARED: &str = "PostgreSQL postmaster and background";
const RABBITMQ: &str = "RabbitMQ";
/// This benchmark's own process, the clerks' side of the load.
const DRIVER: &str = "driver (this benchmark)";

/// The log line an agency service writes when its audit gate closes (`duijie_agency::gate`).
const GATE_CLOSED_LOG: &str = "refusing new referrals";

/// Runs the system benchmark and prints its figures; the last line is the summary.
pub async fn run(args: &SystemArgs) -> anyhow::Result<()> {
    println!(
        "duijie system benchmark, {} UTC; {} CPUs, load average {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M"),
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        load_average()
    );
    let opts = args.stack.options()?;
    let mut stack = ProcessStack::start(&opts).await?;
    println!(
        "stack: {} (release binaries, one process each), prefix {}, logs in {}",
        stack.services.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
        stack.prefix,
        stack.dir.display()
    );
    let measured = measure_stack(&stack, args).await;
    stack.stop().await;
    let result = match measured {
        Ok(load) => isolation_and_report(args, load).await,
        Err(e) => Err(e),
    };
    if args.keep {
        println!("kept: databases sysbench_{}_*, queues {}.*", stack.id, stack.prefix);
    } else {
        stack.cleanup().await;
    }
    result
}

/// What the stack did under load.
struct LoadFigures {
    idle: Vec<cpu::GroupUsage>,
    /// The machine's load average when the idle measurement ended (other work on it shows in
    /// the shared servers' figures).
    idle_load_average: String,
    /// The machine's load average when the load ended.
    load_load_average: String,
    /// What each process group used during the load.
    busy: Vec<cpu::GroupUsage>,
    cases: u32,
    failed: usize,
    first_failure: Option<String>,
    by_state: BTreeMap<String, usize>,
    seconds: f64,
    cpu_seconds: Option<f64>,
    calls: BTreeMap<&'static str, MethodFigures>,
    tap_max: u32,
    tap_max_at: f64,
    lag: Option<Lag>,
    catch_up: Option<f64>,
    /// How often each agency service's gate closed.
    gate_closed: Vec<(&'static str, usize)>,
    submit_refused: u64,
}

/// The audit store's lag over the records of the load.
struct Lag {
    records: i64,
    p99: f64,
    max: f64,
}

async fn measure_stack(stack: &ProcessStack, args: &SystemArgs) -> anyhow::Result<LoadFigures> {
    let agencies = stack.agencies()?;
    let poll = Duration::from_millis(args.poll_ms.max(1));
    let step_timeout = Duration::from_secs(args.step_timeout_secs);
    // With --watch the driver learns of arrivals from the agencies' live feeds.
    let arrivals = if args.watch { Some(duijie_cli::feed::Arrivals::follow(&agencies.all()).await.context("following the live feeds")?) } else { None };
    let amqp = stack.connector.connect("sysbench watch").await?;
    let ch = amqp.create_channel().await?;

    // Warm-up: connections open, the gate seen open, caches filled; not measured.
    if args.warmup_cases > 0 {
        let cfg = DemoConfig {
            cases: args.warmup_cases,
            seed: args.seed.wrapping_add(1_000_000),
            mixed: false,
            concurrency: args.concurrency.min(8),
            step_timeout,
            poll,
            observer: None,
            arrivals: arrivals.clone(),
        };
        let warm = demo::run(&agencies, &cfg, &ProgressBar::hidden()).await;
        if let Some(c) = warm.failures().next() {
            anyhow::bail!("warm-up case {} failed: {}", c.case_code, c.error.as_ref().map(ToString::to_string).unwrap_or_default());
        }
        wait_caught_up(stack, &ch, Duration::from_secs(60)).await.context("after the warm-up")?;
    }

    let mut groups = process_groups(stack, args).await;
    let idle = if args.idle_secs > 0 {
        println!("idle: measuring {} s of no traffic …", args.idle_secs);
        cpu::measure(&groups, Duration::from_secs(args.idle_secs)).await
    } else {
        Vec::new()
    };
    let idle_load_average = load_average();

    // The load, with the tap's backlog sampled beside it.
    let observer = Arc::new(Calls::default());
    let cfg = DemoConfig {
        cases: args.cases,
        seed: args.seed,
        mixed: false,
        concurrency: args.concurrency,
        step_timeout,
        poll,
        observer: Some(observer.clone()),
        arrivals: arrivals.clone(),
    };
    let logs: Vec<u64> = stack.services.iter().map(|s| s.log_len()).collect();
    let since = chrono::Utc::now();
    let progress = ProgressBar::hidden();
    progress.set_length(u64::from(args.cases));
    let sampling = CancellationToken::new();
    let started = Instant::now();
    let sampler = tokio::spawn(sample_tap(ch.clone(), stack.topology.tap_queues(), started, progress.clone(), sampling.clone()));
    groups.push(ProcessGroup { name: DRIVER.into(), root: std::process::id(), with_root: true, children: Children::None });
    let cpu0 = cpu::busy_cpu_seconds();
    let before = cpu::snapshot(&groups);
    let report = demo::run(&agencies, &cfg, &progress).await;
    let seconds = started.elapsed().as_secs_f64();
    let busy = cpu::usage_since(&groups, &before);
    let cpu_seconds = cpu::busy_cpu_seconds().zip(cpu0).map(|(b, a)| b - a);
    let load_load_average = load_average();
    eprintln!("load: {} cases in {seconds:.1} s; waiting for the audit store to catch up …", args.cases);

    let ended = Instant::now();
    let caught_up = wait_caught_up(stack, &ch, Duration::from_secs(args.catch_up_timeout_secs)).await;
    let catch_up = caught_up.is_ok().then(|| ended.elapsed().as_secs_f64());
    if let Err(e) = caught_up {
        eprintln!("sysbench: {e:#}");
    }
    sampling.cancel();
    let (tap_max, tap_max_at) = sampler.await.unwrap_or((0, 0.0));
    let lag = audit_lag(stack, since).await.map_err(|e| eprintln!("sysbench: reading the audit lag: {e:#}")).ok();
    // Each agency service has its own gate; they see the same tap and close together.
    let gate_closed = stack
        .services
        .iter()
        .zip(&logs)
        .filter(|(s, _)| s.name != "audit")
        .map(|(s, from)| (s.name, s.log_lines_since(*from, GATE_CLOSED_LOG)))
        .collect();
    let calls = observer.figures();
    let submit_refused = calls.get("SubmitReferral").map_or(0, |m| m.unavailable);
    let _ = amqp.close(200, "done".into()).await;
    let failures: Vec<_> = report.failures().collect();
    Ok(LoadFigures {
        idle,
        idle_load_average,
        load_load_average,
        busy,
        cases: args.cases,
        failed: failures.len(),
        first_failure: failures.first().map(|c| format!("{}: {}", c.case_code, c.error.as_ref().map(ToString::to_string).unwrap_or_default())),
        by_state: report.by_state(),
        seconds,
        cpu_seconds,
        calls,
        tap_max,
        tap_max_at,
        lag,
        catch_up,
        gate_closed,
        submit_refused,
    })
}

/// The processes whose idle CPU is measured: each service, PostgreSQL (postmaster, background
/// processes, the backends of the stack's databases — not other clients'), RabbitMQ's beam and
/// its helpers (the node on the AMQP port; other clients' queues live in it too).
async fn process_groups(stack: &ProcessStack, args: &SystemArgs) -> Vec<ProcessGroup> {
    let mut groups: Vec<ProcessGroup> =
        stack.services.iter().map(|s| ProcessGroup { name: s.name.to_owned(), root: s.pid, with_root: true, children: Children::None }).collect();
    match postmaster(stack).await {
        Some(pid) => {
            // A client backend's command line is `postgres: <cluster>: <user> <database> <client> <activity>`;
            // a background process names itself (checkpointer, walwriter, autovacuum launcher, …).
            // The backends of the stack's databases are the stack's; the postmaster and the
            // background processes serve every database of the cluster.
            for s in &stack.services {
                // The database name followed by a space: `…_court` is not `…_court_x`.
                let ours = format!(" sysbench_{}_{} ", stack.id, s.name);
                let backends = move |cmd: &str| cmd.contains(&ours) && is_client_backend(cmd);
                let name = format!("{PG_BACKENDS} {}", s.name);
                groups.push(ProcessGroup { name, root: pid, with_root: false, children: Children::Matching(Arc::new(backends)) });
            }
            groups.push(ProcessGroup { name: PG_SHARED.into(), root: pid, with_root: true, children: Children::Matching(Arc::new(|cmd: &str| !is_client_backend(cmd))) });
        }
        None => eprintln!("sysbench: PostgreSQL's processes are not visible here; its idle CPU is not measured"),
    }
    match amqp_port(&args.stack.amqp_url).and_then(cpu::listener_of) {
        Some(pid) => groups.push(ProcessGroup { name: RABBITMQ.into(), root: pid, with_root: true, children: Children::All }),
        None => eprintln!("sysbench: RabbitMQ's process is not visible here; its idle CPU is not measured"),
    }
    groups
}

/// Whether a PostgreSQL process's command line is a client backend's: it names a client
/// address, `host(port)` or `[local]`.
fn is_client_backend(cmd: &str) -> bool {
    cmd.contains("[local]") || cmd.split_whitespace().any(|w| w.ends_with(')') && w.contains('(') && !w.starts_with('('))
}

/// The postmaster: the parent of one of the stack's backends, if it runs on this machine.
async fn postmaster(stack: &ProcessStack) -> Option<u32> {
    let audit = stack.service("audit").ok()?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&audit.pool).await.ok()?;
    let parent = cpu::parent_of(u32::try_from(backend).ok()?)?;
    cpu::command_line(parent).contains("postgres").then_some(parent)
}

fn amqp_port(url: &str) -> Option<u16> {
    let uri: lapin::uri::AMQPUri = url.parse().ok()?;
    Some(uri.authority.port)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_else(|_| "n/a".into())
}

/// Waits until the audit store recorded everything the services sent ([`ProcessStack::audit_caught_up`]).
pub async fn wait_caught_up(stack: &ProcessStack, ch: &lapin::Channel, within: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if stack.audit_caught_up(ch).await? {
            return Ok(());
        }
        anyhow::ensure!(started.elapsed() < within, "the audit store did not catch up within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Samples the tap's backlog every 250 ms until `stop`, printing progress every 10 s; returns
/// the largest backlog seen and when (seconds after `started`).
async fn sample_tap(ch: lapin::Channel, taps: Vec<String>, started: Instant, progress: ProgressBar, stop: CancellationToken) -> (u32, f64) {
    let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    let (mut max, mut max_at) = (0, 0.0);
    let mut last_print = Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => return (max, max_at),
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let mut seen = Ok(0u32);
        for tap in &taps {
            match ch.queue_declare(tap.as_str().into(), passive, lapin::types::FieldTable::default()).await {
                Ok(q) => seen = seen.map(|d| d.saturating_add(q.message_count())),
                Err(e) => {
                    seen = Err(e);
                    break;
                }
            }
        }
        let depth = match seen {
            Ok(d) => d,
            Err(e) => {
                eprintln!("sysbench: cannot see the tap any more: {e}");
                return (max, max_at);
            }
        };
        if depth > max {
            max = depth;
            max_at = started.elapsed().as_secs_f64();
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "  {:>6.0} s  {:>6}/{} cases  {:>6.1} cases/s  tap backlog {depth}",
                secs,
                progress.position(),
                progress.length().unwrap_or(0),
                progress.position() as f64 / secs
            );
        }
    }
}

/// The audit store's lag over the records written since `since`: recorded_at − occurred_at (the
/// sender built the envelope → the audit store appended it).
async fn audit_lag(stack: &ProcessStack, since: chrono::DateTime<chrono::Utc>) -> anyhow::Result<Lag> {
    let audit = stack.service("audit")?;
    let (records, p99, max): (i64, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT count(*),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM recorded_at - occurred_at)::float8),
                max(extract(epoch FROM recorded_at - occurred_at))::float8
         FROM audit_log WHERE recorded_at >= $1",
    )
    .bind(since)
    .fetch_one(&audit.pool)
    .await?;
    Ok(Lag { records, p99: p99.unwrap_or(0.0), max: max.unwrap_or(0.0) })
}

/// Calls per gRPC method, as the demo driver made them.
#[derive(Debug, Default)]
struct Calls {
    methods: Mutex<BTreeMap<&'static str, MethodFigures>>,
}

/// One method's calls.
#[derive(Debug, Clone)]
struct MethodFigures {
    /// Every call's time to its answer (refusals included), in µs.
    took: Histogram<u64>,
    ok: u64,
    /// Answered `UNAVAILABLE` (for `SubmitReferral`: the audit gate was closed).
    unavailable: u64,
    /// Other refusals (`NOT_FOUND` while a case has not arrived is a normal answer to a look).
    other: u64,
}

impl Calls {
    fn figures(&self) -> BTreeMap<&'static str, MethodFigures> {
        self.methods.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

impl CallObserver for Calls {
    fn answered(&self, method: &'static str, took: Duration, code: tonic::Code) {
        let Ok(mut methods) = self.methods.lock() else { return };
        let m = match methods.entry(method) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => match Histogram::new_with_bounds(1, 600_000_000, 3) {
                Ok(h) => e.insert(MethodFigures { took: h, ok: 0, unavailable: 0, other: 0 }),
                Err(_) => return,
            },
        };
        m.took.saturating_record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        match code {
            tonic::Code::Ok => m.ok += 1,
            tonic::Code::Unavailable => m.unavailable += 1,
            _ => m.other += 1,
        }
    }
}

/// Whether a method is a clerk's action (it sends a message) rather than a look at a case.
fn is_read(method: &str) -> bool {
    method == "GetCase"
}

async fn isolation_and_report(args: &SystemArgs, load: LoadFigures) -> anyhow::Result<()> {
    // In isolation, with the stack stopped: the audit store's append rate and the bus's rate.
    let append = if args.append_messages > 0 {
        eprintln!("isolation: the audit store's append rate ({} envelopes) …", args.append_messages);
        Some(crate::append::append_rate(&args.stack.database_url, "duijie_sysbench_audit", args.append_messages, crate::append::AppendShape::default()).await.context("audit append rate")?)
    } else {
        None
    };
    let bus = if args.bus_messages > 0 {
        eprintln!("isolation: the bus's end-to-end rate ({} envelopes) …", args.bus_messages);
        Some(bus_rate(args).await.context("bus end-to-end rate")?)
    } else {
        None
    };
    let ms = |us: u64| us as f64 / 1000.0;

    let idle_total: f64 = load.idle.iter().map(|g| g.cores).sum();
    if !load.idle.is_empty() {
        let is_server = |g: &&cpu::GroupUsage| g.name.starts_with(PG_BACKENDS) || g.name == PG_SHARED || g.name == RABBITMQ;
        let services: Vec<_> = load.idle.iter().filter(|g| !is_server(g)).collect();
        let services_total: f64 = services.iter().map(|g| g.cores).sum();
        println!(
            "idle ({} s, no traffic, load average {}): whole stack {idle_total:.4} cores (target < 0.02)",
            args.idle_secs, load.idle_load_average
        );
        println!(
            "  services {services_total:.4} cores ({})",
            services.iter().map(|g| format!("{} {:.4}", g.name, g.cores)).collect::<Vec<_>>().join(", ")
        );
        let backends: Vec<_> = load.idle.iter().filter(|g| g.name.starts_with(PG_BACKENDS)).collect();
        println!(
            "  PostgreSQL backends of the stack {:.4} cores ({} processes)",
            backends.iter().map(|g| g.cores).sum::<f64>(),
            backends.iter().map(|g| g.processes).sum::<usize>()
        );
        for g in load.idle.iter().filter(|g| g.name == PG_SHARED || g.name == RABBITMQ) {
            println!("  {} {:.4} cores ({} processes)", g.name, g.cores, g.processes);
        }
    }

    let all_calls: u64 = load.calls.values().map(|m| m.took.len()).sum();
    let actions: u64 = load.calls.iter().filter(|(k, _)| !is_read(k)).map(|(_, m)| m.took.len()).sum();
    let cases_per_s = f64::from(load.cases) / load.seconds;
    let calls_per_s = all_calls as f64 / load.seconds;
    println!(
        "load: {} cases (seed {}, {} in flight), {} failed, in {:.1} s: {cases_per_s:.1} cases/s; {all_calls} calls ({actions} actions, {} looks at a case): {calls_per_s:.1} calls/s{}",
        load.cases,
        args.seed,
        args.concurrency,
        load.failed,
        load.seconds,
        all_calls - actions,
        load.cpu_seconds.map(|c| format!("; machine CPU {:.1} ms per case", c * 1000.0 / f64::from(load.cases))).unwrap_or_default()
    );
    println!("  load average at the end: {}", load.load_load_average);
    let busy_total: f64 = load.busy.iter().map(|g| g.cores).sum();
    println!(
        "  CPU during the load: {busy_total:.2} cores, {:.1} ms per case — {}",
        busy_total * load.seconds * 1000.0 / f64::from(load.cases),
        load.busy.iter().map(|g| format!("{} {:.2}", g.name, g.cores)).collect::<Vec<_>>().join(", ")
    );
    println!("  final states: {}", load.by_state.iter().map(|(s, n)| format!("{s} {n}")).collect::<Vec<_>>().join(", "));
    if let Some(f) = &load.first_failure {
        println!("  first failure: {f}");
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    println!("  {:<22} {:>8} {:>9} {:>9} {:>9} {:>12}", "gRPC method", "calls", "p50 ms", "p99 ms", "max ms", "UNAVAILABLE");
    for (method, m) in &load.calls {
        all.add(&m.took)?;
        println!(
            "  {method:<22} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>12}",
            m.took.len(),
            ms(m.took.value_at_quantile(0.5)),
            ms(m.took.value_at_quantile(0.99)),
            ms(m.took.max()),
            m.unavailable
        );
    }
    let p99 = ms(all.value_at_quantile(0.99));
    println!("  {:<22} {:>8} {:>9.1} {p99:>9.1} {:>9.1}", "all", all.len(), ms(all.value_at_quantile(0.5)), ms(all.max()));

    let lag_max = load.lag.as_ref().map_or(f64::NAN, |l| l.max);
    println!(
        "audit: tap backlog max {} messages ({:.0} s into the load); lag (recorded − occurred) {}; caught up {} after the last case",
        load.tap_max,
        load.tap_max_at,
        load.lag.as_ref().map_or_else(|| "n/a".into(), |l| format!("p99 {:.2} s, max {:.2} s over {} records", l.p99, l.max, l.records)),
        load.catch_up.map_or_else(|| "NOT".into(), |s| format!("{s:.1} s"))
    );
    // The gate as one agency sees it: the most closings of any one service's gate.
    let gate_closed = load.gate_closed.iter().map(|(_, n)| *n).max().unwrap_or(0);
    println!(
        "gate: closed {gate_closed} times (the most of any agency service's gate, from their logs: {}); SubmitReferral answered UNAVAILABLE {} times",
        load.gate_closed.iter().map(|(s, n)| format!("{s} {n}")).collect::<Vec<_>>().join(", "),
        load.submit_refused
    );
    let ratio = match (&append, bus) {
        (Some(a), Some(b)) => {
            println!(
                "isolation (stack stopped): audit append {:.0} envelopes/s ({} envelopes); bus end to end {b:.0} msg/s ({} envelopes); audit/bus {:.2} (target >= 1.0)",
                a.per_second(),
                a.envelopes,
                args.bus_messages,
                a.per_second() / b
            );
            a.per_second() / b
        }
        _ => f64::NAN,
    };
    println!(
        "system: {cases_per_s:.1} cases/s, {calls_per_s:.1} calls/s, rpc p99 {p99:.1} ms, audit max lag {lag_max:.1} s, gate closed {gate_closed}, audit/bus {ratio:.2}"
    );
    anyhow::ensure!(load.failed == 0, "{} of {} cases failed (first: {})", load.failed, load.cases, load.first_failure.unwrap_or_default());
    anyhow::ensure!(load.catch_up.is_some(), "the audit store did not catch up");
    Ok(())
}

/// The bus's end-to-end rate in isolation: `duijie-bench`'s throughput run, one round.
async fn bus_rate(args: &SystemArgs) -> anyhow::Result<f64> {
    let bus_args = BusArgs {
        messages: args.bus_messages,
        rounds: 1,
        size: 2048,
        confirm_window: 1000,
        producers: 4,
        stage_batch: 50,
        rate: 1000,
        seconds: 0,
        relay_batch: duijie_common::config::RelayConfig::default().batch_size,
        prefetch: duijie_common::config::ConsumerConfig::default().prefetch,
        consumer_batch: duijie_common::config::ConsumerConfig::default().batch_max,
        amqp_url: args.stack.amqp_url.clone(),
        database_url: args.stack.database_url.clone(),
    };
    let connector = duijie_common::amqp::Connector::new(duijie_common::config::AmqpConfig::new(args.stack.amqp_url.clone(), "duijie-sysbench"));
    let bus = BusUnderTest::new(&connector, &bus_args).await?;
    let rate = bus.throughput(&bus_args).await;
    bus.cleanup().await?;
    rate
}
