//! The web console in real headless Chromium, in front of the five services and the audit store:
//! what the people at the desks see and do. Screenshots of every step are saved under
//! `target/artifacts/browser/<test>/`.

use duijie_proto::answered_case;
use duijie_proto::v1::*;
use duijie_tests::browser::{self, Browser, http};
use duijie_tests::stack::{self, Stack};

const BAD_ID: &str = "110105194912310021"; // check digit should be X
const GOOD_ID: &str = "11010519491231002X";

/// Fills the new-referral form as a court clerk would (pre-filing mediation of a neighbour
/// dispute) with the applicant's identity number `id_number`.
async fn fill_referral(b: &Browser, code: &str, id_number: &str) -> anyhow::Result<()> {
    b.select("#to", "mediation:431003").await?;
    b.fill("#case_code", code).await?;
    b.select("#mode", &(ReferralMode::PreLitigation as i32).to_string()).await?;
    b.select("#clock_policy", &(ClockPolicyKind::CourtPreFiling as i32).to_string()).await?;
    b.select("#category", &(DisputeCategory::Neighbour as i32).to_string()).await?;
    b.fill("#cause_of_action", "相邻关系纠纷").await?;
    b.fill("#facts", "双方因院墙排水问题发生争执，协商未果。").await?;
    b.fill("#claims", "排除妨碍\n赔偿损失").await?;
    b.fill("#amount", "3000").await?;
    b.select("#p0_role", &(PartyRole::Applicant as i32).to_string()).await?;
    b.fill("#p0_name", "张三").await?;
    b.select("#p0_id_type", &(IdDocumentType::ResidentIdCard as i32).to_string()).await?;
    b.fill("#p0_id_number", id_number).await?;
    b.select("#p1_role", &(PartyRole::Respondent as i32).to_string()).await?;
    b.fill("#p1_name", "李四").await?;
    b.select("#p1_id_type", &(IdDocumentType::ResidentIdCard as i32).to_string()).await?;
    b.fill("#p1_id_number", "440524188001010014").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn court_refers_centre_settles_court_sees_outcome_and_whole_timeline() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let console = browser::start_console(&stack).await?;
    let mut b = Browser::start(&format!("http://{}", console.addr), "court_to_centre").await?;
    let code = format!("JF-431003-2026-B{}", &stack.prefix()[stack.prefix().len().saturating_sub(6)..]);

    // Not signed in: the console asks who you are.
    b.goto("/cases").await?;
    assert!(b.exists("#signin-court-431003").await?, "the sign-in page lists the demo agencies");
    b.shot("signin").await?;

    // A court clerk sends a referral; the first try has a wrong identity number.
    b.sign_in(&stack::court()).await?;
    b.click("#nav-new").await?;
    fill_referral(&b, &code, BAD_ID).await?;
    b.click("#submit-referral").await?;
    let error = b.text("#error").await?;
    assert!(error.contains("当事人1证件号码") && error.contains("校验码"), "the clerk is told which field is wrong, in Chinese: {error}");
    let at_field = b.text("p.err[data-field=p0_id_number]").await?;
    assert!(at_field.contains("证件号码"), "{at_field}");
    assert_eq!(b.value("#facts").await?, "双方因院墙排水问题发生争执，协商未果。", "what the clerk typed is still there");
    assert_eq!(b.value("#p1_name").await?, "李四");
    b.no_script_errors().await?;
    b.shot("referral-bad-identity-number").await?;

    b.fill("#p0_id_number", GOOD_ID).await?;
    b.click("#submit-referral").await?;
    let ok = b.text("#ok").await?;
    assert!(ok.contains("移送成功"), "{ok}");
    assert_eq!(b.text("#case-code").await?, code);
    let case_url = b.client.current_url().await?;
    let case_path = case_url.path().to_owned();
    b.shot("referral-sent").await?;

    // The case is in the court's list with its state and holder.
    b.goto("/cases").await?;
    let row = b.text("#cases tbody tr").await?;
    assert!(row.contains(&code) && row.contains("苏仙区矛盾纠纷调解中心"), "{row}");

    // The mediation centre finds it in its inbox, signs, accepts and reports a settlement.
    b.sign_in(&stack::centre()).await?;
    let case_id = case_path.trim_start_matches("/cases/").to_owned();
    b.reload_until("/cases", &format!("#cases tr[data-case='{case_id}']")).await?;
    let inbox_row = b.text(&format!("#cases tr[data-case='{case_id}']")).await?;
    assert!(inbox_row.contains("诉调") && inbox_row.contains("苏仙区人民法院"), "{inbox_row}");
    b.shot("centre-inbox").await?;
    b.click(&format!("#cases tr[data-case='{case_id}'] a")).await?;
    // The centre must reach the parties: it sees the identity number in full.
    assert!(b.client.source().await?.contains(GOOD_ID), "the holder sees identity numbers unmasked");
    b.fill("#sign_for-signed_by", "王明").await?;
    b.click("#do-sign_for").await?;
    assert!(b.text("#ok").await?.contains("签收"));
    assert_eq!(b.client.find(fantoccini::Locator::Css("#case-state")).await?.attr("data-state").await?.as_deref(), Some("RECEIVED"));
    b.fill("#accept-accepted_by", "王明").await?;
    b.click("#do-accept").await?;
    assert!(b.text("#ok").await?.contains("受理"));
    // A progress report goes through; its form comes back empty for the next one (the draft
    // kept across reloads is cleared once the server took it).
    b.select("#progress-stage", &(ProgressStage::SessionHeld as i32).to_string()).await?;
    b.fill("#progress-summary", "已组织双方现场调解一次").await?;
    b.click("#do-progress").await?;
    assert!(b.text("#ok").await?.contains("调解进展"));
    assert_eq!(b.value("#progress-summary").await?, "", "the sent report is not offered again");
    // An outcome without its agreement is refused on the page, the choice kept.
    b.select("#outcome-result", "1").await?;
    b.click("#do-outcome").await?;
    assert!(b.text("#error").await?.contains("协议内容"), "a settlement needs its terms");
    assert_eq!(b.value("#outcome-result").await?, "1");
    b.fill("#outcome-terms", "李四于三十日内修复排水沟\n张三放弃其他请求").await?;
    b.click("#do-outcome").await?;
    assert!(b.text("#ok").await?.contains("调解结果"));
    assert_eq!(b.client.find(fantoccini::Locator::Css("#case-state")).await?.attr("data-state").await?.as_deref(), Some("SETTLED"));
    b.shot("centre-settled").await?;

    // The court sees the outcome, and the timeline from the audit store shows every step,
    // each delivered. It finds the case by its code.
    b.sign_in(&stack::court()).await?;
    let wanted = ["REFERRAL", "RECEIPT", "ACCEPT", "OUTCOME"];
    let deadline = tokio::time::Instant::now() + stack::WAIT;
    loop {
        b.goto(&format!("/search?code={code}")).await?;
        let state = b.client.find(fantoccini::Locator::Css("#case-state")).await?.attr("data-state").await?;
        let html = b.client.source().await?;
        let all_there = wanted.iter().all(|k| html.contains(&format!("data-kind=\"MESSAGE_KIND_{k}\"")));
        let all_delivered = !html.contains("待送达");
        if state.as_deref() == Some("SETTLED") && all_there && all_delivered {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the court never saw the whole settled case: {state:?}");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert_eq!(b.client.current_url().await?.path(), case_path, "search by code opens the case");
    let timeline = b.text("#timeline").await?;
    for step in ["移送调解", "签收", "受理", "调解结果", "送达回证"] {
        assert!(timeline.contains(step), "the timeline shows {step}: {timeline}");
    }
    assert!(timeline.contains("已送达"), "delivery evidence is shown");
    // Each summary is rendered in Chinese from the typed message, never the services' English line.
    for summary in ["当事人2名；相邻关系纠纷", "签收人：王明", "受理人：王明", "达成协议：李四于三十日内修复排水沟；张三放弃其他请求"] {
        assert!(timeline.contains(summary), "the timeline reads {summary}: {timeline}");
    }
    assert!(!timeline.contains("EVIDENCE_TYPE") && !timeline.contains("signed for by"), "{timeline}");
    assert!(!b.client.source().await?.contains(GOOD_ID), "the court sees identity numbers masked");
    let shot = b.shot("court-case-page").await?;
    // The README shows this page.
    std::fs::copy(&shot, shot.with_file_name("case-page.png"))?;

    // A police station cannot open the court's case, neither by link nor by code.
    b.sign_in(&stack::police()).await?;
    b.goto(&case_path).await?;
    let refused = b.text("#error").await?;
    assert!(refused.contains("未找到该案件") || refused.contains("无权"), "{refused}");
    assert!(!b.client.source().await?.contains("张三"), "nothing of the case is shown");
    b.shot("police-refused").await?;
    b.goto(&format!("/search?code={code}")).await?;
    assert!(b.exists("#error").await?);
    assert!(!b.client.source().await?.contains("张三"));

    // The centre registers a dispute the 148 hotline handed over (自行受理): accepted at once.
    b.sign_in(&stack::centre()).await?;
    assert_eq!(b.text("#nav-new").await?, "自行受理");
    b.goto("/cases/new").await?;
    b.fill("#received_by", "周接待").await?;
    b.fill("#cause_of_action", "邻里纠纷").await?;
    b.fill("#facts", "邻居装修噪音扰民，经148热线转来。").await?;
    b.select("#category", &(DisputeCategory::Neighbour as i32).to_string()).await?;
    b.fill("#p0_name", "王五").await?;
    b.click("#submit-referral").await?;
    assert!(b.text("#error").await?.contains("受理来源"), "the source is required");
    b.select("#source", &(IntakeSource::Hotline148 as i32).to_string()).await?;
    b.select("#risk_level", &(RiskLevel::Low as i32).to_string()).await?;
    b.click("#submit-referral").await?;
    assert!(b.text("#ok").await?.contains("登记成功"));
    assert_eq!(b.client.find(fantoccini::Locator::Css("#case-state")).await?.attr("data-state").await?.as_deref(), Some("ACCEPTED"));
    b.shot("centre-self-intake").await?;

    // The supervisor's dashboard counts both cases, the centre's own by source, with its charts.
    b.sign_in(&duijie_tests::node(AgencyKind::Supervisor, "431003")).await?;
    b.goto("/dashboard").await?;
    let received = b.text("#stat-received b").await?;
    assert_eq!(received, "2", "two cases received in the district this year");
    assert_eq!(b.text("#stat-received_self_accepted b").await?, "1");
    assert_eq!(b.text("#stat-settled b").await?, "1");
    assert_eq!(b.client.find_all(fantoccini::Locator::Css("#charts svg")).await?.len(), 4);
    assert!(b.client.source().await?.contains("148热线"), "received by source");
    b.shot("supervisor-dashboard").await?;

    b.close().await?;
    console.handle.abort();
    stack.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_survive_a_reload_and_pages_refuse_bad_input_plainly() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let console = browser::start_console(&stack).await?;
    let mut b = Browser::start(&format!("http://{}", console.addr), "forms_and_errors").await?;

    b.sign_in(&stack::police()).await?;
    b.goto("/cases/new").await?;
    // The police station chooses among its own clock policies only.
    let clocks = b.text("#clock_policy").await?;
    assert!(clocks.contains("治安调解") && !clocks.contains("诉前调解"), "{clocks}");
    b.fill("#facts", "两户村民因宅基地界址发生口角。").await?;
    b.fill("#p0_name", "王五").await?;
    b.client.refresh().await?;
    b.no_script_errors().await?;
    assert_eq!(b.value("#facts").await?, "两户村民因宅基地界址发生口角。", "typed text survives a reload");
    assert_eq!(b.value("#p0_name").await?, "王五");
    b.shot("form-after-reload").await?;

    // Submitting with the required fields missing names each one in Chinese.
    b.click("#submit-referral").await?;
    let error = b.text("#error").await?;
    for field in ["接收调解组织", "案由", "计时规则"] {
        assert!(error.contains(field), "{field} is named: {error}");
    }
    b.shot("form-missing-fields").await?;

    // Garbage in a URL or a case that does not exist: a plain message, never internals.
    b.goto("/cases/not-a-case").await?;
    let e = b.text("#error").await?;
    assert!(!e.is_empty() && !e.contains("src/") && !e.contains("panicked"), "{e}");
    b.goto("/cases/0190a4c8-0000-7000-8000-000000000000").await?;
    assert!(b.text("#error").await?.contains("未找到该案件"));
    b.goto("/no/such/page").await?;
    assert!(b.text("#error").await?.contains("页面不存在"));
    b.goto("/dashboard?from=2026-13-01").await?;
    assert!(b.text("#error").await?.contains("起始日期"));

    // The page's own scripts ran (goto checks them); one injected without the nonce does not.
    let injected = b
        .client
        .execute(
            "var s=document.createElement('script');s.textContent='window.__injected=1';document.body.appendChild(s);return window.__injected===1;",
            vec![],
        )
        .await?;
    assert_eq!(injected, serde_json::json!(false), "an inline script without the nonce is blocked by the Content-Security-Policy");

    // With the audit store down, a new referral is refused with the reason, in Chinese.
    let mut stack = stack;
    stack.stop_audit().await?;
    let clerk = stack.clerk(&stack::police()).await?;
    duijie_tests::wait_until("the police service to close its audit gate", stack::WAIT, || {
        let agency = stack.service(AgencyKind::Police).map(|s| s.agency.clone());
        async move { Ok(!agency?.gate_open()) }
    })
    .await?;
    drop(clerk);
    b.goto("/cases/new").await?;
    b.select("#to", "mediation:431003").await?;
    b.fill("#case_code", "JF-431003-01-2026-G0001").await?;
    b.select("#mode", &(ReferralMode::PoliceTransfer as i32).to_string()).await?;
    b.select("#clock_policy", &(ClockPolicyKind::Police as i32).to_string()).await?;
    b.select("#category", &(DisputeCategory::Land as i32).to_string()).await?;
    b.fill("#cause_of_action", "宅基地纠纷").await?;
    b.fill("#p0_id_number", GOOD_ID).await?;
    b.click("#submit-referral").await?;
    let unavailable = b.text("#error").await?;
    assert!(unavailable.contains("暂不可用") && unavailable.contains("稍后重试"), "{unavailable}");
    b.shot("audit-down").await?;

    b.close().await?;
    console.handle.abort();
    stack.stop().await
}

/// One HTTP/1.1 GET over TLS to the console, presenting `client` (certificate, key PEM) or no
/// certificate; the raw response, or the TLS error.
async fn https_get(addr: std::net::SocketAddr, ca_pem: &str, client: Option<(&[u8], &[u8])>, path: &str) -> anyhow::Result<String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?.with_root_certificates(roots);
    let cfg = match client {
        Some((cert, key)) => builder.with_client_auth_cert(
            CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>()?,
            PrivateKeyDer::from_pem_slice(key)?,
        )?,
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)).connect(ServerName::try_from("localhost")?, tcp).await?;
    // `path` may carry header lines after a CRLF.
    let (path, extra) = path.split_once("\r\n").map_or((path, String::new()), |(p, h)| (p, format!("{h}\r\n")));
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n").as_bytes()).await?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_production_the_browser_certificate_is_the_identity() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let pki = stack.pki()?;
    let dir = pki.dir().join("console-tls");
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = stack.ca.issue("duijie-console", &["localhost", "127.0.0.1"])?;
    std::fs::write(dir.join("console.pem"), cert)?;
    std::fs::write(dir.join("console-key.pem"), key)?;
    let cfg = duijie_console::ConsoleConfig {
        listen: "127.0.0.1:0".parse()?,
        endpoints: stack.endpoints()?,
        pki: pki.dir().to_path_buf(),
        sign_in: duijie_console::SignIn::ClientCertificate,
        tls: Some(duijie_console::ConsoleTls { cert: dir.join("console.pem"), key: dir.join("console-key.pem"), client_ca: pki.dir().join("ca.pem") }),
        directory: duijie_tests::stack::demo_directory(),
        directory_reload_ms: std::time::Duration::from_secs(5),
        grace_ms: std::time::Duration::from_secs(2),
        session: duijie_console::SessionConfig::default(),
        metrics: Default::default(),
    };
    let console = duijie_console::start(cfg, stack.bus.shutdown.child_token()).await?;
    let ca = stack.ca.cert_pem().to_owned();

    // The court's browser certificate: the court's list, no sign-in page.
    let court = stack.ca.agency(&stack::court())?;
    let page = https_get(console.addr, &ca, Some((&court.cert, &court.key)), "/cases").await?;
    assert!(page.starts_with("HTTP/1.1 200"), "{}", &page[..page.len().min(300)]);
    assert!(page.contains("苏仙区人民法院") && page.contains("court:431003") && page.contains("我移送的案件"));
    assert!(!page.contains("切换身份"), "no switching identity in production");
    // A demo sign-in cookie does not change who you are, there is no sign-in page, and no page
    // sets a cookie (the certificate is the session).
    let page = https_get(console.addr, &ca, Some((&court.cert, &court.key)), "/cases\r\nCookie: duijie_as=police:431003-01").await?;
    assert!(page.contains("court:431003") && !page.contains("police:431003-01"), "{}", &page[..page.len().min(300)]);
    assert_eq!(browser::set_cookie(&page), None, "{}", &page[..page.len().min(600)]);
    let page = https_get(console.addr, &ca, Some((&court.cert, &court.key)), "/signin").await?;
    assert!(page.starts_with("HTTP/1.1 303"), "{}", &page[..page.len().min(200)]);

    // An agency of the CA the console holds no credential for is refused, in Chinese.
    let stranger = stack.ca.agency(&duijie_tests::node(AgencyKind::Court, "999999"))?;
    let page = https_get(console.addr, &ca, Some((&stranger.cert, &stranger.key)), "/cases").await?;
    assert!(page.starts_with("HTTP/1.1 403") && page.contains("没有该机构的访问证书"), "{}", &page[..page.len().min(400)]);

    // No certificate: the public lookup page only (parties hold none); every agency page refused.
    let page = https_get(console.addr, &ca, None, "/cases").await?;
    assert!(page.starts_with("HTTP/1.1 403") && page.contains("请使用机构数字证书"), "{}", &page[..page.len().min(400)]);
    let page = https_get(console.addr, &ca, None, "/lookup").await?;
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("当事人查询"), "{}", &page[..page.len().min(400)]);
    // One of another CA: no page at all.
    let foreign = duijie_common::certs::DevCa::generate("foreign CA")?.agency(&stack::court())?;
    assert!(https_get(console.addr, &ca, Some((&foreign.cert, &foreign.key)), "/cases").await.is_err(), "a certificate of another CA is refused");

    console.handle.abort();
    stack.stop().await
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}={}", v.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect::<String>())).collect::<Vec<_>>().join("&")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_act_once_cross_site_posts_are_refused_and_the_petition_office_can_dispose() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let console = browser::start_console(&stack).await?;
    let court = stack.clerk(&stack::court()).await?;
    let centre = stack.clerk(&stack::centre()).await?;
    let view = court
        .referrals()
        .submit_referral(SubmitReferralRequest {
            to: Some(stack::agency_ref(&stack::centre())),
            case_code: "JF-431003-2026-C0001".into(),
            referral: Some(stack::referral("console-once", ClockPolicyKind::CourtPreFiling)),
        })
        .await
        .and_then(answered_case)?;
    let id = view.case_id;
    centre.wait_for(&id, "DELIVERED").await?;
    let centre_cookie = browser::sign_in(console.addr, &stack::centre()).await?;
    let as_centre = [("Cookie", centre_cookie.as_str())];
    let origin = format!("http://{}", console.addr);
    let sign = form(&[("action", "sign_for"), ("idempotency_key", "page-key-1"), ("signed_by", "王明")]);

    // A form posted from another site is refused and changes nothing.
    let (status, body) = http(console.addr, "POST", &format!("/cases/{id}/act"), &[as_centre[0], ("Origin", "http://evil.example")], &sign).await?;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("其他网站"));
    let (status, _) = http(console.addr, "POST", &format!("/cases/{id}/act"), &[as_centre[0], ("Sec-Fetch-Site", "cross-site")], &sign).await?;
    assert_eq!(status, 403);
    assert_eq!(centre.case(&id).await?.state, "DELIVERED", "nothing was done");
    // Pages may not be framed elsewhere.
    let (_, page) = http(console.addr, "GET", &format!("/cases/{id}"), &as_centre, "").await?;
    assert!(page.to_ascii_lowercase().contains("x-frame-options: deny"));

    // The clerk's double click: the same form twice acts once, and both answers say it is done.
    for _ in 0..2 {
        let (status, resp) = http(console.addr, "POST", &format!("/cases/{id}/act"), &[as_centre[0], ("Origin", &origin)], &sign).await?;
        assert_eq!(status, 303, "{resp}");
        assert!(resp.contains(&format!("/cases/{id}?ok=sign_for")), "{resp}");
    }
    let seen = centre.case(&id).await?;
    assert_eq!(seen.timeline.iter().filter(|e| e.kind() == MessageKind::Receipt).count(), 1, "signed for once");

    // A case code in a path that is not a case id: a plain page, nothing reaches a service.
    let (status, body) = http(console.addr, "GET", "/cases/%0Aabc", &as_centre, "").await?;
    assert_eq!(status, 404, "{body}");

    // The petition office: a case the village committee returned is disposed of (告知处理结果),
    // not 办结 (which follows a closure), and only once.
    let petition = stack.clerk(&stack::petition()).await?;
    let village = stack.clerk(&stack::village()).await?;
    let pid = petition
        .referrals()
        .submit_referral(SubmitReferralRequest {
            to: Some(stack::agency_ref(&stack::village())),
            case_code: "JF-431003-2026-P0001".into(),
            referral: Some(stack::referral("console-petition", ClockPolicyKind::Petition)),
        })
        .await
        .and_then(answered_case)?
        .case_id;
    village.wait_for(&pid, "DELIVERED").await?;
    village
        .mediation()
        .sign_for(SignForRequest { case_id: pid.clone(), receipt: Some(Receipt { signed_by: "赵村".into(), ..Default::default() }) })
        .await?;
    village
        .mediation()
        .reject(RejectRequest { case_id: pid.clone(), reject: Some(Reject { reason: RejectReason::NotCompetent as i32, explanation: "涉及多村土地权属".into() }) })
        .await?;
    petition.wait_for(&pid, "REJECTED").await?;
    let petition_cookie = browser::sign_in(console.addr, &stack::petition()).await?;
    let as_petition = [("Cookie", petition_cookie.as_str())];
    let (_, page) = http(console.addr, "GET", &format!("/cases/{pid}"), &as_petition, "").await?;
    assert!(page.contains("id=\"act-dispose\"") && !page.contains("act-close_petition"), "a returned petition case is disposed of");
    let dispose = form(&[("action", "dispose"), ("idempotency_key", "page-key-2"), ("disposition", &(DispositionKind::Other as i32).to_string()), ("summary", "转交自然资源部门处理")]);
    let (status, resp) = http(console.addr, "POST", &format!("/cases/{pid}/act"), &[as_petition[0], ("Origin", &origin)], &dispose).await?;
    assert_eq!(status, 303, "{resp}");
    let (_, page) = http(console.addr, "GET", &format!("/cases/{pid}"), &as_petition, "").await?;
    assert!(!page.contains("id=\"act-dispose\""), "told once, the disposition is not offered again");

    console.handle.abort();
    stack.stop().await
}

/// Waits (without reloading) until `css` matches on the page.
async fn appears(b: &Browser, css: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + stack::WAIT;
    while !b.exists(css).await? {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{css} never appeared without a reload");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_refreshes_by_itself_and_a_case_page_says_when_its_case_changed() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let console = browser::start_console(&stack).await?;
    let mut b = Browser::start(&format!("http://{}", console.addr), "live_inbox").await?;
    let court = stack.clerk(&stack::court()).await?;
    let send = |code: &'static str, request: &'static str| {
        let court = court.clone();
        async move {
            let r = stack::referral(request, ClockPolicyKind::CourtOrdinary);
            let view = court
                .referrals()
                .submit_referral(SubmitReferralRequest { to: Some(stack::agency_ref(&stack::centre())), case_code: code.into(), referral: Some(r) })
                .await
                .and_then(answered_case)?;
            anyhow::Ok(view.case_id)
        }
    };
    // The centre's inbox is open; a referral arrives and shows up with nobody reloading.
    b.sign_in(&stack::centre()).await?;
    b.goto("/cases").await?;
    let first = send("JF-431003-2026-L0001", "live-1").await?;
    appears(&b, &format!("#cases tr[data-case='{first}']")).await?;
    b.no_script_errors().await?;
    b.shot("inbox-refreshed-by-itself").await?;

    // On the case page, while the clerk types: the court amends the case; the page says so and
    // keeps what was typed.
    b.goto(&format!("/cases/{first}")).await?;
    assert!(!b.client.find(fantoccini::Locator::Css("#live-notice")).await?.is_displayed().await?, "no notice before anything changed");
    b.fill("#sign_for-signed_by", "王明").await?;
    court
        .referrals()
        .supervise(SuperviseRequest { case_id: first.clone(), notice: Some(SupervisionNotice { instructions: "请尽快签收".into(), ..Default::default() }) })
        .await?;
    let deadline = tokio::time::Instant::now() + stack::WAIT;
    while !b.client.find(fantoccini::Locator::Css("#live-notice")).await?.is_displayed().await? {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the case page never said its case changed");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(b.value("#sign_for-signed_by").await?, "王明", "what the clerk typed is kept");
    b.shot("case-changed-notice").await?;
    b.click("#live-reload").await?;
    assert!(b.client.source().await?.contains("请尽快签收"), "after the reload the supervision notice is on the page");
    b.no_script_errors().await?;

    b.close().await?;
    console.handle.abort();
    stack.stop().await
}

/// `(status, Location, body)` of a GET with `cookie` (none when empty).
async fn get_as(addr: std::net::SocketAddr, path: &str, cookie: &str) -> anyhow::Result<(u16, String, String)> {
    let headers: Vec<(&str, &str)> = if cookie.is_empty() { Vec::new() } else { vec![("Cookie", cookie)] };
    let (status, resp) = http(addr, "GET", path, &headers, "").await?;
    let location = browser::header(&resp, "location").unwrap_or_default();
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, location, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_signed_unexpired_session_signs_in_and_pages_carry_a_strict_csp() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let code = "JF-431003-2026-S0001";
    let id = stack
        .clerk(&stack::court())
        .await?
        .referrals()
        .submit_referral(SubmitReferralRequest {
            to: Some(stack::agency_ref(&stack::centre())),
            case_code: code.into(),
            referral: Some(stack::referral("console-session", ClockPolicyKind::CourtPreFiling)),
        })
        .await
        .and_then(answered_case)?
        .case_id;
    let console = browser::start_console(&stack).await?;
    let addr = console.addr;

    // Signing in sets a strict, expiring cookie (not Secure: the demo console is plain HTTP on
    // loopback).
    let (status, resp) = http(addr, "POST", "/signin", &[], "as=court:431003").await?;
    assert_eq!(status, 303, "{resp}");
    let set = browser::header(&resp, "set-cookie").unwrap_or_default();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(set.contains(attr), "{attr} in {set}");
    }
    let good = browser::set_cookie(&resp).unwrap_or_default();
    let (status, _, page) = get_as(addr, &format!("/cases/{id}"), &good).await?;
    assert!(status == 200 && page.contains(code), "the signed cookie signs the court in: {status} {page}");

    // Every forgery reads as not signed in: to the sign-in page, nothing of the case shown.
    let value = good.strip_prefix("duijie_as=").unwrap_or_default();
    let (payload, tag) = value.rsplit_once('.').unwrap_or_default();
    let (who, expires) = payload.rsplit_once('.').unwrap_or_default();
    let expires: i64 = expires.parse()?;
    let flipped = format!("{}{}", &tag[..tag.len() - 1], if tag.ends_with('0') { '1' } else { '0' });
    let forged = [
        ("missing", String::new()),
        ("unsigned, the issue's curl", "duijie_as=mediation:431003".to_owned()),
        ("another agency under the court's signature", format!("duijie_as=mediation:431003.{expires}.{tag}")),
        ("a later expiry", format!("duijie_as={who}.{}.{tag}", expires + 86_400)),
        ("a bad signature", format!("duijie_as={payload}.{flipped}")),
        ("no signature", format!("duijie_as={payload}")),
        ("empty", "duijie_as=".to_owned()),
    ];
    for (what, cookie) in &forged {
        for path in [format!("/cases/{id}"), "/cases".to_owned()] {
            let (status, location, body) = get_as(addr, &path, cookie).await?;
            assert_eq!((status, location.as_str()), (303, "/signin"), "{what}: {path}");
            assert!(!body.contains(code) && !body.contains("张三"), "{what}: {body}");
        }
        // Nor may it act.
        let (status, resp) = http(addr, "POST", &format!("/cases/{id}/act"), &[("Cookie", cookie)], "action=sign_for&signed_by=x&idempotency_key=k").await?;
        assert_eq!(status, 303, "{what}: {resp}");
        assert_eq!(browser::header(&resp, "location").as_deref(), Some("/signin"), "{what}");
    }
    assert_eq!(stack.clerk(&stack::centre()).await?.case(&id).await?.timeline.iter().filter(|e| e.kind() == MessageKind::Receipt).count(), 0);

    // An expired session is refused. A console with a configured secret and a 3 s lifetime:
    // its cookie works at once, then no more; the first console's cookie (another secret) never.
    let short = duijie_console::SessionConfig {
        secret: Some(secrecy::SecretString::from("a-test-secret-of-at-least-32-bytes!".to_owned())),
        ttl_ms: std::time::Duration::from_secs(3),
    };
    let other = browser::start_console_with(&stack, short).await?;
    let (status, _, _) = get_as(other.addr, "/cases", &good).await?;
    assert_eq!(status, 303, "a cookie signed with another secret is refused");
    let brief = browser::sign_in(other.addr, &stack::court()).await?;
    let (status, _, page) = get_as(other.addr, &format!("/cases/{id}"), &brief).await?;
    assert!(status == 200 && page.contains(code), "{status}");
    let (case_path, other_addr) = (format!("/cases/{id}"), other.addr);
    duijie_tests::wait_until("the 3 s session to expire", stack::WAIT, || {
        let (brief, case_path) = (brief.clone(), case_path.clone());
        async move {
            let (status, location, body) = get_as(other_addr, &case_path, &brief).await?;
            Ok(status == 303 && location == "/signin" && !body.contains(code))
        }
    })
    .await?;

    // The Content-Security-Policy: scripts and styles by this response's nonce only, on agency
    // pages and public ones alike, a fresh nonce each time.
    let mut nonces = Vec::new();
    for (path, cookie) in [(format!("/cases/{id}"), good.as_str()), ("/signin".to_owned(), ""), ("/lookup".to_owned(), ""), ("/cases/new".to_owned(), good.as_str())] {
        let headers: Vec<(&str, &str)> = if cookie.is_empty() { Vec::new() } else { vec![("Cookie", cookie)] };
        let (status, resp) = http(addr, "GET", &path, &headers, "").await?;
        assert_eq!(status, 200, "{path}");
        let csp = browser::header(&resp, "content-security-policy").unwrap_or_default();
        for directive in ["default-src 'self'", "object-src 'none'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'"] {
            assert!(csp.contains(directive), "{directive} in {csp}");
        }
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval") && !csp.contains('*'), "{csp}");
        let nonce = csp.split("'nonce-").nth(1).and_then(|n| n.split('\'').next()).unwrap_or_default().to_owned();
        assert!(nonce.len() >= 22, "a long random nonce: {csp}");
        assert!(csp.contains(&format!("script-src 'nonce-{nonce}'")) && csp.contains(&format!("style-src 'nonce-{nonce}'")), "{csp}");
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        let scripts: Vec<&str> = body.split("<script").skip(1).collect();
        assert!(!scripts.is_empty(), "{path} has its scripts");
        for tag in scripts.iter().chain(body.split("<style").skip(1).collect::<Vec<_>>().iter()) {
            assert!(tag.starts_with(&format!(" nonce=\"{nonce}\"")), "{path}: every script and style carries the nonce: <…{}", &tag[..tag.len().min(80)]);
        }
        assert!(!body.contains(" style=\"") && !body.contains(" onclick="), "{path}: no inline style or handler attribute, which the policy blocks");
        nonces.push(nonce);
    }
    nonces.sort();
    nonces.dedup();
    assert_eq!(nonces.len(), 4, "a fresh nonce per response");

    console.handle.abort();
    other.handle.abort();
    stack.stop().await
}
