//! Reading the audit store (the `AuditService` gRPC service): `timeline`, `watch`, `open`, `overdue`,
//! `stats`, `verify`. Adapted from `duijie-bus audit`, with JSON output and exit codes.

use duijie_domain::lifecycle::CaseState;
use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{Datelike as _, NaiveDate};
use clap::Args;
use duijie_proto::v1::{
    AgencyRef, AuditCase, AuditRecord, GetTimelineResponse, Channel, GetTimelineRequest, ListOpenHandoffsRequest, ListOverdueRequest,
    GetStatisticsRequest, VerifyRequest, Anchor, ChainHead, GetAnchorRequest, VerifyWithProgressRequest,
};
use duijie_proto::v1::verify_with_progress_response::Event;
use duijie_common::envelope::{from_timestamp, timestamp};
use duijie_common::signing::Verifier;
use prost::Message as _;
use std::path::Path;
use serde_json::{Value, json};

use crate::error::{CliError, CliResult, StatusContext as _};
use crate::{Ctx, output};

/// `duijie watch`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    /// A case id (UUID) or a case code: follow it in the audit store. A case the audit store has
    /// not recorded within 10 s is an error (exit 3, no such case). Without it: follow every case
    /// of the `--as` agency as its own service sees them change (its live feed), resuming from
    /// the last cursor whenever the stream breaks.
    pub case: Option<String>,
    /// Without a case: resume after this cursor (printed with each change in `--json`); `0`
    /// from the agency's first message; absent, from now.
    #[arg(long, conflicts_with_all = ["case", "until", "interval_ms"])]
    pub cursor: Option<String>,
    /// Without a case: stop (exit 0) after this many changes.
    #[arg(long, conflicts_with = "case")]
    pub count: Option<u64>,
    /// How often to ask the audit store (milliseconds).
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Stop (exit 0) once the case is in this state, e.g. SETTLED; any case, `-` for `_`
    /// (`closed` = CLOSED, `in-mediation` = IN_MEDIATION). A case that ends (CLOSED or CANCELLED)
    /// in another state can no longer get there: exit 3. Without it, watch until interrupted or
    /// timed out.
    #[arg(long, value_name = "STATE", value_parser = parse_until)]
    pub until: Option<String>,
    /// Give up after this many seconds while the case is still open (exit 4: retry later).
    #[arg(long)]
    pub timeout_secs: Option<u64>,
    /// How long an unknown case may stay unknown before it is an error (a referral just sent may
    /// not be recorded yet).
    #[arg(long, default_value_t = 10, hide = true)]
    pub not_found_grace_secs: u64,
}

/// `duijie stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// First day of the period (China time); default 1 January of this year.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub from: Option<NaiveDate>,
    /// Day after the period (exclusive); default 1 January of next year.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub to: Option<NaiveDate>,
    /// Agency code prefix, e.g. 431003 (地区).
    #[arg(long, default_value = "")]
    pub region: String,
    /// court, police, petition or procuratorate (渠道).
    #[arg(long)]
    pub channel: Option<String>,
    /// One agency, as referrer or holder (kind:code) (机构).
    #[arg(long, value_name = "KIND:CODE")]
    pub agency: Option<duijie_domain::AgencyNode>,
}

fn timeline_request(case: &str) -> GetTimelineRequest {
    if output::is_case_id(case) {
        GetTimelineRequest { case_id: case.trim().to_owned(), ..Default::default() }
    } else {
        GetTimelineRequest { case_code: case.trim().to_owned(), ..Default::default() }
    }
}

fn case_json(c: &AuditCase) -> Value {
    json!({
        "case_id": c.case_id,
        "case_code": c.case_code,
        "channel": output::channel(c.channel),
        "referrer": output::agency(c.referrer.as_ref()),
        "holder": output::agency(c.holder.as_ref()),
        "state": c.state,
        "state_since": output::time_json(c.state_since.as_ref()),
        "received_at": output::time_json(c.received_at.as_ref()),
        "closed_at": output::time_json(c.closed_at.as_ref()),
        "overdue": c.overdue,
        "deadlines": c.deadlines.iter().map(|d| json!({
            "limit": d.limit().as_str_name(),
            "legal_basis": d.legal_basis,
            "started_at": output::time_json(d.started_at.as_ref()),
            "due_at": output::time_json(d.due_at.as_ref()),
            "met_at": output::time_json(d.met_at.as_ref()),
            "overdue": d.overdue,
        })).collect::<Vec<_>>(),
    })
}

/// A record's one-line summary: rendered from its typed message, or the audit store's own line
/// when it carries none.
fn summary(r: &AuditRecord) -> String {
    match r.message.as_ref().and_then(|m| m.payload.as_ref()) {
        Some(p) => duijie_domain::summary::english(p),
        None => r.summary.clone(),
    }
}

fn record_json(r: &AuditRecord) -> Value {
    json!({
        "seq": r.seq,
        "case_seq": r.case_seq,
        "message_id": r.message_id,
        "kind": output::kind(r.kind),
        "sender": output::agency(r.sender.as_ref()),
        "recipient": output::agency(r.recipient.as_ref()),
        "occurred_at": output::time_json(r.occurred_at.as_ref()),
        "recorded_at": output::time_json(r.recorded_at.as_ref()),
        "delivered_at": output::time_json(r.delivered_at.as_ref()),
        "causation_id": r.causation_id,
        "trace_id": r.trace_id,
        "state_after": r.state_after,
        "summary": summary(r),
        "hash": r.hash_hex,
    })
}

fn print_case_header(c: &AuditCase) {
    println!("案件 case    {} ({})", c.case_code, c.case_id);
    println!("渠道 channel {} {}   移送 referrer {}   承办 holder {}", output::channel_zh(c.channel), output::channel(c.channel), output::agency(c.referrer.as_ref()), output::agency(c.holder.as_ref()));
    println!(
        "状态 state   {} since {}   收案 received {}   结案 closed {}",
        c.state,
        output::time(c.state_since.as_ref()),
        output::time(c.received_at.as_ref()),
        output::time(c.closed_at.as_ref())
    );
    for d in &c.deadlines {
        let status = if d.overdue { "超期 OVERDUE" } else if d.met_at.is_some() { "met" } else { "running" };
        println!("期限 limit   {:<42} due {}  {status}", d.limit().as_str_name(), output::time(d.due_at.as_ref()));
    }
}

fn print_record_heading() {
    println!("{:>6} {:>4}  {:<19}  {:<24} {:<24} {:<24} {:<19}  state after / summary", "seq", "#", "occurred", "from", "to", "message", "delivered");
}

fn print_record(r: &AuditRecord) {
    println!(
        "{:>6} {:>4}  {:<19}  {:<24} {:<24} {:<24} {:<19}  {}  {}",
        r.seq,
        r.case_seq,
        output::time(r.occurred_at.as_ref()),
        output::agency(r.sender.as_ref()),
        output::agency(r.recipient.as_ref()),
        output::kind(r.kind),
        output::time(r.delivered_at.as_ref()),
        r.state_after,
        summary(r)
    );
}

/// `duijie timeline CASE`.
pub async fn timeline(ctx: &Ctx, case: &str) -> CliResult<()> {
    let t = ctx.audit()?.get_timeline(timeline_request(case)).await.or_refused(&format!("reading the timeline of {case}"))?.into_inner();
    if ctx.json {
        output::print_json(&json!({
            "case": t.case.as_ref().map(case_json),
            "records": t.records.iter().map(record_json).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    if let Some(c) = &t.case {
        print_case_header(c);
    }
    print_record_heading();
    for r in &t.records {
        print_record(r);
    }
    Ok(())
}

/// The states of a case, as the services write them.
fn case_states() -> impl Iterator<Item = &'static str> {
    CaseState::ALL.into_iter().map(CaseState::as_str)
}

/// After these nothing more happens to a case.
fn is_final(state: &str) -> bool {
    CaseState::parse(state).is_some_and(CaseState::is_final)
}

/// The state `--until` names, as the services write states (`closed` → `CLOSED`).
pub fn until_state(s: &str) -> String {
    s.trim().to_ascii_uppercase().replace(['-', ' '], "_")
}

/// Parses `--until`: one of [`CASE_STATES`], in any case.
pub fn parse_until(s: &str) -> Result<String, String> {
    let state = until_state(s);
    if case_states().any(|s| s == state) {
        Ok(state)
    } else {
        Err(format!("no case state {s:?}; one of {} (lower case is fine, e.g. closed)", case_states().collect::<Vec<_>>().join(" ")))
    }
}

/// `duijie watch CASE`: polls the timeline and prints what is new. Exit 0 when the case reaches
/// `--until`; exit 3 when it ended (CLOSED or CANCELLED) in another state, or when no such case
/// is recorded within the grace period; exit 4 on `--timeout-secs` while it is still open.
pub async fn watch(ctx: &Ctx, args: WatchArgs) -> CliResult<()> {
    let Some(case) = args.case.clone() else {
        if args.until.is_some() {
            return Err(CliError::Usage("--until needs a case".into()));
        }
        return crate::feed::follow(ctx, crate::feed::FeedArgs { cursor: args.cursor, count: args.count, timeout_secs: args.timeout_secs }).await;
    };
    let mut client = ctx.audit()?;
    // Validated by clap already; again here for callers building WatchArgs themselves.
    let until = args.until.as_deref().map(parse_until).transpose().map_err(|e| CliError::Usage(format!("--until: {e}")))?;
    let deadline = args.timeout_secs.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let grace = Duration::from_secs(args.not_found_grace_secs);
    let interval = Duration::from_millis(args.interval_ms.max(50));
    let mut printed: BTreeSet<u64> = BTreeSet::new();
    let mut header_done = false;
    let mut last_state: Option<String> = None;
    let mut said_waiting = false;
    // Since when the audit store has answered NOT_FOUND without a break.
    let mut not_found_since: Option<tokio::time::Instant> = None;
    loop {
        match client.get_timeline(timeline_request(&case)).await {
            Ok(t) => {
                not_found_since = None;
                let t: GetTimelineResponse = t.into_inner();
                if let Some(c) = &t.case {
                    if !header_done {
                        if ctx.json {
                            println!("{}", json!({ "case": case_json(c) }));
                        } else {
                            print_case_header(c);
                            print_record_heading();
                        }
                        header_done = true;
                    }
                    for r in &t.records {
                        // insert() is false for a record printed before
                        if !printed.insert(r.seq) {
                            continue;
                        }
                        if ctx.json {
                            println!("{}", json!({ "record": record_json(r) }));
                        } else {
                            print_record(r);
                        }
                    }
                    if last_state.as_deref().is_some_and(|s| s != c.state) {
                        if ctx.json {
                            println!("{}", json!({ "state": c.state, "holder": output::agency(c.holder.as_ref()) }));
                        } else {
                            println!("── state {} → {}  (holder {})", last_state.as_deref().unwrap_or("-"), c.state, output::agency(c.holder.as_ref()));
                        }
                    }
                    last_state = Some(c.state.clone());
                    if let Some(u) = until.as_deref() {
                        if u == c.state {
                            return Ok(());
                        }
                        if is_final(&c.state) {
                            return Err(CliError::Refused(format!("case {} ended in {}: it can no longer reach {u}", case, c.state)));
                        }
                    }
                }
            }
            // Not recorded yet (a watch may start before the referral reaches the audit store):
            // keep watching for a while, then it is no such case.
            Err(s) if s.code() == tonic::Code::NotFound => {
                let now = tokio::time::Instant::now();
                let since = *not_found_since.get_or_insert(now);
                if now.duration_since(since) >= grace {
                    return Err(CliError::Refused(format!(
                        "no such case {}: not recorded in the audit store after {} s ({})",
                        case,
                        grace.as_secs(),
                        s.message()
                    )));
                }
                if !said_waiting {
                    eprintln!("duijie: waiting for case {}: {}", case, s.message());
                    said_waiting = true;
                }
            }
            // The audit service restarting: keep watching.
            Err(s) if s.code() == tonic::Code::Unavailable => {
                if !said_waiting {
                    eprintln!("duijie: waiting for case {}: {}", case, s.message());
                    said_waiting = true;
                }
            }
            Err(s) => return Err(CliError::from_status(&format!("watching {}", case), &s)),
        }
        if let Some(d) = deadline {
            let now = tokio::time::Instant::now();
            if now >= d {
                let state = last_state.as_deref().unwrap_or("not recorded");
                let goal = until.as_deref().map(|u| format!(", not {u}")).unwrap_or_default();
                return Err(CliError::Unavailable(format!("timed out after {} s watching {}: state {state}{goal}", args.timeout_secs.unwrap_or(0), case)));
            }
            tokio::time::sleep(interval.min(d - now)).await;
        } else {
            tokio::time::sleep(interval).await;
        }
    }
}

/// `duijie overdue`.
pub async fn overdue(ctx: &Ctx) -> CliResult<()> {
    let r = ctx.audit()?.list_overdue(ListOverdueRequest { limit: 1000 }).await.or_refused("listing overdue cases")?.into_inner();
    if ctx.json {
        output::print_json(&Value::Array(r.cases.iter().map(case_json).collect()));
        return Ok(());
    }
    println!("{:<26} {:<16} {:<26} {:<22} 超期期限 overdue limits", "案件 case", "渠道 channel", "承办 holder", "状态 state");
    for case in &r.cases {
        let late: Vec<&str> = case.deadlines.iter().filter(|d| d.overdue).map(|d| d.limit().as_str_name()).collect();
        println!("{:<28} {:<18} {:<29} {:<25} {}", case.case_code, output::channel(case.channel), output::agency(case.holder.as_ref()), case.state, late.join(", "));
    }
    println!("{} overdue", r.cases.len());
    Ok(())
}

/// `duijie open`.
pub async fn open(ctx: &Ctx, min_hours: u64) -> CliResult<()> {
    let r = ctx
        .audit()?
        .list_open_handoffs(ListOpenHandoffsRequest { min_age_seconds: min_hours.saturating_mul(3600), limit: 1000 })
        .await
        .or_refused("listing open handoffs")?
        .into_inner();
    if ctx.json {
        let rows: Vec<Value> = r
            .handoffs
            .iter()
            .map(|h| {
                json!({
                    "case_id": h.case_id, "case_code": h.case_code, "channel": output::channel(h.channel),
                    "from": output::agency(h.from.as_ref()), "to": output::agency(h.to.as_ref()),
                    "waiting_for": h.waiting_for, "since": output::time_json(h.since.as_ref()), "age_seconds": h.age_seconds,
                })
            })
            .collect();
        output::print_json(&Value::Array(rows));
        return Ok(());
    }
    println!("{:<26} {:<24} {:<24} {:<22} {:>8}", "case", "from", "to", "waiting for", "hours");
    for h in &r.handoffs {
        println!(
            "{:<26} {:<24} {:<24} {:<22} {:>8.1}",
            h.case_code,
            output::agency(h.from.as_ref()),
            output::agency(h.to.as_ref()),
            h.waiting_for,
            h.age_seconds as f64 / 3600.0
        );
    }
    println!("{} open handoffs", r.handoffs.len());
    Ok(())
}

fn parse_channel(s: Option<&str>) -> CliResult<Channel> {
    Ok(match s.map(str::trim) {
        None | Some("") => Channel::Unspecified,
        Some("court") => Channel::Court,
        Some("police") => Channel::Police,
        Some("petition") => Channel::Petition,
        Some("procuratorate") => Channel::Procuratorate,
        Some(other) => return Err(CliError::Usage(format!("--channel: unknown channel {other:?} (court, police, petition, procuratorate)"))),
    })
}

/// `duijie stats`.
pub async fn stats(ctx: &Ctx, args: StatsArgs) -> CliResult<()> {
    let today = chrono::Utc::now().with_timezone(&output::china()).date_naive();
    let jan1 = |y| NaiveDate::from_ymd_opt(y, 1, 1).ok_or_else(|| CliError::Usage(format!("year {y}")));
    let from = match args.from {
        Some(d) => d,
        None => jan1(today.year())?,
    };
    let to = match args.to {
        Some(d) => d,
        None => jan1(today.year() + 1)?,
    };
    if to <= from {
        return Err(CliError::Usage(format!("--to {to} must be after --from {from}")));
    }
    let channel = parse_channel(args.channel.as_deref())?;
    let req = GetStatisticsRequest {
        from: Some(output::china_midnight(from)?),
        to: Some(output::china_midnight(to)?),
        region: args.region.clone(),
        channel: channel as i32,
        agency: args.agency.as_ref().map(AgencyRef::from),
    };
    let s = ctx.audit()?.get_statistics(req).await.or_refused("reading the statistics")?.into_inner();
    if ctx.json {
        output::print_json(&json!({
            "from": from.to_string(), "to": to.to_string(), "region": args.region, "channel": channel.as_str(),
            "received": s.received, "received_court": s.received_court, "received_police": s.received_police,
            "received_petition": s.received_petition, "received_procuratorate": s.received_procuratorate,
            "received_self_accepted": s.received_self_accepted,
            "received_by_intake_source": s.received_by_intake_source.iter()
                .map(|c| (source_name(c.source()), c.count))
                .collect::<std::collections::BTreeMap<_, _>>(),
            "signed_for": s.signed_for, "accepted": s.accepted, "rejected": s.rejected,
            "mediated": s.mediated, "settled": s.settled, "failed": s.failed,
            "mediation_rate": s.mediation_rate, "success_rate": s.success_rate,
            "confirmations_requested": s.confirmations_requested, "confirmations_granted": s.confirmations_granted,
            "overdue": s.overdue, "closed": s.closed,
            "median_days_to_closure": s.median_days_to_closure, "p90_days_to_closure": s.p90_days_to_closure,
        }));
        return Ok(());
    }
    let scope = [
        (!args.region.is_empty()).then(|| format!("region {}", args.region)),
        (channel != Channel::Unspecified).then(|| format!("channel {}", channel.as_str())),
        args.agency.as_ref().map(|a| format!("agency {a}")),
    ];
    let scope: Vec<String> = scope.into_iter().flatten().collect();
    println!("统计期间 period            {from} .. {to} (exclusive){}", if scope.is_empty() { String::new() } else { format!("   {}", scope.join(", ")) });
    println!("收案数 received            {:>8}   法院 court {}  公安 police {}  信访 petition {}  检察 procuratorate {}  自行受理 self {}", s.received, s.received_court, s.received_police, s.received_petition, s.received_procuratorate, s.received_self_accepted);
    if s.received_self_accepted > 0 {
        let by: Vec<String> = s
            .received_by_intake_source
            .iter()
            .filter(|c| c.count > 0)
            .map(|c| format!("{} {}", source_name(c.source()), c.count))
            .collect();
        println!("自行受理来源 self by source        {}", by.join("  "));
    }
    println!("签收 signed for            {:>8}", s.signed_for);
    println!("受理 accepted              {:>8}", s.accepted);
    println!("不予受理 rejected          {:>8}", s.rejected);
    println!("调解结案 mediated          {:>8}   成功 settled {}  不成 failed {}", s.mediated, s.settled, s.failed);
    println!("调解率 mediation rate      {:>7.1} %", s.mediation_rate * 100.0);
    println!("调解成功率 success rate    {:>7.1} %", s.success_rate * 100.0);
    println!("司法确认 confirmations     {:>8}   确认有效 granted {}", s.confirmations_requested, s.confirmations_granted);
    println!("超期 overdue               {:>8}", s.overdue);
    println!("结案 closed                {:>8}   结案天数 days to closure: median {:.1}, p90 {:.1}", s.closed, s.median_days_to_closure, s.p90_days_to_closure);
    Ok(())
}

/// `duijie verify [--case CASE] [--anchor FILE]`: exit 5 when the chain is broken (or no longer
/// holds what the anchor committed to). No overall deadline: the audit service streams progress
/// (printed to stderr) for as long as the walk takes.
pub async fn verify(ctx: &Ctx, case: Option<&str>, anchor: Option<&Path>) -> CliResult<()> {
    let anchor = anchor.map(load_anchor).transpose()?;
    let case_id = match case {
        None => String::new(),
        Some(c) if output::is_case_id(c) => c.trim().to_owned(),
        // Verify takes a case id: resolve a case code through the timeline.
        Some(c) => ctx
            .audit()?
            .get_timeline(timeline_request(c))
            .await
            .or_refused(&format!("looking up case {c}"))?
            .into_inner()
            .case
            .map(|c| c.case_id)
            .ok_or_else(|| CliError::Refused(format!("no case {c}")))?,
    };
    let mut client = ctx.audit_unbounded()?;
    let request = VerifyWithProgressRequest { verify: Some(VerifyRequest { case_id: case_id.clone(), anchor }) };
    let mut stream = client.verify_with_progress(request).await.or_refused("verifying the audit chain")?.into_inner();
    let mut result = None;
    while let Some(msg) = stream.message().await.or_refused("verifying the audit chain")? {
        match msg.event {
            Some(Event::RecordsChecked(n)) => eprintln!("checked {n} records…"),
            Some(Event::Result(r)) => result = Some(r),
            None => {}
        }
    }
    let r = result.ok_or_else(|| CliError::Unavailable("verifying the audit chain: the stream ended without a result; retry".into()))?;
    if ctx.json {
        output::print_json(&json!({
            "ok": r.ok, "records_checked": r.records_checked, "first_broken_seq": r.first_broken_seq,
            "first_broken_chain": r.first_broken_chain, "problem": r.problem, "chains": r.chains, "tree_head": r.tree_head_hex,
            "case_id": if case_id.is_empty() { Value::Null } else { Value::String(case_id.clone()) },
            "anchor_checked": r.anchor_checked,
        }));
    }
    if r.ok {
        if !ctx.json {
            let scope = if case_id.is_empty() { format!(" on {} chain(s), tree head {}", r.chains, r.tree_head_hex) } else { format!(" (case {case_id})") };
            let anchored = if r.anchor_checked { ", holding everything the anchor committed to" } else { "" };
            println!("完整 ok: {} records verified{scope}{anchored}", r.records_checked);
        }
        Ok(())
    } else {
        Err(CliError::Broken(format!(
            "BROKEN at record {} of chain {}: {} ({} records checked)",
            r.first_broken_seq, r.first_broken_chain, r.problem, r.records_checked
        )))
    }
}

/// `duijie anchor [--save FILE]`: the latest anchor, its signature checked against the CA of
/// `--pki` (exit 5 if it does not hold: the audit service handed out something it did not sign).
pub async fn anchor(ctx: &Ctx, save: Option<&Path>) -> CliResult<()> {
    let a = ctx
        .audit()?
        .get_anchor(GetAnchorRequest {})
        .await
        .or_refused("fetching the anchor")?
        .into_inner()
        .anchor
        .ok_or_else(|| CliError::Failure(anyhow::anyhow!("the audit service answered without an anchor")))?;
    let ca = ctx.pki.dir().join("ca.pem");
    let verifier = Verifier::from_file(&ca).map_err(|e| CliError::Usage(format!("{e:#}")))?;
    duijie_common::anchor::check(&verifier, &a).map_err(|e| CliError::Broken(format!("the anchor does not hold: {e}")))?;
    if let Some(path) = save {
        let bytes = if is_binary(path) { a.encode_to_vec() } else { format!("{:#}\n", anchor_json(&a)).into_bytes() };
        std::fs::write(path, bytes).map_err(|e| CliError::Failure(anyhow::anyhow!("writing {}: {e}", path.display())))?;
    }
    if ctx.json {
        output::print_json(&anchor_json(&a));
    } else {
        let when = from_timestamp(a.created_at.as_ref()).map(|t| t.to_rfc3339()).unwrap_or_default();
        println!("锚点 anchor {} of {when}, signed by {}, root {}", a.id, duijie_common::signing::AUDIT_SIGNER, hex(&a.root));
        for h in &a.heads {
            println!("  chain {:>3}  size {:>10}  hash {}", h.chain, h.size, hex(&h.hash));
        }
        if let Some(path) = save {
            println!("saved to {}; check the log against it later with `duijie verify --anchor {}`", path.display(), path.display());
        }
    }
    Ok(())
}

fn is_binary(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("pb" | "bin"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(field: &str, s: &str) -> CliResult<Vec<u8>> {
    let bad = || CliError::Usage(format!("anchor file: {field} is not hex"));
    if !s.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()).ok_or_else(bad)).collect()
}

/// An anchor as JSON: bytes in hex, the time in microseconds (exactly what was signed) and, for
/// people, as RFC 3339.
fn anchor_json(a: &Anchor) -> Value {
    let t = from_timestamp(a.created_at.as_ref());
    json!({
        "id": a.id,
        "created_at": t.map(|t| t.to_rfc3339()),
        "created_at_micros": t.map(|t| t.timestamp_micros()),
        "heads": a.heads.iter().map(|h| json!({"chain": h.chain, "size": h.size, "hash": hex(&h.hash)})).collect::<Vec<_>>(),
        "root": hex(&a.root),
        "signature": hex(&a.signature),
        "signer_cert": hex(&a.signer_cert),
    })
}

/// Reads an anchor saved by `duijie anchor --save`: JSON, or protobuf binary.
fn load_anchor(path: &Path) -> CliResult<Anchor> {
    let bytes = std::fs::read(path).map_err(|e| CliError::Usage(format!("reading {}: {e}", path.display())))?;
    let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
        return Anchor::decode(bytes.as_slice()).map_err(|e| CliError::Usage(format!("{}: neither JSON nor a protobuf anchor: {e}", path.display())));
    };
    let str_of = |k: &str, v: &Value| v.get(k).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| CliError::Usage(format!("anchor file: {k} missing")));
    let micros = v.get("created_at_micros").and_then(Value::as_i64).ok_or_else(|| CliError::Usage("anchor file: created_at_micros missing".into()))?;
    let created = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(micros).ok_or_else(|| CliError::Usage("anchor file: created_at_micros out of range".into()))?;
    let mut heads = Vec::new();
    for h in v.get("heads").and_then(Value::as_array).ok_or_else(|| CliError::Usage("anchor file: heads missing".into()))? {
        let chain = h.get("chain").and_then(Value::as_u64).and_then(|c| u32::try_from(c).ok());
        let size = h.get("size").and_then(Value::as_i64);
        let (Some(chain), Some(size)) = (chain, size) else {
            return Err(CliError::Usage("anchor file: a head without chain or size".into()));
        };
        heads.push(ChainHead { chain, size, hash: unhex("hash", &str_of("hash", h)?)? });
    }
    Ok(Anchor {
        id: v.get("id").and_then(Value::as_i64).unwrap_or(0),
        created_at: Some(timestamp(created)),
        heads,
        root: unhex("root", &str_of("root", &v)?)?,
        signature: unhex("signature", &str_of("signature", &v)?)?,
        signer_cert: unhex("signer_cert", &str_of("signer_cert", &v)?)?,
    })
}

/// An intake source as the file format and the JSON output name it (`walk_in`, `hotline_148`, …).
fn source_name(s: duijie_proto::v1::IntakeSource) -> String {
    s.as_str_name().trim_start_matches("INTAKE_SOURCE_").to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_names_a_state() {
        assert_eq!(until_state("closed"), "CLOSED");
        assert_eq!(until_state("in-mediation"), "IN_MEDIATION");
    }

    #[test]
    fn until_must_be_a_case_state() {
        assert_eq!(parse_until("closed").as_deref(), Ok("CLOSED"));
        assert_eq!(parse_until("In_Mediation").as_deref(), Ok("IN_MEDIATION"));
        assert_eq!(parse_until("confirmation-denied").as_deref(), Ok("CONFIRMATION_DENIED"));
        let err = parse_until("setled").err().unwrap_or_default();
        assert!(err.contains("\"setled\"") && err.contains("SETTLED") && err.contains("CANCELLED"), "{err}");
        assert!(parse_until("").is_err());
        assert!(is_final("CLOSED") && is_final("CANCELLED") && !is_final("SETTLED"));
    }

    #[test]
    fn ids_and_codes_are_told_apart() {
        assert!(timeline_request("0190f2a4-7c1e-7a55-9c1e-6a1f2b3c4d5e").case_code.is_empty());
        assert_eq!(timeline_request("JF-431003-2026-000123").case_code, "JF-431003-2026-000123");
    }
}
