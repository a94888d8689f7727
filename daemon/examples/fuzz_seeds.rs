//! Writes seed inputs for the fuzz targets (`fuzz/`) that real clients cannot easily be made to
//! send: the worker link in both directions, and every client request and server response
//! type, each encoded by the crates' own encoders. `fuzz/seeds/capture.sh` runs it; the
//! argument is the corpus directory (`fuzz/corpus`).

use std::path::Path;

use chd_daemon::metrics::Snapshot;
use chd_daemon::worker::proto::{Frame, WorkerHello, WorkerRequest, WorkerResponse};
use chd_data::proto::*;
use chd_data::{Error, Record};
use serde::Serialize;

fn frames<T: Serialize>(msgs: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    msgs.iter().for_each(|m| encode_frame(m, &mut out));
    out
}

fn write(dir: &Path, target: &str, name: &str, prefix: &[u8], body: &[u8]) -> std::io::Result<()> {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), [prefix, body].concat())
}

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).expect("usage: fuzz_seeds CORPUS_DIR");
    let dir = Path::new(&dir);
    let rec = |v: u64, value: Option<&[u8]>| Record { version: v, value: value.map(<[u8]>::to_vec) };
    let requests = [
        WorkerRequest::Put { key: b"k".to_vec(), record: rec(7, Some(b"v")), spare: false },
        WorkerRequest::Put { key: b"gone".to_vec(), record: rec(8, None), spare: true },
        WorkerRequest::Get { key: b"k".to_vec() },
        WorkerRequest::Ping,
        WorkerRequest::Stats,
        WorkerRequest::Digests { partitions: vec![0, 1, 255] },
        WorkerRequest::Versions { partition: 3, after: Some(b"a".to_vec()), limit: 100 },
        WorkerRequest::GetMany { keys: vec![b"a".to_vec(), b"b".to_vec()] },
        WorkerRequest::PutMany { entries: vec![(b"a".to_vec(), rec(1, Some(b"1"))), (b"b".to_vec(), rec(2, None))] },
        WorkerRequest::DropPartition { partition: 9 },
        WorkerRequest::SetIdentity { node: 2, rebuild_pending: true },
        WorkerRequest::PartitionStats { partitions: vec![1, 2] },
        WorkerRequest::NonEmptyPartitions,
        WorkerRequest::Keys { partition: 4, after: None, limit: 10 },
        WorkerRequest::PurgeTombstones { partitions: vec![5], below: 1 << 40 },
        WorkerRequest::Shutdown,
    ];
    let histogram = Snapshot { buckets: (0..28).collect(), sum: 1000, count: 378 };
    let responses = [
        WorkerResponse::Hello(WorkerHello {
            pid: 4242,
            identity: Some(1),
            rebuild_pending: false,
            max_version: 99,
            live_keys: 3,
            engine: chd_data::proto::EngineKind::Sled,
        }),
        WorkerResponse::Stored(true),
        WorkerResponse::Record(Some(rec(7, Some(b"v")))),
        WorkerResponse::Pong { batches: 12, busy_ms: 0 },
        WorkerResponse::Stats { live_keys: 3, bytes: 30, batch_size: histogram.clone(), sync_us: Snapshot::default() },
        WorkerResponse::Digests(vec![[7; 32]]),
        WorkerResponse::Versions(vec![(b"a".to_vec(), 1)]),
        WorkerResponse::Records(vec![(b"a".to_vec(), Some(rec(1, None)))]),
        WorkerResponse::Count(5),
        WorkerResponse::PartitionStats(vec![(1, 10)]),
        WorkerResponse::Partitions(vec![0, 7]),
        WorkerResponse::Done,
        WorkerResponse::Failed("cannot open".into()),
        WorkerResponse::DiskFull { free: 10, needed: 20 },
        WorkerResponse::Keys(vec![(b"k".to_vec(), 3, false)]),
    ];
    for (i, r) in requests.iter().enumerate() {
        write(
            dir,
            "worker_frame",
            &format!("request-{i}"),
            &[0],
            &frames(&[Frame { id: i as u64 + 1, msg: r.clone() }]),
        )?;
    }
    for (i, r) in responses.iter().enumerate() {
        write(dir, "worker_frame", &format!("response-{i}"), &[1], &frames(&[Frame { id: i as u64, msg: r.clone() }]))?;
    }

    let client = [
        Request::Hello { protocol: PROTOCOL_VERSION, client: "chctl 0.1.0".into() },
        Request::Scan { cursor: 0, prefix: b"user:".to_vec(), count: 100 },
        Request::SetIfAbsent { key: b"k".to_vec(), value: b"v".to_vec() },
        Request::NodeAdd { count: 2 },
        Request::NodeRemove { id: 3 },
        Request::NodeReplace { id: 1 },
        Request::NodeRebuild { id: 1, engine: Some(chd_data::proto::EngineKind::Append) },
        Request::Progress { id: 1 },
        Request::Plan { change: Change::Replace { id: 2 } },
        Request::QuarantinePurge { older_than_secs: 86400 },
    ];
    let client: Vec<_> =
        client.into_iter().enumerate().map(|(i, request)| ClientFrame { id: i as u64 + 1, request }).collect();
    write(dir, "chd_frame", "every-request", &[], &frames(&client))?;

    let progress = NodeProgress {
        what: "rebuild".into(),
        partitions_done: 3,
        partitions_total: 64,
        keys: 10,
        bytes: 100,
        elapsed_ms: 5,
        finished: false,
    };
    let server = [
        Ok(Response::Progress(Some(progress.clone()))),
        Ok(Response::Changing { what: "add".into(), added: vec![4] }),
        Ok(Response::Plan(PlanReport {
            what: "add 1".into(),
            partitions_moving: 10,
            partitions: 64,
            nodes: vec![NodeTraffic { id: 1, share_before: 0.5, share_after: 0.25, ..NodeTraffic::default() }],
        })),
        Ok(Response::Keys { keys: vec![serde_bytes::ByteBuf::from(b"k".to_vec())], cursor: 3 }),
        Ok(Response::Written(false)),
        Ok(Response::Quarantine(QuarantineReport {
            dir: "/var/lib/chd/quarantine".into(),
            entries: vec![QuarantineEntry { name: "node-1-1700000000".into(), node: Some(1), ..Default::default() }],
            purged: vec![],
        })),
        Err(Error::Unavailable { needed: 2, got: 1 }),
        Err(Error::Malformed("bad".into())),
        Ok(Response::Repair(RepairReport { partitions_checked: 64, unreachable_nodes: vec![2], ..Default::default() })),
    ];
    let server: Vec<_> =
        server.into_iter().enumerate().map(|(i, response)| ServerFrame { id: i as u64 + 1, response }).collect();
    write(dir, "client_reply", "every-response", &[1], &frames(&server))
}
