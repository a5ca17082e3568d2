//! A simulated disk for redb (`redb::StorageBackend`) shared by the
//! crash sims: it keeps what the process wrote and what the last sync
//! made durable, and a crash leaves the durable image plus a random part
//! of the writes since, some torn at 512-byte boundaries.

#![allow(dead_code)]

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::RngExt;
use std::io;
use std::sync::Arc;

#[derive(Default)]
pub struct Disk {
    /// What the process sees.
    pub live: Vec<u8>,
    /// What survives a crash for sure.
    pub durable: Vec<u8>,
    /// Writes (offset, bytes) and length changes since the last sync.
    pub pending: Vec<Pending>,
    pub syncs: u64,
    /// The sync that crashes the machine (1-based), if any.
    pub crash_at: Option<u64>,
    /// The sync that fails with an I/O error (the machine lives on).
    pub fail_at: Option<u64>,
    pub crashed: bool,
}

#[derive(Clone)]
pub enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Clone)]
pub struct SimDisk(pub Arc<Mutex<Disk>>);

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimDisk")
    }
}

fn crashed() -> io::Error {
    io::Error::other("simulated crash: the machine is down")
}

impl redb::StorageBackend for SimDisk {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.0.lock().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let d = self.0.lock();
        let (start, end) = (offset as usize, offset as usize + out.len());
        if end > d.live.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        out.copy_from_slice(&d.live[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut d = self.0.lock();
        if d.crashed {
            return Err(crashed());
        }
        d.live.resize(len as usize, 0);
        d.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut d = self.0.lock();
        if d.crashed {
            return Err(crashed());
        }
        d.syncs += 1;
        if d.crash_at == Some(d.syncs) {
            d.crashed = true;
            return Err(crashed());
        }
        if d.fail_at == Some(d.syncs) {
            return Err(io::Error::other("simulated I/O error"));
        }
        d.durable = d.live.clone();
        d.pending.clear();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut d = self.0.lock();
        if d.crashed {
            return Err(crashed());
        }
        let end = offset as usize + data.len();
        if end > d.live.len() {
            d.live.resize(end, 0);
        }
        d.live[offset as usize..end].copy_from_slice(data);
        d.pending.push(Pending::Write(offset, data.to_vec()));
        Ok(())
    }
}

impl SimDisk {
    /// The machine goes down now: every later write and sync fails.
    pub fn crash_now(&self) {
        self.0.lock().crashed = true;
    }

    pub fn new(image: Vec<u8>) -> SimDisk {
        SimDisk(Arc::new(Mutex::new(Disk {
            live: image.clone(),
            durable: image,
            ..Disk::default()
        })))
    }

    /// The image a crash leaves: the durable one plus some of the
    /// writes since, some torn.
    pub fn after_crash(&self, rng: &mut StdRng) -> Vec<u8> {
        let d = self.0.lock();
        let mut img = d.durable.clone();
        let mut pending = d.pending.clone();
        // The page cache writes back in any order.
        for i in (1..pending.len()).rev() {
            let j = rng.random_range(0..=i);
            pending.swap(i, j);
        }
        for p in pending {
            match p {
                Pending::SetLen(len) => {
                    if rng.random_bool(0.5) {
                        img.resize(len as usize, 0);
                    }
                }
                Pending::Write(off, data) => {
                    if !rng.random_bool(0.5) {
                        continue;
                    }
                    let mut data = &data[..];
                    if data.len() > 512 && rng.random_bool(0.3) {
                        let sectors = data.len() / 512;
                        data = &data[..512 * rng.random_range(1..=sectors)];
                    }
                    let end = off as usize + data.len();
                    if end > img.len() {
                        img.resize(end, 0);
                    }
                    img[off as usize..end].copy_from_slice(data);
                }
            }
        }
        img
    }
}
