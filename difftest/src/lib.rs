//! Differential testing of chd's Redis-protocol endpoint against Debian's redis-server.
//!
//! Random command sequences over the commands of chd's table ([`gen`]) are sent to both servers
//! over raw RESP, pipelined; every reply of chd must equal Redis's byte for byte, except where
//! [`compare`] normalises a server-specific reply or names a difference chd's README documents.
//! A divergence prints the seed and a minimal sequence found by delta debugging ([`run`]).

pub mod compare;
pub mod gen;
pub mod resp;
pub mod rng;
pub mod run;
pub mod servers;

pub use run::{random_seed, run, Config, Summary};
pub use servers::Servers;
