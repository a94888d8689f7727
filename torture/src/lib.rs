//! chd-torture: load, faults and a linearizability checker for chd.
//!
//! The history format ([`history`]) is shared with other tools: one JSON object per line.
//! [`check`] decides per-key linearizability; [`synth`] simulates linearizable histories for
//! its tests and benchmark.

pub mod check;
pub mod history;
pub mod synth;
