//! Reading frames from async streams (the framing itself is in [`chd_data::proto`]).

use chd_data::proto::{frame_len, FrameError};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Reads one frame body. `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut prefix[got..]).await?;
        if n == 0 {
            return if got == 0 { Ok(None) } else { Err(FrameError::Truncated) };
        }
        got += n;
    }
    // Refuses an oversized length before allocating anything for it.
    frame_len(&prefix, max)?;
    let len = u32::from_be_bytes(prefix) as usize;
    let mut body = vec![0; len];
    match r.read_exact(&mut body).await {
        Ok(_) => Ok(Some(body)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(e.into()),
    }
}
