//! The parties' lookup by case code (当事人查询, issue #13 item 3), against the five services,
//! the audit store and the console: the public page and the JSON endpoint answer a party with
//! the right code and factor (the end of their identity number, or the access code of their
//! receipt) with their case's state, holder, next step and deadline, their own name masked and
//! nobody else's data; a wrong factor, another case's code and an unknown code read the same;
//! attempts are limited per address and per case; only the console may ask; every attempt is
//! in `audit_lookups`, the factor never.

use duijie_audit::lookup::{LIMITED_MESSAGE, NOT_FOUND_MESSAGE};
use duijie_proto::answered_case;
use duijie_proto::v1::*;
use duijie_tests::stack::{self, Stack, agency_ref, referral};
use duijie_tests::browser::{self, http};
use duijie_tests::{node, wait_until};
use tonic::Code;

/// A row of `audit_lookups`: outcome, case code, case id, factor kind, client address, and the
/// whole row (without its time and id) as JSON.
type LookupRow = (String, String, Option<uuid::Uuid>, Option<String>, String, String);

/// A resident identity number: `first17` and its GB 11643 check character.
fn resident_id(first17: &str) -> String {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = first17.chars().zip(WEIGHTS).map(|(c, w)| c.to_digit(10).unwrap_or(0) * w).sum();
    let check = b"10X98765432"[(sum % 11) as usize] as char;
    format!("{first17}{check}")
}

/// A referral of two other people, 王五 and 赵六.
fn other_referral(request_id: &str) -> Referral {
    let mut r = referral(request_id, ClockPolicyKind::CourtOrdinary);
    r.parties[0].name = "王五".into();
    r.parties[1].name = "赵六".into();
    for (p, id) in r.parties.iter_mut().zip([resident_id("43100319800101123"), resident_id("43100319900202234")]) {
        if let Some(doc) = &mut p.identity {
            doc.number = id;
        }
    }
    r
}

/// The court refers a case to the district centre; returns its id once the audit store has it.
async fn submit(stack: &Stack, code: &str, r: Referral) -> anyhow::Result<String> {
    let court = stack.clerk(&stack::court()).await?;
    let view = court
        .referrals()
        .submit_referral(SubmitReferralRequest { to: Some(agency_ref(&stack::centre())), case_code: code.into(), referral: Some(r) })
        .await
        .and_then(answered_case)?;
    wait_in_audit(stack, &view.case_id, &["SUBMITTED", "DELIVERED"]).await?;
    Ok(view.case_id)
}

/// Waits until the audit store has `id` in one of `states`.
async fn wait_in_audit(stack: &Stack, id: &str, states: &[&str]) -> anyhow::Result<()> {
    let auditor = stack.auditor(&stack::court()).await?;
    wait_until(&format!("the audit store to have case {id} in {states:?}"), stack::WAIT, || {
        let mut a = auditor.clone();
        let id = id.to_owned();
        async move {
            Ok(match a.get_timeline(GetTimelineRequest { case_id: id, case_code: String::new() }).await {
                Ok(t) => t.into_inner().case.is_some_and(|c| states.contains(&c.state.as_str())),
                Err(_) => false,
            })
        }
    })
    .await
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", v.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect::<String>()))
        .collect::<Vec<_>>()
        .join("&")
}

/// The JSON body of a response.
fn json(resp: &str) -> anyhow::Result<serde_json::Value> {
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).ok_or_else(|| anyhow::anyhow!("no body: {resp}"))?;
    Ok(serde_json::from_str(body)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_looks_up_their_case_by_code_and_factor_and_sees_nothing_else() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (code1, code2) = ("JF-431003-2026-000101", "JF-431003-2026-000102");
    let id1 = submit(&stack, code1, referral("lookup-1", ClockPolicyKind::CourtOrdinary)).await?;
    let id2 = submit(&stack, code2, other_referral("lookup-2")).await?;
    // The centre signs for the first: its 15-day limit starts running.
    let centre = stack.clerk(&stack::centre()).await?;
    centre.wait_for(&id1, "DELIVERED").await?;
    centre
        .mediation()
        .sign_for(SignForRequest { case_id: id1.clone(), receipt: Some(Receipt { signed_by: "王明".into(), signer_position: "收案员".into(), ..Default::default() }) })
        .await?;
    wait_in_audit(&stack, &id1, &["RECEIVED"]).await?;
    let console = browser::start_console(&stack).await?;
    let addr = console.addr;
    let origin = format!("http://{addr}");
    let post = [("Origin", origin.as_str()), ("Content-Type", "application/x-www-form-urlencoded")];
    let post_json = [("Content-Type", "application/json")];

    // The court's case page prints the receipt the party takes home: the code and access code.
    let as_court = browser::sign_in(addr, &stack::court()).await?;
    let (status, page) = http(addr, "GET", &format!("/cases/{id1}"), &[("Cookie", &as_court)], "").await?;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("当事人查询回执") && page.contains(code1), "{page}");
    let access1 = stack.auditor(&stack::court()).await?.get_access_code(GetAccessCodeRequest { case_id: id1.clone() }).await?.into_inner().access_code;
    let access2 = stack.auditor(&stack::court()).await?.get_access_code(GetAccessCodeRequest { case_id: id2.clone() }).await?.into_inner().access_code;
    assert_eq!(access1.len(), 8);
    assert!(page.contains(&access1), "the receipt shows the access code");
    // Only an agency of the case gets it.
    for who in [node(AgencyKind::Supervisor, "431003"), stack::police()] {
        let refused = stack.auditor(&who).await?.get_access_code(GetAccessCodeRequest { case_id: id1.clone() }).await.err();
        assert_eq!(refused.map(|s| s.code()), Some(Code::PermissionDenied), "{who}");
    }

    // The public page, no sign-in.
    let (status, page) = http(addr, "GET", "/lookup", &[], "").await?;
    assert!(status == 200 && page.contains("当事人查询") && page.contains("name=\"factor\""), "{page}");

    // Right code (any case) and the end of the applicant's identity number (x in lower case).
    let (status, page) = http(addr, "POST", "/lookup", &post, &form(&[("case_code", &code1.to_lowercase()), ("factor", "31002x")])).await?;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("id=\"lookup-result\"") && page.contains("data-state=\"RECEIVED\""), "{page}");
    assert!(page.contains("张*（申请人）"), "their own name, masked, and role: {page}");
    assert!(page.contains("调解组织已签收") && page.contains("调解组织审查是否受理"), "state and next step in plain Chinese: {page}");
    assert!(page.contains("苏仙区矛盾纠纷调解中心"), "the body holding the case: {page}");
    assert!(page.contains("id=\"result-due\"") && page.contains("剩余"), "the deadline of the next step: {page}");
    for secret in ["张三", "李四", "李*", "被申请人", "11010519491231002X", "440524188001010014", "010014", "31002x", "31002X", "相邻关系纠纷", "院墙"] {
        assert!(!page.contains(secret), "{secret} must not appear: {page}");
    }

    // The JSON endpoint with the access code: the same fields, no party (the code names none).
    let (status, resp) = http(addr, "POST", "/api/lookup", &post_json, &serde_json::json!({ "case_code": code1, "factor": access1 }).to_string()).await?;
    assert_eq!(status, 200, "{resp}");
    let j = json(&resp)?;
    assert_eq!(j["case_code"], code1);
    assert_eq!(j["state"], "RECEIVED");
    assert_eq!(j["state_label"], "调解组织已签收");
    assert_eq!(j["holder"], "苏仙区矛盾纠纷调解中心");
    assert_eq!(j["next_step"], "调解组织审查是否受理");
    assert!(j["next_step_due_at"].as_str().is_some_and(|d| d.ends_with("+08:00")), "{j}");
    assert_eq!(j["party_name"], "");
    assert!(!resp.contains('张') && !resp.contains('李'), "{resp}");
    // The other case, with its own factor: its own party.
    let (status, resp) = http(addr, "POST", "/api/lookup", &post_json, &serde_json::json!({ "case_code": code2, "factor": resident_id("43100319900202234")[12..].to_owned() }).to_string()).await?;
    assert_eq!(status, 200, "{resp}");
    let j = json(&resp)?;
    assert_eq!((j["party_name"].as_str(), j["party_role"].as_str()), (Some("赵*"), Some("被申请人")), "{j}");
    assert!(!resp.contains('王') && !resp.contains("赵六"), "{resp}");

    // A wrong factor, another case's code with this case's factors, an unknown code with the right
    // factor: one answer, 404, nothing more.
    let misses = [
        (code1, "999999".to_owned()),
        (code2, "31002X".to_owned()),
        (code2, access1.clone()),
        (code1, access2.clone()),
        ("JF-431003-2026-000999", "31002X".to_owned()),
    ];
    let mut bodies = Vec::new();
    for (code, factor) in &misses {
        let (status, resp) = http(addr, "POST", "/api/lookup", &post_json, &serde_json::json!({ "case_code": code, "factor": factor }).to_string()).await?;
        assert_eq!(status, 404, "{code} {factor}: {resp}");
        bodies.push(json(&resp)?);
    }
    assert!(bodies.iter().all(|b| *b == serde_json::json!({ "error": format!("{NOT_FOUND_MESSAGE}。") })), "{bodies:?}");
    let (status, page) = http(addr, "POST", "/lookup", &post, &form(&[("case_code", code1), ("factor", "999999")])).await?;
    assert!(status == 404 && page.contains(NOT_FOUND_MESSAGE) && !page.contains("999999"), "{page}");
    // Missing input is the party's mistake (400), not an attempt.
    let (status, resp) = http(addr, "POST", "/api/lookup", &post_json, "{}").await?;
    assert_eq!(status, 400, "{resp}");
    let (status, _) = http(addr, "POST", "/api/lookup", &post_json, "not json").await?;
    assert_eq!(status, 400);
    // Another site's page cannot post the form.
    let (status, _) = http(addr, "POST", "/lookup", &[("Origin", "http://evil.example"), post[1]], &form(&[("case_code", code1), ("factor", "31002X")])).await?;
    assert_eq!(status, 403);

    // Only the console's own identity may ask: not an agency, not a supervisor, not another name.
    let ask = LookupCaseRequest { case_code: code1.into(), factor: "31002X".into(), client_address: "10.9.9.9".into() };
    for who in [stack::court(), stack::centre(), node(AgencyKind::Supervisor, "431003")] {
        let refused = stack.auditor(&who).await?.lookup_case(ask.clone()).await.err();
        assert_eq!(refused.map(|s| s.code()), Some(Code::PermissionDenied), "{who}");
    }
    let refused = stack.auditor_named("duijie-intruder").await?.lookup_case(ask.clone()).await.err();
    assert_eq!(refused.map(|s| s.code()), Some(Code::PermissionDenied));

    // Every attempt recorded: 3 found, 6 not found, from the party's address; the factor never.
    let pool = &stack.audit.as_ref().ok_or_else(|| anyhow::anyhow!("audit stopped"))?.pool;
    let rows: Vec<LookupRow> =
        sqlx::query_as("SELECT outcome, case_code, case_id, factor_kind, client_address, (to_jsonb(l) - 'at' - 'id')::text FROM audit_lookups l ORDER BY id").fetch_all(pool).await?;
    let count = |o: &str| rows.iter().filter(|r| r.0 == o).count();
    assert_eq!((count("found"), count("not_found"), count("limited")), (3, 6, 0), "{rows:?}");
    assert!(rows.iter().all(|r| r.4 == "127.0.0.1"), "{rows:?}");
    let first = &rows[0];
    assert_eq!((first.1.as_str(), first.2.map(|u| u.to_string()), first.3.as_deref()), (code1, Some(id1.clone()), Some("id_suffix")));
    assert_eq!(rows[1].3.as_deref(), Some("access_code"));
    assert!(rows.iter().all(|r| r.3.is_none() == (r.0 != "found") && r.2.is_none() == (r.0 != "found")), "{rows:?}");
    for r in &rows {
        for factor in ["31002X", "31002x", "999999", &access1, &access2, "202234"] {
            assert!(!r.5.contains(factor), "the factor is never recorded: {}", r.5);
        }
    }
    // The record is append-only.
    assert!(sqlx::query("DELETE FROM audit_lookups").execute(pool).await.is_err());
    assert!(sqlx::query("UPDATE audit_lookups SET outcome = 'found'").execute(pool).await.is_err());

    // The address limit (10 answered attempts in 10 minutes; 9 so far): then 429, in Chinese.
    let (status, resp) = http(addr, "POST", "/api/lookup", &post_json, &serde_json::json!({ "case_code": "JF-431003-2026-888888", "factor": "123456" }).to_string()).await?;
    assert_eq!(status, 404, "{resp}");
    let (status, resp) = http(addr, "POST", "/api/lookup", &post_json, &serde_json::json!({ "case_code": code1, "factor": "31002X" }).to_string()).await?;
    assert_eq!(status, 429, "even the right factor: {resp}");
    assert_eq!(json(&resp)?, serde_json::json!({ "error": format!("{LIMITED_MESSAGE}。") }));
    let (status, page) = http(addr, "POST", "/lookup", &post, &form(&[("case_code", code1), ("factor", "31002X")])).await?;
    assert!(status == 429 && page.contains(LIMITED_MESSAGE) && !page.contains("lookup-result"), "{page}");

    console.handle.abort();
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_are_limited_per_case_and_per_address_and_misses_read_alike() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (code1, code2) = ("JF-431003-2026-000201", "JF-431003-2026-000202");
    submit(&stack, code1, referral("limit-1", ClockPolicyKind::CourtOrdinary)).await?;
    submit(&stack, code2, other_referral("limit-2")).await?;
    let mut console = stack.auditor_named("duijie-console").await?;
    let ask = |code: &str, factor: &str, address: &str| LookupCaseRequest { case_code: code.into(), factor: factor.into(), client_address: address.into() };
    let factor2 = resident_id("43100319800101123")[12..].to_owned();

    // A wrong factor and an unknown code: the same status and message.
    let wrong = console.lookup_case(ask(code1, "000000", "10.0.0.1")).await.err().ok_or_else(|| anyhow::anyhow!("answered"))?;
    let unknown = console.lookup_case(ask("JF-431003-2026-777777", "31002X", "10.0.0.2")).await.err().ok_or_else(|| anyhow::anyhow!("answered"))?;
    assert_eq!((wrong.code(), wrong.message()), (Code::NotFound, NOT_FOUND_MESSAGE));
    assert_eq!((unknown.code(), unknown.message()), (wrong.code(), wrong.message()));

    // Per case: 5 failed attempts in an hour (from different addresses) close the code to
    // everyone, the right factor included; the other case still answers.
    for i in 3..=6 {
        let s = console.lookup_case(ask(code1, "000000", &format!("10.0.0.{i}"))).await.err().map(|s| s.code());
        assert_eq!(s, Some(Code::NotFound));
    }
    let limited = console.lookup_case(ask(code1, "31002X", "10.0.0.7")).await.err().ok_or_else(|| anyhow::anyhow!("answered over the limit"))?;
    assert_eq!((limited.code(), limited.message()), (Code::ResourceExhausted, LIMITED_MESSAGE));
    console.lookup_case(ask(code2, &factor2, "10.0.0.7")).await?;

    // Per address: 10 answered attempts in 10 minutes, then refused; another address is not.
    for _ in 0..10 {
        let a = console.lookup_case(ask(code2, &factor2, "10.0.1.1")).await?.into_inner();
        assert_eq!((a.party_name_masked.as_str(), a.party_role_label.as_str()), ("王*", "申请人"));
    }
    let limited = console.lookup_case(ask(code2, &factor2, "10.0.1.1")).await.err().map(|s| s.code());
    assert_eq!(limited, Some(Code::ResourceExhausted));
    console.lookup_case(ask(code2, &factor2, "10.0.1.2")).await?;

    // An address is required; the console always sends one.
    assert_eq!(console.lookup_case(ask(code2, &factor2, " ")).await.err().map(|s| s.code()), Some(Code::InvalidArgument));

    let pool = &stack.audit.as_ref().ok_or_else(|| anyhow::anyhow!("audit stopped"))?.pool;
    let counts: Vec<(String, i64)> = sqlx::query_as("SELECT outcome, count(*) FROM audit_lookups GROUP BY outcome ORDER BY outcome").fetch_all(pool).await?;
    assert_eq!(counts, vec![("found".to_owned(), 12), ("limited".to_owned(), 2), ("not_found".to_owned(), 6)]);
    let via: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT via FROM audit_lookups").fetch_all(pool).await?;
    assert_eq!(via, vec![("duijie-console".to_owned(),)]);
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_uses_the_lookup_page_in_a_browser() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let code = "JF-431003-2026-000301";
    let id = submit(&stack, code, referral("browser-1", ClockPolicyKind::CourtOrdinary)).await?;
    let centre = stack.clerk(&stack::centre()).await?;
    centre.wait_for(&id, "DELIVERED").await?;
    centre
        .mediation()
        .sign_for(SignForRequest { case_id: id.clone(), receipt: Some(Receipt { signed_by: "王明".into(), signer_position: "收案员".into(), ..Default::default() }) })
        .await?;
    wait_in_audit(&stack, &id, &["RECEIVED"]).await?;
    let console = browser::start_console(&stack).await?;
    let mut b = browser::Browser::start(&format!("http://{}", console.addr), "party_lookup").await?;

    // The court clerk prints the receipt from the case page.
    b.sign_in(&stack::court()).await?;
    b.goto(&format!("/cases/{id}")).await?;
    assert_eq!(b.text("#receipt-code").await?, code);
    let access = b.text("#receipt-access-code").await?;
    assert_eq!(access.len(), 8, "{access}");
    b.shot("receipt").await?;

    // The party, without the clerk's sign-in, with a wrong factor first.
    b.client.delete_all_cookies().await?;
    let mut p = b;
    p.goto("/lookup").await?;
    p.fill("#case_code", code).await?;
    p.fill("#factor", "000000").await?;
    p.click("#lookup-submit").await?;
    assert!(p.text("#error").await?.contains(NOT_FOUND_MESSAGE));
    assert_eq!(p.value("#case_code").await?, code, "the code typed is kept");
    assert_eq!(p.value("#factor").await?, "", "the factor is not");
    p.shot("lookup-miss").await?;
    p.fill("#factor", "31002X").await?;
    p.click("#lookup-submit").await?;
    assert!(p.text("#result-state").await?.contains("调解组织已签收"));
    assert_eq!(p.text("#result-party").await?, "张*（申请人）");
    assert!(p.text("#result-holder").await?.contains("苏仙区矛盾纠纷调解中心"));
    assert!(p.text("#result-due").await?.contains("剩余"));
    p.no_script_errors().await?;
    // The page is short: a smaller window for the screenshot (docs/console-lookup-page.png).
    p.client.set_window_size(960, 520).await?;
    p.shot("lookup-result").await?;
    // With the access code from the receipt.
    p.goto("/lookup").await?;
    p.fill("#case_code", code).await?;
    p.fill("#factor", &access.to_lowercase()).await?;
    p.click("#lookup-submit").await?;
    assert!(p.text("#result-next").await?.contains("调解组织审查是否受理"));
    assert!(!p.exists("#result-party").await?, "the access code names no party");

    console.handle.abort();
    stack.stop().await
}
