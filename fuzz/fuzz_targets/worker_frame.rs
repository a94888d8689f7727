//! The link between chd and a worker, both ways: what a worker reads from chd
//! (`Frame<WorkerRequest>`) and what chd reads from a worker (`Frame<WorkerResponse>`, whose
//! statistics chd turns into percentiles). The first byte says which side reads; the rest is
//! the stream of frames.
#![no_main]

use chd_daemon::worker::proto::{Frame, WorkerRequest, WorkerResponse, MAX_WORKER_FRAME};
use chd_data::proto::{decode_body, encode_frame, read_frame};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(msg: &T) {
    let mut again = Vec::new();
    encode_frame(msg, &mut again);
    assert_eq!(decode_body::<T>(&again[4..]).as_ref(), Ok(msg));
}

fn read<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(body: &[u8]) -> Option<T> {
    let msg = decode_body::<T>(body).ok()?;
    round_trip(&msg);
    Some(msg)
}

fuzz_target!(|data: &[u8]| {
    let [side, stream @ ..] = data else { return };
    let mut reader = stream;
    while let Ok(Some(body)) = read_frame(&mut reader, MAX_WORKER_FRAME) {
        if side & 1 == 0 {
            let Some(Frame { msg, .. }) = read::<Frame<WorkerRequest>>(&body) else { break };
            let _ = msg.is_spare();
            let _ = msg.approx_bytes();
        } else {
            let Some(Frame { msg, .. }) = read::<Frame<WorkerResponse>>(&body) else { break };
            if let WorkerResponse::Stats { batch_size, sync_us, .. } = msg {
                let _ = batch_size.report();
                let _ = sync_us.report();
            }
        }
    }
});
