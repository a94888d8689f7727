//! chd's daemon as a library: the binary in `main.rs` is a thin entry point over it, and the
//! fuzz targets (`fuzz/`) reach the parsers through it.

pub mod cache;
pub mod cluster;
pub mod config;
pub mod coordinator;
pub mod datadir;
pub mod frame;
pub mod hooks;
pub mod layout;
pub mod lifecycle;
pub mod logging;
pub mod membership;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod quarantine;
pub mod repair;
pub mod resp;
pub mod scan;
pub mod server;
pub mod service;
pub mod storage;
pub mod supervisor;
pub mod tombstones;
pub mod versions;
pub mod worker;
