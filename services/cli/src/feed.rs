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
