//! The parties' lookup (当事人查询): a public page, `/lookup`, and a JSON endpoint,
//! `POST /api/lookup`, where a party without an agency certificate enters the case code and a
//! second factor (the last six characters of their identity number, or the access code on their
//! receipt) and sees the state in plain Chinese, the body holding the case, the next step and
//! its deadline — what the audit service's `LookupCase` answers, asked with the console's own
//! certificate. No sign-in; the audit service counts the attempts per address and per case and
//! records every one.
//!
//! The party's address is the TCP peer of the connection (axum's `ConnectInfo`). A proxy in
//! front of the console would make every party one address; `X-Forwarded-For` is not trusted,
//! since any client can send it.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::{Form, Json};
use duijie_domain::AgencyNode;
use duijie_proto::v1::audit_service_client::AuditServiceClient;
use duijie_proto::v1::{LookupCaseRequest, LookupCaseResponse};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::backend::UiError;
use crate::pages::{china_time, countdown, page};

/// What the form and the JSON endpoint take.
#[derive(Deserialize, Default)]
pub struct LookupForm {
    #[serde(default)]
    case_code: String,
    #[serde(default)]
    factor: String,
}

/// The JSON answer: the same fields as the page.
#[derive(Serialize)]
pub struct LookupJson {
    /// 解纷码.
    case_code: String,
    /// Machine name of the state, e.g. `IN_MEDIATION`.
    state: String,
    /// The state in plain Chinese.
    state_label: String,
    /// Since when (China time, RFC 3339).
    state_since: Option<String>,
    /// The body holding the case, by name.
    holder: String,
    /// The next step in plain Chinese; empty once the case is finished.
    next_step: String,
    /// Its legal deadline (China time, RFC 3339), if one runs.
    next_step_due_at: Option<String>,
    /// The asking party, masked (empty with the access code).
    party_name: String,
    /// The asking party's role (empty with the access code).
    party_role: String,
}

/// Why a lookup got no answer, as the party reads it.
enum Refused {
    /// Missing or overlong input (400), with the sentence to show.
    Input(&'static str),
    /// The audit service's answer, or a failure reaching it.
    Ui(UiError),
}

impl Refused {
    fn status(&self) -> StatusCode {
        match self {
            Refused::Input(_) => StatusCode::BAD_REQUEST,
            Refused::Ui(UiError::Service(s)) if s.code() == tonic::Code::NotFound => StatusCode::NOT_FOUND,
            Refused::Ui(UiError::Service(s)) if s.code() == tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Refused::Ui(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn message(&self) -> String {
        match self {
            Refused::Input(m) => (*m).to_owned(),
            // The audit service's own sentences (not found, too many attempts) are written for
            // the party; anything else is the console's or the service's fault, not theirs.
            Refused::Ui(UiError::Service(s)) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::ResourceExhausted) => {
                format!("{}。", s.message().trim_end_matches('。'))
            }
            Refused::Ui(_) => "查询服务暂时不可用，请稍后再试。".to_owned(),
        }
    }
}

async fn ask(st: &AppState, peer: SocketAddr, f: &LookupForm) -> Result<LookupCaseResponse, Refused> {
    let (code, factor) = (f.case_code.trim(), f.factor.trim());
    if code.is_empty() || factor.is_empty() {
        return Err(Refused::Input("请填写解纷码和验证信息。"));
    }
    if code.chars().count() > 64 || factor.chars().count() > 32 {
        return Err(Refused::Input("解纷码或验证信息过长，请检查后重新填写。"));
    }
    let req = LookupCaseRequest { case_code: code.to_owned(), factor: factor.to_owned(), client_address: peer.ip().to_string() };
    let answer = async {
        let ch = st.backend.audit_as_console()?;
        Ok::<_, UiError>(AuditServiceClient::new(ch).lookup_case(req).await?.into_inner())
    }
    .await;
    answer.map_err(|e| {
        match &e {
            UiError::Service(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::ResourceExhausted) => {}
            UiError::Internal(err) => tracing::error!(error = format!("{err:#}"), "lookup failed"),
            other => tracing::warn!(error = %other, "lookup failed"),
        }
        Refused::Ui(e)
    })
}

fn holder_name(st: &AppState, a: &LookupCaseResponse) -> String {
    AgencyNode::from_ref(a.holder.as_ref()).map_or_else(|_| "—".into(), |n| st.name_of(&n))
}

fn rfc3339(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    let ts = ts?;
    let tz = chrono::FixedOffset::east_opt(8 * 3600)?;
    chrono::DateTime::from_timestamp(ts.seconds, 0).map(|t| t.with_timezone(&tz).to_rfc3339())
}

fn form(f: &LookupForm) -> Markup {
    html! {
        form.card #lookup-form method="post" action="/lookup" autocomplete="off" {
            label for="case_code" { "解纷码" }
            input #case_code type="text" name="case_code" value=(f.case_code) placeholder="如 JF-431003-2026-C1M-0001" required;
            label for="factor" { "验证信息：本人身份证号码后六位，或回执上的查询码" }
            // The factor is never put back into the page.
            input #factor type="password" name="factor" required;
            button #lookup-submit type="submit" { "查询" }
        }
    }
}

fn lookup_page(body: Markup) -> Html<String> {
    Html(page(None, "当事人查询", body).into_string())
}

fn intro() -> Markup {
    html! {
        h1 { "当事人查询" }
        p.muted { "凭移送机构告知的解纷码和验证信息，查询纠纷的办理进展。本页只显示案件状态、承办机构、下一步和办理期限，不显示其他当事人的信息。" }
    }
}

/// `GET /lookup`: the form.
pub async fn page_form() -> Response {
    lookup_page(html! { (intro()) (form(&LookupForm::default())) }).into_response()
}

/// `POST /lookup`: the answer, or the form again with one sentence saying why not.
pub async fn page_submit(State(st): State<AppState>, ConnectInfo(peer): ConnectInfo<SocketAddr>, Form(f): Form<LookupForm>) -> Response {
    match ask(&st, peer, &f).await {
        Ok(a) => {
            let (left, class) = countdown(a.next_step_due_at.as_ref(), false);
            let body = html! {
                (intro())
                div.card #lookup-result data-state=(a.state) {
                    dl.kv {
                        dt { "解纷码" } dd #result-code { (a.case_code) }
                        @if !a.party_name_masked.is_empty() {
                            dt { "当事人" } dd #result-party { (a.party_name_masked) "（" (a.party_role_label) "）" }
                        }
                        dt { "当前状态" } dd #result-state { b { (a.state_label) } span.muted { "（自 " (china_time(a.state_since.as_ref())) " 起）" } }
                        dt { "承办机构" } dd #result-holder { (holder_name(&st, &a)) }
                        dt { "下一步" } dd #result-next { @if a.next_step.is_empty() { "案件已办结" } @else { (a.next_step) } }
                        @if a.next_step_due_at.is_some() {
                            dt { "办理期限" } dd #result-due { (china_time(a.next_step_due_at.as_ref())) " " span class=(format!("{class}-text")) { "（" (left) "）" } }
                        }
                    }
                }
                p { a href="/lookup" { "查询其他案件" } }
            };
            lookup_page(body).into_response()
        }
        Err(r) => {
            let body = html! {
                (intro())
                div.banner.error #error { (r.message()) }
                (form(&LookupForm { case_code: f.case_code.clone(), factor: String::new() }))
            };
            (r.status(), lookup_page(body)).into_response()
        }
    }
}

/// `POST /api/lookup`: `{"case_code": …, "factor": …}` → the same fields as JSON (200), or
/// `{"error": …}` with 400 (input), 404 (no case matches code and factor), 429 (too many
/// attempts) or 503 (the audit service cannot answer).
pub async fn api(State(st): State<AppState>, ConnectInfo(peer): ConnectInfo<SocketAddr>, body: Bytes) -> Response {
    // Parsed by hand: a malformed body is a 400 with a sentence, as every other refusal is.
    let Ok(f) = serde_json::from_slice::<LookupForm>(&body) else {
        let r = Refused::Input("请求须为 JSON：{\"case_code\": \"…\", \"factor\": \"…\"}。");
        return (r.status(), Json(serde_json::json!({ "error": r.message() }))).into_response();
    };
    match ask(&st, peer, &f).await {
        Ok(a) => Json(LookupJson {
            holder: holder_name(&st, &a),
            state_since: rfc3339(a.state_since.as_ref()),
            next_step_due_at: rfc3339(a.next_step_due_at.as_ref()),
            case_code: a.case_code,
            state: a.state,
            state_label: a.state_label,
            next_step: a.next_step,
            party_name: a.party_name_masked,
            party_role: a.party_role_label,
        })
        .into_response(),
        Err(r) => (r.status(), Json(serde_json::json!({ "error": r.message() }))).into_response(),
    }
}
