//! The handle every front end serves requests through: the cluster's live state, the
//! coordinator of reads and writes, and the spawner of worker processes.

use std::sync::Arc;

use crate::cluster::Cluster;
use crate::coordinator::Coordinator;
use crate::supervisor::spawn::Spawner;

pub struct Server {
    pub cluster: Arc<Cluster>,
    pub coordinator: Coordinator,
    pub spawner: Spawner,
}
