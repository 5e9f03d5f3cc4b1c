//! Live updates: `/events` streams the signed-in agency's case changes (its service's
//! `CasesService.Watch`) to the browser as Server-Sent Events. The inbox and lists reload
//! themselves when something changed (at most every few seconds); a case page says that the
//! case changed and offers to reload (it never throws away what a clerk is typing). The
//! browser's `EventSource` reconnects by itself with the last event id, which is the feed's
//! cursor, so a reconnect misses nothing.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use duijie_proto::v1::cases_service_client::CasesServiceClient;
use duijie_proto::v1::{AgencyKind, WatchRequest};
use futures::StreamExt as _;

use crate::AppState;
use crate::pages::Me;

/// The script every agency page carries: listens to `/events` and refreshes what is shown.
pub const SCRIPT: &str = r#"(function(){
  if (!window.EventSource) return;
  var path = location.pathname, list = path === '/cases', last = 0, timer = null;
  var es = new EventSource('/events');
  es.addEventListener('change', function (e) {
    var c; try { c = JSON.parse(e.data); } catch (x) { return; }
    if (list) {
      if (timer) return;
      var wait = Math.max(300, 3000 - (Date.now() - last));
      timer = setTimeout(function () { last = Date.now(); location.reload(); }, wait);
    } else if (path === '/cases/' + c.case_id) {
      var n = document.getElementById('live-notice'), a = document.getElementById('live-reload');
      if (a) a.href = path;
      if (n) n.hidden = false;
    }
  });
  window.addEventListener('pagehide', function () { es.close(); });
})();"#;

/// `GET /events`: the signed-in agency's case changes as `change` events (`id` the cursor,
/// `data` `{"case_id","kind","state_after"}`), from the `Last-Event-ID` the browser sends when it
/// reconnects, else from now. A supervisor has no agency service: 204, and the browser stops.
pub async fn events(State(st): State<AppState>, Me(me): Me, headers: HeaderMap) -> Response {
    if me.kind() == AgencyKind::Supervisor {
        return StatusCode::NO_CONTENT.into_response();
    }
    let cursor = headers.get("last-event-id").and_then(|v| v.to_str().ok()).unwrap_or("").trim().to_owned();
    let channel = match st.backend.own(&me) {
        Ok(c) => c,
        Err(_) => return StatusCode::NO_CONTENT.into_response(),
    };
    let stream = match CasesServiceClient::new(channel).watch(WatchRequest { cursor }).await {
        Ok(r) => r.into_inner(),
        // A cursor the service does not take (an old one after a reset): from now on.
        Err(s) if s.code() == tonic::Code::InvalidArgument => return StatusCode::NO_CONTENT.into_response(),
        Err(s) => {
            tracing::warn!(agency = %me, error = %s.message(), "the live feed is unavailable");
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    };
    let stopping = st.stopping.clone();
    // The stream ends with the gRPC stream (the service stopped: the browser reconnects) or when
    // the console stops.
    let events = stream
        .take_while(|r| std::future::ready(r.is_ok()))
        .filter_map(|r| std::future::ready(r.ok()))
        .map(|c| {
            let event = Event::default().id(c.cursor.clone());
            let event = if c.case_id.is_empty() {
                event.event("start").data("{}")
            } else {
                let data = serde_json::json!({ "case_id": c.case_id, "kind": c.kind().routing_segment(), "state_after": c.state_after });
                event.event("change").data(data.to_string())
            };
            Ok::<_, Infallible>(event)
        })
        .take_until(async move { stopping.cancelled().await });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}
