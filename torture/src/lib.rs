//! chd-torture: load, faults and a linearizability checker for chd.
//!
//! The history format ([`history`]) is shared with other tools: one JSON object per line.
//! [`check`] decides per-key linearizability; [`synth`] simulates linearizable histories for
//! its tests and benchmark. [`run`] drives one run: [`cluster`] (the real chd), [`load`]
//! (clients recording the history), [`nemesis`] (seeded faults), then the verdict with
//! [`check`] and [`summary`].

pub mod check;
pub mod cluster;
pub mod history;
pub mod load;
pub mod nemesis;
pub mod rng;
pub mod run;
pub mod summary;
pub mod synth;
