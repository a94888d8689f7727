//! What chd reads from a client on its main socket: the length prefix (checked against
//! `MAX_FRAME` before any body byte), the postcard body of a `ClientFrame`, the request's size
//! checks, and the id peeked from a body that does not decode (so that its error still goes
//! back under the right id). The input is one connection's stream; each frame is taken as
//! chd takes it, until the stream ends or a frame is refused.
#![no_main]

use chd_data::proto::{decode_body, encode_frame, frame_len, peek_id, read_frame, ClientFrame, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

fn check_body(body: &[u8]) {
    let id = peek_id(body);
    match decode_body::<ClientFrame>(body) {
        Ok(frame) => {
            assert_eq!(frame.id, id, "the peeked id is not the frame's");
            let _ = frame.request.validate();
            let _ = frame.request.name();
            // What decodes, encodes and decodes to the same frame.
            let mut again = Vec::new();
            encode_frame(&frame, &mut again);
            let len = frame_len(&again, MAX_FRAME).expect("own frame fits").expect("whole");
            assert_eq!(decode_body::<ClientFrame>(&again[4..4 + len]).as_ref(), Ok(&frame));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The body alone, as a frame's body whatever its prefix says.
    check_body(data);

    // The stream, frame by frame, as the connection reads it.
    let mut rest = data;
    loop {
        match frame_len(rest, MAX_FRAME) {
            Ok(Some(len)) => {
                assert!(rest.len() >= 4 + len);
                let mut reader = rest;
                let body = read_frame(&mut reader, MAX_FRAME).expect("a whole frame reads").expect("not the end");
                assert_eq!(body.len(), len);
                assert_eq!(body, &rest[4..4 + len]);
                check_body(&body);
                rest = reader;
            }
            Ok(None) => {
                // Not whole: the blocking reader says truncated (or a clean end).
                let mut reader = rest;
                match read_frame(&mut reader, MAX_FRAME) {
                    Ok(None) => assert!(rest.is_empty()),
                    Ok(Some(_)) => panic!("a partial frame was read as whole"),
                    Err(_) => {}
                }
                break;
            }
            Err(_) => {
                let mut reader = rest;
                assert!(read_frame(&mut reader, MAX_FRAME).is_err(), "an oversized frame was read");
                break;
            }
        }
    }
});
