//! What chctl's client reads from a server: frames through the client's own read path
//! (`read_server_frame`, as `Client::receive` calls it) from an in-memory stream, each then
//! matched to its request (`answer`) and shown the way chctl shows answers and errors. A
//! hostile server must get errors out of the client, never a panic.
#![no_main]

use std::path::Path;

use chd_client::{answer, read_server_frame};
use chd_data::proto::{decode_body, encode_frame, ServerFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [id, stream @ ..] = data else { return };
    let mut reader = stream;
    while let Ok(frame) = read_server_frame(&mut reader, Path::new("/fuzz/chd.sock")) {
        // Decoding is a function of the bytes: what decodes encodes back to bytes that decode
        // and encode the same (floats may be NaN, so bytes are compared, not values).
        let mut once = Vec::new();
        encode_frame(&frame, &mut once);
        let again: ServerFrame = decode_body(&once[4..]).expect("own encoding decodes");
        let mut twice = Vec::new();
        encode_frame(&again, &mut twice);
        assert_eq!(once, twice);

        let _ = format!("{frame:?}");
        match answer(frame, u64::from(*id)) {
            Ok(response) => drop(format!("{response:?}")),
            Err(e) => drop(e.to_string()),
        }
    }
});
