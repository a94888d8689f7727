//! Test hooks: named points where a debug build of chd stops or dies when a test asks for it
//! through the environment, so that tests force an interleaving or reach a crash window instead
//! of racing a timer or a signal against it. A release build ignores them.

use std::time::Duration;

/// In debug builds, `CHD_TEST_PAUSE_AT=<point>` with `CHD_TEST_PAUSE_FILE=<path>` makes chd
/// stop at that point: it creates the file, and goes on once a test has removed it. Tests force
/// an interleaving with it instead of racing a timer.
pub async fn pause_point(point: &str) {
    if let Some(file) = pause_file(point) {
        while file.exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        eprintln!("chd: resuming at {point}");
    }
}

/// [`pause_point`] for code that runs outside the async runtime or before it serves.
pub fn pause_point_blocking(point: &str) {
    if let Some(file) = pause_file(point) {
        while file.exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
        eprintln!("chd: resuming at {point}");
    }
}

fn pause_file(point: &str) -> Option<std::path::PathBuf> {
    if !cfg!(debug_assertions) || std::env::var("CHD_TEST_PAUSE_AT").map_or(true, |p| p != point) {
        return None;
    }
    let file = std::path::PathBuf::from(std::env::var_os("CHD_TEST_PAUSE_FILE")?);
    std::fs::write(&file, point).ok()?;
    eprintln!("chd: paused at {point} until {} is removed", file.display());
    Some(file)
}

/// In debug builds, `CHD_TEST_CRASH_AT=<point>` makes chd die at that point, the way a kill -9
/// would, so that tests can reach a crash window without racing a signal against it.
pub fn crash_point(point: &str) {
    if cfg!(debug_assertions) && std::env::var("CHD_TEST_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("chd: crashing at {point} (CHD_TEST_CRASH_AT)");
        std::process::abort();
    }
}
