//! What chd and chctl share: the placement ring, the wire protocol, the stored-record format,
//! and the errors that cross the socket.
//!
//! Nothing in this crate does I/O beyond reading and writing byte buffers handed to it, so all of
//! it is tested in microseconds.

pub mod duration;
pub mod error;
pub mod paths;
pub mod proto;
pub mod record;
pub mod ring;

pub use error::Error;
pub use record::Record;
pub use ring::{NodeId, Ring};
