//! The unsynced contents of one regular file: a page overlay over its durable bytes.
//!
//! The durable bytes are what the simulated disk holds for the file (its file in the backing
//! store); the overlay is the "page cache": every write since the last fsync. What a reader sees
//! at byte `i < size`:
//! - the overlay page holding `i`, if there is one;
//! - else the durable byte `i` if `i < min(floor, durable_len)`;
//! - else zero (a hole, or bytes cut off by a truncate and not written since).
//!
//! Invariants, kept by every method:
//! - `floor <= size`: `floor` is the smallest size the file had since the last sync, so durable
//!   bytes at or past it were truncated away and must read as zero if the file grows again;
//! - overlay bytes at or past `size` are zero, so growing the file (truncate up, fallocate, a
//!   write past the end) shows zeros without touching the pages;
//! - after [`Overlay::sync_to`], the disk holds exactly what a reader saw, and the overlay is
//!   empty with `floor == size == durable_len`.
//!
//! A write costs O(pages it touches), plus one page read from disk for each partial page not
//! yet in the overlay; a sync writes only the overlay's pages.

use std::collections::BTreeMap;
use std::io;

/// Size of one overlay page.
pub const PAGE: u64 = 4096;

/// Where durable bytes are read from and written to.
pub trait Disk {
    /// Reads up to `buf.len()` bytes at `off`; fewer at the end of the file.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize>;
    fn write_all_at(&mut self, buf: &[u8], off: u64) -> io::Result<()>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// Fills `buf` from `disk` at `off`; bytes past the disk's end stay as they are (zero).
fn read_full(disk: &impl Disk, mut buf: &mut [u8], mut off: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match disk.read_at(buf, off) {
            Ok(0) => break,
            Ok(n) => {
                buf = &mut buf[n..];
                off += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[derive(Debug, Default)]
pub struct Overlay {
    size: u64,
    floor: u64,
    durable_len: u64,
    pages: BTreeMap<u64, Box<[u8]>>,
}

impl Overlay {
    /// A file whose disk holds `durable_len` bytes and nothing unsynced.
    pub fn clean(durable_len: u64) -> Overlay {
        Overlay { size: durable_len, floor: durable_len, durable_len, pages: BTreeMap::new() }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether a read or a partial-page write may need bytes from disk.
    pub fn needs_disk(&self) -> bool {
        self.floor.min(self.durable_len) > 0
    }

    /// Whether anything differs from the disk.
    pub fn is_dirty(&self) -> bool {
        !self.pages.is_empty() || self.size != self.durable_len || self.floor != self.durable_len
    }

    /// Bytes held in memory, for reports.
    pub fn dirty_bytes(&self) -> u64 {
        self.pages.len() as u64 * PAGE
    }

    /// The durable bytes of `[off, off + buf.len())` that a reader may see, into `buf`.
    fn read_durable(&self, disk: &impl Disk, buf: &mut [u8], off: u64) -> io::Result<()> {
        let end = (off + buf.len() as u64).min(self.floor).min(self.durable_len).min(self.size);
        if end > off {
            read_full(disk, &mut buf[..(end - off) as usize], off)?;
        }
        Ok(())
    }

    pub fn read(&self, disk: &impl Disk, off: u64, len: u64) -> io::Result<Vec<u8>> {
        if off >= self.size || len == 0 {
            return Ok(Vec::new());
        }
        let end = (off + len).min(self.size);
        let mut out = vec![0u8; (end - off) as usize];
        self.read_durable(disk, &mut out, off)?;
        for (&p, page) in self.pages.range(off / PAGE..=(end - 1) / PAGE) {
            let start = (p * PAGE).max(off);
            let stop = (p * PAGE + PAGE).min(end);
            out[(start - off) as usize..(stop - off) as usize]
                .copy_from_slice(&page[(start - p * PAGE) as usize..(stop - p * PAGE) as usize]);
        }
        Ok(out)
    }

    pub fn write(&mut self, disk: &impl Disk, off: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let end = off + data.len() as u64;
        for p in off / PAGE..=(end - 1) / PAGE {
            let pstart = p * PAGE;
            let start = pstart.max(off);
            let stop = (pstart + PAGE).min(end);
            if !self.pages.contains_key(&p) {
                let mut page = vec![0u8; PAGE as usize].into_boxed_slice();
                if start > pstart || stop < pstart + PAGE {
                    self.read_durable(disk, &mut page, pstart)?;
                }
                self.pages.insert(p, page);
            }
            let page = self.pages.get_mut(&p).expect("inserted above");
            page[(start - pstart) as usize..(stop - pstart) as usize]
                .copy_from_slice(&data[(start - off) as usize..(stop - off) as usize]);
        }
        self.size = self.size.max(end);
        Ok(())
    }

    /// Truncates or extends (with zeros) to `len`.
    pub fn set_size(&mut self, len: u64) {
        if len < self.size {
            let first_gone = len.div_ceil(PAGE);
            self.pages.split_off(&first_gone);
            if len % PAGE != 0 {
                if let Some(page) = self.pages.get_mut(&(len / PAGE)) {
                    page[(len % PAGE) as usize..].fill(0);
                }
            }
            self.floor = self.floor.min(len);
        }
        self.size = len;
    }

    /// Writes what is unsynced to `disk` (the caller then fsyncs it). On an error the overlay
    /// is kept whole, so a retry writes everything again.
    pub fn sync_to(&mut self, disk: &mut impl Disk) -> io::Result<()> {
        if !self.is_dirty() {
            return Ok(());
        }
        if self.floor < self.durable_len {
            disk.set_len(self.floor)?;
        }
        // Contiguous pages go out in one write: a 4 MiB value is one syscall, not 1024.
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0;
        for (&p, page) in &self.pages {
            let pstart = p * PAGE;
            if pstart >= self.size {
                break;
            }
            if run_start + run.len() as u64 != pstart {
                if !run.is_empty() {
                    disk.write_all_at(&run, run_start)?;
                    run.clear();
                }
                run_start = pstart;
            }
            run.extend_from_slice(&page[..(self.size - pstart).min(PAGE) as usize]);
            if run.len() >= 8 << 20 {
                disk.write_all_at(&run, run_start)?;
                run_start += run.len() as u64;
                run.clear();
            }
        }
        if !run.is_empty() {
            disk.write_all_at(&run, run_start)?;
        }
        disk.set_len(self.size)?;
        self.pages.clear();
        self.floor = self.size;
        self.durable_len = self.size;
        Ok(())
    }
}

impl Disk for std::fs::File {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, off)
    }
    fn write_all_at(&mut self, buf: &[u8], off: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, off)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        std::fs::File::set_len(self, len)
    }
}

/// No file on disk yet: reads as empty. Never written to ([`Overlay::sync_to`] gets a real file).
impl Disk for Option<std::fs::File> {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        match self {
            Some(f) => Disk::read_at(f, buf, off),
            None => Ok(0),
        }
    }
    fn write_all_at(&mut self, buf: &[u8], off: u64) -> io::Result<()> {
        match self {
            Some(f) => f.write_all_at(buf, off),
            None => Err(io::Error::other("no backing file")),
        }
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        match self {
            Some(f) => Disk::set_len(f, len),
            None => Err(io::Error::other("no backing file")),
        }
    }
}

#[cfg(test)]
impl Disk for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        let off = (off as usize).min(self.len());
        let n = buf.len().min(self.len() - off);
        buf[..n].copy_from_slice(&self[off..off + n]);
        Ok(n)
    }
    fn write_all_at(&mut self, buf: &[u8], off: u64) -> io::Result<()> {
        let end = off as usize + buf.len();
        if self.len() < end {
            self.resize(end, 0);
        }
        self[off as usize..end].copy_from_slice(buf);
        Ok(())
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.resize(len as usize, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model file: what a reader must see.
    fn apply(model: &mut Vec<u8>, off: usize, data: &[u8]) {
        if model.len() < off + data.len() {
            model.resize(off + data.len(), 0);
        }
        model[off..off + data.len()].copy_from_slice(data);
    }

    fn all(o: &Overlay, disk: &Vec<u8>) -> Vec<u8> {
        o.read(disk, 0, o.size() + 10).unwrap()
    }

    #[test]
    fn reads_see_writes_over_disk_and_a_sync_makes_disk_equal() {
        let mut disk: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut model = disk.clone();
        let mut o = Overlay::clean(disk.len() as u64);
        o.write(&disk, 5000, b"hello").unwrap();
        apply(&mut model, 5000, b"hello");
        o.write(&disk, 9998, b"tail past end").unwrap();
        apply(&mut model, 9998, b"tail past end");
        assert_eq!(all(&o, &disk), model);
        assert_eq!(o.read(&disk, 4998, 4).unwrap(), &model[4998..5002]);
        // The disk is untouched until the sync.
        assert_eq!(disk.len(), 10_000);
        o.sync_to(&mut disk).unwrap();
        assert_eq!(disk, model);
        assert!(!o.is_dirty());
        assert_eq!(all(&o, &disk), model);
    }

    #[test]
    fn truncate_then_grow_reads_zeros_not_old_disk_bytes() {
        let mut disk = vec![7u8; 3 * PAGE as usize];
        let mut o = Overlay::clean(disk.len() as u64);
        o.write(&disk, 100, b"abc").unwrap();
        o.set_size(102);
        o.set_size(2 * PAGE);
        let mut model = vec![7u8; 100];
        model.extend_from_slice(b"ab");
        model.resize(2 * PAGE as usize, 0);
        assert_eq!(all(&o, &disk), model);
        o.write(&disk, PAGE + 10, b"x").unwrap();
        model[PAGE as usize + 10] = b'x';
        assert_eq!(all(&o, &disk), model);
        o.sync_to(&mut disk).unwrap();
        assert_eq!(disk, model);
    }

    #[test]
    fn dropping_the_overlay_leaves_the_old_disk() {
        let disk = b"old contents".to_vec();
        let mut o = Overlay::clean(disk.len() as u64);
        o.write(&disk, 0, b"NEW").unwrap();
        o.set_size(1);
        drop(o);
        assert_eq!(disk, b"old contents");
    }

    #[test]
    fn random_operations_match_a_model() {
        // A small deterministic generator: the test needs variety, not randomness.
        let mut seed = 0x2545f4914f6cdd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut disk: Vec<u8> = Vec::new();
        let mut model: Vec<u8> = Vec::new();
        let mut o = Overlay::clean(0);
        for step in 0..3000 {
            match next(10) {
                0..=5 => {
                    let off = next(5 * PAGE) as usize;
                    let len = next(2 * PAGE) as usize + 1;
                    let data: Vec<u8> = (0..len).map(|i| (i + step) as u8 | 1).collect();
                    o.write(&disk, off as u64, &data).unwrap();
                    apply(&mut model, off, &data);
                }
                6 | 7 => {
                    let len = next(6 * PAGE) as usize;
                    o.set_size(len as u64);
                    model.resize(len, 0);
                }
                8 => {
                    o.sync_to(&mut disk).unwrap();
                    assert_eq!(disk, model);
                }
                _ => {
                    let off = next(6 * PAGE);
                    let len = next(3 * PAGE);
                    let want = &model[(off as usize).min(model.len())..((off + len) as usize).min(model.len())];
                    assert_eq!(o.read(&disk, off, len).unwrap(), want, "step {step}");
                }
            }
            assert_eq!(o.size(), model.len() as u64);
        }
        assert_eq!(all(&o, &disk), model);
    }
}
