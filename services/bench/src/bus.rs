//! The bus benchmark (`duijie-bench`): in one run on the same broker,
//! (a) the raw ceiling: plain lapin publish with confirms + consume with acks on a durable quorum
//!     queue, persistent messages of `--size` bytes;
//! (b) the bus: envelopes of the same size committed to the outbox, relayed, consumed and
//!     committed in an inbox, end to end;
//! and the bus's end-to-end latency (staging commit requested → consumer commit) at a fixed
//! offered rate. [`run`] prints both rates, their ratio, and latency p50/p99; the system
//! benchmark calls [`BusUnderTest::throughput`] for the bus's rate in the same run.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use duijie_common::CancellationToken;
use duijie_common::amqp::{Connector, Topology};
use duijie_common::config::{AmqpConfig, ConsumerConfig, DatabaseConfig, RelayConfig, TopologyConfig};
use duijie_common::envelope::{self, Header};
use duijie_common::inbox::{Consumer, HandleError, Handler, Inbound};
use duijie_common::outbox::{self, Relay, RelayWaker};
use duijie_domain::AgencyNode;
use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::{AgencyKind, Channel, Referral};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation};
use prost::Message as _;
use sqlx::{Connection as _, PgConnection, PgPool};
use uuid::Uuid;

use crate::cpu::busy_cpu_seconds;

/// What the bus benchmark measures and how.
#[derive(clap::Args, Debug, Clone)]
pub struct BusArgs {
    /// Messages per throughput run (0: latency run only).
    #[arg(long, default_value_t = 30_000)]
    pub messages: usize,
    /// Rounds of (raw, bus) throughput runs; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Message size in bytes (the envelope is padded to about this size, at most about 135 KB:
    /// the contract bounds a referral's facts, note and claims).
    #[arg(long, default_value_t = 2048)]
    pub size: usize,
    /// Outstanding publisher confirms in the raw publisher.
    #[arg(long, default_value_t = 1000)]
    pub confirm_window: usize,
    /// Concurrent producers staging envelopes in the bus run.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Envelopes per staging transaction in the bus throughput run.
    #[arg(long, default_value_t = 50)]
    pub stage_batch: usize,
    /// Offered rate of the latency run, messages per second (one envelope per transaction).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Duration of the latency run in seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Relay batch size.
    #[arg(long, default_value_t = RelayConfig::default().batch_size)]
    pub relay_batch: i64,
    /// Consumer prefetch.
    #[arg(long, default_value_t = ConsumerConfig::default().prefetch)]
    pub prefetch: u16,
    /// Consumer batch.
    #[arg(long, default_value_t = ConsumerConfig::default().batch_max)]
    pub consumer_batch: usize,
    /// RabbitMQ URL.
    #[arg(long, env = "DUIJIE_AMQP_URL", default_value = "amqp://duijie:duijie@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// PostgreSQL URL of a database the bench may create its own database from.
    #[arg(long, env = "DUIJIE_DATABASE_URL", default_value = "postgres://duijie:duijie@127.0.0.1:5432/duijie")]
    pub database_url: String,
}

/// Runs the bus benchmark and prints its figures.
pub async fn run(args: &BusArgs) -> anyhow::Result<()> {
    let amqp = AmqpConfig::new(args.amqp_url.clone(), "duijie-bench");
    let connector = Connector::new(amqp);

    println!("duijie-bench: {} messages of {} bytes, latency run {} msg/s for {} s", args.messages, args.size, args.rate, args.seconds);
    let bus = BusUnderTest::new(&connector, args).await?;
    if args.messages > 0 {
        // Alternate raw and bus runs so both see the same machine; report the medians.
        let (mut raws, mut buses) = (Vec::new(), Vec::new());
        for round in 1..=args.rounds {
            let cpu0 = busy_cpu_seconds();
            let raw = raw_ceiling(&connector, args).await.context("raw ceiling run")?;
            let cpu1 = busy_cpu_seconds();
            let bus_rate = bus.throughput(args).await.context("bus throughput run")?;
            let cpu2 = busy_cpu_seconds();
            let per_msg = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) => format!("{:.0} µs CPU/msg", (b - a) * 1e6 / args.messages as f64),
                _ => "CPU n/a".into(),
            };
            println!(
                "round {round}: raw {raw:>6.0} msg/s ({})   bus {bus_rate:>6.0} msg/s ({})   ratio {:.2}",
                per_msg(cpu0, cpu1),
                per_msg(cpu1, cpu2),
                bus_rate / raw
            );
            raws.push(raw);
            buses.push(bus_rate);
        }
        let (raw, bus_rate) = (median(&mut raws), median(&mut buses));
        println!("raw ceiling  (lapin publish+confirms, consume+acks, quorum queue), median: {raw:>8.0} msg/s");
        println!(
            "bus          (outbox -> relay -> inbox, {} producers x {}/tx), median:       {bus_rate:>8.0} msg/s",
            args.producers, args.stage_batch
        );
        println!("ratio bus/raw: {:.2}   (target >= 0.5)", bus_rate / raw);
    }
    let Latencies { end_to_end: lat, staging } = bus.latency(args).await.context("bus latency run")?;
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "latency at {} msg/s offered, {} msgs (commit requested -> consumer commit): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms   (target p99 <= 50 ms)",
        args.rate,
        lat.len(),
        ms(lat.value_at_quantile(0.5)),
        ms(lat.value_at_quantile(0.99)),
        ms(lat.max())
    );
    println!(
        "  of which the staging transaction (begin -> commit): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        ms(staging.value_at_quantile(0.5)),
        ms(staging.value_at_quantile(0.99)),
        ms(staging.max())
    );
    bus.cleanup().await
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Plain lapin: one publisher with a window of outstanding confirms, one consumer acking each
/// message, on a durable quorum queue with persistent messages.
pub async fn raw_ceiling(connector: &Connector, args: &BusArgs) -> anyhow::Result<f64> {
    let queue = format!("bench.raw.{}", Uuid::new_v4().simple());
    let conn = connector.connect("bench raw").await?;
    let pub_ch = conn.create_channel().await?;
    let mut qargs = FieldTable::default();
    qargs.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    pub_ch
        .queue_declare(queue.clone().into(), QueueDeclareOptions { durable: true, ..Default::default() }, qargs)
        .await?;
    pub_ch.confirm_select(ConfirmSelectOptions::default()).await?;

    let cons_conn = connector.connect("bench raw consumer").await?;
    let cons_ch = cons_conn.create_channel().await?;
    cons_ch.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = cons_ch
        .basic_consume(queue.clone().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let n = args.messages;
    let start = Instant::now();
    let consuming = tokio::spawn(async move {
        let mut got = 0usize;
        while got < n {
            let Some(d) = consumer.next().await else { anyhow::bail!("consumer ended") };
            d?.ack(BasicAckOptions::default()).await?;
            got += 1;
        }
        // Handed back, not dropped: see the cancel below.
        anyhow::Ok(consumer)
    });
    let body = vec![b'x'; args.size];
    let mut window = VecDeque::with_capacity(args.confirm_window);
    for i in 0..n {
        let props = BasicProperties::default().with_delivery_mode(2).with_message_id(i.to_string().into());
        let c = pub_ch
            .basic_publish("".into(), queue.clone().into(), BasicPublishOptions::default(), &body, props)
            .await?;
        window.push_back(c);
        if window.len() >= args.confirm_window
            && let Some(c) = window.pop_front()
        {
            anyhow::ensure!(matches!(c.await?, Confirmation::Ack(None)), "raw publish not acked");
        }
    }
    for c in window {
        anyhow::ensure!(matches!(c.await?, Confirmation::Ack(None)), "raw publish not acked");
    }
    let consumer = consuming.await??;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    // Cancel the consumer and wait for the broker's cancel-ok before closing. Dropping an active
    // lapin consumer sends basic.cancel from lapin's own task; a close right after it discards
    // the awaited reply, and the cancel-ok that still arrives is then taken for a protocol
    // violation ("UNEXPECTED-FRAME: unexpected basic cancel-ok", the connection torn down).
    cons_ch.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await?;
    pub_ch.queue_delete(queue.into(), QueueDeleteOptions::default()).await?;
    let _ = conn.close(200, "done".into()).await;
    let _ = cons_conn.close(200, "done".into()).await;
    Ok(rate)
}

/// Consumer handler: applies nothing beyond the inbox record; after commit, records latency.
#[derive(Clone)]
struct BenchHandler {
    applied: Arc<AtomicU64>,
    latency: Arc<Mutex<Option<Histogram<u64>>>>,
}

impl Handler for BenchHandler {
    async fn handle(&self, _conn: &mut PgConnection, _msg: &Inbound) -> Result<(), HandleError> {
        Ok(())
    }

    fn committed(&self, msg: &Inbound) {
        self.applied.fetch_add(1, Ordering::Relaxed);
        let Some(ts) = &msg.envelope.occurred_at else { return };
        let sent = chrono::DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).unwrap_or(0));
        let Some(sent) = sent else { return };
        let micros = (chrono::Utc::now() - sent).num_microseconds().unwrap_or(0).max(0);
        if let Ok(mut h) = self.latency.lock()
            && let Some(h) = h.as_mut()
        {
            let _ = h.record(u64::try_from(micros).unwrap_or(0));
        }
    }
}

/// The latency run's figures (µs).
pub struct Latencies {
    /// Staging commit requested → consumer commit.
    pub end_to_end: Histogram<u64>,
    /// The staging transaction alone (begin → commit).
    pub staging: Histogram<u64>,
}

/// A bus of its own: a fresh database with an outbox relay and an inbox consumer, a fresh
/// topology prefix, producers staging envelopes.
pub struct BusUnderTest {
    /// Used by the relay and the consumer, as a service gives its bus machinery its own pool.
    pool: PgPool,
    /// Used by the producers (a service's request handlers).
    producer_pool: PgPool,
    admin_url: String,
    db_name: String,
    topology: Topology,
    connector: Connector,
    from: AgencyNode,
    to: AgencyNode,
    applied: Arc<AtomicU64>,
    latency: Arc<Mutex<Option<Histogram<u64>>>>,
    /// Staging transactions' durations in the latency run (µs).
    staging: Arc<Mutex<Option<Histogram<u64>>>>,
    waker: RelayWaker,
    size: usize,
    shutdown: CancellationToken,
}

impl BusUnderTest {
    /// Creates the database and the topology and starts the relay and the consumer.
    pub async fn new(connector: &Connector, args: &BusArgs) -> anyhow::Result<Self> {
        let admin = DatabaseConfig::from_url(&args.database_url)?;
        let db_name = format!("duijie_bench_{}", &Uuid::new_v4().simple().to_string()[..12]);
        let mut conn = PgConnection::connect_with(&admin.connect_options()).await.context("connecting to PostgreSQL")?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{db_name}""#))).execute(&mut conn).await?;
        let _ = conn.close().await;
        let cfg = DatabaseConfig { database: db_name.clone(), max_connections: 8, ..admin };
        let pool = duijie_common::db::pool(&cfg);
        let producer_pool = duijie_common::db::pool(&DatabaseConfig { max_connections: 32, ..cfg.clone() });
        duijie_common::db::migrate(&pool).await?;
        let prefix = format!("bench{}", &Uuid::new_v4().simple().to_string()[..8]);
        let topology = Topology::new(TopologyConfig { prefix, ..Default::default() });
        let from = AgencyNode::new(AgencyKind::Court, "431003")?;
        let to = AgencyNode::new(AgencyKind::Mediation, "431003-102")?;
        let ch_conn = connector.connect("bench declare").await?;
        let ch = ch_conn.create_channel().await?;
        topology.declare(&ch).await?;
        // The channel first: a channel dropped while its connection closes logs an error.
        let _ = ch.close(200, "done".into()).await;
        let _ = ch_conn.close(200, "done".into()).await;

        let shutdown = CancellationToken::new();
        let applied = Arc::new(AtomicU64::new(0));
        let latency = Arc::new(Mutex::new(None));
        let relay_cfg = RelayConfig { batch_size: args.relay_batch, ..Default::default() };
        let relay = Relay::new(pool.clone(), connector.clone(), relay_cfg, "bench");
        let waker = relay.waker();
        tokio::spawn(relay.run(shutdown.clone()));
        // The recipient's kind's partitions, one consumer each (as a service has).
        let handler = BenchHandler { applied: applied.clone(), latency: latency.clone() };
        for queue in topology.inbox_queues(to.kind()) {
            let consumer = Consumer::new(
                "bench",
                queue,
                pool.clone(),
                connector.clone(),
                topology.clone(),
                ConsumerConfig { prefetch: args.prefetch, batch_max: args.consumer_batch, ..Default::default() },
                handler.clone(),
            );
            tokio::spawn(consumer.run(shutdown.clone()));
        }
        for tap in topology.tap_queues() {
            tokio::spawn(drain_tap(connector.clone(), tap, shutdown.clone()));
        }
        Ok(Self {
            pool,
            producer_pool,
            admin_url: args.database_url.clone(),
            db_name,
            topology,
            connector: connector.clone(),
            from,
            to,
            applied,
            latency,
            staging: Arc::new(Mutex::new(None)),
            waker,
            size: args.size,
            shutdown,
        })
    }

    fn envelope(&self, size: usize) -> duijie_proto::v1::Envelope {
        let header = Header {
            case_id: Uuid::now_v7(),
            case_code: "JF-431003-2026-000001".into(),
            channel: Channel::Court,
            sender: self.from.clone(),
            recipient: self.to.clone(),
            causation_id: None,
        };
        let mut env = envelope::build(&header, Payload::Referral(Referral::default()));
        let pad = size.saturating_sub(env.encoded_len() + 4);
        if let Some(Payload::Referral(r)) = env.payload.as_mut() {
            // Within the contract's bounds (every receiver checks them): the facts, the note,
            // then claims, each no longer than it may be.
            use duijie_proto::limits::{MAX_ITEM, MAX_ITEMS, MAX_TEXT};
            let mut left = pad / 3;
            let mut take = |max: usize| {
                let n = left.min(max);
                left -= n;
                "事".repeat(n)
            };
            r.facts = take(MAX_TEXT);
            r.note = take(MAX_TEXT);
            while r.claims.len() < MAX_ITEMS {
                let claim = take(MAX_ITEM);
                if claim.is_empty() {
                    break;
                }
                r.claims.push(claim);
            }
        }
        env
    }

    async fn wait_applied(&self, target: u64, deadline: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while self.applied.load(Ordering::Relaxed) < target {
            anyhow::ensure!(
                start.elapsed() < deadline,
                "only {} of {target} applied after {deadline:?}",
                self.applied.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// Stages `args.messages` envelopes from `args.producers` producers and returns the
    /// end-to-end rate (messages per second until the last is committed in the inbox).
    pub async fn throughput(&self, args: &BusArgs) -> anyhow::Result<f64> {
        let base = self.applied.load(Ordering::Relaxed);
        let n = args.messages;
        let per_producer = n / args.producers;
        let total = (per_producer * args.producers) as u64;
        // Build the envelopes first so encoding is not what we measure.
        let batches: Vec<Vec<Vec<_>>> = (0..args.producers)
            .map(|_| {
                (0..per_producer)
                    .map(|_| self.envelope(args.size))
                    .collect::<Vec<_>>()
                    .chunks(args.stage_batch)
                    .map(<[_]>::to_vec)
                    .collect()
            })
            .collect();
        let start = Instant::now();
        let mut producers = tokio::task::JoinSet::new();
        for producer in batches {
            let pool = self.producer_pool.clone();
            let topology = self.topology.clone();
            let waker = self.waker.clone();
            producers.spawn(async move {
                for mut batch in producer {
                    let mut tx = pool.begin().await?;
                    outbox::stage_all(&mut tx, &topology, &mut batch).await?;
                    tx.commit().await?;
                    waker.wake();
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = producers.join_next().await {
            r??;
        }
        let staged = start.elapsed();
        tracing::info!(total, seconds = staged.as_secs_f64(), "staging done");
        self.wait_applied(base + total, Duration::from_secs(600)).await?;
        Ok(total as f64 / start.elapsed().as_secs_f64())
    }

    /// Offers `args.rate` messages per second for `args.seconds` and returns the latencies.
    pub async fn latency(&self, args: &BusArgs) -> anyhow::Result<Latencies> {
        // Warm up: open the producer pool's connections (as a running service has them) and
        // send one second's worth unrecorded, so the figures are the steady state.
        let conns = futures::future::try_join_all((0..32).map(|_| self.producer_pool.acquire())).await?;
        drop(conns);
        self.offer(args.rate, args.rate).await?;
        for h in [&self.latency, &self.staging] {
            if let Ok(mut h) = h.lock() {
                *h = Some(Histogram::new_with_bounds(1, 60_000_000, 3)?);
            }
        }
        self.offer(args.rate, args.rate * args.seconds).await?;
        let take = |h: &Mutex<Option<Histogram<u64>>>| {
            h.lock().map_err(|_| anyhow::anyhow!("latency lock poisoned"))?.take().ok_or_else(|| anyhow::anyhow!("no latency recorded"))
        };
        Ok(Latencies { end_to_end: take(&self.latency)?, staging: take(&self.staging)? })
    }

    /// Stages `total` envelopes at `rate` per second, one per transaction, and waits for them.
    async fn offer(&self, rate: u64, total: u64) -> anyhow::Result<()> {
        let base = self.applied.load(Ordering::Relaxed);
        let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
        let errors = Arc::new(AtomicU64::new(0));
        for _ in 0..total {
            tick.tick().await;
            let permit = in_flight.clone().acquire_owned().await?;
            let pool = self.producer_pool.clone();
            let topology = self.topology.clone();
            let errors = errors.clone();
            let waker = self.waker.clone();
            let staging = self.staging.clone();
            // occurred_at is set here, before the transaction: latency includes the staging commit.
            let mut env = self.envelope(self.size);
            tokio::spawn(async move {
                let staged = async {
                    let began = Instant::now();
                    let mut tx = pool.begin().await?;
                    outbox::stage(&mut tx, &topology, &mut env).await?;
                    tx.commit().await?;
                    waker.wake();
                    if let Ok(mut h) = staging.lock()
                        && let Some(h) = h.as_mut()
                    {
                        h.saturating_record(u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX));
                    }
                    anyhow::Ok(())
                };
                if staged.await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                drop(permit);
            });
        }
        self.wait_applied(base + total - errors.load(Ordering::Relaxed), Duration::from_secs(120)).await?;
        anyhow::ensure!(errors.load(Ordering::Relaxed) == 0, "{} stagings failed", errors.load(Ordering::Relaxed));
        Ok(())
    }

    /// Stops it and drops its database and queues.
    pub async fn cleanup(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let conn = self.connector.connect("bench cleanup").await?;
        let ch = conn.create_channel().await?;
        self.topology.delete(&ch).await?;
        let _ = conn.close(200, "done".into()).await;
        self.pool.close().await;
        self.producer_pool.close().await;
        let admin = DatabaseConfig::from_url(&self.admin_url)?;
        let mut conn = PgConnection::connect_with(&admin.connect_options()).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.db_name))).execute(&mut conn).await?;
        Ok(())
    }
}

/// Stands in for the audit service: consumes and acks the tap so it does not grow without bound
/// (the broker's cost of the second copy is part of what the bus costs).
async fn drain_tap(connector: Connector, queue: String, shutdown: CancellationToken) -> anyhow::Result<()> {
    let conn = connector.connect("bench tap drain").await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = ch.basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
    let mut drained: u64 = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            d = consumer.next() => match d {
                // Acks in groups of 100, as a batching consumer such as the audit service would.
                Some(Ok(d)) => {
                    drained += 1;
                    if drained.is_multiple_of(100) {
                        d.ack(BasicAckOptions { multiple: true }).await?;
                    }
                }
                _ => break,
            }
        }
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}
