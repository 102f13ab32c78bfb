//! `SimStorage`: an in-memory [`Storage`] that can simulate power loss and fsync failures.
//!
//! This is the "power loss" test double of the reliability plan. It models what a crash does
//! to a real file system, closely enough to catch lazy-fsync bugs:
//! - file *contents* survive a crash only up to the last `sync_data` of that file; optionally
//!   a random prefix of the unsynced appended bytes survives too (a torn write);
//! - file *existence* (creation, rename, removal) survives only after `sync_dir` of the parent;
//! - handles opened before a crash are dead afterwards (every call fails with EIO), like the
//!   file descriptors of a process that died, so a stale writer cannot scribble on the
//!   "rebooted" state;
//! - a failpoint makes `sync_data` fail with EIO, to test poisoning.
//!
//! Directories are treated as always existing and durable (a simplification: the log creates
//! its directories once, at open, before anything is acknowledged).

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::storage::{DirLock, Storage, StorageFile};

/// The content of one simulated file.
#[derive(Debug, Default)]
struct Inode {
    /// What a reader sees now.
    data: Vec<u8>,
    /// What survives a crash (the content at the last `sync_data`).
    synced: Vec<u8>,
}

type InodeRef = Arc<Mutex<Inode>>;

/// The shared state of a [`SimStorage`] and its handles.
#[derive(Debug, Default)]
struct SimState {
    /// The current namespace: path -> file.
    files: HashMap<PathBuf, InodeRef>,
    /// The namespace as of the last `sync_dir` of each directory: what survives a crash.
    durable: HashMap<PathBuf, InodeRef>,
    /// Paths currently locked by a live `DirLock`.
    locks: HashSet<PathBuf>,
}

#[derive(Debug, Default)]
struct SimInner {
    /// Namespace and locks.
    state: Mutex<SimState>,
    /// Bumped by each crash; handles from an older generation fail with EIO.
    generation: AtomicU64,
    /// Failpoint: when set, `sync_data` fails with EIO.
    fail_sync: AtomicBool,
    /// Number of successful `sync_data` calls (lets tests see group commit at work).
    syncs: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated EIO: {what}"))
}

/// In-memory storage that can crash (lose unsynced bytes) and fail fsyncs. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SimStorage {
    /// Shared with every handle opened from it.
    inner: Arc<SimInner>,
}

impl SimStorage {
    /// A new, empty simulated disk.
    pub fn new() -> SimStorage {
        SimStorage::default()
    }

    /// Simulates power loss: everything not synced is dropped, every open handle dies.
    ///
    /// With `torn = Some(seed)`, each file keeps a seeded pseudo-random prefix of its unsynced
    /// appended bytes (a torn write), instead of none of them.
    pub fn crash(&self, torn: Option<u64>) {
        let mut state = lock(&self.inner.state);
        self.inner.generation.fetch_add(1, Ordering::SeqCst);
        let mut rng = torn.map(|seed| seed ^ 0x9e37_79b9_7f4a_7c15);
        let mut paths: Vec<PathBuf> = state.durable.keys().cloned().collect();
        paths.sort();
        let mut files = HashMap::new();
        for path in paths {
            let Some(inode) = state.durable.get(&path) else {
                continue;
            };
            let old = lock(inode);
            let mut data = old.synced.clone();
            if let Some(r) = rng.as_mut()
                && old.data.len() > old.synced.len()
                && old.data.starts_with(&old.synced)
            {
                let extra = old.data.len() - old.synced.len();
                let keep = (splitmix(r) % (extra as u64 + 1)) as usize;
                data.extend_from_slice(&old.data[old.synced.len()..old.synced.len() + keep]);
            }
            drop(old);
            let inode = Arc::new(Mutex::new(Inode {
                synced: data.clone(),
                data,
            }));
            files.insert(path, inode);
        }
        state.durable = files.clone();
        state.files = files;
        state.locks.clear();
    }

    /// Failpoint: while `fail` is true, every `sync_data` returns EIO.
    pub fn fail_syncs(&self, fail: bool) {
        self.inner.fail_sync.store(fail, Ordering::SeqCst);
    }

    /// How many `sync_data` calls succeeded so far.
    pub fn sync_count(&self) -> u64 {
        self.inner.syncs.load(Ordering::SeqCst)
    }

    /// The current bytes of a file (for tests that corrupt or inspect files).
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let state = lock(&self.inner.state);
        state.files.get(path).map(|i| lock(i).data.clone())
    }

    /// Replaces the content of a file, synced (for tests that corrupt files "at rest").
    pub fn set_file_bytes(&self, path: &Path, bytes: Vec<u8>) {
        let state = lock(&self.inner.state);
        if let Some(inode) = state.files.get(path) {
            let mut inode = lock(inode);
            inode.synced = bytes.clone();
            inode.data = bytes;
        }
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A handle on a simulated file.
#[derive(Debug)]
struct SimFile {
    /// The disk, for the generation check and the failpoint.
    inner: Arc<SimInner>,
    /// The file content.
    inode: InodeRef,
    /// The generation the handle was opened in; after a crash it is dead.
    generation: u64,
}

impl SimFile {
    fn check(&self) -> io::Result<()> {
        if self.inner.generation.load(Ordering::SeqCst) != self.generation {
            return Err(eio("handle from before a crash"));
        }
        Ok(())
    }
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.check()?;
        let inode = lock(&self.inode);
        let Ok(pos) = usize::try_from(pos) else {
            return Ok(0);
        };
        if pos >= inode.data.len() {
            return Ok(0);
        }
        let n = buf.len().min(inode.data.len() - pos);
        buf[..n].copy_from_slice(&inode.data[pos..pos + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.check()?;
        let mut inode = lock(&self.inode);
        let pos = usize::try_from(pos).map_err(|_| eio("position"))?;
        let end = pos + buf.len();
        if inode.data.len() < end {
            inode.data.resize(end, 0);
        }
        inode.data[pos..end].copy_from_slice(buf);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.check()?;
        if self.inner.fail_sync.load(Ordering::SeqCst) {
            return Err(eio("fsync failpoint"));
        }
        let mut inode = lock(&self.inode);
        if inode.data.starts_with(&inode.synced) {
            let from = inode.synced.len();
            let extra = inode.data[from..].to_vec();
            inode.synced.extend_from_slice(&extra);
        } else {
            inode.synced = inode.data.clone();
        }
        self.inner.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        self.check()?;
        Ok(lock(&self.inode).data.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check()?;
        let len = usize::try_from(len).map_err(|_| eio("length"))?;
        lock(&self.inode).data.resize(len, 0);
        Ok(())
    }
}

/// Releases a simulated lock, unless a crash already released it.
struct SimLock {
    /// The disk.
    inner: Arc<SimInner>,
    /// The locked path.
    path: PathBuf,
    /// The generation the lock was taken in.
    generation: u64,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        if self.inner.generation.load(Ordering::SeqCst) == self.generation {
            lock(&self.inner.state).locks.remove(&self.path);
        }
    }
}

impl Storage for SimStorage {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StorageFile>> {
        let mut state = lock(&self.inner.state);
        let inode = match state.files.get(path) {
            Some(inode) => inode.clone(),
            None if create => {
                let inode: InodeRef = Arc::default();
                state.files.insert(path.to_path_buf(), inode.clone());
                inode
            }
            None => return Err(io::Error::from(io::ErrorKind::NotFound)),
        };
        Ok(Arc::new(SimFile {
            inner: self.inner.clone(),
            inode,
            generation: self.inner.generation.load(Ordering::SeqCst),
        }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = lock(&self.inner.state);
        Ok(state
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.inner.state);
        state
            .files
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = lock(&self.inner.state);
        let inode = state
            .files
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        state.files.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.inner.state);
        state.durable.retain(|p, _| p.parent() != Some(dir));
        let current: Vec<(PathBuf, InodeRef)> = state
            .files
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, i)| (p.clone(), i.clone()))
            .collect();
        state.durable.extend(current);
        Ok(())
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<DirLock>> {
        let mut state = lock(&self.inner.state);
        if !state.locks.insert(path.to_path_buf()) {
            return Ok(None);
        }
        Ok(Some(DirLock::new(SimLock {
            inner: self.inner.clone(),
            path: path.to_path_buf(),
            generation: self.inner.generation.load(Ordering::SeqCst),
        })))
    }
}
