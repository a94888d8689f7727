//! What every endpoint shares beneath its protocol: binding sockets safely ([`socket`]),
//! accepting with a bound on connections ([`accept`]), and deciding who may connect
//! ([`auth`]). chd's own socket ([`crate::server`]) and the Redis-protocol endpoint
//! ([`crate::resp`]) both build on it; neither imports the other.

pub mod accept;
pub mod auth;
pub mod socket;
