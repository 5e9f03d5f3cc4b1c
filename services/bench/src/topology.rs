//! The topology benchmark (`scripts/bench.sh --topology`, issue #15): the broker's side of the
//! bus does not grow with the agency directory. For each directory size N (1,000, 10,000 and
//! 100,000 agencies by default):
//!
//! 1. Generates a directory of N agencies over all five service kinds as a province-wide
//!    deployment would list them ([`generate`]: per county — a 6-digit county code — its court and
//!    a people's tribunal, procuratorate, five police stations, petition bureau and a town
//!    petition office, and 40 mediation bodies: the county centre, 13 town committees, 26 village
//!    committees; 80% mediation), writes it as the services read it and loads it with
//!    [`Directory::load`]: the time, and this process's resident memory with it held.
//! 2. Declares the topology under a fresh prefix ([`Topology::declare`], timed), then asks the
//!    broker (`rabbitmqctl`, which needs root or the rabbitmq user) how many queues and exchanges
//!    the prefix has, their memory, and the node's total memory (what `rabbitmqctl status`
//!    reports as "Total memory used").
//! 3. Starts the audit, court and mediation services as processes ([`crate::stack`]) on that
//!    prefix and that directory, with signing keys for the few agencies that take part only (a
//!    random court and `--targets` random mediation bodies, plus one for the warm-up): the
//!    services read a key when an agency first needs it. The court refers a case to each chosen
//!    body, one at a time, and the benchmark looks at the case as that body (`GetCase`, every
//!    `--poll-ms`) until it is `DELIVERED`: the referral arrived and was applied. Submit →
//!    delivered is timed.
//!
//! Then it prints the table and whether the queue count was the same (5 × P + T + 1) at every N.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use duijie_common::amqp::{Connector, Topology};
use duijie_common::config::{AmqpConfig, TopologyConfig};
use duijie_common::directory::Directory;
use duijie_domain::AgencyNode;
use duijie_proto::v1::cases_service_client::CasesServiceClient;
use duijie_proto::v1::referrals_service_client::ReferralsServiceClient;
use duijie_proto::v1::{AgencyKind, GetCaseRequest};
use tonic::transport::Channel as GrpcChannel;
use uuid::Uuid;

use crate::stack::{ProcessStack, StackArgs, StackOptions, StackPlan};

/// What the topology benchmark does.
#[derive(clap::Args, Debug, Clone)]
pub struct TopologyArgs {
    /// Directory sizes (agencies), measured in this order.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 10_000, 100_000])]
    pub nodes: Vec<usize>,
    /// Mediation bodies, chosen at random from the directory, a referral is sent to at each size
    /// (one more takes the warm-up referral).
    #[arg(long, default_value_t = 5)]
    pub targets: usize,
    /// Seed of the choice of court and mediation bodies.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How often the chosen body looks at the case until it is delivered (ms).
    #[arg(long, default_value_t = 5)]
    pub poll_ms: u64,
    /// The longest a referral may take to arrive, the wait for the audit gate included (s).
    #[arg(long, default_value_t = 60)]
    pub deliver_timeout_secs: u64,
    /// Keep the databases, queues and directory files afterwards (the logs in target/topobench/
    /// are always kept).
    #[arg(long)]
    pub keep: bool,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// What one directory size measured.
#[derive(Debug, Default)]
struct Figures {
    nodes: usize,
    mediation: usize,
    file_mb: f64,
    load_ms: f64,
    rss_mb: Option<f64>,
    rss_delta_mb: Option<f64>,
    /// This process's peak resident memory once loaded (parsing needs more than the result).
    rss_peak_mb: Option<f64>,
    declare_ms: f64,
    /// Right after the declaration.
    broker: Option<BrokerFigures>,
    /// With the services running on the directory, after the referrals.
    running: Option<BrokerFigures>,
    /// Spawn → listening, per agency service (migrations, the directory, the keys there).
    start_ms: Vec<(&'static str, f64)>,
    /// The mediation service's resident memory once the referrals were delivered.
    service_rss_mb: Vec<(&'static str, Option<f64>)>,
    warmup_ms: f64,
    delivered_ms: Vec<(AgencyNode, f64)>,
}

/// The broker's figures for one prefix.
#[derive(Debug, Clone)]
struct BrokerFigures {
    queues: usize,
    exchanges: usize,
    /// Consumers on the prefix's queues.
    consumers: usize,
    /// The memory of the prefix's queues (their processes), as `list_queues memory` reports it.
    queues_kb: f64,
    /// The node's total memory (`rabbitmqctl status`, "Total memory used": its OS process's RSS).
    total_mb: f64,
}

/// Runs the topology benchmark and prints its figures.
pub async fn run(args: &TopologyArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.nodes.is_empty(), "--nodes: at least one directory size");
    anyhow::ensure!(args.nodes.iter().all(|&n| n >= 100), "--nodes: at least 100 agencies each (a county's share of every kind)");
    let opts = args.stack.options()?;
    let root = opts.root.clone();
    let example = root.join("services/cli/examples/referral.yaml");
    let template = duijie_cli::send::read_file(&example).map_err(|e| anyhow::anyhow!("{}: {e}", example.display()))?;
    let run_id = Uuid::new_v4().simple().to_string()[..8].to_owned();
    let work = root.join("target").join("topobench").join(format!("directories-{run_id}"));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let topology_cfg = TopologyConfig::default();
    let expected = 5 * usize::from(topology_cfg.partitions) + usize::from(topology_cfg.tap_partitions) + 1;
    println!(
        "duijie topology benchmark, {} UTC; {} CPUs, load average {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M"),
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        load_average()
    );
    println!(
        "topology: {} inbox partitions per service kind × 5 kinds + {} audit tap partitions + the dead queue = {expected} queues, whatever the directory",
        topology_cfg.partitions, topology_cfg.tap_partitions
    );
    let connector = Connector::new(AmqpConfig::new(args.stack.amqp_url.clone(), "duijie-topobench"));
    let mut all = Vec::new();
    for &n in &args.nodes {
        println!("\n== {n} agencies ==");
        let f = measure(args, &opts, &connector, &template, &work, &run_id, n).await.with_context(|| format!("at {n} agencies"))?;
        all.push(f);
    }
    if !args.keep {
        let _ = std::fs::remove_dir_all(&work);
    }
    report(&all, expected);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    args: &TopologyArgs,
    opts: &StackOptions,
    connector: &Connector,
    template: &duijie_cli::send::ReferralFile,
    work: &Path,
    run_id: &str,
    n: usize,
) -> anyhow::Result<Figures> {
    let mut f = Figures { nodes: n, ..Default::default() };
    // 1. The directory: written as the services read it, loaded as they load it.
    let path = work.join(format!("directory-{n}.yaml"));
    let entries = generate(n);
    write_directory(&path, &entries)?;
    drop(entries);
    f.file_mb = std::fs::metadata(&path)?.len() as f64 / 1e6;
    let rss_before = rss_mb(std::process::id());
    let started = Instant::now();
    let directory = Directory::load(&path)?;
    f.load_ms = ms(started.elapsed());
    f.rss_mb = rss_mb(std::process::id());
    f.rss_peak_mb = proc_status_mb(std::process::id(), "VmHWM:");
    f.rss_delta_mb = f.rss_mb.zip(rss_before).map(|(a, b)| a - b);
    let by_kind = |k: AgencyKind| directory.entries().filter(|(id, _)| id.kind() == k).map(|(id, _)| id.clone()).collect::<Vec<_>>();
    let courts = by_kind(AgencyKind::Court);
    let bodies = by_kind(AgencyKind::Mediation);
    f.mediation = bodies.len();
    anyhow::ensure!(directory.entries().count() == n, "the directory has {} agencies, {n} generated", directory.entries().count());
    anyhow::ensure!(bodies.len() > args.targets, "{} mediation bodies for {} targets and the warm-up", bodies.len(), args.targets);
    let mut rng = SplitMix(args.seed ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let court = courts[rng.below(courts.len())].clone();
    let mut chosen: Vec<AgencyNode> = Vec::new();
    while chosen.len() < args.targets + 1 {
        let b = &bodies[rng.below(bodies.len())];
        if !chosen.contains(b) {
            chosen.push(b.clone());
        }
    }
    let kinds: Vec<String> = duijie_common::amqp::KINDS.iter().map(|k| format!("{} {}", k.as_str(), directory.entries().filter(|(id, _)| id.kind() == *k).count())).collect();
    println!(
        "directory: {n} agencies ({}), {:.1} MB; Directory::load {:.0} ms, this process {} MB resident ({} MB more; peak so far {} MB)",
        kinds.join(", "),
        f.file_mb,
        f.load_ms,
        opt(f.rss_mb, 1),
        opt(f.rss_delta_mb, 1),
        opt(f.rss_peak_mb, 1)
    );
    drop(directory);

    // 2. The topology under a fresh prefix, and what the broker holds for it.
    let prefix = format!("topobench{run_id}n{n}");
    let topology = Topology::new(TopologyConfig { prefix: prefix.clone(), ..Default::default() });
    let conn = connector.connect("topobench declare").await?;
    let ch = conn.create_channel().await?;
    let started = Instant::now();
    let declared = topology.declare(&ch).await;
    f.declare_ms = ms(started.elapsed());
    let _ = ch.close(200, "declared".into()).await;
    let _ = conn.close(200, "declared".into()).await;
    let outcome = async {
        declared?;
        f.broker = match broker_figures(&prefix).await {
            Ok(b) => Some(b),
            Err(e) => {
                println!("broker: not measured: {e:#}");
                None
            }
        };
        if let Some(b) = &f.broker {
            println!(
                "topology {prefix}: declared in {:.0} ms; the broker holds {} queues and {} exchanges for it ({:.0} KB in its queues); node total memory {:.1} MB",
                f.declare_ms, b.queues, b.exchanges, b.queues_kb, b.total_mb
            );
        }
        // 3. A referral to any node arrives and is applied.
        let mut nodes = vec![court.clone()];
        nodes.extend(chosen.iter().cloned());
        let plan = StackPlan { name: "topobench", services: vec!["audit", "court", "mediation"], nodes, directory: Some(path.clone()), prefix: Some(prefix.clone()) };
        let mut stack = ProcessStack::start_plan(opts, &plan).await?;
        f.start_ms = stack.services.iter().filter(|s| s.name != "audit").map(|s| (s.name, ms(s.started))).collect();
        println!(
            "stack: audit, court, mediation on {n} agencies (logs in {}); started in {}",
            stack.dir.display(),
            f.start_ms.iter().map(|(s, t)| format!("{s} {t:.0} ms")).collect::<Vec<_>>().join(", ")
        );
        let referred = refer(args, &stack, template, &court, &chosen, &mut f).await;
        if referred.is_ok() {
            // Every partition of the running services' kinds and of the tap has its consumer
            // (they connected before the referrals went through); rabbitmqctl has been seen to
            // count fewer for a moment on a busy machine, so it is asked again a few times.
            let consumers = plan.services.iter().filter(|s| **s != "audit").count() * usize::from(topology.config().partitions)
                + usize::from(topology.config().tap_partitions);
            for _ in 0..5 {
                f.running = broker_figures(&prefix).await.ok();
                if f.running.as_ref().is_none_or(|b| b.consumers >= consumers) {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if let Some(b) = &f.running {
                println!(
                    "with the services running on {n} agencies: {} queues, {} consumers on them ({:.0} KB in its queues); node total memory {:.1} MB",
                    b.queues, b.consumers, b.queues_kb, b.total_mb
                );
            }
        }
        f.service_rss_mb = stack.services.iter().filter(|s| s.name != "audit").map(|s| (s.name, rss_mb(s.pid))).collect();
        println!(
            "services resident: {}",
            f.service_rss_mb.iter().map(|(s, r)| format!("{s} {} MB", opt(*r, 1))).collect::<Vec<_>>().join(", ")
        );
        stack.stop().await;
        if args.keep {
            println!("kept: databases topobench_{}_*, queues {prefix}.*", stack.id);
        } else {
            stack.cleanup().await;
        }
        referred
    }
    .await;
    if !args.keep {
        // The stack deleted it already unless it did not start; deleting again is harmless.
        if let Err(e) = delete_topology(connector, &topology).await {
            eprintln!("topobench: deleting the queues of prefix {prefix}: {e:#}");
        }
    }
    outcome?;
    Ok(f)
}

/// The court refers a case to each chosen body in turn (the first as warm-up: connections, the
/// audit gate open); each is timed from submit to delivered as the body sees it.
async fn refer(
    args: &TopologyArgs,
    stack: &ProcessStack,
    template: &duijie_cli::send::ReferralFile,
    court: &AgencyNode,
    chosen: &[AgencyNode],
    f: &mut Figures,
) -> anyhow::Result<()> {
    let channel = |who: &AgencyNode| -> anyhow::Result<GrpcChannel> {
        let service = stack.service(who.kind().as_str())?;
        duijie_common::client::channel(&service.addr.to_string(), "localhost", &stack.ca.agency(who)?)
    };
    let court_ch = channel(court)?;
    let year = chrono::Utc::now().format("%Y");
    for (i, body) in chosen.iter().enumerate() {
        let mut file = template.clone();
        file.from = court.to_string();
        file.to = Some(body.to_string());
        file.case_code = format!("JF-{}-{year}-T{}-{i:02}", court.code(), stack.id);
        file.client_request_id = None;
        file.registered_at = Some((chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339());
        let submission = file.to_submission().map_err(|e| anyhow::anyhow!("the referral: {e}"))?;
        let body_ch = channel(body)?;
        let deadline = Instant::now() + Duration::from_secs(args.deliver_timeout_secs);
        let started = Instant::now();
        let case_id = submit(&court_ch, submission.request, deadline).await.with_context(|| format!("{court} referring a case to {body}"))?;
        let state = delivered(&body_ch, &case_id, deadline, Duration::from_millis(args.poll_ms.max(1))).await.with_context(|| format!("the case {case_id} at {body}"))?;
        let took = ms(started.elapsed());
        if i == 0 {
            f.warmup_ms = took;
            println!("referral {court} → {body} (warm-up: connections, the audit gate): {state} after {took:.1} ms");
        } else {
            f.delivered_ms.push((body.clone(), took));
            println!("referral {court} → {body}: {state} after {took:.1} ms");
        }
    }
    Ok(())
}

/// Submits `req` as the court, again while the audit gate is closed (`UNAVAILABLE`); the case id.
async fn submit(ch: &GrpcChannel, req: duijie_proto::v1::SubmitReferralRequest, deadline: Instant) -> anyhow::Result<String> {
    let mut client = ReferralsServiceClient::new(ch.clone());
    loop {
        match client.submit_referral(req.clone()).await {
            Ok(r) => return r.into_inner().case.map(|c| c.case_id).context("SubmitReferral answered no case"),
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(s) => anyhow::bail!("SubmitReferral: {}: {}", s.code(), s.message()),
        }
    }
}

/// Looks at the case as the recipient until it is `DELIVERED`; its state then.
async fn delivered(ch: &GrpcChannel, case_id: &str, deadline: Instant, every: Duration) -> anyhow::Result<String> {
    let mut client = CasesServiceClient::new(ch.clone());
    loop {
        let last = match client.get_case(GetCaseRequest { case_id: case_id.to_owned() }).await {
            Ok(r) => match r.into_inner().case {
                Some(c) if c.state == "DELIVERED" => return Ok(c.state),
                Some(c) => format!("state {}", c.state),
                None => "GetCase answered no case".into(),
            },
            Err(s) => format!("{}: {}", s.code(), s.message()),
        };
        anyhow::ensure!(Instant::now() < deadline, "not delivered in time (last: {last})");
        tokio::time::sleep(every).await;
    }
}

async fn delete_topology(connector: &Connector, topology: &Topology) -> anyhow::Result<()> {
    let conn = connector.connect("topobench cleanup").await?;
    let ch = conn.create_channel().await?;
    topology.delete(&ch).await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

/// One agency of a generated directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub kind: AgencyKind,
    pub code: String,
    pub name: String,
}

/// Province-level codes (GB/T 2260): a county code is province, prefecture, county, two digits each.
const PROVINCES: [u32; 31] = [11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52, 53, 54, 61, 62, 63, 64, 65];
const PLACE_A: [&str; 24] = ["安", "平", "长", "永", "新", "清", "东", "西", "南", "北", "龙", "凤", "石", "白", "青", "金", "宁", "兴", "华", "阳", "丰", "和", "泰", "云"];
const PLACE_B: [&str; 20] = ["山", "河", "溪", "桥", "塘", "江", "湖", "岭", "坪", "源", "田", "林", "口", "州", "陵", "乐", "安", "城", "水", "峰"];

/// The agencies of one county, in the order [`generate`] lists them.
pub const PER_COUNTY: usize = 50;
const TOWNS: usize = 13;
const VILLAGES_PER_TOWN: usize = 2;
const POLICE_STATIONS: usize = 5;

/// The county code of the `i`-th county, e.g. `431003`: distinct for every `i` below 31 × 15 × 98.
pub fn county_code(i: usize) -> String {
    let province = PROVINCES[i % PROVINCES.len()];
    let prefecture = 1 + (i / PROVINCES.len()) % 15;
    let county = 2 + i / (PROVINCES.len() * 15);
    format!("{province:02}{prefecture:02}{county:02}")
}

fn place(seed: usize) -> String {
    format!("{}{}", PLACE_A[seed % PLACE_A.len()], PLACE_B[(seed / PLACE_A.len() + seed * 7) % PLACE_B.len()])
}

/// The first `n` agencies of a deployment, county after county, [`PER_COUNTY`] each: the court and
/// a people's tribunal, the procuratorate, police stations, the petition bureau and a town
/// petition office (10), and 40 mediation bodies — the county centre, the town committees
/// (`<county>-1TT`) and two village committees under each town (`<county>-1TT-VV`): 80%
/// mediation.
pub fn generate(n: usize) -> Vec<Generated> {
    let mut out = Vec::with_capacity(n);
    let mut county = 0;
    while out.len() < n {
        let c = county_code(county);
        let cname = format!("{}{}", place(county * 31 + 5), if county % 3 == 0 { "区" } else { "县" });
        let town = |t: usize| place(county * 131 + t * 17 + 3);
        let mut add = |kind: AgencyKind, code: String, name: String| out.push(Generated { kind, code, name });
        add(AgencyKind::Court, c.clone(), format!("{cname}人民法院"));
        add(AgencyKind::Court, format!("{c}-01"), format!("{cname}人民法院{}人民法庭", town(1)));
        add(AgencyKind::Procuratorate, c.clone(), format!("{cname}人民检察院"));
        for p in 1..=POLICE_STATIONS {
            add(AgencyKind::Police, format!("{c}-{p:02}"), format!("{cname}公安局{}派出所", town(p)));
        }
        add(AgencyKind::Petition, c.clone(), format!("{cname}信访局"));
        add(AgencyKind::Petition, format!("{c}-101"), format!("{}镇信访办", town(1)));
        add(AgencyKind::Mediation, c.clone(), format!("{cname}矛盾纠纷调解中心"));
        for t in 1..=TOWNS {
            add(AgencyKind::Mediation, format!("{c}-1{t:02}"), format!("{}镇人民调解委员会", town(t)));
        }
        for t in 1..=TOWNS {
            for v in 1..=VILLAGES_PER_TOWN {
                add(AgencyKind::Mediation, format!("{c}-1{t:02}-{v:02}"), format!("{}村人民调解委员会", place(county * 977 + t * 29 + v * 5)));
            }
        }
        county += 1;
    }
    out.truncate(n);
    out
}

/// Writes `entries` as an agency directory file (`agencies: [{id, name}, …]`).
fn write_directory(path: &Path, entries: &[Generated]) -> anyhow::Result<()> {
    let mut text = String::with_capacity(entries.len() * 80);
    let _ = writeln!(text, "# Generated by duijie-bench --topology: {} agencies.\nagencies:", entries.len());
    for e in entries {
        let _ = writeln!(text, "  - {{ id: \"{}:{}\", name: \"{}\" }}", e.kind.as_str(), e.code, e.name);
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// The broker's queues and exchanges of `prefix`, their memory, and the node's total memory.
async fn broker_figures(prefix: &str) -> anyhow::Result<BrokerFigures> {
    let mine = |name: &str| name.starts_with(&format!("{prefix}."));
    let queues = rabbitmqctl(&["list_queues", "-q", "--no-table-headers", "name", "memory", "consumers"]).await?;
    let (mut count, mut bytes, mut consumers) = (0, 0.0, 0);
    for line in queues.lines() {
        let mut cols = line.split_whitespace();
        if let (Some(name), Some(memory), Some(c)) = (cols.next(), cols.next(), cols.next())
            && mine(name)
        {
            count += 1;
            bytes += memory.parse::<f64>().unwrap_or(0.0);
            consumers += c.parse::<usize>().unwrap_or(0);
        }
    }
    let exchanges = rabbitmqctl(&["list_exchanges", "-q", "--no-table-headers", "name"]).await?.lines().filter(|l| mine(l.trim())).count();
    // What `rabbitmqctl status` prints as "Total memory used" (the node's RSS), in bytes.
    let total = rabbitmqctl(&["eval", "-q", "vm_memory_monitor:get_process_memory()."]).await?;
    let total: f64 = total.trim().parse().with_context(|| format!("the node's memory: {total:?}"))?;
    Ok(BrokerFigures { queues: count, exchanges, consumers, queues_kb: bytes / 1e3, total_mb: total / 1e6 })
}

async fn rabbitmqctl(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("rabbitmqctl").args(args).output().await.context("running rabbitmqctl (is RabbitMQ installed here?)")?;
    anyhow::ensure!(
        out.status.success(),
        "rabbitmqctl {} failed ({}; it needs root or the rabbitmq user): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn report(all: &[Figures], expected: usize) {
    println!("\n== topology benchmark ==");
    println!("agencies: the directory's size; load: Directory::load of its file; RSS: this process with it loaded (+ what loading added);");
    println!("declare: Topology::declare under a fresh prefix; queues, exchanges, consumers, queue KB (their memory) for that prefix and the");
    println!("broker node's total memory: right after the declaration / with the audit, court and mediation services running on the");
    println!("directory; start: a service's start until it listens; delivered: the court's SubmitReferral until the chosen body's GetCase");
    println!("shows DELIVERED, the slowest of the chosen bodies (the warm-up, which also waits for the audit gate to open, apart).");
    let header = [
        ("agencies", ""),
        ("file", "MB"),
        ("load", "ms"),
        ("RSS MB", "(+dir)"),
        ("declare", "ms"),
        ("queues", ""),
        ("exch.", ""),
        ("consumers", ""),
        ("queue KB", ""),
        ("broker MB", ""),
        ("start ms", "court/med."),
        ("RSS MB", "court/med."),
        ("warm-up", "ms"),
        ("delivered", "ms (max)"),
    ];
    let widths = [8, 5, 6, 10, 7, 7, 5, 9, 11, 13, 11, 10, 8, 9];
    let line = |cells: Vec<String>| cells.iter().zip(widths).map(|(c, w)| format!("{c:>w$}")).collect::<Vec<_>>().join(" ");
    println!("{}", line(header.iter().map(|h| h.0.to_owned()).collect()));
    println!("{}", line(header.iter().map(|h| h.1.to_owned()).collect()));
    let both = |a: &Option<BrokerFigures>, b: &Option<BrokerFigures>, g: &dyn Fn(&BrokerFigures) -> String| {
        let one = |x: &Option<BrokerFigures>| x.as_ref().map_or_else(|| "n/a".to_owned(), g);
        format!("{}/{}", one(a), one(b))
    };
    for f in all {
        let max = f.delivered_ms.iter().map(|(_, t)| *t).fold(0.0_f64, f64::max);
        println!(
            "{}",
            line(vec![
                f.nodes.to_string(),
                format!("{:.1}", f.file_mb),
                format!("{:.0}", f.load_ms),
                format!("{}(+{})", opt(f.rss_mb, 0), opt(f.rss_delta_mb, 0)),
                format!("{:.0}", f.declare_ms),
                both(&f.broker, &f.running, &|b| b.queues.to_string()),
                f.broker.as_ref().map_or_else(|| "n/a".into(), |b| b.exchanges.to_string()),
                both(&f.broker, &f.running, &|b| b.consumers.to_string()),
                both(&f.broker, &f.running, &|b| format!("{:.0}", b.queues_kb)),
                both(&f.broker, &f.running, &|b| format!("{:.0}", b.total_mb)),
                f.start_ms.iter().map(|(_, t)| format!("{t:.0}")).collect::<Vec<_>>().join("/"),
                f.service_rss_mb.iter().map(|(_, r)| opt(*r, 0)).collect::<Vec<_>>().join("/"),
                format!("{:.0}", f.warmup_ms),
                format!("{max:.1}"),
            ])
        );
    }
    let counts: Vec<Option<usize>> = all.iter().flat_map(|f| [f.broker.as_ref().map(|b| b.queues), f.running.as_ref().map(|b| b.queues)]).collect();
    let list = counts.iter().map(|c| c.map_or_else(|| "n/a".to_owned(), |c| c.to_string())).collect::<Vec<_>>().join(", ");
    let (first, last) = (all[0].nodes, all[all.len() - 1].nodes);
    if counts.iter().all(|c| *c == Some(expected)) {
        println!("queues for the prefix: {expected} at every size, declared and running ({list}): the same from {first} to {last} agencies");
    } else {
        println!("queues for the prefix: {list}; NOT {expected} at every size");
    }
    let delivered: usize = all.iter().map(|f| f.delivered_ms.len()).sum();
    println!("referrals: {delivered} to randomly chosen mediation bodies (and one warm-up per size), every one delivered and applied (DELIVERED at the recipient)");
    let per = |g: &dyn Fn(&Figures) -> String| all.iter().map(g).collect::<Vec<_>>().join("/");
    let broker = |f: &Figures, g: &dyn Fn(&BrokerFigures) -> String| f.broker.as_ref().map_or_else(|| "n/a".to_owned(), g);
    println!(
        "topology: agencies {}, queues {}, declare ms {}, broker MB {}, delivered max ms {}",
        per(&|f| f.nodes.to_string()),
        per(&|f| broker(f, &|b| b.queues.to_string())),
        per(&|f| format!("{:.0}", f.declare_ms)),
        per(&|f| broker(f, &|b| format!("{:.1}", b.total_mb))),
        per(&|f| format!("{:.1}", f.delivered_ms.iter().map(|(_, t)| *t).fold(0.0_f64, f64::max))),
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.decimals$}"))
}

/// A process's resident memory (`VmRSS` of `/proc/<pid>/status`), MB.
fn rss_mb(pid: u32) -> Option<f64> {
    proc_status_mb(pid, "VmRSS:")
}

/// A `kB` figure of `/proc/<pid>/status` (e.g. `VmHWM:`, the peak resident memory), MB.
fn proc_status_mb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix(field))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1e3)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_else(|_| "n/a".into())
}

/// A small deterministic generator (SplitMix64): the same seed chooses the same agencies.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (> 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_directory_reads_with_every_kind_and_mostly_mediation() {
        let tmp = std::env::temp_dir().join(format!("topobench-test-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("{e}"));
        let path = tmp.join("directory.yaml");
        let entries = generate(1_234);
        write_directory(&path, &entries).unwrap_or_else(|e| panic!("{e:#}"));
        let d = Directory::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
        let _ = std::fs::remove_dir_all(&tmp);
        assert_eq!(d.entries().count(), 1_234, "every generated agency once");
        for k in duijie_common::amqp::KINDS {
            assert!(d.entries().any(|(id, _)| id.kind() == k), "{} is there", k.as_str());
        }
        let mediation = d.entries().filter(|(id, _)| id.kind() == AgencyKind::Mediation).count();
        assert!((0.78..=0.82).contains(&(mediation as f64 / 1_234.0)), "{mediation} of 1,234 are mediation bodies");
        assert_eq!(county_code(0), "110102");
        let codes: std::collections::BTreeSet<String> = (0..3_000).map(county_code).collect();
        assert_eq!(codes.len(), 3_000, "county codes are distinct");
    }
}

