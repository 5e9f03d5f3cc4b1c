//! Building envelopes: the header fields every message carries, filled in the same way by every
//! service (fresh time-ordered message id, kind taken from the payload, schema version, time).

use duijie_proto::v1::envelope::Payload;
use duijie_proto::v1::{Channel, Envelope};
use uuid::Uuid;

use duijie_domain::AgencyNode;

pub use duijie_proto::SCHEMA_VERSION;

/// Who, about which case, in reply to what.
#[derive(Debug, Clone)]
pub struct Header {
    pub case_id: Uuid,
    pub case_code: String,
    pub channel: Channel,
    pub sender: AgencyNode,
    pub recipient: AgencyNode,
    /// The message this one answers or was caused by; `None` for a first message.
    pub causation_id: Option<Uuid>,
}

pub use duijie_domain::time::{from_timestamp, timestamp};

/// A new envelope with a fresh message id (UUIDv7, so ids sort by creation), the payload's kind,
/// and `occurred_at` now. The trace context is filled in when the envelope is staged.
pub fn build(header: &Header, payload: Payload) -> Envelope {
    Envelope {
        message_id: Uuid::now_v7().to_string(),
        case_id: header.case_id.to_string(),
        case_code: header.case_code.clone(),
        channel: header.channel as i32,
        sender: Some((&header.sender).into()),
        recipient: Some((&header.recipient).into()),
        kind: payload.kind() as i32,
        occurred_at: Some(timestamp(chrono::Utc::now())),
        causation_id: header.causation_id.map(|u| u.to_string()).unwrap_or_default(),
        schema_version: SCHEMA_VERSION,
        trace: None,
        payload: Some(payload),
        passed_on: None,
    }
}
