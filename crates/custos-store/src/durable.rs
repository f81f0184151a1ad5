//! Durability of what this process wrote (issue 19, item 4; ADR 0034).
//!
//! A file written for a later flush is kept open here, with the directory
//! its name went into. A flush of a few files `fdatasync`s them (on several
//! threads, so the filesystem commits their metadata together) and then
//! `fsync`s their directories: it never waits for another process's dirty
//! pages, which a `syncfs` does (a put of 64 MiB beside a streaming writer:
//! 0.09-0.75 s with `syncfs`, 0.08-0.11 s so). A flush of many files —
//! more than [`PER_FILE_MAX`] — is one `syncfs` of the filesystem instead:
//! every file synced costs a device round trip, and on this project's
//! machine 12,500 of them took longer than `syncfs`, quiet (1.4 s against
//! 0.2 s for an import of 10,000 files) and beside the writer (11.1 s
//! against 4.9 s). The descriptors of the few files stay open from the
//! write to the flush, so a failed write-back is reported to them; at most
//! [`KEPT_MAX`] in the whole process (a server writes to many volumes at
//! once), past which a flush syncs the filesystem too.
//!
//! One process can have several commands writing to a volume at once (the
//! server), and a flush cannot tell whose file failed: a failed sync fails
//! every later flush of that volume in the process, not only the next one
//! (the page cache may have dropped the data that could not be written, so
//! nothing is retried). Flushes run one at a time, so that none returns
//! while a directory another flush took is still being synced.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

/// The most files a flush syncs one by one; with more, it syncs the
/// filesystem.
pub const PER_FILE_MAX: usize = 64;

/// The most written files kept open for their flush in the process.
pub const KEPT_MAX: usize = 512;

/// Written files kept open now, in the whole process.
static KEPT: AtomicUsize = AtomicUsize::new(0);

/// A written file kept open for its flush, counted in [`KEPT`].
struct Kept {
    file: File,
    path: PathBuf,
}

impl Kept {
    /// `None` (and the file closed) when [`KEPT_MAX`] are kept already.
    fn new(file: File, path: PathBuf) -> Option<Self> {
        KEPT.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < KEPT_MAX).then_some(n + 1))
            .ok()
            .map(|_| Self { file, path })
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        KEPT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Files or directories per flushing thread, and the most threads.
const PER_THREAD: usize = 4;
const MAX_THREADS: usize = 16;

/// What failed in a flush: the file or directory, and the error.
#[derive(Debug)]
pub struct FlushError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// Files and directories written below one directory (a volume, an export
/// directory) since the last flush.
pub struct Pending {
    root: PathBuf,
    state: Mutex<State>,
    /// Held for a whole flush.
    flushing: Mutex<()>,
}

#[derive(Default)]
struct State {
    files: Vec<Kept>,
    dirs: BTreeSet<PathBuf>,
    /// More than [`PER_FILE_MAX`] files came (or more than the process
    /// keeps open): the flush syncs the filesystem.
    many: bool,
    /// The first sync that failed; never cleared.
    failed: Option<Failed>,
}

/// A failed sync, told again to every later flush.
struct Failed {
    path: PathBuf,
    kind: io::ErrorKind,
    message: String,
}

impl Failed {
    fn new(e: &FlushError) -> Self {
        Self { path: e.path.clone(), kind: e.source.kind(), message: e.source.to_string() }
    }

    fn error(&self) -> FlushError {
        let message = format!(
            "{} (an earlier sync of these files failed in this process, so nothing written since can be trusted to be on disk; a new process starts clean)",
            self.message
        );
        FlushError { path: self.path.clone(), source: io::Error::new(self.kind, message) }
    }
}

impl Pending {
    /// For files and directories below `root`, which a flush of many syncs.
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_path_buf(), state: Mutex::default(), flushing: Mutex::new(()) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A file written (and in place at `path`, below the root), made
    /// durable with its directory by the next flush.
    pub fn file(&self, f: File, path: PathBuf) {
        let mut st = self.lock();
        if st.many {
            return;
        }
        let kept = if st.files.len() < PER_FILE_MAX { Kept::new(f, path) } else { None };
        let Some(kept) = kept else {
            // The flush will sync the filesystem: nothing to keep open.
            st.many = true;
            st.files.clear();
            st.dirs.clear();
            return;
        };
        if let Some(dir) = kept.path.parent() {
            if !st.dirs.contains(dir) {
                st.dirs.insert(dir.to_path_buf());
            }
        }
        st.files.push(kept);
    }

    /// A directory below the root whose entries changed (a name made or
    /// moved into it, or a directory made in it).
    pub fn dir(&self, dir: &Path) {
        let mut st = self.lock();
        if !st.many && !st.dirs.contains(dir) {
            st.dirs.insert(dir.to_path_buf());
        }
    }

    /// Make durable every file and directory recorded so far: the files,
    /// then their directories (so that no name is durable before its
    /// file's data); or, after many files, the filesystem. Fails when any
    /// sync here in this process has ever failed.
    pub fn flush(&self) -> Result<(), FlushError> {
        let _one_at_a_time = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        let w = {
            let mut st = self.lock();
            if let Some(f) = &st.failed {
                return Err(f.error());
            }
            std::mem::take(&mut *st)
        };
        let synced = if w.many {
            File::open(&self.root)
                .and_then(|d| rustix::fs::syncfs(&d).map_err(Into::into))
                .map_err(|source| FlushError { path: self.root.clone(), source })
        } else {
            in_parallel(&w.files, |k| k.file.sync_data().map_err(|source| FlushError { path: k.path.clone(), source }))
                .and_then(|()| {
                    let dirs: Vec<PathBuf> = w.dirs.into_iter().collect();
                    in_parallel(&dirs, |dir| match File::open(dir).and_then(|d| d.sync_all()) {
                        // A directory removed since (an emptied fan-out
                        // directory of a test's volume): nothing to keep.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                        Err(source) => Err(FlushError { path: dir.clone(), source }),
                        Ok(()) => Ok(()),
                    })
                })
        };
        if let Err(e) = &synced {
            self.lock().failed.get_or_insert_with(|| Failed::new(e));
        }
        synced
    }

    /// True when nothing waits for a flush.
    pub fn is_empty(&self) -> bool {
        let st = self.lock();
        st.files.is_empty() && st.dirs.is_empty() && !st.many
    }
}

/// `one` for every item, on up to [`MAX_THREADS`] threads; the first error.
fn in_parallel<T: Sync>(items: &[T], one: impl Fn(&T) -> Result<(), FlushError> + Sync) -> Result<(), FlushError> {
    let threads = items.len().div_ceil(PER_THREAD).min(MAX_THREADS);
    if threads <= 1 {
        return items.iter().try_for_each(one);
    }
    let per = items.len().div_ceil(threads);
    let one = &one;
    std::thread::scope(|s| {
        let running: Vec<_> = items.chunks(per).map(|part| s.spawn(move || part.iter().try_for_each(one))).collect();
        let mut first = Ok(());
        for r in running {
            let r = r.join().unwrap_or_else(|_| {
                Err(FlushError { path: PathBuf::new(), source: io::Error::other("a flushing thread panicked") })
            });
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}

/// The one [`Pending`] of the directory tree at `root` in this process:
/// every volume object opened on the same directory records into it, so a
/// flush through any of them covers what the others wrote.
pub fn pending_for(root: &Path) -> Arc<Pending> {
    static ROOTS: Roots<Pending> = OnceLock::new();
    shared_for(&ROOTS, root, Pending::new)
}

/// A registry of one object per volume directory in the process.
pub(crate) type Roots<T> = OnceLock<Mutex<HashMap<PathBuf, Weak<T>>>>;

/// The object `roots` holds for the directory at `root` (by its absolute
/// path), made by `make` when no volume object holds one any more.
pub(crate) fn shared_for<T>(roots: &Roots<T>, root: &Path, make: impl FnOnce(&Path) -> T) -> Arc<T> {
    let key = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
    let mut roots = roots.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = roots.get(&key).and_then(Weak::upgrade) {
        return p;
    }
    // Forget the roots no volume object holds any more.
    roots.retain(|_, p| p.strong_count() > 0);
    let p = Arc::new(make(&key));
    roots.insert(key, Arc::downgrade(&p));
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Held by the tests that count on the process's bound on kept files.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn written(dir: &Path, name: &str) -> (File, PathBuf) {
        let path = dir.join(name);
        let mut f = File::create(&path).unwrap();
        f.write_all(name.as_bytes()).unwrap();
        (f, path)
    }

    #[test]
    fn a_few_files_are_kept_open_for_the_flush_and_many_sync_the_filesystem() {
        let _serial = serial();
        let t = tempfile::tempdir().unwrap();
        let p = Pending::new(t.path());
        assert!(p.is_empty());
        for i in 0..PER_FILE_MAX {
            let (f, path) = written(t.path(), &format!("f{i}"));
            p.file(f, path);
        }
        let held = |p: &Pending| {
            let st = p.lock();
            (st.files.len(), st.dirs.len(), st.many)
        };
        assert_eq!(held(&p), (PER_FILE_MAX, 1, false));
        p.flush().unwrap();
        assert!(p.is_empty());
        // One more than a flush syncs one by one: none is kept open.
        for i in 0..=PER_FILE_MAX {
            let (f, path) = written(t.path(), &format!("g{i}"));
            p.file(f, path);
        }
        p.dir(t.path());
        assert_eq!(held(&p), (0, 0, true));
        p.flush().unwrap();
        assert!(p.is_empty());
    }

    #[test]
    fn the_process_keeps_at_most_so_many_files_open_for_flushes() {
        let _serial = serial();
        let t = tempfile::tempdir().unwrap();
        // Enough volumes of a few files each to pass the process's bound
        // (other tests running beside this one only make it come sooner).
        let volumes: Vec<Pending> = (0..KEPT_MAX / PER_FILE_MAX + 2).map(|_| Pending::new(t.path())).collect();
        for (v, p) in volumes.iter().enumerate() {
            for i in 0..PER_FILE_MAX {
                let (f, path) = written(t.path(), &format!("v{v}-{i}"));
                p.file(f, path);
                assert!(KEPT.load(Ordering::Acquire) <= KEPT_MAX);
            }
        }
        let to_the_filesystem = volumes.iter().filter(|p| p.lock().many).count();
        assert!(to_the_filesystem >= 2, "past the bound a volume's flush syncs the filesystem");
        for p in &volumes {
            p.flush().unwrap();
            assert!(p.is_empty());
        }
        drop(volumes);
        assert!(KEPT.load(Ordering::Acquire) < KEPT_MAX, "flushed files are no longer counted");
    }

    #[test]
    fn a_directory_gone_is_skipped_and_one_that_cannot_be_opened_is_named_ever_after() {
        let t = tempfile::tempdir().unwrap();
        let p = Pending::new(t.path());
        p.dir(&t.path().join("gone"));
        p.flush().unwrap();
        // A path through a file is an error that names it.
        let (f, path) = written(t.path(), "plain");
        drop(f);
        let bad = path.join("below");
        p.dir(&bad);
        let e = p.flush().unwrap_err();
        assert_eq!(e.path, bad);
        assert!(p.is_empty(), "what failed is not flushed again");
        // Every later flush fails too, naming what failed first.
        let again = p.flush().unwrap_err();
        assert_eq!(again.path, bad);
        assert!(again.source.to_string().contains("an earlier sync of these files failed"), "{}", again.source);
    }

    #[test]
    fn volumes_on_one_directory_share_what_waits() {
        let t = tempfile::tempdir().unwrap();
        let a = pending_for(t.path());
        let b = pending_for(&t.path().join("x").join(".."));
        let c = pending_for(t.path());
        assert!(Arc::ptr_eq(&a, &c));
        // `absolute` does not resolve `..`: a different spelling is a
        // different entry, which only costs a flush that finds nothing.
        assert!(!Arc::ptr_eq(&a, &b));
        let (f, path) = written(t.path(), "f");
        a.file(f, path);
        assert!(!c.is_empty());
        drop((a, c));
        assert!(pending_for(t.path()).is_empty(), "a root no volume holds starts again empty");
    }

    #[test]
    fn many_files_and_directories_flush_on_several_threads() {
        let t = tempfile::tempdir().unwrap();
        let p = Pending::new(t.path());
        for i in 0..40 {
            let d = t.path().join(format!("d{i}"));
            std::fs::create_dir(&d).unwrap();
            p.dir(&d);
            let (f, path) = written(&d, "f");
            p.file(f, path);
        }
        p.flush().unwrap();
        assert!(p.is_empty());
    }
}
