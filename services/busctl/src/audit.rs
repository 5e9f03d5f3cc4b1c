//! `duijie-bus audit …`: read the audit store from the command line (case timeline, open
//! handoffs, overdue cases, statistics, chain verification) over gRPC with an agency's or a
//! supervisor's certificate.

use std::path::PathBuf;

use anyhow::Context as _;
use chrono::{DateTime, NaiveDate, TimeZone as _, Utc};
use clap::{Args, Subcommand};
use duijie_proto::v1::audit_client::AuditClient;
use duijie_proto::v1::{
    AgencyKind, AgencyRef, Channel, GetTimelineRequest, ListOpenHandoffsRequest, ListOverdueRequest, MessageKind,
    StatisticsRequest, VerifyRequest,
};
use tonic::transport::{Certificate, Channel as GrpcChannel, ClientTlsConfig, Identity};

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// The audit service's gRPC address.
    #[arg(long, env = "DUIJIE_AUDIT_ADDR", default_value = "127.0.0.1:50056")]
    addr: String,
    /// Who is asking: the certificate and key of an agency or a supervisor (PEM).
    #[arg(long, default_value = "target/pki/supervisor-431003.pem")]
    cert: PathBuf,
    #[arg(long, default_value = "target/pki/supervisor-431003-key.pem")]
    key: PathBuf,
    /// The CA that signed the audit service's certificate.
    #[arg(long, default_value = "target/pki/ca.pem")]
    ca: PathBuf,
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Every recorded message of a case in order, with delivery and deadline status.
    Timeline {
        /// A case id (UUID) or a case code (e.g. JF-431003-2026-000123).
        case: String,
    },
    /// Handoffs waiting for the next agency, oldest first.
    Open {
        /// Only those waiting at least this many hours.
        #[arg(long, default_value_t = 0)]
        min_hours: u64,
    },
    /// Open cases with a legal time limit past due.
    Overdue,
    /// The supervisors' statistics for a period (dates in China time, `to` exclusive).
    Stats {
        #[arg(long)]
        from: NaiveDate,
        #[arg(long)]
        to: NaiveDate,
        /// Agency code prefix, e.g. 431003.
        #[arg(long, default_value = "")]
        region: String,
        /// court, police, petition or procuratorate.
        #[arg(long)]
        channel: Option<String>,
    },
    /// Walk the hash chains (the whole log, or one case) and report the first broken record.
    Verify {
        #[arg(long)]
        case: Option<String>,
    },
}

fn agency(a: Option<&AgencyRef>) -> String {
    a.map(|a| format!("{}:{}", AgencyKind::try_from(a.kind).map(|k| k.as_str()).unwrap_or("?"), a.code)).unwrap_or_default()
}

fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, 0))
        .map(|t| (t + chrono::Duration::hours(8)).format("%Y-%m-%d %H:%M").to_string()) // China time
        .unwrap_or_else(|| "-".into())
}

fn china_midnight(d: NaiveDate) -> anyhow::Result<prost_types::Timestamp> {
    let tz = chrono::FixedOffset::east_opt(8 * 3600).context("China time zone")?;
    let t: DateTime<Utc> = tz
        .from_local_datetime(&d.and_hms_opt(0, 0, 0).context("midnight")?)
        .single()
        .context("an unambiguous local time")?
        .with_timezone(&Utc);
    Ok(prost_types::Timestamp { seconds: t.timestamp(), nanos: 0 })
}

async fn client(args: &AuditArgs) -> anyhow::Result<AuditClient<GrpcChannel>> {
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&args.ca)?))
        .identity(Identity::from_pem(read(&args.cert)?, read(&args.key)?))
        .domain_name("localhost");
    let ch = GrpcChannel::from_shared(format!("https://{}", args.addr))?
        .tls_config(tls)?
        .connect()
        .await
        .with_context(|| format!("connecting to the audit service at {}", args.addr))?;
    Ok(AuditClient::new(ch))
}

/// Runs one `audit` command; the error carries the service's message for the exit status.
pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    let mut c = client(&args).await?;
    match args.command {
        AuditCommand::Timeline { case } => {
            let req = if uuid_like(&case) {
                GetTimelineRequest { case_id: case, ..Default::default() }
            } else {
                GetTimelineRequest { case_code: case, ..Default::default() }
            };
            let t = c.get_timeline(req).await.map_err(status)?.into_inner();
            if let Some(case) = &t.case {
                println!("case {} ({})  channel {}  referrer {}  holder {}", case.case_code, case.case_id, channel_name(case.channel), agency(case.referrer.as_ref()), agency(case.holder.as_ref()));
                println!("state {} since {}   received {}   closed {}", case.state, time(case.state_since.as_ref()), time(case.received_at.as_ref()), time(case.closed_at.as_ref()));
                for d in &case.deadlines {
                    let status = if d.overdue { "OVERDUE" } else if d.met_at.is_some() { "met" } else { "running" };
                    println!("  limit {:<40} due {}  {status}", d.limit().as_str_name(), time(d.due_at.as_ref()));
                }
            }
            println!("{:>6} {:>4}  {:<16}  {:<26} {:<26} {:<22} {:<16} state after", "seq", "#", "occurred", "from", "to", "message", "delivered");
            for r in &t.records {
                println!(
                    "{:>6} {:>4}  {:<16}  {:<26} {:<26} {:<22} {:<16} {}  {}",
                    r.seq,
                    r.case_seq,
                    time(r.occurred_at.as_ref()),
                    agency(r.sender.as_ref()),
                    agency(r.recipient.as_ref()),
                    MessageKind::try_from(r.kind).map(|k| k.routing_segment()).unwrap_or("?"),
                    time(r.delivered_at.as_ref()),
                    r.state_after,
                    r.summary
                );
            }
        }
        AuditCommand::Open { min_hours } => {
            let r = c
                .list_open_handoffs(ListOpenHandoffsRequest { min_age_seconds: min_hours * 3600, limit: 1000 })
                .await
                .map_err(status)?
                .into_inner();
            println!("{:<24} {:<26} {:<26} {:<22} {:>8}", "case", "from", "to", "waiting for", "hours");
            for h in r.handoffs {
                println!("{:<24} {:<26} {:<26} {:<22} {:>8.1}", h.case_code, agency(h.from.as_ref()), agency(h.to.as_ref()), h.waiting_for, h.age_seconds as f64 / 3600.0);
            }
        }
        AuditCommand::Overdue => {
            let r = c.list_overdue(ListOverdueRequest { limit: 1000 }).await.map_err(status)?.into_inner();
            println!("{:<24} {:<12} {:<26} {:<18} overdue limits", "case", "channel", "holder", "state");
            for case in r.cases {
                let late: Vec<&str> = case.deadlines.iter().filter(|d| d.overdue).map(|d| d.limit().as_str_name()).collect();
                println!("{:<24} {:<12} {:<26} {:<18} {}", case.case_code, channel_name(case.channel), agency(case.holder.as_ref()), case.state, late.join(", "));
            }
        }
        AuditCommand::Stats { from, to, region, channel } => {
            let channel = match channel.as_deref() {
                None => Channel::Unspecified,
                Some("court") => Channel::Court,
                Some("police") => Channel::Police,
                Some("petition") => Channel::Petition,
                Some("procuratorate") => Channel::Procuratorate,
                Some(other) => anyhow::bail!("unknown channel {other:?} (court, police, petition, procuratorate)"),
            };
            let req = StatisticsRequest { from: Some(china_midnight(from)?), to: Some(china_midnight(to)?), region, channel: channel as i32, agency: None };
            let s = c.get_statistics(req).await.map_err(status)?.into_inner();
            println!("period {from} .. {to} (exclusive)");
            println!("received                 {:>8}   court {}  police {}  petition {}  procuratorate {}  self-accepted {}", s.received, s.received_court, s.received_police, s.received_petition, s.received_procuratorate, s.received_self_accepted);
            println!("signed for / accepted / rejected   {} / {} / {}", s.signed_for, s.accepted, s.rejected);
            println!("mediated                 {:>8}   settled {}  failed {}", s.mediated, s.settled, s.failed);
            println!("mediation rate           {:>8.1} %", s.mediation_rate * 100.0);
            println!("success rate             {:>8.1} %", s.success_rate * 100.0);
            println!("judicial confirmations   {:>8}   granted {}", s.confirmations_requested, s.confirmations_granted);
            println!("overdue                  {:>8}", s.overdue);
            println!("closed                   {:>8}   days to closure: median {:.1}, p90 {:.1}", s.closed, s.median_days_to_closure, s.p90_days_to_closure);
        }
        AuditCommand::Verify { case } => {
            let r = c.verify(VerifyRequest { case_id: case.unwrap_or_default() }).await.map_err(status)?.into_inner();
            if r.ok {
                println!("ok: {} records verified", r.records_checked);
            } else {
                anyhow::bail!("BROKEN at record {}: {} ({} records checked)", r.first_broken_seq, r.problem, r.records_checked);
            }
        }
    }
    Ok(())
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.bytes().filter(|b| *b == b'-').count() == 4
}

fn channel_name(c: i32) -> &'static str {
    Channel::try_from(c).map(|c| c.as_str()).unwrap_or("?")
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}
