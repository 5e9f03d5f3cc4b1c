//! The one pair of conversions between protobuf timestamps and times.

use chrono::{DateTime, Utc};
use duijie_proto::prost_types::Timestamp;

/// `t` as a protobuf timestamp (nanosecond precision).
pub fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: t.timestamp(), nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0) }
}

/// A protobuf timestamp as a time; `None` if absent or out of range.
pub fn from_timestamp(t: Option<&Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
}
