//! Writing to stdout without panicking: every write returns its error, typed as
//! [`OutputError`], so that `main` can tell a reader that went away (EPIPE: a quiet, normal end,
//! exit 0) from an output that failed (`> /dev/full`: one line on stderr, non-zero exit).
//!
//! SIGPIPE stays ignored (Rust's default) and EPIPE is handled here, rather than restoring the
//! default disposition, for two reasons: with SIG_DFL a write to chd's *socket* after chd closed
//! it would also kill chctl silently (exit 141 and no "chd closed the connection" line, exit 3),
//! and `chctl keys | head -1` under `set -o pipefail` would fail the script although chctl did
//! everything the reader wanted. So a closed stdout ends chctl quietly with exit 0.

use std::fmt;
use std::io::Write;

/// stdout could not be written. `BrokenPipe` means the reader has had enough.
#[derive(Debug)]
pub struct OutputError(pub std::io::Error);

impl fmt::Display for OutputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // "No space left on device", without std's " (os error 28)".
        let e = self.0.to_string();
        write!(f, "cannot write output: {}", e.split(" (os error").next().unwrap_or(&e))
    }
}

impl std::error::Error for OutputError {}

impl OutputError {
    pub fn is_broken_pipe(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// Writes formatted text to stdout (line-buffered by std, so errors show at each newline).
pub fn write_fmt(args: fmt::Arguments<'_>) -> Result<(), OutputError> {
    std::io::stdout().lock().write_fmt(args).map_err(OutputError)
}

/// Writes raw bytes to stdout.
pub fn write_all(bytes: &[u8]) -> Result<(), OutputError> {
    std::io::stdout().lock().write_all(bytes).map_err(OutputError)
}

/// Flushes stdout; called once before exiting, so a failure of the last line is not lost.
pub fn flush() -> Result<(), OutputError> {
    std::io::stdout().lock().flush().map_err(OutputError)
}

/// `println!` that returns the write's error instead of panicking.
#[macro_export]
macro_rules! outln {
    () => { $crate::out::write_all(b"\n") };
    ($($arg:tt)*) => { $crate::out::write_fmt(format_args!("{}\n", format_args!($($arg)*))) };
}
