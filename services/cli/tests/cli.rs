//! The `duijie` binary against the real services: each test starts the audit service and the
//! five agency services in-process (own databases, own queue prefix, real RabbitMQ and
//! PostgreSQL) and runs the binary as an operator would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use duijie_proto::v1::*;
use duijie_tests::stack::{self, Stack};
use duijie_tests::wait_until;
use secrecy::ExposeSecret as _;
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

/// How long a test waits for something to show (the services are in-process and local).
const WAIT: Duration = Duration::from_secs(30);

/// One run of the binary.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.stdout).map_err(|e| anyhow::anyhow!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// The binary pointed at one stack.
struct Duijie {
    common: Vec<String>,
}

impl Duijie {
    fn for_stack(stack: &Stack) -> anyhow::Result<Self> {
        let pki = stack.pki()?;
        Ok(Self {
            common: vec![
                "--pki".into(),
                pki.dir().display().to_string(),
                "--endpoints".into(),
                stack.endpoints()?.to_list(),
                "--prefix".into(),
                stack.prefix().to_owned(),
                "--amqp-url".into(),
                stack.bus.amqp_cfg.url.expose_secret().to_owned(),
            ],
        })
    }

    /// Runs `duijie <args>` (with this stack's options), feeding `stdin` if given.
    async fn run_with(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Run> {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_duijie"));
        cmd.args(args)
            .args(&self.common)
            // Only what the test passes counts, not the developer's environment.
            .env_remove("DUIJIE_AS")
            .env_remove("DUIJIE_ENDPOINTS")
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).await?;
            drop(pipe); // end of input
        }
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await??;
        Ok(Run { code: out.status.code(), stdout: String::from_utf8_lossy(&out.stdout).into_owned(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() })
    }

    async fn run(&self, args: &[&str]) -> anyhow::Result<Run> {
        self.run_with(args, None).await
    }

    /// Runs and insists on exit code `code`.
    async fn expect(&self, args: &[&str], code: i32) -> anyhow::Result<Run> {
        let r = self.run(args).await?;
        anyhow::ensure!(r.code == Some(code), "duijie {args:?}: expected exit {code}, got {r:?}");
        Ok(r)
    }
}

/// A scratch directory for this test's files.
fn scratch(stack: &Stack) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("duijie-cli-{}", stack.prefix()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/referral.yaml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_has_help() -> anyhow::Result<()> {
    let bin = Duijie { common: Vec::new() };
    let top = bin.expect(&["--help"], 0).await?;
    assert!(top.stdout.contains("Exit codes") && top.stdout.contains("5  the audit chain does not verify"), "{top:?}");
    for cmd in [
        &["send", "--help"][..],
        &["intake", "--help"],
        &["timeline", "--help"],
        &["watch", "--help"],
        &["overdue", "--help"],
        &["open", "--help"],
        &["stats", "--help"],
        &["verify", "--help"],
        &["anchor", "--help"],
        &["dead", "--help"],
        &["dead", "list", "--help"],
        &["dead", "replay", "--help"],
        &["demo", "--help"],
    ] {
        let r = bin.expect(cmd, 0).await?;
        assert!(r.stdout.contains("Usage: duijie"), "{cmd:?}: {r:?}");
    }
    // The file format is documented where an operator looks for it.
    let send = bin.expect(&["send", "--help"], 0).await?;
    assert!(send.stdout.contains("clock_policy:") && send.stdout.contains("amount_yuan:"), "{send:?}");
    // Bad usage is exit 2, as clap's own errors are.
    bin.expect(&["dead", "replay"], 2).await?;
    bin.expect(&["stats", "--from", "yesterday"], 2).await?;
    // A state no case has (a typo would otherwise wait forever): exit 2, naming the states.
    let typo = bin.expect(&["watch", "JF-431003-2026-000123", "--until", "setled"], 2).await?;
    assert!(typo.stderr.contains("setled") && typo.stderr.contains("SETTLED") && typo.stderr.contains("CANCEL_REQUESTED"), "{typo:?}");
    let watch = bin.expect(&["watch", "--help"], 0).await?;
    assert!(!watch.stdout.contains("grace-secs"), "the grace is not an operator's option: {watch:?}");
    Ok(())
}

/// The messages each agency that has the case sent in it (evidence and deadline notices, which
/// the bus sends on its own schedule, left out), by case and agency.
async fn sent_by_each(stack: &Stack, case_ids: &[String]) -> anyhow::Result<BTreeMap<(String, String), Vec<(MessageKind, String)>>> {
    let mut out = BTreeMap::new();
    for who in stack::demo_nodes() {
        let clerk = stack.clerk(&who).await?;
        for id in case_ids {
            let view = match clerk.case(id).await {
                Ok(v) => v,
                // Not one of this agency's cases.
                Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::PermissionDenied) => continue,
                Err(s) => anyhow::bail!("reading case {id} as {who}: {s}"),
            };
            let mut sent: Vec<(MessageKind, String)> = view
                .timeline
                .iter()
                .filter(|e| e.direction == "out")
                .filter(|e| !matches!(e.kind(), MessageKind::DeliveryEvidence | MessageKind::DeadlineWarning | MessageKind::DeadlineBreached))
                .map(|e| (e.kind(), e.message_id.clone()))
                .collect();
            sent.sort();
            out.insert((id.clone(), who.to_string()), sent);
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_yaml_and_json_idempotently_and_refusals_name_the_field() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let bin = Duijie::for_stack(&stack)?;
    let centre = stack.clerk(&stack::centre()).await?;
    let dir = scratch(&stack)?;

    // The example file (YAML, court → centre) as shipped.
    let example_path = example();
    let example_arg = example_path.display().to_string();
    let sent = bin.expect(&["send", &example_arg, "--json"], 0).await?.json()?;
    let case_id = sent["case_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(sent["case_code"], "JF-431003-2026-000123", "{sent}");
    let at_centre = centre.wait_for(&case_id, "DELIVERED").await?;
    let referral = at_centre.referral.clone().unwrap_or_default();
    assert_eq!(referral.amount.map(|m| m.minor_units), Some(1_280_050), "¥12800.50 in fen");
    assert_eq!(referral.parties.get(1).map(|p| p.role()), Some(PartyRole::Defendant));
    assert_eq!(at_centre.clock_policy(), ClockPolicyKind::CourtOrdinary);

    // The same referral again (from stdin, format detected): the same case, no second one.
    let text = std::fs::read_to_string(&example_path)?;
    let again = bin.run_with(&["send", "-", "--json"], Some(&text)).await?;
    assert_eq!(again.code, Some(0), "{again:?}");
    assert_eq!(again.json()?["case_id"], case_id.as_str());

    // A JSON file, police → centre, amount as a number; the text output names the case.
    let police = serde_json::json!({
        "from": "police:431003-01", "to": "mediation:431003", "case_code": "JF-431003-01-2026-000045",
        "legal_basis": "《治安管理处罚法》第九条", "mode": "police_transfer",
        "parties": [
            {"id": "p1", "role": "victim", "name": "王芳", "id_number": "11010519491231002X", "contact": "13800000003"},
            {"id": "p2", "role": "offender", "name": "赵强", "id_number": "440524188001010014"}
        ],
        "category": "public_security", "cause_of_action": "殴打他人", "facts": "双方因停车发生口角并推搡，一方轻微伤。",
        "claims": ["赔偿医疗费"], "amount_yuan": 1200.5, "consents": ["p1", "p2"], "clock_policy": "police"
    });
    let json_path = dir.join("police.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&police)?)?;
    let out = bin.expect(&["send", &json_path.display().to_string()], 0).await?;
    assert!(out.stdout.contains("JF-431003-01-2026-000045") && out.stdout.contains("mediation:431003"), "{out:?}");
    let police_case = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("case"))
        .map(|s| s.trim().to_owned())
        .ok_or_else(|| anyhow::anyhow!("no case id in {out:?}"))?;
    let v = centre.wait_for(&police_case, "DELIVERED").await?;
    assert_eq!(v.channel(), Channel::Police);
    assert_eq!(v.referral.and_then(|r| r.amount).map(|m| m.minor_units), Some(120_050));

    // A bad identity number: refused by the service, which names the field (exit 3).
    let bad_id = text.replace("11010519491231002X", "110105194912310021").replace("000123", "000124");
    let bad_path = dir.join("bad-id.yaml");
    std::fs::write(&bad_path, bad_id)?;
    let refused = bin.expect(&["send", &bad_path.display().to_string()], 3).await?;
    assert!(refused.stderr.contains("referral.parties[0].identity.number"), "{refused:?}");

    // An unknown enum name, an unknown field, a bad amount: the file is invalid (exit 2), the
    // message names the field.
    for (from, to, field) in [
        ("clock_policy: court_ordinary", "clock_policy: court_fast", "clock_policy"),
        ("    role: plaintiff", "    role: judge", "parties[0].role"),
        ("category: neighbour", "category: neighbour\ncolour: red", "colour"),
        ("amount_yuan: \"12800.50\"", "amount_yuan: \"12800.505\"", "amount_yuan"),
    ] {
        let path = dir.join("invalid.yaml");
        std::fs::write(&path, text.replace(from, to))?;
        let r = bin.expect(&["send", &path.display().to_string()], 2).await?;
        assert!(r.stderr.contains(field), "{field}: {r:?}");
    }
    let missing = bin.expect(&["send", &dir.join("no-such-file.yaml").display().to_string()], 2).await?;
    assert!(missing.stderr.contains("no-such-file.yaml"), "{missing:?}");

    // The centre registers a dispute it took in itself (the shipped example), idempotently;
    // a referral file is not an intake, and an intake names no recipient.
    let intake = example().with_file_name("intake.yaml").display().to_string();
    let own = bin.expect(&["intake", &intake, "--json"], 0).await?.json()?;
    assert_eq!((own["channel"].as_str(), own["state"].as_str()), (Some("self_intake"), Some("ACCEPTED")), "{own}");
    assert_eq!(bin.expect(&["intake", &intake, "--json"], 0).await?.json()?["case_id"], own["case_id"]);
    let not_intake = bin.expect(&["intake", &example_arg], 2).await?;
    assert!(not_intake.stderr.contains("from: court:431003 is not a mediation body"), "{not_intake:?}");
    let intake_text = std::fs::read_to_string(&intake)?;
    let with_to = dir.join("with-to.yaml");
    std::fs::write(&with_to, intake_text.replace("case_code:", "to: mediation:431003-102\ncase_code:"))?;
    assert!(bin.expect(&["intake", &with_to.display().to_string()], 2).await?.stderr.contains("to:"));
    let no_source = dir.join("no-source.yaml");
    std::fs::write(&no_source, intake_text.replace("  source: hotline_148\n", "").replace("Z00007", "Z00008"))?;
    assert!(bin.expect(&["intake", &no_source.display().to_string()], 2).await?.stderr.contains("source"));

    // Exactly the two referrals and the centre's own case are there.
    let inbox = centre.cases().list_cases(ListCasesRequest::default()).await?.into_inner();
    assert_eq!(inbox.cases.len(), 3, "{inbox:?}");
    let _ = std::fs::remove_dir_all(&dir);
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_to_closure_then_watch_timeline_stats_overdue_verify() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let bin = Duijie::for_stack(&stack)?;

    let started = Instant::now();
    let demo = bin.expect(&["demo", "--cases", "8", "--seed", "7", "--json"], 0).await?.json()?;
    let demo_time = started.elapsed();
    let results = demo["results"].as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), 8, "{demo}");
    assert!(results.iter().all(|r| r["state"] == "CLOSED" && r["error"].is_null()), "every case closed: {demo}");
    assert_eq!(demo["by_state"]["CLOSED"], 8);
    let channels: Vec<&str> = results.iter().filter_map(|r| r["channel"].as_str()).collect();
    assert_eq!(channels, ["court", "police", "petition", "procuratorate", "court", "police", "petition", "procuratorate"]);

    // The same seed again: the same cases, answered without acting twice — in every channel,
    // the petition office's 办结 (ClosePetition) included.
    let case_ids: Vec<String> = results.iter().filter_map(|r| r["case_id"].as_str().map(str::to_owned)).collect();
    assert_eq!(case_ids.len(), 8, "{demo}");
    let petition_closed = results.iter().filter(|r| r["channel"] == "petition" && r["plan"] == "supervised, settled, petition closed").count();
    assert!(petition_closed >= 1, "the demo closes a petition (办结): {demo}");
    let sent_before = sent_by_each(&stack, &case_ids).await?;
    let rerun = bin.expect(&["demo", "--cases", "8", "--seed", "7", "--json"], 0).await?.json()?;
    let ids = |v: &Value| v["results"].as_array().map(|a| a.iter().map(|r| r["case_id"].clone()).collect::<Vec<_>>()).unwrap_or_default();
    assert_eq!(ids(&rerun), ids(&demo));
    assert_eq!(rerun["by_state"]["CLOSED"], 8, "{rerun}");
    let sent_after = sent_by_each(&stack, &case_ids).await?;
    let sent_again: Vec<String> = sent_after
        .iter()
        .filter(|(k, v)| sent_before.get(*k) != Some(*v))
        .map(|((case, who), v)| format!("case {case} as {who}: before {:?}, after {v:?}", sent_before.get(&(case.clone(), who.clone()))))
        .collect();
    assert!(sent_again.is_empty() && sent_after.len() == sent_before.len(), "the rerun sent messages again:\n{}", sent_again.join("\n"));
    // Each petition case was disposed of (办结 or handled by the office) exactly once.
    for r in results.iter().filter(|r| r["channel"] == "petition") {
        let id = r["case_id"].as_str().unwrap_or_default();
        let sent = sent_after.get(&(id.to_owned(), stack::petition().to_string()));
        let notices = sent.map_or(0, |m| m.iter().filter(|(k, _)| *k == MessageKind::DispositionNotice).count());
        assert_eq!(notices, 1, "petition case {id}, sent by the petition office: {sent:?}");
    }
    // No referral was made twice: the centre holds the court, police and procuratorate cases,
    // the town and the village committee the petition cases.
    let count_at = |who: duijie_domain::AgencyNode| {
        let stack = &stack;
        async move { anyhow::Ok(stack.clerk(&who).await?.cases().list_cases(ListCasesRequest::default()).await?.into_inner().cases.len()) }
    };
    let court_and_police_and_proc = results.iter().filter(|r| r["channel"] != "petition").count();
    assert_eq!(count_at(stack::centre()).await?, court_and_police_and_proc, "no referral was made twice");
    let petitions = results.iter().filter(|r| r["channel"] == "petition").count();
    assert_eq!(count_at(stack::town()).await? + count_at(stack::village()).await?, petitions, "no petition referral was made twice");

    // The audit store catches up with everything the demo did: this year's statistics.
    wait_until("the audit store to count the demo's referrals and closures", WAIT, || async {
        let s = bin.run(&["stats", "--json"]).await?.json()?;
        Ok(s["received"].as_u64().unwrap_or(0) >= 8 && s["closed"].as_u64().unwrap_or(0) >= 8)
    })
    .await?;
    let stats = bin.expect(&["stats"], 0).await?;
    assert!(stats.stdout.contains("调解成功率 success rate") && stats.stdout.contains("收案数 received"), "{stats:?}");
    let court_only = bin.expect(&["stats", "--channel", "court", "--json"], 0).await?.json()?;
    assert_eq!(court_only["received"], 2, "{court_only}");
    bin.expect(&["stats", "--channel", "tribunal"], 2).await?;

    // A closed case: watch --until closed returns at once; the timeline shows the records.
    let code = results[0]["case_code"].as_str().unwrap_or_default().to_owned();
    let case_id = results[0]["case_id"].as_str().unwrap_or_default().to_owned();
    let t0 = Instant::now();
    let watched = bin.expect(&["watch", &code, "--until", "closed", "--interval-ms", "200", "--timeout-secs", "20"], 0).await?;
    assert!(t0.elapsed() < Duration::from_secs(15), "watch returns once the case is closed");
    assert!(watched.stdout.contains(&code) && watched.stdout.contains("referral") && watched.stdout.contains("closure"), "{watched:?}");
    let timeline = bin.expect(&["timeline", &code], 0).await?;
    for k in ["referral", "receipt", "accept", "assignment", "outcome", "closure", "delivery_evidence"] {
        assert!(timeline.stdout.contains(k), "timeline lacks {k}: {}", timeline.stdout);
    }
    let by_id = bin.expect(&["timeline", &case_id, "--json"], 0).await?.json()?;
    assert_eq!(by_id["case"]["state"], "CLOSED");
    let seqs: Vec<u64> = by_id["records"].as_array().map(|a| a.iter().filter_map(|r| r["case_seq"].as_u64()).collect()).unwrap_or_default();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "the case's chain in order");
    bin.expect(&["timeline", "JF-NO-SUCH-CASE"], 3).await?;

    // Driven from the live feeds instead of looking until a handoff arrived: the same end.
    let fed_demo = bin.expect(&["demo", "--cases", "4", "--seed", "9", "--watch", "--json"], 0).await?.json()?;
    assert_eq!(fed_demo["by_state"]["CLOSED"], 4, "{fed_demo}");

    // The court's own feed from the start: its messages of the demo's cases, each with the cursor
    // to resume from; resumed from the third, the fourth comes next.
    let fed = bin.expect(&["watch", "--as", "court:431003", "--cursor", "0", "--count", "6", "--json"], 0).await?;
    let lines: Vec<Value> = fed.stdout.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 6, "{fed:?}");
    assert!(lines.iter().all(|l| case_ids.iter().any(|id| l["case_id"] == id.as_str())), "{fed:?}");
    assert_eq!((lines[0]["kind"].as_str(), lines[0]["direction"].as_str()), (Some("referral"), Some("out")), "{fed:?}");
    let cursors: std::collections::HashSet<&str> = lines.iter().filter_map(|l| l["cursor"].as_str()).collect();
    assert_eq!(cursors.len(), 6, "{fed:?}");
    let third = lines[2]["cursor"].as_str().unwrap_or_default();
    let resumed = bin.expect(&["watch", "--as", "court:431003", "--cursor", third, "--count", "1", "--json"], 0).await?.json()?;
    assert_eq!(resumed["message_id"], lines[3]["message_id"], "{resumed}");
    bin.expect(&["watch", "--cursor", "0", "--count", "1"], 2).await?; // whose feed?
    bin.expect(&["watch", "--as", "court:431003", "--cursor", "nonsense", "--count", "1"], 3).await?;

    // A state the closed case will never reach: exit 3 at once, not after the timeout.
    let t0 = Instant::now();
    let ended = bin.expect(&["watch", &case_id, "--until", "in_mediation", "--interval-ms", "200", "--timeout-secs", "20"], 3).await?;
    assert!(t0.elapsed() < Duration::from_secs(10), "{ended:?}");
    assert!(ended.stderr.contains("ended in CLOSED") && ended.stderr.contains("IN_MEDIATION"), "{ended:?}");
    // A case code nobody sent: no such case (exit 3) once the grace for a just-sent one is over.
    let t0 = Instant::now();
    let unknown = bin.expect(&["watch", "JF-NO-SUCH-CASE", "--until", "closed", "--interval-ms", "200", "--not-found-grace-secs", "1"], 3).await?;
    assert!(t0.elapsed() >= Duration::from_secs(1) && t0.elapsed() < Duration::from_secs(10), "{unknown:?}");
    assert!(unknown.stderr.contains("no such case JF-NO-SUCH-CASE"), "{unknown:?}");

    // Nothing is overdue (every limit was met within minutes); the chains verify.
    let overdue = bin.expect(&["overdue", "--json"], 0).await?.json()?;
    assert_eq!(overdue.as_array().map(Vec::len), Some(0), "{overdue}");
    let open = bin.expect(&["open", "--json"], 0).await?.json()?;
    assert_eq!(open.as_array().map(Vec::len), Some(0), "every handoff answered: {open}");
    let run = bin.expect(&["verify", "--json"], 0).await?;
    // Progress on stderr (the last count at least), the result on stdout as before.
    assert!(run.stderr.contains("checked ") && run.stderr.contains(" records…"), "{run:?}");
    let verified = run.json()?;
    assert_eq!(verified["ok"], true);
    assert!(verified["records_checked"].as_u64().unwrap_or(0) > 8 * 5, "{verified}");
    bin.expect(&["verify", "--case", &code], 0).await?;
    // A witness keeps an anchor (checked against the CA before it is saved) and verifies the
    // log against it later; a court is no witness.
    let anchor_file = scratch(&stack)?.join("anchor.json");
    let anchor_path = anchor_file.display().to_string();
    let taken = bin.expect(&["anchor", "--save", &anchor_path], 0).await?;
    assert!(taken.stdout.contains("anchor") && anchor_file.exists(), "{taken:?}");
    let against = bin.expect(&["verify", "--anchor", &anchor_path, "--json"], 0).await?.json()?;
    assert!(against["ok"] == true && against["anchor_checked"] == true, "{against}");
    let binary = scratch(&stack)?.join("anchor.pb");
    bin.expect(&["anchor", "--save", &binary.display().to_string(), "--as", "procuratorate:431003"], 0).await?;
    bin.expect(&["verify", "--anchor", &binary.display().to_string()], 0).await?;
    bin.expect(&["anchor", "--as", "court:431003"], 3).await?;
    // A tampered anchor file is refused by the audit service (exit 3), not taken as a broken log.
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&anchor_file)?)?;
    doc["root"] = Value::String("00".repeat(32));
    std::fs::write(&anchor_file, doc.to_string())?;
    let tampered = bin.expect(&["verify", "--anchor", &anchor_path], 3).await?;
    assert!(tampered.stderr.contains("anchor"), "{tampered:?}");
    // An agency reads only what it took part in: the police may not verify.
    bin.expect(&["verify", "--as", "police:431003-01"], 3).await?;
    eprintln!("demo of 8 cases took {demo_time:?}");

    // --mixed: every case stops at its own stage, all as planned.
    let mixed = bin.expect(&["demo", "--cases", "12", "--seed", "3", "--mixed", "--json"], 0).await?.json()?;
    let results = mixed["results"].as_array().cloned().unwrap_or_default();
    assert!(results.iter().all(|r| r["error"].is_null() && r["steps_done"] == r["steps_planned"] && r["state"].is_string()), "{mixed}");
    assert!(results.iter().all(|r| r["case_code"].as_str().is_some_and(|c| c.contains("-D3M-"))), "{mixed}");
    let states = mixed["by_state"].as_object().map(|m| m.len()).unwrap_or(0);
    assert!(states >= 3, "cases in several states: {mixed}");

    // A case still open, which nobody moves on: watch --until closed gives up after its
    // timeout (exit 4, retry later).
    let open_case = results
        .iter()
        .find(|r| r["state"].as_str().is_some_and(|s| s != "CLOSED" && s != "CANCELLED"))
        .ok_or_else(|| anyhow::anyhow!("no open case in {mixed}"))?;
    let (code, state) = (open_case["case_code"].as_str().unwrap_or_default(), open_case["state"].as_str().unwrap_or_default());
    wait_until("the audit store to record the open case", WAIT, || async {
        Ok(bin.run(&["timeline", code, "--json"]).await?.json()?["case"]["state"] == state)
    })
    .await?;
    let t0 = Instant::now();
    let gave_up = bin.expect(&["watch", code, "--until", "closed", "--interval-ms", "200", "--timeout-secs", "2"], 4).await?;
    assert!(t0.elapsed() >= Duration::from_secs(2) && t0.elapsed() < Duration::from_secs(20), "{gave_up:?}");
    assert!(gave_up.stderr.contains("timed out") && gave_up.stderr.contains(&format!("state {state}, not CLOSED")), "{gave_up:?}");
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_listed_then_replayed_after_the_fix() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let bin = Duijie::for_stack(&stack)?;
    // The envelopes below are published by hand in the court's name; the court service is
    // stopped so that the evidence the centre sends back for them waits in the court's queue
    // instead of being refused there (the court never sent them) and dead-lettered too.
    let idx = stack.services.iter().position(|(k, _)| *k == AgencyKind::Court).ok_or_else(|| anyhow::anyhow!("no court"))?;
    let (_, court) = stack.services.remove(idx);
    court.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), court.handle).await???;

    let empty = bin.expect(&["dead", "list", "--json"], 0).await?.json()?;
    assert_eq!(empty.as_array().map(Vec::len), Some(0));

    // A 督办 notice for a case the centre does not have yet: its consumer refuses it.
    let case_id = uuid::Uuid::now_v7();
    let header = duijie_common::envelope::Header {
        case_id,
        case_code: "JF-431003-2026-DL0001".into(),
        channel: Channel::Court,
        sender: stack::court(),
        recipient: stack::centre(),
        causation_id: None,
    };
    let notice = duijie_common::envelope::build(
        &header,
        envelope::Payload::SupervisionNotice(SupervisionNotice { instructions: "请尽快签收并反馈".into(), ..Default::default() }),
    );
    let notice_id = notice.message_id.clone();
    let signer = duijie_tests::signer_for(stack.ca(), &[stack::court()])?;
    stack.bus.publish_signed(&notice, &signer).await?;

    let listed_dead = || async {
        let r = bin.run(&["dead", "list", "--json"]).await?;
        anyhow::ensure!(r.code == Some(0), "{r:?}");
        r.json()
    };
    wait_until("the notice in the dead-letter queue", WAIT, || async { Ok(listed_dead().await?.as_array().is_some_and(|a| !a.is_empty())) }).await?;
    // Listing twice shows the same: listing removes nothing.
    let first = listed_dead().await?;
    let second = listed_dead().await?;
    assert_eq!(first, second);
    let dead = first.as_array().cloned().unwrap_or_default();
    assert_eq!(dead.len(), 1, "{first}");
    let d = &dead[0];
    assert_eq!(d["message_id"], notice_id.as_str());
    assert_eq!(d["kind"], "supervision_notice");
    assert_eq!(d["case_code"], "JF-431003-2026-DL0001");
    assert_eq!((d["sender"].as_str(), d["recipient"].as_str()), (Some("court:431003"), Some("mediation:431003")));
    assert!(d["queue"].as_str().is_some_and(|q| q.starts_with(&format!("{}.inbox.mediation.p", stack.prefix()))), "a partition of the mediation bodies' inboxes: {d}");
    assert!(d["reason"].as_str().is_some_and(|r| r.contains("unknown case")), "{d}");
    let table = bin.expect(&["dead", "list"], 0).await?;
    assert!(table.stdout.contains(&notice_id) && table.stdout.contains("unknown case") && table.stdout.contains("1 dead-lettered"), "{table:?}");

    // An id that is not there: exit 3, and nothing is replayed.
    let unknown = uuid::Uuid::now_v7().to_string();
    let refused = bin.expect(&["dead", "replay", "--id", &unknown, &notice_id], 3).await?;
    assert!(refused.stderr.contains(&unknown), "{refused:?}");
    assert_eq!(listed_dead().await?.as_array().map(Vec::len), Some(1), "nothing replayed");

    // The fix: the referral of that case reaches the centre.
    let referral_header = duijie_common::envelope::Header { causation_id: None, ..header };
    let mut referral = duijie_common::envelope::build(&referral_header, envelope::Payload::Referral(stack::referral("dl-1", ClockPolicyKind::CourtPreFiling)));
    duijie_tests::without_party_data(&mut referral);
    stack.bus.publish_signed(&referral, &signer).await?;
    let centre = stack.clerk(&stack::centre()).await?;
    centre.wait_for(&case_id.to_string(), "DELIVERED").await?;

    // Replayed onto the centre's queue, applied there, gone from the dead-letter queue.
    let replayed = bin.expect(&["dead", "replay", "--id", &notice_id], 0).await?;
    assert!(replayed.stdout.contains(&format!("replayed {notice_id}")), "{replayed:?}");
    wait_until("the centre to apply the replayed notice", WAIT, || async {
        let v = centre.case(&case_id.to_string()).await?;
        Ok(v.timeline.iter().any(|e| e.message_id == notice_id && e.kind() == MessageKind::SupervisionNotice && e.direction == "in"))
    })
    .await?;
    assert_eq!(listed_dead().await?.as_array().map(Vec::len), Some(0), "the dead-letter queue is empty");
    let nothing = bin.expect(&["dead", "replay", "--all"], 0).await?;
    assert!(nothing.stdout.contains("0 replayed"), "{nothing:?}");
    bin.expect(&["dead", "replay", "--id", &notice_id], 3).await?;
    stack.stop().await
}
