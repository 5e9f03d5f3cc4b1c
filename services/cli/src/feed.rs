//! `duijie watch` without a case: the calling agency's case changes as they happen, from its
//! own service's live feed (`CasesService.Watch`), reconnecting from the last cursor whenever
//! the stream breaks, so nothing is missed.

use std::time::Duration;

use duijie_proto::v1::cases_service_client::CasesServiceClient;
use duijie_proto::v1::{WatchRequest, WatchResponse};
use serde_json::json;

use crate::error::{CliError, CliResult};
use crate::{Ctx, output};

/// How `duijie watch` follows an agency's feed.
#[derive(Debug, Clone, Default)]
pub struct FeedArgs {
    /// Resume after this cursor (`0`: from the agency's first message; none: from now).
    pub cursor: Option<String>,
    /// Stop (exit 0) after this many changes.
    pub count: Option<u64>,
    /// Stop (exit 4) after this many seconds.
    pub timeout_secs: Option<u64>,
}

/// Prints `--as`'s case changes, one line each (or one JSON object each, with the cursor to
/// resume from), until `count` changes, the timeout, or an interrupt.
pub async fn follow(ctx: &Ctx, args: FeedArgs) -> CliResult<()> {
    let who = ctx.as_agency.clone().ok_or_else(|| CliError::Usage("watch without a case follows an agency's case changes: say which with --as <kind>:<code>".into()))?;
    let mut client = CasesServiceClient::new(ctx.agency_channel(&who)?);
    let mut cursor = args.cursor.clone().unwrap_or_default();
    let deadline = args.timeout_secs.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut seen = 0u64;
    let mut retry = Duration::from_millis(200);
    if !ctx.json {
        println!("{:<36}  {:<24}  {:<22}  {:<5}  {:<24}  at", "case", "case code", "message", "dir", "state after");
    }
    loop {
        let attempt = async {
            let mut stream = client.watch(WatchRequest { cursor: cursor.clone() }).await?.into_inner();
            while let Some(change) = stream.message().await? {
                cursor.clone_from(&change.cursor);
                if change.case_id.is_empty() {
                    continue; // where the stream starts
                }
                print_change(ctx, &change);
                seen += 1;
                if args.count.is_some_and(|n| seen >= n) {
                    return Ok(true);
                }
            }
            Ok::<bool, tonic::Status>(false)
        };
        let outcome = match deadline {
            Some(d) => match tokio::time::timeout_at(d, attempt).await {
                Ok(o) => o,
                Err(_) => return Err(CliError::Unavailable(format!("no more changes within the timeout; resume with --cursor {cursor}"))),
            },
            None => attempt.await,
        };
        match outcome {
            Ok(true) => return Ok(()),
            // The service ended the stream, or it broke: resume from the cursor.
            Ok(false) => {}
            Err(s) if matches!(CliError::from_status("watching", &s), CliError::Unavailable(_)) => {
                eprintln!("duijie: the feed broke ({}); resuming after {cursor}", s.message());
            }
            Err(s) => return Err(CliError::from_status("watching the agency's cases", &s)),
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(Duration::from_secs(5));
    }
}

fn print_change(ctx: &Ctx, c: &WatchResponse) {
    if ctx.json {
        println!(
            "{}",
            json!({
                "cursor": c.cursor, "case_id": c.case_id, "case_code": c.case_code, "kind": output::kind(c.kind),
                "direction": c.direction, "message_id": c.message_id, "state_after": c.state_after,
                "occurred_at": output::time_json(c.occurred_at.as_ref()),
            })
        );
    } else {
        println!(
            "{:<36}  {:<24}  {:<22}  {:<5}  {:<24}  {}",
            c.case_id,
            c.case_code,
            output::kind(c.kind),
            c.direction,
            c.state_after,
            output::time(c.occurred_at.as_ref())
        );
    }
}

/// What each demo agency has received, as its live feed tells it (`CasesService.Watch`): a
/// driver waits on this instead of polling `GetCase` until a handoff arrived.
#[derive(Debug)]
pub struct Arrivals {
    /// (agency, message id) and (agency, case id) of every change seen.
    seen: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    /// Bumped after every change seen.
    version: tokio::sync::watch::Sender<u64>,
    stop: duijie_common::CancellationToken,
}

impl Arrivals {
    /// Follows the feeds of `agents` (agency, channel to its service) from now on; returns once
    /// every stream has started, so nothing sent afterwards is missed. Each stream resumes from
    /// its cursor when it breaks, until the returned value is dropped.
    pub async fn follow(agents: &[(duijie_domain::AgencyNode, tonic::transport::Channel)]) -> anyhow::Result<std::sync::Arc<Self>> {
        let arrivals = std::sync::Arc::new(Self {
            seen: std::sync::Mutex::default(),
            version: tokio::sync::watch::Sender::new(0),
            stop: duijie_common::CancellationToken::new(),
        });
        for (who, ch) in agents {
            let mut client = CasesServiceClient::new(ch.clone());
            let mut stream = client.watch(WatchRequest::default()).await?.into_inner();
            let start = stream.message().await?.ok_or_else(|| anyhow::anyhow!("{who}: the feed ended at once"))?;
            let (this, who) = (std::sync::Arc::downgrade(&arrivals), who.to_string());
            let stop = arrivals.stop.clone();
            tokio::spawn(async move {
                let mut cursor = start.cursor;
                loop {
                    loop {
                        let next = tokio::select! {
                            () = stop.cancelled() => return,
                            n = stream.message() => n,
                        };
                        let Ok(Some(change)) = next else { break };
                        cursor.clone_from(&change.cursor);
                        let Some(this) = this.upgrade() else { return };
                        this.saw(&who, change);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    match client.watch(WatchRequest { cursor: cursor.clone() }).await {
                        Ok(s) => stream = s.into_inner(),
                        Err(_) => continue,
                    }
                }
            });
        }
        Ok(arrivals)
    }

    fn saw(&self, who: &str, change: WatchResponse) {
        if change.case_id.is_empty() {
            return;
        }
        {
            let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            seen.insert((who.to_owned(), change.message_id));
            seen.insert((who.to_owned(), change.case_id));
        }
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn has_all(&self, who: &str, ids: &[&str]) -> bool {
        let seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        ids.iter().all(|id| seen.contains(&(who.to_owned(), (*id).to_owned())))
    }

    /// Waits until `who`'s feed has shown every one of `ids` (message or case ids), or until
    /// `deadline`; whether it did.
    pub async fn wait(&self, who: &str, ids: &[&str], deadline: std::time::Instant) -> bool {
        let mut changed = self.version.subscribe();
        loop {
            changed.borrow_and_update();
            if self.has_all(who, ids) {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || tokio::time::timeout(left, changed.changed()).await.is_err() {
                return self.has_all(who, ids);
            }
        }
    }
}

impl Drop for Arrivals {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
