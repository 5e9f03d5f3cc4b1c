//! Formatting shared by the commands: agencies, times (China time), enum names.

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone as _, Utc};
use duijie_proto::v1::{AgencyKind, AgencyRef, Channel, MessageKind};

/// China Standard Time (UTC+8, no daylight saving): how operators read times.
pub fn china() -> FixedOffset {
    const CST: FixedOffset = match FixedOffset::east_opt(8 * 3600) {
        Some(o) => o,
        None => panic!("UTC+8 is a valid offset"), // evaluated at compile time
    };
    CST
}

/// `kind:code` of an agency, empty when absent.
pub fn agency(a: Option<&AgencyRef>) -> String {
    a.map(|a| format!("{}:{}", AgencyKind::try_from(a.kind).map(|k| k.as_str()).unwrap_or("?"), a.code)).unwrap_or_default()
}

/// A timestamp in China time, `-` when absent.
pub fn time(t: Option<&prost_types::Timestamp>) -> String {
    to_utc(t).map(|t| t.with_timezone(&china()).format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_else(|| "-".into())
}

/// A timestamp as RFC 3339 (for JSON), `null` when absent.
pub fn time_json(t: Option<&prost_types::Timestamp>) -> serde_json::Value {
    to_utc(t).map(|t| serde_json::Value::String(t.with_timezone(&china()).to_rfc3339())).unwrap_or(serde_json::Value::Null)
}

fn to_utc(t: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
}

/// Midnight of `d` in China time, as a protobuf timestamp.
pub fn china_midnight(d: NaiveDate) -> anyhow::Result<prost_types::Timestamp> {
    use anyhow::Context as _;
    let t = china()
        .from_local_datetime(&d.and_hms_opt(0, 0, 0).context("midnight")?)
        .single()
        .context("an unambiguous local time")?
        .with_timezone(&Utc);
    Ok(prost_types::Timestamp { seconds: t.timestamp(), nanos: 0 })
}

/// Lowercase channel name (`court`, `police`, …).
pub fn channel(c: i32) -> &'static str {
    Channel::try_from(c).map(|c| c.as_str()).unwrap_or("?")
}

/// The channel's Chinese name (诉调, 警调, 访调, 检调, 自行受理).
pub fn channel_zh(c: i32) -> &'static str {
    match Channel::try_from(c) {
        Ok(Channel::Court) => "诉调",
        Ok(Channel::Police) => "警调",
        Ok(Channel::Petition) => "访调",
        Ok(Channel::Procuratorate) => "检调",
        Ok(Channel::SelfIntake) => "自行受理",
        _ => "?",
    }
}

/// snake_case name of a message kind (`referral`, `supervision_notice`, …).
pub fn kind(k: i32) -> &'static str {
    MessageKind::try_from(k).map(|k| k.routing_segment()).unwrap_or("?")
}

/// A case id (UUID) rather than a case code.
pub fn is_case_id(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

/// Prints `v` as pretty JSON on stdout.
pub fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}
