//! Reading frames from async streams (the framing itself is in [`chd_data::proto`]).

use chd_data::proto::{frame_len, FrameError};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Reads one frame body. `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    match read_len(r, max).await? {
        None => Ok(None),
        Some(len) => read_body(r, len).await.map(Some),
    }
}

/// Reads a frame's length prefix and checks it against `max`. `Ok(None)` on a clean end of
/// stream between frames.
pub async fn read_len<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Option<usize>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            return if got == 0 { Ok(None) } else { Err(FrameError::Truncated) };
        }
        got += n;
    }
    frame_len(&prefix, max)?;
    Ok(Some(u32::from_be_bytes(prefix) as usize))
}

/// Reads a frame body of `len` bytes (after [`read_len`]).
pub async fn read_body<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> Result<Vec<u8>, FrameError> {
    let mut body = vec![0; len];
    match r.read_exact(&mut body).await {
        Ok(_) => Ok(body),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(e.into()),
    }
}
