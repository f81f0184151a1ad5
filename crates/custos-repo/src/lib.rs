//! The repository seam: everything Custos knows about keys, volumes,
//! policies and datasets, behind one [`Repository`] trait. Every method is
//! atomic on its own (one transaction), so the engine never needs to hold a
//! transaction open across I/O, and a PostgreSQL backend can implement the
//! same trait without the engine changing.
#![forbid(unsafe_code)]

pub mod copy;
pub mod pg;
mod rowauth;
mod sqlite;

use custos_crypto::Mkvp;
use custos_model::{
    BackupRecord, ChunkId, CopyMethod, CustodianKey, DatasetId, DatasetName, DatasetRecord, EscrowCopy,
    GenerationRecord, HsmRule, KbkRecord, KeyLabel, KeyRecord, KeystoreBackupRecord, Pattern, PolicyRecord,
    PrincipalRecord, SealedShare, SnapshotRecord, VolumeName, VolumeRecord,
};
use thiserror::Error;

pub use pg::PgRepository;
/// The canonical row encoding every backend MACs (ADR 0019, ADR 0020).
pub use rowauth::{row_message, Col};
pub use sqlite::SqliteRepository;

/// A key's attributes as the keys table stores them: JSON, or NULL when
/// there are none. The same record always gives the same text (a row's
/// MAC covers it).
pub(crate) fn key_attributes_text(a: &custos_model::KeyAttributes) -> Option<String> {
    (!a.is_empty()).then(|| serde_json::to_string(a).expect("attributes serialize"))
}

/// A key's attributes from the keys table.
pub(crate) fn key_attributes_from(text: Option<&str>) -> std::result::Result<custos_model::KeyAttributes, String> {
    match text {
        None => Ok(Default::default()),
        Some(t) => serde_json::from_str(t).map_err(|e| format!("key attributes: {e}")),
    }
}

/// The race [`Repository::update_key`] reports.
pub(crate) fn key_raced(label: &KeyLabel) -> RepoError {
    RepoError::Raced {
        what: format!("key {label}"),
        why: "another command changed its state, material or escrow copy first".into(),
    }
}

pub type Result<T> = std::result::Result<T, RepoError>;

thread_local! {
    /// Whether commits made on this thread return before they are durable
    /// (see [`with_sync`]).
    static UNSYNCED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f` with this thread's commits waiting for the disk (`wait`, the
/// default) or not. A commit that does not wait is written to the
/// catalog's log in order but may be lost to a crash until a later commit
/// that waits is durable, which makes it durable too (both backends' logs
/// are sequential: SQLite's write-ahead log, PostgreSQL's WAL). The
/// caller of `with_sync(false, ..)` must make such a commit durable
/// before it acknowledges anything that depends on what `f` wrote (the
/// engine's audited outcome of an operation does). Restored when `f`
/// returns or unwinds; nested calls set it for their own extent.
pub fn with_sync<T>(wait: bool, f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            UNSYNCED.with(|u| u.set(self.0));
        }
    }
    let _restore = Restore(UNSYNCED.with(|u| u.replace(!wait)));
    f()
}

thread_local! {
    /// How deep this thread is in [`with_snapshot`] scopes.
    static SNAPSHOT_DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Run `f` with this thread's reads sharing one read transaction (one
/// snapshot of the catalog) where the backend can: SQLite, whose every
/// read otherwise starts a transaction of its own, each paying for the
/// shared log's locks and a page cache another commit made stale. For a
/// short operation's checks (a key service request): the snapshot ends
/// when this thread takes the writer, so it always reads its own writes,
/// when it waits for something else to write (call [`end_snapshot`]), and
/// when `f` returns or unwinds. A later read in `f` starts a new one.
/// Not for long work: a snapshot held open keeps checkpoints from
/// finishing.
pub fn with_snapshot<T>(f: impl FnOnce() -> T) -> T {
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            let depth = SNAPSHOT_DEPTH.with(|d| {
                d.set(d.get().saturating_sub(1));
                d.get()
            });
            if depth == 0 {
                end_snapshot();
            }
        }
    }
    SNAPSHOT_DEPTH.with(|d| d.set(d.get() + 1));
    let _leave = Leave;
    f()
}

/// End this thread's snapshot, if it holds one (see [`with_snapshot`]):
/// before it waits for another thread's write.
pub fn end_snapshot() {
    sqlite::end_pinned();
}

/// Whether this thread's reads share a snapshot.
pub(crate) fn snapshot_wanted() -> bool {
    SNAPSHOT_DEPTH.with(|d| d.get() > 0)
}

/// Whether commits on this thread may return before they are durable.
pub(crate) fn unsynced() -> bool {
    UNSYNCED.with(|u| u.get())
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RepoError {
    #[error("the repository database failed while trying to {action}: {source}; check that the vault directory is writable and its disk not full, then run the command again")]
    Database { action: &'static str, source: rusqlite::Error },
    /// Another process held the catalog for longer than the busy timeout.
    #[error("the catalog is busy: another Custos command held it for {waited_secs} s while this one tried to {action}; nothing was changed: run it again")]
    Busy { action: &'static str, waited_secs: u64 },
    /// The catalog file is not a Custos catalog, or is damaged.
    #[error("the catalog {path} is not a Custos catalog or is damaged ({why}); nothing was changed: restore custos.db from a backup (see docs/format.md), or point --vault at the right directory")]
    NotACatalog { path: String, why: String },
    #[error("the repository at {path} uses schema version {found}, newer than this Custos supports ({supported}): upgrade Custos")]
    SchemaTooNew { path: String, found: i64, supported: i64 },
    #[error("a {kind} named {name} already exists: choose another name")]
    Exists { kind: &'static str, name: String },
    #[error("no {kind} named {name}")]
    NotFound { kind: &'static str, name: String },
    #[error("{name:?} already names key {label}: a name belongs to one key; choose another name")]
    NameTaken { name: String, label: String },
    #[error("{name} is the last enabled security-admin (a change to another principal may just have taken the others): nothing was changed; enable or add another security-admin first")]
    LastAdmin { name: String },
    #[error("{kind} {name} is still used by {uses}: nothing was removed; {remedy}")]
    InUse { kind: &'static str, name: String, uses: String, remedy: &'static str },
    #[error("{name} changed while this write ran (it started from generation {expected}, the catalog now has {found}): nothing was stored; run it again")]
    Conflict { name: String, expected: u64, found: u64 },
    /// Objects a write reused were released by a concurrent command.
    #[error("{what} changed while this write ran ({why}): nothing was stored; run it again")]
    Raced { what: String, why: String },
    #[error("the repository holds a value it cannot read ({what}): the database was altered or damaged")]
    Corrupt { what: String },
    /// A caller asked a backend for something it said it cannot do.
    #[error("this catalog cannot {what}: nothing was changed; this is a bug in Custos, please report it")]
    Unsupported { what: &'static str },
    /// A row of an authenticated table does not carry the MAC its content
    /// should: it was written or changed outside Custos (ADR 0019).
    #[error("the catalog row {table} {row} {why}: it was written or changed outside Custos, so nothing that depends on it was done. Run `custos catalog verify` to list every such row; then restore custos.db from a vault backup, or undo the change")]
    Tampered { table: String, row: String, why: String },
    /// A process without the catalog key tried to change a table only the
    /// HSM's holder may change.
    #[error("changing {table} ({row}) needs the catalog key, which this command does not hold: run it with the passphrase (CUSTOS_PASSPHRASE or --passphrase-file), or through the server; nothing was changed")]
    NeedsKey { table: String, row: String },
    /// The PostgreSQL catalog could not be reached or refused a statement.
    #[error("the PostgreSQL catalog failed while trying to {action}: {why}; check that PostgreSQL is running and reachable and that Custos's account may use the catalog database, then run the command again")]
    Postgres { action: &'static str, why: String },
    /// TLS to the PostgreSQL catalog could not be set up, or the server's
    /// certificate was not trusted.
    #[error("TLS to the PostgreSQL catalog failed: {why}; name the PEM file of the CA that signed the database server's certificate with sslrootcert=FILE in the repository address (sslmode=disable only on a network you trust)")]
    PostgresTls { why: String },
    /// A copy between backends found its target holding rows.
    #[error("the target {target} is not empty (it holds {holds}): nothing was copied into it; give an empty database")]
    NotEmpty { target: String, holds: String },
    /// The catalog key (in the HSM) could not compute a row's MAC.
    #[error("the HSM could not authenticate a catalog row ({why}): nothing was changed; check the HSM (its token, or hsm.sealed), then run the command again")]
    RowKey { why: String },
    /// A deleter's session lock (beside the catalog) could not be made.
    #[error("cannot make {what}: {source}; check that the vault directory is writable, then run the command again")]
    Io { what: String, source: std::io::Error },
}

/// One backup to record (see [`Repository::insert_backup`]).
#[derive(Debug, Clone, Copy)]
pub struct BackupInsert<'a> {
    pub record: &'a BackupRecord,
    pub chunks: &'a [ChunkId],
    pub sources: &'a [ChunkId],
    pub new_key: Option<&'a KeyRecord>,
    pub reused: &'a [ChunkId],
    pub since: u64,
}

impl BackupInsert<'_> {
    /// The refusal of a second record of the same copy object.
    pub(crate) fn twin(&self) -> RepoError {
        let b = self.record;
        RepoError::Exists {
            kind: "backup",
            name: format!("of {} (copy {} generation {} on {})", b.dataset, b.copy_id.to_hex(), b.generation, b.volume),
        }
    }

    /// What the record is called in a refusal.
    pub(crate) fn what(&self) -> String {
        format!("the {} copy of {}", self.record.method.as_str(), self.record.dataset)
    }

    /// A chunk list as long as the record says, or the refusal of a copy
    /// read while its generation changed.
    pub(crate) fn check_length(&self) -> Result<()> {
        if self.chunks.len() as u64 == self.record.chunk_count {
            return Ok(());
        }
        Err(RepoError::Raced {
            what: self.what(),
            why: format!(
                "it lists {} chunks for a generation of {}: the generation changed while it was read",
                self.chunks.len(),
                self.record.chunk_count
            ),
        })
    }
}

/// A new generation to commit. `previous` is the generation the writer
/// started from (0 for a new dataset): if another writer committed since,
/// the commit fails with [`RepoError::Conflict`].
#[derive(Debug, Clone)]
pub struct GenerationCommit {
    pub dataset_id: DatasetId,
    pub name: DatasetName,
    pub previous: u64,
    pub generation: GenerationRecord,
    pub chunks: Vec<ChunkId>,
    /// A key created for this dataset (by a policy template), stored in the
    /// same transaction so a failed write leaves no stray key behind.
    pub new_key: Option<KeyRecord>,
    /// Chunks the commit lists that this attempt did not write itself (it
    /// found them stored already). The commit fails with
    /// [`RepoError::Conflict`] unless the catalog still references each on
    /// the generation's volume, so a concurrent removal cannot have freed
    /// one in the meantime.
    pub reused: Vec<ChunkId>,
    /// [`Repository::deletion_seq`] as the writer read it before it looked
    /// at or wrote any object it lists. An object deleted after that (by
    /// `gc`, which keeps a numbered tombstone) may be one it found stored
    /// and did not write again: the commit fails with [`RepoError::Raced`]
    /// and the writer starts over. A count, not a time: no clock decides.
    pub since: u64,
}

/// Objects a commit or removal left unreferenced, for the engine to delete
/// from their volumes after the repository change is durable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Garbage {
    pub chunks: Vec<(VolumeName, ChunkId)>,
    pub manifests: Vec<(VolumeName, DatasetId, u64)>,
}

/// How [`Repository::rewrap_page`] re-wraps one key: its new master key
/// and wrapped material, or `None` to leave it.
pub type RewrapFn<'a> = &'a mut dyn FnMut(&KeyRecord) -> Option<(Mkvp, Vec<u8>)>;

/// What [`Repository::rewrap_page`] did with one page.
#[derive(Debug, Default)]
pub struct RewrapPage {
    /// Records moved to their new wrapping.
    pub moved: usize,
    /// Keys the caller could not re-wrap, left as they were.
    pub failed: Vec<KeyLabel>,
    /// The page's last label (the next page starts after it); `None` when
    /// no key was left under the old master key.
    pub last: Option<KeyLabel>,
}

/// One key record moved from one master key to another by re-encipherment.
#[derive(Clone)]
pub struct Rewrap {
    pub label: KeyLabel,
    pub from: Mkvp,
    pub to: Mkvp,
    pub wrapped: Vec<u8>,
}

impl std::fmt::Debug for Rewrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewrap").field("label", &self.label).field("from", &self.from).field("to", &self.to).finish()
    }
}

/// What the catalog says is stored on one volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeObjects {
    pub chunks: Vec<ChunkId>,
    pub manifests: Vec<(DatasetId, u64)>,
    pub keystore_backups: Vec<String>,
}

/// Computes the MACs that authenticate catalog rows: the engine's, backed by
/// the HSM's catalog key (the repository never holds that key).
pub trait RowAuth: Send + Sync {
    /// HMAC-SHA-256 of `msg` under the catalog key, or why it failed.
    fn mac(&self, msg: &[u8]) -> std::result::Result<[u8; 32], String>;

    /// The MAC a row being written gets: under the NEXT catalog key while
    /// a rotation is under way (the rotation will not miss it), else
    /// [`RowAuth::mac`].
    fn seal(&self, msg: &[u8]) -> std::result::Result<[u8; 32], String> {
        self.mac(msg)
    }

    /// Read the catalog keys again: another process rotated them (the
    /// catalog's key generation changed since this process last wrote).
    fn refresh(&self) -> std::result::Result<(), String> {
        Ok(())
    }

    /// MACs of `msg` under any other key a sound row may carry right now:
    /// the NEXT catalog key while a rotation is under way, or the key
    /// another process rotated to since this one read it. Asked only for a
    /// row that failed under [`RowAuth::mac`].
    fn others(&self, _msg: &[u8]) -> std::result::Result<Vec<[u8; 32]>, String> {
        Ok(Vec::new())
    }
}

/// A row whose MAC does not match its content.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RowFault {
    pub table: String,
    /// The row's key, as `column=value` pairs.
    pub row: String,
    /// "has no MAC" or "does not match its MAC".
    pub why: String,
}

/// What [`Repository::verify_rows`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CatalogCheck {
    /// Rows checked, in every authenticated table.
    #[serde(rename = "row_count")]
    pub rows: u64,
    /// Of those, rows a command without the key wrote where that is
    /// allowed (raw copies, snapshots, mirrors made without the passphrase):
    /// not authenticated.
    #[serde(rename = "unsealed_count")]
    pub unsealed: u64,
    pub faults: Vec<RowFault>,
}

/// The repository seam. See [`conformance::run`] for the contract.
pub trait Repository: Send + Sync {
    /// Whether reaching the catalog means waiting on another server (so a
    /// caller on an async runtime's thread must step off it first).
    fn remote(&self) -> bool {
        false
    }

    /// Authenticate rows from now on with `auth` (ADR 0019): every row
    /// written is sealed, every authenticated row read is checked, and a
    /// row that fails is refused ([`RepoError::Tampered`]). Without it,
    /// rows are neither sealed nor checked, and once the catalog was sealed
    /// writes to the tables only a key holder may change are refused
    /// ([`RepoError::NeedsKey`]).
    fn set_row_auth(&self, auth: Option<std::sync::Arc<dyn RowAuth>>);
    /// The row authentication installed, if any.
    fn row_auth(&self) -> Option<std::sync::Arc<dyn RowAuth>>;
    /// Seal every row of every authenticated table under the installed
    /// auth, in one transaction, and mark the catalog sealed (a new catalog
    /// key). Returns how many rows.
    fn seal_rows(&self) -> Result<u64>;
    /// Check every authenticated row under the installed auth and list
    /// every one that fails.
    fn verify_rows(&self) -> Result<CatalogCheck>;
    /// Seal every authenticated row again under `next` (a catalog key
    /// rotation), in one transaction: each row must verify under the
    /// installed auth first (or be sealed under `next` already), so a
    /// forged row is never laundered into the new key. The installed auth
    /// is left as it is. Returns how many rows.
    fn reseal_rows(&self, next: std::sync::Arc<dyn RowAuth>) -> Result<u64>;

    /// A setting (`key.naming`, `chunk.size`, …), if set.
    fn setting(&self, key: &str) -> Result<Option<String>>;
    fn set_setting(&self, key: &str, value: &str) -> Result<()>;
    /// Set a setting only if it has none, atomically; returns the value it
    /// holds afterwards (`value`, or the one a concurrent command set first).
    fn set_setting_once(&self, key: &str, value: &str) -> Result<String>;

    fn insert_key(&self, rec: &KeyRecord) -> Result<()>;
    fn key(&self, label: &KeyLabel) -> Result<Option<KeyRecord>>;
    /// All keys, by label.
    fn keys(&self) -> Result<Vec<KeyRecord>>;
    /// Up to `limit` keys in label order whose labels are at least `from`
    /// and greater than `after` (a page: the next starts after its last).
    fn keys_from(&self, from: &str, after: &str, limit: u32) -> Result<Vec<KeyRecord>>;
    /// Write a key record's state, timestamps, material and escrow copy,
    /// only if the stored record still has `was`'s state, material (wrapped
    /// bytes and master key) and escrow copy; otherwise
    /// [`RepoError::Raced`]: another command (another server's, say)
    /// changed it first, and writing would undo that. Its use count and
    /// last use belong to [`Repository::record_key_use`] and are left alone.
    fn update_key(&self, rec: &KeyRecord, was: &KeyRecord) -> Result<()>;
    /// Let the erasure that follows an [`update_key`](Repository::update_key)
    /// which drops key material (taking it out of the backend's own log)
    /// happen up to `lag` later, one pass serving every erasure in between:
    /// for a long-running server, whose repository stays open. Zero (the
    /// default) erases before `update_key` returns; a repository closed
    /// meanwhile erases as it closes. A backend whose log it cannot erase
    /// ignores it.
    fn set_erase_lag(&self, _lag: std::time::Duration) {}
    /// Remember principals (with their grants) and settings between reads
    /// for up to `max_age`: for a long-running server, which reads the
    /// caller's principal and a few settings on every request. A change
    /// this repository commits to either is seen by the next read; one
    /// another process commits, within `max_age`. Zero (the default) reads
    /// them every time. A backend that cannot tell its own changes apart
    /// ignores it.
    fn set_read_cache(&self, _max_age: std::time::Duration) {}
    /// Count one use of a key now.
    fn record_key_use(&self, label: &KeyLabel) -> Result<()>;
    /// Count one use of each label (a label may repeat), in one transaction.
    fn record_key_uses(&self, labels: &[KeyLabel]) -> Result<()>;
    /// Insert many keys in one transaction: all or none.
    fn insert_keys(&self, recs: &[KeyRecord]) -> Result<()>;
    /// How many keys with material are wrapped under each master key.
    fn key_counts_by_mkvp(&self) -> Result<Vec<(Mkvp, u64)>>;
    /// Up to `limit` keys with material wrapped under `mkvp`, by label,
    /// starting after `after` when given.
    fn keys_wrapped_under(&self, mkvp: &Mkvp, after: Option<&KeyLabel>, limit: usize) -> Result<Vec<KeyRecord>>;
    /// Replace wrapped material in one transaction, each only if the record
    /// is still under `from` (so a concurrent or repeated run cannot undo
    /// another). Returns how many records changed.
    fn rewrap_keys(&self, batch: &[Rewrap]) -> Result<usize>;
    /// Re-encipher the next page of keys: up to `limit` keys with material
    /// under `from`, in label order after `after`. `rewrap` gives each
    /// one's new master key and wrapping, or `None` for a key it cannot
    /// re-wrap (left as it is, and named in the result). Only records still
    /// under `from` change, as with [`Repository::rewrap_keys`]. A backend
    /// may read, lock and write the page in one transaction (PostgreSQL
    /// does: one read instead of two); the default lists, then rewraps.
    fn rewrap_page(
        &self,
        from: &Mkvp,
        after: Option<&KeyLabel>,
        limit: usize,
        rewrap: RewrapFn<'_>,
    ) -> Result<RewrapPage> {
        let keys = self.keys_wrapped_under(from, after, limit)?;
        let mut batch = Vec::with_capacity(keys.len());
        let mut failed = Vec::new();
        for k in &keys {
            match rewrap(k) {
                Some((to, wrapped)) => batch.push(Rewrap { label: k.label.clone(), from: *from, to, wrapped }),
                None => failed.push(k.label.clone()),
            }
        }
        let moved = self.rewrap_keys(&batch)?;
        Ok(RewrapPage { moved, failed, last: keys.last().map(|k| k.label.clone()) })
    }

    /// Record a complete backup copy and its chunk list (and the backup key
    /// created for it, if any) in one transaction; returns its id (assigned
    /// in increasing order).
    /// For a logical copy, `sources` lists the source chunk each copy chunk
    /// was made from (empty for raw copies, whose chunks are the sources).
    /// `reused` lists the chunks this attempt found stored already rather
    /// than wrote: each must still be referenced on the backup's volume, or
    /// the insert fails with [`RepoError::Raced`]. A second record of the
    /// same copy object (volume, copy id, generation) fails with
    /// [`RepoError::Exists`]. `since` as for [`GenerationCommit::since`].
    fn insert_backup(
        &self,
        rec: &BackupRecord,
        chunks: &[ChunkId],
        sources: &[ChunkId],
        new_key: Option<&KeyRecord>,
        reused: &[ChunkId],
        since: u64,
    ) -> Result<u64> {
        let one = BackupInsert { record: rec, chunks, sources, new_key, reused, since };
        let mut ids = self.insert_backups(std::slice::from_ref(&one))?;
        ids.pop().ok_or_else(|| RepoError::Corrupt { what: "no backup id came back".into() })
    }
    /// [`Repository::insert_backup`] for many backups in one transaction:
    /// all are recorded, or (on the first that cannot be, whose error is
    /// returned) none. Their ids, in order.
    fn insert_backups(&self, items: &[BackupInsert<'_>]) -> Result<Vec<u64>>;
    /// How many deletions of objects from volumes were recorded so far
    /// (rises with each `forget_trash`); a writer reads it before it looks
    /// at any object, for [`GenerationCommit::since`].
    fn deletion_seq(&self) -> Result<u64>;
    /// All backups, oldest first.
    fn backups(&self) -> Result<Vec<BackupRecord>> {
        self.backups_after(0, u32::MAX)
    }
    /// Up to `limit` backups with ids greater than `after`, by id (a page:
    /// the next starts after its last).
    fn backups_after(&self, after: u64, limit: u32) -> Result<Vec<BackupRecord>>;
    /// The backups sealed under key `label` (the key they record), oldest
    /// first: what a destruction of that key would make unreadable.
    fn key_backups(&self, label: &KeyLabel) -> Result<Vec<BackupRecord>> {
        Ok(self.backups()?.into_iter().filter(|b| b.key_label == *label).collect())
    }
    /// The backups of the dataset named `name` (of every dataset that had
    /// that name), oldest first.
    fn dataset_backups(&self, name: &DatasetName) -> Result<Vec<BackupRecord>>;
    /// The newest backup id (0 when there is none), and the names of the
    /// datasets with a backup whose id is greater than `after` and at most
    /// that: what was copied since a reader last looked.
    fn backups_since(&self, after: u64) -> Result<(u64, Vec<DatasetName>)>;
    /// One backup by id.
    fn backup(&self, id: u64) -> Result<Option<BackupRecord>> {
        let Some(before) = id.checked_sub(1) else { return Ok(None) };
        Ok(self.backups_after(before, 1)?.into_iter().find(|b| b.id == id))
    }
    /// The chunk IDs of one backup, in order.
    fn backup_chunks(&self, id: u64) -> Result<Vec<ChunkId>>;
    /// Remove a backup record in one transaction. Returns the chunks no other
    /// backup or generation on its volume still lists, and its manifest.
    fn remove_backup(&self, id: u64) -> Result<Garbage>;
    /// The source chunk each chunk of a logical copy was made from, in order.
    fn backup_sources(&self, id: u64) -> Result<Vec<Option<ChunkId>>>;

    /// Pin the current generation of a dataset, in one transaction: the
    /// snapshot is exactly one committed generation, whatever writers do.
    fn create_snapshot(&self, name: &DatasetName) -> Result<SnapshotRecord>;
    /// All snapshots, oldest first.
    fn snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        self.snapshots_after(0, u32::MAX)
    }
    /// Up to `limit` snapshots with ids greater than `after`, by id.
    fn snapshots_after(&self, after: u64, limit: u32) -> Result<Vec<SnapshotRecord>>;
    /// The snapshots sealed under key `label`, oldest first.
    fn key_snapshots(&self, label: &KeyLabel) -> Result<Vec<SnapshotRecord>> {
        Ok(self.snapshots()?.into_iter().filter(|s| s.key_label == *label).collect())
    }
    /// One snapshot by id.
    fn snapshot(&self, id: u64) -> Result<Option<SnapshotRecord>> {
        let Some(before) = id.checked_sub(1) else { return Ok(None) };
        Ok(self.snapshots_after(before, 1)?.into_iter().find(|s| s.id == id))
    }
    /// The chunk IDs of one snapshot, in order.
    fn snapshot_chunks(&self, id: u64) -> Result<Vec<ChunkId>>;
    /// Remove a snapshot; returns what nothing else on its volume needs.
    fn remove_snapshot(&self, id: u64) -> Result<Garbage>;

    /// Record that `primary` is mirrored to `secondary`.
    fn insert_mirror(&self, primary: &VolumeName, secondary: &VolumeName) -> Result<()>;
    /// (primary, secondary, since) for every mirror.
    fn mirrors(&self) -> Result<Vec<(VolumeName, VolumeName, jiff::Timestamp)>>;
    /// Remove the mirror of `primary`; false when there was none.
    fn remove_mirror(&self, primary: &VolumeName) -> Result<bool>;
    /// Record drill results, each replacing the earlier one of its dataset
    /// and threats, in one transaction.
    fn record_drills(&self, rows: &[custos_model::DrillRecord]) -> Result<()>;
    /// Every dataset's last drill results, by dataset then threats.
    fn drills(&self) -> Result<Vec<custos_model::DrillRecord>>;
    /// Every chunk and manifest object the catalog records on a volume
    /// (generations, backups, snapshots), and its keystore backups.
    fn volume_objects(&self, vol: &VolumeName) -> Result<VolumeObjects>;

    /// Record a key-backup key and, in the same transaction, switch the
    /// escrow copies of the keys in `escrows` to it: a failure or a kill
    /// leaves every key with its previous escrow copy.
    /// Its custodians' sealed shares are stored in the same transaction.
    fn insert_kbk(&self, rec: &KbkRecord, escrows: &[(KeyLabel, EscrowCopy)], shares: &[SealedShare]) -> Result<()>;
    /// Every key label, in order (the labels alone: cheap to list).
    fn key_labels(&self) -> Result<Vec<KeyLabel>>;
    /// All key-backup keys, oldest first (the last is the one in use).
    fn kbks(&self) -> Result<Vec<KbkRecord>>;
    /// A key-backup key's sealed shares, by custodian.
    fn escrow_shares(&self, kbk: &str) -> Result<Vec<SealedShare>>;
    /// Record that `custodian` proved they opened their share; false when
    /// there is no such share.
    fn confirm_escrow_share(&self, kbk: &str, custodian: &str, at: jiff::Timestamp) -> Result<bool>;
    /// Register (or replace) a principal's custodian recipient. A recipient
    /// another principal has registered is refused with
    /// [`RepoError::Exists`]: two custodians never share a key pair.
    fn set_custodian_key(&self, key: &CustodianKey) -> Result<()>;
    fn custodian_keys(&self) -> Result<Vec<CustodianKey>>;

    fn insert_keystore_backup(&self, rec: &KeystoreBackupRecord) -> Result<()>;
    /// All keystore backups, oldest first.
    fn keystore_backups(&self) -> Result<Vec<KeystoreBackupRecord>>;
    /// Record a vault backup that was written, read back and opened.
    fn insert_vault_backup(&self, rec: &custos_model::VaultBackupRecord) -> Result<()>;
    /// Vault backups, oldest first.
    fn vault_backups(&self) -> Result<Vec<custos_model::VaultBackupRecord>>;
    /// Forget a vault backup (retention); a missing one is not an error.
    fn delete_vault_backup(&self, id: &str) -> Result<()>;

    fn insert_volume(&self, rec: &VolumeRecord) -> Result<()>;
    /// Forget a volume that nothing in the catalog refers to: no
    /// generation, migrated dataset, policy, backup, snapshot, mirror, hsm
    /// rule, keystore or vault backup, nor an object waiting in the trash.
    /// Checked and removed in one transaction; otherwise
    /// [`RepoError::InUse`] says what uses it.
    fn remove_volume(&self, name: &VolumeName) -> Result<()>;
    /// Point a volume at another location (a clone's copy of it).
    fn relocate_volume(&self, name: &VolumeName, location: &str) -> Result<()>;
    /// Write a consistent copy of the whole repository to `path` (which
    /// must not exist), while it stays in use: a SQLite catalog file, on
    /// either backend, with every row's MAC unchanged.
    fn copy_to(&self, path: &std::path::Path) -> Result<()>;
    /// How many rows each table holds, in [`copy::TABLES`] order (what a
    /// copy between backends is checked against).
    fn row_counts(&self) -> Result<copy::RowCounts>;
    fn volume(&self, name: &VolumeName) -> Result<Option<VolumeRecord>>;
    fn volumes(&self) -> Result<Vec<VolumeRecord>>;

    fn insert_policy(&self, rec: &PolicyRecord) -> Result<()>;
    fn policies(&self) -> Result<Vec<PolicyRecord>>;
    /// Remove a policy; false when there was none by that name.
    fn remove_policy(&self, name: &str) -> Result<bool>;

    fn dataset(&self, name: &DatasetName) -> Result<Option<DatasetRecord>>;
    /// All datasets, by name.
    fn datasets(&self) -> Result<Vec<DatasetRecord>>;
    /// Up to `limit` datasets in name order whose names are at least `from`
    /// and greater than `after`.
    fn datasets_from(&self, from: &str, after: &str, limit: u32) -> Result<Vec<DatasetRecord>>;
    /// Datasets whose names start with `prefix` and whose current
    /// generation has no copy by `method` on `volume`, by name: what a
    /// backup rule has left to copy, found by the database (an index probe
    /// per dataset) rather than by reading every dataset and backup.
    fn datasets_without_copy(
        &self,
        prefix: &str,
        method: CopyMethod,
        volume: &VolumeName,
    ) -> Result<Vec<DatasetRecord>>;
    /// Datasets whose names start with `prefix`, whose current generation is
    /// not on `not_on`, and that were last read or written at or before
    /// `before` (the later of the recorded access and the generation's
    /// time), by name: what a migration rule has left to move.
    fn datasets_idle(&self, prefix: &str, before: jiff::Timestamp, not_on: &VolumeName) -> Result<Vec<DatasetRecord>>;
    /// Names of datasets with some generation sealed under `label`.
    fn datasets_using_key(&self, label: &KeyLabel) -> Result<Vec<DatasetName>>;
    /// The chunk IDs of one generation, in order.
    fn generation_chunks(&self, id: &DatasetId, generation: u64) -> Result<Vec<ChunkId>>;
    /// Make a generation current, in one transaction, and drop the
    /// generations it replaces. Returns what those left unreferenced.
    fn commit_generation(&self, commit: &GenerationCommit) -> Result<Garbage> {
        let mut g = self.commit_generations(std::slice::from_ref(commit))?;
        Ok(g.pop().unwrap_or_default())
    }
    /// [`Repository::commit_generation`] for many datasets in one
    /// transaction: all are committed, or (on the first that cannot be,
    /// whose error is returned) none. What each left unreferenced, in order.
    fn commit_generations(&self, commits: &[GenerationCommit]) -> Result<Vec<Garbage>>;
    /// Remove a dataset and all its generations, in one transaction.
    fn remove_dataset(&self, name: &DatasetName) -> Result<Garbage>;
    /// Record a read or write of a dataset now.
    fn touch_dataset(&self, id: &DatasetId) -> Result<()> {
        self.touch_datasets(std::slice::from_ref(id))
    }
    /// Record a read of each of these datasets now, in one transaction.
    fn touch_datasets(&self, ids: &[DatasetId]) -> Result<()>;
    /// Move generation `generation` of a dataset from volume `from` (where it
    /// must be) to `to`, whose objects the caller has already written, and
    /// set the dataset's `migrated_from` mark; one transaction. Returns what
    /// the move left unreferenced on `from`. `reused` and `since` as for
    /// [`Repository::insert_backup`], on `to`.
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
    ) -> Result<Garbage>;
    /// Whether some generation, backup or snapshot on `vol` lists chunk `id`
    /// (so it was made durable before a commit recorded it).
    fn chunk_referenced(&self, vol: &VolumeName, id: &ChunkId) -> Result<bool>;

    /// Objects the catalog released (see [`TrashEntry`]), oldest first.
    fn trash(&self) -> Result<Vec<TrashEntry>>;
    /// In one transaction: claim, for deletion, every trash entry released
    /// before `released_before` that nothing references again (an entry
    /// something references again is dropped), and return them, with the
    /// entries a deleter gave up (see [`Repository::abandon_claims`]) and
    /// those whose deleter is gone (killed). From then on no commit may list
    /// a claimed object.
    ///
    /// A claim is exclusive: it names the claiming repository's session,
    /// and an entry another live session holds is never taken, so two
    /// deleters never hold one object at once (the second could otherwise
    /// delete a copy a writer stored and recorded after the first one's
    /// deletion).
    fn claim_trash(&self, released_before: jiff::Timestamp) -> Result<Garbage>;
    /// In one transaction: claim for deletion those of `found` (objects
    /// found on a volume that the catalog did not record) that nothing
    /// references now and that are not in the trash (released, or claimed by
    /// another deleter: the tombstone of one deleted is no obstacle);
    /// returns them.
    fn claim_orphans(&self, found: &Garbage) -> Result<Garbage>;
    /// Objects a deleter claimed but could not delete: they stay claimed (no
    /// commit may use them), and the next `gc` takes them at once.
    fn abandon_claims(&self, left: &Garbage) -> Result<()>;
    /// Drop the trash entries of objects that are gone from their volumes.
    fn forget_trash(&self, gone: &Garbage) -> Result<()>;

    /// Append an entry to the audit log in one transaction: its seq is the
    /// last one's plus one, its hash `link(previous hash, entry)`. The
    /// caller's `seq` and `hash` are ignored.
    fn append_audit(&self, entry: &AuditRow, link: &AuditLink<'_>) -> Result<AuditRow> {
        Ok(self.append_audit_batch(std::slice::from_ref(entry), link, &[])?.remove(0))
    }
    /// Append several entries in order and count `key_uses`, in one
    /// transaction (a group commit: one durable write for many requests).
    fn append_audit_batch(
        &self,
        entries: &[AuditRow],
        link: &AuditLink<'_>,
        key_uses: &[KeyLabel],
    ) -> Result<Vec<AuditRow>>;
    /// Whether this backend can make its unsynced commits durable apart
    /// from a new commit ([`sync_written`](Repository::sync_written)).
    fn syncs_apart(&self) -> bool {
        false
    }
    /// Make durable every commit this repository wrote so far, those made
    /// under [`with_sync`]`(false, ..)` included: the second half of a
    /// commit split in two, so that what needed only to be written can be
    /// handed out between the halves. Only where
    /// [`syncs_apart`](Repository::syncs_apart) says so; a log that cannot be
    /// made durable stops the process, as a durable commit's would.
    fn sync_written(&self) -> Result<()> {
        Err(RepoError::Unsupported { what: "make its commits durable apart from a new commit" })
    }
    /// The newest audit entry, if any.
    fn audit_head(&self) -> Result<Option<AuditRow>>;
    /// Audit entries with seq > `after`, in seq order.
    fn audit_rows(&self, after: u64) -> Result<Vec<AuditRow>>;
    /// Up to `limit` entries after entry `after`, oldest first (a page).
    fn audit_rows_page(&self, after: u64, limit: u32) -> Result<Vec<AuditRow>>;
    fn insert_audit_checkpoint(&self, c: &AuditCheckpoint) -> Result<()>;
    /// Checkpoints in seq order.
    fn audit_checkpoints(&self) -> Result<Vec<AuditCheckpoint>>;

    /// Record the last check of a backup's or snapshot's bytes (nothing
    /// when the copy is gone meanwhile). A passing check of the manifest
    /// alone never replaces a full read or a finding of damage, whoever
    /// recorded that (decided in the one statement that writes).
    fn record_check(&self, what: custos_model::CheckedCopy, id: u64, check: &custos_model::CopyCheck) -> Result<()>;

    /// Schedule (`Some`) or cancel (`None`) a key's destruction.
    fn set_destroy_after(&self, label: &KeyLabel, at: Option<jiff::Timestamp>) -> Result<()>;
    /// Take a key off the destruction schedule if it is still due at `at`;
    /// false when it was not (another command took it off first).
    fn unschedule_destroy(&self, label: &KeyLabel, at: jiff::Timestamp) -> Result<bool>;
    /// When one key is scheduled to be destroyed, if it is.
    fn destroy_after(&self, label: &KeyLabel) -> Result<Option<jiff::Timestamp>>;
    /// Keys scheduled for destruction, soonest first.
    fn destroy_schedule(&self) -> Result<Vec<(KeyLabel, jiff::Timestamp)>>;

    fn insert_principal(&self, p: &PrincipalRecord) -> Result<()>;
    /// A principal with its grants.
    fn principal(&self, name: &str) -> Result<Option<PrincipalRecord>>;
    fn principals(&self) -> Result<Vec<PrincipalRecord>>;
    fn set_principal_disabled(&self, name: &str, disabled: bool) -> Result<()>;
    /// Remove a principal and its grants, in one transaction; false when
    /// there was none.
    fn remove_principal(&self, name: &str) -> Result<bool>;
    /// Replace a principal's stored credential (a hash).
    fn set_principal_credential(&self, name: &str, credential: &str) -> Result<()>;
    /// Replace a principal's roles (at least one).
    fn set_principal_roles(&self, name: &str, roles: &[custos_model::Role]) -> Result<()>;
    /// Add a grant (`kind` is "data" or "key"); adding an existing one is not an error.
    fn add_grant(&self, name: &str, kind: &str, pattern: &Pattern) -> Result<()>;
    /// Remove a grant; false when there was none.
    fn remove_grant(&self, name: &str, kind: &str, pattern: &Pattern) -> Result<bool>;

    /// Record a dual-control request; returns its id.
    fn insert_request(&self, r: &RequestRow) -> Result<u64>;
    /// All requests, newest first.
    fn requests(&self) -> Result<Vec<RequestRow>> {
        self.requests_before(u64::MAX, u32::MAX)
    }
    /// Up to `limit` requests with ids less than `before`, newest first (a
    /// page: the next starts before its last).
    fn requests_before(&self, before: u64, limit: u32) -> Result<Vec<RequestRow>>;
    /// Decide a pending request: set its state, decider and time, only if
    /// it is still pending; false when it was not.
    fn decide_request(&self, id: u64, state: &str, by: &str) -> Result<bool>;

    /// Take up a request's idempotency key (a client's retry, perhaps on
    /// another server, carries the same one), in one transaction: record it
    /// as carried out by this process, or say where an earlier attempt
    /// stands. `request` identifies the request (a hash of what was asked).
    /// Keys older than a day are forgotten.
    fn idempotency_begin(&self, key: &str, principal: &str, request: &[u8; 32]) -> Result<Idempotency>;
    /// Record the answer of a request begun with
    /// [`Repository::idempotency_begin`] (`reply` only when it may be kept).
    fn idempotency_finish(&self, key: &str, status: u16, reply: Option<&[u8]>) -> Result<()>;

    /// The software HSM's sealed state when the catalog keeps it (servers
    /// sharing a catalog on PostgreSQL), with its generation; `None` when
    /// the catalog keeps none. The state is sealed under the HSM's
    /// passphrase and carries no row MAC: the catalog key is inside it.
    fn hsm_state(&self) -> Result<Option<(Vec<u8>, u64)>>;
    /// The generation of [`Repository::hsm_state`] alone: the cheap check
    /// for a change another server made.
    fn hsm_state_generation(&self) -> Result<Option<u64>>;
    /// Store the sealed state if its generation is still `was` (`None`:
    /// only if the catalog keeps none yet): the new generation, or `None`
    /// when another process stored first (nothing was written then).
    fn put_hsm_state(&self, sealed: &[u8], was: Option<u64>) -> Result<Option<u64>>;
    /// Forget the sealed state (a vault recovered from a backup keeps the
    /// backup's HSM beside its catalog); false when there was none.
    fn remove_hsm_state(&self) -> Result<bool>;

    fn insert_hsm_rule(&self, rule: &HsmRule) -> Result<()>;
    /// All `hsm run` rules, by name.
    fn hsm_rules(&self) -> Result<Vec<HsmRule>>;
    /// Remove a rule; false when there was none by that name.
    fn remove_hsm_rule(&self, name: &str) -> Result<bool>;
}

/// Where a request's idempotency key stands (see
/// [`Repository::idempotency_begin`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Idempotency {
    /// Not seen before: the caller carries the request out now, then calls
    /// [`Repository::idempotency_finish`].
    New,
    /// Carried out already: its answer's status, and its body when it was
    /// kept (never one holding a secret).
    Done { status: u16, reply: Option<Vec<u8>> },
    /// Being carried out by a process that is alive.
    Running,
    /// The process carrying it out died meanwhile: whether it took effect
    /// is unknown.
    Orphaned,
    /// The key came with another request, or from another principal.
    Mismatch,
}

/// An object the catalog no longer references, awaiting deletion: removals
/// put what they leave unreferenced here in their own transaction, so no
/// object is forgotten if the deletion fails or the process dies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrashEntry {
    pub volume: VolumeName,
    /// A chunk (`generation` 0), or a manifest of (`object`, `generation`).
    pub chunk: Option<ChunkId>,
    pub manifest: Option<(DatasetId, u64)>,
    pub released_at: jiff::Timestamp,
    /// Taken by a deleter: no commit may use it any more.
    pub claimed: bool,
}

/// One entry of the audit log. `hash` chains it to the entry before.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AuditRow {
    pub seq: u64,
    #[serde(rename = "created_at")]
    pub at: jiff::Timestamp,
    pub principal: String,
    pub action: String,
    pub object: String,
    pub result: String,
    #[serde(serialize_with = "hex32")]
    pub hash: [u8; 32],
    /// Whether `hash` is an HMAC under the audit key (written while the HSM
    /// was open) rather than a plain SHA-256 link.
    pub keyed: bool,
}

fn hex32<S: serde::Serializer>(v: &[u8; 32], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v))
}

/// A signed checkpoint: the chain's head at `seq`, authenticated by `mac`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditCheckpoint {
    pub seq: u64,
    pub head: [u8; 32],
    pub at: jiff::Timestamp,
    pub mac: Vec<u8>,
}

/// A dual-control request: a command waiting for a second principal.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RequestRow {
    pub id: u64,
    /// The controlled action ("key-destroy", ...).
    pub action: String,
    /// The command line to run once approved, as JSON (never secrets).
    pub args: String,
    pub requested_by: String,
    pub created_at: jiff::Timestamp,
    pub expires_at: jiff::Timestamp,
    /// pending, approved, denied, executed, failed: ...
    pub state: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<jiff::Timestamp>,
}

/// Computes an entry's chain hash from the previous one's (zeros first).
pub type AuditLink<'a> = dyn Fn(&[u8; 32], &AuditRow) -> [u8; 32] + 'a;

pub mod conformance;

/// What still uses a volume, counted by [`Repository::remove_volume`]:
/// datasets with a generation there, datasets migrated from it, then the
/// names of its policies, the counts of its backups and snapshots, its
/// mirror pairs and hsm rules by name, the counts of keystore and vault
/// backups and of objects in the trash.
#[derive(Debug, Default)]
pub(crate) struct VolumeUses {
    pub datasets: i64,
    pub migrated: i64,
    pub policies: Option<String>,
    pub backups: i64,
    pub snapshots: i64,
    pub mirrors: Option<String>,
    pub rules: Option<String>,
    pub keystore_backups: i64,
    pub vault_backups: i64,
    pub trash: i64,
}

/// The conditions both backends add to their dataset query for
/// [`Repository::datasets_without_copy`]; `p(n)` is the backend's n-th
/// placeholder (1 the prefix, 2 [`prefix_end`], 3 the method, 4 the volume).
pub(crate) fn without_copy_sql(p: fn(u8) -> String) -> String {
    format!(
        "WHERE d.name >= {} AND d.name < {} AND NOT EXISTS (SELECT 1 FROM backups b
         WHERE b.dataset = d.name AND b.dataset_id = d.id AND b.source_generation = d.current_generation
         AND b.method = {} AND b.volume = {}) ORDER BY d.name",
        p(1),
        p(2),
        p(3),
        p(4)
    )
}

/// The conditions both backends add to their dataset query for
/// [`Repository::datasets_idle`] (placeholders: 1 the prefix, 2
/// [`prefix_end`], 3 the volume, 4 the time).
pub(crate) fn idle_sql(p: fn(u8) -> String) -> String {
    format!(
        "WHERE d.name >= {} AND d.name < {} AND g.volume <> {}
         AND (d.last_access IS NULL OR d.last_access <= {t}) AND g.created_at <= {t} ORDER BY d.name",
        p(1),
        p(2),
        p(3),
        t = p(4)
    )
}

/// Where the names under `prefix` end: names are ASCII, so every one that
/// starts with `prefix` sorts before `prefix` followed by DEL (in SQLite's
/// binary order and PostgreSQL's "C" collation alike).
pub(crate) fn prefix_end(prefix: &str) -> String {
    format!("{prefix}\x7f")
}

/// The query both backends run for [`VolumeUses`] (`?1` / `$1` the volume;
/// `AGG` the backend's string aggregate).
pub(crate) fn volume_uses_sql(p: &str, agg: &str) -> String {
    format!(
        "SELECT
            (SELECT COUNT(DISTINCT dataset_id) FROM generations WHERE volume = {p}),
            (SELECT COUNT(*) FROM datasets WHERE migrated_from = {p}),
            (SELECT {agg}(name, ', ') FROM policies WHERE volume = {p}),
            (SELECT COUNT(*) FROM backups WHERE volume = {p}),
            (SELECT COUNT(*) FROM snapshots WHERE volume = {p}),
            (SELECT {agg}(primary_volume || ' to ' || secondary_volume, ', ') FROM mirrors WHERE primary_volume = {p} OR secondary_volume = {p}),
            (SELECT {agg}(name, ', ') FROM hsm_rules WHERE backup_to = {p} OR migrate_to = {p}),
            (SELECT COUNT(*) FROM keystore_backups WHERE volume = {p}),
            (SELECT COUNT(*) FROM vault_backups WHERE volume = {p}),
            (SELECT COUNT(*) FROM trash WHERE volume = {p})"
    )
}

impl VolumeUses {
    /// Refuse removing volume `name` when anything uses it.
    pub fn refuse(&self, name: &VolumeName) -> Result<()> {
        match self.describe() {
            Some(uses) => Err(RepoError::InUse { kind: "volume", name: name.to_string(), uses, remedy: VOLUME_IN_USE }),
            None => Ok(()),
        }
    }

    /// What uses the volume, in words; `None` when nothing does.
    pub fn describe(&self) -> Option<String> {
        let n = |k: i64, one: &str, many: &str| match k {
            0 => None,
            1 => Some(format!("1 {one}")),
            k => Some(format!("{k} {many}")),
        };
        let named = |v: &Option<String>, what: &str| v.as_ref().map(|l| format!("{what} {l}"));
        let parts: Vec<String> = [
            n(self.datasets, "dataset's generations", "datasets' generations"),
            n(self.migrated, "dataset migrated from it", "datasets migrated from it"),
            named(&self.policies, "policy"),
            n(self.backups, "backup", "backups"),
            n(self.snapshots, "snapshot", "snapshots"),
            named(&self.mirrors, "mirror"),
            named(&self.rules, "hsm rule"),
            n(self.keystore_backups, "keystore backup", "keystore backups"),
            n(self.vault_backups, "vault backup", "vault backups"),
            n(self.trash, "object waiting in the trash", "objects waiting in the trash"),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// What to do about a volume still in use.
pub(crate) const VOLUME_IN_USE: &str = "move or remove them first (`custos ds rm`, `custos backup prune`, `custos snapshot rm`, `custos mirror rm`, `custos policy rm`, `custos hsm rule rm`, `custos vault prune`), and let `custos gc` empty the trash";

/// How many enabled principals hold the security-admin role. A change to a
/// principal that leaves none, where there was one, is refused in the same
/// transaction ([`RepoError::LastAdmin`]): the engine checks first, for a
/// clear message, and this closes the race between two such changes.
pub(crate) const ENABLED_ADMINS_SQL: &str =
    "SELECT COUNT(*) FROM principals WHERE disabled = 0 AND (',' || role || ',') LIKE '%,security-admin,%'";
