//! Traces that arrive: the services export their spans over OTLP/gRPC to a real receiver (the
//! collector's `TraceService`, `duijie_tests::otlp`), and one referral's way across the bus is
//! one trace: the court's `SubmitReferral` call, the relay's publish, the mediation centre's
//! apply and the audit store's append, each naming the case. Log lines inside carry the trace
//! id. A collector that is not there costs spans, never a referral.
//!
//! Each test installs the process's telemetry itself, so they need a process each (nextest).

use std::time::Duration;

use duijie_proto::v1::ClockPolicyKind;
use duijie_tests::otlp::{self, ReceivedSpan, Receiver};
use duijie_tests::stack::{self, Stack, referral};
use duijie_tests::wait_until;
use sqlx::Connection as _;

/// The audit store's record of the case's referral: its trace id, once it is there.
async fn audit_trace_id(stack: &Stack, case_id: uuid::Uuid) -> anyhow::Result<Option<String>> {
    let mut conn = sqlx::PgConnection::connect_with(&stack.database("audit")?.connect_options()).await?;
    let id: Option<String> = sqlx::query_scalar("SELECT trace_id FROM audit_log WHERE case_id = $1 AND kind = 'referral'")
        .bind(case_id)
        .fetch_optional(&mut conn)
        .await?;
    let _ = conn.close().await;
    Ok(id)
}

/// The four steps of a referral's way, found among `spans` for `case_id`.
struct Steps {
    submit: ReceivedSpan,
    publish: ReceivedSpan,
    apply: ReceivedSpan,
    append: ReceivedSpan,
}

fn steps(spans: &[ReceivedSpan], case_id: &str) -> Option<Steps> {
    let of_case = |name: &str, extra: &dyn Fn(&ReceivedSpan) -> bool| {
        spans.iter().find(|s| s.attr("case_id") == Some(case_id) && (s.name == name) && extra(s)).cloned()
    };
    Some(Steps {
        submit: of_case("duijie.v1.ReferralsService/SubmitReferral", &|_| true)?,
        publish: of_case("relay.publish", &|s| s.attr("kind") == Some("referral"))?,
        apply: of_case("inbox.apply", &|s| s.attr("consumer") == Some("mediation") && s.attr("kind") == Some("referral"))?,
        append: of_case("audit.append", &|s| s.attr("kind") == Some("referral"))?,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_covers_a_referral_from_submit_to_the_audit_log() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let (telemetry, logs) = otlp::export_to(receiver.endpoint())?;
    let stack = Stack::start().await?;
    let court = stack.clerk(&stack::court()).await?;
    let centre = stack.clerk(&stack::centre()).await?;

    let id = court.submit(&stack::centre(), "JF-431003-2026-000901", referral("trace-1", ClockPolicyKind::CourtOrdinary)).await?;
    centre.wait_for(&id, "DELIVERED").await?;
    let case_id = uuid::Uuid::parse_str(&id)?;
    wait_until("the audit store to record the referral", stack::WAIT, || async { Ok(audit_trace_id(&stack, case_id).await?.is_some()) }).await?;

    // Spans end at their own pace (the call's when its answer is sent, the append's with its
    // batch): flush until all four are in.
    wait_until("the four spans of the referral at the receiver", stack::WAIT, || async {
        otlp::flush(telemetry).await?;
        Ok(steps(&receiver.spans(), &id).is_some())
    })
    .await?;
    let spans = receiver.spans();
    let Some(Steps { submit, publish, apply, append }) = steps(&spans, &id) else { anyhow::bail!("the spans went away") };

    let trace = &submit.trace_id;
    assert_eq!(trace.len(), 32, "{submit:?}");
    for s in [&publish, &apply, &append] {
        assert_eq!(&s.trace_id, trace, "{} is in the submit's trace: {s:?}", s.name);
    }
    // Each step continues the one before it.
    assert!(submit.parent_span_id.is_empty(), "the call starts the trace (its client sent none): {submit:?}");
    let in_chain = |child: &ReceivedSpan, parent_name: &str| {
        let mut at = child.parent_span_id.clone();
        while let Some(p) = spans.iter().find(|s| s.span_id == at) {
            if p.name == parent_name {
                return true;
            }
            at = p.parent_span_id.clone();
        }
        false
    };
    assert!(in_chain(&publish, &submit.name), "the publish descends from the call: {publish:?}");
    assert!(in_chain(&apply, "relay.publish"), "the apply continues the publish: {apply:?}");
    assert_eq!(spans.iter().find(|s| s.span_id == append.parent_span_id).map(|s| (s.name.as_str(), s.attr("consumer"))), Some(("inbox.apply", Some("audit"))),
        "the append is a step of the audit consumer's apply: {append:?}");
    assert_eq!(submit.attr("rpc.method"), Some("SubmitReferral"));
    assert_eq!(submit.attr("rpc.system"), Some("grpc"));
    assert_eq!(submit.service, "duijie-tests", "in-process services share the test's resource");
    assert_eq!(audit_trace_id(&stack, case_id).await?.as_deref(), Some(trace.as_str()), "the audit record names the same trace");

    // Log lines (JSON here) logged inside the trace's spans carry its id.
    let lines = logs.lines();
    let traced: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["trace_id"].as_str() == Some(trace.as_str()))
        .collect();
    assert!(
        traced.iter().any(|v| v["fields"]["message"].as_str() == Some("case opened; its first message is staged")),
        "the court's log line of the submit carries the trace id: {traced:#?}\nall lines:\n{}",
        lines.join("\n")
    );
    assert!(lines.iter().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()), "every line is still JSON");

    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_does_not_answer_holds_up_nothing() -> anyhow::Result<()> {
    // A port that takes connections and never answers: the worst collector (a refused
    // connection fails fast; this one makes every export wait for its timeout).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (telemetry, _logs) = otlp::export_to(format!("http://{}", silent.local_addr()?))?;
    let stack = Stack::start().await?;
    let court = stack.clerk(&stack::court()).await?;
    let centre = stack.clerk(&stack::centre()).await?;

    for n in 1..=3 {
        let started = tokio::time::Instant::now();
        let id = court.submit(&stack::centre(), &format!("JF-431003-2026-00091{n}"), referral(&format!("silent-{n}"), ClockPolicyKind::CourtOrdinary)).await?;
        assert!(started.elapsed() < Duration::from_secs(5), "a submit is not held up by the exporter: {:?}", started.elapsed());
        centre.wait_for(&id, "DELIVERED").await?;
        let case_id = uuid::Uuid::parse_str(&id)?;
        wait_until("the audit store to record the referral", stack::WAIT, || async { Ok(audit_trace_id(&stack, case_id).await?.is_some()) }).await?;
    }
    // A flush gives up after the exporter's timeout (10 s), and nothing above waited for it.
    let flushed = tokio::time::timeout(Duration::from_secs(30), otlp::flush(telemetry)).await;
    assert!(flushed.is_ok(), "a flush to a silent collector ends with the exporter's timeout");
    drop(silent);
    stack.stop().await
}
