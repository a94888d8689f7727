//! An in-memory engine for fast tests of everything above the storage seam.

use std::collections::BTreeMap;
use std::io;

use super::{Engine, Entry};

#[derive(Default)]
pub struct MemoryEngine {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Engine for MemoryEngine {
    fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Ok(self.map.get(key).cloned())
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.map.insert(key.to_vec(), value.to_vec());
        Ok(())
    }
    fn delete(&mut self, key: &[u8]) -> io::Result<()> {
        self.map.remove(key);
        Ok(())
    }
    fn scan(&self, from: &[u8], to: &[u8], limit: usize) -> io::Result<Vec<Entry>> {
        if from >= to {
            return Ok(Vec::new());
        }
        Ok(self.map.range(from.to_vec()..to.to_vec()).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
    }
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn size_on_disk(&self) -> u64 {
        self.map.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
    }
}
