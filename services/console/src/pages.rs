//! The pages. Each handler asks the services as the signed-in agency and renders HTML; an
//! error becomes a page with one plain Chinese sentence (never a stack trace) and the form the
//! clerk filled in, still filled in.

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use chrono::{DateTime, Datelike as _, NaiveDate, TimeZone as _, Utc};
use duijie_domain::{AgencyNode, actions};
use duijie_proto::answered_case;
use duijie_proto::v1::audit_service_client::AuditServiceClient;
use duijie_proto::v1::cases_service_client::CasesServiceClient;
use duijie_proto::v1::mediation_service_client::MediationServiceClient;
use duijie_proto::v1::referrals_service_client::ReferralsServiceClient;
use duijie_proto::v1::*;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use crate::backend::UiError;
use crate::forms::{self, ActionSpec, Fields, Widget};
use crate::{AppState, SignIn, charts, labels};

// ---------------------------------------------------------------------------------------------
// Who is asking
// ---------------------------------------------------------------------------------------------

/// The signed-in agency.
pub struct Me(pub AgencyNode);

impl FromRequestParts<AppState> for Me {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match state.sign_in {
            // A signed, unexpired cookie (session.rs); anything else is not signed in.
            SignIn::Demo => match state.sessions.signed_in(&parts.headers) {
                // Only identities the console holds a certificate for.
                Some(n) if state.demo_identities().contains(&n) => Ok(Me(n)),
                _ => Err(Redirect::to("/signin").into_response()),
            },
            SignIn::ClientCertificate => match parts.extensions.get::<crate::tls::PeerAgency>() {
                Some(crate::tls::PeerAgency(Ok(n))) => Ok(Me(n.clone())),
                // A connection without a certificate reaches only the public pages (the lookup).
                Some(crate::tls::PeerAgency(Err(e))) if e == crate::tls::NO_CERTIFICATE => {
                    Err(error_page(None, StatusCode::FORBIDDEN, "请使用机构数字证书访问本控制台。当事人查询请访问 /lookup。").into_response())
                }
                Some(crate::tls::PeerAgency(Err(e))) => {
                    tracing::info!(error = %e, "browser certificate names no agency");
                    Err(error_page(None, StatusCode::FORBIDDEN, "无法识别您的机构证书：证书主题须为“机构类型:机构代码”。").into_response())
                }
                None => Err(error_page(None, StatusCode::FORBIDDEN, "请使用机构数字证书访问本控制台。").into_response()),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Layout
// ---------------------------------------------------------------------------------------------

const STYLE: &str = r#"
*{box-sizing:border-box}body{margin:0;font-family:"Noto Sans CJK SC","Source Han Sans SC","Microsoft YaHei",sans-serif;color:#1d2733;background:#f4f6f9;font-size:14px}
header{background:#1f3f6b;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:center;flex-wrap:wrap}
header a{color:#fff;text-decoration:none}header .brand{font-size:18px;font-weight:bold}header nav{display:flex;gap:16px}
header .who{margin-left:auto;display:flex;gap:12px;align-items:center}header form{margin:0}
main{padding:20px 24px;max-width:1280px}h1{font-size:20px;margin:4px 0 16px}h2{font-size:16px;margin:20px 0 8px}
table{border-collapse:collapse;width:100%;background:#fff}th,td{border:1px solid #d8dee6;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#e9eef4;font-weight:normal;color:#44546a}tr.overdue td{background:#fde8e8}tr.soon td{background:#fff6e0}
.overdue-text{color:#b42318;font-weight:bold}.soon-text{color:#b54708}.muted{color:#6b7785}
.banner{padding:10px 14px;margin:0 0 16px;border-radius:4px}.banner.error{background:#fde8e8;border:1px solid #f1a5a5;color:#8a1c1c}
.banner.ok{background:#e6f4ea;border:1px solid #9fd3ad;color:#1e5b2f}
.banner.live{background:#fff7e0;border:1px solid #f0d58a;color:#6b4e00;margin:12px 24px 0}
header input[name=code]{width:220px}header .who button{margin:0}
.card{background:#fff;border:1px solid #d8dee6;border-radius:4px;padding:12px 16px;margin:0 0 14px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:14px}
label{display:block;margin:8px 0 2px;color:#44546a}input[type=text],input[type=date],input[type=number],select,textarea{width:100%;padding:6px;border:1px solid #b8c2cc;border-radius:3px;font:inherit}
textarea{min-height:60px}input.invalid,select.invalid,textarea.invalid{border-color:#d92d20;background:#fff5f5}.err{color:#b42318;margin:2px 0}
button{background:#1f5fa8;color:#fff;border:0;border-radius:3px;padding:7px 16px;font:inherit;cursor:pointer;margin-top:10px}button.plain{background:#5c6b7a}
.stats{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}.stat{background:#fff;border:1px solid #d8dee6;padding:10px}
.stat b{display:block;font-size:22px;color:#1f3f6b}.charts{display:flex;flex-wrap:wrap;gap:16px}figure.chart{background:#fff;border:1px solid #d8dee6;margin:0;padding:10px}
figcaption{font-weight:bold;margin-bottom:6px}.filters{display:flex;gap:10px;align-items:end;flex-wrap:wrap}.filters label{margin:0}.filters select,.filters input{width:auto}
.kv{display:grid;grid-template-columns:140px 1fr;gap:4px 12px}.kv dt{color:#6b7785}.kv dd{margin:0}code{font-size:12px}
"#;

/// Keeps what a clerk typed into a marked form across a reload (sessionStorage, this tab
/// only, keyed by agency); cleared once the server says the form went through. Hidden fields
/// marked `data-keep-field` (the referral's request id) are kept too, so a referral resubmitted
/// from a restored draft is the same referral, not a second one.
const KEEP_FORMS: &str = r#"
(function(){
  Array.prototype.forEach.call(document.querySelectorAll('[data-clear]'),function(el){
    try{sessionStorage.removeItem('duijie:'+el.getAttribute('data-clear'));}catch(e){}
  });
  var forms=document.querySelectorAll('form[data-keep]');
  Array.prototype.forEach.call(forms,function(f){
    var key='duijie:'+f.getAttribute('data-keep'),saved={};
    try{saved=JSON.parse(sessionStorage.getItem(key)||'{}')||{};}catch(e){saved={};}
    {Object.keys(saved).forEach(function(n){
      var el=f.elements.namedItem(n);if(!el||(el.type==='hidden'&&!el.hasAttribute('data-keep-field')))return;
      if(el.type==='checkbox'){el.checked=!!saved[n];}else{el.value=saved[n];}
    });}
    var save=function(){var o={};Array.prototype.forEach.call(f.elements,function(el){
      if(!el.name||el.type==='submit'||(el.type==='hidden'&&!el.hasAttribute('data-keep-field')))return;o[el.name]=el.type==='checkbox'?el.checked:el.value;});
      try{sessionStorage.setItem(key,JSON.stringify(o));}catch(e){}};
    f.addEventListener('input',save);f.addEventListener('change',save);
  });
})();
"#;

pub(crate) fn page(state: Option<(&AppState, &AgencyNode)>, title: &str, body: Markup) -> Markup {
    // The only scripts and styles the Content-Security-Policy lets run (csp.rs); no element
    // carries a `style` attribute or an event handler, which the policy would block.
    let nonce = crate::csp::nonce();
    html! {
        (DOCTYPE)
        html lang="zh-CN" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · 对接 duijie" }
                // Collects script errors first thing, so that support (and the browser tests)
                // can ask a page whether anything on it failed.
                script nonce=(nonce) { (PreEscaped("window.__jsErrors=[];window.addEventListener('error',function(e){window.__jsErrors.push(String(e.message));});")) }
                style nonce=(nonce) { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    a.brand href="/" { "对接 · 多元解纷协同平台" }
                    @if let Some((st, me)) = state {
                        nav {
                            @if me.kind() == AgencyKind::Supervisor {
                                a href="/dashboard" { "统计分析" }
                            } @else {
                                a href="/cases" { @if me.kind() == AgencyKind::Mediation { "收件箱" } @else { "我移送的案件" } }
                                @if me.kind() == AgencyKind::Mediation { a #nav-new href="/cases/new" { "自行受理" } }
                                @else { a #nav-new href="/cases/new" { "新建移送" } }
                                a href="/dashboard" { "本机构统计" }
                            }
                        }
                        form action="/search" method="get" {
                            input type="text" name="code" placeholder="按解纷码查找案件" aria-label="解纷码";
                        }
                        div.who {
                            span #whoami { (st.name_of(me)) " · " code { (me.to_string()) } }
                            @if st.sign_in == SignIn::Demo {
                                form action="/signout" method="post" { button.plain type="submit" { "切换身份" } }
                            }
                        }
                    }
                }
                @let live = state.is_some_and(|(_, me)| me.kind() != AgencyKind::Supervisor);
                @if live {
                    p.banner.live #live-notice hidden { "本案有新动态。" a #live-reload href="" { "刷新查看" } }
                }
                main { (body) }
                script nonce=(nonce) { (PreEscaped(KEEP_FORMS)) }
                @if live { script nonce=(nonce) { (PreEscaped(crate::live::SCRIPT)) } }
            }
        }
    }
}

fn error_page(who: Option<(&AppState, &AgencyNode)>, status: StatusCode, message: &str) -> (StatusCode, Html<String>) {
    let body = html! { h1 { "无法完成" } div.banner.error #error { (message) } p { a href="/" { "返回首页" } } };
    (status, Html(page(who, "出错了", body).into_string()))
}

fn fail(st: &AppState, me: &AgencyNode, e: &UiError) -> Response {
    log_error(e);
    error_page(Some((st, me)), e.http_status(), &e.message()).into_response()
}

fn log_error(e: &UiError) {
    match e {
        UiError::Internal(err) => tracing::error!(error = format!("{err:#}"), "console request failed"),
        UiError::Service(s) if !matches!(s.code(), tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition | tonic::Code::NotFound) => {
            tracing::warn!(code = ?s.code(), message = s.message(), "service call failed");
        }
        _ => tracing::debug!(error = %e, "request refused"),
    }
}

pub(crate) fn china_time(ts: Option<&prost_types::Timestamp>) -> String {
    let Some(ts) = ts else { return "—".into() };
    let Some(tz) = chrono::FixedOffset::east_opt(8 * 3600) else { return "—".into() };
    Utc.timestamp_opt(ts.seconds, 0).single().map_or_else(|| "—".into(), |t| t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string())
}

/// "剩余 3 天" / "已超期 2 天", and the row class it deserves.
pub(crate) fn countdown(due: Option<&prost_types::Timestamp>, overdue: bool) -> (String, &'static str) {
    let Some(due) = due else { return ("—".into(), "") };
    let left = due.seconds - Utc::now().timestamp();
    if overdue || left < 0 {
        let days = (-left).max(0) / 86_400;
        (if days == 0 { "已超期".into() } else { format!("已超期 {days} 天") }, "overdue")
    } else if left < 3600 {
        ("不足 1 小时".into(), "soon")
    } else if left < 2 * 86_400 {
        (format!("剩余 {} 小时", left / 3600), "soon")
    } else {
        (format!("剩余 {} 天", left / 86_400), "")
    }
}

fn agency_name(st: &AppState, r: Option<&AgencyRef>) -> String {
    AgencyNode::from_ref(r).map_or_else(|_| "—".into(), |n| st.name_of(&n))
}

/// A timeline entry's summary in Chinese: from the typed message, or (a service that sent none)
/// the service's own line.
fn entry_summary(st: &AppState, message: Option<&Envelope>, fallback: &str) -> String {
    match message.and_then(|m| m.payload.as_ref()) {
        Some(p) => labels::summary(p, |r| agency_name(st, r)),
        None => fallback.to_owned(),
    }
}

/// The title of action `key` (the table's label).
fn action_title(key: &str) -> &'static str {
    actions::by_key(key).map_or("操作", |a| a.label)
}

// ---------------------------------------------------------------------------------------------
// Sign-in
// ---------------------------------------------------------------------------------------------

pub async fn home(State(_st): State<AppState>, Me(me): Me) -> Redirect {
    Redirect::to(if me.kind() == AgencyKind::Supervisor { "/dashboard" } else { "/cases" })
}

pub async fn signin_page(State(st): State<AppState>) -> Response {
    if st.sign_in == SignIn::ClientCertificate {
        return Redirect::to("/").into_response();
    }
    let ids = st.demo_identities();
    let body = html! {
        h1 { "选择登录身份" }
        p.muted { "演示环境：每个身份对应一张机构数字证书，控制台以该机构的证书调用各机构服务。生产环境中身份由浏览器出示的机构证书确定。" }
        div.grid {
            @for n in ids.iter() {
                form.card method="post" action="/signin" {
                    input type="hidden" name="as" value=(n.to_string());
                    div { b { (st.name_of(n)) } }
                    div.muted { (labels::agency_kind(n.kind())) " · " code { (n.to_string()) } }
                    button type="submit" id=(format!("signin-{}-{}", n.kind().as_str(), n.code())) { "以此身份登录" }
                }
            }
        }
    };
    Html(page(None, "登录", body).into_string()).into_response()
}

#[derive(Deserialize)]
pub struct SignInForm {
    #[serde(rename = "as")]
    who: String,
}

pub async fn signin(State(st): State<AppState>, Form(f): Form<SignInForm>) -> Response {
    let Some(node) = f.who.parse::<AgencyNode>().ok().filter(|n| st.demo_identities().contains(n)) else {
        return error_page(None, StatusCode::BAD_REQUEST, "没有该身份的证书，请重新选择。").into_response();
    };
    let cookie = st.sessions.set_cookie(&node);
    let mut resp = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

pub async fn signout(State(st): State<AppState>) -> Response {
    let mut resp = Redirect::to("/signin").into_response();
    if let Ok(v) = HeaderValue::from_str(&st.sessions.clear_cookie()) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

pub async fn not_found(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let me = if st.sign_in == SignIn::Demo { st.sessions.signed_in(&headers) } else { None };
    error_page(me.as_ref().map(|m| (&st, m)), StatusCode::NOT_FOUND, "页面不存在。").into_response()
}

// ---------------------------------------------------------------------------------------------
// Case list
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    page: String,
}

pub async fn list(State(st): State<AppState>, Me(me): Me, Query(q): Query<ListQuery>) -> Response {
    if me.kind() == AgencyKind::Supervisor {
        return Redirect::to("/dashboard").into_response();
    }
    let channel = q.channel.parse::<i32>().ok().filter(|c| Channel::try_from(*c).is_ok()).unwrap_or(0);
    let state_filter = if labels::states().any(|s| s == q.state) { q.state.clone() } else { String::new() };
    let result = async {
        let ch = st.backend.own(&me)?;
        let req = ListCasesRequest { state: state_filter.clone(), channel, page_size: 100, page_token: q.page.clone() };
        Ok::<_, UiError>(CasesServiceClient::new(ch).list_cases(req).await?.into_inner())
    }
    .await;
    let resp = match result {
        Ok(r) => r,
        Err(e) => return fail(&st, &me, &e),
    };
    let title = if me.kind() == AgencyKind::Mediation { "收件箱" } else { "我移送的案件" };
    let body = html! {
        h1 { (title) }
        form.filters.card method="get" action="/cases" {
            div { label for="f-state" { "状态" } select #f-state name="state" { option value="" { "全部" } @for s in labels::states() { option value=(s) selected[state_filter == s] { (labels::state(s)) } } } }
            div { label for="f-channel" { "渠道" } select #f-channel name="channel" { option value="0" { "全部" } @for c in labels::CHANNELS { option value=(c as i32) selected[channel == c as i32] { (labels::channel(c)) } } } }
            button type="submit" { "筛选" }
        }
        @if resp.cases.is_empty() {
            p.card.muted #empty { "没有符合条件的案件。" }
        } @else {
            table #cases {
                thead { tr { th { "解纷码" } th { "渠道" } th { "移送机构" } th { "当前承办" } th { "状态" } th { "最近期限" } th { "更新时间" } } }
                tbody {
                    @for c in &resp.cases {
                        @let (left, class) = countdown(c.next_due_at.as_ref(), c.overdue);
                        @let class = if c.handed_on { "" } else { class };
                        tr class=(class) data-case=(c.case_id) data-state=(c.state) {
                            td { a href=(format!("/cases/{}", c.case_id)) { (c.case_code) } }
                            td { (labels::channel(c.channel())) }
                            td { (agency_name(&st, c.referrer.as_ref())) }
                            td { (agency_name(&st, c.holder.as_ref())) }
                            td { (labels::state(&c.state)) @if c.handed_on { span.muted { "（已移交）" } } }
                            td { @if c.handed_on { "—" } @else { span class=(format!("{class}-text")) { (left) } } }
                            td { (china_time(c.updated_at.as_ref())) }
                        }
                    }
                }
            }
            @if !resp.next_page_token.is_empty() {
                p { a href=(format!("/cases?state={}&channel={}&page={}", state_filter, channel, resp.next_page_token)) { "下一页" } }
            }
        }
    };
    Html(page(Some((&st, &me)), title, body).into_string()).into_response()
}

// ---------------------------------------------------------------------------------------------
// New referral
// ---------------------------------------------------------------------------------------------

pub async fn new_referral(State(st): State<AppState>, Me(me): Me) -> Response {
    if !matches!(me.kind(), AgencyKind::Court | AgencyKind::Police | AgencyKind::Petition | AgencyKind::Procuratorate | AgencyKind::Mediation) {
        return error_page(Some((&st, &me)), StatusCode::FORBIDDEN, "只有法院、检察院、公安机关和信访部门可以移送案件，调解组织可以自行受理。").into_response();
    }
    let serial = uuid::Uuid::new_v4().as_u128() % 1_000_000;
    let defaults = Fields(vec![
        ("case_code".into(), format!("JF-{}-{}-{serial:06}", me.code(), Utc::now().year())),
        ("client_request_id".into(), uuid::Uuid::new_v4().to_string()),
        ("p0_consent".into(), "on".into()),
        ("p1_consent".into(), "on".into()),
    ]);
    Html(page(Some((&st, &me)), new_title(&me), referral_form(&st, &me, &defaults, &[])).into_string()).into_response()
}

/// 自行受理 for a mediation body, 新建移送 for a referrer.
fn new_title(me: &AgencyNode) -> &'static str {
    if me.kind() == AgencyKind::Mediation { "自行受理" } else { "新建移送" }
}

pub async fn submit_referral(State(st): State<AppState>, Me(me): Me, Form(pairs): Form<Vec<(String, String)>>) -> Response {
    let f = Fields(pairs);
    let result = async {
        let ch = st.backend.own(&me)?;
        if me.kind() == AgencyKind::Mediation {
            let req = forms::intake(&f, &me)?;
            return Ok::<_, UiError>(MediationServiceClient::new(ch).register_case(req).await.and_then(answered_case)?);
        }
        let req = forms::referral(&f, &me, &st.mediation_bodies())?;
        Ok::<_, UiError>(ReferralsServiceClient::new(ch).submit_referral(req).await.and_then(answered_case)?)
    }
    .await;
    match result {
        Ok(view) if me.kind() == AgencyKind::Mediation => Redirect::to(&format!("/cases/{}?ok=registered", view.case_id)).into_response(),
        Ok(view) => Redirect::to(&format!("/cases/{}?ok=submitted", view.case_id)).into_response(),
        Err(e) => {
            log_error(&e);
            let errors: Vec<(String, String)> = match &e {
                UiError::Form(list) => list.clone(),
                other => other.field_errors().into_iter().map(|(path, msg)| (forms::form_field(&path), format!("{}{}", labels::field(&path), msg))).collect(),
            };
            let body = html! {
                div.banner.error #error { (e.message()) }
                (referral_form(&st, &me, &f, &errors))
            };
            (e.http_status(), Html(page(Some((&st, &me)), new_title(&me), body).into_string())).into_response()
        }
    }
}

fn field_error(errors: &[(String, String)], name: &str) -> Option<String> {
    errors.iter().find(|(n, _)| n == name).map(|(_, m)| m.clone())
}

fn text_input(f: &Fields, errors: &[(String, String)], name: &str, label: &str, kind: &str) -> Markup {
    let err = field_error(errors, name);
    html! {
        label for=(name) { (label) }
        input type=(kind) id=(name) name=(name) value=(f.get(name)) class=[err.as_ref().map(|_| "invalid")];
        @if let Some(e) = err { p.err data-field=(name) { (e) } }
    }
}

fn select_input(f: &Fields, errors: &[(String, String)], name: &str, label: &str, opts: &[(String, String)]) -> Markup {
    let err = field_error(errors, name);
    html! {
        label for=(name) { (label) }
        select id=(name) name=(name) class=[err.as_ref().map(|_| "invalid")] {
            option value="" { "请选择" }
            @for (v, l) in opts { option value=(v) selected[f.get(name) == v] { (l) } }
        }
        @if let Some(e) = err { p.err data-field=(name) { (e) } }
    }
}

fn referral_form(st: &AppState, me: &AgencyNode, f: &Fields, errors: &[(String, String)]) -> Markup {
    let opts = |v: Vec<(i32, &'static str)>| v.into_iter().map(|(n, l)| (n.to_string(), l.to_owned())).collect::<Vec<_>>();
    let bodies: Vec<(String, String)> = st.mediation_bodies().into_iter().map(|(n, name)| (n.to_string(), name)).collect();
    // What this kind of referrer may choose (the services refuse the rest); the first is the default.
    let rules = duijie_domain::referrers::of(me.kind());
    let modes = opts(rules.map_or(&[][..], |r| r.referral_modes).iter().map(|m| (*m as i32, labels::referral_mode(*m))).collect());
    let clocks = opts(rules.map_or(&[][..], |r| r.clock_policies).iter().map(|k| (*k as i32, labels::clock_policy(*k))).collect());
    let categories = opts((1..=17).filter_map(|i| DisputeCategory::try_from(i).ok()).map(|c| (c as i32, labels::category(c))).collect());
    let roles = opts([PartyRole::Applicant, PartyRole::Respondent, PartyRole::Plaintiff, PartyRole::Defendant, PartyRole::Victim, PartyRole::Offender, PartyRole::Petitioner, PartyRole::ThirdParty].into_iter().map(|r| (r as i32, labels::party_role(r))).collect());
    let id_types = opts((1..=7).filter_map(|i| IdDocumentType::try_from(i).ok()).map(|t| (t as i32, labels::id_type(t))).collect());
    let own = me.kind() == AgencyKind::Mediation;
    let sources = opts(labels::INTAKE_SOURCES.iter().map(|s| (*s as i32, labels::intake_source(*s))).collect());
    let risks = opts([RiskLevel::Low, RiskLevel::Medium, RiskLevel::High].iter().map(|r| (*r as i32, labels::risk_level(*r))).collect());
    html! {
        h1 { (new_title(me)) }
        form #new-referral method="post" action="/cases/new" data-keep=(format!("{me}:new-referral")) novalidate {
            input type="hidden" name="client_request_id" value=(f.get("client_request_id")) data-keep-field;
            div.grid {
                @if own {
                    div.card #intake {
                        h2 { "受理信息" }
                        (text_input(f, errors, "case_code", "解纷码", "text"))
                        (select_input(f, errors, "source", "受理来源", &sources))
                        (select_input(f, errors, "risk_level", "风险等级", &risks))
                        (text_input(f, errors, "received_by", "接待人", "text"))
                        p.muted { "自行受理的案件登记即为受理，按人民调解期限（一个月）计时。" }
                    }
                } @else {
                div.card {
                    h2 { "移送信息" }
                    (select_input(f, errors, "to", "接收调解组织", &bodies))
                    (text_input(f, errors, "case_code", "解纷码", "text"))
                    (select_input(f, errors, "mode", "移送方式", &modes))
                    (select_input(f, errors, "clock_policy", "计时规则", &clocks))
                    @if me.kind() == AgencyKind::Court {
                        (text_input(f, errors, "registered_at", "立案时间（诉中委托调解必填）", "date"))
                    }
                    (text_input(f, errors, "source_reference", "原案号 / 警情号 / 信访件编号", "text"))
                    (text_input(f, errors, "legal_basis", "法律依据", "text"))
                }
                }
                div.card {
                    h2 { "纠纷情况" }
                    (select_input(f, errors, "category", "纠纷类型", &categories))
                    (text_input(f, errors, "cause_of_action", "案由", "text"))
                    label for="facts" { "基本事实" }
                    textarea #facts name="facts" class=[field_error(errors, "facts").map(|_| "invalid")] { (f.get("facts")) }
                    @if let Some(e) = field_error(errors, "facts") { p.err data-field="facts" { (e) } }
                    label for="claims" { "请求事项（每行一项）" }
                    textarea #claims name="claims" { (f.get("claims")) }
                    (text_input(f, errors, "amount", "标的额（元）", "text"))
                }
                @for i in 0..2 {
                    div.card {
                        h2 { "当事人" (i + 1) @if i == 1 { span.muted { "（可不填）" } } }
                        (select_input(f, errors, &format!("p{i}_role"), "身份", &roles))
                        (text_input(f, errors, &format!("p{i}_name"), "姓名 / 名称", "text"))
                        (select_input(f, errors, &format!("p{i}_id_type"), "证件类型", &id_types))
                        (text_input(f, errors, &format!("p{i}_id_number"), "证件号码", "text"))
                        (text_input(f, errors, &format!("p{i}_contact"), "联系电话", "text"))
                        label { input type="checkbox" name=(format!("p{i}_consent")) checked[f.checked(&format!("p{i}_consent"))]; " 当事人同意调解" }
                    }
                }
            }
            button #submit-referral type="submit" { @if own { "登记受理" } @else { "移送" } }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The case page
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub struct CaseQuery {
    #[serde(default)]
    ok: String,
}

pub async fn case_page(State(st): State<AppState>, Me(me): Me, Path(id): Path<String>, Query(q): Query<CaseQuery>) -> Response {
    let Some(id) = case_path(&id) else { return not_a_case(&st, &me) };
    let ok = match q.ok.as_str() {
        "" => None,
        "submitted" => Some(("移送成功，案件已进入对接平台。".to_owned(), "new-referral".to_owned())),
        "registered" => Some(("登记成功，案件已受理（自行受理）。".to_owned(), "new-referral".to_owned())),
        key => Some((format!("已办理：{}。", action_title(key)), format!("{id}-{key}"))),
    };
    render_case(&st, &me, &id, ok, None).await
}

/// A failed action, shown on the case page with the clerk's input kept.
struct Failed {
    key: String,
    fields: Fields,
    error: UiError,
}

/// A case id from a path: only a UUID reaches the services and the redirects.
fn case_path(id: &str) -> Option<String> {
    uuid::Uuid::parse_str(id).ok().map(|u| u.to_string())
}

fn not_a_case(st: &AppState, me: &AgencyNode) -> Response {
    error_page(Some((st, me)), StatusCode::NOT_FOUND, "未找到该案件，或本机构无权查看。").into_response()
}

async fn render_case(st: &AppState, me: &AgencyNode, id: &str, ok: Option<(String, String)>, failed: Option<Failed>) -> Response {
    // The agency's own view (state, parties, allowed actions); a supervisor has only the audit.
    let view = if me.kind() == AgencyKind::Supervisor {
        None
    } else {
        match async { forms::read_case(st.backend.own(me)?, id).await }.await {
            Ok(v) => Some(v),
            Err(e) => return fail(st, me, &e),
        }
    };
    let audit = async {
        let ch = st.backend.audit(me)?;
        Ok::<_, UiError>(AuditServiceClient::new(ch).get_timeline(GetTimelineRequest { case_id: id.to_owned(), case_code: String::new() }).await?.into_inner())
    }
    .await;
    let audit = match (audit, &view) {
        (Ok(t), _) => Ok(t),
        (Err(e), None) => return fail(st, me, &e),
        (Err(e), Some(_)) => {
            log_error(&e);
            Err(e)
        }
    };
    // The receipt a party takes home (当事人查询回执): for an agency of the case; a refusal or an
    // audit service that cannot answer leaves it out of the page, nothing else.
    let receipt = match view {
        Some(_) => match async {
            let ch = st.backend.audit(me)?;
            Ok::<_, UiError>(AuditServiceClient::new(ch).get_access_code(GetAccessCodeRequest { case_id: id.to_owned() }).await?.into_inner())
        }
        .await
        {
            Ok(r) => Some(r),
            Err(e) => {
                log_error(&e);
                None
            }
        },
        None => None,
    };
    let status = failed.as_ref().map_or(StatusCode::OK, |f| f.error.http_status());
    let code = view.as_ref().map(|v| v.case_code.clone()).or_else(|| audit.as_ref().ok().and_then(|a| a.case.as_ref().map(|c| c.case_code.clone()))).unwrap_or_default();
    let body = html! {
        @if let Some((m, clear)) = &ok { div.banner.ok #ok { (m) } div data-clear=(format!("{me}:{clear}")) {} }
        @if let Some(f) = &failed { div.banner.error #error { (f.error.message()) } }
        h1 { "案件 " span #case-code { (code) } }
        @if let Some(v) = &view { (case_summary(st, me, v, failed.as_ref())) }
        @if let Some(r) = &receipt { (receipt_card(r)) }
        @match &audit {
            Ok(t) => (audit_timeline(st, t)),
            Err(e) => {
                div.banner.error { "暂时无法读取审计存证记录（" (e.message()) "），以下为本机构的办理记录。" }
                @if let Some(v) = &view { (own_timeline(st, v)) }
            }
        }
    };
    (status, Html(page(Some((st, me)), &format!("案件 {code}"), body).into_string())).into_response()
}

/// What the agency hands the party so they can follow the case at `/lookup`.
fn receipt_card(r: &GetAccessCodeResponse) -> Markup {
    html! {
        div.card #lookup-receipt {
            h2 { "当事人查询回执" }
            dl.kv {
                dt { "解纷码" } dd { code #receipt-code { (r.case_code) } }
                @if r.access_code.is_empty() {
                    dt { "查询码" } dd.muted { "未启用：当事人凭本人身份证号码后六位查询" }
                } @else {
                    dt { "查询码" } dd { code #receipt-access-code { (r.access_code) } }
                }
            }
            p.muted { "请告知当事人：在本平台“当事人查询”页面（/lookup）输入解纷码和查询码（或本人身份证号码后六位），即可查看案件进展。" }
        }
    }
}

fn case_summary(st: &AppState, me: &AgencyNode, v: &CaseView, failed: Option<&Failed>) -> Markup {
    let referral = v.referral.clone().unwrap_or_default();
    let actions = forms::actions_for(me, v, &st.agencies());
    let party_ids = referral.parties.iter().map(|p| p.party_id.clone()).collect::<Vec<_>>().join(",");
    html! {
        div.grid {
            div.card {
                dl.kv {
                    dt { "渠道" } dd { (labels::channel(v.channel())) }
                    dt { "状态" } dd #case-state data-state=(v.state) { b { (labels::state(&v.state)) } @if v.handed_on { span.muted { "（本机构已移交，不再办理）" } } }
                    dt { "移送机构" } dd { (agency_name(st, v.referrer.as_ref())) }
                    dt { "当前承办" } dd #case-holder { (agency_name(st, v.holder.as_ref())) }
                    dt { "计时规则" } dd { (labels::clock_policy(v.clock_policy())) }
                    dt { "纠纷类型" } dd { (labels::category(referral.category())) " · " (referral.cause_of_action) }
                    dt { "基本事实" } dd { (referral.facts) }
                    @if !referral.claims.is_empty() { dt { "请求事项" } dd { (referral.claims.join("；")) } }
                    @if let Some(a) = &referral.amount { dt { "标的额" } dd { (format!("{:.2} 元", a.minor_units as f64 / 100.0)) } }
                }
            }
            div.card {
                h2 { "当事人" }
                // Sealed per case: only the holding mediation body reads identity numbers and
                // contacts (each read recorded); erased ones nobody reads again.
                @if v.parties_erased {
                    p.muted #parties-erased { "当事人证件号码、联系方式和地址已依法销毁，无法再查看。" }
                } @else if v.parties_sealed {
                    p.muted #parties-sealed { "当事人证件号码、联系方式和地址已加密，仅由承办的调解组织查看（每次查看均留痕）。" }
                }
                table {
                    thead { tr { th { "身份" } th { "姓名/名称" } th { "证件号码" } th { "联系方式" } } }
                    tbody { @for p in &referral.parties {
                        tr { td { (labels::party_role(p.role())) } td { (p.name) } td { code { (p.identity.as_ref().map(|i| i.number.clone()).unwrap_or_default()) } } td { (p.contact) } }
                    } }
                }
            }
        }
        h2 { "法定期限" }
        @if v.deadlines.is_empty() { p.muted { "尚未开始计时（签收后起算）。" } } @else {
            table #deadlines {
                thead { tr { th { "期限" } th { "依据" } th { "起算" } th { "届满" } th { "状态" } } }
                tbody { @for d in &v.deadlines {
                    @let (left, class) = countdown(d.due_at.as_ref(), d.overdue);
                    tr class=(if d.met_at.is_some() { "" } else { class }) {
                        td { (labels::time_limit(d.limit())) @if d.working_days { span.muted { "（工作日）" } } }
                        td { (d.legal_basis) }
                        td { (china_time(d.started_at.as_ref())) }
                        td { (china_time(d.due_at.as_ref())) @if d.extended_days > 0 { span.muted { "（已延长" (d.extended_days) "天）" } } }
                        td { @if d.met_at.is_some() { @if d.overdue { span.overdue-text { "超期完成" } } @else { "已按期完成" } } @else { span class=(format!("{class}-text")) { (left) } } }
                    }
                } }
            }
        }
        @if !actions.is_empty() {
            h2 { "可办理事项" }
            div.grid #actions {
                @for a in &actions { (action_form(me, &v.case_id, a, &party_ids, failed.filter(|f| f.key == a.action.key))) }
            }
        }
    }
}

fn action_form(me: &AgencyNode, case_id: &str, spec: &ActionSpec, party_ids: &str, failed: Option<&Failed>) -> Markup {
    let empty = Fields::default();
    let values = failed.map_or(&empty, |f| &f.fields);
    let errors = failed.map(|f| f.error.field_errors().into_iter().map(|(p, m)| (forms::form_field(&p), m)).collect::<Vec<_>>()).unwrap_or_default();
    let key = match values.get("idempotency_key") {
        "" => uuid::Uuid::new_v4().to_string(),
        k => k.to_owned(),
    };
    let a = spec.action;
    let keep = format!("{me}:{case_id}-{}", a.key);
    html! {
        form.card id=(format!("act-{}", a.key)) data-kind=(a.kind.as_str_name()) method="post" action=(format!("/cases/{case_id}/act")) data-keep=(keep) {
            h2 { (a.label) }
            input type="hidden" name="action" value=(a.key);
            input type="hidden" name="idempotency_key" value=(key);
            input type="hidden" name="party_ids" value=(party_ids);
            @for fs in &spec.fields {
                @let (field, label) = (fs.field.name, fs.field.label);
                @let id = format!("{}-{field}", a.key);
                @let err = errors.iter().find(|(n, _)| n == field).map(|(_, m)| m.clone());
                @let invalid = err.as_ref().map(|_| "invalid");
                @match &fs.widget {
                    Widget::Check => { label { input type="checkbox" name=(field) id=(id) checked[values.checked(field)]; " " (label) } }
                    Widget::Text | Widget::Date | Widget::Number => {
                        label for=(id) { (label) @if fs.field.required { " *" } }
                        input type=(match fs.widget { Widget::Date => "date", Widget::Number => "number", _ => "text" }) id=(id) name=(field) value=(values.get(field)) class=[invalid];
                    }
                    Widget::Area => {
                        label for=(id) { (label) @if fs.field.required { " *" } }
                        textarea id=(id) name=(field) class=[invalid] { (values.get(field)) }
                    }
                    Widget::Select(opts) => {
                        label for=(id) { (label) @if fs.field.required { " *" } }
                        select id=(id) name=(field) class=[invalid] {
                            option value="" { "请选择" }
                            @for (v, l) in opts { option value=(v) selected[values.get(field) == v] { (l) } }
                        }
                    }
                }
                @if let Some(e) = err { p.err { (e) } }
            }
            button type="submit" id=(format!("do-{}", a.key)) { (a.label) }
        }
    }
}

fn audit_timeline(st: &AppState, t: &GetTimelineResponse) -> Markup {
    html! {
        @if let Some(c) = &t.case {
            @if c.overdue { div.banner.error { "该案件有法定期限已超期。" } }
        }
        h2 { "全程记录（审计存证）" }
        p.muted { "每一次移交都记入不可篡改的审计链：发送、送达回证与期限状态。" }
        table #timeline {
            thead { tr { th { "#" } th { "时间" } th { "事项" } th { "发送方" } th { "接收方" } th { "办理后状态" } th { "摘要" } th { "送达" } th { "存证哈希" } } }
            tbody {
                @for r in &t.records {
                    tr data-kind=(r.kind().as_str_name()) {
                        td { (r.case_seq) }
                        td { (china_time(r.occurred_at.as_ref())) }
                        td { (labels::message_kind(r.kind())) }
                        td { (agency_name(st, r.sender.as_ref())) }
                        td { (agency_name(st, r.recipient.as_ref())) }
                        td { @if r.state_after.is_empty() { "—" } @else { (labels::state(&r.state_after)) } }
                        td { (entry_summary(st, r.message.as_ref(), &r.summary)) }
                        td {
                            @if matches!(r.kind(), MessageKind::DeliveryEvidence) { "—" }
                            @else if let Some(d) = &r.delivered_at { "已送达 " (china_time(Some(d))) }
                            @else { span.soon-text { "待送达" } }
                        }
                        td { code title=(r.hash_hex) { (r.hash_hex.get(..12).unwrap_or(&r.hash_hex)) } }
                    }
                }
            }
        }
        @if let Some(c) = &t.case {
            @if !c.deadlines.is_empty() {
                h2 { "期限状态（审计视角）" }
                table {
                    thead { tr { th { "期限" } th { "届满" } th { "状态" } } }
                    tbody { @for d in &c.deadlines {
                        @let (left, class) = countdown(d.due_at.as_ref(), d.overdue);
                        tr { td { (labels::time_limit(d.limit())) } td { (china_time(d.due_at.as_ref())) }
                             td { @if d.met_at.is_some() { "已完成" } @else { span class=(format!("{class}-text")) { (left) } } } }
                    } }
                }
            }
        }
    }
}

fn own_timeline(st: &AppState, v: &CaseView) -> Markup {
    html! {
        table #own-timeline {
            thead { tr { th { "时间" } th { "事项" } th { "发送方" } th { "接收方" } th { "办理后状态" } th { "摘要" } } }
            tbody { @for e in &v.timeline {
                tr { td { (china_time(e.occurred_at.as_ref())) } td { (labels::message_kind(e.kind())) } td { (agency_name(st, e.sender.as_ref())) }
                     td { (agency_name(st, e.recipient.as_ref())) } td { (labels::state(&e.state_after)) } td { (entry_summary(st, e.message.as_ref(), &e.summary)) } }
            } }
        }
    }
}

pub async fn act(State(st): State<AppState>, Me(me): Me, Path(id): Path<String>, Form(pairs): Form<Vec<(String, String)>>) -> Response {
    let Some(id) = case_path(&id) else { return not_a_case(&st, &me) };
    let f = Fields(pairs);
    let key = f.get("action").to_owned();
    let result = async {
        let ch = st.backend.own(&me)?;
        let view = forms::read_case(ch.clone(), &id).await?;
        // Found whatever the state now: a resubmitted form (same idempotency key) is answered
        // by the service with the case as it is, and a step the state no longer allows is
        // refused by the service with the reason.
        let action = forms::action_by_key(&me, &view, &key)
            .ok_or_else(|| UiError::Forbidden(format!("本机构不能对该案件办理“{}”。", action_title(&key))))?;
        forms::perform(ch, &view, action, &f).await
    }
    .await;
    match result {
        Ok(_) => Redirect::to(&format!("/cases/{id}?ok={key}")).into_response(),
        Err(error) => {
            log_error(&error);
            render_case(&st, &me, &id, None, Some(Failed { key, fields: f, error })).await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Search
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct SearchQuery {
    #[serde(default)]
    code: String,
}

pub async fn search(State(st): State<AppState>, Me(me): Me, Query(q): Query<SearchQuery>) -> Response {
    let code = q.code.trim().to_owned();
    if code.is_empty() {
        return Redirect::to("/").into_response();
    }
    let found = async {
        let ch = st.backend.audit(&me)?;
        Ok::<_, UiError>(AuditServiceClient::new(ch).get_timeline(GetTimelineRequest { case_id: String::new(), case_code: code.clone() }).await?.into_inner())
    }
    .await;
    match found {
        Ok(t) => match t.case.and_then(|c| case_path(&c.case_id)) {
            Some(id) => Redirect::to(&format!("/cases/{id}")).into_response(),
            None => error_page(Some((&st, &me)), StatusCode::NOT_FOUND, &format!("未找到解纷码为 {code} 的案件，或本机构无权查看。")).into_response(),
        },
        // Not found and not permitted read the same: a code's existence is not disclosed.
        Err(UiError::Service(s)) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::PermissionDenied) => {
            error_page(Some((&st, &me)), StatusCode::NOT_FOUND, &format!("未找到解纷码为 {code} 的案件，或本机构无权查看。")).into_response()
        }
        Err(e) => fail(&st, &me, &e),
    }
}

// ---------------------------------------------------------------------------------------------
// Supervisor dashboard
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub struct DashQuery {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    channel: String,
}

fn china_midnight(d: NaiveDate) -> Option<DateTime<Utc>> {
    let tz = chrono::FixedOffset::east_opt(8 * 3600)?;
    tz.from_local_datetime(&d.and_hms_opt(0, 0, 0)?).single().map(|t| t.with_timezone(&Utc))
}

fn first_of_next_month(d: NaiveDate) -> Option<NaiveDate> {
    let (y, m) = if d.month() == 12 { (d.year() + 1, 1) } else { (d.year(), d.month() + 1) };
    NaiveDate::from_ymd_opt(y, m, 1)
}

pub async fn dashboard(State(st): State<AppState>, Me(me): Me, Query(q): Query<DashQuery>) -> Response {
    // Dates are China time, as the agencies count them.
    let today = (Utc::now() + chrono::Duration::hours(8)).date_naive();
    let mut errors = Vec::new();
    let from = match q.from.as_str() {
        "" => NaiveDate::from_ymd_opt(today.year(), 1, 1),
        s => NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().or_else(|| {
            errors.push(("from".to_owned(), "起始日期格式应为 2026-01-01".to_owned()));
            None
        }),
    };
    let to = match q.to.as_str() {
        "" => today.succ_opt(),
        s => NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().or_else(|| {
            errors.push(("to".to_owned(), "截止日期格式应为 2026-12-31".to_owned()));
            None
        }),
    };
    let (Some(from), Some(to)) = (from, to) else {
        return fail(&st, &me, &UiError::Form(errors));
    };
    if from >= to {
        return fail(&st, &me, &UiError::Form(vec![("to".into(), "截止日期应晚于起始日期".into())]));
    }
    let channel = q.channel.parse::<i32>().ok().filter(|c| Channel::try_from(*c).is_ok()).unwrap_or(0);
    let supervisor = me.kind() == AgencyKind::Supervisor;
    let region = if supervisor { if q.region.trim().is_empty() { me.code().to_owned() } else { q.region.trim().to_owned() } } else { String::new() };
    let agency = (!supervisor).then(|| AgencyRef::from(&me));
    let request = |from: NaiveDate, to: NaiveDate, channel: i32| GetStatisticsRequest {
        from: china_midnight(from).map(duijie_common::envelope::timestamp),
        to: china_midnight(to).map(duijie_common::envelope::timestamp),
        region: region.clone(),
        channel,
        agency: agency.clone(),
    };
    let ch = match st.backend.audit(&me) {
        Ok(ch) => ch,
        Err(e) => return fail(&st, &me, &e),
    };
    let client = AuditServiceClient::new(ch);
    // The months of the period (at most the last twelve) for the trend.
    let mut months = Vec::new();
    let mut m = NaiveDate::from_ymd_opt(from.year(), from.month(), 1).unwrap_or(from);
    while m < to {
        let next = first_of_next_month(m).unwrap_or(to);
        months.push((m.max(from), next.min(to)));
        m = next;
    }
    let months: Vec<_> = months.into_iter().rev().take(12).rev().collect();
    let stats = |req: GetStatisticsRequest| {
        let mut c = client.clone();
        async move { c.get_statistics(req).await.map(tonic::Response::into_inner) }
    };
    let total = stats(request(from, to, channel));
    let per_channel = futures::future::join_all(labels::CHANNELS.iter().map(|c| stats(request(from, to, *c as i32))));
    let trend = futures::future::join_all(months.iter().map(|(a, b)| stats(request(*a, *b, channel))));
    const OVERDUE_LIMIT: u32 = 500;
    let overdue = {
        let mut c = client.clone();
        async move { c.list_overdue(ListOverdueRequest { limit: OVERDUE_LIMIT }).await.map(tonic::Response::into_inner) }
    };
    let (total, per_channel, trend, overdue) = tokio::join!(total, per_channel, trend, overdue);
    let total = match total {
        Ok(t) => t,
        Err(s) if s.code() == tonic::Code::PermissionDenied => {
            return fail(&st, &me, &UiError::Forbidden(format!("无权查看区域 {region} 的统计：综治中心只能查看本辖区。")));
        }
        Err(s) => return fail(&st, &me, &UiError::Service(s)),
    };
    let per_channel: Vec<GetStatisticsResponse> = per_channel.into_iter().map(Result::unwrap_or_default).collect();
    let trend: Vec<(String, f64, f64)> = months
        .iter()
        .zip(trend)
        .map(|((a, _), s)| {
            let s = s.unwrap_or_default();
            (format!("{}月", a.month()), s.received as f64, s.closed as f64)
        })
        .collect();
    // The overdue list answers for everything the caller may read; the page shows the region
    // and channel chosen above.
    let (overdue, overdue_error) = match overdue {
        Ok(o) => (o.cases, None),
        Err(s) => (Vec::new(), Some(UiError::Service(s).message())),
    };
    let truncated = overdue.len() >= OVERDUE_LIMIT as usize;
    let in_region = |r: Option<&AgencyRef>| r.is_some_and(|r| r.code.starts_with(&region));
    let overdue: Vec<AuditCase> = overdue
        .into_iter()
        .filter(|c| channel == 0 || c.channel == channel)
        .filter(|c| region.is_empty() || in_region(c.referrer.as_ref()) || in_region(c.holder.as_ref()))
        .collect();
    let pct = |v: f64| format!("{:.1}%", v * 100.0);
    let by_channel = vec![
        ("诉调".to_owned(), total.received_court as f64),
        ("警调".to_owned(), total.received_police as f64),
        ("访调".to_owned(), total.received_petition as f64),
        ("检调".to_owned(), total.received_procuratorate as f64),
        ("自行受理".to_owned(), total.received_self_accepted as f64),
    ];
    // 自行受理 by how the disputes came in (来访, 148, 12345, 网上, 网格排查, 部门移交).
    let by_source: Vec<(String, f64)> = total
        .received_by_intake_source
        .iter()
        .map(|s| (labels::intake_source(s.source()).to_owned(), s.count as f64))
        .collect();
    let success: Vec<(String, f64)> = labels::CHANNELS.iter().zip(&per_channel).map(|(c, s)| (labels::channel(*c).to_owned(), s.success_rate)).collect();
    let title = if supervisor { "统计分析" } else { "本机构统计" };
    let body = html! {
        h1 { (title) }
        form.filters.card method="get" action="/dashboard" {
            div { label for="from" { "起始日期" } input #from type="date" name="from" value=(from.to_string()); }
            div { label for="to" { "截止日期（不含）" } input #to type="date" name="to" value=(to.to_string()); }
            @if supervisor { div { label for="region" { "区域代码" } input #region type="text" name="region" value=(region); } }
            div { label for="channel" { "渠道" } select #channel name="channel" { option value="0" { "全部" } @for c in labels::CHANNELS { option value=(c as i32) selected[channel == c as i32] { (labels::channel(c)) } } } }
            button type="submit" { "查询" }
        }
        div.stats #stats {
            (stat("收案", total.received.to_string(), "received"))
            (stat("自行受理", total.received_self_accepted.to_string(), "received_self_accepted"))
            (stat("签收", total.signed_for.to_string(), "signed_for"))
            (stat("受理", total.accepted.to_string(), "accepted"))
            (stat("不予受理", total.rejected.to_string(), "rejected"))
            (stat("调解", total.mediated.to_string(), "mediated"))
            (stat("调解成功", total.settled.to_string(), "settled"))
            (stat("调解不成", total.failed.to_string(), "failed"))
            (stat("调解率", pct(total.mediation_rate), "mediation_rate"))
            (stat("调解成功率", pct(total.success_rate), "success_rate"))
            (stat("申请司法确认", total.confirmations_requested.to_string(), "confirmations_requested"))
            (stat("司法确认", total.confirmations_granted.to_string(), "confirmations_granted"))
            (stat("超期案件", total.overdue.to_string(), "overdue"))
            (stat("结案", total.closed.to_string(), "closed"))
            (stat("结案用时中位数", format!("{:.1} 天", total.median_days_to_closure), "median_days"))
            (stat("结案用时 P90", format!("{:.1} 天", total.p90_days_to_closure), "p90_days"))
        }
        h2 { "图表" }
        div.charts #charts {
            (charts::bars("各渠道收案数", &by_channel, |v| format!("{v:.0}")))
            (charts::bars("自行受理来源", &by_source, |v| format!("{v:.0}")))
            (charts::bars("各渠道调解成功率", &success, pct))
            (charts::trend("逐月收案与结案", &trend, ("收案", "结案")))
        }
        h2 { @if supervisor { "超期案件" } @else { "本机构参与的超期案件" } @if channel > 0 { "（" (labels::channel(Channel::try_from(channel).unwrap_or_default())) "）" } }
        @if let Some(e) = &overdue_error { div.banner.error { "暂时无法读取超期案件：" (e) } }
        @if truncated { p.muted { "超期案件较多，仅显示最早的 " (OVERDUE_LIMIT) " 件中符合条件的部分。" } }
        @if overdue.is_empty() { p.card.muted #no-overdue { "没有超期案件。" } } @else {
            table #overdue {
                thead { tr { th { "解纷码" } th { "渠道" } th { "移送机构" } th { "当前承办" } th { "状态" } th { "超期期限" } } }
                tbody { @for c in &overdue {
                    tr.overdue {
                        td { a href=(format!("/cases/{}", c.case_id)) { (c.case_code) } }
                        td { (labels::channel(c.channel())) }
                        td { (agency_name(&st, c.referrer.as_ref())) }
                        td { (agency_name(&st, c.holder.as_ref())) }
                        td { (labels::state(&c.state)) }
                        td { @for d in c.deadlines.iter().filter(|d| d.overdue) { div { (labels::time_limit(d.limit())) "：" (countdown(d.due_at.as_ref(), true).0) } } }
                    }
                } }
            }
        }
    };
    Html(page(Some((&st, &me)), title, body).into_string()).into_response()
}

fn stat(label: &str, value: String, id: &str) -> Markup {
    html! { div.stat id=(format!("stat-{id}")) { span.muted { (label) } b { (value) } } }
}
