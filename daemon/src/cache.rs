//! chd's cache of the current value of recently used keys, so that a read of a hot key is
//! answered from memory instead of a quorum of workers.
//!
//! Why it is linearizable: chd is the only coordinator and every get, set and del of a key
//! holds the key's lock from start to reply ([`crate::coordinator`]). An entry is therefore
//! only ever put in by the holder of the key's lock, with the value that operation established
//! as current:
//! - a write puts its value in once W replicas acknowledged it;
//! - a quorum read puts in what it returns, after read repair made it durable on W replicas;
//! - a write whose outcome is unknown or refused (timeout, too few acks, disk full) forgets the
//!   entry's value *before* it sends anything (a forgotten value is never returned), and puts
//!   nothing back. The next read then goes to the replicas, and whatever it sees is repaired
//!   and becomes the current value.
//!
//! Nothing else changes which value is current: repair, rebuild and migration only copy
//! versions that already exist. A value that a failed write left on one replica, and that a
//! later repair spreads, may become visible once the entry is evicted; that is allowed, since
//! a write with an unknown outcome may take effect at any time after it was sent. The cache
//! lives in chd's memory, so a restart of chd empties it.
//!
//! Memory is bounded by bytes (keys plus values plus a fixed overhead per entry). Eviction is
//! CLOCK (second chance): cheap to keep up on every hit, close to LRU for hot keys.
//!
//! A write of a cached key keeps the key's entry: [`ValueCache::remove`] only marks it
//! *forgotten* (its value is never returned), and [`ValueCache::put`] fills it again in
//! place, copying the new value into the old one's allocation when they have the same length
//! and no reader holds it. Why: removing the entry and inserting a new one made every write
//! allocate and free the key, push a slot on the clock's queue and, once the queue had grown
//! to twice the entries, walk the whole queue with a lookup per slot (all cache misses with a
//! million keys). With the cache full, the cache cost chd 2.7 µs of CPU per SET at -c 50 -P 16
//! and 3.9 µs at -c 50 that way (1M keys, against `--read-cache-mib 0`). A forgotten entry
//! keeps its bytes counted against the limit, and eviction takes it like any other.
//!
//! Hits and misses are counted with relaxed atomics for `chctl stats`; a read that first tries
//! the cache without waiting and then takes the full read path counts one miss, not two.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes an entry costs beyond its key and value: the map slot (48, about twice that with
/// the load factor), one or two queue slots (32 each), the value's Arc header and the
/// allocator's rounding (an estimate, erring high so the limit holds; a long key's own
/// allocation is covered by counting its bytes).
const OVERHEAD: usize = 150;

/// The current value of a key: `None` when the key does not exist (a miss is worth caching
/// too: reads of absent keys are common).
pub type Value = Option<Arc<[u8]>>;

pub struct ValueCache {
    inner: Mutex<Inner>,
    max_bytes: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Entry>,
    /// Keys in the order they were put in, each with its entry's serial; may hold keys since
    /// removed, or put in again (a newer serial further back): such a slot is skipped when
    /// met, and the queue is compacted when it grows well past the map.
    clock: VecDeque<(Key, u32)>,
    /// Serial of the next entry put in.
    serial: u32,
    bytes: usize,
}

struct Entry {
    value: Value,
    /// False while forgotten: `value` is then stale and never returned (kept only for its
    /// allocation).
    current: bool,
    /// Which put made this entry (see `Inner::clock`).
    serial: u32,
    /// Read since the clock hand last passed it.
    referenced: bool,
}

/// A cached key: up to [`SHORT`] bytes inside the map's slot, longer ones behind a pointer.
///
/// Why: every write looks its key up (to forget its value, then to fill it again), and with a
/// million keys in random order each lookup's key comparison was a cache miss of its own when
/// the key was behind an `Arc`; 6% of chd's CPU under pipelined writes was that `memcmp`.
#[derive(Clone)]
enum Key {
    Short { len: u8, bytes: [u8; SHORT] },
    Long(Arc<[u8]>),
}

const SHORT: usize = 22;

impl Key {
    fn new(key: &[u8]) -> Key {
        match key.len() <= SHORT {
            true => {
                let mut bytes = [0; SHORT];
                bytes[..key.len()].copy_from_slice(key);
                Key::Short { len: key.len() as u8, bytes }
            }
            false => Key::Long(key.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Short { len, bytes } => &bytes[..usize::from(*len)],
            Key::Long(k) => k,
        }
    }
}

// Equality and hash are those of the bytes, so that the map can be searched with a `&[u8]`
// (what `Borrow` requires).
impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl Eq for Key {}
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}
impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Entry {
    fn bytes(&self) -> usize {
        self.value.as_deref().map_or(0, <[u8]>::len)
    }

    /// Makes `value` the entry's current value, in the old value's allocation when it can.
    fn set(&mut self, value: Option<&[u8]>) {
        self.current = true;
        if let (Some(old), Some(new)) = (&mut self.value, value) {
            if let Some(old) = Arc::get_mut(old).filter(|old| old.len() == new.len()) {
                old.copy_from_slice(new);
                return;
            }
        }
        self.value = value.map(Into::into);
    }
}

impl ValueCache {
    /// A cache of at most `max_bytes`; 0 turns it off.
    pub fn new(max_bytes: usize) -> ValueCache {
        ValueCache { inner: Mutex::default(), max_bytes, hits: AtomicU64::new(0), misses: AtomicU64::new(0) }
    }

    /// The cached current value of `key`, if the key is cached. The caller holds the key's lock.
    pub fn get(&self, key: &[u8]) -> Option<Value> {
        self.find(key, true)
    }

    /// Like [`ValueCache::get`], but a miss is not counted: for a caller that goes on to a read
    /// which asks again (and counts it then).
    pub fn get_before_read(&self, key: &[u8]) -> Option<Value> {
        self.find(key, false)
    }

    fn find(&self, key: &[u8], count_miss: bool) -> Option<Value> {
        if self.max_bytes == 0 {
            return None;
        }
        let found = {
            let mut inner = self.inner.lock().expect("cache lock");
            inner.map.get_mut(key).and_then(|e| {
                if !e.current {
                    return None;
                }
                e.referenced = true;
                Some(e.value.clone())
            })
        };
        match found {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None if count_miss => self.misses.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
        found
    }

    /// Reads answered from the cache, and reads that asked it in vain, since chd started (0
    /// and 0 while the cache is off).
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }

    /// Whether [`ValueCache::put`] would keep `value` for `key` (it is on, and the value is
    /// not too large to be worth the room).
    pub fn keeps(&self, key: &[u8], value: Option<&[u8]>) -> bool {
        self.max_bytes > 0 && Self::size(key, value) <= self.max_bytes / 16
    }

    fn size(key: &[u8], value: Option<&[u8]>) -> usize {
        key.len() + value.map_or(0, <[u8]>::len) + OVERHEAD
    }

    /// Records `value` as the current value of `key` (`None`: the key does not exist). The
    /// caller holds the key's lock and has just made `value` current (see the module docs).
    /// Values too large to be worth the room are not kept, and any older entry goes. The value
    /// is copied only when it is kept: a copy of every 32 MiB value written, made only to be
    /// dropped, pushed chd's peak memory past 1 GiB under maximal writes.
    pub fn put(&self, key: &[u8], value: Option<&[u8]>) {
        let mut inner = self.inner.lock().expect("cache lock");
        if !self.keeps(key, value) {
            inner.remove(key);
            return;
        }
        match inner.map.get_mut(key) {
            Some(e) => {
                let old = e.bytes();
                e.set(value);
                let new = e.bytes();
                inner.bytes = inner.bytes - old + new;
            }
            None => {
                let serial = inner.serial;
                inner.serial = serial.wrapping_add(1);
                let k = Key::new(key);
                let entry = Entry { value: value.map(Into::into), current: true, serial, referenced: false };
                inner.map.insert(k.clone(), entry);
                inner.clock.push_back((k, serial));
                inner.bytes += Self::size(key, value);
            }
        }
        while inner.bytes > self.max_bytes {
            if !inner.evict_one() {
                break;
            }
        }
        if inner.clock.len() > 2 * inner.map.len() + 1024 {
            inner.compact();
        }
    }

    /// Forgets `key`'s value: it is about to change in a way chd may not learn. The entry
    /// stays, forgotten, for the [`ValueCache::put`] that usually follows (see the module
    /// docs).
    pub fn remove(&self, key: &[u8]) {
        if self.max_bytes == 0 {
            return;
        }
        if let Some(e) = self.inner.lock().expect("cache lock").map.get_mut(key) {
            e.current = false;
        }
    }

    /// Bytes the entries take.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.inner.lock().expect("cache lock").bytes
    }
}

impl Inner {
    fn remove(&mut self, key: &[u8]) {
        if let Some((k, e)) = self.map.remove_entry(key) {
            self.bytes -= k.as_bytes().len() + e.bytes() + OVERHEAD;
        }
    }

    /// Moves the clock hand until one entry is evicted. False when the cache is empty.
    fn evict_one(&mut self) -> bool {
        while let Some((key, serial)) = self.clock.pop_front() {
            // A slot is live only if the map holds the entry that queued it: a key removed,
            // or put in again since (its newer slot is further back), left a stale slot.
            let Some(e) = self.map.get_mut(key.as_bytes()).filter(|e| e.serial == serial) else { continue };
            if e.referenced {
                e.referenced = false;
                self.clock.push_back((key, serial));
                continue;
            }
            self.remove(key.as_bytes());
            return true;
        }
        false
    }

    /// Drops the queue slots of keys no longer cached (or cached by a later put).
    fn compact(&mut self) {
        let map = &self.map;
        self.clock.retain(|(k, serial)| map.get(k.as_bytes()).is_some_and(|e| e.serial == *serial));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Value {
        Some(s.as_bytes().into())
    }

    #[test]
    fn a_put_value_is_returned_until_removed_or_replaced() {
        let c = ValueCache::new(1 << 20);
        assert_eq!(c.get(b"k"), None, "nothing is cached at first");
        c.put(b"k", Some(b"1"));
        assert_eq!(c.get(b"k"), Some(v("1")));
        c.put(b"k", Some(b"2"));
        assert_eq!(c.get(b"k"), Some(v("2")));
        c.put(b"k", None);
        assert_eq!(c.get(b"k"), Some(None), "an absent key is cached as absent");
        c.remove(b"k");
        assert_eq!(c.get(b"k"), None);
        assert_eq!(c.bytes(), 1 + OVERHEAD, "a forgotten entry still counts its key");
        c.put(b"k", Some(b"3"));
        assert_eq!(c.get(b"k"), Some(v("3")));
    }

    #[test]
    fn a_write_of_a_cached_key_refills_its_entry_in_place() {
        let c = ValueCache::new(1 << 20);
        let keys: Vec<[u8; 4]> = (0..10u32).map(u32::to_be_bytes).collect();
        for k in &keys {
            c.put(k, Some(b"first"));
        }
        let before = c.bytes();
        for round in 0..100u32 {
            for k in &keys {
                c.remove(k);
                assert_eq!(c.get(k), None, "a forgotten value was returned");
                c.put(k, Some(&round.to_be_bytes()));
            }
        }
        for k in &keys {
            assert_eq!(c.get(k), Some(Some(99u32.to_be_bytes().to_vec().into())));
        }
        let inner = c.inner.lock().unwrap();
        assert_eq!(inner.clock.len(), keys.len(), "each write queued a new clock slot");
        assert_eq!(inner.bytes, before - keys.len() * (b"first".len() - 4));
    }

    #[test]
    fn short_and_long_keys_are_told_apart_by_every_byte_and_their_length() {
        let c = ValueCache::new(1 << 20);
        // Every length around the inline limit, and keys that differ only by trailing zeros
        // (an inline key is zero-padded).
        let mut keys: Vec<Vec<u8>> = (1..=SHORT + 2).flat_map(|n| [vec![0u8; n], vec![7u8; n]]).collect();
        keys.push(Vec::new());
        for (i, k) in keys.iter().enumerate() {
            c.put(k, Some(&i.to_be_bytes()));
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(c.get(k), Some(Some(i.to_be_bytes().to_vec().into())), "key of {} bytes", k.len());
        }
        let long = vec![7u8; SHORT + 2];
        c.remove(&long);
        assert_eq!(c.get(&long), None);
        let short = keys.iter().position(|k| k[..] == long[..SHORT]).unwrap();
        assert_eq!(c.get(&long[..SHORT]), Some(Some(short.to_be_bytes().to_vec().into())));
    }

    #[test]
    fn a_key_dropped_and_put_again_is_evicted_by_its_new_slot_only() {
        let c = ValueCache::new(1 << 20);
        c.put(b"k", Some(b"1"));
        c.put(b"k", Some(&vec![0u8; 1 << 17])); // too large: the entry goes, its slot stays
        c.put(b"k", Some(b"2"));
        let mut inner = c.inner.lock().unwrap();
        assert_eq!(inner.clock.len(), 2);
        assert!(inner.evict_one());
        assert!(inner.map.is_empty(), "the new slot evicted the key");
        assert!(!inner.evict_one(), "the old slot evicted nothing");
        assert_eq!(inner.bytes, 0);
    }

    #[test]
    fn a_new_value_of_the_same_length_reuses_the_old_one_s_memory_unless_a_reader_holds_it() {
        let c = ValueCache::new(1 << 20);
        c.put(b"k", Some(b"one"));
        let first = c.get(b"k").unwrap().unwrap();
        let at = Arc::as_ptr(&first);
        // A reader still holds the value: the new one goes elsewhere, and the reader's copy
        // does not change under it.
        c.remove(b"k");
        c.put(b"k", Some(b"two"));
        assert_eq!(&*first, b"one");
        let second = c.get(b"k").unwrap().unwrap();
        assert_eq!(&*second, b"two");
        let at = (at, Arc::as_ptr(&second));
        assert_ne!(at.0, at.1);
        drop((first, second));
        // Nobody holds it: the next value of the same length is written in place.
        c.remove(b"k");
        c.put(b"k", Some(b"six"));
        let third = c.get(b"k").unwrap().unwrap();
        assert_eq!((&*third, Arc::as_ptr(&third)), (&b"six"[..], at.1));
        assert_eq!(c.bytes(), 1 + 3 + OVERHEAD);
    }

    #[test]
    fn forgotten_entries_are_evicted_like_others() {
        let c = ValueCache::new(64 << 10);
        for i in 0..10_000u32 {
            c.put(&i.to_be_bytes(), Some(&[0u8; 100]));
            c.remove(&i.to_be_bytes());
            assert!(c.bytes() <= 64 << 10, "over the limit: {}", c.bytes());
        }
        assert!(c.inner.lock().unwrap().map.len() < 10_000 / 10);
    }

    #[test]
    fn memory_stays_under_the_limit_and_hot_keys_stay() {
        let c = ValueCache::new(64 << 10);
        c.put(b"hot", Some(b"h"));
        for i in 0..10_000u32 {
            c.put(&i.to_be_bytes(), Some(&[0u8; 100]));
            assert!(c.bytes() <= 64 << 10, "over the limit: {}", c.bytes());
            assert_eq!(c.get(b"hot"), Some(v("h")), "the hot key was evicted after {i} puts");
        }
        let inner = c.inner.lock().unwrap();
        assert!(inner.clock.len() <= 2 * inner.map.len() + 1024, "the queue grows without bound");
    }

    #[test]
    fn re_putting_one_key_does_not_grow_the_queue_or_evict_it() {
        let c = ValueCache::new(64 << 10);
        for i in 0..100_000u32 {
            c.put(b"k", Some(&i.to_be_bytes()));
        }
        assert_eq!(c.get(b"k"), Some(Some(99_999u32.to_be_bytes().to_vec().into())));
        assert!(c.inner.lock().unwrap().clock.len() <= 1025);
    }

    #[test]
    fn a_large_value_is_not_kept_and_drops_the_older_entry() {
        let c = ValueCache::new(1 << 20);
        c.put(b"k", Some(b"small"));
        assert!(c.keeps(b"k", Some(b"small")));
        assert!(!c.keeps(b"k", Some(&vec![0u8; 1 << 17])));
        c.put(b"k", Some(&vec![0u8; 1 << 17]));
        assert_eq!(c.get(b"k"), None, "a stale small value would be returned");
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn hits_and_misses_are_counted_once_per_read() {
        let c = ValueCache::new(1 << 20);
        assert_eq!(c.get(b"k"), None);
        assert_eq!(c.get_before_read(b"k"), None, "a miss followed by a read is counted by the read");
        c.put(b"k", Some(b"1"));
        assert_eq!(c.get(b"k"), Some(v("1")));
        assert_eq!(c.get_before_read(b"k"), Some(v("1")));
        assert_eq!(c.hits_and_misses(), (2, 1));
    }

    #[test]
    fn a_zero_sized_cache_keeps_nothing() {
        let c = ValueCache::new(0);
        assert!(!c.keeps(b"k", Some(b"1")));
        c.put(b"k", Some(b"1"));
        assert_eq!(c.get(b"k"), None);
    }
}
