//! Domain rules the agency services share, kept free of I/O so they are tested on their own:
//! identity numbers of parties (validation and masking) and legal time limits (calendar and
//! working days).

pub mod calendar;
pub mod deadlines;
pub mod identity;
pub mod lifecycle;
pub mod money;
