//! Reaching chd: the one place a failure to connect becomes chctl's "cannot reach chd" exit.

use std::path::Path;

use chd_client::{CallError, Client};

use crate::exit;

/// Connects; any failure short of chd's own answer means chd cannot be reached.
pub fn connect(socket: &Path) -> anyhow::Result<Client> {
    Client::connect(socket).map_err(|e| {
        if e.chain().any(|c| c.is::<CallError>()) {
            e
        } else {
            exit::fail(exit::UNREACHABLE, format!("{e:#}"))
        }
    })
}
