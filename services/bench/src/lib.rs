//! The benchmarks: the bus against the raw broker (`duijie-bench`), the broker's topology against
//! the size of the agency directory (`duijie-bench --topology`), the audit store at scale
//! (`duijie-audit-bench`) and the whole stack under load (`duijie-system-bench`), run by
//! `scripts/bench.sh [--topology | --audit | --system]`. The measurements live here so that the system
//! benchmark can take the others' figures in the same run.

pub mod append;
pub mod bus;
pub mod cpu;
pub mod stack;
pub mod system;
pub mod topology;
