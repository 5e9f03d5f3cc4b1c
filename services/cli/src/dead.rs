//! `duijie dead list | replay`: the dead-letter queue `<prefix>.dead`.
//!
//! Messages are read with `basic.get` without acknowledging them, up to the number the queue
//! held when we looked, and held unacknowledged until we are done: a replayed message is acked
//! off the dead queue only after the broker confirmed its republication, and everything else is
//! given back (`nack` with requeue, in the order it was read, so a quorum queue redelivers it in
//! that order). If this process dies midway, the broker requeues whatever it held: nothing is
//! lost, at worst a message is both replayed and still dead (the inbox drops the duplicate).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgGroup, Args, Subcommand};
use duijie_common::amqp::{Connector, DEAD_CONSUMER, DEAD_QUEUE, DEAD_REASON, ORIGINAL_ROUTING_KEY, Topology};
use duijie_common::config::{AmqpConfig, TopologyConfig};
use duijie_proto::v1::Envelope;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use prost::Message as _;
use serde_json::{Value, json};

use crate::error::{CliError, CliResult};
use crate::{Ctx, output};

/// How long to wait for the broker to confirm a republished message.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// `duijie dead …`.
#[derive(Subcommand, Debug)]
pub enum DeadCommand {
    /// List the dead-lettered messages (nothing is removed): id, kind, case, sender → recipient,
    /// the queue it came from, the consumer that refused it and why.
    List,
    /// Put dead-lettered messages back on the queue they came from, after the cause was fixed.
    /// Each is published to that queue with publisher confirms and `mandatory`, and only then
    /// removed from the dead-letter queue; the others stay there. A queue that no longer exists
    /// leaves its messages dead (exit 3); an id that is not in the dead-letter queue is an error
    /// (exit 3, nothing replayed).
    Replay(ReplayArgs),
}

/// `duijie dead replay`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("which").required(true).args(["all", "ids"])))]
pub struct ReplayArgs {
    /// Every message in the dead-letter queue.
    #[arg(long)]
    pub all: bool,
    /// The message id(s) to replay (`--id A --id B` or `--id A B`).
    #[arg(long = "id", value_name = "MESSAGE_ID", num_args = 1..)]
    pub ids: Vec<String>,
}

/// One message of the dead-letter queue, as listed.
#[derive(Debug, Clone)]
pub struct DeadMessage {
    pub message_id: String,
    pub kind: String,
    pub case_id: String,
    pub case_code: String,
    pub sender: String,
    pub recipient: String,
    /// The queue it was dead-lettered from (where a replay puts it back).
    pub queue: Option<String>,
    pub consumer: String,
    pub reason: String,
    pub routing_key: String,
}

impl DeadMessage {
    fn json(&self) -> Value {
        json!({
            "message_id": self.message_id, "kind": self.kind, "case_id": self.case_id, "case_code": self.case_code,
            "sender": self.sender, "recipient": self.recipient, "queue": self.queue, "consumer": self.consumer,
            "reason": self.reason, "routing_key": self.routing_key,
        })
    }
}

fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The first `x-death` entry the broker added when it dead-lettered the message itself
/// (delivery limit), if any.
fn first_death(headers: &FieldTable) -> Option<&FieldTable> {
    match headers.inner().get("x-death")? {
        AMQPValue::FieldArray(a) => a.as_slice().iter().find_map(|v| match v {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        }),
        _ => None,
    }
}

/// The routing key the message had before the broker dead-lettered it: `x-death[0]`'s first
/// `routing-keys` entry.
fn death_routing_key(death: Option<&FieldTable>) -> Option<String> {
    match death?.inner().get("routing-keys")? {
        AMQPValue::FieldArray(a) => a.as_slice().first().and_then(text),
        _ => None,
    }
}

/// What a dead message says about itself: our consumer's headers, else the broker's `x-death`.
pub fn describe(m: &lapin::message::Delivery) -> DeadMessage {
    let headers = m.properties.headers().clone().unwrap_or_default();
    let header = |k: &str| headers.inner().get(k).and_then(text);
    let death = first_death(&headers);
    let death_field = |k: &str| death.and_then(|t| t.inner().get(k)).and_then(text);
    let env = Envelope::decode(m.data.as_slice()).ok();
    let prop_id = m.properties.message_id().as_ref().map(|s| s.as_str().to_owned());
    let reason = header(DEAD_REASON)
        .or_else(|| death_field("reason").map(|r| format!("dead-lettered by the broker: {r}")))
        .unwrap_or_else(|| "-".into());
    DeadMessage {
        message_id: prop_id.or_else(|| env.as_ref().map(|e| e.message_id.clone())).unwrap_or_default(),
        kind: env.as_ref().map(|e| output::kind(e.kind).to_owned()).unwrap_or_else(|| "(undecodable)".into()),
        case_id: env.as_ref().map(|e| e.case_id.clone()).unwrap_or_default(),
        case_code: env.as_ref().map(|e| e.case_code.clone()).unwrap_or_default(),
        sender: env.as_ref().map(|e| output::agency(e.sender.as_ref())).unwrap_or_default(),
        recipient: env.as_ref().map(|e| output::agency(e.recipient.as_ref())).unwrap_or_default(),
        queue: header(DEAD_QUEUE).or_else(|| death_field("queue")),
        consumer: header(DEAD_CONSUMER).unwrap_or_else(|| if death.is_some() { "(broker)".into() } else { "-".into() }),
        reason,
        routing_key: header(ORIGINAL_ROUTING_KEY)
            .or_else(|| death_routing_key(death))
            .unwrap_or_else(|| m.routing_key.as_str().to_owned()),
    }
}

/// The properties to republish with: the original ones without what dead-lettering added.
fn replay_properties(p: &BasicProperties) -> BasicProperties {
    let headers = p.headers().clone().unwrap_or_default();
    let mut kept: std::collections::BTreeMap<_, _> = headers
        .inner()
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            // The original routing key stays: the consumer records it, and a second dead-lettering
            // keeps it rather than the queue name the replay was published with.
            !(k.starts_with("x-duijie-dead-") || k == "x-death" || k.starts_with("x-first-death-") || k.starts_with("x-last-death-"))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Dead-lettered by the broker itself (delivery limit): the original routing key is only in
    // x-death, which goes. Keep it in our header, as a consumer's dead-lettering does, or the
    // consumer would see the dead-letter queue's name the replay is published with.
    if !kept.contains_key(ORIGINAL_ROUTING_KEY)
        && let Some(rk) = death_routing_key(first_death(&headers))
    {
        kept.insert(ORIGINAL_ROUTING_KEY.into(), AMQPValue::LongString(rk.into()));
    }
    p.clone().with_headers(FieldTable::from(kept)).with_delivery_mode(2)
}

/// A connection to the broker and the dead-letter queue's name.
struct DeadQueue {
    conn: Connection,
    queue: String,
}

impl DeadQueue {
    async fn open(ctx: &Ctx) -> CliResult<Self> {
        let connector = Connector::new(AmqpConfig::new(ctx.amqp_url.clone(), "duijie-cli"));
        let conn = connector.connect("dead letters").await.map_err(CliError::Failure)?;
        let topology = Topology::new(TopologyConfig { prefix: ctx.prefix.clone(), ..Default::default() });
        Ok(Self { conn, queue: topology.dead_queue() })
    }

    /// Takes (without acknowledging) every message the queue holds now, in queue order.
    async fn take_all(&self, ch: &Channel) -> CliResult<Vec<BasicGetMessage>> {
        let passive = QueueDeclareOptions { passive: true, durable: true, ..Default::default() };
        let count = match ch.queue_declare(self.queue.clone().into(), passive, FieldTable::default()).await {
            Ok(q) => q.message_count(),
            Err(e) => {
                return Err(CliError::Usage(format!(
                    "dead-letter queue {} not found ({e}); wrong --prefix, or the topology was never declared",
                    self.queue
                )));
            }
        };
        let mut out = Vec::new();
        // Bounded by the count: messages dead-lettered meanwhile wait for the next run, and
        // what we hold unacked is never handed to us again, so this ends.
        while out.len() < count as usize {
            match ch.basic_get(self.queue.clone().into(), BasicGetOptions { no_ack: false }).await.context("reading the dead-letter queue")? {
                Some(m) => out.push(m),
                None => break,
            }
        }
        Ok(out)
    }

    async fn close(self) {
        // Closing also requeues anything still unacknowledged.
        let _ = self.conn.close(200, "done".into()).await;
    }
}

/// Gives messages back to the dead-letter queue in the order they were read.
async fn give_back(held: &[&BasicGetMessage]) -> CliResult<()> {
    for m in held {
        // `false`: not sent, the channel is closed (the broker requeues what it held).
        let sent = m.delivery.acker.nack(BasicNackOptions { multiple: false, requeue: true }).await.context("returning a message to the dead-letter queue")?;
        if !sent {
            return Err(CliError::Failure(anyhow::anyhow!("returning a message to the dead-letter queue: the channel is closed")));
        }
    }
    Ok(())
}

/// Acks a replayed message off the dead-letter queue.
async fn remove(m: &BasicGetMessage) -> Result<(), String> {
    match m.delivery.acker.ack(BasicAckOptions::default()).await {
        Ok(true) => Ok(()),
        // Not sent: the channel is closed (the broker requeues the message).
        Ok(false) => Err("removing a replayed message from the dead-letter queue: the channel is closed".into()),
        Err(e) => Err(format!("removing a replayed message from the dead-letter queue: {e}")),
    }
}

/// Runs `duijie dead …`.
pub async fn run(ctx: &Ctx, cmd: DeadCommand) -> CliResult<()> {
    let dq = DeadQueue::open(ctx).await?;
    let result = match cmd {
        DeadCommand::List => list(ctx, &dq).await,
        DeadCommand::Replay(args) => replay(ctx, &dq, &args).await,
    };
    dq.close().await;
    result
}

/// Lists the dead messages without removing them.
async fn list(ctx: &Ctx, dq: &DeadQueue) -> CliResult<()> {
    let ch = dq.conn.create_channel().await.context("opening a channel")?;
    let held = dq.take_all(&ch).await?;
    let listed: Vec<DeadMessage> = held.iter().map(|m| describe(&m.delivery)).collect();
    give_back(&held.iter().collect::<Vec<_>>()).await?;
    let _ = ch.close(200, "done".into()).await;
    if ctx.json {
        output::print_json(&Value::Array(listed.iter().map(DeadMessage::json).collect()));
        return Ok(());
    }
    for d in &listed {
        println!("{}  {}  {}  {} → {}", d.message_id, d.kind, if d.case_code.is_empty() { "-" } else { &d.case_code }, d.sender, d.recipient);
        println!("    queue {}   consumer {}", d.queue.as_deref().unwrap_or("(unknown)"), d.consumer);
        println!("    reason: {}", d.reason);
    }
    println!("{} dead-lettered message(s) in {}", listed.len(), dq.queue);
    Ok(())
}

/// Why one message was not replayed.
#[derive(Debug)]
enum NotReplayed {
    /// No queue to put it back on, or the queue is gone: needs a fix first.
    Refused(String),
    /// The broker did not confirm it, or it was not tried because the broker went away: try again.
    Unavailable(String),
}

impl NotReplayed {
    fn reason(&self) -> &str {
        match self {
            NotReplayed::Refused(s) | NotReplayed::Unavailable(s) => s,
        }
    }
}

/// A message republished (the broker confirmed it on its queue).
#[derive(Debug)]
struct Replayed<'a> {
    message: &'a DeadMessage,
    queue: String,
    /// Why it could not be removed from the dead-letter queue afterwards, if it could not: it is
    /// then both replayed and still dead (replaying it again is harmless, the inbox drops the
    /// duplicate).
    not_removed: Option<String>,
}

/// What a replay did, message by message.
#[derive(Debug, Default)]
struct ReplayReport<'a> {
    replayed: Vec<Replayed<'a>>,
    failed: Vec<(&'a DeadMessage, NotReplayed)>,
    /// Messages still in the dead-letter queue (not selected, not replayed, or not removed).
    left: usize,
    /// The broker went away midway (an ack or a nack failed): the replay stopped there.
    broker_gone: Option<String>,
}

impl ReplayReport<'_> {
    fn json(&self) -> Value {
        json!({
            "replayed": self.replayed.iter().map(|r| {
                let mut v = r.message.json();
                v["replayed_to"] = json!(r.queue);
                v["removed_from_dead_queue"] = json!(r.not_removed.is_none());
                if let Some(e) = &r.not_removed {
                    v["error"] = json!(e);
                }
                v
            }).collect::<Vec<_>>(),
            "failed": self.failed.iter().map(|(d, e)| { let mut v = d.json(); v["error"] = json!(e.reason()); v }).collect::<Vec<_>>(),
            "left_in_dead_queue": self.left,
            "broker_error": self.broker_gone,
        })
    }

    fn print_text(&self, dead_queue: &str) {
        for r in &self.replayed {
            let d = r.message;
            println!("replayed {}  {}  {}  {} → {}  to {}", d.message_id, d.kind, d.case_code, d.sender, d.recipient, r.queue);
            if let Some(e) = &r.not_removed {
                eprintln!(
                    "replayed but still dead {}: removing it from {dead_queue} failed ({e}); replaying it again is harmless (the inbox drops the duplicate)",
                    d.message_id
                );
            }
        }
        for (d, e) in &self.failed {
            eprintln!("not replayed {}  {}  {}: {}", d.message_id, d.kind, d.case_code, e.reason());
        }
        if let Some(e) = &self.broker_gone {
            eprintln!("stopped: the broker went away ({e}); what was not removed stays in {dead_queue}");
        }
        println!("{} replayed, {} not replayed, {} left in {dead_queue}", self.replayed.len(), self.failed.len(), self.left);
    }

    /// The exit: 4 if the broker went away or a message was not confirmed, 3 if one needs a fix
    /// first (no queue to put it back on).
    fn outcome(&self) -> CliResult<()> {
        let not_removed = self.replayed.iter().filter(|r| r.not_removed.is_some()).count();
        if let Some(e) = &self.broker_gone {
            return Err(CliError::Unavailable(format!(
                "the broker went away midway ({e}): {} replayed ({not_removed} of them still in the dead-letter queue too), {} not replayed; try again",
                self.replayed.len(),
                self.failed.len()
            )));
        }
        if self.failed.is_empty() {
            Ok(())
        } else if self.failed.iter().any(|(_, e)| matches!(e, NotReplayed::Refused(_))) {
            Err(CliError::Refused(format!("{} message(s) not replayed", self.failed.len())))
        } else {
            Err(CliError::Unavailable(format!("{} message(s) not replayed; try again", self.failed.len())))
        }
    }
}

async fn republish(pub_ch: &Channel, m: &BasicGetMessage, queue: &str) -> Result<(), NotReplayed> {
    let publish = pub_ch
        .basic_publish(
            "".into(), // the default exchange routes to the queue named by the routing key
            queue.to_owned().into(),
            BasicPublishOptions { mandatory: true, ..Default::default() },
            &m.delivery.data,
            replay_properties(&m.delivery.properties),
        )
        .await
        .map_err(|e| NotReplayed::Unavailable(format!("publishing: {e}")))?;
    match tokio::time::timeout(CONFIRM_TIMEOUT, publish).await {
        Err(_) => Err(NotReplayed::Unavailable("no confirm from the broker".into())),
        Ok(Err(e)) => Err(NotReplayed::Unavailable(format!("waiting for the confirm: {e}"))),
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(_)))) => Err(NotReplayed::Refused(format!("queue {queue} does not exist (message returned); left in the dead-letter queue"))),
        Ok(Ok(other)) => Err(NotReplayed::Unavailable(format!("the broker did not take it: {other:?}"))),
    }
}

async fn replay(ctx: &Ctx, dq: &DeadQueue, args: &ReplayArgs) -> CliResult<()> {
    let ch = dq.conn.create_channel().await.context("opening a channel")?;
    let pub_ch = dq.conn.create_channel().await.context("opening a channel")?;
    pub_ch.confirm_select(ConfirmSelectOptions::default()).await.context("enabling publisher confirms")?;
    let held = dq.take_all(&ch).await?;
    let described: Vec<DeadMessage> = held.iter().map(|m| describe(&m.delivery)).collect();
    let wanted: BTreeSet<&str> = args.ids.iter().map(|s| s.trim()).collect();
    let missing: Vec<&str> = wanted.iter().copied().filter(|id| !described.iter().any(|d| d.message_id == *id)).collect();
    if !args.all && !missing.is_empty() {
        give_back(&held.iter().collect::<Vec<_>>()).await?;
        return Err(CliError::Refused(format!("not in {}: {} (nothing replayed)", dq.queue, missing.join(", "))));
    }
    let mut report = ReplayReport::default();
    let mut keep: Vec<&BasicGetMessage> = Vec::new();
    for (m, d) in held.iter().zip(&described) {
        if !(args.all || wanted.contains(d.message_id.as_str())) {
            keep.push(m);
            continue;
        }
        if let Some(e) = &report.broker_gone {
            // Held on a channel that is gone: the broker puts it back in the dead-letter queue.
            report.failed.push((d, NotReplayed::Unavailable(format!("not tried: the broker went away ({e})"))));
            continue;
        }
        let Some(queue) = d.queue.clone() else {
            report.failed.push((d, NotReplayed::Refused("no original queue recorded (neither x-duijie-dead-queue nor x-death)".into())));
            keep.push(m);
            continue;
        };
        match republish(&pub_ch, m, &queue).await {
            // Confirmed on its queue: only now does it leave the dead-letter queue.
            Ok(()) => match remove(m).await {
                Ok(()) => report.replayed.push(Replayed { message: d, queue, not_removed: None }),
                Err(e) => {
                    report.replayed.push(Replayed { message: d, queue, not_removed: Some(e.clone()) });
                    report.broker_gone = Some(e);
                }
            },
            Err(e) => {
                report.failed.push((d, e));
                keep.push(m);
            }
        }
    }
    // After a failed ack the channel is gone and the broker requeues what it held; otherwise
    // give the rest back in order. If that fails, the broker requeues them all the same.
    if report.broker_gone.is_none()
        && let Err(e) = give_back(&keep).await
    {
        report.broker_gone = Some(format!("{e}"));
    }
    let _ = ch.close(200, "done".into()).await;
    let _ = pub_ch.close(200, "done".into()).await;
    report.left = held.len() - report.replayed.iter().filter(|r| r.not_removed.is_none()).count();
    if ctx.json {
        output::print_json(&report.json());
    } else {
        report.print_text(&dq.queue);
    }
    report.outcome()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_drops_what_dead_lettering_added() {
        let mut h = FieldTable::default();
        h.insert(DEAD_REASON.into(), AMQPValue::LongString("unknown case".into()));
        h.insert(DEAD_QUEUE.into(), AMQPValue::LongString("p.inbox.mediation.431003".into()));
        h.insert("x-death".into(), AMQPValue::FieldArray(vec![].into()));
        h.insert("traceparent".into(), AMQPValue::LongString("00-…".into()));
        h.insert(ORIGINAL_ROUTING_KEY.into(), AMQPValue::LongString("mediation.431003.supervision_notice".into()));
        let p = replay_properties(&BasicProperties::default().with_headers(h));
        let keys: Vec<String> = p.headers().clone().unwrap_or_default().inner().keys().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(keys, ["traceparent", ORIGINAL_ROUTING_KEY], "the original routing key survives the replay");
    }

    #[test]
    fn broker_dead_letters_name_their_queue_in_x_death() {
        let mut death = FieldTable::default();
        death.insert("queue".into(), AMQPValue::LongString("p.audit.tap".into()));
        death.insert("reason".into(), AMQPValue::LongString("delivery_limit".into()));
        let mut h = FieldTable::default();
        h.insert("x-death".into(), AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()));
        let d = describe(&lapin::message::Delivery::mock(1, "p.dead".into(), "k".into(), false, vec![]).with_properties(h));
        assert_eq!(d.queue.as_deref(), Some("p.audit.tap"));
        assert!(d.reason.contains("delivery_limit"), "{d:?}");
    }

    fn broker_death(routing_key: &str) -> FieldTable {
        let mut death = FieldTable::default();
        death.insert("queue".into(), AMQPValue::LongString("p.inbox.mediation.431003".into()));
        death.insert("reason".into(), AMQPValue::LongString("delivery_limit".into()));
        death.insert("routing-keys".into(), AMQPValue::FieldArray(vec![AMQPValue::LongString(routing_key.into())].into()));
        let mut h = FieldTable::default();
        h.insert("x-death".into(), AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()));
        h
    }

    fn header(p: &BasicProperties, k: &str) -> Option<String> {
        p.headers().as_ref().and_then(|h| h.inner().get(k)).and_then(text)
    }

    #[test]
    fn a_broker_dead_letter_replays_with_its_original_routing_key() {
        let h = broker_death("mediation.431003.referral");
        let d = describe(&lapin::message::Delivery::mock(1, "p.dead".into(), "p.inbox.mediation.431003".into(), false, vec![]).with_properties(h.clone()));
        assert_eq!(d.routing_key, "mediation.431003.referral");
        let p = replay_properties(&BasicProperties::default().with_headers(h));
        assert_eq!(header(&p, ORIGINAL_ROUTING_KEY).as_deref(), Some("mediation.431003.referral"));
        // As a long string: what the consumer reads (duijie_common::inbox).
        assert!(matches!(p.headers().as_ref().and_then(|h| h.inner().get(ORIGINAL_ROUTING_KEY)), Some(AMQPValue::LongString(_))));
        assert!(p.headers().as_ref().is_some_and(|h| !h.inner().contains_key("x-death")));
    }

    #[test]
    fn an_original_routing_key_header_wins_over_x_death() {
        // Replayed once (our header set, published to the queue by name), then dead-lettered by
        // the broker: x-death names the queue, the header the original key.
        let mut h = broker_death("p.inbox.mediation.431003");
        h.insert(ORIGINAL_ROUTING_KEY.into(), AMQPValue::LongString("mediation.431003.referral".into()));
        let p = replay_properties(&BasicProperties::default().with_headers(h));
        assert_eq!(header(&p, ORIGINAL_ROUTING_KEY).as_deref(), Some("mediation.431003.referral"));
        // Neither: nothing is made up.
        let p = replay_properties(&BasicProperties::default().with_headers(FieldTable::default()));
        assert_eq!(header(&p, ORIGINAL_ROUTING_KEY), None);
    }

    #[test]
    fn a_replay_cut_short_says_what_was_replayed_and_exits_4() {
        let msg = |id: &str| DeadMessage {
            message_id: id.into(),
            kind: "referral".into(),
            case_id: String::new(),
            case_code: "JF-1".into(),
            sender: "court:431003".into(),
            recipient: "mediation:431003".into(),
            queue: Some("p.inbox.mediation.431003".into()),
            consumer: "-".into(),
            reason: "-".into(),
            routing_key: "k".into(),
        };
        let (a, b, c) = (msg("a"), msg("b"), msg("c"));
        let gone = "removing a replayed message from the dead-letter queue: channel closed".to_owned();
        let report = ReplayReport {
            replayed: vec![
                Replayed { message: &a, queue: "q".into(), not_removed: None },
                Replayed { message: &b, queue: "q".into(), not_removed: Some(gone.clone()) },
            ],
            failed: vec![(&c, NotReplayed::Unavailable("not tried: the broker went away".into()))],
            left: 2,
            broker_gone: Some(gone),
        };
        let v = report.json();
        let ids = |k: &str| v[k].as_array().map(|a| a.iter().filter_map(|m| m["message_id"].as_str()).collect::<Vec<_>>()).unwrap_or_default();
        assert_eq!((ids("replayed"), ids("failed")), (vec!["a", "b"], vec!["c"]));
        assert_eq!(v["replayed"][0]["removed_from_dead_queue"], true);
        assert_eq!(v["replayed"][1]["removed_from_dead_queue"], false);
        assert!(v["broker_error"].as_str().is_some_and(|e| e.contains("channel closed")), "{v}");
        assert_eq!(report.outcome().map_err(|e| e.exit_code()), Err(crate::error::exit::UNAVAILABLE));

        // Without the broker going away: a message that needs a fix is exit 3, all done is 0.
        let refused = ReplayReport { failed: vec![(&c, NotReplayed::Refused("no queue".into()))], ..Default::default() };
        assert_eq!(refused.outcome().map_err(|e| e.exit_code()), Err(crate::error::exit::REFUSED));
        let done = ReplayReport { replayed: vec![Replayed { message: &a, queue: "q".into(), not_removed: None }], ..Default::default() };
        assert!(done.outcome().is_ok());
    }

    trait WithHeaders {
        fn with_properties(self, h: FieldTable) -> Self;
    }
    impl WithHeaders for lapin::message::Delivery {
        fn with_properties(mut self, h: FieldTable) -> Self {
            self.properties = BasicProperties::default().with_headers(h);
            self
        }
    }
}
