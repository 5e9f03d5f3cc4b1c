//! The case desk and the domain rules every part of duijie shares, kept free of I/O so they are
//! tested on their own: one [`AgencyNode`]; the [`Case`] aggregate that decides what every
//! message does on the way out, on the way in and in the audit store ([`case`], [`lifecycle`]);
//! the table of case actions ([`actions`]); timeline summaries ([`summary`]); identity numbers
//! of parties (validation and masking); legal time limits (calendar and working days).

pub mod actions;
pub mod agency;
pub mod calendar;
pub mod case;
pub mod deadlines;
pub mod identity;
pub mod lifecycle;
pub mod money;
pub mod referrers;
pub mod summary;
pub mod time;

pub use agency::AgencyNode;
pub use case::{Case, Effects, Message, Role};
pub use lifecycle::{CaseState, Lifecycle, Refusal};
