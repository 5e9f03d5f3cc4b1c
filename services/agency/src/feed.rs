//! The live feed of an agency's case changes (`CasesService.Watch`): its timeline rows in the
//! order they became visible, from a cursor, pushed as they commit instead of polled.
//!
//! Order and completeness come from the database (migration `0104_feed.sql`): a row is handed
//! out only once every transaction older than its own has ended, in (transaction id, seq)
//! order, so a row not yet handed out can only come after the cursor. A reconnect from the
//! last cursor therefore misses nothing and repeats nothing, across restarts of the service.
//! Waking is in-process: every commit of this service that changes a case bumps
//! [`Agency::changed`](crate::Agency); a row held back by another transaction still running is
//! looked for again shortly after, and a slow poll covers writers elsewhere.

use std::time::Duration;

use chrono::{DateTime, Utc};
use duijie_common::server::ApiError;
use duijie_domain::{AgencyNode, CaseState};
use duijie_proto::v1::MessageKind;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::Agency;
use crate::store;

/// Rows read per look.
const PAGE: i64 = 200;
/// How soon to look again when a row is held back by a transaction still running.
const HELD_BACK_RETRY: Duration = Duration::from_millis(50);
/// How often to look without being woken (rows written by another process).
const IDLE_POLL: Duration = Duration::from_secs(2);

/// A position in an agency's feed: after the row `seq` written by transaction `tx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    tx: String,
    seq: i64,
}

impl Cursor {
    /// Before the agency's first row.
    pub fn start() -> Self {
        Self { tx: "0".into(), seq: 0 }
    }

    /// A cursor this feed handed out (`<tx>-<seq>`, or `0` for the start).
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::invalid("cursor", "is not a cursor this feed handed out (or empty, or 0)");
        if s == "0" {
            return Ok(Self::start());
        }
        let (tx, seq) = s.split_once('-').ok_or_else(bad)?;
        let tx_ok = !tx.is_empty() && tx.len() <= 20 && tx.bytes().all(|b| b.is_ascii_digit()) && tx.parse::<u64>().is_ok();
        let seq = seq.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(bad)?;
        if !tx_ok {
            return Err(bad());
        }
        Ok(Self { tx: tx.to_owned(), seq })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.tx, self.seq)
    }
}

/// One change of a case, or (with `case` empty) where the stream starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub cursor: Cursor,
    pub case: Option<ChangedCase>,
}

/// What changed: a message of the case, and the state it led to.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangedCase {
    pub case_id: Uuid,
    pub case_code: String,
    pub kind: MessageKind,
    pub direction: String,
    pub message_id: Uuid,
    pub state_after: CaseState,
    pub occurred_at: DateTime<Utc>,
}

impl Agency {
    /// `caller`'s case changes after `from` (`None`: from now), sent on the returned channel until
    /// the receiver is dropped or the service stops. The first item is where it starts. A
    /// database error or a busy pool ends it with that error: the client resumes from its last
    /// cursor.
    pub async fn watch(&self, caller: &AgencyNode, from: Option<Cursor>) -> Result<mpsc::Receiver<Result<Change, ApiError>>, ApiError> {
        self.check_serves(caller)?;
        let mut cursor = match from {
            Some(c) => c,
            None => {
                let mut conn = self.db.acquire().await?;
                let (tx, seq) = store::feed_end(&mut conn, caller).await?;
                Cursor { tx, seq }
            }
        };
        let (out, rx) = mpsc::channel(PAGE as usize);
        let (agency, caller) = (self.clone(), caller.clone());
        tokio::spawn(async move {
            if out.send(Ok(Change { cursor: cursor.clone(), case: None })).await.is_err() {
                return;
            }
            let mut changed = agency.changes.subscribe();
            loop {
                changed.borrow_and_update();
                let rows = match agency.feed_page(&caller, &cursor).await {
                    Ok(rows) => rows,
                    Err(e) => {
                        let _ = out.send(Err(e)).await;
                        return;
                    }
                };
                let read = rows.len();
                let mut held_back = false;
                for row in rows {
                    if !row.ready {
                        held_back = true;
                        break;
                    }
                    let change = match change_of(row) {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = out.send(Err(e)).await;
                            return;
                        }
                    };
                    cursor = change.cursor.clone();
                    if out.send(Ok(change)).await.is_err() {
                        return;
                    }
                }
                if read as i64 == PAGE && !held_back {
                    continue;
                }
                let wait = if held_back { HELD_BACK_RETRY } else { IDLE_POLL };
                tokio::select! {
                    () = agency.stopping.cancelled() => {
                        let _ = out.send(Err(ApiError::Unavailable("the service is stopping: resume from the last cursor".into()))).await;
                        return;
                    }
                    () = out.closed() => return,
                    r = changed.changed() => if r.is_err() { return },
                    () = tokio::time::sleep(wait) => {}
                }
            }
        });
        Ok(rx)
    }

    async fn feed_page(&self, caller: &AgencyNode, cursor: &Cursor) -> Result<Vec<store::FeedRow>, ApiError> {
        let mut conn = self.db.acquire().await?;
        Ok(store::feed_after(&mut conn, caller, &cursor.tx, cursor.seq, PAGE).await?)
    }
}

fn change_of(row: store::FeedRow) -> Result<Change, ApiError> {
    let state_after = CaseState::parse(&row.state_after).ok_or_else(|| anyhow::anyhow!("unknown state {:?} in the timeline", row.state_after))?;
    Ok(Change {
        cursor: Cursor { tx: row.tx, seq: row.seq },
        case: Some(ChangedCase {
            case_id: row.case_id,
            case_code: row.case_code,
            kind: MessageKind::from_routing_segment(&row.kind).unwrap_or_default(),
            direction: row.direction,
            message_id: row.message_id,
            state_after,
            occurred_at: row.occurred_at,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor::parse("123456-42").unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(c.to_string(), "123456-42");
        assert_eq!(Cursor::parse("0").ok(), Some(Cursor::start()));
        for bad in ["", "-", "1-", "-1", "a-1", "1-a", "1--1", "1-2-3", "99999999999999999999999-1", "+1-1", " 1-1"] {
            assert!(Cursor::parse(bad).is_err(), "{bad:?} was taken");
        }
    }
}
