//! The duijie (对接) wire contract.
//!
//! Every message on the bus is a [`v1::Envelope`] carrying one typed payload
//! ([`v1::envelope::Payload`]). The Rust types are generated at build time from
//! `proto/duijie/v1/*.proto` (package `duijie.v1`) by `build.rs`; this crate adds
//! the small amount of hand-written contract logic every service needs:
//!
//! * [`v1::envelope::Payload::kind`] and [`v1::MessageKind::routing_segment`]:
//!   the kind of a payload and its snake_case name;
//! * [`v1::AgencyKind::as_str`] / [`v1::AgencyKind::parse`];
//! * [`v1::Envelope::check`]: validation of the envelope header;
//! * [`v1::Envelope::routing_key`]: the AMQP routing key
//!   `<recipient kind>.<recipient code>.<message kind>`;
//! * [`v1::Envelope::decode_checked`]: decode and check in one step;
//! * [`limits`]: the bounds every message keeps (lengths, list sizes, enum values, times,
//!   currencies, text without control characters), applied by `check()` and by the services'
//!   gRPC edge;
//! * [`CaseAnswer`] / [`answered_case`]: the `<Method>Response` of every RPC that
//!   answers with one case, built from and unwrapped to a [`v1::CaseView`].
//!
//! Identity document numbers are protected personal data: the `Debug` output
//! of [`v1::IdentityDocument`] masks them (see
//! [`v1::IdentityDocument::masked_number`]).

mod answers;
mod contract;
pub mod limits;

pub use answers::{CaseAnswer, answered_case};
pub use contract::{ContractError, RECORD_PREFIX, RoutingKey, is_valid_agency_code};
pub use prost;
pub use prost_types;

/// Generated code of protobuf package `duijie.v1` (messages, enums and any
/// gRPC clients/servers declared under `proto/duijie/v1`), plus the helper
/// methods implemented in this crate.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/duijie.v1.rs"));
}

/// Content type of an encoded [`v1::Envelope`] (AMQP `content_type` property).
pub const ENVELOPE_CONTENT_TYPE: &str = "application/x-protobuf; proto=duijie.v1.Envelope";

/// The `schema_version` this crate writes into envelopes it builds.
pub const SCHEMA_VERSION: u32 = 1;

/// Encoded `google.protobuf.FileDescriptorSet` of every compiled `.proto`
/// file, e.g. for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/duijie_descriptor.bin"));
