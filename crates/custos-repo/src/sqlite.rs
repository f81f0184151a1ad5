//! SQLite implementation of [`Repository`]: one database file, WAL mode,
//! foreign keys on. A write returns only once its commit is durable: the
//! writer commits with `synchronous=NORMAL` and then, having let go of the
//! connection, waits for one `fsync` of the write-ahead log that covers its
//! commit, which it shares with every writer that committed before that
//! `fsync` began (group commit, ADR 0027).

use std::path::Path;
use std::sync::Mutex;

use custos_crypto::{Kcv, Mkvp};
use custos_model::{
    BackupRecord, CheckedCopy, ChunkId, CopyCheck, CopyMethod, CustodianKey, DatasetId, DatasetName, DatasetRecord,
    EscrowCopy, GenerationRecord, HsmRule, KbkRecord, KeyLabel, KeyRecord, KeyState, KeystoreBackupRecord, Medium,
    Pattern, PolicyRecord, PolicyTarget, PrincipalRecord, Purpose, Role, SealedShare, SnapshotRecord,
    VaultBackupRecord, VolumeName, VolumeRecord, WrappedMaterial,
};
use jiff::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use crate::{
    AuditCheckpoint, AuditLink, AuditRow, BackupInsert, Garbage, GenerationCommit, RepoError, Repository, RequestRow,
    Result, Rewrap, TrashEntry, VolumeObjects,
};

/// Schema migrations, in order; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: the foundation schema.
    r#"
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE keys (
        label TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        purpose TEXT NOT NULL,
        app TEXT NOT NULL,
        wrapped BLOB,
        mkvp TEXT NOT NULL,
        kcv TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        activated_at INTEGER,
        deactivated_at INTEGER,
        destroyed_at INTEGER,
        expires_at INTEGER,
        last_used_at INTEGER,
        use_count INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE volumes (
        name TEXT PRIMARY KEY,
        location TEXT NOT NULL,
        site TEXT NOT NULL,
        medium TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE policies (
        name TEXT PRIMARY KEY,
        pattern TEXT NOT NULL,
        volume TEXT NOT NULL REFERENCES volumes(name),
        key_label TEXT,
        template INTEGER NOT NULL,
        template_app TEXT,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE datasets (
        id BLOB PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        current_generation INTEGER NOT NULL
    );
    CREATE TABLE generations (
        dataset_id BLOB NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
        generation INTEGER NOT NULL,
        volume TEXT NOT NULL REFERENCES volumes(name),
        key_label TEXT NOT NULL REFERENCES keys(label),
        size INTEGER NOT NULL,
        chunk_size INTEGER NOT NULL,
        chunk_count INTEGER NOT NULL,
        manifest_hash BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (dataset_id, generation)
    );
    CREATE INDEX generations_key ON generations(key_label);
    CREATE TABLE generation_chunks (
        dataset_id BLOB NOT NULL,
        generation INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        chunk_id BLOB NOT NULL,
        PRIMARY KEY (dataset_id, generation, idx),
        FOREIGN KEY (dataset_id, generation) REFERENCES generations(dataset_id, generation) ON DELETE CASCADE
    ) WITHOUT ROWID;
    CREATE INDEX generation_chunks_chunk ON generation_chunks(chunk_id);
    "#,
    // 2: master key change looks keys up by the master key that wraps them.
    r#"
    CREATE INDEX keys_mkvp ON keys(mkvp) WHERE wrapped IS NOT NULL;
    "#,
    // 3: keystore backups.
    r#"
    CREATE TABLE keystore_backups (
        id TEXT PRIMARY KEY,
        volume TEXT NOT NULL REFERENCES volumes(name),
        created_at INTEGER NOT NULL,
        key_count INTEGER NOT NULL,
        mkvps TEXT NOT NULL,
        sha256 BLOB NOT NULL
    );
    "#,
    // 4: escrow of data keys to key-backup keys.
    r#"
    CREATE TABLE kbks (
        id TEXT PRIMARY KEY,
        public BLOB NOT NULL,
        threshold INTEGER NOT NULL,
        custodians TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    ALTER TABLE keys ADD COLUMN escrow_kbk TEXT REFERENCES kbks(id);
    ALTER TABLE keys ADD COLUMN escrow BLOB;
    "#,
    // 5: the backup catalog.
    r#"
    CREATE TABLE backups (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        dataset TEXT NOT NULL,
        dataset_id BLOB NOT NULL,
        source_generation INTEGER NOT NULL,
        method TEXT NOT NULL,
        volume TEXT NOT NULL REFERENCES volumes(name),
        key_label TEXT NOT NULL REFERENCES keys(label),
        copy_id BLOB NOT NULL,
        generation INTEGER NOT NULL,
        size INTEGER NOT NULL,
        chunk_size INTEGER NOT NULL,
        chunk_count INTEGER NOT NULL,
        manifest_hash BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX backups_dataset ON backups(dataset);
    CREATE TABLE backup_chunks (
        backup_id INTEGER NOT NULL REFERENCES backups(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        chunk_id BLOB NOT NULL,
        PRIMARY KEY (backup_id, idx)
    ) WITHOUT ROWID;
    CREATE INDEX backup_chunks_chunk ON backup_chunks(chunk_id);
    "#,
    // 6: which source chunk each logical copy chunk was made from, so the
    // next copy can skip unchanged chunks without reading them.
    r#"
    ALTER TABLE backup_chunks ADD COLUMN source_id BLOB;
    "#,
    // 7: snapshots (pinned generations).
    r#"
    CREATE TABLE snapshots (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        dataset TEXT NOT NULL,
        dataset_id BLOB NOT NULL,
        generation INTEGER NOT NULL,
        volume TEXT NOT NULL REFERENCES volumes(name),
        key_label TEXT NOT NULL REFERENCES keys(label),
        size INTEGER NOT NULL,
        chunk_count INTEGER NOT NULL,
        manifest_hash BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE snapshot_chunks (
        snapshot_id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        chunk_id BLOB NOT NULL,
        PRIMARY KEY (snapshot_id, idx)
    ) WITHOUT ROWID;
    CREATE INDEX snapshot_chunks_chunk ON snapshot_chunks(chunk_id);
    "#,
    // 8: synchronous mirrors of volumes.
    r#"
    CREATE TABLE mirrors (
        primary_volume TEXT PRIMARY KEY REFERENCES volumes(name),
        secondary_volume TEXT NOT NULL UNIQUE REFERENCES volumes(name),
        created_at INTEGER NOT NULL
    );
    "#,
    // 9: storage management (`hsm run`): rules, last access, migration marks.
    r#"
    CREATE TABLE hsm_rules (
        name TEXT PRIMARY KEY,
        pattern TEXT NOT NULL,
        method TEXT NOT NULL,
        backup_to TEXT REFERENCES volumes(name),
        keep_last INTEGER NOT NULL,
        keep_daily INTEGER NOT NULL,
        keep_monthly INTEGER NOT NULL,
        keep_yearly INTEGER NOT NULL,
        migrate_after_days INTEGER,
        migrate_to TEXT REFERENCES volumes(name),
        created_at INTEGER NOT NULL
    );
    ALTER TABLE datasets ADD COLUMN last_access INTEGER;
    ALTER TABLE datasets ADD COLUMN migrated_from TEXT REFERENCES volumes(name);
    "#,
    // 10: governance: the audit log (a hash chain with authenticated
    // checkpoints), principals and grants, dual-control requests, and
    // scheduled key destruction.
    r#"
    CREATE TABLE audit_log (
        seq INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        principal TEXT NOT NULL,
        action TEXT NOT NULL,
        object TEXT NOT NULL,
        result TEXT NOT NULL,
        hash BLOB NOT NULL
    );
    CREATE TABLE audit_checkpoints (
        seq INTEGER PRIMARY KEY,
        head BLOB NOT NULL,
        at INTEGER NOT NULL,
        mac BLOB NOT NULL
    );
    CREATE TABLE principals (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        credential TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE grants (
        principal TEXT NOT NULL REFERENCES principals(name),
        kind TEXT NOT NULL,
        pattern TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (principal, kind, pattern)
    );
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        action TEXT NOT NULL,
        args TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        state TEXT NOT NULL,
        decided_by TEXT,
        decided_at INTEGER
    );
    ALTER TABLE keys ADD COLUMN destroy_after INTEGER;
    "#,
    // 11: objects released by the catalog, awaiting deletion from their
    // volumes (kind 'chunk' with generation 0, or 'manifest'); `claimed`
    // once a deleter has taken them, after which no commit may use them.
    r#"
    CREATE TABLE trash (
        volume TEXT NOT NULL,
        kind TEXT NOT NULL,
        object BLOB NOT NULL,
        generation INTEGER NOT NULL,
        released_at INTEGER NOT NULL,
        claimed INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (volume, kind, object, generation)
    ) WITHOUT ROWID;
    CREATE INDEX trash_released ON trash(claimed, released_at);
    "#,
    // 12: custodians' registered recipients, and each key-backup key's
    // shares sealed to them; deleted objects' tombstones carry the number of
    // their deletion (the setting `trash.deletions` counts them).
    r#"
    ALTER TABLE trash ADD COLUMN deleted_seq INTEGER;
    CREATE TABLE custodian_keys (
        principal TEXT PRIMARY KEY REFERENCES principals(name),
        public BLOB NOT NULL UNIQUE,
        registered_at INTEGER NOT NULL
    );
    CREATE TABLE escrow_shares (
        kbk TEXT NOT NULL REFERENCES kbks(id),
        custodian TEXT NOT NULL,
        recipient BLOB NOT NULL,
        sealed BLOB NOT NULL,
        confirm BLOB NOT NULL,
        confirmed_at INTEGER,
        PRIMARY KEY (kbk, custodian)
    ) WITHOUT ROWID;
    "#,
    // 13: a claim in the trash names its deleter's session, so that only a
    // deleter that is gone has its claims taken over.
    r#"
    ALTER TABLE trash ADD COLUMN claimed_by TEXT;
    "#,
    // 14: audit entries chained under the audit key (an HMAC) rather than
    // by SHA-256 alone, when the HSM was open as they were written.
    r#"
    ALTER TABLE audit_log ADD COLUMN keyed INTEGER NOT NULL DEFAULT 0;
    "#,
    // 15: vault backups (the catalog and the HSM's state, sealed, on a volume).
    r#"
    CREATE TABLE vault_backups (
        id TEXT PRIMARY KEY,
        volume TEXT NOT NULL REFERENCES volumes(name),
        created_at INTEGER NOT NULL,
        audit_seq INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    );
    "#,
    // 16: a MAC on every row of the tables that decide security, under the
    // HSM's catalog key (ADR 0019); NULL until the catalog is sealed.
    r#"
    ALTER TABLE settings ADD COLUMN mac BLOB;
    ALTER TABLE keys ADD COLUMN mac BLOB;
    ALTER TABLE volumes ADD COLUMN mac BLOB;
    ALTER TABLE policies ADD COLUMN mac BLOB;
    ALTER TABLE hsm_rules ADD COLUMN mac BLOB;
    ALTER TABLE principals ADD COLUMN mac BLOB;
    ALTER TABLE grants ADD COLUMN mac BLOB;
    ALTER TABLE requests ADD COLUMN mac BLOB;
    ALTER TABLE kbks ADD COLUMN mac BLOB;
    ALTER TABLE keystore_backups ADD COLUMN mac BLOB;
    ALTER TABLE vault_backups ADD COLUMN mac BLOB;
    ALTER TABLE custodian_keys ADD COLUMN mac BLOB;
    ALTER TABLE escrow_shares ADD COLUMN mac BLOB;
    ALTER TABLE backups ADD COLUMN mac BLOB;
    ALTER TABLE snapshots ADD COLUMN mac BLOB;
    ALTER TABLE mirrors ADD COLUMN mac BLOB;
    "#,
    // 17: idempotency keys of requests servers carried out (or are carrying
    // out), so a client's retry on another server never runs one twice.
    r#"
    CREATE TABLE idempotency (
        key TEXT PRIMARY KEY,
        principal TEXT NOT NULL,
        request BLOB NOT NULL,
        state TEXT NOT NULL,
        owner TEXT NOT NULL,
        status INTEGER,
        reply BLOB,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX idempotency_created ON idempotency(created_at);
    "#,
    // 18: re-encipherment pages through the keys under one master key in
    // label order: an index on the master key alone made each page read
    // and sort every key still under it (a million keys: quadratic).
    r#"
    DROP INDEX keys_mkvp;
    CREATE INDEX keys_mkvp_label ON keys(mkvp, label) WHERE wrapped IS NOT NULL;
    "#,
    // 19: the software HSM's sealed state, for vaults whose servers share
    // the catalog (one row; its generation moves on every change).
    r#"
    CREATE TABLE hsm_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        generation INTEGER NOT NULL,
        sealed BLOB NOT NULL
    );
    "#,
    // 20: the keys pending destruction, which every server looks for once
    // a second: without an index that was a scan of the whole keystore.
    r#"
    CREATE INDEX keys_destroy_after ON keys(destroy_after, label) WHERE destroy_after IS NOT NULL;
    "#,
    // 21: a backup's copy object, looked up before each backup is recorded
    // (at most one record per object): without an index, a scan of every
    // backup, so a run of many copies took time in their square.
    r#"
    CREATE INDEX backups_copy ON backups(volume, copy_id, generation);
    "#,
    // 22: the last check of each copy's bytes (`backup verify`, `snapshot
    // verify`, `fsck --read-data`), which the risk model reads: a copy
    // found damaged saves nothing. NULL until checked.
    r#"
    ALTER TABLE backups ADD COLUMN checked_at INTEGER;
    ALTER TABLE backups ADD COLUMN checked_data INTEGER;
    ALTER TABLE backups ADD COLUMN check_problem TEXT;
    ALTER TABLE snapshots ADD COLUMN checked_at INTEGER;
    ALTER TABLE snapshots ADD COLUMN checked_data INTEGER;
    ALTER TABLE snapshots ADD COLUMN check_problem TEXT;
    "#,
    // 23: what KMIP clients record about a key (names, length, usage
    // mask, revocation; JSON), inside the row's MAC. NULL when none.
    r#"
    ALTER TABLE keys ADD COLUMN attributes TEXT;
    "#,
    // 24: each dataset's last drill under each threat or pair (`risk
    // drill`), shown beside the model's verdict; authenticated rows.
    r#"
    CREATE TABLE drills (
        dataset TEXT NOT NULL,
        threats TEXT NOT NULL,
        at INTEGER NOT NULL,
        survived INTEGER NOT NULL,
        agrees INTEGER NOT NULL,
        how TEXT NOT NULL,
        by_principal TEXT NOT NULL,
        mac BLOB,
        PRIMARY KEY (dataset, threats)
    );
    "#,
];

/// The embedded repository: one connection that writes, and read-only
/// connections beside it (WAL lets them read while a write commits), so a
/// lookup never waits behind another caller's fsync.
pub struct SqliteRepository {
    conn: std::sync::Arc<Mutex<Connection>>,
    /// Takes erased key material out of the write-ahead log.
    eraser: std::sync::Arc<Eraser>,
    /// Makes commits durable, for a database in a file.
    durable: Option<GroupSync>,
    /// The database file, for opening readers (`None` in memory: reads go
    /// through the writer).
    path: Option<std::path::PathBuf>,
    /// Idle read-only connections (shared with threads' snapshots, which
    /// give theirs back here).
    readers: std::sync::Arc<Mutex<Vec<Connection>>>,
    /// Which repository this is, for threads' snapshots.
    id: u64,
    /// Who this repository is when it claims objects for deletion (made on
    /// the first claim).
    session: Mutex<Option<Session>>,
    /// Row authentication, shared by every connection's SQL functions.
    rows: std::sync::Arc<crate::rowauth::Shared>,
    /// Principals and settings remembered between reads
    /// ([`Repository::set_read_cache`]).
    cache: std::sync::Arc<ReadCache>,
}

/// The tables whose rows [`ReadCache`] remembers.
const CACHED_TABLES: [&str; 3] = ["principals", "grants", "settings"];

/// At most this many principals, and as many settings, are remembered
/// (names a caller sends that are no principal's are remembered too, as
/// unknown): past it, everything is forgotten and read again.
const CACHED_MOST: usize = 4096;

/// Principals (with their grants) and settings remembered between reads,
/// for a server ([`Repository::set_read_cache`]). What is remembered is
/// used while it is younger than the maximum age and no commit of this
/// repository's writer changed a row of [`CACHED_TABLES`] since it was
/// read: the writer's update hook marks such a change, and the writer
/// raises `epoch` after the transaction, before the next writer may begin.
/// A value is read in a read transaction of its own that begins after
/// `epoch` was read, never in a thread's older snapshot, so it is never
/// older than the epoch it is remembered under.
#[derive(Default)]
struct ReadCache {
    /// The maximum age, in microseconds; 0: nothing is remembered.
    max_age_us: std::sync::atomic::AtomicU64,
    /// Raised after each commit that changed a cached table.
    epoch: std::sync::atomic::AtomicU64,
    /// Set by the writer's update hook when a row of a cached table changes.
    touched: std::sync::atomic::AtomicBool,
    principals: Mutex<std::collections::HashMap<String, Remembered<Option<PrincipalRecord>>>>,
    settings: Mutex<std::collections::HashMap<String, Remembered<Option<String>>>>,
}

struct Remembered<T> {
    epoch: u64,
    /// When the read that found it began.
    read_at: std::time::Instant,
    value: T,
}

impl ReadCache {
    fn on(&self) -> bool {
        self.max_age_us.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// The value remembered for `key` in `map`, or `read()`'s, remembered.
    fn get<T: Clone>(
        &self,
        map: &Mutex<std::collections::HashMap<String, Remembered<T>>>,
        key: &str,
        read: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let max_age = std::time::Duration::from_micros(self.max_age_us.load(std::sync::atomic::Ordering::Relaxed));
        let epoch = self.epoch.load(std::sync::atomic::Ordering::Acquire);
        if let Some(r) = map.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
            if r.epoch == epoch && r.read_at.elapsed() < max_age {
                return Ok(r.value.clone());
            }
        }
        let read_at = std::time::Instant::now();
        let value = read()?;
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= CACHED_MOST {
            m.clear();
        }
        m.insert(key.to_string(), Remembered { epoch, read_at, value: value.clone() });
        Ok(value)
    }

    /// Forget everything remembered (a commit changed a cached table, or
    /// the rows' authentication changed).
    fn forget(&self) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Run a query (its `@ok` already expanded) on `conn` and collect every row.
fn query_all_on<T, P: rusqlite::Params>(
    conn: &Connection,
    action: &'static str,
    sql: &str,
    params: P,
    row: impl FnMut(&Row) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql).map_err(db(action))?;
    let rows = stmt.query_map(params, row).map_err(db(action))?;
    rows.collect::<rusqlite::Result<_>>().map_err(db(action))
}

/// A deleter's identity while its repository is open. Claims in the trash
/// name it, so that another deleter takes them over only once it is gone:
/// beside a catalog file, it holds an exclusive lock on a file of its own
/// (the kernel drops the lock when the process dies, however it dies).
struct Session {
    token: String,
    lock: Option<(std::fs::File, std::path::PathBuf)>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some((_, path)) = self.lock.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Where the session lock files of the catalog at `path` live.
fn sessions_dir(path: &Path) -> std::path::PathBuf {
    path.with_extension("sessions")
}

impl Drop for SqliteRepository {
    /// Readers close first, so that the writer is the last connection to
    /// close: SQLite then checkpoints the WAL into `custos.db` and removes
    /// it (a read-only connection closing last could not), and a clean exit
    /// leaves the catalog in one file, as before readers existed.
    fn drop(&mut self) {
        // An erasure still waiting for its lag is done now: a command that
        // destroyed a key does not leave its material behind as it exits.
        {
            let mut st = self.eraser.state.lock().unwrap_or_else(|p| p.into_inner());
            st.closed = true;
            if st.due {
                let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
                let _ = truncate_log(&conn);
            }
        }
        self.readers.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.session.get_mut().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Group commit: the write-ahead log of one database file, and how far it
/// is known durable. Commits are counted by the writer connection's change
/// counter (`total_changes`, which only grows); one `fsync` of the log
/// makes every commit written before it began durable, so writers that
/// commit while another waits for the disk share its next `fsync`.
struct GroupSync {
    wal: std::path::PathBuf,
    dir: std::path::PathBuf,
    /// The writer's change count after the last commit written (set while
    /// the writer is still held, so every change up to it is in the log).
    written: std::sync::atomic::AtomicU64,
    /// The writer's change count that the last `fsync` covered, and
    /// whether the directory (which holds the log's name) was synced.
    synced: Mutex<(u64, bool)>,
    /// How many times the log was synced (for tests and figures).
    fsyncs: std::sync::atomic::AtomicU64,
}

impl GroupSync {
    fn new(db: &Path) -> Self {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        let dir = db.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        Self {
            wal: wal.into(),
            dir,
            written: std::sync::atomic::AtomicU64::new(0),
            synced: Mutex::new((0, false)),
            fsyncs: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// [`reach`](GroupSync::reach), or stop the process: nothing may be
    /// acknowledged after a log that could not be made durable.
    fn reach_or_stop(&self, upto: u64) {
        if let Err(e) = self.reach(upto) {
            eprintln!(
                "custos: the catalog's write-ahead log {} could not be made durable ({e}); stopping before anything else is acknowledged. Check the disk, then run the command again: the catalog recovers to its last durable state",
                self.wal.display()
            );
            std::process::abort();
        }
    }

    /// Make the log durable up to change count `upto` (written already).
    fn reach(&self, upto: u64) -> std::io::Result<()> {
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if synced.0 >= upto {
            // Another writer's fsync, begun after this commit was written, covered it.
            return Ok(());
        }
        // Everything written by now is covered by the fsync about to run.
        let covers = self.written.load(std::sync::atomic::Ordering::Acquire).max(upto);
        self.fsyncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match std::fs::File::open(&self.wal) {
            Ok(f) => f.sync_data()?,
            // No log: the last connection checkpointed it into the database
            // file (and synced that) and removed it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if !synced.1 {
            std::fs::File::open(&self.dir)?.sync_all()?;
            synced.1 = true;
        }
        synced.0 = synced.0.max(covers);
        Ok(())
    }
}

/// Erasures of key material waiting for the write-ahead log to be
/// truncated (see [`SqliteRepository::erase_log`]).
#[derive(Default)]
struct Eraser {
    /// How long an erasure may wait for its checkpoint, in microseconds
    /// (0: the erasing command checkpoints before it returns).
    lag_us: std::sync::atomic::AtomicU64,
    state: Mutex<EraseState>,
    wake: std::sync::Condvar,
    /// Whether the eraser thread was started (once asked for).
    thread: std::sync::OnceLock<bool>,
}

#[derive(Default)]
struct EraseState {
    /// The writer's change count up to which the log was truncated.
    erased: u64,
    /// Whether an erasure waits for the eraser thread's checkpoint.
    due: bool,
    /// Whether the repository closed (the thread ends).
    closed: bool,
}

impl Eraser {
    fn lag(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.lag_us.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Checkpoint the whole write-ahead log into the database file and
/// truncate it; false when readers kept it from finishing.
fn truncate_log(conn: &Connection) -> Result<bool> {
    conn.query_row_c("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0))
        .map(|busy| busy == 0)
        .map_err(db("checkpoint after erasing key material"))
}

/// The largest write-ahead log whose room the eraser gives back with
/// zeros ([`zero_log`]); a larger one (left by a large transaction) is
/// only truncated.
const ZERO_LOG_MAX: u64 = 4 << 20;

/// Checkpoint the whole write-ahead log into the database file and
/// truncate it ([`truncate_log`]), then, while no writer can write, write
/// zeros over as many bytes as the log held before, and sync them; false
/// when readers kept the checkpoint from finishing.
///
/// Why the zeros: a log truncated to nothing grows again with every
/// commit, and on ext4 each `fdatasync` of a file that grew also writes
/// its inode, in a second wait for the disk (an append and `fdatasync` of
/// 12 KiB took 302 µs here, an overwrite 133 µs). With the log's blocks
/// written already, commits overwrite them and each waits once.
///
/// Why it is safe: after the truncating checkpoint every frame is in the
/// database file, and SQLite's shared index says the log holds no frame,
/// so readers ignore the log and the next writer writes a new header at
/// its first byte, then its frames. The zeros are written under the write
/// lock (`BEGIN IMMEDIATE`), and only if the log is still empty: if a
/// writer of another process wrote in between, the log is left as it is.
/// A log of zeros has no valid header, and SQLite reads it as empty after
/// a crash. The erasure itself is the truncation: the zeros only give the
/// log its room back, and a failure to write them is not one of erasing.
fn zero_log(conn: &Connection) -> Result<bool> {
    use std::io::Write;
    let wal = conn.path().filter(|p| !p.is_empty()).map(|p| format!("{p}-wal"));
    let room = wal.as_ref().and_then(|w| std::fs::metadata(w).ok()).map_or(0, |m| m.len());
    if !truncate_log(conn)? {
        return Ok(false);
    }
    let Some(wal) = wal.filter(|_| room > 0 && room <= ZERO_LOG_MAX) else { return Ok(true) };
    let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&wal) else { return Ok(true) };
    if conn.execute_batch("BEGIN IMMEDIATE").is_err() {
        return Ok(true);
    }
    let _ = (|| -> std::io::Result<()> {
        if f.metadata()?.len() != 0 {
            return Ok(());
        }
        let zeros = vec![0u8; 1 << 20];
        let mut left = room;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        f.sync_data()
    })();
    let _ = conn.execute_batch("ROLLBACK");
    Ok(true)
}

/// Pages after which a commit checkpoints the log, where the eraser
/// gives the log its room back with zeros ([`zero_log`]): a log of about
/// 1 MiB instead of SQLite's 4 MiB, a quarter of the zeros. In five runs
/// taking turns with SQLite's 1,000 pages (measured with the eraser's
/// first version, which zeroed the log in place: ADR 0037), KMIP
/// Create+Get+Destroy cycles' p99 fell from 10-13 ms to 8-10 ms at 8
/// clients and from 60-113 ms to 28-99 ms at 32; the rate at 32 clients
/// averaged 1,790 a second against 1,650, and at 8, 1,640 against 1,710
/// (within this machine's spread). 128 pages was no better.
const ERASED_LOG_PAGES: i64 = 256;

/// SQLite's own default for the same.
const SQLITE_LOG_PAGES: i64 = 1000;

/// The writer connection, held. Dropped, it lets go of the connection and
/// then, if the holder changed anything, waits until the log is durable up
/// to its changes. A log that cannot be made durable stops the process:
/// the write was committed and others may have read it, and going on would
/// acknowledge what a crash can undo (the lesson of PostgreSQL's fsync
/// failures: the kernel may drop the dirty pages, so a retry proves nothing).
struct Writer<'a> {
    guard: Option<std::sync::MutexGuard<'a, Connection>>,
    sync: Option<&'a GroupSync>,
    cache: &'a ReadCache,
    /// The change count when it was taken.
    changes: u64,
}

impl std::ops::Deref for Writer<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Writer<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.guard.as_mut().expect("held until dropped")
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else { return };
        // The transaction is over (committed or not) and no other writer
        // has begun: what was read of a table it changed is forgotten.
        if self.cache.touched.swap(false, std::sync::atomic::Ordering::AcqRel) {
            self.cache.forget();
        }
        let now = guard.total_changes();
        let Some(sync) = self.sync.filter(|_| now != self.changes) else { return };
        sync.written.fetch_max(now, std::sync::atomic::Ordering::Release);
        drop(guard);
        if crate::unsynced() {
            // In the log, in order: the caller's next durable commit covers it.
            return;
        }
        sync.reach_or_stop(now);
    }
}

/// A read-only connection from the pool (or the writer, in memory), put
/// back when dropped.
enum Reader<'a> {
    Pooled(&'a SqliteRepository, Option<Connection>),
    /// This thread's snapshot (`crate::with_snapshot`), lent out.
    Pinned(&'a SqliteRepository, Option<Connection>),
    Writer(Writer<'a>),
}

static NEXT_REPO_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A thread's snapshot (`crate::with_snapshot`): a read connection of one
/// repository, in a read transaction.
enum Pin {
    None,
    /// Idle, kept for this thread's next read of `repo`.
    Held {
        repo: u64,
        conn: Connection,
        pool: std::sync::Weak<Mutex<Vec<Connection>>>,
    },
    /// In use by a [`Reader`]; `end`: the snapshot was ended meanwhile, so
    /// its transaction ends when the reader is dropped.
    Lent {
        repo: u64,
        end: bool,
    },
}

thread_local! {
    static PINNED: std::cell::RefCell<Pin> = const { std::cell::RefCell::new(Pin::None) };
}

/// End this thread's snapshot: its transaction now, or, while lent out,
/// when its reader is dropped.
pub(crate) fn end_pinned() {
    let held = PINNED.with(|p| {
        let mut p = p.borrow_mut();
        match &mut *p {
            Pin::None => Pin::None,
            Pin::Lent { end, .. } => {
                *end = true;
                Pin::None
            }
            Pin::Held { .. } => std::mem::replace(&mut *p, Pin::None),
        }
    });
    if let Pin::Held { conn, pool, .. } = held {
        unpin(conn, &pool);
    }
}

/// End a snapshot's read transaction and give its connection back to the
/// pool (a connection that will not leave its transaction is closed).
fn unpin(conn: Connection, pool: &std::sync::Weak<Mutex<Vec<Connection>>>) {
    let _ = conn.execute_batch("COMMIT");
    if !conn.is_autocommit() {
        return;
    }
    if let Some(pool) = pool.upgrade() {
        give_back(&pool, conn);
    }
}

/// Keep an idle read connection for reuse, up to [`MAX_IDLE_READERS`].
fn give_back(pool: &Mutex<Vec<Connection>>, conn: Connection) {
    let mut idle = pool.lock().unwrap_or_else(|p| p.into_inner());
    if idle.len() < MAX_IDLE_READERS {
        idle.push(conn);
    }
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        match self {
            Reader::Pooled(_, c) | Reader::Pinned(_, c) => c.as_ref().expect("held until dropped"),
            Reader::Writer(g) => g,
        }
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        match self {
            Reader::Pooled(repo, c) => {
                if let Some(c) = c.take() {
                    give_back(&repo.readers, c);
                }
            }
            Reader::Pinned(repo, c) => {
                let Some(c) = c.take() else { return };
                let pool = std::sync::Arc::downgrade(&repo.readers);
                let id = repo.id;
                // Back to this thread's snapshot, unless it was ended while lent.
                let done = PINNED.with(move |p| {
                    let mut p = p.borrow_mut();
                    match &*p {
                        Pin::Lent { repo, end: false } if *repo == id && crate::snapshot_wanted() => {
                            *p = Pin::Held { repo: id, conn: c, pool };
                            None
                        }
                        Pin::Lent { repo, .. } if *repo == id => {
                            *p = Pin::None;
                            Some((c, pool))
                        }
                        _ => Some((c, pool)),
                    }
                });
                if let Some((c, pool)) = done {
                    unpin(c, &pool);
                }
            }
            Reader::Writer(_) => {}
        }
    }
}

/// Compiled statements kept per connection.
const STATEMENT_CACHE: usize = 256;

/// Statements run through the connection's cache of prepared statements:
/// preparing one again for every call was a quarter of the CPU of an
/// import of many small files (issue 19).
trait Cached {
    fn query_row_c<T, P: rusqlite::Params, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T>;
    fn execute_c<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
}

impl Cached for Connection {
    fn query_row_c<T, P: rusqlite::Params, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
    fn execute_c<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }
}

/// Read connections kept open for reuse: as many as a server's threads
/// read at once (a KMIP connection has a thread). With 8, thirty-two KMIP
/// clients opened and closed connections all the time, each new one
/// compiling its statements afresh: Get p99 17.7 ms and 570 to 680
/// Create+Get+Destroy cycles a second, against 6.4 to 8.0 ms and 930 to
/// 1,110 with 64 (docs/PERFORMANCE.md). An idle connection holds a file
/// descriptor and the pages it last read (at most SQLite's 2 MiB cache).
const MAX_IDLE_READERS: usize = 64;

/// How long a command waits for another to release the catalog.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

fn db(action: &'static str) -> impl Fn(rusqlite::Error) -> RepoError {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseCorrupt, DatabaseLocked, NotADatabase};
    move |source| match source.sqlite_error_code() {
        _ if crate::rowauth::parse(&source).is_some() => {
            let (kind, table, row, why) = crate::rowauth::parse(&source).expect("checked");
            if kind == crate::rowauth::FAULT {
                RepoError::Tampered { table, row, why }
            } else {
                RepoError::NeedsKey { table, row }
            }
        }
        Some(DatabaseBusy | DatabaseLocked) => RepoError::Busy { action, waited_secs: BUSY_TIMEOUT.as_secs() },
        Some(NotADatabase | DatabaseCorrupt) => {
            RepoError::NotACatalog { path: "custos.db".into(), why: format!("{source}, while trying to {action}") }
        }
        _ => RepoError::Database { action, source },
    }
}

fn ts(t: Timestamp) -> i64 {
    t.as_microsecond()
}

fn from_ts(v: i64) -> rusqlite::Result<Timestamp> {
    Timestamp::from_microsecond(v)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Integer, Box::new(e)))
}

fn opt_ts(v: Option<i64>) -> rusqlite::Result<Option<Timestamp>> {
    v.map(from_ts).transpose()
}

/// A copy's last check, from its three columns.
fn check_from(at: Option<i64>, data: Option<i64>, problem: Option<String>) -> rusqlite::Result<Option<CopyCheck>> {
    Ok(match at {
        Some(at) => Some(CopyCheck { at: from_ts(at)?, read_data: data.unwrap_or(0) != 0, problem }),
        None => None,
    })
}

fn corrupt(what: impl Into<String>) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        Box::new(std::io::Error::other(what.into())),
    )
}

fn id16(v: Vec<u8>) -> rusqlite::Result<[u8; 16]> {
    v.try_into().map_err(|_| corrupt("16-byte id"))
}

impl SqliteRepository {
    /// Set one column of a principal's row (its MAC follows by trigger).
    fn update_principal(
        &self,
        name: &str,
        column: &str,
        value: &dyn rusqlite::ToSql,
        action: &'static str,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db(action))?;
        let admins = |tx: &Transaction| -> Result<i64> {
            tx.query_row_c(crate::ENABLED_ADMINS_SQL, [], |r| r.get(0)).map_err(db(action))
        };
        let before = admins(&tx)?;
        let n = tx
            .execute_c(&format!("UPDATE principals SET {column} = ?2 WHERE name = ?1"), params![name, value])
            .map_err(db(action))?;
        if n == 0 {
            return Err(RepoError::NotFound { kind: "user", name: name.into() });
        }
        if before > 0 && admins(&tx)? == 0 {
            return Err(RepoError::LastAdmin { name: name.into() });
        }
        tx.commit().map_err(db(action))
    }

    /// Delete every key record: the keystore lost as a whole, for a risk
    /// drill on a scratch copy of a catalog (never a live one). Returns how
    /// many records went.
    pub fn drill_erase_keystore(&self) -> Result<u64> {
        // What references the keys (generations, backups) stays, dangling,
        // as it would after the keystore's loss.
        let c = self.conn();
        c.execute_batch("PRAGMA foreign_keys = OFF").map_err(db("erase the keystore"))?;
        let n = c.execute_c("DELETE FROM keys", []).map_err(db("erase the keystore"));
        c.execute_batch("PRAGMA foreign_keys = ON").map_err(db("erase the keystore"))?;
        Ok(n? as u64)
    }

    /// Open (creating if needed) the database at `path` and bring its schema
    /// up to date.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).map_err(db("open the database"))?;
        Self::setup(conn, &path.display().to_string()).map(|r| r.with_path(path))
    }

    fn with_path(mut self, path: &Path) -> Self {
        self.path = Some(path.to_path_buf());
        // Commits write the log without an fsync; `Writer` makes them
        // durable before the caller goes on.
        let normal = self.conn().execute_batch("PRAGMA synchronous=NORMAL");
        self.durable = Some(GroupSync::new(path));
        if normal.is_err() {
            // Still FULL: every commit durable on its own, as before.
            self.durable = None;
        }
        self
    }

    /// Open the catalog of an existing vault. A file that is empty,
    /// truncated, damaged or not a Custos catalog is refused, never taken
    /// for a new one: nothing is written to it.
    pub fn open_existing(path: &Path) -> Result<Self> {
        let not = |why: String| RepoError::NotACatalog { path: path.display().to_string(), why };
        let meta = std::fs::metadata(path).map_err(|e| not(e.to_string()))?;
        if meta.len() == 0 {
            return Err(not("the file is empty".into()));
        }
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| not(e.to_string()))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db("set the busy timeout"))?;
        let check = || -> rusqlite::Result<(i64, bool)> {
            let version: i64 = conn.query_row_c("PRAGMA user_version", [], |r| r.get(0))?;
            let ours: bool = conn.query_row_c(
                "SELECT COUNT(*) = 3 FROM sqlite_master WHERE type = 'table' AND name IN ('settings', 'keys', 'datasets')",
                [],
                |r| r.get(0),
            )?;
            Ok((version, ours))
        };
        match check() {
            Ok((v, true)) if v >= 1 => Self::setup(conn, &path.display().to_string()).map(|r| r.with_path(path)),
            Ok(_) => Err(not("it holds no Custos schema".into())),
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                ) =>
            {
                Err(db("read the catalog")(e))
            }
            Err(e) => Err(not(e.to_string())),
        }
    }

    /// A private in-memory repository, for tests.
    pub fn in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(db("open the database"))?;
        Self::setup(conn, ":memory:")
    }

    fn setup(mut conn: Connection, path: &str) -> Result<Self> {
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db("set the busy timeout"))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA secure_delete=ON;",
        )
        .map_err(db("configure the database"))?;
        let version: i64 =
            conn.query_row_c("PRAGMA user_version", [], |r| r.get(0)).map_err(db("read the schema version"))?;
        let supported = MIGRATIONS.len() as i64;
        if version > supported {
            return Err(RepoError::SchemaTooNew { path: path.into(), found: version, supported });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db("start a migration"))?;
            tx.execute_batch(sql).map_err(db("migrate the schema"))?;
            tx.pragma_update(None, "user_version", i as i64 + 1).map_err(db("record the schema version"))?;
            tx.commit().map_err(db("commit a migration"))?;
        }
        // Custos makes no triggers or views in the catalog: one there was
        // put there to run inside Custos's own connection (where it could
        // change rows that would then be sealed), so the catalog is refused.
        let foreign: Vec<String> = conn
            .prepare("SELECT type || ' ' || name FROM sqlite_master WHERE type IN ('trigger', 'view') ORDER BY name")
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
            .map_err(db("read the schema"))?;
        if !foreign.is_empty() {
            return Err(RepoError::Tampered {
                table: "sqlite_master".into(),
                row: foreign.join(", "),
                why: "is not Custos's (Custos makes no triggers or views)".into(),
            });
        }
        let rows = std::sync::Arc::new(crate::rowauth::Shared::load(&conn).map_err(db("read the schema"))?);
        // Statements that touch authenticated tables compile their triggers
        // too: keep more of them compiled.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        crate::rowauth::register(&conn, &rows).map_err(db("register the row functions"))?;
        conn.execute_batch(&rows.triggers()).map_err(db("make the row triggers"))?;
        let cache = std::sync::Arc::new(ReadCache::default());
        let seen = cache.clone();
        conn.update_hook(Some(move |_: rusqlite::hooks::Action, _: &str, table: &str, _: i64| {
            if CACHED_TABLES.contains(&table) {
                seen.touched.store(true, std::sync::atomic::Ordering::Release);
            }
        }));
        Ok(Self {
            conn: std::sync::Arc::new(Mutex::new(conn)),
            eraser: Default::default(),
            durable: None,
            path: None,
            readers: Default::default(),
            id: NEXT_REPO_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            session: Mutex::new(None),
            rows,
            cache,
        })
    }

    /// `sql` with each `@ok(table)` replaced by the expression that checks
    /// that table's row (ADR 0019).
    fn sql(&self, sql: &str) -> String {
        let mut out = String::with_capacity(sql.len() + 256);
        let mut rest = sql;
        while let Some(at) = rest.find("@ok(") {
            out.push_str(&rest[..at]);
            let end = rest[at..].find(')').map_or(rest.len(), |e| at + e);
            let table = &rest[at + 4..end];
            match self.rows.checks.get(table) {
                Some(c) => out.push_str(c),
                None => out.push_str(&self.rows.check_expr(table, table)),
            }
            rest = &rest[(end + 1).min(rest.len())..];
        }
        out.push_str(rest);
        out
    }

    /// The writer connection. When the caller lets go of it, what it
    /// committed is made durable before it goes on (see [`Writer`]).
    fn conn(&self) -> Writer<'_> {
        // This thread reads its own writes: its snapshot ends first.
        end_pinned();
        let guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let changes = guard.total_changes();
        Writer { guard: Some(guard), sync: self.durable.as_ref(), cache: &self.cache, changes }
    }

    /// Copy the write-ahead log into the database file and truncate it,
    /// once everything this process committed before the call is in the
    /// file: material a commit erased then lingers in neither (the file's
    /// freed cells are zeroed, `secure_delete`). Callers that commit while
    /// another waits for its checkpoint share the next one, as commits
    /// share an `fsync`. With a lag set ([`Repository::set_erase_lag`]),
    /// the checkpoint is left to the repository's eraser thread, which
    /// runs it that long after the first erasure it has not covered (one
    /// checkpoint for every erasure in between) and then gives the log
    /// its room back with zeros ([`zero_log`]), and this returns at once;
    /// a repository closed meanwhile runs it as it closes. A checkpoint
    /// that readers keep from finishing (the busy timeout passed) is left
    /// to the next erasure (with a lag: tried again after it).
    fn erase_log(&self) -> Result<()> {
        let Some(sync) = &self.durable else {
            truncate_log(&self.conn())?;
            return Ok(());
        };
        if !self.eraser.lag().is_zero() && self.start_eraser() {
            self.eraser.state.lock().unwrap_or_else(|p| p.into_inner()).due = true;
            self.eraser.wake.notify_one();
            return Ok(());
        }
        // No lag (or no thread to wait for it): now, grouped with erasures
        // committed while this one waits.
        let mut st = self.eraser.state.lock().unwrap_or_else(|p| p.into_inner());
        let upto = sync.written.load(std::sync::atomic::Ordering::Acquire);
        if st.erased >= upto {
            // A checkpoint begun after this caller's commit covered it.
            return Ok(());
        }
        let conn = self.conn();
        let covers = conn.total_changes();
        if truncate_log(&conn)? {
            st.erased = covers;
        }
        Ok(())
    }

    /// Start the eraser thread (once per repository); whether it runs. It
    /// holds the writer connection only while it checkpoints, and ends when
    /// the repository closes.
    fn start_eraser(&self) -> bool {
        *self.eraser.thread.get_or_init(|| {
            let (eraser, conn) = (self.eraser.clone(), std::sync::Arc::downgrade(&self.conn));
            let spawned = std::thread::Builder::new().name("custos-eraser".into()).spawn(move || loop {
                let st = eraser.state.lock().unwrap_or_else(|p| p.into_inner());
                if st.closed {
                    return;
                }
                if !st.due {
                    let _ = eraser.wake.wait_timeout(st, std::time::Duration::from_secs(1));
                    continue;
                }
                drop(st);
                // Erasures within the lag share this checkpoint.
                std::thread::sleep(eraser.lag());
                let mut st = eraser.state.lock().unwrap_or_else(|p| p.into_inner());
                let Some(conn) = conn.upgrade().filter(|_| !st.closed) else { return };
                st.due = false;
                // Erasures committed meanwhile set `due` again, without
                // waiting for this one.
                drop(st);
                let c = conn.lock().unwrap_or_else(|p| p.into_inner());
                let covers = c.total_changes();
                let done = matches!(zero_log(&c), Ok(true));
                drop(c);
                let mut st = eraser.state.lock().unwrap_or_else(|p| p.into_inner());
                if done {
                    st.erased = st.erased.max(covers);
                } else if st.closed {
                    // The repository closed meanwhile, seeing nothing due:
                    // erase as it would have.
                    let _ = truncate_log(&conn.lock().unwrap_or_else(|p| p.into_inner()));
                } else {
                    st.due = true;
                }
            });
            spawned.is_ok()
        })
    }

    /// A connection for one read outside any transaction of the writer's.
    /// Each statement reads the last committed state, except inside
    /// [`crate::with_snapshot`], where this thread's reads share one read
    /// transaction until it writes, waits or leaves the scope.
    fn reader(&self) -> Result<Reader<'_>> {
        let Some(path) = self.path.as_deref().filter(|_| crate::snapshot_wanted()) else {
            return self.fresh_reader();
        };
        enum Take {
            Held(Connection),
            New,
            No,
        }
        let id = self.id;
        let take = PINNED.with(|p| {
            let mut p = p.borrow_mut();
            match &*p {
                Pin::Held { repo, .. } if *repo == id => {
                    match std::mem::replace(&mut *p, Pin::Lent { repo: id, end: false }) {
                        Pin::Held { conn, .. } => Take::Held(conn),
                        _ => Take::No,
                    }
                }
                Pin::None => Take::New,
                // Lent out (a read inside a read), or another catalog's.
                _ => Take::No,
            }
        });
        match take {
            Take::Held(c) => Ok(Reader::Pinned(self, Some(c))),
            Take::New => {
                let c = self.read_connection(path)?;
                // Deferred: the snapshot is taken by the first read.
                if c.execute_batch("BEGIN").is_err() {
                    return Ok(Reader::Pooled(self, Some(c)));
                }
                PINNED.with(|p| *p.borrow_mut() = Pin::Lent { repo: id, end: false });
                Ok(Reader::Pinned(self, Some(c)))
            }
            Take::No => self.fresh_reader(),
        }
    }

    /// A read connection outside any snapshot: each statement reads the
    /// catalog as it is then, or as of a transaction the caller begins.
    fn fresh_reader(&self) -> Result<Reader<'_>> {
        let Some(path) = &self.path else { return Ok(Reader::Writer(self.conn())) };
        Ok(Reader::Pooled(self, Some(self.read_connection(path)?)))
    }

    /// An idle read connection, or a new one.
    fn read_connection(&self, path: &Path) -> Result<Connection> {
        if let Some(c) = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(c);
        }
        let c = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db("open a read connection"))?;
        c.busy_timeout(BUSY_TIMEOUT).map_err(db("set the busy timeout"))?;
        crate::rowauth::register(&c, &self.rows).map_err(db("register the row functions"))?;
        c.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(c)
    }

    /// A principal and its grants, read on `conn`: in one statement, so
    /// from one state of the catalog (the principal is read on every
    /// request).
    fn read_principal(&self, conn: &Connection, name: &str) -> Result<Option<PrincipalRecord>> {
        let rows: Vec<(PrincipalRecord, Option<(String, String)>)> = query_all_on(
            conn,
            "read a user",
            &self.sql(
                "SELECT principals.name, principals.role, principals.credential, principals.disabled, \
                 principals.created_at, @ok(principals), grants.kind, grants.pattern, \
                 CASE WHEN grants.principal IS NULL THEN 1 ELSE @ok(grants) END \
                 FROM principals LEFT JOIN grants ON grants.principal = principals.name \
                 WHERE principals.name = ?1 ORDER BY grants.kind, grants.pattern",
            ),
            [name],
            |r| {
                let grant = match (r.get::<_, Option<String>>(6)?, r.get::<_, Option<String>>(7)?) {
                    (Some(kind), Some(pat)) => Some((kind, pat)),
                    _ => None,
                };
                Ok((principal_from_row(r)?, grant))
            },
        )?;
        let mut rows = rows.into_iter();
        let Some((mut p, first)) = rows.next() else { return Ok(None) };
        for (kind, pat) in first.into_iter().chain(rows.filter_map(|(_, g)| g)) {
            let pat = Pattern::new(pat).map_err(|e| RepoError::Corrupt { what: e.to_string() })?;
            match kind.as_str() {
                "data" => p.data_grants.push(pat),
                _ => p.key_grants.push(pat),
            }
        }
        Ok(Some(p))
    }

    /// Run a query and collect every row.
    fn query_all<T, P: rusqlite::Params>(
        &self,
        action: &'static str,
        sql: &str,
        params: P,
        row: impl FnMut(&Row) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>> {
        query_all_on(&*self.reader()?, action, &self.sql(sql), params, row)
    }

    /// Audit entries after `after`, oldest first, at most `limit` (-1: all).
    fn audit_rows_limited(&self, after: u64, limit: i64) -> Result<Vec<AuditRow>> {
        self.query_all(
            "read the audit log",
            "SELECT seq, at, principal, action, object, result, hash, keyed FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            params![after as i64, limit],
            |r| {
                let hash: Vec<u8> = r.get(6)?;
                Ok(AuditRow {
                    seq: r.get::<_, i64>(0)? as u64,
                    at: from_ts(r.get(1)?)?,
                    principal: r.get(2)?,
                    action: r.get(3)?,
                    object: r.get(4)?,
                    result: r.get(5)?,
                    hash: hash.try_into().map_err(|_| corrupt("audit hash"))?,
                    keyed: r.get(7)?,
                })
            },
        )
    }

    /// This repository's session token, made (with its lock) on first use.
    fn session(&self) -> Result<String> {
        let mut s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = s.as_ref() {
            return Ok(s.token.clone());
        }
        let token =
            hex::encode(custos_crypto::random_array::<16>().map_err(|e| RepoError::Corrupt { what: e.to_string() })?);
        let lock = match &self.path {
            None => None,
            Some(db_path) => {
                let dir = sessions_dir(db_path);
                let io = |e: std::io::Error| RepoError::Io {
                    what: format!("the session lock in {}", dir.display()),
                    source: e,
                };
                use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
                std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io)?;
                // Locked under a name of its own first, then moved into place:
                // nobody ever finds it unlocked and takes it for a dead one.
                let file = dir.join(format!("{token}.lock"));
                let making = dir.join(format!(".{token}.tmp"));
                let f =
                    std::fs::OpenOptions::new().create_new(true).write(true).mode(0o600).open(&making).map_err(io)?;
                f.lock().map_err(io)?;
                std::fs::rename(&making, &file).map_err(io)?;
                // Sessions of processes that died (killed, or power lost) leave
                // their lock files; whichever session starts next removes them.
                if let Ok(entries) = std::fs::read_dir(&dir) {
                    for e in entries.flatten() {
                        let p = e.path();
                        if p == file || p.extension().is_none_or(|x| x != "lock") {
                            continue;
                        }
                        let dead = std::fs::OpenOptions::new().write(true).open(&p).is_ok_and(|g| g.try_lock().is_ok());
                        if dead {
                            let _ = std::fs::remove_file(&p);
                        }
                    }
                }
                Some((f, file))
            }
        };
        *s = Some(Session { token: token.clone(), lock });
        Ok(token)
    }

    /// Whether the deleter with session `token` is still at work: it is
    /// this repository, or its lock is held. A claim without a session (from
    /// before sessions) counts as alive until `released_before`.
    fn claimer_alive(&self, token: Option<&str>, claimed_at: Timestamp, released_before: Timestamp) -> Result<bool> {
        let Some(token) = token else { return Ok(claimed_at >= released_before) };
        if self.session()? == token {
            return Ok(true);
        }
        let Some(db_path) = &self.path else { return Ok(false) };
        if !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(false);
        }
        let file = sessions_dir(db_path).join(format!("{token}.lock"));
        let f = match std::fs::OpenOptions::new().write(true).open(&file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            // Unknown: never take over a claim that may be alive.
            Err(_) => return Ok(true),
        };
        match f.try_lock() {
            Ok(()) => {
                // Its process is gone; so is its lock file, now.
                let _ = std::fs::remove_file(&file);
                Ok(false)
            }
            Err(_) => Ok(true),
        }
    }

    /// The schema version this build writes.
    pub fn schema_version() -> i64 {
        MIGRATIONS.len() as i64
    }
}

fn principal_from_row(r: &Row) -> rusqlite::Result<PrincipalRecord> {
    let roles: String = r.get(1)?;
    Ok(PrincipalRecord {
        name: r.get(0)?,
        roles: roles
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| Role::parse(s).ok_or_else(|| corrupt(format!("role {s}"))))
            .collect::<rusqlite::Result<_>>()?,
        credential: r.get(2)?,
        disabled: r.get(3)?,
        created_at: from_ts(r.get(4)?)?,
        data_grants: Vec::new(),
        key_grants: Vec::new(),
    })
}

const KEY_COLS: &str = "label, state, purpose, app, wrapped, mkvp, kcv, created_at, activated_at, deactivated_at, destroyed_at, expires_at, last_used_at, use_count, escrow_kbk, escrow, attributes";

fn key_from_row(r: &Row) -> rusqlite::Result<KeyRecord> {
    let label: String = r.get(0)?;
    let state: String = r.get(1)?;
    let purpose: String = r.get(2)?;
    let mkvp: String = r.get(5)?;
    let kcv: String = r.get(6)?;
    Ok(KeyRecord {
        label: KeyLabel::new(label).map_err(|e| corrupt(e.to_string()))?,
        state: KeyState::parse(&state).ok_or_else(|| corrupt(format!("key state {state}")))?,
        purpose: Purpose::parse(&purpose).ok_or_else(|| corrupt(format!("key purpose {purpose}")))?,
        app: r.get(3)?,
        wrapped: r.get::<_, Option<Vec<u8>>>(4)?.map(WrappedMaterial),
        mkvp: Mkvp::from_hex(&mkvp).map_err(|_| corrupt("MKVP"))?,
        kcv: Kcv::from_hex(&kcv).map_err(|_| corrupt("KCV"))?,
        created_at: from_ts(r.get(7)?)?,
        activated_at: opt_ts(r.get(8)?)?,
        deactivated_at: opt_ts(r.get(9)?)?,
        destroyed_at: opt_ts(r.get(10)?)?,
        expires_at: opt_ts(r.get(11)?)?,
        last_used_at: opt_ts(r.get(12)?)?,
        use_count: r.get::<_, i64>(13)? as u64,
        escrow: match (r.get::<_, Option<String>>(14)?, r.get::<_, Option<Vec<u8>>>(15)?) {
            (Some(kbk), Some(blob)) => Some(EscrowCopy { kbk, blob }),
            _ => None,
        },
        attributes: crate::key_attributes_from(r.get::<_, Option<String>>(16)?.as_deref()).map_err(corrupt)?,
    })
}

fn volume_from_row(r: &Row) -> rusqlite::Result<VolumeRecord> {
    let name: String = r.get(0)?;
    let medium: String = r.get(3)?;
    Ok(VolumeRecord {
        name: VolumeName::new(name).map_err(|e| corrupt(e.to_string()))?,
        location: r.get(1)?,
        site: r.get(2)?,
        medium: Medium::parse(&medium).ok_or_else(|| corrupt(format!("medium {medium}")))?,
        created_at: from_ts(r.get(4)?)?,
    })
}

fn policy_from_row(r: &Row) -> rusqlite::Result<PolicyRecord> {
    let pattern: String = r.get(1)?;
    let volume: String = r.get(2)?;
    let key_label: Option<String> = r.get(3)?;
    let template: bool = r.get(4)?;
    let target = if template {
        PolicyTarget::Template { app: r.get(5)? }
    } else {
        let l = key_label.ok_or_else(|| corrupt("policy without key"))?;
        PolicyTarget::Key(KeyLabel::new(l).map_err(|e| corrupt(e.to_string()))?)
    };
    Ok(PolicyRecord {
        name: r.get(0)?,
        pattern: Pattern::new(pattern).map_err(|e| corrupt(e.to_string()))?,
        volume: VolumeName::new(volume).map_err(|e| corrupt(e.to_string()))?,
        target,
        created_at: from_ts(r.get(6)?)?,
    })
}

const DATASET_SELECT: &str = "SELECT d.id, d.name, d.created_at, g.generation, g.volume, g.key_label, g.size, g.chunk_size, g.chunk_count, g.manifest_hash, g.created_at, d.last_access, d.migrated_from FROM datasets d JOIN generations g ON g.dataset_id = d.id AND g.generation = d.current_generation";

const BACKUP_SELECT: &str = "SELECT id, dataset, dataset_id, source_generation, method, volume, key_label, copy_id, generation, size,
    chunk_size, chunk_count, manifest_hash, created_at, checked_at, checked_data, check_problem, @ok(backups) FROM backups";

const SNAPSHOT_SELECT: &str =
    "SELECT id, dataset, dataset_id, generation, volume, key_label, size, chunk_count, manifest_hash,
    created_at, checked_at, checked_data, check_problem, @ok(snapshots) FROM snapshots";

fn snapshot_from_row(r: &Row) -> rusqlite::Result<SnapshotRecord> {
    let name: String = r.get(1)?;
    let volume: String = r.get(4)?;
    let key: String = r.get(5)?;
    let hash: Vec<u8> = r.get(8)?;
    Ok(SnapshotRecord {
        id: r.get::<_, i64>(0)? as u64,
        dataset: DatasetName::new(name).map_err(|e| corrupt(e.to_string()))?,
        dataset_id: DatasetId(id16(r.get(2)?)?),
        generation: r.get::<_, i64>(3)? as u64,
        volume: VolumeName::new(volume).map_err(|e| corrupt(e.to_string()))?,
        key_label: KeyLabel::new(key).map_err(|e| corrupt(e.to_string()))?,
        size: r.get::<_, i64>(6)? as u64,
        chunk_count: r.get::<_, i64>(7)? as u64,
        manifest_hash: hash.try_into().map_err(|_| corrupt("manifest hash"))?,
        created_at: from_ts(r.get(9)?)?,
        checked: check_from(r.get(10)?, r.get(11)?, r.get(12)?)?,
    })
}

fn backup_from_row(r: &Row) -> rusqlite::Result<BackupRecord> {
    let name: String = r.get(1)?;
    let method: String = r.get(4)?;
    let volume: String = r.get(5)?;
    let key: String = r.get(6)?;
    let hash: Vec<u8> = r.get(12)?;
    Ok(BackupRecord {
        id: r.get::<_, i64>(0)? as u64,
        dataset: DatasetName::new(name).map_err(|e| corrupt(e.to_string()))?,
        dataset_id: DatasetId(id16(r.get(2)?)?),
        source_generation: r.get::<_, i64>(3)? as u64,
        method: CopyMethod::parse(&method).ok_or_else(|| corrupt(format!("copy method {method}")))?,
        volume: VolumeName::new(volume).map_err(|e| corrupt(e.to_string()))?,
        key_label: KeyLabel::new(key).map_err(|e| corrupt(e.to_string()))?,
        copy_id: DatasetId(id16(r.get(7)?)?),
        generation: r.get::<_, i64>(8)? as u64,
        size: r.get::<_, i64>(9)? as u64,
        chunk_size: r.get::<_, i64>(10)? as u32,
        chunk_count: r.get::<_, i64>(11)? as u64,
        manifest_hash: hash.try_into().map_err(|_| corrupt("manifest hash"))?,
        created_at: from_ts(r.get(13)?)?,
        checked: check_from(r.get(14)?, r.get(15)?, r.get(16)?)?,
    })
}

fn dataset_from_row(r: &Row) -> rusqlite::Result<DatasetRecord> {
    let name: String = r.get(1)?;
    let volume: String = r.get(4)?;
    let key: String = r.get(5)?;
    let hash: Vec<u8> = r.get(9)?;
    let generation_at = from_ts(r.get(10)?)?;
    let last_access = match r.get::<_, Option<i64>>(11)? {
        Some(t) => from_ts(t)?.max(generation_at),
        None => generation_at,
    };
    let migrated_from = match r.get::<_, Option<String>>(12)? {
        Some(v) => Some(VolumeName::new(v).map_err(|e| corrupt(e.to_string()))?),
        None => None,
    };
    Ok(DatasetRecord {
        id: DatasetId(id16(r.get(0)?)?),
        name: DatasetName::new(name).map_err(|e| corrupt(e.to_string()))?,
        created_at: from_ts(r.get(2)?)?,
        current: GenerationRecord {
            generation: r.get::<_, i64>(3)? as u64,
            volume: VolumeName::new(volume).map_err(|e| corrupt(e.to_string()))?,
            key_label: KeyLabel::new(key).map_err(|e| corrupt(e.to_string()))?,
            size: r.get::<_, i64>(6)? as u64,
            chunk_size: r.get::<_, i64>(7)? as u32,
            chunk_count: r.get::<_, i64>(8)? as u64,
            manifest_hash: hash.try_into().map_err(|_| corrupt("manifest hash"))?,
            created_at: generation_at,
        },
        last_access,
        migrated_from,
    })
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
}

/// Whether any generation, backup or snapshot on volume ?2 lists chunk ?1:
/// the one definition of "still referenced on a volume".
const CHUNK_USED: &str = "SELECT EXISTS (SELECT 1 FROM generation_chunks g JOIN generations gg
        ON gg.dataset_id = g.dataset_id AND gg.generation = g.generation
        WHERE g.chunk_id = ?1 AND gg.volume = ?2)
     OR EXISTS (SELECT 1 FROM backup_chunks b JOIN backups bb ON bb.id = b.backup_id
        WHERE b.chunk_id = ?1 AND bb.volume = ?2)
     OR EXISTS (SELECT 1 FROM snapshot_chunks s JOIN snapshots ss ON ss.id = s.snapshot_id
        WHERE s.chunk_id = ?1 AND ss.volume = ?2)";

/// Of `candidates`, whether each is still referenced on `vol`, in order.
fn referenced(conn: &Connection, candidates: &[ChunkId], vol: &str) -> Result<Vec<bool>> {
    let mut used = conn.prepare_cached(CHUNK_USED).map_err(db("look for references to chunks"))?;
    candidates
        .iter()
        .map(|c| used.query_row(params![&c.0[..], vol], |r| r.get(0)).map_err(db("look for references to chunks")))
        .collect()
}

/// Of `candidates` (chunks an owner that was just deleted listed), those no
/// generation, backup or snapshot on `vol` lists any more. Every removal
/// uses it after deleting its own rows.
fn unreferenced(tx: &Transaction, mut candidates: Vec<ChunkId>, vol: &str) -> Result<Vec<ChunkId>> {
    candidates.sort();
    candidates.dedup();
    let used = referenced(tx, &candidates, vol)?;
    Ok(candidates.into_iter().zip(used).filter(|(_, u)| !u).map(|(c, _)| c).collect())
}

/// A commit that lists chunks it found stored rather than wrote may only go
/// ahead while the catalog still references each on `vol`: otherwise a
/// concurrent removal released (and may have deleted) one since.
fn check_reused(tx: &Transaction, reused: &[ChunkId], vol: &str, what: impl FnOnce() -> String) -> Result<()> {
    let used = referenced(tx, reused, vol)?;
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(RepoError::Raced {
            what: what(),
            why: format!("chunk {} it shares on volume {vol} was released by another command", reused[i].to_hex()),
        });
    }
    Ok(())
}

/// Whether a generation, backup or snapshot on `vol` still names the
/// manifest object of (`id`, `generation`).
fn manifest_referenced(tx: &Transaction, id: &DatasetId, generation: u64, vol: &str) -> Result<bool> {
    tx.query_row_c(
        "SELECT EXISTS (SELECT 1 FROM generations WHERE dataset_id = ?1 AND generation = ?2 AND volume = ?3)
             OR EXISTS (SELECT 1 FROM snapshots WHERE dataset_id = ?1 AND generation = ?2 AND volume = ?3)
             OR EXISTS (SELECT 1 FROM backups WHERE copy_id = ?1 AND generation = ?2 AND volume = ?3)",
        params![&id.0[..], generation as i64, vol],
        |r| r.get(0),
    )
    .map_err(db("look for references to a manifest"))
}

fn chunk_list(tx: &Transaction, sql: &str, p: impl rusqlite::Params) -> Result<Vec<ChunkId>> {
    let mut stmt = tx.prepare_cached(sql).map_err(db("list chunks"))?;
    let rows = stmt.query_map(p, |r| Ok(ChunkId(id16(r.get(0)?)?))).map_err(db("list chunks"))?;
    rows.collect::<rusqlite::Result<_>>().map_err(db("list chunks"))
}

/// What removing an owner (already deleted in `tx`) leaves unreferenced on
/// `vol`. Each such object goes to the trash in the same transaction:
/// `claimed` for an immediate deletion by the caller, unclaimed for `gc` to
/// delete after its grace period (so that readers still holding the old
/// generation can finish).
fn garbage_after(
    tx: &Transaction,
    candidates: Vec<ChunkId>,
    vol: &str,
    manifest: (DatasetId, u64),
    claimed_by: Option<&str>,
) -> Result<Garbage> {
    let vname = VolumeName::new(vol.to_string()).map_err(|e| RepoError::Corrupt { what: e.to_string() })?;
    let chunks = unreferenced(tx, candidates, vol)?;
    let manifests = if manifest_referenced(tx, &manifest.0, manifest.1, vol)? {
        Vec::new()
    } else {
        vec![(vname.clone(), manifest.0, manifest.1)]
    };
    let g = Garbage { chunks: chunks.into_iter().map(|c| (vname.clone(), c)).collect(), manifests };
    to_trash(tx, &g, claimed_by)?;
    Ok(g)
}

/// The trash row of each object of `g`: (volume, kind, object, generation).
fn trash_keys(g: &Garbage) -> impl Iterator<Item = (&str, &'static str, &[u8], i64)> {
    let chunks = g.chunks.iter().map(|(v, c)| (v.as_str(), "chunk", &c.0[..], 0i64));
    let manifests = g.manifests.iter().map(|(v, d, gen)| (v.as_str(), "manifest", &d.0[..], *gen as i64));
    chunks.chain(manifests)
}

/// Put `g` in the trash: released (for `gc` after the grace period), or
/// claimed for deletion by the session `claimed_by`.
fn to_trash(tx: &Transaction, g: &Garbage, claimed_by: Option<&str>) -> Result<()> {
    let mut ins = tx
        .prepare_cached(
            "INSERT INTO trash (volume, kind, object, generation, released_at, claimed, claimed_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT DO UPDATE SET
                 released_at = CASE WHEN claimed = 3 OR (claimed = 0 AND excluded.claimed = 1) THEN excluded.released_at ELSE released_at END,
                 claimed_by = CASE WHEN excluded.claimed = 1 THEN excluded.claimed_by ELSE claimed_by END,
                 claimed = CASE WHEN claimed = 3 THEN excluded.claimed ELSE MAX(claimed, excluded.claimed) END",
        )
        .map_err(db("put objects in the trash"))?;
    let now = ts(Timestamp::now());
    for (vol, kind, object, generation) in trash_keys(g) {
        ins.execute(params![vol, kind, object, generation, now, claimed_by.is_some(), claimed_by])
            .map_err(db("put objects in the trash"))?;
    }
    Ok(())
}

fn forget(tx: &Transaction, g: &Garbage) -> Result<()> {
    let mut del = tx
        .prepare_cached("DELETE FROM trash WHERE volume = ?1 AND kind = ?2 AND object = ?3 AND generation = ?4")
        .map_err(db("empty the trash"))?;
    for (vol, kind, object, generation) in trash_keys(g) {
        del.execute(params![vol, kind, object, generation]).map_err(db("empty the trash"))?;
    }
    Ok(())
}

/// After the objects of `g` were deleted from their volumes: their rows
/// become tombstones (`claimed` 3) numbered by the raised deletion count,
/// so that a commit whose writer read a lower count (it may have found one
/// of them stored, and lists it without having written it since) is
/// refused rather than recording an object that is gone. See
/// [`check_not_claimed`].
fn bury(tx: &Transaction, g: &Garbage) -> Result<()> {
    let seq = deletion_seq(tx)? + 1;
    tx.execute_c(
        "INSERT INTO settings(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![DELETIONS, seq.to_string()],
    )
    .map_err(db("count a deletion"))?;
    let mut up = tx
        .prepare_cached(
            "UPDATE trash SET claimed = 3, released_at = ?5, deleted_seq = ?6
             WHERE volume = ?1 AND kind = ?2 AND object = ?3 AND generation = ?4",
        )
        .map_err(db("empty the trash"))?;
    let now = ts(Timestamp::now());
    for (vol, kind, object, generation) in trash_keys(g) {
        up.execute(params![vol, kind, object, generation, now, seq as i64]).map_err(db("empty the trash"))?;
    }
    // Tombstones older than any copy runs are of no more use.
    tx.execute_c(
        "DELETE FROM trash WHERE claimed = 3 AND released_at < ?1",
        [ts(Timestamp::now()) - TOMBSTONE_DAYS * 86_400_000_000],
    )
    .map_err(db("empty the trash"))?;
    Ok(())
}

/// How long a request's idempotency key is remembered.
pub(crate) const IDEMPOTENCY_DAYS: i64 = 1;

/// The setting that counts deletions (see [`Repository::deletion_seq`]).
const DELETIONS: &str = "trash.deletions";

fn deletion_seq(conn: &Connection) -> Result<u64> {
    let v: Option<String> = conn
        .query_row_c("SELECT value FROM settings WHERE key = ?1", [DELETIONS], |r| r.get(0))
        .optional()
        .map_err(db("read the deletion count"))?;
    v.map_or(Ok(0), |v| v.parse().map_err(|_| RepoError::Corrupt { what: format!("setting {DELETIONS} = {v:?}") }))
}

/// How long a deleted object's tombstone is kept: longer than any copy or
/// write runs between looking at its objects and committing them.
const TOMBSTONE_DAYS: i64 = 7;

fn trash_from_row(r: &Row) -> rusqlite::Result<TrashEntry> {
    let volume: String = r.get(0)?;
    let kind: String = r.get(1)?;
    let object = id16(r.get(2)?)?;
    let generation = r.get::<_, i64>(3)? as u64;
    Ok(TrashEntry {
        volume: VolumeName::new(volume).map_err(|e| corrupt(e.to_string()))?,
        chunk: (kind == "chunk").then_some(ChunkId(object)),
        manifest: (kind == "manifest").then_some((DatasetId(object), generation)),
        released_at: from_ts(r.get(4)?)?,
        claimed: r.get::<_, i64>(5)? != 0,
    })
}

/// A commit may not list an object a deleter has claimed (it is being, or
/// has been, deleted); an unclaimed trash row of an object it lists is
/// dropped, since the object is in use again.
fn check_not_claimed(
    tx: &Transaction,
    vol: &str,
    objects: &Garbage,
    since: u64,
    what: impl Fn() -> String,
) -> Result<()> {
    let mut claimed = tx
        .prepare_cached(
            "SELECT claimed, deleted_seq FROM trash WHERE volume = ?1 AND kind = ?2 AND object = ?3 AND generation = ?4",
        )
        .map_err(db("look in the trash"))?;
    let mut rescue = tx
        .prepare_cached("DELETE FROM trash WHERE volume = ?1 AND kind = ?2 AND object = ?3 AND generation = ?4")
        .map_err(db("look in the trash"))?;
    for (_, kind, object, generation) in trash_keys(objects) {
        let row: Option<(i64, Option<i64>)> = claimed
            .query_row(params![vol, kind, object, generation], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(db("look in the trash"))?;
        match row {
            // Deleted before this writer looked (the writer had seen that
            // deletion counted): what it found or wrote came after, and stands.
            Some((3, Some(deleted))) if deleted as u64 <= since => {
                rescue
                    .execute(params![vol, kind, object, generation])
                    .map_err(db("take an object out of the trash"))?;
            }
            Some((3, _)) => {
                return Err(RepoError::Raced {
                    what: what(),
                    why: format!("a {kind} it needs on volume {vol} was deleted by another command while it worked"),
                })
            }
            Some((0, _)) => {
                rescue
                    .execute(params![vol, kind, object, generation])
                    .map_err(db("take an object out of the trash"))?;
            }
            Some(_) => {
                return Err(RepoError::Raced {
                    what: what(),
                    why: format!("a {kind} it needs on volume {vol} is being deleted by another command"),
                })
            }
            None => {}
        }
    }
    Ok(())
}

/// The objects a commit lists on `vol`, for [`check_not_claimed`].
fn listed(vol: &str, chunks: &[ChunkId], manifest: (DatasetId, u64)) -> Result<Garbage> {
    let v = VolumeName::new(vol.to_string()).map_err(|e| RepoError::Corrupt { what: e.to_string() })?;
    Ok(Garbage {
        chunks: chunks.iter().map(|c| (v.clone(), *c)).collect(),
        manifests: vec![(v, manifest.0, manifest.1)],
    })
}

/// Drop the given generations and return what they leave unreferenced.
fn drop_generations(
    tx: &Transaction,
    id: &DatasetId,
    gens: &[(u64, String)],
    claimed_by: Option<&str>,
) -> Result<Garbage> {
    let mut garbage = Garbage::default();
    for (g, vol) in gens {
        let candidates = chunk_list(
            tx,
            "SELECT chunk_id FROM generation_chunks WHERE dataset_id = ?1 AND generation = ?2",
            params![&id.0[..], *g as i64],
        )?;
        tx.execute_c(
            "DELETE FROM generations WHERE dataset_id = ?1 AND generation = ?2",
            params![&id.0[..], *g as i64],
        )
        .map_err(db("drop a generation"))?;
        let more = garbage_after(tx, candidates, vol, (*id, *g), claimed_by)?;
        garbage.chunks.extend(more.chunks);
        garbage.manifests.extend(more.manifests);
    }
    Ok(garbage)
}

/// Refuse `k`'s names when another key already carries one (KMIP Name:
/// a name belongs to one key). Run in the transaction that writes `k`, so
/// two writers of one name cannot both pass.
fn check_key_names(conn: &Connection, k: &KeyRecord) -> Result<()> {
    if k.attributes.names.is_empty() {
        return Ok(());
    }
    let mut st = conn
        .prepare_cached(
            "SELECT keys.label FROM keys, json_each(keys.attributes, '$.names') AS n WHERE n.value = ?1 AND keys.label <> ?2 LIMIT 1",
        )
        .map_err(db("check a key's names"))?;
    for name in &k.attributes.names {
        let other: Option<String> = st
            .query_row(params![name, k.label.as_str()], |r| r.get(0))
            .optional()
            .map_err(db("check a key's names"))?;
        if let Some(label) = other {
            return Err(RepoError::NameTaken { name: name.clone(), label });
        }
    }
    Ok(())
}

fn insert_key(conn: &Connection, k: &KeyRecord) -> Result<()> {
    check_key_names(conn, k)?;
    // Cached: compiling it compiles the row triggers too (ADR 0019).
    let mut st = conn
        .prepare_cached(&format!(
            "INSERT INTO keys ({KEY_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
        ))
        .map_err(db("store a key"))?;
    let r = st.execute(params![
        k.label.as_str(),
        k.state.as_str(),
        k.purpose.as_str(),
        k.app,
        k.wrapped.as_ref().map(|w| &w.0),
        k.mkvp.to_hex(),
        k.kcv.to_hex(),
        ts(k.created_at),
        k.activated_at.map(ts),
        k.deactivated_at.map(ts),
        k.destroyed_at.map(ts),
        k.expires_at.map(ts),
        k.last_used_at.map(ts),
        k.use_count as i64,
        k.escrow.as_ref().map(|e| &e.kbk),
        k.escrow.as_ref().map(|e| &e.blob),
        crate::key_attributes_text(&k.attributes)
    ]);
    match r {
        Err(e) if is_unique_violation(&e) => Err(RepoError::Exists { kind: "key", name: k.label.to_string() }),
        r => r.map(|_| ()).map_err(db("store a key")),
    }
}

impl Repository for SqliteRepository {
    fn set_row_auth(&self, auth: Option<std::sync::Arc<dyn crate::RowAuth>>) {
        *self.rows.auth.write().unwrap_or_else(|p| p.into_inner()) = auth;
        // What was read was checked (or not) under the old key.
        self.cache.forget();
    }

    fn row_auth(&self) -> Option<std::sync::Arc<dyn crate::RowAuth>> {
        self.rows.auth.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn seal_rows(&self) -> Result<u64> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db("start sealing the catalog"))?;
        let mut n = 0u64;
        for &(table, _) in crate::rowauth::TABLES {
            n += tx
                .execute_c(&format!("UPDATE main.{table} SET mac = {}", self.rows.mac_expr(table, "")), [])
                .map_err(db("seal the catalog's rows"))? as u64;
        }
        tx.execute_c(
            "INSERT INTO settings(key, value) VALUES (?1, '1') ON CONFLICT(key) DO UPDATE SET value = '1'",
            [crate::rowauth::SEALED_SETTING],
        )
        .map_err(db("mark the catalog sealed"))?;
        tx.commit().map_err(db("commit the sealed catalog"))?;
        self.rows.sealed.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }

    fn reseal_rows(&self, next: std::sync::Arc<dyn crate::RowAuth>) -> Result<u64> {
        if self.row_auth().is_none() {
            return Err(RepoError::NeedsKey { table: "every authenticated table".into(), row: "all rows".into() });
        }
        *self.rows.next.write().unwrap_or_else(|p| p.into_inner()) = Some(next);
        let result = (|| {
            let mut conn = self.conn();
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db("start sealing the catalog under its next key"))?;
            // Every process that writes after this commits reads the keys
            // again first (see rowauth.rs).
            let generation = hex::encode(
                custos_crypto::random_array::<8>().map_err(|e| RepoError::Corrupt { what: e.to_string() })?,
            );
            tx.execute_c(
                "INSERT INTO settings(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
                [crate::rowauth::GENERATION_SETTING, &generation],
            )
            .map_err(db("record the catalog's new key generation"))?;
            let mut n = 0u64;
            for &(table, _) in crate::rowauth::TABLES {
                // Every row is checked before any is sealed anew.
                tx.query_row_c(&format!("SELECT count({}) FROM main.{table}", self.rows.checks[table]), [], |_| Ok(()))
                    .map_err(db("check the catalog's rows"))?;
                // Rows a command without the key wrote stay unsealed.
                n += tx
                    .execute_c(
                        &format!(
                            "UPDATE main.{table} SET mac = {} WHERE mac IS NOT NULL",
                            self.rows.next_mac_expr(table)
                        ),
                        [],
                    )
                    .map_err(db("seal the catalog's rows under the next key"))? as u64;
            }
            tx.commit().map_err(db("commit the catalog sealed under its next key"))?;
            Ok(n)
        })();
        *self.rows.next.write().unwrap_or_else(|p| p.into_inner()) = None;
        result
    }

    fn verify_rows(&self) -> Result<crate::CatalogCheck> {
        let conn = self.fresh_reader()?;
        // One read transaction: every table as of one moment.
        conn.execute_batch("BEGIN").map_err(db("start checking the catalog"))?;
        let result = (|| {
            let mut check = crate::CatalogCheck::default();
            for &(table, _) in crate::rowauth::TABLES {
                let t = &self.rows.tables[table];
                let key = t.pk.iter().map(|c| format!("'{c}=' || quote({c})")).collect::<Vec<_>>().join(" || ' ' || ");
                let mut stmt = conn
                    .prepare(&format!("SELECT {key}, {} FROM main.{table}", self.rows.state_expr(table)))
                    .map_err(db("check the catalog's rows"))?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                    .map_err(db("check the catalog's rows"))?;
                for row in rows {
                    let (row, state) = row.map_err(db("check the catalog's rows"))?;
                    check.rows += 1;
                    match state {
                        0 => {}
                        1 => check.unsealed += 1,
                        s => check.faults.push(crate::RowFault {
                            table: table.to_string(),
                            row,
                            why: if s == 2 { "has no MAC" } else { "does not match its MAC" }.into(),
                        }),
                    }
                }
            }
            Ok(check)
        })();
        let _ = conn.execute_batch("COMMIT");
        result
    }

    fn setting(&self, key: &str) -> Result<Option<String>> {
        let read = |conn: &Connection| {
            conn.prepare_cached(&self.sql("SELECT value, @ok(settings) FROM settings WHERE key = ?1"))
                .and_then(|mut st| st.query_row([key], |r| r.get(0)).optional())
                .map_err(db("read a setting"))
        };
        if self.cache.on() {
            return self.cache.get(&self.cache.settings, key, || read(&*self.fresh_reader()?));
        }
        read(&*self.reader()?)
    }

    fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.conn()
            .execute_c(
                "INSERT INTO settings(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
            .map_err(db("write a setting"))?;
        Ok(())
    }

    fn set_setting_once(&self, key: &str, value: &str) -> Result<String> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db("start setting a value once"))?;
        tx.execute_c(
            "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO NOTHING",
            params![key, value],
        )
        .map_err(db("set a value once"))?;
        let v: String = tx
            .query_row_c("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0))
            .map_err(db("read a setting"))?;
        tx.commit().map_err(db("commit a setting"))?;
        Ok(v)
    }

    fn insert_key(&self, k: &KeyRecord) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db("store a key"))?;
        insert_key(&tx, k)?;
        tx.commit().map_err(db("store a key"))
    }

    fn key(&self, label: &KeyLabel) -> Result<Option<KeyRecord>> {
        self.reader()?
            .prepare_cached(&self.sql(&format!("SELECT {KEY_COLS}, @ok(keys) FROM keys WHERE label = ?1")))
            .and_then(|mut st| st.query_row([label.as_str()], key_from_row).optional())
            .map_err(db("read a key"))
    }

    fn key_labels(&self) -> Result<Vec<KeyLabel>> {
        self.query_all("list key labels", "SELECT label FROM keys ORDER BY label", [], |r| {
            KeyLabel::new(r.get::<_, String>(0)?).map_err(|e| corrupt(e.to_string()))
        })
    }

    fn keys(&self) -> Result<Vec<KeyRecord>> {
        self.query_all("list keys", &format!("SELECT {KEY_COLS}, @ok(keys) FROM keys ORDER BY label"), [], key_from_row)
    }

    fn keys_from(&self, from: &str, after: &str, limit: u32) -> Result<Vec<KeyRecord>> {
        self.query_all(
            "list a page of keys",
            &format!("SELECT {KEY_COLS}, @ok(keys) FROM keys WHERE label >= ?1 AND label > ?2 ORDER BY label LIMIT ?3"),
            // The greater bound first: SQLite seeks on ?1 and filters on ?2.
            params![from.max(after), after, limit],
            key_from_row,
        )
    }

    fn set_erase_lag(&self, lag: std::time::Duration) {
        let us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.eraser.lag_us.store(us, std::sync::atomic::Ordering::Relaxed);
        // The eraser writes zeros over the whole log: keep it short. (Only a
        // figure of speed: a connection that keeps SQLite's default is as
        // safe.)
        let pages = if lag.is_zero() { SQLITE_LOG_PAGES } else { ERASED_LOG_PAGES };
        let _ = self.conn().pragma_update(None, "wal_autocheckpoint", pages);
    }

    fn set_read_cache(&self, max_age: std::time::Duration) {
        // In memory there is no other process, and reads go through the
        // writer: nothing to gain.
        if self.path.is_none() {
            return;
        }
        let us = u64::try_from(max_age.as_micros()).unwrap_or(u64::MAX);
        self.cache.max_age_us.store(us, std::sync::atomic::Ordering::Relaxed);
        self.cache.forget();
    }

    fn update_key(&self, k: &KeyRecord, was: &KeyRecord) -> Result<()> {
        let mut conn = self.conn();
        let tx =
            conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db("update a key"))?;
        check_key_names(&tx, k)?;
        let n = tx
            .execute_c(
                "UPDATE keys SET state = ?2, wrapped = ?3, mkvp = ?4, activated_at = ?5, deactivated_at = ?6,
                 destroyed_at = ?7, expires_at = ?8, escrow_kbk = ?9, escrow = ?10, attributes = ?16
                 WHERE label = ?1 AND state = ?11 AND wrapped IS ?12 AND mkvp = ?13 AND escrow_kbk IS ?14 AND escrow IS ?15
                 AND attributes IS ?17",
                params![
                    k.label.as_str(),
                    k.state.as_str(),
                    k.wrapped.as_ref().map(|w| &w.0),
                    k.mkvp.to_hex(),
                    k.activated_at.map(ts),
                    k.deactivated_at.map(ts),
                    k.destroyed_at.map(ts),
                    k.expires_at.map(ts),
                    k.escrow.as_ref().map(|e| &e.kbk),
                    k.escrow.as_ref().map(|e| &e.blob),
                    was.state.as_str(),
                    was.wrapped.as_ref().map(|w| &w.0),
                    was.mkvp.to_hex(),
                    was.escrow.as_ref().map(|e| &e.kbk),
                    was.escrow.as_ref().map(|e| &e.blob),
                    crate::key_attributes_text(&k.attributes),
                    crate::key_attributes_text(&was.attributes),
                ],
            )
            .map_err(db("update a key"))?;
        tx.commit().map_err(db("update a key"))?;
        drop(conn);
        if n == 0 {
            return Err(match self.key(&k.label)? {
                None => RepoError::NotFound { kind: "key", name: k.label.to_string() },
                Some(_) => crate::key_raced(&k.label),
            });
        }
        if k.wrapped.is_none() || k.escrow.is_none() {
            // Erased material must not linger in the write-ahead log either.
            self.erase_log()?;
        }
        Ok(())
    }

    fn record_key_use(&self, label: &KeyLabel) -> Result<()> {
        self.conn()
            .execute_c(
                "UPDATE keys SET use_count = use_count + 1, last_used_at = ?2 WHERE label = ?1",
                params![label.as_str(), ts(Timestamp::now())],
            )
            .map_err(db("count a key use"))?;
        Ok(())
    }

    fn record_key_uses(&self, labels: &[KeyLabel]) -> Result<()> {
        if labels.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db("start counting key uses"))?;
        {
            let mut up = tx
                .prepare_cached("UPDATE keys SET use_count = use_count + 1, last_used_at = ?2 WHERE label = ?1")
                .map_err(db("count a key use"))?;
            let now = ts(Timestamp::now());
            for l in labels {
                up.execute(params![l.as_str(), now]).map_err(db("count a key use"))?;
            }
        }
        tx.commit().map_err(db("count key uses"))
    }

    fn insert_keys(&self, recs: &[KeyRecord]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db("start a bulk key insert"))?;
        for k in recs {
            insert_key(&tx, k)?;
        }
        tx.commit().map_err(db("commit a bulk key insert"))
    }

    fn key_counts_by_mkvp(&self) -> Result<Vec<(Mkvp, u64)>> {
        self.query_all(
            "count keys by master key",
            "SELECT mkvp, COUNT(*) FROM keys WHERE wrapped IS NOT NULL GROUP BY mkvp ORDER BY mkvp",
            [],
            |r| {
                let m: String = r.get(0)?;
                Ok((Mkvp::from_hex(&m).map_err(|_| corrupt("MKVP"))?, r.get::<_, i64>(1)? as u64))
            },
        )
    }

    fn keys_wrapped_under(&self, mkvp: &Mkvp, after: Option<&KeyLabel>, limit: usize) -> Result<Vec<KeyRecord>> {
        self.query_all(
            "list keys under a master key",
            &format!(
                "SELECT {KEY_COLS}, @ok(keys) FROM keys WHERE mkvp = ?1 AND wrapped IS NOT NULL AND label > ?2 ORDER BY label LIMIT ?3"
            ),
            params![mkvp.to_hex(), after.map(|l| l.as_str()).unwrap_or(""), limit as i64],
            key_from_row,
        )
    }

    fn rewrap_keys(&self, batch: &[Rewrap]) -> Result<usize> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db("start a re-encipherment batch"))?;
        let mut n = 0;
        {
            let mut upd = tx
                .prepare_cached(
                    "UPDATE keys SET wrapped = ?2, mkvp = ?3 WHERE label = ?1 AND mkvp = ?4 AND wrapped IS NOT NULL",
                )
                .map_err(db("re-encipher a key"))?;
            for r in batch {
                n += upd
                    .execute(params![r.label.as_str(), &r.wrapped, r.to.to_hex(), r.from.to_hex()])
                    .map_err(db("re-encipher a key"))?;
            }
        }
        tx.commit().map_err(db("commit a re-encipherment batch"))?;
        Ok(n)
    }

    fn insert_keystore_backup(&self, b: &KeystoreBackupRecord) -> Result<()> {
        self.conn()
            .execute_c(
                "INSERT INTO keystore_backups (id, volume, created_at, key_count, mkvps, sha256) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![b.id, b.volume.as_str(), ts(b.created_at), b.key_count as i64, b.mkvps.join(","), &b.sha256[..]],
            )
            .map_err(db("record a keystore backup"))?;
        Ok(())
    }

    fn insert_vault_backup(&self, b: &VaultBackupRecord) -> Result<()> {
        self.conn()
            .execute_c(
                "INSERT INTO vault_backups (id, volume, created_at, audit_seq, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![b.id, b.volume.as_str(), ts(b.created_at), b.audit_seq as i64, b.bytes as i64],
            )
            .map_err(db("record a vault backup"))?;
        Ok(())
    }

    fn delete_vault_backup(&self, id: &str) -> Result<()> {
        self.conn().execute_c("DELETE FROM vault_backups WHERE id = ?1", [id]).map_err(db("forget a vault backup"))?;
        Ok(())
    }

    fn vault_backups(&self) -> Result<Vec<VaultBackupRecord>> {
        self.query_all(
            "list vault backups",
            "SELECT id, volume, created_at, audit_seq, bytes, @ok(vault_backups) FROM vault_backups ORDER BY created_at, id",
            [],
            |r| {
                let volume: String = r.get(1)?;
                Ok(VaultBackupRecord {
                    id: r.get(0)?,
                    volume: VolumeName::new(volume).map_err(|e| corrupt(e.to_string()))?,
                    created_at: from_ts(r.get(2)?)?,
                    audit_seq: r.get::<_, i64>(3)? as u64,
                    bytes: r.get::<_, i64>(4)? as u64,
                })
            },
        )
    }

    fn keystore_backups(&self) -> Result<Vec<KeystoreBackupRecord>> {
        self.query_all(
            "list keystore backups",
            "SELECT id, volume, created_at, key_count, mkvps, sha256, @ok(keystore_backups) FROM keystore_backups ORDER BY created_at, id",
            [],
            |r| {
                let volume: String = r.get(1)?;
                let mkvps: String = r.get(4)?;
                let sha: Vec<u8> = r.get(5)?;
                Ok(KeystoreBackupRecord {
                    id: r.get(0)?,
                    volume: VolumeName::new(volume).map_err(|e| corrupt(e.to_string()))?,
                    created_at: from_ts(r.get(2)?)?,
                    key_count: r.get::<_, i64>(3)? as u64,
                    mkvps: mkvps.split(',').filter(|m| !m.is_empty()).map(String::from).collect(),
                    sha256: sha.try_into().map_err(|_| corrupt("backup hash"))?,
                })
            },
        )
    }

    fn insert_backups(&self, items: &[BackupInsert<'_>]) -> Result<Vec<u64>> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db("start recording a backup"))?;
        let ids = items.iter().map(|x| backup_in(&tx, x)).collect::<Result<Vec<_>>>()?;
        tx.commit().map_err(db("commit a backup"))?;
        Ok(ids)
    }

    fn backups_after(&self, after: u64, limit: u32) -> Result<Vec<BackupRecord>> {
        self.query_all(
            "list backups",
            &format!("{BACKUP_SELECT} WHERE id > ?1 ORDER BY id LIMIT ?2"),
            params![after.min(i64::MAX as u64) as i64, i64::from(limit)],
            backup_from_row,
        )
    }

    fn key_backups(&self, label: &KeyLabel) -> Result<Vec<BackupRecord>> {
        self.query_all(
            "list a key's backups",
            &format!("{BACKUP_SELECT} WHERE key_label = ?1 ORDER BY id"),
            [label.as_str()],
            backup_from_row,
        )
    }

    fn dataset_backups(&self, name: &DatasetName) -> Result<Vec<BackupRecord>> {
        self.query_all(
            "list a dataset's backups",
            &format!("{BACKUP_SELECT} WHERE dataset = ?1 ORDER BY id"),
            [name.as_str()],
            backup_from_row,
        )
    }

    fn backups_since(&self, after: u64) -> Result<(u64, Vec<DatasetName>)> {
        let conn = self.fresh_reader()?;
        let tx = conn.unchecked_transaction().map_err(db("read what was copied since"))?;
        let newest: i64 = tx
            .query_row_c("SELECT coalesce(max(id), 0) FROM backups", [], |r| r.get(0))
            .map_err(db("read what was copied since"))?;
        let after = after.min(i64::MAX as u64) as i64;
        let mut stmt = tx
            .prepare_cached("SELECT DISTINCT dataset FROM backups WHERE id > ?1 AND id <= ?2 ORDER BY dataset")
            .map_err(db("read what was copied since"))?;
        let names = stmt
            .query_map(params![after, newest], |r| {
                DatasetName::new(r.get::<_, String>(0)?).map_err(|e| corrupt(e.to_string()))
            })
            .map_err(db("read what was copied since"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db("read what was copied since"))?;
        drop(stmt);
        tx.finish().map_err(db("read what was copied since"))?;
        Ok((newest.max(0) as u64, names))
    }

    fn backup_chunks(&self, id: u64) -> Result<Vec<ChunkId>> {
        self.query_all(
            "list backup chunks",
            "SELECT chunk_id FROM backup_chunks WHERE backup_id = ?1 ORDER BY idx",
            [id as i64],
            |r| Ok(ChunkId(id16(r.get(0)?)?)),
        )
    }

    fn remove_backup(&self, id: u64) -> Result<Garbage> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db("start removing a backup"))?;
        let found: Option<(String, Vec<u8>, i64)> = tx
            .query_row_c("SELECT volume, copy_id, generation FROM backups WHERE id = ?1", [id as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
            .map_err(db("read a backup"))?;
        let (vol, copy_id, generation) =
            found.ok_or_else(|| RepoError::NotFound { kind: "backup", name: id.to_string() })?;
        let copy_id = DatasetId(id16(copy_id).map_err(db("read a backup"))?);
        let candidates = chunk_list(&tx, "SELECT chunk_id FROM backup_chunks WHERE backup_id = ?1", [id as i64])?;
        tx.execute_c("DELETE FROM backups WHERE id = ?1", [id as i64]).map_err(db("remove a backup"))?;
        let garbage = garbage_after(&tx, candidates, &vol, (copy_id, generation as u64), None)?;
        tx.commit().map_err(db("commit a backup removal"))?;
        Ok(garbage)
    }

    fn backup_sources(&self, id: u64) -> Result<Vec<Option<ChunkId>>> {
        self.query_all(
            "list backup sources",
            "SELECT source_id FROM backup_chunks WHERE backup_id = ?1 ORDER BY idx",
            [id as i64],
            |r| r.get::<_, Option<Vec<u8>>>(0)?.map(|v| Ok(ChunkId(id16(v)?))).transpose(),
        )
    }

    fn create_snapshot(&self, name: &DatasetName) -> Result<SnapshotRecord> {
        let mut conn = self.conn();
        let tx =
            conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db("start a snapshot"))?;
        let d = tx
            .query_row_c(&format!("{DATASET_SELECT} WHERE d.name = ?1"), [name.as_str()], dataset_from_row)
            .optional()
            .map_err(db("read a dataset"))?
            .ok_or_else(|| RepoError::NotFound { kind: "dataset", name: name.to_string() })?;
        let g = &d.current;
        let now = Timestamp::now();
        tx.execute_c(
            "INSERT INTO snapshots (dataset, dataset_id, generation, volume, key_label, size, chunk_count, manifest_hash, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                name.as_str(),
                &d.id.0[..],
                g.generation as i64,
                g.volume.as_str(),
                g.key_label.as_str(),
                g.size as i64,
                g.chunk_count as i64,
                &g.manifest_hash[..],
                ts(now)
            ],
        )
        .map_err(db("record a snapshot"))?;
        let id = tx.last_insert_rowid();
        tx.execute_c(
            "INSERT INTO snapshot_chunks (snapshot_id, idx, chunk_id)
             SELECT ?1, idx, chunk_id FROM generation_chunks WHERE dataset_id = ?2 AND generation = ?3",
            params![id, &d.id.0[..], g.generation as i64],
        )
        .map_err(db("record snapshot chunks"))?;
        tx.commit().map_err(db("commit a snapshot"))?;
        Ok(SnapshotRecord {
            id: id as u64,
            dataset: name.clone(),
            dataset_id: d.id,
            generation: g.generation,
            volume: g.volume.clone(),
            key_label: g.key_label.clone(),
            size: g.size,
            chunk_count: g.chunk_count,
            manifest_hash: g.manifest_hash,
            created_at: now,
            checked: None,
        })
    }

    fn record_check(&self, what: CheckedCopy, id: u64, check: &CopyCheck) -> Result<()> {
        let table = match what {
            CheckedCopy::Backup => "backups",
            CheckedCopy::Snapshot => "snapshots",
        };
        // A copy removed meanwhile has nothing left to record on.
        self.conn()
            .execute_c(
                &format!(
                    "UPDATE {table} SET checked_at = ?2, checked_data = ?3, check_problem = ?4
                     WHERE id = ?1 AND (?3 = 1 OR ?4 IS NOT NULL OR (coalesce(checked_data, 0) = 0 AND check_problem IS NULL))"
                ),
                params![id as i64, ts(check.at), i64::from(check.read_data), check.problem.as_deref()],
            )
            .map_err(db("record a copy's check"))?;
        Ok(())
    }

    fn snapshots_after(&self, after: u64, limit: u32) -> Result<Vec<SnapshotRecord>> {
        self.query_all(
            "list snapshots",
            &format!("{SNAPSHOT_SELECT} WHERE id > ?1 ORDER BY id LIMIT ?2"),
            params![after.min(i64::MAX as u64) as i64, i64::from(limit)],
            snapshot_from_row,
        )
    }

    fn key_snapshots(&self, label: &KeyLabel) -> Result<Vec<SnapshotRecord>> {
        self.query_all(
            "list a key's snapshots",
            &format!("{SNAPSHOT_SELECT} WHERE key_label = ?1 ORDER BY id"),
            [label.as_str()],
            snapshot_from_row,
        )
    }

    fn snapshot_chunks(&self, id: u64) -> Result<Vec<ChunkId>> {
        self.query_all(
            "list snapshot chunks",
            "SELECT chunk_id FROM snapshot_chunks WHERE snapshot_id = ?1 ORDER BY idx",
            [id as i64],
            |r| Ok(ChunkId(id16(r.get(0)?)?)),
        )
    }

    fn remove_snapshot(&self, id: u64) -> Result<Garbage> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db("start removing a snapshot"))?;
        let found: Option<(String, Vec<u8>, i64)> = tx
            .query_row_c("SELECT volume, dataset_id, generation FROM snapshots WHERE id = ?1", [id as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
            .map_err(db("read a snapshot"))?;
        let (vol, ds, generation) =
            found.ok_or_else(|| RepoError::NotFound { kind: "snapshot", name: id.to_string() })?;
        let ds = DatasetId(id16(ds).map_err(db("read a snapshot"))?);
        let candidates = chunk_list(&tx, "SELECT chunk_id FROM snapshot_chunks WHERE snapshot_id = ?1", [id as i64])?;
        tx.execute_c("DELETE FROM snapshots WHERE id = ?1", [id as i64]).map_err(db("remove a snapshot"))?;
        let garbage = garbage_after(&tx, candidates, &vol, (ds, generation as u64), None)?;
        tx.commit().map_err(db("commit a snapshot removal"))?;
        Ok(garbage)
    }

    fn relocate_volume(&self, name: &VolumeName, location: &str) -> Result<()> {
        let n = self
            .conn()
            .execute_c("UPDATE volumes SET location = ?2 WHERE name = ?1", params![name.as_str(), location])
            .map_err(db("relocate a volume"))?;
        if n == 0 {
            return Err(RepoError::NotFound { kind: "volume", name: name.to_string() });
        }
        Ok(())
    }

    fn copy_to(&self, path: &Path) -> Result<()> {
        let target = path.to_str().ok_or_else(|| RepoError::Corrupt { what: format!("path {}", path.display()) })?;
        self.conn().execute_c("VACUUM INTO ?1", [target]).map_err(db("copy the repository"))?;
        Ok(())
    }

    fn row_counts(&self) -> Result<crate::copy::RowCounts> {
        crate::copy::sqlite_counts(&*self.reader()?)
    }

    fn insert_mirror(&self, primary: &VolumeName, secondary: &VolumeName) -> Result<()> {
        let r = self.conn().execute_c(
            "INSERT INTO mirrors (primary_volume, secondary_volume, created_at) VALUES (?1, ?2, ?3)",
            params![primary.as_str(), secondary.as_str(), ts(Timestamp::now())],
        );
        match r {
            Err(e) if is_unique_violation(&e) => Err(RepoError::Exists { kind: "mirror", name: primary.to_string() }),
            r => r.map(|_| ()).map_err(db("record a mirror")),
        }
    }

    fn mirrors(&self) -> Result<Vec<(VolumeName, VolumeName, Timestamp)>> {
        self.query_all(
            "list mirrors",
            "SELECT primary_volume, secondary_volume, created_at, @ok(mirrors) FROM mirrors ORDER BY primary_volume",
            [],
            |r| {
                let (p, s): (String, String) = (r.get(0)?, r.get(1)?);
                Ok((
                    VolumeName::new(p).map_err(|e| corrupt(e.to_string()))?,
                    VolumeName::new(s).map_err(|e| corrupt(e.to_string()))?,
                    from_ts(r.get(2)?)?,
                ))
            },
        )
    }

    fn remove_mirror(&self, primary: &VolumeName) -> Result<bool> {
        let n = self
            .conn()
            .execute_c("DELETE FROM mirrors WHERE primary_volume = ?1", [primary.as_str()])
            .map_err(db("remove a mirror"))?;
        Ok(n > 0)
    }

    fn record_drills(&self, rows: &[custos_model::DrillRecord]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db("record drill results"))?;
        for d in rows {
            tx.execute_c("DELETE FROM drills WHERE dataset = ?1 AND threats = ?2", [&d.dataset, &d.threats])
                .map_err(db("record drill results"))?;
            tx.execute_c(
                "INSERT INTO drills (dataset, threats, at, survived, agrees, how, by_principal) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                rusqlite::params![d.dataset, d.threats, ts(d.at), d.survived, d.agrees, d.how, d.by],
            )
            .map_err(db("record drill results"))?;
        }
        tx.commit().map_err(db("record drill results"))
    }

    fn drills(&self) -> Result<Vec<custos_model::DrillRecord>> {
        self.query_all(
            "list drill results",
            "SELECT dataset, threats, at, survived, agrees, how, by_principal, @ok(drills) FROM drills ORDER BY dataset, threats",
            [],
            |r| {
                Ok(custos_model::DrillRecord {
                    dataset: r.get(0)?,
                    threats: r.get(1)?,
                    at: from_ts(r.get(2)?)?,
                    survived: r.get(3)?,
                    agrees: r.get(4)?,
                    how: r.get(5)?,
                    by: r.get(6)?,
                })
            },
        )
    }

    fn volume_objects(&self, vol: &VolumeName) -> Result<VolumeObjects> {
        let v = vol.as_str();
        let mut chunks: Vec<ChunkId> = self.query_all(
            "list a volume's chunks",
            "SELECT c.chunk_id FROM generation_chunks c JOIN generations g
                 ON g.dataset_id = c.dataset_id AND g.generation = c.generation WHERE g.volume = ?1
             UNION SELECT bc.chunk_id FROM backup_chunks bc JOIN backups b ON b.id = bc.backup_id WHERE b.volume = ?1
             UNION SELECT sc.chunk_id FROM snapshot_chunks sc JOIN snapshots s ON s.id = sc.snapshot_id WHERE s.volume = ?1",
            [v],
            |r| Ok(ChunkId(id16(r.get(0)?)?)),
        )?;
        chunks.sort();
        let manifests = self.query_all(
            "list a volume's manifests",
            "SELECT dataset_id, generation FROM generations WHERE volume = ?1
             UNION SELECT copy_id, generation FROM backups WHERE volume = ?1
             UNION SELECT dataset_id, generation FROM snapshots WHERE volume = ?1",
            [v],
            |r| Ok((DatasetId(id16(r.get(0)?)?), r.get::<_, i64>(1)? as u64)),
        )?;
        let keystore_backups = self.query_all(
            "list a volume's keystore backups",
            "SELECT id FROM keystore_backups WHERE volume = ?1",
            [v],
            |r| r.get(0),
        )?;
        Ok(VolumeObjects { chunks, manifests, keystore_backups })
    }

    fn insert_kbk(&self, k: &KbkRecord, escrows: &[(KeyLabel, EscrowCopy)], shares: &[SealedShare]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db("start recording a key-backup key"))?;
        tx.execute_c(
            "INSERT INTO kbks (id, public, threshold, custodians, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![k.id, &k.public[..], k.threshold as i64, k.custodians.join(","), ts(k.created_at)],
        )
        .map_err(db("record a key-backup key"))?;
        {
            let mut up = tx
                .prepare_cached("UPDATE keys SET escrow_kbk = ?2, escrow = ?3 WHERE label = ?1")
                .map_err(db("escrow keys"))?;
            for (label, e) in escrows {
                up.execute(params![label.as_str(), e.kbk, e.blob]).map_err(db("escrow keys"))?;
            }
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO escrow_shares (kbk, custodian, recipient, sealed, confirm, confirmed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(db("store sealed shares"))?;
            for sh in shares {
                ins.execute(params![
                    sh.kbk,
                    sh.custodian,
                    &sh.recipient[..],
                    sh.sealed,
                    &sh.confirm[..],
                    sh.confirmed_at.map(ts)
                ])
                .map_err(db("store sealed shares"))?;
            }
        }
        tx.commit().map_err(db("commit a key-backup key"))
    }

    fn escrow_shares(&self, kbk: &str) -> Result<Vec<SealedShare>> {
        self.query_all(
            "list sealed shares",
            "SELECT kbk, custodian, recipient, sealed, confirm, confirmed_at, @ok(escrow_shares) FROM escrow_shares WHERE kbk = ?1 ORDER BY custodian",
            [kbk],
            |r| {
                let recipient: Vec<u8> = r.get(2)?;
                let confirm: Vec<u8> = r.get(4)?;
                Ok(SealedShare {
                    kbk: r.get(0)?,
                    custodian: r.get(1)?,
                    recipient: recipient.try_into().map_err(|_| corrupt("share recipient"))?,
                    sealed: r.get(3)?,
                    confirm: confirm.try_into().map_err(|_| corrupt("share confirmation"))?,
                    confirmed_at: opt_ts(r.get(5)?)?,
                })
            },
        )
    }

    fn confirm_escrow_share(&self, kbk: &str, custodian: &str, at: Timestamp) -> Result<bool> {
        let n = self
            .conn()
            .execute_c(
                "UPDATE escrow_shares SET confirmed_at = ?3 WHERE kbk = ?1 AND custodian = ?2",
                params![kbk, custodian, ts(at)],
            )
            .map_err(db("confirm a share"))?;
        Ok(n > 0)
    }

    fn set_custodian_key(&self, k: &CustodianKey) -> Result<()> {
        let r = self.conn().execute_c(
            "INSERT INTO custodian_keys (principal, public, registered_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (principal) DO UPDATE SET public = excluded.public, registered_at = excluded.registered_at",
            params![k.principal, &k.public[..], ts(k.registered_at)],
        );
        match r {
            Err(e) if is_unique_violation(&e) => {
                Err(RepoError::Exists { kind: "custodian recipient", name: hex::encode(k.public) })
            }
            r => r.map(|_| ()).map_err(db("register a custodian recipient")),
        }
    }

    fn custodian_keys(&self) -> Result<Vec<CustodianKey>> {
        self.query_all(
            "list custodian recipients",
            "SELECT principal, public, registered_at, @ok(custodian_keys) FROM custodian_keys ORDER BY principal",
            [],
            |r| {
                let public: Vec<u8> = r.get(1)?;
                Ok(CustodianKey {
                    principal: r.get(0)?,
                    public: public.try_into().map_err(|_| corrupt("custodian recipient"))?,
                    registered_at: from_ts(r.get(2)?)?,
                })
            },
        )
    }

    fn kbks(&self) -> Result<Vec<KbkRecord>> {
        self.query_all(
            "list key-backup keys",
            "SELECT id, public, threshold, custodians, created_at, @ok(kbks) FROM kbks ORDER BY created_at, id",
            [],
            |r| {
                let public: Vec<u8> = r.get(1)?;
                let custodians: String = r.get(3)?;
                Ok(KbkRecord {
                    id: r.get(0)?,
                    public: public.try_into().map_err(|_| corrupt("KBK public key"))?,
                    threshold: r.get::<_, i64>(2)? as u8,
                    custodians: custodians.split(',').map(String::from).collect(),
                    created_at: from_ts(r.get(4)?)?,
                })
            },
        )
    }

    fn insert_volume(&self, v: &VolumeRecord) -> Result<()> {
        let r = self.conn().execute_c(
            "INSERT INTO volumes (name, location, site, medium, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![v.name.as_str(), v.location, v.site, v.medium.as_str(), ts(v.created_at)],
        );
        match r {
            Err(e) if is_unique_violation(&e) => Err(RepoError::Exists { kind: "volume", name: v.name.to_string() }),
            r => r.map(|_| ()).map_err(db("store a volume")),
        }
    }

    fn volume(&self, name: &VolumeName) -> Result<Option<VolumeRecord>> {
        self.conn()
            .query_row_c(
                &self.sql("SELECT name, location, site, medium, created_at, @ok(volumes) FROM volumes WHERE name = ?1"),
                [name.as_str()],
                volume_from_row,
            )
            .optional()
            .map_err(db("read a volume"))
    }

    fn volumes(&self) -> Result<Vec<VolumeRecord>> {
        self.query_all(
            "list volumes",
            "SELECT name, location, site, medium, created_at, @ok(volumes) FROM volumes ORDER BY name",
            [],
            volume_from_row,
        )
    }

    fn insert_policy(&self, p: &PolicyRecord) -> Result<()> {
        let (key, template, app) = match &p.target {
            PolicyTarget::Key(l) => (Some(l.as_str()), false, None),
            PolicyTarget::Template { app } => (None, true, app.as_deref()),
        };
        let r = self.conn().execute_c(
            "INSERT INTO policies (name, pattern, volume, key_label, template, template_app, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![p.name, p.pattern.as_str(), p.volume.as_str(), key, template, app, ts(p.created_at)],
        );
        match r {
            Err(e) if is_unique_violation(&e) => Err(RepoError::Exists { kind: "policy", name: p.name.clone() }),
            r => r.map(|_| ()).map_err(db("store a policy")),
        }
    }

    fn policies(&self) -> Result<Vec<PolicyRecord>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&self.sql("SELECT name, pattern, volume, key_label, template, template_app, created_at, @ok(policies) FROM policies ORDER BY name"))
            .map_err(db("list policies"))?;
        let rows = stmt.query_map([], policy_from_row).map_err(db("list policies"))?;
        rows.collect::<rusqlite::Result<_>>().map_err(db("list policies"))
    }

    fn chunk_referenced(&self, vol: &VolumeName, id: &ChunkId) -> Result<bool> {
        Ok(referenced(&self.conn(), std::slice::from_ref(id), vol.as_str())?[0])
    }

    fn deletion_seq(&self) -> Result<u64> {
        deletion_seq(&*self.reader()?)
    }

    fn trash(&self) -> Result<Vec<TrashEntry>> {
        self.query_all(
            "list the trash",
            "SELECT volume, kind, object, generation, released_at, claimed FROM trash WHERE claimed != 3 ORDER BY released_at, volume, object",
            [],
            trash_from_row,
        )
    }

    fn claim_trash(&self, released_before: Timestamp) -> Result<Garbage> {
        let me = self.session()?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db("start claiming the trash"))?;
        let due: Vec<(TrashEntry, i64, Option<String>)> = {
            let mut stmt = tx
                .prepare(
                    "SELECT volume, kind, object, generation, released_at, claimed, claimed, claimed_by FROM trash
                     WHERE (claimed = 0 AND released_at < ?1) OR claimed IN (1, 2)",
                )
                .map_err(db("read the trash"))?;
            let rows = stmt
                .query_map([ts(released_before)], |r| Ok((trash_from_row(r)?, r.get(6)?, r.get(7)?)))
                .map_err(db("read the trash"))?;
            rows.collect::<rusqlite::Result<_>>().map_err(db("read the trash"))?
        };
        let mut claim = Garbage::default();
        let mut rescued = Garbage::default();
        let mut alive: std::collections::HashMap<Option<String>, bool> = Default::default();
        for (e, state, by) in due {
            // Another deleter's claim is its own while it lives.
            if state == 1 {
                let live = match alive.get(&by) {
                    Some(l) => *l,
                    None => {
                        let l = by.as_deref() == Some(me.as_str())
                            || self.claimer_alive(by.as_deref(), e.released_at, released_before)?;
                        alive.insert(by.clone(), l);
                        l
                    }
                };
                if live {
                    continue;
                }
            }
            let still_used = match (&e.chunk, &e.manifest) {
                (Some(c), _) => referenced(&tx, std::slice::from_ref(c), e.volume.as_str())?[0],
                (None, Some((d, g))) => manifest_referenced(&tx, d, *g, e.volume.as_str())?,
                (None, None) => false,
            };
            // Never delete what something references (a claimed entry cannot
            // be referenced again, since commits refuse claimed objects).
            let to = if still_used { &mut rescued } else { &mut claim };
            match (e.chunk, e.manifest) {
                (Some(c), _) => to.chunks.push((e.volume, c)),
                (None, Some((d, g))) => to.manifests.push((e.volume, d, g)),
                (None, None) => {}
            }
        }
        forget(&tx, &rescued)?;
        // Claimed anew (given-up and orphaned claims alike), by this session.
        forget(&tx, &claim)?;
        to_trash(&tx, &claim, Some(&me))?;
        tx.commit().map_err(db("commit claiming the trash"))?;
        Ok(claim)
    }

    fn claim_orphans(&self, found: &Garbage) -> Result<Garbage> {
        let me = self.session()?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db("start claiming orphans"))?;
        let mut claim = Garbage::default();
        let mut in_trash = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM trash WHERE volume = ?1 AND kind = ?2 AND object = ?3 AND generation = ?4
                     AND claimed != 3)",
            )
            .map_err(db("look in the trash"))?;
        let mut free = |vol: &str, kind: &str, object: &[u8], generation: i64| -> Result<bool> {
            let held: bool = in_trash
                .query_row(params![vol, kind, object, generation], |r| r.get(0))
                .map_err(db("look in the trash"))?;
            Ok(!held)
        };
        for (v, c) in &found.chunks {
            if !referenced(&tx, std::slice::from_ref(c), v.as_str())?[0] && free(v.as_str(), "chunk", &c.0, 0)? {
                claim.chunks.push((v.clone(), *c));
            }
        }
        for (v, d, g) in &found.manifests {
            if !manifest_referenced(&tx, d, *g, v.as_str())? && free(v.as_str(), "manifest", &d.0, *g as i64)? {
                claim.manifests.push((v.clone(), *d, *g));
            }
        }
        drop(in_trash);
        to_trash(&tx, &claim, Some(&me))?;
        tx.commit().map_err(db("commit claiming orphans"))?;
        Ok(claim)
    }

    fn abandon_claims(&self, left: &Garbage) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db("start giving up claims"))?;
        {
            let mut up = tx
                .prepare_cached(
                    "UPDATE trash SET claimed = 2 WHERE volume = ?1 AND kind = ?2 AND object = ?3 AND generation = ?4",
                )
                .map_err(db("give up claims"))?;
            for (vol, kind, object, generation) in trash_keys(left) {
                up.execute(params![vol, kind, object, generation]).map_err(db("give up claims"))?;
            }
        }
        tx.commit().map_err(db("commit giving up claims"))
    }

    fn forget_trash(&self, gone: &Garbage) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db("start emptying the trash"))?;
        bury(&tx, gone)?;
        tx.commit().map_err(db("commit emptying the trash"))
    }

    fn touch_datasets(&self, ids: &[DatasetId]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db("record a dataset's access"))?;
        {
            let now = ts(Timestamp::now());
            let mut up = tx
                .prepare_cached("UPDATE datasets SET last_access = ?2 WHERE id = ?1")
                .map_err(db("record a dataset's access"))?;
            for id in ids {
                up.execute(params![&id.0[..], now]).map_err(db("record a dataset's access"))?;
            }
        }
        tx.commit().map_err(db("record a dataset's access"))
    }

    #[allow(clippy::too_many_arguments)] // one transaction's inputs, each checked in it
    fn move_generation(
        &self,
        id: &DatasetId,
        generation: u64,
        from: &VolumeName,
        to: &VolumeName,
        migrated_from: Option<&VolumeName>,
        reused: &[ChunkId],
        since: u64,
    ) -> Result<Garbage> {
        let me = self.session()?;
        let mut conn = self.conn();
        let tx =
            conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db("start a move"))?;
        let n = tx
            .execute_c(
                "UPDATE generations SET volume = ?4 WHERE dataset_id = ?1 AND generation = ?2 AND volume = ?3",
                params![&id.0[..], generation as i64, from.as_str(), to.as_str()],
            )
            .map_err(db("move a generation"))?;
        if n != 1 {
            return Err(RepoError::NotFound {
                kind: "generation to move",
                name: format!("{generation} of dataset id {} on volume {from}", id.to_hex()),
            });
        }
        let what = || format!("the move of dataset id {} to {to}", id.to_hex());
        check_reused(&tx, reused, to.as_str(), what)?;
        let moved = chunk_list(
            &tx,
            "SELECT chunk_id FROM generation_chunks WHERE dataset_id = ?1 AND generation = ?2",
            params![&id.0[..], generation as i64],
        )?;
        check_not_claimed(&tx, to.as_str(), &listed(to.as_str(), &moved, (*id, generation))?, since, what)?;
        tx.execute_c(
            "UPDATE datasets SET migrated_from = ?2 WHERE id = ?1",
            params![&id.0[..], migrated_from.map(|v| v.as_str())],
        )
        .map_err(db("mark a migration"))?;
        let candidates = chunk_list(
            &tx,
            "SELECT chunk_id FROM generation_chunks WHERE dataset_id = ?1 AND generation = ?2",
            params![&id.0[..], generation as i64],
        )?;
        let garbage = garbage_after(&tx, candidates, from.as_str(), (*id, generation), Some(&me))?;
        tx.commit().map_err(db("commit a move"))?;
        Ok(garbage)
    }

    fn insert_request(&self, r: &RequestRow) -> Result<u64> {
        let conn = self.conn();
        conn.execute_c(
            "INSERT INTO requests (action, args, requested_by, created_at, expires_at, state) VALUES (?1, ?2, ?3, ?4, ?5, 'pending')",
            params![r.action, r.args, r.requested_by, ts(r.created_at), ts(r.expires_at)],
        )
        .map_err(db("record a request"))?;
        Ok(conn.last_insert_rowid() as u64)
    }

    fn requests_before(&self, before: u64, limit: u32) -> Result<Vec<RequestRow>> {
        self.query_all(
            "list requests",
            "SELECT id, action, args, requested_by, created_at, expires_at, state, decided_by, decided_at, @ok(requests) FROM requests
             WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
            params![before.min(i64::MAX as u64) as i64, i64::from(limit)],
            |r| {
                Ok(RequestRow {
                    id: r.get::<_, i64>(0)? as u64,
                    action: r.get(1)?,
                    args: r.get(2)?,
                    requested_by: r.get(3)?,
                    created_at: from_ts(r.get(4)?)?,
                    expires_at: from_ts(r.get(5)?)?,
                    state: r.get(6)?,
                    decided_by: r.get(7)?,
                    decided_at: r.get::<_, Option<i64>>(8)?.map(from_ts).transpose()?,
                })
            },
        )
    }

    fn decide_request(&self, id: u64, state: &str, by: &str) -> Result<bool> {
        let n = self
            .conn()
            .execute_c(
                "UPDATE requests SET state = ?2, decided_by = ?3, decided_at = ?4 WHERE id = ?1 AND (state = 'pending' OR (state = 'approved' AND ?2 NOT IN ('approved', 'denied')))",
                params![id as i64, state, by, ts(Timestamp::now())],
            )
            .map_err(db("decide a request"))?;
        Ok(n > 0)
    }

    fn insert_principal(&self, p: &PrincipalRecord) -> Result<()> {
        let roles: Vec<&str> = p.roles.iter().map(|r| r.as_str()).collect();
        let r = self.conn().execute_c(
            "INSERT INTO principals (name, role, credential, disabled, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![p.name, roles.join(","), p.credential, p.disabled, ts(p.created_at)],
        );
        match r {
            Err(e) if is_unique_violation(&e) => Err(RepoError::Exists { kind: "user", name: p.name.clone() }),
            r => r.map(|_| ()).map_err(db("store a user")),
        }
    }

    fn principal(&self, name: &str) -> Result<Option<PrincipalRecord>> {
        if self.cache.on() {
            return self.cache.get(&self.cache.principals, name, || self.read_principal(&*self.fresh_reader()?, name));
        }
        self.read_principal(&*self.reader()?, name)
    }

    fn principals(&self) -> Result<Vec<PrincipalRecord>> {
        let mut ps: Vec<PrincipalRecord> = self.query_all(
            "list users",
            "SELECT name, role, credential, disabled, created_at, @ok(principals) FROM principals ORDER BY name",
            [],
            principal_from_row,
        )?;
        let grants: Vec<(String, String, String)> = self.query_all(
            "list grants",
            "SELECT principal, kind, pattern, @ok(grants) FROM grants ORDER BY principal, kind, pattern",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        for (who, kind, pat) in grants {
            let pat = Pattern::new(pat).map_err(|e| RepoError::Corrupt { what: e.to_string() })?;
            if let Some(p) = ps.iter_mut().find(|p| p.name == who) {
                match kind.as_str() {
                    "data" => p.data_grants.push(pat),
                    _ => p.key_grants.push(pat),
                }
            }
        }
        Ok(ps)
    }

    fn set_principal_disabled(&self, name: &str, disabled: bool) -> Result<()> {
        self.update_principal(name, "disabled", &disabled, "change a user")
    }

    fn remove_principal(&self, name: &str) -> Result<bool> {
        let mut conn = self.conn();
        let tx =
            conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db("remove a user"))?;
        let admins = |tx: &Transaction| -> Result<i64> {
            tx.query_row_c(crate::ENABLED_ADMINS_SQL, [], |r| r.get(0)).map_err(db("remove a user"))
        };
        let before = admins(&tx)?;
        tx.execute_c("DELETE FROM grants WHERE principal = ?1", [name]).map_err(db("remove a user's grants"))?;
        let n = tx.execute_c("DELETE FROM principals WHERE name = ?1", [name]).map_err(db("remove a user"))?;
        if before > 0 && admins(&tx)? == 0 {
            return Err(RepoError::LastAdmin { name: name.into() });
        }
        tx.commit().map_err(db("remove a user"))?;
        Ok(n > 0)
    }

    fn set_principal_credential(&self, name: &str, credential: &str) -> Result<()> {
        self.update_principal(name, "credential", &credential, "change a user's credential")
    }

    fn set_principal_roles(&self, name: &str, roles: &[custos_model::Role]) -> Result<()> {
        let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        self.update_principal(name, "role", &roles.join(","), "change a user's roles")
    }

    fn add_grant(&self, name: &str, kind: &str, pattern: &Pattern) -> Result<()> {
        if self.principal(name)?.is_none() {
            return Err(RepoError::NotFound { kind: "user", name: name.into() });
        }
        self.conn()
            .execute_c(
                "INSERT OR IGNORE INTO grants (principal, kind, pattern, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![name, kind, pattern.as_str(), ts(Timestamp::now())],
            )
            .map_err(db("grant"))?;
        Ok(())
    }

    fn remove_grant(&self, name: &str, kind: &str, pattern: &Pattern) -> Result<bool> {
        let n = self
            .conn()
            .execute_c(
                "DELETE FROM grants WHERE principal = ?1 AND kind = ?2 AND pattern = ?3",
                params![name, kind, pattern.as_str()],
            )
            .map_err(db("revoke"))?;
        Ok(n > 0)
    }

    fn set_destroy_after(&self, label: &KeyLabel, at: Option<Timestamp>) -> Result<()> {
        let n = self
            .conn()
            .execute_c("UPDATE keys SET destroy_after = ?2 WHERE label = ?1", params![label.as_str(), at.map(ts)])
            .map_err(db("schedule a key's destruction"))?;
        if n == 0 {
            return Err(RepoError::NotFound { kind: "key", name: label.to_string() });
        }
        Ok(())
    }

    fn unschedule_destroy(&self, label: &KeyLabel, at: Timestamp) -> Result<bool> {
        let n = self
            .conn()
            .execute_c(
                "UPDATE keys SET destroy_after = NULL WHERE label = ?1 AND destroy_after = ?2",
                params![label.as_str(), ts(at)],
            )
            .map_err(db("take a key off the destruction schedule"))?;
        Ok(n == 1)
    }

    fn destroy_after(&self, label: &KeyLabel) -> Result<Option<Timestamp>> {
        let at: Option<Option<i64>> = self
            .reader()?
            .prepare_cached(&self.sql("SELECT destroy_after, @ok(keys) FROM keys WHERE label = ?1"))
            .and_then(|mut st| st.query_row([label.as_str()], |r| r.get(0)).optional())
            .map_err(db("read a key's destruction schedule"))?;
        at.flatten().map(from_ts).transpose().map_err(db("read a key's destruction schedule"))
    }

    fn destroy_schedule(&self) -> Result<Vec<(KeyLabel, Timestamp)>> {
        self.query_all(
            "list scheduled destructions",
            "SELECT label, destroy_after, @ok(keys) FROM keys WHERE destroy_after IS NOT NULL ORDER BY destroy_after, label",
            [],
            |r| Ok((KeyLabel::new(r.get::<_, String>(0)?).map_err(|e| corrupt(e.to_string()))?, from_ts(r.get(1)?)?)),
        )
    }

    fn syncs_apart(&self) -> bool {
        true
    }

    fn sync_written(&self) -> Result<()> {
        // In memory (or where NORMAL could not be set) every commit is
        // already as durable as it gets.
        if let Some(sync) = &self.durable {
            sync.reach_or_stop(sync.written.load(std::sync::atomic::Ordering::Acquire));
        }
        Ok(())
    }

    fn append_audit_batch(
        &self,
        entries: &[AuditRow],
        link: &AuditLink<'_>,
        key_uses: &[KeyLabel],
    ) -> Result<Vec<AuditRow>> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db("start an audit append"))?;
        let last: Option<(i64, Vec<u8>)> = tx
            .query_row_c("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(db("read the audit log's head"))?;
        let (mut seq, mut prev) = match last {
            Some((s, h)) => (s as u64 + 1, h.try_into().map_err(|_| RepoError::Corrupt { what: "audit hash".into() })?),
            None => (1, [0u8; 32]),
        };
        let mut out = Vec::with_capacity(entries.len());
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO audit_log (seq, at, principal, action, object, result, hash, keyed)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(db("append to the audit log"))?;
            for e in entries {
                let mut row = AuditRow { seq, ..e.clone() };
                row.hash = link(&prev, &row);
                ins.execute(params![
                    seq as i64,
                    ts(row.at),
                    row.principal,
                    row.action,
                    row.object,
                    row.result,
                    &row.hash[..],
                    row.keyed
                ])
                .map_err(db("append to the audit log"))?;
                prev = row.hash;
                seq += 1;
                out.push(row);
            }
            let mut up = tx
                .prepare_cached("UPDATE keys SET use_count = use_count + 1, last_used_at = ?2 WHERE label = ?1")
                .map_err(db("count a key use"))?;
            let now = ts(Timestamp::now());
            for l in key_uses {
                up.execute(params![l.as_str(), now]).map_err(db("count a key use"))?;
            }
        }
        tx.commit().map_err(db("append to the audit log"))?;
        Ok(out)
    }

    fn audit_head(&self) -> Result<Option<AuditRow>> {
        let seq: Option<i64> = self
            .conn()
            .query_row_c("SELECT MAX(seq) FROM audit_log", [], |r| r.get(0))
            .map_err(db("read the audit log's head"))?;
        Ok(match seq {
            Some(s) => self.audit_rows(s as u64 - 1)?.pop(),
            None => None,
        })
    }

    fn audit_rows(&self, after: u64) -> Result<Vec<AuditRow>> {
        // LIMIT -1: no limit.
        self.audit_rows_limited(after, -1)
    }

    fn audit_rows_page(&self, after: u64, limit: u32) -> Result<Vec<AuditRow>> {
        self.audit_rows_limited(after, i64::from(limit))
    }

    fn insert_audit_checkpoint(&self, c: &AuditCheckpoint) -> Result<()> {
        self.conn()
            .execute_c(
                // A checkpoint of the same entry is renewed only while the
                // entry is unchanged: one signed over a different head is
                // evidence of a cut or a rewrite, and stays.
                "INSERT INTO audit_checkpoints (seq, head, at, mac) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(seq) DO UPDATE SET at = excluded.at, mac = excluded.mac WHERE head = excluded.head",
                params![c.seq as i64, &c.head[..], ts(c.at), c.mac],
            )
            .map_err(db("record an audit checkpoint"))?;
        Ok(())
    }

    fn audit_checkpoints(&self) -> Result<Vec<AuditCheckpoint>> {
        self.query_all(
            "read audit checkpoints",
            "SELECT seq, head, at, mac FROM audit_checkpoints ORDER BY seq",
            [],
            |r| {
                let head: Vec<u8> = r.get(1)?;
                Ok(AuditCheckpoint {
                    seq: r.get::<_, i64>(0)? as u64,
                    head: head.try_into().map_err(|_| corrupt("checkpoint head"))?,
                    at: from_ts(r.get(2)?)?,
                    mac: r.get(3)?,
                })
            },
        )
    }

    fn idempotency_begin(&self, key: &str, principal: &str, request: &[u8; 32]) -> Result<crate::Idempotency> {
        let me = self.session()?;
        let now = Timestamp::now();
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db("start taking up an idempotency key"))?;
        tx.execute_c("DELETE FROM idempotency WHERE created_at < ?1", [ts(now) - IDEMPOTENCY_DAYS * 86_400_000_000])
            .map_err(db("forget old idempotency keys"))?;
        type Seen = (String, Vec<u8>, String, String, Option<i64>, Option<Vec<u8>>);
        let seen: Option<Seen> = tx
            .query_row_c(
                "SELECT principal, request, state, owner, status, reply FROM idempotency WHERE key = ?1",
                [key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .optional()
            .map_err(db("read an idempotency key"))?;
        let out = match seen {
            None => {
                tx.execute_c(
                    "INSERT INTO idempotency (key, principal, request, state, owner, created_at) VALUES (?1, ?2, ?3, 'running', ?4, ?5)",
                    params![key, principal, &request[..], me, ts(now)],
                )
                .map_err(db("record an idempotency key"))?;
                crate::Idempotency::New
            }
            Some((p, r, ..)) if p != principal || r != request => crate::Idempotency::Mismatch,
            Some((_, _, state, _, status, reply)) if state == "done" => {
                crate::Idempotency::Done { status: status.unwrap_or(200) as u16, reply }
            }
            Some((_, _, _, owner, ..)) => {
                drop(tx);
                drop(conn);
                return Ok(if self.claimer_alive(Some(&owner), now, now)? {
                    crate::Idempotency::Running
                } else {
                    crate::Idempotency::Orphaned
                });
            }
        };
        tx.commit().map_err(db("commit an idempotency key"))?;
        Ok(out)
    }

    fn idempotency_finish(&self, key: &str, status: u16, reply: Option<&[u8]>) -> Result<()> {
        self.conn()
            .execute_c(
                "UPDATE idempotency SET state = 'done', status = ?2, reply = ?3 WHERE key = ?1",
                params![key, i64::from(status), reply],
            )
            .map_err(db("record a request's answer"))?;
        Ok(())
    }

    fn hsm_state(&self) -> Result<Option<(Vec<u8>, u64)>> {
        self.reader()?
            .prepare_cached("SELECT sealed, generation FROM hsm_state WHERE id = 1")
            .and_then(|mut st| st.query_row([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))).optional())
            .map_err(db("read the software HSM's state"))
    }

    fn hsm_state_generation(&self) -> Result<Option<u64>> {
        self.reader()?
            .prepare_cached("SELECT generation FROM hsm_state WHERE id = 1")
            .and_then(|mut st| st.query_row([], |r| Ok(r.get::<_, i64>(0)? as u64)).optional())
            .map_err(db("read the software HSM's state"))
    }

    fn put_hsm_state(&self, sealed: &[u8], was: Option<u64>) -> Result<Option<u64>> {
        let c = self.conn();
        let n = match was {
            None => c.execute_c(
                "INSERT INTO hsm_state (id, generation, sealed) VALUES (1, 1, ?1) ON CONFLICT(id) DO NOTHING",
                params![sealed],
            ),
            Some(g) => c.execute_c(
                "UPDATE hsm_state SET sealed = ?1, generation = generation + 1 WHERE id = 1 AND generation = ?2",
                params![sealed, g as i64],
            ),
        }
        .map_err(db("store the software HSM's state"))?;
        Ok((n == 1).then(|| was.map_or(1, |g| g + 1)))
    }

    fn remove_hsm_state(&self) -> Result<bool> {
        Ok(self.conn().execute_c("DELETE FROM hsm_state", []).map_err(db("forget the software HSM's state"))? > 0)
    }

    fn insert_hsm_rule(&self, r: &HsmRule) -> Result<()> {
        let res = self.conn().execute_c(
            "INSERT INTO hsm_rules (name, pattern, method, backup_to, keep_last, keep_daily, keep_monthly, keep_yearly, migrate_after_days, migrate_to, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                r.name,
                r.pattern.as_str(),
                r.method.as_str(),
                r.backup_to.as_ref().map(|v| v.as_str()),
                r.keep_last,
                r.keep_daily,
                r.keep_monthly,
                r.keep_yearly,
                r.migrate_after_days,
                r.migrate_to.as_ref().map(|v| v.as_str()),
                ts(r.created_at)
            ],
        );
        match res {
            Err(e) if is_unique_violation(&e) => Err(RepoError::Exists { kind: "hsm rule", name: r.name.clone() }),
            r => r.map(|_| ()).map_err(db("store an hsm rule")),
        }
    }

    fn hsm_rules(&self) -> Result<Vec<HsmRule>> {
        let vol = |s: Option<String>| -> rusqlite::Result<Option<VolumeName>> {
            s.map(|v| VolumeName::new(v).map_err(|e| corrupt(e.to_string()))).transpose()
        };
        self.query_all(
            "list hsm rules",
            "SELECT name, pattern, method, backup_to, keep_last, keep_daily, keep_monthly, keep_yearly, migrate_after_days, migrate_to, created_at, @ok(hsm_rules)
             FROM hsm_rules ORDER BY name",
            [],
            |r| {
                let pattern: String = r.get(1)?;
                let method: String = r.get(2)?;
                Ok(HsmRule {
                    name: r.get(0)?,
                    pattern: Pattern::new(pattern).map_err(|e| corrupt(e.to_string()))?,
                    method: CopyMethod::parse(&method).ok_or_else(|| corrupt(format!("copy method {method}")))?,
                    backup_to: vol(r.get(3)?)?,
                    keep_last: r.get(4)?,
                    keep_daily: r.get(5)?,
                    keep_monthly: r.get(6)?,
                    keep_yearly: r.get(7)?,
                    migrate_after_days: r.get(8)?,
                    migrate_to: vol(r.get(9)?)?,
                    created_at: from_ts(r.get(10)?)?,
                })
            },
        )
    }

    fn remove_volume(&self, name: &VolumeName) -> Result<()> {
        let mut conn = self.conn();
        let tx =
            conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db("remove a volume"))?;
        let exists: Option<i64> = tx
            .query_row_c("SELECT 1 FROM volumes WHERE name = ?1", [name.as_str()], |r| r.get(0))
            .optional()
            .map_err(db("remove a volume"))?;
        if exists.is_none() {
            return Err(RepoError::NotFound { kind: "volume", name: name.to_string() });
        }
        let uses = tx
            .query_row_c(&crate::volume_uses_sql("?1", "group_concat"), [name.as_str()], |r| {
                Ok(crate::VolumeUses {
                    datasets: r.get(0)?,
                    migrated: r.get(1)?,
                    policies: r.get(2)?,
                    backups: r.get(3)?,
                    snapshots: r.get(4)?,
                    mirrors: r.get(5)?,
                    rules: r.get(6)?,
                    keystore_backups: r.get(7)?,
                    vault_backups: r.get(8)?,
                    trash: r.get(9)?,
                })
            })
            .map_err(db("read what uses a volume"))?;
        uses.refuse(name)?;
        // The foreign keys refuse it too, should anything new refer to volumes.
        tx.execute_c("DELETE FROM volumes WHERE name = ?1", [name.as_str()]).map_err(db("remove a volume"))?;
        tx.commit().map_err(db("remove a volume"))
    }

    fn remove_hsm_rule(&self, name: &str) -> Result<bool> {
        let n =
            self.conn().execute_c("DELETE FROM hsm_rules WHERE name = ?1", [name]).map_err(db("remove an hsm rule"))?;
        Ok(n > 0)
    }

    fn remove_policy(&self, name: &str) -> Result<bool> {
        let n = self.conn().execute_c("DELETE FROM policies WHERE name = ?1", [name]).map_err(db("remove a policy"))?;
        Ok(n > 0)
    }

    fn dataset(&self, name: &DatasetName) -> Result<Option<DatasetRecord>> {
        self.conn()
            .query_row_c(&format!("{DATASET_SELECT} WHERE d.name = ?1"), [name.as_str()], dataset_from_row)
            .optional()
            .map_err(db("read a dataset"))
    }

    fn datasets(&self) -> Result<Vec<DatasetRecord>> {
        self.query_all("list datasets", &format!("{DATASET_SELECT} ORDER BY d.name"), [], dataset_from_row)
    }

    fn datasets_from(&self, from: &str, after: &str, limit: u32) -> Result<Vec<DatasetRecord>> {
        self.query_all(
            "list a page of datasets",
            &format!("{DATASET_SELECT} WHERE d.name >= ?1 AND d.name > ?2 ORDER BY d.name LIMIT ?3"),
            params![from.max(after), after, limit],
            dataset_from_row,
        )
    }

    fn datasets_without_copy(
        &self,
        prefix: &str,
        method: CopyMethod,
        volume: &VolumeName,
    ) -> Result<Vec<DatasetRecord>> {
        self.query_all(
            "find datasets without a copy",
            &format!("{DATASET_SELECT} {}", crate::without_copy_sql(|n| format!("?{n}"))),
            params![prefix, crate::prefix_end(prefix), method.as_str(), volume.as_str()],
            dataset_from_row,
        )
    }

    fn datasets_idle(&self, prefix: &str, before: Timestamp, not_on: &VolumeName) -> Result<Vec<DatasetRecord>> {
        self.query_all(
            "find idle datasets",
            &format!("{DATASET_SELECT} {}", crate::idle_sql(|n| format!("?{n}"))),
            params![prefix, crate::prefix_end(prefix), not_on.as_str(), ts(before)],
            dataset_from_row,
        )
    }

    fn datasets_using_key(&self, label: &KeyLabel) -> Result<Vec<DatasetName>> {
        self.query_all(
            "find datasets using a key",
            "SELECT DISTINCT d.name FROM datasets d JOIN generations g ON g.dataset_id = d.id WHERE g.key_label = ?1 ORDER BY d.name",
            [label.as_str()],
            |r| DatasetName::new(r.get::<_, String>(0)?).map_err(|e| corrupt(e.to_string())),
        )
    }

    fn generation_chunks(&self, id: &DatasetId, generation: u64) -> Result<Vec<ChunkId>> {
        self.query_all(
            "list chunks",
            "SELECT chunk_id FROM generation_chunks WHERE dataset_id = ?1 AND generation = ?2 ORDER BY idx",
            params![&id.0[..], generation as i64],
            |r| Ok(ChunkId(id16(r.get(0)?)?)),
        )
    }

    fn commit_generations(&self, commits: &[GenerationCommit]) -> Result<Vec<Garbage>> {
        let mut conn = self.conn();
        let tx =
            conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db("start a commit"))?;
        let garbage = commits.iter().map(|c| commit_in(&tx, c)).collect::<Result<Vec<_>>>()?;
        tx.commit().map_err(db("commit a generation"))?;
        Ok(garbage)
    }

    fn remove_dataset(&self, name: &DatasetName) -> Result<Garbage> {
        let me = self.session()?;
        let mut conn = self.conn();
        let tx =
            conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db("start a removal"))?;
        let id: Option<Vec<u8>> = tx
            .query_row_c("SELECT id FROM datasets WHERE name = ?1", [name.as_str()], |r| r.get(0))
            .optional()
            .map_err(db("read a dataset"))?;
        let id = DatasetId(
            id16(id.ok_or_else(|| RepoError::NotFound { kind: "dataset", name: name.to_string() })?)
                .map_err(db("read a dataset"))?,
        );
        let gens: Vec<(u64, String)> = {
            let mut stmt = tx
                .prepare("SELECT generation, volume FROM generations WHERE dataset_id = ?1")
                .map_err(db("list generations"))?;
            let rows = stmt
                .query_map([&id.0[..]], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
                .map_err(db("list generations"))?;
            rows.collect::<rusqlite::Result<_>>().map_err(db("list generations"))?
        };
        let garbage = drop_generations(&tx, &id, &gens, Some(&me))?;
        tx.execute_c("DELETE FROM datasets WHERE id = ?1", [&id.0[..]]).map_err(db("remove a dataset"))?;
        tx.commit().map_err(db("commit a removal"))?;
        Ok(garbage)
    }
}

/// One backup's record inside the caller's transaction (see
/// [`Repository::insert_backups`]).
fn backup_in(tx: &Transaction, x: &BackupInsert<'_>) -> Result<u64> {
    let (b, chunks, sources, new_key, reused, since) = (x.record, x.chunks, x.sources, x.new_key, x.reused, x.since);
    let twin: bool = tx
        .query_row_c(
            "SELECT EXISTS (SELECT 1 FROM backups WHERE volume = ?1 AND copy_id = ?2 AND generation = ?3)",
            params![b.volume.as_str(), &b.copy_id.0[..], b.generation as i64],
            |r| r.get(0),
        )
        .map_err(db("look for the same backup"))?;
    if twin {
        return Err(x.twin());
    }
    x.check_length()?;
    let what = || x.what();
    check_reused(tx, reused, b.volume.as_str(), what)?;
    check_not_claimed(
        tx,
        b.volume.as_str(),
        &listed(b.volume.as_str(), chunks, (b.copy_id, b.generation))?,
        since,
        what,
    )?;
    if let Some(k) = new_key {
        insert_key(tx, k)?;
    }
    tx.execute_c(
        "INSERT INTO backups (dataset, dataset_id, source_generation, method, volume, key_label, copy_id, generation,
             size, chunk_size, chunk_count, manifest_hash, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            b.dataset.as_str(),
            &b.dataset_id.0[..],
            b.source_generation as i64,
            b.method.as_str(),
            b.volume.as_str(),
            b.key_label.as_str(),
            &b.copy_id.0[..],
            b.generation as i64,
            b.size as i64,
            b.chunk_size as i64,
            b.chunk_count as i64,
            &b.manifest_hash[..],
            ts(b.created_at)
        ],
    )
    .map_err(db("record a backup"))?;
    let id = tx.last_insert_rowid();
    {
        let mut ins = tx
            .prepare_cached("INSERT INTO backup_chunks (backup_id, idx, chunk_id, source_id) VALUES (?1, ?2, ?3, ?4)")
            .map_err(db("record backup chunks"))?;
        for (i, c) in chunks.iter().enumerate() {
            let src = sources.get(i).map(|s| s.0.to_vec());
            ins.execute(params![id, i as i64, &c.0[..], src]).map_err(db("record backup chunks"))?;
        }
    }
    Ok(id as u64)
}

/// One generation's commit inside the caller's transaction (see
/// [`Repository::commit_generations`]).
fn commit_in(tx: &Transaction, c: &GenerationCommit) -> Result<Garbage> {
    let id = &c.dataset_id.0[..];
    let found: Option<(Vec<u8>, i64)> = tx
        .query_row_c("SELECT id, current_generation FROM datasets WHERE name = ?1", [c.name.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(db("read a dataset"))?;
    let g = &c.generation;
    let new = found.is_none();
    match found {
        None if c.previous == 0 => {
            tx.execute_c(
                "INSERT INTO datasets (id, name, created_at, current_generation, last_access) VALUES (?1, ?2, ?3, ?4, ?3)",
                params![id, c.name.as_str(), ts(g.created_at), g.generation as i64],
            )
            .map_err(db("create a dataset"))?;
        }
        Some((fid, cur)) if fid == id && cur as u64 == c.previous => {}
        other => {
            return Err(RepoError::Conflict {
                name: c.name.to_string(),
                expected: c.previous,
                found: other.map(|(_, g)| g as u64).unwrap_or(0),
            })
        }
    }
    check_reused(tx, &c.reused, g.volume.as_str(), || c.name.to_string())?;
    check_not_claimed(
        tx,
        g.volume.as_str(),
        &listed(g.volume.as_str(), &c.chunks, (c.dataset_id, g.generation))?,
        c.since,
        || c.name.to_string(),
    )?;
    if let Some(k) = &c.new_key {
        insert_key(tx, k)?;
    }
    tx.execute_c(
        "INSERT INTO generations (dataset_id, generation, volume, key_label, size, chunk_size, chunk_count, manifest_hash, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            id,
            g.generation as i64,
            g.volume.as_str(),
            g.key_label.as_str(),
            g.size as i64,
            g.chunk_size as i64,
            g.chunk_count as i64,
            &g.manifest_hash[..],
            ts(g.created_at)
        ],
    )
    .map_err(db("record a generation"))?;
    {
        let mut ins = tx
            .prepare_cached(
                "INSERT INTO generation_chunks (dataset_id, generation, idx, chunk_id) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(db("record chunks"))?;
        for (i, chunk) in c.chunks.iter().enumerate() {
            ins.execute(params![id, g.generation as i64, i as i64, &chunk.0[..]]).map_err(db("record chunks"))?;
        }
    }
    // A new dataset has no other generation, nothing migrated, and its
    // row says all the rest already.
    if new {
        return Ok(Garbage::default());
    }
    // A new generation is written where the policy says, so a migrated
    // dataset is home again.
    tx.execute_c(
        "UPDATE datasets SET current_generation = ?2, migrated_from = NULL, last_access = ?3 WHERE id = ?1",
        params![id, g.generation as i64, ts(g.created_at)],
    )
    .map_err(db("advance a dataset"))?;
    let older: Vec<(u64, String)> = {
        let mut stmt = tx
            .prepare_cached("SELECT generation, volume FROM generations WHERE dataset_id = ?1 AND generation <> ?2")
            .map_err(db("list generations"))?;
        let rows = stmt
            .query_map(params![id, g.generation as i64], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
            .map_err(db("list generations"))?;
        rows.collect::<rusqlite::Result<_>>().map_err(db("list generations"))?
    };
    drop_generations(tx, &c.dataset_id, &older, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance_in_memory() {
        crate::conformance::run(&SqliteRepository::in_memory().unwrap());
    }

    #[test]
    fn rows_are_authenticated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("custos.db");
        let repo = SqliteRepository::open(&p).unwrap();
        let raw = |sql: &str| Connection::open(&p).unwrap().execute_batch(sql).unwrap();
        let reopen = || SqliteRepository::open_existing(&p).map(|r| Box::new(r) as Box<dyn Repository>);
        let plant =
            "CREATE TRIGGER evil AFTER INSERT ON settings BEGIN UPDATE principals SET role = 'security-admin'; END";
        crate::conformance::row_auth(&repo, &raw, &reopen, (plant, "DROP TRIGGER evil"));
    }

    fn clerk() -> PrincipalRecord {
        PrincipalRecord {
            name: "clerk".into(),
            roles: vec![custos_model::Role::App],
            credential: "hash-of-clerk".into(),
            disabled: false,
            created_at: Timestamp::from_second(1_700_000_000).unwrap(),
            data_grants: vec![],
            key_grants: vec![],
        }
    }

    /// A server's read cache: what this repository commits (roles, grants,
    /// a user disabled, settings) is read back at once; what another
    /// connection commits is read once the maximum age has passed, and
    /// until then the remembered value is what is read (so the cache is
    /// really used).
    #[test]
    fn the_read_cache_sees_its_own_changes_at_once_and_others_within_its_age() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("custos.db");
        let repo = SqliteRepository::open(&p).unwrap();
        repo.insert_principal(&clerk()).unwrap();
        repo.set_setting("dual-control", "none").unwrap();
        let age = std::time::Duration::from_millis(300);
        repo.set_read_cache(age);
        let roles = || repo.principal("clerk").unwrap().unwrap().roles;
        assert_eq!(roles(), vec![custos_model::Role::App]);
        assert_eq!(repo.setting("dual-control").unwrap().as_deref(), Some("none"));

        repo.set_principal_roles("clerk", &[custos_model::Role::Auditor]).unwrap();
        assert_eq!(roles(), vec![custos_model::Role::Auditor]);
        repo.add_grant("clerk", "key", &Pattern::new("K.**").unwrap()).unwrap();
        assert_eq!(repo.principal("clerk").unwrap().unwrap().key_grants.len(), 1);
        repo.set_principal_disabled("clerk", true).unwrap();
        assert!(repo.principal("clerk").unwrap().unwrap().disabled);
        repo.set_setting("dual-control", "key.destroy").unwrap();
        assert_eq!(repo.setting("dual-control").unwrap().as_deref(), Some("key.destroy"));
        assert!(repo.remove_principal("clerk").unwrap());
        assert!(repo.principal("clerk").unwrap().is_none());

        // Another process's change.
        repo.insert_principal(&clerk()).unwrap();
        assert!(!repo.principal("clerk").unwrap().unwrap().disabled);
        assert_eq!(repo.setting("dual-control").unwrap().as_deref(), Some("key.destroy"));
        let other = Connection::open(&p).unwrap();
        other.execute_batch("UPDATE principals SET disabled = 1 WHERE name = 'clerk'").unwrap();
        other.execute_batch("UPDATE settings SET value = 'all' WHERE key = 'dual-control'").unwrap();
        assert!(!repo.principal("clerk").unwrap().unwrap().disabled, "remembered within its age");
        assert_eq!(repo.setting("dual-control").unwrap().as_deref(), Some("key.destroy"));
        std::thread::sleep(age + std::time::Duration::from_millis(50));
        assert!(repo.principal("clerk").unwrap().unwrap().disabled);
        assert_eq!(repo.setting("dual-control").unwrap().as_deref(), Some("all"));

        // Off again: every read reads.
        repo.set_read_cache(std::time::Duration::ZERO);
        other.execute_batch("UPDATE principals SET disabled = 0 WHERE name = 'clerk'").unwrap();
        assert!(!repo.principal("clerk").unwrap().unwrap().disabled);
    }

    /// A value the cache is missing is read in a transaction of its own,
    /// never in the thread's older snapshot: read there after a change
    /// committed, it would be remembered as current and stay stale.
    #[test]
    fn the_read_cache_never_remembers_a_snapshot_older_than_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let repo = SqliteRepository::open(&dir.path().join("custos.db")).unwrap();
        repo.set_setting("b", "old").unwrap();
        repo.set_read_cache(std::time::Duration::from_secs(60));
        crate::with_snapshot(|| {
            // The snapshot begins here, before the change.
            repo.key_labels().unwrap();
            std::thread::scope(|s| {
                s.spawn(|| repo.set_setting("b", "new").unwrap());
            });
            assert_eq!(repo.setting("b").unwrap().as_deref(), Some("new"));
        });
        assert_eq!(repo.setting("b").unwrap().as_deref(), Some("new"));
    }

    /// Group commit: every write by many threads is durable when it
    /// returns (the log is synced past it), reads alone sync nothing, and
    /// writers that commit while another syncs share a sync (never more
    /// syncs than writes).
    #[test]
    fn every_write_returns_durable_and_writers_share_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let repo = SqliteRepository::open(&dir.path().join("custos.db")).unwrap();
        let g = repo.durable.as_ref().expect("a catalog in a file syncs its own log");
        let covered = || g.synced.lock().unwrap().0;
        let written = || g.written.load(std::sync::atomic::Ordering::Acquire);
        repo.set_setting("one", "1").unwrap();
        assert!(written() > 0 && covered() >= written(), "the write returned before its sync");
        let (syncs, before) = (g.fsyncs.load(std::sync::atomic::Ordering::Relaxed), covered());
        for _ in 0..20 {
            repo.setting("one").unwrap();
            repo.keys().unwrap();
        }
        assert_eq!(g.fsyncs.load(std::sync::atomic::Ordering::Relaxed), syncs, "reads sync nothing");
        assert_eq!(covered(), before);
        std::thread::scope(|s| {
            for t in 0..8 {
                let repo = &repo;
                s.spawn(move || {
                    let g = repo.durable.as_ref().unwrap();
                    for i in 0..40 {
                        // Each write is covered when it returns: its own
                        // change count is past what was written before it.
                        let before = g.written.load(std::sync::atomic::Ordering::Acquire);
                        repo.set_setting(&format!("t{t}.{i}"), "x").unwrap();
                        assert!(g.synced.lock().unwrap().0 > before, "a write returned before its sync");
                    }
                });
            }
        });
        assert!(covered() >= written());
        let n = g.fsyncs.load(std::sync::atomic::Ordering::Relaxed) - syncs;
        assert!(n <= 320, "{n} syncs for 320 writes");
        for t in 0..8 {
            assert_eq!(repo.setting(&format!("t{t}.39")).unwrap().as_deref(), Some("x"));
        }
        eprintln!("320 writes from 8 threads took {n} syncs of the log");
    }

    /// Thirty-two threads reading at once leave thirty-two connections to
    /// reuse: none is closed to be opened again by the next burst.
    #[test]
    fn concurrent_readers_are_kept_for_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let repo = SqliteRepository::open(&dir.path().join("custos.db")).unwrap();
        repo.set_setting("k", "v").unwrap();
        let all = std::sync::Barrier::new(32);
        std::thread::scope(|s| {
            for _ in 0..32 {
                s.spawn(|| {
                    let r = repo.reader().unwrap();
                    all.wait();
                    let v: String =
                        r.query_row("SELECT value FROM settings WHERE key = 'k'", [], |r| r.get(0)).unwrap();
                    assert_eq!(v, "v");
                });
            }
        });
        assert_eq!(repo.readers.lock().unwrap().len(), 32);
    }

    /// Inside `with_snapshot`, reads share one read transaction: another
    /// repository's commit is not seen until this thread writes (then it
    /// reads its own write and everything before it), and the transaction
    /// ends with the scope or `end_snapshot`, so it never keeps a
    /// checkpoint from truncating the log afterwards. A read inside a read
    /// takes a connection of its own; a write while the snapshot is lent
    /// out ends it when it comes back.
    #[test]
    fn a_snapshot_reads_one_state_sees_its_own_writes_and_ends_with_its_scope() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custos.db");
        let repo = SqliteRepository::open(&path).unwrap();
        let other = SqliteRepository::open(&path).unwrap();
        repo.set_setting("k", "1").unwrap();
        let probe = Connection::open(&path).unwrap();
        probe.busy_timeout(std::time::Duration::ZERO).unwrap();
        // Whether a truncating checkpoint could finish now (no reader holds
        // a snapshot of the log).
        let truncates = || probe.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0)).unwrap() == 0;
        let setting = |k| repo.setting(k).unwrap();
        // Another thread's write (this thread's writes, to any repository,
        // end its snapshot).
        let elsewhere =
            |v: &str| std::thread::scope(|s| s.spawn(|| other.set_setting("k", v).unwrap()).join().unwrap());
        crate::with_snapshot(|| {
            assert_eq!(setting("k").as_deref(), Some("1"));
            elsewhere("2");
            assert_eq!(setting("k").as_deref(), Some("1"), "the snapshot holds");
            assert!(!truncates(), "the snapshot is a read transaction");
            repo.set_setting("mine", "x").unwrap();
            assert_eq!(setting("mine").as_deref(), Some("x"), "own write seen");
            assert_eq!(setting("k").as_deref(), Some("2"), "a write starts a new snapshot");
            elsewhere("3");
            assert_eq!(setting("k").as_deref(), Some("2"));
            crate::end_snapshot();
            assert!(truncates(), "end_snapshot ended the read transaction");
            assert_eq!(setting("k").as_deref(), Some("3"));

            let r = repo.reader().unwrap();
            assert!(matches!(r, Reader::Pinned(..)));
            let v: String = r.query_row("SELECT value FROM settings WHERE key = 'k'", [], |r| r.get(0)).unwrap();
            assert_eq!(v, "3");
            assert!(matches!(repo.reader().unwrap(), Reader::Pooled(..)), "a read inside a read");
            repo.set_setting("mine", "y").unwrap();
            drop(r);
            assert!(PINNED.with(|p| matches!(&*p.borrow(), Pin::None)), "ended when it came back");
            assert!(truncates());
            assert_eq!(setting("mine").as_deref(), Some("y"));
        });
        assert!(truncates(), "the scope's end ended the snapshot");
        assert!(PINNED.with(|p| matches!(&*p.borrow(), Pin::None)));
        for c in repo.readers.lock().unwrap().iter() {
            assert!(c.is_autocommit(), "a pooled connection was left in a transaction");
        }
        // Outside a scope nothing is pinned.
        assert!(matches!(repo.reader().unwrap(), Reader::Pooled(..)));
        elsewhere("4");
        assert_eq!(setting("k").as_deref(), Some("4"));
    }

    /// Commits made under `with_sync(false, ..)` return without a sync;
    /// the next durable commit covers them (one sync for both).
    #[test]
    fn unsynced_writes_are_covered_by_the_next_durable_one() {
        let dir = tempfile::tempdir().unwrap();
        let repo = SqliteRepository::open(&dir.path().join("custos.db")).unwrap();
        let g = repo.durable.as_ref().unwrap();
        let covered = || g.synced.lock().unwrap().0;
        let written = || g.written.load(std::sync::atomic::Ordering::Acquire);
        let syncs = || g.fsyncs.load(std::sync::atomic::Ordering::Relaxed);
        repo.set_setting("zero", "0").unwrap();
        let before = syncs();
        crate::with_sync(false, || {
            repo.set_setting("one", "1").unwrap();
            // A nested scope that asks for the disk gets it.
            crate::with_sync(true, || repo.set_setting("two", "2").unwrap());
            assert!(covered() >= written() && syncs() == before + 1, "the nested durable write synced");
            repo.set_setting("three", "3").unwrap();
        });
        assert!(covered() < written(), "an unsynced write waited for the disk");
        assert_eq!(syncs(), before + 1);
        assert!(!crate::unsynced(), "the scope ended");
        repo.set_setting("four", "4").unwrap();
        assert!(covered() >= written(), "the durable write covers the unsynced one before it");
        assert_eq!(syncs(), before + 2);
        // A sync apart from a commit covers what was only written, once.
        assert!(repo.syncs_apart());
        crate::with_sync(false, || repo.set_setting("five", "5").unwrap());
        assert!(covered() < written());
        repo.sync_written().unwrap();
        assert!(covered() >= written(), "sync_written covers the unsynced write");
        assert_eq!(syncs(), before + 3);
        repo.sync_written().unwrap();
        assert_eq!(syncs(), before + 3, "nothing new to sync: no fsync");
    }

    /// With a lag, a destroyed key's material leaves the database file and
    /// its log within the lag (the eraser thread's checkpoint), not before
    /// the call returns; and a repository closed before then erases it as
    /// it closes, even with another connection keeping the log open.
    /// An inactive key holding `material`, for the erasure tests.
    fn key_holding(label: &str, material: &[u8]) -> KeyRecord {
        KeyRecord {
            label: KeyLabel::new(label).unwrap(),
            state: custos_model::KeyState::Inactive,
            purpose: custos_model::Purpose::Prim,
            app: label.split('.').next().unwrap_or_default().into(),
            wrapped: Some(custos_model::WrappedMaterial(material.to_vec())),
            mkvp: custos_crypto::Mkvp([1; 8]),
            kcv: custos_crypto::Kcv([2; 5]),
            created_at: Timestamp::now(),
            activated_at: None,
            deactivated_at: None,
            destroyed_at: None,
            expires_at: None,
            last_used_at: None,
            use_count: 0,
            escrow: None,
            attributes: Default::default(),
        }
    }

    /// `k` destroyed: its material dropped.
    fn destroyed(k: &KeyRecord) -> KeyRecord {
        KeyRecord {
            state: custos_model::KeyState::Destroyed,
            wrapped: None,
            destroyed_at: Some(Timestamp::now()),
            ..k.clone()
        }
    }

    /// Whether `bytes` are anywhere in the catalog's files in `dir`.
    fn files_hold(dir: &Path, bytes: &[u8]) -> bool {
        ["custos.db", "custos.db-wal"]
            .iter()
            .any(|f| std::fs::read(dir.join(f)).is_ok_and(|b| b.windows(bytes.len()).any(|w| w == bytes)))
    }

    #[test]
    fn erased_material_leaves_the_log_after_the_lag_or_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("custos.db");
        let holds = |bytes: &[u8]| files_hold(dir.path(), bytes);
        let other = SqliteRepository::open(&p).unwrap();
        for (n, lag) in [(1u8, std::time::Duration::from_millis(300)), (2, std::time::Duration::from_secs(3600))] {
            let repo = SqliteRepository::open(&p).unwrap();
            repo.set_erase_lag(lag);
            let pages: i64 = repo.conn().query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap();
            assert_eq!(pages, ERASED_LOG_PAGES, "a short log for the eraser to write back");
            let material = vec![0xA0 + n; 48];
            let k = key_holding(&format!("ERASE.KEY{n}"), &material);
            repo.insert_key(&k).unwrap();
            assert!(holds(&material), "the material was written");
            repo.update_key(&destroyed(&k), &k).unwrap();
            assert!(holds(&material), "erased before the lag passed");
            if n == 1 {
                let t = std::time::Instant::now();
                while holds(&material) {
                    assert!(
                        t.elapsed() < std::time::Duration::from_secs(10),
                        "still in the catalog's files after 10 s"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                assert!(
                    t.elapsed() >= std::time::Duration::from_millis(250),
                    "erased before the lag: {:?}",
                    t.elapsed()
                );
                // Its room given back with zeros, just after the
                // truncation: commits go on overwriting the log's blocks
                // instead of growing it.
                let wal = || std::fs::metadata(dir.path().join("custos.db-wal")).map_or(0, |m| m.len());
                let t = std::time::Instant::now();
                while wal() == 0 {
                    assert!(
                        t.elapsed() < std::time::Duration::from_secs(5),
                        "the log was left truncated, its room not written back"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            } else {
                drop(repo);
                assert!(!holds(&material), "a repository closed within the lag left the material behind");
            }
            assert!(other.key(&k.label).unwrap().unwrap().wrapped.is_none());
        }
    }

    /// The eraser truncates the log and writes its room back with zeros
    /// while another connection (as another process would) writes and
    /// reads: nothing that one committed is lost or read damaged, the
    /// catalog checks whole after reopening, and every destroyed material
    /// left the files.
    #[test]
    fn zeroing_the_log_loses_nothing_another_writer_committed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("custos.db");
        let eraser = SqliteRepository::open(&p).unwrap();
        eraser.set_erase_lag(std::time::Duration::from_millis(1));
        let writer = SqliteRepository::open(&p).unwrap();
        const WRITES: usize = 600;
        let stop = std::sync::atomic::AtomicBool::new(false);
        let materials: Vec<Vec<u8>> = (0..60u8).map(|i| vec![0xC0 ^ i; 40]).collect();
        std::thread::scope(|s| {
            let w = s.spawn(|| {
                for i in 0..WRITES {
                    writer.insert_key(&key_holding(&format!("RACE.W{i}"), &[7; 40])).unwrap();
                }
            });
            let r = s.spawn(|| {
                let reader = SqliteRepository::open(&p).unwrap();
                let mut seen = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let n = reader.keys().unwrap().iter().filter(|k| k.label.as_str().starts_with("RACE.W")).count();
                    assert!(n >= seen, "a reader saw {n} keys after {seen}");
                    seen = n;
                }
            });
            for (i, m) in materials.iter().enumerate() {
                let k = key_holding(&format!("RACE.E{i}"), m);
                eraser.insert_key(&k).unwrap();
                eraser.update_key(&destroyed(&k), &k).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(3));
            }
            w.join().unwrap();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            r.join().unwrap();
        });
        let count = |repo: &SqliteRepository| {
            repo.keys()
                .unwrap()
                .iter()
                .filter(|k| k.label.as_str().starts_with("RACE.W") && k.wrapped.is_some())
                .count()
        };
        assert_eq!(count(&eraser), WRITES);
        assert_eq!(count(&writer), WRITES);
        let t = std::time::Instant::now();
        while materials.iter().any(|m| files_hold(dir.path(), m)) {
            assert!(
                t.elapsed() < std::time::Duration::from_secs(10),
                "destroyed material still in the files after 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        drop((eraser, writer));
        let again = SqliteRepository::open(&p).unwrap();
        assert_eq!(count(&again), WRITES, "after reopening");
        let check: String = again.conn().query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
    }

    #[test]
    fn conformance_on_disk_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("custos.db");
        crate::conformance::run(&SqliteRepository::open(&p).unwrap());
        let again = SqliteRepository::open(&p).unwrap();
        assert!(!again.keys().unwrap().is_empty(), "data survives reopening");
    }

    /// A claim stays with its deleter while that one's session lives (two
    /// processes on one catalog), and passes to another once it is gone.
    #[test]
    fn a_claim_is_taken_over_only_from_a_deleter_that_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("custos.db");
        let first = SqliteRepository::open(&p).unwrap();
        let second = SqliteRepository::open(&p).unwrap();
        let v = VolumeName::new("v").unwrap();
        let orphan = Garbage { chunks: vec![(v.clone(), ChunkId([7; 16]))], manifests: vec![] };
        assert_eq!(first.claim_orphans(&orphan).unwrap().chunks.len(), 1);
        let later = Timestamp::now() + jiff::SignedDuration::from_hours(2);
        assert!(second.claim_trash(later).unwrap().chunks.is_empty(), "its deleter is at work");
        assert!(second.claim_orphans(&orphan).unwrap().chunks.is_empty(), "nor as an orphan");
        assert!(first.claim_trash(later).unwrap().chunks.is_empty(), "a session does not take its own claims");
        let lock_files = || std::fs::read_dir(sessions_dir(&p)).map(|d| d.count()).unwrap_or(0);
        assert_eq!(lock_files(), 2, "one lock per session that claimed");
        drop(first);
        assert_eq!(lock_files(), 1, "a closed session removes its lock");
        assert_eq!(second.claim_trash(later).unwrap().chunks, orphan.chunks, "its deleter is gone");
        let third = SqliteRepository::open(&p).unwrap();
        assert!(third.claim_trash(later).unwrap().chunks.is_empty(), "and now it is the second's");
        // A dead session's lock file (its process killed) goes when the next
        // session starts.
        std::fs::write(sessions_dir(&p).join("00ff.lock"), b"").unwrap();
        let fourth = SqliteRepository::open(&p).unwrap();
        fourth.claim_trash(later).unwrap();
        assert!(!sessions_dir(&p).join("00ff.lock").exists(), "swept");
        assert_eq!(lock_files(), 3, "the live ones stay");
    }

    #[test]
    fn a_copy_of_the_catalog_opens_as_the_same_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let repo = SqliteRepository::open(&dir.path().join("custos.db")).unwrap();
        repo.set_setting("written", "yes").unwrap();
        let copy = dir.path().join("copy.db");
        repo.copy_to(&copy).unwrap();
        repo.set_setting("written", "later").unwrap();
        let again = SqliteRepository::open_existing(&copy).unwrap();
        assert_eq!(again.setting("written").unwrap().as_deref(), Some("yes"), "as of the copy");
        assert!(repo.copy_to(&copy).is_err(), "an existing file is never overwritten");
    }

    #[test]
    fn a_closed_repository_leaves_its_catalog_in_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("custos.db");
        let repo = SqliteRepository::open(&p).unwrap();
        repo.set_setting("written", "yes").unwrap();
        // Reads went through read-only connections, still open in the pool.
        assert_eq!(repo.setting("written").unwrap().as_deref(), Some("yes"));
        assert!(repo.keys().unwrap().is_empty());
        drop(repo);
        assert!(!dir.path().join("custos.db-wal").exists(), "the WAL was checkpointed and removed on close");
        let alone = dir.path().join("copy.db");
        std::fs::copy(&p, &alone).unwrap();
        let v: String = Connection::open(&alone)
            .unwrap()
            .query_row_c("SELECT value FROM settings WHERE key = 'written'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, "yes", "custos.db alone holds what was written");
    }

    #[test]
    fn fail_schema_newer_than_supported() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("custos.db");
        drop(SqliteRepository::open(&p).unwrap());
        Connection::open(&p).unwrap().pragma_update(None, "user_version", 99).unwrap();
        let e = SqliteRepository::open(&p).err().expect("must refuse a newer schema");
        assert!(matches!(e, RepoError::SchemaTooNew { found: 99, .. }), "{e}");
        assert!(e.to_string().contains("upgrade Custos"));
    }
}
