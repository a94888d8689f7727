//! `chd-lazyfs BACKING MOUNTPOINT [--control SOCKET]`: serves the lazy filesystem until SIGTERM
//! or SIGINT (then unmounts, discarding what was not synced). SIGUSR1 cuts the power; so does a
//! `cut` line on the control socket (see `chd_lazyfs::control`). Prints `ready` on stdout once
//! mounted. Needs root (it mounts with mount(2); no fusermount, no libfuse).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};

#[derive(Parser)]
#[command(version, about = "A FUSE filesystem that forgets everything not fsynced at a power cut")]
struct Args {
    /// Directory holding the simulated disk (created if empty).
    backing: PathBuf,
    /// Where to mount.
    mountpoint: PathBuf,
    /// Unix socket for `ping` and `cut [PID...]` requests.
    #[arg(long)]
    control: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Block the signals before any thread starts, so every thread inherits the mask and only
    // the sigwait below sees them.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGUSR1, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().context("blocking signals")?;

    let fs = Arc::new(chd_lazyfs::LazyFs::mount(&args.backing, &args.mountpoint)?);
    if let Some(sock) = &args.control {
        chd_lazyfs::control::serve(fs.clone(), sock).with_context(|| format!("control socket {}", sock.display()))?;
    }
    println!("ready");
    std::io::stdout().flush()?;
    while signals.wait().context("sigwait")? == Signal::SIGUSR1 {
        match fs.power_cut() {
            Ok(r) => eprintln!(
                "chd-lazyfs: power cut: killed {:?}, survivors {:?}, {} unsynced bytes lost",
                r.killed, r.survivors, r.unsynced_bytes
            ),
            Err(e) => {
                eprintln!("chd-lazyfs: power cut failed: {e}");
                std::process::exit(1);
            }
        }
    }
    if let Some(sock) = &args.control {
        let _ = std::fs::remove_file(sock);
    }
    fs.unmount()?;
    Ok(())
}
