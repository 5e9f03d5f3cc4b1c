//! The audit store's append rate in isolation (`duijie-audit-bench --append`, and the system
//! benchmark's audit/bus ratio), and the envelopes the audit benchmarks record.

use std::time::Instant;

use anyhow::Context as _;
use duijie_common::config::DatabaseConfig;
use duijie_common::envelope::{self, Header};
use duijie_domain::AgencyNode;
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::*;
use prost::Message as _;
use sqlx::{Connection as _, PgConnection};
use uuid::Uuid;

/// An agency node from its parts.
pub fn node(kind: AgencyKind, code: &str) -> anyhow::Result<AgencyNode> {
    Ok(AgencyNode::new(kind, code)?)
}

/// Encoded envelopes of typical size for the kinds a case goes through; the generated records
/// reuse them (the benchmark reads records, it does not verify them).
pub fn templates() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let header = Header {
        case_id: Uuid::now_v7(),
        case_code: "JF-431003-2026-000001".into(),
        channel: Channel::Court,
        sender: node(AgencyKind::Court, "431003")?,
        recipient: node(AgencyKind::Mediation, "431003")?,
        causation_id: Some(Uuid::now_v7()),
    };
    let party = |id: &str, name: &str| Party {
        party_id: id.into(),
        role: PartyRole::Plaintiff as i32,
        name: name.into(),
        identity: Some(IdentityDocument { document_type: IdDocumentType::ResidentIdCard as i32, number: "11010519491231002X".into() }),
        contact: "13800000000".into(),
        address: "湖南省郴州市北湖区人民路1号".into(),
        ..Default::default()
    };
    let payloads = vec![
        Payload::Referral(Referral {
            legal_basis: "《民事诉讼法》第一百二十五条".into(),
            parties: vec![party("p1", "张三"), party("p2", "李四")],
            cause_of_action: "民间借贷纠纷".into(),
            facts: "2024年3月被告向原告借款5万元，约定一年内归还，至今未还。原告多次催要未果，诉至法院。".into(),
            claims: vec!["判令被告归还借款50000元".into(), "承担诉讼费用".into()],
            amount: Some(Money { currency: "CNY".into(), minor_units: 5_000_000 }),
            clock_policy: Some(ClockPolicy { kind: ClockPolicyKind::CourtOrdinary as i32, ..Default::default() }),
            client_request_id: "court-431003-req-000001".into(),
            ..Default::default()
        }),
        Payload::DeliveryEvidence(DeliveryEvidence {
            evidence_type: EvidenceType::Delivered as i32,
            message_id: Uuid::now_v7().to_string(),
            message_kind: MessageKind::Referral as i32,
            consumer: "mediation:431003".into(),
            ..Default::default()
        }),
        Payload::Receipt(Receipt { signed_by: "王明".into(), signer_position: "收案员".into(), ..Default::default() }),
        Payload::Accept(Accept { accepted_by: "王明".into(), local_reference: "北调受字〔2026〕123号".into(), ..Default::default() }),
        Payload::Assignment(Assignment { mediator: Some(Mediator { mediator_id: "M-07".into(), name: "赵调解".into(), ..Default::default() }), ..Default::default() }),
        Payload::Progress(Progress { summary: "已分别约谈双方当事人，初步了解争议焦点。".into(), sessions_held: 1, ..Default::default() }),
        Payload::Outcome(Outcome {
            kind: Some(outcome::Kind::Settled(outcome::Settled {
                terms: vec!["被告于三十日内归还借款50000元".into(), "原告放弃利息请求".into()],
                ..Default::default()
            })),
        }),
        Payload::Performance(Performance { status: PerformanceStatus::Performed as i32, ..Default::default() }),
        Payload::FollowUp(FollowUp { conducted_by: "赵调解".into(), summary: "双方对结果满意".into(), ..Default::default() }),
        Payload::Closure(Closure { basis: ClosureBasis::Performed as i32, summary: "案结事了".into(), closed_by: "王明".into() }),
    ];
    Ok(payloads
        .into_iter()
        .map(|p| {
            let env = envelope::build(&header, p);
            (env.kind().routing_segment().to_owned(), env.encode_to_vec())
        })
        .collect())
}

/// How fast the audit store recorded.
#[derive(Debug, Clone, Copy)]
pub struct AppendRate {
    pub envelopes: usize,
    pub cases: usize,
    pub seconds: f64,
}

impl AppendRate {
    /// Envelopes recorded per second.
    pub fn per_second(&self) -> f64 {
        self.envelopes as f64 / self.seconds.max(f64::EPSILON)
    }
}

/// How the append benchmark writes: envelopes per transaction, the chains cases are spread over,
/// concurrent writers.
#[derive(Debug, Clone, Copy)]
pub struct AppendShape {
    pub batch: usize,
    pub chains: u32,
    pub writers: usize,
}

impl Default for AppendShape {
    /// As the audit service runs by default: one writer, the consumer's batches of 128, one chain.
    fn default() -> Self {
        Self { batch: 128, chains: 1, writers: 1 }
    }
}

/// Appends `n` envelopes (cases of ten messages, interleaved as on the bus) through
/// `AuditStore::append_batch`, `shape.batch` per transaction, by `shape.writers` concurrent
/// writers, on a fresh database `<database>_append` next to `database_url`'s (dropped
/// afterwards); verifies the log and returns the rate.
pub async fn append_rate(database_url: &str, database: &str, n: usize, shape: AppendShape) -> anyhow::Result<AppendRate> {
    let admin = DatabaseConfig::from_url(database_url)?;
    let name = format!("{database}_append");
    let mut conn = PgConnection::connect_with(&admin.connect_options()).await.context("connecting to PostgreSQL")?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))).execute(&mut conn).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#))).execute(&mut conn).await?;
    let writers = shape.writers.max(1);
    let chains = shape.chains.max(1);
    let max_connections = u32::try_from(writers + 1).unwrap_or(u32::MAX);
    let pool = duijie_common::db::pool(&DatabaseConfig { database: name.clone(), max_connections, ..admin });
    duijie_audit::migrator().run(&pool).await.context("migrating")?;
    duijie_audit::store::ensure_chains(&mut *pool.acquire().await?, chains).await?;
    let kinds = templates()?;
    let cases: Vec<Uuid> = (0..n.div_ceil(10).max(1)).map(|_| Uuid::now_v7()).collect();
    let (court, centre) = (node(AgencyKind::Court, "431003")?, node(AgencyKind::Mediation, "431003")?);
    // Message i is the (i / cases)-th message of case i % cases, so every case's messages are
    // spread over the run, as concurrent cases are on the bus. Each writer takes the cases of
    // its chains (as a tap partitioned by case would give it), or every writers-th case when
    // there are fewer chains than writers.
    let mut shares: Vec<Vec<Envelope>> = vec![Vec::new(); writers];
    for i in 0..n {
        let case = cases[i % cases.len()];
        let k = (i / cases.len()) % kinds.len();
        let mut env = Envelope::decode(kinds[k].1.as_slice())?;
        let referrer_speaks = k == 0;
        env.message_id = Uuid::now_v7().to_string();
        env.case_id = case.to_string();
        env.sender = Some(AgencyRef::from(if referrer_speaks { &court } else { &centre }));
        env.recipient = Some(AgencyRef::from(if referrer_speaks { &centre } else { &court }));
        let chain = usize::try_from(duijie_audit::store::chain_of(case, chains)).unwrap_or(0);
        let w = if chains as usize >= writers { chain % writers } else { (case.as_u64_pair().1 % writers as u64) as usize };
        shares[w].push(env);
    }
    let store = duijie_audit::store::AuditStore::default().with_chains(chains);
    let batch = shape.batch.max(1);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for envs in shares {
        let (pool, store) = (pool.clone(), store.clone());
        tasks.spawn(async move {
            for chunk in envs.chunks(batch) {
                let mut tx = pool.begin().await?;
                let refs: Vec<&Envelope> = chunk.iter().collect();
                store.append_batch(&mut tx, &refs).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                tx.commit().await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("an append writer panicked")??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let report = duijie_audit::verify::verify_log(&pool).await?;
    anyhow::ensure!(report.ok() && report.records_checked == n as u64, "the log does not verify after the run: {report:?}");
    pool.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))).execute(&mut conn).await?;
    Ok(AppendRate { envelopes: n, cases: cases.len(), seconds })
}
