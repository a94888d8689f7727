//! chd-torture: load, faults and a linearizability checker for chd.
//!
//! The history format ([`history`]) is shared with other tools: one JSON object per line.

pub mod check;
pub mod history;
