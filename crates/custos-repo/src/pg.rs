//! The catalog on PostgreSQL (ADR 0020): the same [`Repository`] contract as
//! SQLite, over a pool of connections to one database that several servers
//! may share.
//!
//! * **Rows are authenticated in Rust.** PostgreSQL cannot reach the HSM,
//!   and the catalog key never enters the database: every write of an
//!   authenticated table returns the rows it wrote, and each is sealed
//!   (its MAC over [`crate::row_message`], as in SQLite) in the same
//!   transaction; an update locks and checks the rows it replaces first;
//!   every read of such a row checks it before it is used. The schema may
//!   hold no trigger, rule, view, function or row policy Custos did not
//!   make: the repository refuses to open one that does.
//! * **What must be serialized is serialized by the database**: chunk
//!   references, the trash and the generations a commit replaces under one
//!   transaction-scoped advisory lock (a commit and a deleter never both
//!   decide about one object), the audit chain's appends under another (one
//!   chain for the whole deployment), a dataset's generation by its row, a
//!   request's decision by a compare-and-set `UPDATE`.
//! * A deleter's session is a session-level advisory lock held by a
//!   connection of its own: the database drops it when the process or its
//!   connection dies, and another deleter then takes over its claims.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use custos_crypto::{Kcv, Mkvp};
use custos_model::{
    BackupRecord, CheckedCopy, ChunkId, CopyCheck, CopyMethod, CustodianKey, DatasetId, DatasetName, DatasetRecord,
    EscrowCopy, GenerationRecord, HsmRule, KbkRecord, KeyLabel, KeyRecord, KeyState, KeystoreBackupRecord, Medium,
    Pattern, PolicyRecord, PolicyTarget, PrincipalRecord, Purpose, Role, SealedShare, SnapshotRecord,
    VaultBackupRecord, VolumeName, VolumeRecord, WrappedMaterial,
};
use jiff::Timestamp;
use postgres::error::SqlState;
use postgres::types::{FromSql, ToSql, Type};
use postgres::Row;
use tokio_postgres_rustls::MakeRustlsConnect;

mod conn;
use conn::Db;
pub(crate) use conn::Manager;

use crate::rowauth::{constant_time_eq, Table, GENERATION_SETTING, KEYLESS_SETTINGS, SEALED_SETTING, TABLES};
use crate::{
    row_message, AuditCheckpoint, AuditLink, AuditRow, BackupInsert, CatalogCheck, Col, Garbage, GenerationCommit,
    RepoError, Repository, RequestRow, Result, Rewrap, RewrapFn, RewrapPage, RowAuth, RowFault, TrashEntry,
    VolumeObjects,
};

/// The schema version [`BASELINE`] is at. A test holds it equal to
/// [`crate::SqliteRepository::schema_version`]: a new SQLite migration
/// needs its PostgreSQL counterpart.
pub const BASELINE_VERSION: i64 = 16;

/// The whole schema at [`BASELINE_VERSION`], in PostgreSQL's dialect.
pub const BASELINE: &str = include_str!("postgres/schema.sql");

/// Migrations after the baseline, numbered as SQLite's (ADR 0020: one
/// schema history, each later migration in both dialects).
const MIGRATIONS: &[(i64, &str)] = &[
    (
        17,
        r#"
    CREATE TABLE idempotency (
        key TEXT COLLATE "C" PRIMARY KEY,
        principal TEXT COLLATE "C" NOT NULL,
        request BYTEA NOT NULL,
        state TEXT COLLATE "C" NOT NULL,
        owner TEXT COLLATE "C" NOT NULL,
        status BIGINT,
        reply BYTEA,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX idempotency_created ON idempotency(created_at);
    "#,
    ),
    (
        18,
        r#"
    DROP INDEX keys_mkvp;
    CREATE INDEX keys_mkvp_label ON keys(mkvp, label) WHERE wrapped IS NOT NULL;
    "#,
    ),
    (
        19,
        r#"
    CREATE TABLE hsm_state (
        id BIGINT PRIMARY KEY CHECK (id = 1),
        generation BIGINT NOT NULL,
        sealed BYTEA NOT NULL
    );
    "#,
    ),
    (
        20,
        r#"
    CREATE INDEX keys_destroy_after ON keys(destroy_after, label) WHERE destroy_after IS NOT NULL;
    "#,
    ),
    (
        21,
        r#"
    CREATE INDEX backups_copy ON backups(volume, copy_id, generation);
    "#,
    ),
    (
        22,
        r#"
    ALTER TABLE backups ADD COLUMN checked_at BIGINT;
    ALTER TABLE backups ADD COLUMN checked_data BIGINT;
    ALTER TABLE backups ADD COLUMN check_problem TEXT COLLATE "C";
    ALTER TABLE snapshots ADD COLUMN checked_at BIGINT;
    ALTER TABLE snapshots ADD COLUMN checked_data BIGINT;
    ALTER TABLE snapshots ADD COLUMN check_problem TEXT COLLATE "C";
    "#,
    ),
    (
        23,
        r#"
    ALTER TABLE keys ADD COLUMN attributes TEXT COLLATE "C";
    "#,
    ),
    (
        24,
        r#"
    CREATE TABLE drills (
        dataset TEXT COLLATE "C" NOT NULL,
        threats TEXT COLLATE "C" NOT NULL,
        at BIGINT NOT NULL,
        survived BIGINT NOT NULL,
        agrees BIGINT NOT NULL,
        how TEXT COLLATE "C" NOT NULL,
        by_principal TEXT COLLATE "C" NOT NULL,
        mac BYTEA,
        PRIMARY KEY (dataset, threats)
    );
    "#,
    ),
];

/// The schema version this build writes: the baseline and every migration.
pub const SCHEMA_VERSION: i64 = 24;

/// Rows written by one bulk insert after which the table's statistics are
/// refreshed at once (see [`PgRepository::analyze`]).
const ANALYZE_AFTER: usize = 10_000;

/// Split libpq's `name=value` parameter off a connection string (a URL's
/// query, or the `key=value` form), for the parameters PostgreSQL's Rust
/// client does not read: the string without it, and its value.
fn take_param(url: &str, name: &str) -> (String, Option<String>) {
    let prefix = format!("{name}=");
    if !url.contains(&prefix) {
        // Untouched: nothing to take, and nothing of it re-spaced.
        return (url.to_string(), None);
    }
    if let Some((base, query)) = url.split_once('?') {
        let (mut keep, mut value) = (Vec::new(), None);
        for part in query.split('&') {
            match part.strip_prefix(&prefix) {
                Some(v) => value = Some(v.to_string()),
                None => keep.push(part),
            }
        }
        let url = if keep.is_empty() { base.to_string() } else { format!("{base}?{}", keep.join("&")) };
        return (url, value);
    }
    if url.contains("://") {
        return (url.to_string(), None);
    }
    let (mut keep, mut value) = (Vec::new(), None);
    for part in url.split_whitespace() {
        match part.strip_prefix(&prefix) {
            Some(v) => value = Some(v.trim_matches('\'').to_string()),
            None => keep.push(part),
        }
    }
    (keep.join(" "), value)
}

/// The TLS client for connections over TCP: rustls with aws-lc-rs,
/// trusting the CA certificates in `rootcert` (a PEM file) when given, else
/// the system's roots.
fn tls_connector(rootcert: Option<&str>) -> Result<CatalogTls> {
    let refuse = |why: String| RepoError::PostgresTls { why };
    let mut roots = rustls::RootCertStore::empty();
    match rootcert {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| refuse(format!("sslrootcert {path} cannot be read: {e}")))?;
            use rustls_pki_types::pem::PemObject;
            let mut n = 0;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| refuse(format!("sslrootcert {path} is not PEM certificates: {e}")))?;
                roots.add(cert).map_err(|e| refuse(format!("sslrootcert {path}: {e}")))?;
                n += 1;
            }
            if n == 0 {
                return Err(refuse(format!("sslrootcert {path} holds no certificate")));
            }
        }
        None => {
            // Certificates the system cannot parse are skipped, as libpq does.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| refuse(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(CatalogTls(MakeRustlsConnect::new(config)))
}

/// The TLS connector, given a server name even for a Unix socket (whose
/// directory is none, and over which PostgreSQL never offers TLS): the
/// client asks for a connector per host before it knows which it reaches.
#[derive(Clone)]
pub(crate) struct CatalogTls(MakeRustlsConnect);

impl<S> postgres::tls::MakeTlsConnect<S> for CatalogTls
where
    MakeRustlsConnect: postgres::tls::MakeTlsConnect<S>,
{
    type Stream = <MakeRustlsConnect as postgres::tls::MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as postgres::tls::MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as postgres::tls::MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> std::result::Result<Self::TlsConnect, Self::Error> {
        let name = if domain.is_empty() || domain.starts_with('/') { "localhost" } else { domain };
        postgres::tls::MakeTlsConnect::<S>::make_tls_connect(&mut self.0, name)
    }
}

/// Advisory lock keys (transaction-scoped): making the schema, the objects
/// (chunk references and the trash), the audit chain.
const LOCK_SCHEMA: i64 = 0x6375_7374_6f73_0001;
const LOCK_OBJECTS: i64 = 0x6375_7374_6f73_0002;
const LOCK_AUDIT: i64 = 0x6375_7374_6f73_0003;
/// Changes to principals (see `update_principal`).
const LOCK_PRINCIPALS: i64 = 0x6375_7374_6f73_0004;
/// Writes of keys that carry names (see `check_key_names`).
const LOCK_KEY_NAMES: i64 = 0x6375_7374_6f73_0005;

/// Connections in a server's pool.
const POOL_SIZE: u32 = 16;

/// How long a statement waits for a lock another server holds.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// The setting that counts deletions (see [`Repository::deletion_seq`]).
const DELETIONS: &str = "trash.deletions";

/// How long a deleted object's tombstone is kept (as in SQLite).
const TOMBSTONE_DAYS: i64 = 7;

type P<'a> = &'a (dyn ToSql + Sync);

/// The repository on PostgreSQL.
pub struct PgRepository {
    pool: r2d2::Pool<Manager>,
    config: postgres::Config,
    tls: CatalogTls,
    rows: Rows,
    session: Mutex<Option<PgSession>>,
}

/// A deleter's identity: the token its claims carry, and the connection
/// that holds the advisory lock derived from it while the deleter lives.
struct PgSession {
    token: String,
    _holder: postgres::Client,
}

/// Row authentication state (the PostgreSQL side of `rowauth::Shared`).
struct Rows {
    auth: RwLock<Option<Arc<dyn RowAuth>>>,
    /// The key generation this process last sealed a row under.
    seen: Mutex<Option<Option<String>>>,
    sealed: AtomicBool,
    tables: HashMap<&'static str, Table>,
    /// Each authenticated table's columns in schema order, then `mac`.
    selects: HashMap<&'static str, String>,
}

impl Rows {
    fn auth(&self) -> Option<Arc<dyn RowAuth>> {
        self.auth.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn pg(action: &'static str) -> impl Fn(postgres::Error) -> RepoError {
    move |e| {
        if let Some(db) = e.as_db_error() {
            let code = db.code();
            if *code == SqlState::LOCK_NOT_AVAILABLE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
            {
                return RepoError::Busy { action, waited_secs: LOCK_WAIT.as_secs() };
            }
            if *code == SqlState::UNIQUE_VIOLATION {
                // The caller names what exists (see `exists_as`).
                let name = db.detail().or(db.constraint()).unwrap_or("?").to_string();
                return RepoError::Exists { kind: "catalog row", name };
            }
            return RepoError::Postgres { action, why: format!("{}: {}", db.severity(), db.message()) };
        }
        // What lies under it (a TLS failure's reason, an I/O error), once.
        let mut why = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            let text = c.to_string();
            if !why.contains(&text) {
                why = format!("{why}: {text}");
            }
            cause = c.source();
        }
        // A server that offered TLS and failed the handshake: the remedy is
        // the CA to trust, not the server's health.
        if why.starts_with("error performing TLS handshake") {
            return RepoError::PostgresTls { why };
        }
        RepoError::Postgres { action, why }
    }
}

fn corrupt(what: impl Into<String>) -> RepoError {
    RepoError::Corrupt { what: what.into() }
}

fn get<'a, T: FromSql<'a>>(r: &'a Row, i: usize) -> Result<T> {
    r.try_get(i).map_err(|e| {
        let col = r.columns().get(i).map_or("?", |c| c.name());
        corrupt(format!("column {col}: {e}"))
    })
}

fn ts(t: Timestamp) -> i64 {
    t.as_microsecond()
}

fn at(r: &Row, i: usize) -> Result<Timestamp> {
    let v: i64 = get(r, i)?;
    Timestamp::from_microsecond(v).map_err(|e| corrupt(format!("a time ({e})")))
}

fn opt_at(r: &Row, i: usize) -> Result<Option<Timestamp>> {
    let v: Option<i64> = get(r, i)?;
    v.map(|v| Timestamp::from_microsecond(v).map_err(|e| corrupt(format!("a time ({e})")))).transpose()
}

fn u(r: &Row, i: usize) -> Result<u64> {
    Ok(get::<i64>(r, i)? as u64)
}

fn id16(r: &Row, i: usize) -> Result<[u8; 16]> {
    let v: &[u8] = get(r, i)?;
    v.try_into().map_err(|_| corrupt("a 16-byte id"))
}

fn bytes32(r: &Row, i: usize, what: &str) -> Result<[u8; 32]> {
    let v: &[u8] = get(r, i)?;
    v.try_into().map_err(|_| corrupt(what.to_string()))
}

fn label(r: &Row, i: usize) -> Result<KeyLabel> {
    KeyLabel::new(get::<String>(r, i)?).map_err(|e| corrupt(e.to_string()))
}

fn vol(r: &Row, i: usize) -> Result<VolumeName> {
    VolumeName::new(get::<String>(r, i)?).map_err(|e| corrupt(e.to_string()))
}

fn opt_vol(r: &Row, i: usize) -> Result<Option<VolumeName>> {
    get::<Option<String>>(r, i)?.map(|v| VolumeName::new(v).map_err(|e| corrupt(e.to_string()))).transpose()
}

fn ds_name(r: &Row, i: usize) -> Result<DatasetName> {
    DatasetName::new(get::<String>(r, i)?).map_err(|e| corrupt(e.to_string()))
}

fn volume_name(v: &str) -> Result<VolumeName> {
    VolumeName::new(v.to_string()).map_err(|e| corrupt(e.to_string()))
}

/// A column as a row's MAC covers it.
fn col(r: &Row, i: usize) -> Result<Col<'_>> {
    let ty = r.columns().get(i).map(|c| c.type_().clone()).ok_or_else(|| corrupt("a missing column"))?;
    Ok(if ty == Type::INT8 {
        get::<Option<i64>>(r, i)?.map_or(Col::Null, Col::Int)
    } else if ty == Type::TEXT {
        get::<Option<&str>>(r, i)?.map_or(Col::Null, |s| Col::Text(s.as_bytes()))
    } else if ty == Type::BYTEA {
        get::<Option<&[u8]>>(r, i)?.map_or(Col::Null, Col::Blob)
    } else {
        return Err(corrupt(format!("a column of type {ty}, which the Custos schema does not have")));
    })
}

/// A value as a message shows it (short; never a blob's bytes).
fn shown(v: Col<'_>) -> String {
    match v {
        Col::Null => "NULL".into(),
        Col::Int(n) => n.to_string(),
        Col::Real(f) => f.to_string(),
        Col::Text(s) => format!("'{}'", String::from_utf8_lossy(s).chars().take(80).collect::<String>()),
        Col::Blob(b) => format!("<{} bytes>", b.len()),
    }
}

/// The keys table's columns, in schema order.
const KEY_COL_NAMES: &[&str] = &[
    "label",
    "state",
    "purpose",
    "app",
    "wrapped",
    "mkvp",
    "kcv",
    "created_at",
    "activated_at",
    "deactivated_at",
    "destroyed_at",
    "expires_at",
    "last_used_at",
    "use_count",
    "escrow_kbk",
    "escrow",
    "destroy_after",
    "attributes",
];

const KEY_COLS: &str = "label, state, purpose, app, wrapped, mkvp, kcv, created_at, activated_at, deactivated_at, destroyed_at, expires_at, last_used_at, use_count, escrow_kbk, escrow, attributes";

/// A key from a row holding the keys table's columns in schema order.
fn key_from(r: &Row) -> Result<KeyRecord> {
    let state: String = get(r, 1)?;
    let purpose: String = get(r, 2)?;
    let mkvp: String = get(r, 5)?;
    let kcv: String = get(r, 6)?;
    Ok(KeyRecord {
        label: label(r, 0)?,
        state: KeyState::parse(&state).ok_or_else(|| corrupt(format!("key state {state}")))?,
        purpose: Purpose::parse(&purpose).ok_or_else(|| corrupt(format!("key purpose {purpose}")))?,
        app: get(r, 3)?,
        wrapped: get::<Option<Vec<u8>>>(r, 4)?.map(WrappedMaterial),
        mkvp: Mkvp::from_hex(&mkvp).map_err(|_| corrupt("MKVP"))?,
        kcv: Kcv::from_hex(&kcv).map_err(|_| corrupt("KCV"))?,
        created_at: at(r, 7)?,
        activated_at: opt_at(r, 8)?,
        deactivated_at: opt_at(r, 9)?,
        destroyed_at: opt_at(r, 10)?,
        expires_at: opt_at(r, 11)?,
        last_used_at: opt_at(r, 12)?,
        use_count: u(r, 13)?,
        escrow: match (get::<Option<String>>(r, 14)?, get::<Option<Vec<u8>>>(r, 15)?) {
            (Some(kbk), Some(blob)) => Some(EscrowCopy { kbk, blob }),
            _ => None,
        },
        attributes: crate::key_attributes_from(get::<Option<String>>(r, 17)?.as_deref()).map_err(corrupt)?,
    })
}

fn principal_from(r: &Row) -> Result<PrincipalRecord> {
    let roles: String = get(r, 1)?;
    Ok(PrincipalRecord {
        name: get(r, 0)?,
        roles: roles
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| Role::parse(s).ok_or_else(|| corrupt(format!("role {s}"))))
            .collect::<Result<_>>()?,
        credential: get(r, 2)?,
        disabled: get::<i64>(r, 3)? != 0,
        created_at: at(r, 4)?,
        data_grants: Vec::new(),
        key_grants: Vec::new(),
    })
}

fn volume_from(r: &Row) -> Result<VolumeRecord> {
    let medium: String = get(r, 3)?;
    Ok(VolumeRecord {
        name: vol(r, 0)?,
        location: get(r, 1)?,
        site: get(r, 2)?,
        medium: Medium::parse(&medium).ok_or_else(|| corrupt(format!("medium {medium}")))?,
        created_at: at(r, 4)?,
    })
}

fn policy_from(r: &Row) -> Result<PolicyRecord> {
    let target = if get::<i64>(r, 4)? != 0 {
        PolicyTarget::Template { app: get(r, 5)? }
    } else {
        let l: Option<String> = get(r, 3)?;
        let l = l.ok_or_else(|| corrupt("policy without key"))?;
        PolicyTarget::Key(KeyLabel::new(l).map_err(|e| corrupt(e.to_string()))?)
    };
    Ok(PolicyRecord {
        name: get(r, 0)?,
        pattern: Pattern::new(get::<String>(r, 1)?).map_err(|e| corrupt(e.to_string()))?,
        volume: vol(r, 2)?,
        target,
        created_at: at(r, 6)?,
    })
}

fn backup_from(r: &Row) -> Result<BackupRecord> {
    let method: String = get(r, 4)?;
    Ok(BackupRecord {
        id: u(r, 0)?,
        dataset: ds_name(r, 1)?,
        dataset_id: DatasetId(id16(r, 2)?),
        source_generation: u(r, 3)?,
        method: CopyMethod::parse(&method).ok_or_else(|| corrupt(format!("copy method {method}")))?,
        volume: vol(r, 5)?,
        key_label: label(r, 6)?,
        copy_id: DatasetId(id16(r, 7)?),
        generation: u(r, 8)?,
        size: u(r, 9)?,
        chunk_size: u(r, 10)? as u32,
        chunk_count: u(r, 11)?,
        manifest_hash: bytes32(r, 12, "manifest hash")?,
        created_at: at(r, 13)?,
        checked: check_from(r, 14)?,
    })
}

/// A copy's last check, from its three columns starting at `i`.
fn check_from(r: &Row, i: usize) -> Result<Option<CopyCheck>> {
    Ok(match opt_at(r, i)? {
        Some(at) => {
            let data: Option<i64> = get(r, i + 1)?;
            Some(CopyCheck { at, read_data: data.unwrap_or(0) != 0, problem: get(r, i + 2)? })
        }
        None => None,
    })
}

fn snapshot_from(r: &Row) -> Result<SnapshotRecord> {
    Ok(SnapshotRecord {
        id: u(r, 0)?,
        dataset: ds_name(r, 1)?,
        dataset_id: DatasetId(id16(r, 2)?),
        generation: u(r, 3)?,
        volume: vol(r, 4)?,
        key_label: label(r, 5)?,
        size: u(r, 6)?,
        chunk_count: u(r, 7)?,
        manifest_hash: bytes32(r, 8, "manifest hash")?,
        created_at: at(r, 9)?,
        checked: check_from(r, 10)?,
    })
}

const DATASET_SELECT: &str = "SELECT d.id, d.name, d.created_at, g.generation, g.volume, g.key_label, g.size, g.chunk_size, g.chunk_count, g.manifest_hash, g.created_at, d.last_access, d.migrated_from FROM datasets d JOIN generations g ON g.dataset_id = d.id AND g.generation = d.current_generation";

fn dataset_from(r: &Row) -> Result<DatasetRecord> {
    let generation_at = at(r, 10)?;
    let last_access = match opt_at(r, 11)? {
        Some(t) => t.max(generation_at),
        None => generation_at,
    };
    Ok(DatasetRecord {
        id: DatasetId(id16(r, 0)?),
        name: ds_name(r, 1)?,
        created_at: at(r, 2)?,
        current: GenerationRecord {
            generation: u(r, 3)?,
            volume: vol(r, 4)?,
            key_label: label(r, 5)?,
            size: u(r, 6)?,
            chunk_size: u(r, 7)? as u32,
            chunk_count: u(r, 8)?,
            manifest_hash: bytes32(r, 9, "manifest hash")?,
            created_at: generation_at,
        },
        last_access,
        migrated_from: opt_vol(r, 12)?,
    })
}

fn trash_from(r: &Row) -> Result<TrashEntry> {
    let kind: String = get(r, 1)?;
    let object = id16(r, 2)?;
    let generation = u(r, 3)?;
    Ok(TrashEntry {
        volume: vol(r, 0)?,
        chunk: (kind == "chunk").then_some(ChunkId(object)),
        manifest: (kind == "manifest").then_some((DatasetId(object), generation)),
        released_at: at(r, 4)?,
        claimed: get::<i64>(r, 5)? != 0,
    })
}

fn audit_from(r: &Row) -> Result<AuditRow> {
    Ok(AuditRow {
        seq: u(r, 0)?,
        at: at(r, 1)?,
        principal: get(r, 2)?,
        action: get(r, 3)?,
        object: get(r, 4)?,
        result: get(r, 5)?,
        hash: bytes32(r, 6, "audit hash")?,
        keyed: get::<i64>(r, 7)? != 0,
    })
}

/// Which of the chunks $1 a generation, backup or snapshot on volume $2 lists.
const CHUNKS_USED: &str = "SELECT u.c FROM unnest($1::bytea[]) AS u(c) WHERE
        EXISTS (SELECT 1 FROM generation_chunks g JOIN generations gg
            ON gg.dataset_id = g.dataset_id AND gg.generation = g.generation
            WHERE g.chunk_id = u.c AND gg.volume = $2)
     OR EXISTS (SELECT 1 FROM backup_chunks b JOIN backups bb ON bb.id = b.backup_id
            WHERE b.chunk_id = u.c AND bb.volume = $2)
     OR EXISTS (SELECT 1 FROM snapshot_chunks s JOIN snapshots ss ON ss.id = s.snapshot_id
            WHERE s.chunk_id = u.c AND ss.volume = $2)";

fn referenced(c: &mut Db<'_>, candidates: &[ChunkId], vol: &str) -> Result<Vec<bool>> {
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    // One statement for all the candidates: the ones still referenced.
    let ids: Vec<&[u8]> = candidates.iter().map(|ch| &ch.0[..]).collect();
    let used: std::collections::HashSet<[u8; 16]> = c
        .query(CHUNKS_USED, &[&ids, &vol])
        .map_err(pg("look for references to chunks"))?
        .iter()
        .map(|r| id16(r, 0))
        .collect::<Result<_>>()?;
    Ok(candidates.iter().map(|ch| used.contains(&ch.0)).collect())
}

fn unreferenced(tx: &mut Db<'_>, mut candidates: Vec<ChunkId>, vol: &str) -> Result<Vec<ChunkId>> {
    candidates.sort();
    candidates.dedup();
    let used = referenced(tx, &candidates, vol)?;
    Ok(candidates.into_iter().zip(used).filter(|(_, u)| !u).map(|(c, _)| c).collect())
}

fn check_reused(tx: &mut Db<'_>, reused: &[ChunkId], vol: &str, what: impl FnOnce() -> String) -> Result<()> {
    let used = referenced(tx, reused, vol)?;
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(RepoError::Raced {
            what: what(),
            why: format!("chunk {} it shares on volume {vol} was released by another command", reused[i].to_hex()),
        });
    }
    Ok(())
}

fn manifest_referenced(tx: &mut Db<'_>, id: &DatasetId, generation: u64, vol: &str) -> Result<bool> {
    let r = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM generations WHERE dataset_id = $1 AND generation = $2 AND volume = $3)
                 OR EXISTS (SELECT 1 FROM snapshots WHERE dataset_id = $1 AND generation = $2 AND volume = $3)
                 OR EXISTS (SELECT 1 FROM backups WHERE copy_id = $1 AND generation = $2 AND volume = $3)",
            &[&&id.0[..], &(generation as i64), &vol],
        )
        .map_err(pg("look for references to a manifest"))?;
    get(&r, 0)
}

fn chunk_list(tx: &mut Db<'_>, sql: &str, p: &[P<'_>]) -> Result<Vec<ChunkId>> {
    tx.query(sql, p).map_err(pg("list chunks"))?.iter().map(|r| Ok(ChunkId(id16(r, 0)?))).collect()
}

fn trash_keys(g: &Garbage) -> impl Iterator<Item = (&str, &'static str, &[u8], i64)> {
    let chunks = g.chunks.iter().map(|(v, c)| (v.as_str(), "chunk", &c.0[..], 0i64));
    let manifests = g.manifests.iter().map(|(v, d, gen)| (v.as_str(), "manifest", &d.0[..], *gen as i64));
    chunks.chain(manifests)
}

fn to_trash(tx: &mut Db<'_>, g: &Garbage, claimed_by: Option<&str>) -> Result<()> {
    if g.chunks.is_empty() && g.manifests.is_empty() {
        return Ok(());
    }
    let st = "INSERT INTO trash AS t (volume, kind, object, generation, released_at, claimed, claimed_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (volume, kind, object, generation) DO UPDATE SET
             released_at = CASE WHEN t.claimed = 3 OR (t.claimed = 0 AND excluded.claimed = 1) THEN excluded.released_at ELSE t.released_at END,
             claimed_by = CASE WHEN excluded.claimed = 1 THEN excluded.claimed_by ELSE t.claimed_by END,
             claimed = CASE WHEN t.claimed = 3 THEN excluded.claimed ELSE GREATEST(t.claimed, excluded.claimed) END";
    let now = ts(Timestamp::now());
    let claimed = i64::from(claimed_by.is_some());
    for (vol, kind, object, generation) in trash_keys(g) {
        tx.execute(st, &[&vol, &kind, &object, &generation, &now, &claimed, &claimed_by])
            .map_err(pg("put objects in the trash"))?;
    }
    Ok(())
}

fn forget(tx: &mut Db<'_>, g: &Garbage) -> Result<()> {
    for (vol, kind, object, generation) in trash_keys(g) {
        tx.execute(
            "DELETE FROM trash WHERE volume = $1 AND kind = $2 AND object = $3 AND generation = $4",
            &[&vol, &kind, &object, &generation],
        )
        .map_err(pg("empty the trash"))?;
    }
    Ok(())
}

fn deletion_seq(c: &mut Db<'_>) -> Result<u64> {
    let v: Option<String> = match c
        .query_opt("SELECT value FROM settings WHERE key = $1", &[&DELETIONS])
        .map_err(pg("read the deletion count"))?
    {
        Some(r) => Some(get(&r, 0)?),
        None => None,
    };
    v.map_or(Ok(0), |v| v.parse().map_err(|_| corrupt(format!("setting {DELETIONS} = {v:?}"))))
}

fn listed(vol: &str, chunks: &[ChunkId], manifest: (DatasetId, u64)) -> Result<Garbage> {
    let v = volume_name(vol)?;
    Ok(Garbage {
        chunks: chunks.iter().map(|c| (v.clone(), *c)).collect(),
        manifests: vec![(v, manifest.0, manifest.1)],
    })
}

fn check_not_claimed(
    tx: &mut Db<'_>,
    vol: &str,
    objects: &Garbage,
    since: u64,
    what: impl Fn() -> String,
) -> Result<()> {
    // One statement finds every listed object in the trash, one takes
    // those to rescue out of it (a round trip per chunk made a big
    // commit wait on thousands).
    let (mut kinds, mut objs, mut gens) = (Vec::new(), Vec::new(), Vec::new());
    for (_, kind, object, generation) in trash_keys(objects) {
        kinds.push(kind);
        objs.push(object);
        gens.push(generation);
    }
    if kinds.is_empty() {
        return Ok(());
    }
    let found = tx
        .query(
            "SELECT t.kind, t.object, t.generation, t.claimed, t.deleted_seq
             FROM unnest($2::text[], $3::bytea[], $4::bigint[]) AS k(kind, object, generation)
             JOIN trash t ON t.volume = $1 AND t.kind = k.kind AND t.object = k.object AND t.generation = k.generation",
            &[&vol, &kinds, &objs, &gens],
        )
        .map_err(pg("look in the trash"))?;
    let (mut rk, mut ro, mut rg) = (Vec::new(), Vec::new(), Vec::new());
    for r in &found {
        let (kind, claimed, deleted): (String, i64, Option<i64>) = (get(r, 0)?, get(r, 3)?, get(r, 4)?);
        match (claimed, deleted) {
            (3, Some(d)) if d as u64 <= since => {}
            (3, _) => {
                return Err(RepoError::Raced {
                    what: what(),
                    why: format!("a {kind} it needs on volume {vol} was deleted by another command while it worked"),
                })
            }
            (0, _) => {}
            _ => {
                return Err(RepoError::Raced {
                    what: what(),
                    why: format!("a {kind} it needs on volume {vol} is being deleted by another command"),
                })
            }
        }
        rk.push(kind);
        ro.push(get::<Vec<u8>>(r, 1)?);
        rg.push(get::<i64>(r, 2)?);
    }
    if !rk.is_empty() {
        tx.execute(
            "DELETE FROM trash t USING unnest($2::text[], $3::bytea[], $4::bigint[]) AS k(kind, object, generation)
             WHERE t.volume = $1 AND t.kind = k.kind AND t.object = k.object AND t.generation = k.generation",
            &[&vol, &rk, &ro, &rg],
        )
        .map_err(pg("take an object out of the trash"))?;
    }
    Ok(())
}

/// The advisory lock key a session token names (its first 8 bytes).
fn session_key(token: &str) -> Option<i64> {
    let b = hex::decode(token.get(..16)?).ok()?;
    Some(i64::from_be_bytes(b.try_into().ok()?))
}

impl PgRepository {
    /// Connect to the catalog at `url` (`postgres://…`, or libpq's
    /// `key=value` form), making its schema in an empty database. A
    /// database that holds other tables of Custos's names but no Custos
    /// schema, a newer schema, or objects Custos did not make (triggers,
    /// rules, views, functions, row policies) is refused.
    ///
    /// Over TCP, TLS is used as `sslmode` says (`prefer`, the default: when
    /// the server offers it; `require`; `disable`), and the server's
    /// certificate is always verified, name included: against the CA
    /// certificates in the file `sslrootcert` names, else against the
    /// system's roots. A Unix socket is never encrypted.
    pub fn open(url: &str) -> Result<Self> {
        let (url, rootcert) = take_param(url, "sslrootcert");
        let tls = tls_connector(rootcert.as_deref())?;
        let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| RepoError::Postgres {
            action: "read the repository's address",
            why: e.to_string(),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        // Waiting for another server's lock ends as "busy", never hangs.
        // Statements are prepared once per connection (`conn`), but each
        // run is planned for its values: a generic plan for a page or a
        // range does not know how selective its values are.
        let opts = format!(
            "{} -c lock_timeout={}s -c plan_cache_mode=force_custom_plan",
            config.get_options().unwrap_or(""),
            LOCK_WAIT.as_secs()
        );
        config.options(opts.trim());
        config.application_name("custos");
        // One connection first: an unreachable server or a refused login is
        // reported at once, with PostgreSQL's own words.
        let mut c = config.connect(tls.clone()).map_err(pg("connect to the catalog"))?;
        Self::migrate(&mut c)?;
        let rows = Self::load(&mut c)?;
        drop(c);
        // Connections are checked before use only after an idle spell
        // (`client`): a check on every checkout is a round trip each.
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(Duration::from_secs(15))
            .build_unchecked(Manager { config: config.clone(), tls: tls.clone() });
        Ok(Self { pool, config, tls, rows, session: Mutex::new(None) })
    }

    /// Make the schema in an empty database, or check the one there.
    fn migrate(c: &mut postgres::Client) -> Result<()> {
        let mut tx = c.transaction().map_err(pg("start reading the schema"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_SCHEMA]).map_err(pg("lock the schema"))?;
        let r = tx.query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[]).map_err(pg("read the schema"))?;
        if !get::<bool>(&r, 0)? {
            let names: Vec<&str> = TABLES.iter().map(|(t, _)| *t).chain(["datasets", "audit_log", "trash"]).collect();
            let r = tx
                .query_one(
                    "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename = ANY($1)",
                    &[&names],
                )
                .map_err(pg("read the schema"))?;
            if get::<i64>(&r, 0)? > 0 {
                return Err(RepoError::NotACatalog {
                    path: "the PostgreSQL database".into(),
                    why: "it holds tables named like Custos's but no Custos schema version".into(),
                });
            }
            tx.batch_execute(BASELINE).map_err(pg("make the catalog's schema"))?;
        }
        let r = tx.query_one("SELECT max(version) FROM schema_version", &[]).map_err(pg("read the schema version"))?;
        let found: Option<i64> = get(&r, 0)?;
        let found = found.ok_or_else(|| RepoError::NotACatalog {
            path: "the PostgreSQL database".into(),
            why: "its schema_version table is empty".into(),
        })?;
        if found > SCHEMA_VERSION {
            return Err(RepoError::SchemaTooNew {
                path: "the PostgreSQL database".into(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        for (n, sql) in MIGRATIONS.iter().filter(|(n, _)| *n > found) {
            tx.batch_execute(sql).map_err(pg("migrate the schema"))?;
            tx.execute("UPDATE schema_version SET version = $1", &[n]).map_err(pg("record the schema version"))?;
        }
        // Custos makes no trigger, rule, view, function or row policy: one
        // there would run inside Custos's statements (or hide rows from it).
        let foreign: Vec<String> = tx
            .query(
                "SELECT 'trigger ' || t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                     WHERE c.relnamespace = current_schema()::regnamespace AND NOT t.tgisinternal
                 UNION ALL SELECT 'rule ' || rulename FROM pg_rules WHERE schemaname = current_schema()
                 UNION ALL SELECT 'view ' || viewname FROM pg_views WHERE schemaname = current_schema()
                 UNION ALL SELECT 'function ' || proname FROM pg_proc WHERE pronamespace = current_schema()::regnamespace
                 UNION ALL SELECT 'row policy ' || p.polname FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
                     WHERE c.relnamespace = current_schema()::regnamespace
                 UNION ALL SELECT 'event trigger ' || evtname FROM pg_event_trigger
                 ORDER BY 1",
                &[],
            )
            .map_err(pg("read the schema"))?
            .iter()
            .map(|r| get(r, 0))
            .collect::<Result<_>>()?;
        if !foreign.is_empty() {
            return Err(RepoError::Tampered {
                table: "schema".into(),
                row: foreign.join(", "),
                why: "is not Custos's (Custos makes no triggers, rules, views, functions or row policies)".into(),
            });
        }
        tx.commit().map_err(pg("commit the schema"))
    }

    /// The authenticated tables' columns and keys, from the schema.
    fn load(c: &mut postgres::Client) -> Result<Rows> {
        let mut tables = HashMap::new();
        let mut selects = HashMap::new();
        for &(name, keyless) in TABLES {
            let cols: Vec<String> = c
                .query(
                    "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0
                         AND NOT attisdropped AND attname <> 'mac' ORDER BY attnum",
                    &[&name],
                )
                .map_err(pg("read the schema"))?
                .iter()
                .map(|r| get(r, 0))
                .collect::<Result<_>>()?;
            let pk: Vec<String> = c
                .query(
                    "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a
                         ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                     WHERE i.indrelid = to_regclass($1) AND i.indisprimary
                     ORDER BY array_position(i.indkey::int2[], a.attnum)",
                    &[&name],
                )
                .map_err(pg("read the schema"))?
                .iter()
                .map(|r| get(r, 0))
                .collect::<Result<_>>()?;
            if cols.is_empty() {
                return Err(RepoError::NotACatalog {
                    path: "the PostgreSQL database".into(),
                    why: format!("its table {name} is missing"),
                });
            }
            // Keys are sealed before they are written (bulk inserts and
            // re-encipherment), from columns this build knows by name.
            if name == "keys" && cols != KEY_COL_NAMES {
                return Err(RepoError::NotACatalog {
                    path: "the PostgreSQL database".into(),
                    why: format!(
                        "its keys table has the columns {} where Custos made {}",
                        cols.join(", "),
                        KEY_COL_NAMES.join(", ")
                    ),
                });
            }
            selects.insert(name, format!("{}, mac", cols.join(", ")));
            tables.insert(name, Table { cols, pk, keyless });
        }
        let sealed = c
            .query_opt("SELECT 1 FROM settings WHERE key = $1", &[&SEALED_SETTING])
            .map_err(pg("read the settings"))?
            .is_some();
        Ok(Rows { auth: RwLock::new(None), seen: Mutex::new(None), sealed: AtomicBool::new(sealed), tables, selects })
    }

    /// The schema version this build writes.
    pub fn schema_version() -> i64 {
        SCHEMA_VERSION
    }

    /// A connection of the pool, for a copy between backends.
    pub(crate) fn client_for_copy(&self) -> Result<r2d2::PooledConnection<Manager>> {
        self.client()
    }

    /// A connection of the pool. One idle for a while is checked first
    /// (PostgreSQL may have restarted meanwhile); a broken one is dropped
    /// and another taken.
    fn client(&self) -> Result<r2d2::PooledConnection<Manager>> {
        let get = || {
            self.pool.get().map_err(|e| RepoError::Postgres { action: "connect to the catalog", why: e.to_string() })
        };
        let mut tries = 0;
        loop {
            let mut c = get()?;
            tries += 1;
            if c.stale() {
                if let Err(e) = c.client.simple_query("") {
                    // After a restart every idle connection is dead.
                    if tries <= POOL_SIZE && conn::dropped(&e) {
                        c.broken();
                        continue;
                    }
                    return Err(pg("connect to the catalog")(e));
                }
            }
            c.checked_out();
            return Ok(c);
        }
    }

    /// Run `f` in one transaction, holding the advisory lock `lock` first
    /// when given; commit if it succeeds, roll back if not.
    fn tx<T>(&self, action: &'static str, lock: Option<i64>, f: impl FnOnce(&mut Db<'_>) -> Result<T>) -> Result<T> {
        let mut c = self.client()?;
        let mut tries = 0;
        // A connection PostgreSQL dropped since its last use (a restart, a
        // failover) fails at BEGIN, before anything ran: take another.
        while let Err(e) = c.begin() {
            tries += 1;
            if !conn::dropped(&e) || tries > POOL_SIZE {
                return Err(pg(action)(e));
            }
            c = self.client()?;
        }
        let out = (|| {
            let mut db = c.db();
            if crate::unsynced() {
                // Written to the WAL in order; the caller's next durable
                // commit flushes it (crate::with_sync).
                db.execute("SET LOCAL synchronous_commit TO OFF", &[]).map_err(pg(action))?;
            }
            if let Some(l) = lock {
                db.execute("SELECT pg_advisory_xact_lock($1)", &[&l]).map_err(pg(action))?;
            }
            f(&mut db)
        })();
        match out {
            Ok(v) => {
                c.end(true).map_err(pg(action))?;
                Ok(v)
            }
            Err(e) => {
                let _ = c.end(false);
                Err(e)
            }
        }
    }

    /// Write re-encipherments of locked, checked key records (each with its
    /// destruction deadline, which the MAC covers), sealed before they are
    /// written, in one statement. Returns how many changed.
    fn write_rewraps(
        &self,
        tx: &mut Db<'_>,
        generation: Option<String>,
        moves: &[(&KeyRecord, Option<i64>, &Rewrap)],
    ) -> Result<usize> {
        if moves.is_empty() {
            return Ok(0);
        }
        let (mut l, mut w, mut m, mut macs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (k, after, r) in moves {
            let mut moved = (*k).clone();
            moved.wrapped = Some(WrappedMaterial(r.wrapped.clone()));
            moved.mkvp = r.to;
            let (mh, kh) = (moved.mkvp.to_hex(), moved.kcv.to_hex());
            let attrs = crate::key_attributes_text(&moved.attributes);
            let mut cols = self.key_values(&moved, &mh, &kh, &attrs);
            if let Some((_, v)) = cols.iter_mut().find(|(n, _)| *n == b"destroy_after") {
                *v = after.map_or(Col::Null, Col::Int);
            }
            macs.push(self.mac_for("keys", &cols, generation.clone())?);
            l.push(r.label.as_str());
            w.push(&r.wrapped[..]);
            m.push(mh);
        }
        let n = tx
            .execute(
                "UPDATE keys SET wrapped = v.w, mkvp = v.m, mac = v.mac
                 FROM unnest($1::text[], $2::bytea[], $3::text[], $4::bytea[]) AS v(l, w, m, mac)
                 WHERE keys.label = v.l",
                &[&l, &w, &m, &macs],
            )
            .map_err(pg("re-encipher keys"))?;
        Ok(n as usize)
    }

    /// Up to `limit` rows of `table` with ids greater than `after`, by id.
    fn read_after<T>(
        &self,
        action: &'static str,
        table: &'static str,
        after: u64,
        limit: u32,
        f: impl Fn(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        let after = after.min(i64::MAX as u64) as i64;
        self.read(action, table, "WHERE id > $1 ORDER BY id LIMIT $2", &[&after, &i64::from(limit)], f)
    }

    /// Refresh the planner's statistics of `table` after a bulk write.
    /// Until autovacuum gets to it, the planner believes the table as
    /// small as it was, and pages through an index's range by reading and
    /// sorting all of it (a million keys re-enciphered: every page read
    /// every key still under the old master key). Best effort: a failure
    /// leaves the statistics to autovacuum.
    fn analyze(&self, table: &'static str) {
        if let Ok(mut c) = self.client() {
            let _ = c.batch_execute(&format!("ANALYZE {table}"));
        }
    }

    /// Whether a row of `table` with these columns may go without a MAC.
    fn keyless_allowed(&self, table: &str, first: Col<'_>) -> bool {
        self.rows.tables.get(table).is_some_and(|t| t.keyless)
            || (table == "settings"
                && matches!(first, Col::Text(k) if KEYLESS_SETTINGS.iter().any(|s| s.as_bytes() == k)))
    }

    /// The columns of a row of `table` starting at `start`, in schema order.
    fn values<'r>(&self, table: &str, r: &'r Row, start: usize) -> Result<Vec<(&'r [u8], Col<'r>)>> {
        let t = &self.rows.tables[table];
        let mut out = Vec::with_capacity(t.cols.len());
        for (k, want) in t.cols.iter().enumerate() {
            let name = r.columns().get(start + k).map(|c| c.name()).unwrap_or_default();
            if name != want {
                return Err(corrupt(format!("{table}: column {want} where {name} was read")));
            }
            out.push((name.as_bytes(), col(r, start + k)?));
        }
        Ok(out)
    }

    /// `column=value …` for the key columns of a row.
    fn row_key(&self, table: &str, cols: &[(&[u8], Col<'_>)]) -> String {
        let t = &self.rows.tables[table];
        t.pk.iter()
            .filter_map(|p| cols.iter().find(|(n, _)| *n == p.as_bytes()).map(|(_, v)| format!("{p}={}", shown(*v))))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The state of a row (its columns from `start`, then `mac`): 0 sealed,
    /// 1 unsealed where that is allowed, 2 no MAC, 3 wrong MAC; and its key.
    fn state(&self, auth: &dyn RowAuth, table: &str, r: &Row, start: usize) -> Result<(u8, String)> {
        let cols = self.values(table, r, start)?;
        let mac: Option<&[u8]> = get(r, start + cols.len())?;
        let first = cols.first().map_or(Col::Null, |c| c.1);
        let state = match mac {
            None if self.keyless_allowed(table, first) => 1,
            None => 2,
            Some(mac) => {
                let msg = row_message(table, cols.iter().copied());
                let want = auth.mac(&msg).map_err(|why| RepoError::RowKey { why })?;
                if constant_time_eq(mac, &want)
                    || auth
                        .others(&msg)
                        .map_err(|why| RepoError::RowKey { why })?
                        .iter()
                        .any(|o| constant_time_eq(mac, o))
                {
                    0
                } else {
                    3
                }
            }
        };
        Ok((state, if state >= 2 { self.row_key(table, &cols) } else { String::new() }))
    }

    /// Refuse a row that fails its MAC (when rows are authenticated).
    fn check(&self, table: &str, r: &Row, start: usize) -> Result<()> {
        let Some(auth) = self.rows.auth() else { return Ok(()) };
        match self.state(auth.as_ref(), table, r, start)? {
            (0 | 1, _) => Ok(()),
            (s, row) => Err(RepoError::Tampered {
                table: table.into(),
                row,
                why: if s == 2 { "has no MAC" } else { "does not match its MAC" }.into(),
            }),
        }
    }

    /// Read rows of an authenticated table (every column in schema order,
    /// then `mac`), checking each before `map` sees it.
    fn read<T>(
        &self,
        action: &'static str,
        table: &'static str,
        rest: &str,
        p: &[P<'_>],
        map: impl Fn(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut c = self.client()?;
        let sql = format!("SELECT {} FROM {table} {rest}", self.rows.selects[table]);
        let rows = c.query(&sql, p).map_err(pg(action))?;
        rows.iter()
            .map(|r| {
                self.check(table, r, 0)?;
                map(r)
            })
            .collect()
    }

    /// Lock the rows of `table` that `cond` selects and check each: an
    /// update never re-seals a forged row.
    /// Returns how many rows it locked.
    fn lock_check(&self, tx: &mut Db<'_>, table: &'static str, cond: &str, p: &[P<'_>]) -> Result<usize> {
        let sql = format!("SELECT {} FROM {table} WHERE {cond} FOR UPDATE", self.rows.selects[table]);
        let rows = tx.query(&sql, p).map_err(pg("lock the rows to change"))?;
        for r in &rows {
            self.check(table, r, 0)?;
        }
        Ok(rows.len())
    }

    /// Run `sql` (an INSERT, UPDATE or upsert of `table`, without its
    /// RETURNING) and seal every row it wrote. Returns those rows: their
    /// columns in schema order from index 2.
    /// Set one column of a principal's row, checking the row it replaces
    /// and sealing the new one.
    fn update_principal(&self, name: &str, column: &str, value: P<'_>, action: &'static str) -> Result<()> {
        // Changes to principals take one lock, so that two of them cannot
        // each leave the other as the last security-admin and both commit.
        self.tx(action, Some(LOCK_PRINCIPALS), |tx| {
            self.lock_check(tx, "principals", "name = $1", &[&name])?;
            let before = enabled_admins(tx, action)?;
            let sql = format!("UPDATE principals SET {column} = $2 WHERE name = $1");
            if self.write(tx, action, "principals", &sql, &[&name, value])?.is_empty() {
                return Err(RepoError::NotFound { kind: "user", name: name.into() });
            }
            if before > 0 && enabled_admins(tx, action)? == 0 {
                return Err(RepoError::LastAdmin { name: name.into() });
            }
            Ok(())
        })
    }

    fn write(
        &self,
        tx: &mut Db<'_>,
        action: &'static str,
        table: &'static str,
        sql: &str,
        p: &[P<'_>],
    ) -> Result<Vec<Row>> {
        let cols = self.rows.tables[table].cols.join(", ");
        let sql = format!(
            "{sql} RETURNING ctid::text, (SELECT value FROM settings WHERE key = '{GENERATION_SETTING}'), {cols}"
        );
        let rows = tx.query(&sql, p).map_err(pg(action))?;
        for r in &rows {
            self.seal_row(tx, table, r)?;
        }
        Ok(rows)
    }

    /// Store the MAC of one row `write` returned (ctid, key generation,
    /// columns).
    fn seal_row(&self, tx: &mut Db<'_>, table: &'static str, r: &Row) -> Result<()> {
        let cols = self.values(table, r, 2)?;
        let mac = self.mac_for(table, &cols, get(r, 1)?)?;
        let tid: &str = get(r, 0)?;
        tx.execute(&format!("UPDATE {table} SET mac = $1 WHERE ctid = $2::text::tid"), &[&mac, &tid])
            .map_err(pg("seal a catalog row"))?;
        Ok(())
    }

    /// The MAC a row of `table` with these columns (schema order) gets, the
    /// catalog's key generation being `generation`: `None` where a command
    /// without the key may write it; refused where it may not.
    fn mac_for(
        &self,
        table: &'static str,
        cols: &[(&[u8], Col<'_>)],
        generation: Option<String>,
    ) -> Result<Option<Vec<u8>>> {
        match self.rows.auth() {
            Some(a) => {
                {
                    let mut seen = self.rows.seen.lock().unwrap_or_else(|p| p.into_inner());
                    if seen.as_ref() != Some(&generation) {
                        a.refresh().map_err(|why| RepoError::RowKey { why })?;
                        *seen = Some(generation);
                    }
                }
                let msg = row_message(table, cols.iter().copied());
                Ok(Some(a.seal(&msg).map_err(|why| RepoError::RowKey { why })?.to_vec()))
            }
            None if !self.rows.sealed.load(Ordering::Relaxed)
                || self.keyless_allowed(table, cols.first().map_or(Col::Null, |c| c.1)) =>
            {
                Ok(None)
            }
            None => Err(RepoError::NeedsKey { table: table.into(), row: self.row_key(table, cols) }),
        }
    }

    /// The catalog's key generation, as this transaction sees it.
    fn generation(&self, tx: &mut Db<'_>) -> Result<Option<String>> {
        match tx
            .query_opt("SELECT value FROM settings WHERE key = $1", &[&GENERATION_SETTING])
            .map_err(pg("read the catalog's key generation"))?
        {
            Some(r) => get(&r, 0),
            None => Ok(None),
        }
    }

    /// A key's columns in the keys table's order, named (those the table
    /// lacks are left out; one it has that is not here counts as NULL).
    fn key_values<'k>(
        &self,
        k: &'k KeyRecord,
        mkvp: &'k str,
        kcv: &'k str,
        attributes: &'k Option<String>,
    ) -> Vec<(&'k [u8], Col<'k>)> {
        let opt = |t: Option<Timestamp>| t.map_or(Col::Null, |t| Col::Int(ts(t)));
        let by_name = |name: &str| -> Col<'k> {
            match name {
                "label" => Col::Text(k.label.as_str().as_bytes()),
                "state" => Col::Text(k.state.as_str().as_bytes()),
                "purpose" => Col::Text(k.purpose.as_str().as_bytes()),
                "app" => Col::Text(k.app.as_bytes()),
                "wrapped" => k.wrapped.as_ref().map_or(Col::Null, |w| Col::Blob(&w.0)),
                "mkvp" => Col::Text(mkvp.as_bytes()),
                "kcv" => Col::Text(kcv.as_bytes()),
                "created_at" => Col::Int(ts(k.created_at)),
                "activated_at" => opt(k.activated_at),
                "deactivated_at" => opt(k.deactivated_at),
                "destroyed_at" => opt(k.destroyed_at),
                "expires_at" => opt(k.expires_at),
                "last_used_at" => opt(k.last_used_at),
                "use_count" => Col::Int(k.use_count as i64),
                "escrow_kbk" => k.escrow.as_ref().map_or(Col::Null, |e| Col::Text(e.kbk.as_bytes())),
                "escrow" => k.escrow.as_ref().map_or(Col::Null, |e| Col::Blob(&e.blob)),
                "attributes" => attributes.as_ref().map_or(Col::Null, |a| Col::Text(a.as_bytes())),
                _ => Col::Null,
            }
        };
        KEY_COL_NAMES.iter().map(|n| (n.as_bytes(), by_name(n))).collect()
    }

    fn upsert_setting(&self, tx: &mut Db<'_>, key: &str, value: &str) -> Result<()> {
        self.lock_check(tx, "settings", "key = $1", &[&key])?;
        self.write(
            tx,
            "write a setting",
            "settings",
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&key, &value],
        )?;
        Ok(())
    }

    /// One backup's record inside the caller's transaction (see
    /// [`Repository::insert_backups`]).
    fn backup_in(&self, tx: &mut Db<'_>, x: &BackupInsert<'_>) -> Result<u64> {
        let (b, chunks, sources, new_key, reused, since) =
            (x.record, x.chunks, x.sources, x.new_key, x.reused, x.since);
        let r = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM backups WHERE volume = $1 AND copy_id = $2 AND generation = $3)",
                &[&b.volume.as_str(), &&b.copy_id.0[..], &(b.generation as i64)],
            )
            .map_err(pg("look for the same backup"))?;
        if get::<bool>(&r, 0)? {
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
            self.insert_key_in(tx, k)?;
        }
        let rows = self.write(
        tx,
        "record a backup",
        "backups",
        "INSERT INTO backups (dataset, dataset_id, source_generation, method, volume, key_label, copy_id, generation,
             size, chunk_size, chunk_count, manifest_hash, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        &[
            &b.dataset.as_str(),
            &&b.dataset_id.0[..],
            &(b.source_generation as i64),
            &b.method.as_str(),
            &b.volume.as_str(),
            &b.key_label.as_str(),
            &&b.copy_id.0[..],
            &(b.generation as i64),
            &(b.size as i64),
            &(b.chunk_size as i64),
            &(b.chunk_count as i64),
            &&b.manifest_hash[..],
            &ts(b.created_at),
        ],
    )?;
        let id: i64 = get(rows.first().ok_or_else(|| corrupt("a backup id"))?, 2)?;
        // One statement for all the chunks (a round trip each made a
        // backup of a big dataset wait on thousands of them).
        let idx: Vec<i64> = (0..chunks.len() as i64).collect();
        let ids: Vec<&[u8]> = chunks.iter().map(|c| &c.0[..]).collect();
        let srcs: Vec<Option<&[u8]>> = (0..chunks.len()).map(|i| sources.get(i).map(|s| &s.0[..])).collect();
        tx.execute(
            "INSERT INTO backup_chunks (backup_id, idx, chunk_id, source_id)
         SELECT $1, i, c, s FROM unnest($2::bigint[], $3::bytea[], $4::bytea[]) AS t(i, c, s)",
            &[&id, &idx, &ids, &srcs],
        )
        .map_err(pg("record backup chunks"))?;
        Ok(id as u64)
    }

    /// One generation's commit inside the caller's transaction (see
    /// [`Repository::commit_generations`]).
    fn commit_in(&self, tx: &mut Db<'_>, c: &GenerationCommit) -> Result<Garbage> {
        let id = &c.dataset_id.0[..];
        let found = tx
            .query_opt("SELECT id, current_generation FROM datasets WHERE name = $1 FOR UPDATE", &[&c.name.as_str()])
            .map_err(pg("read a dataset"))?;
        let found: Option<(Vec<u8>, u64)> = match found {
            Some(r) => Some((get(&r, 0)?, u(&r, 1)?)),
            None => None,
        };
        let g = &c.generation;
        match found {
            None if c.previous == 0 => {
                tx.execute(
                    "INSERT INTO datasets (id, name, created_at, current_generation) VALUES ($1, $2, $3, $4)",
                    &[&id, &c.name.as_str(), &ts(g.created_at), &(g.generation as i64)],
                )
                .map_err(pg("create a dataset"))?;
            }
            Some((fid, cur)) if fid == id && cur == c.previous => {}
            other => {
                return Err(RepoError::Conflict {
                    name: c.name.to_string(),
                    expected: c.previous,
                    found: other.map(|(_, g)| g).unwrap_or(0),
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
            self.insert_key_in(tx, k)?;
        }
        let gi = g.generation as i64;
        tx.execute(
            "INSERT INTO generations (dataset_id, generation, volume, key_label, size, chunk_size, chunk_count, manifest_hash, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &id,
                &gi,
                &g.volume.as_str(),
                &g.key_label.as_str(),
                &(g.size as i64),
                &(g.chunk_size as i64),
                &(g.chunk_count as i64),
                &&g.manifest_hash[..],
                &ts(g.created_at),
            ],
        )
        .map_err(pg("record a generation"))?;
        if !c.chunks.is_empty() {
            let idx: Vec<i64> = (0..c.chunks.len() as i64).collect();
            let ids: Vec<&[u8]> = c.chunks.iter().map(|ch| &ch.0[..]).collect();
            tx.execute(
                "INSERT INTO generation_chunks (dataset_id, generation, idx, chunk_id)
                 SELECT $1, $2, i, c FROM unnest($3::bigint[], $4::bytea[]) AS t(i, c)",
                &[&id, &gi, &idx, &ids],
            )
            .map_err(pg("record chunks"))?;
        }
        tx.execute(
            "UPDATE datasets SET current_generation = $2, migrated_from = NULL, last_access = $3 WHERE id = $1",
            &[&id, &gi, &ts(g.created_at)],
        )
        .map_err(pg("advance a dataset"))?;
        let older: Vec<(u64, String)> = tx
            .query("SELECT generation, volume FROM generations WHERE dataset_id = $1 AND generation <> $2", &[&id, &gi])
            .map_err(pg("list generations"))?
            .iter()
            .map(|r| Ok((u(r, 0)?, get(r, 1)?)))
            .collect::<Result<_>>()?;
        self.drop_generations(tx, &c.dataset_id, &older, None)
    }

    fn insert_key_in(&self, tx: &mut Db<'_>, k: &KeyRecord) -> Result<()> {
        check_key_names(tx, k)?;
        let r = self.write(
            tx,
            "store a key",
            "keys",
            &format!(
                "INSERT INTO keys ({KEY_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
            ),
            &[
                &k.label.as_str(),
                &k.state.as_str(),
                &k.purpose.as_str(),
                &k.app,
                &k.wrapped.as_ref().map(|w| &w.0[..]),
                &k.mkvp.to_hex(),
                &k.kcv.to_hex(),
                &ts(k.created_at),
                &k.activated_at.map(ts),
                &k.deactivated_at.map(ts),
                &k.destroyed_at.map(ts),
                &k.expires_at.map(ts),
                &k.last_used_at.map(ts),
                &(k.use_count as i64),
                &k.escrow.as_ref().map(|e| e.kbk.as_str()),
                &k.escrow.as_ref().map(|e| &e.blob[..]),
                &crate::key_attributes_text(&k.attributes),
            ],
        );
        r.map(|_| ()).map_err(exists_as("key", k.label.to_string()))
    }

    /// Count uses of keys (a label may repeat): the rows locked in label
    /// order and checked, their new values sealed in Rust, one statement
    /// for all of them.
    fn count_uses(&self, tx: &mut Db<'_>, labels: &[KeyLabel]) -> Result<()> {
        if labels.is_empty() {
            return Ok(());
        }
        let mut uses: std::collections::BTreeMap<&str, i64> = Default::default();
        for l in labels {
            *uses.entry(l.as_str()).or_default() += 1;
        }
        let wanted: Vec<&str> = uses.keys().copied().collect();
        let generation = self.generation(tx)?;
        let rows = tx
            .query(
                &format!(
                    "SELECT {} FROM keys WHERE label = ANY($1) ORDER BY label FOR UPDATE",
                    self.rows.selects["keys"]
                ),
                &[&wanted],
            )
            .map_err(pg("lock the keys whose uses are counted"))?;
        let now = Timestamp::now();
        let (mut l, mut counts, mut macs) = (Vec::new(), Vec::new(), Vec::new());
        for r in &rows {
            self.check("keys", r, 0)?;
            let mut k = key_from(r)?;
            let after: Option<i64> = get(r, 16)?;
            let n = uses.get(k.label.as_str()).copied().unwrap_or(0);
            k.use_count += n as u64;
            k.last_used_at = Some(now);
            let (mh, kh) = (k.mkvp.to_hex(), k.kcv.to_hex());
            let attrs = crate::key_attributes_text(&k.attributes);
            let mut cols = self.key_values(&k, &mh, &kh, &attrs);
            if let Some((_, v)) = cols.iter_mut().find(|(c, _)| *c == b"destroy_after") {
                *v = after.map_or(Col::Null, Col::Int);
            }
            macs.push(self.mac_for("keys", &cols, generation.clone())?);
            l.push(k.label.as_str().to_string());
            counts.push(k.use_count as i64);
        }
        tx.execute(
            "UPDATE keys SET use_count = v.n, last_used_at = $4, mac = v.mac
             FROM unnest($1::text[], $2::int8[], $3::bytea[]) AS v(l, n, mac) WHERE keys.label = v.l",
            &[&l, &counts, &macs, &ts(now)],
        )
        .map_err(pg("count key uses"))?;
        Ok(())
    }

    /// Remove a backup or snapshot (`table`, whose manifest is named by
    /// `object` and `generation`, its chunks listed in `chunks` by `owner`)
    /// and put what nothing else on its volume needs in the trash.
    fn remove_pinned(
        &self,
        kind: &'static str,
        table: &str,
        object: &str,
        chunks: &str,
        owner: &str,
        id: u64,
    ) -> Result<Garbage> {
        let id = id as i64;
        self.tx("remove a copy", Some(LOCK_OBJECTS), |tx| {
            let found = tx
                .query_opt(&format!("SELECT volume, {object}, generation FROM {table} WHERE id = $1"), &[&id])
                .map_err(pg("read what to remove"))?
                .ok_or_else(|| RepoError::NotFound { kind, name: id.to_string() })?;
            let (vol, manifest, generation): (String, DatasetId, u64) =
                (get(&found, 0)?, DatasetId(id16(&found, 1)?), u(&found, 2)?);
            let candidates = chunk_list(tx, &format!("SELECT chunk_id FROM {chunks} WHERE {owner} = $1"), &[&id])?;
            tx.execute(&format!("DELETE FROM {table} WHERE id = $1"), &[&id]).map_err(pg("remove a copy"))?;
            garbage_after(tx, candidates, &vol, (manifest, generation), None)
        })
    }

    /// Drop the given generations and return what they leave unreferenced.
    fn drop_generations(
        &self,
        tx: &mut Db<'_>,
        id: &DatasetId,
        gens: &[(u64, String)],
        claimed_by: Option<&str>,
    ) -> Result<Garbage> {
        let mut garbage = Garbage::default();
        for (g, vol) in gens {
            let gi = *g as i64;
            let candidates = chunk_list(
                tx,
                "SELECT chunk_id FROM generation_chunks WHERE dataset_id = $1 AND generation = $2",
                &[&&id.0[..], &gi],
            )?;
            tx.execute("DELETE FROM generations WHERE dataset_id = $1 AND generation = $2", &[&&id.0[..], &gi])
                .map_err(pg("drop a generation"))?;
            let more = garbage_after(tx, candidates, vol, (*id, *g), claimed_by)?;
            garbage.chunks.extend(more.chunks);
            garbage.manifests.extend(more.manifests);
        }
        Ok(garbage)
    }

    /// This repository's session token, made (with its lock) on first use.
    fn session(&self) -> Result<String> {
        let mut s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = s.as_ref() {
            return Ok(s.token.clone());
        }
        let token = hex::encode(custos_crypto::random_array::<16>().map_err(|e| corrupt(e.to_string()))?);
        let key = session_key(&token).expect("a token of hex digits");
        let mut holder = self.config.connect(self.tls.clone()).map_err(pg("open the deleter's session"))?;
        holder.execute("SELECT pg_advisory_lock($1)", &[&key]).map_err(pg("take the deleter's session lock"))?;
        *s = Some(PgSession { token: token.clone(), _holder: holder });
        Ok(token)
    }

    /// Whether the deleter with session `token` is still at work: it is
    /// this repository, or its session lock is held.
    fn claimer_alive(
        &self,
        c: &mut Db<'_>,
        me: &str,
        token: Option<&str>,
        claimed_at: Timestamp,
        released_before: Timestamp,
    ) -> Result<bool> {
        let Some(token) = token else { return Ok(claimed_at >= released_before) };
        if token == me {
            return Ok(true);
        }
        let Some(key) = session_key(token) else { return Ok(false) };
        let (hi, lo) = ((key >> 32) & 0xffff_ffff, key & 0xffff_ffff);
        let r = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
                     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                     AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1)",
                &[&hi, &lo],
            )
            .map_err(pg("look for another deleter"))?;
        get(&r, 0)
    }
}

fn garbage_after(
    tx: &mut Db<'_>,
    candidates: Vec<ChunkId>,
    vol: &str,
    manifest: (DatasetId, u64),
    claimed_by: Option<&str>,
) -> Result<Garbage> {
    let vname = volume_name(vol)?;
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

/// The value a unique violation names ("Key (label)=(X) already exists."),
/// or the whole detail when it is not in that form.
fn duplicate_value(detail: &str) -> String {
    detail.split_once(")=(").and_then(|(_, rest)| rest.rsplit_once(')')).map_or(detail, |(v, _)| v).to_string()
}

/// A unique violation (see [`pg`]) as the thing that exists.
fn exists_as(kind: &'static str, name: String) -> impl Fn(RepoError) -> RepoError {
    move |e| match e {
        RepoError::Exists { kind: "catalog row", .. } => RepoError::Exists { kind, name: name.clone() },
        e => e,
    }
}

impl Repository for PgRepository {
    fn remote(&self) -> bool {
        true
    }

    fn set_row_auth(&self, auth: Option<Arc<dyn RowAuth>>) {
        *self.rows.auth.write().unwrap_or_else(|p| p.into_inner()) = auth;
    }

    fn row_auth(&self) -> Option<Arc<dyn RowAuth>> {
        self.rows.auth()
    }

    fn seal_rows(&self) -> Result<u64> {
        let auth = self
            .rows
            .auth()
            .ok_or_else(|| RepoError::NeedsKey { table: "every authenticated table".into(), row: "all rows".into() })?;
        let n = self.tx("seal the catalog's rows", Some(LOCK_OBJECTS), |tx| {
            let mut n = 0u64;
            for &(table, _) in TABLES {
                let cols = self.rows.tables[table].cols.join(", ");
                let rows = tx
                    .query(&format!("SELECT ctid::text, NULL::text, {cols} FROM {table} FOR UPDATE"), &[])
                    .map_err(pg("seal the catalog's rows"))?;
                for r in &rows {
                    let msg = row_message(table, self.values(table, r, 2)?);
                    let mac = auth.seal(&msg).map_err(|why| RepoError::RowKey { why })?.to_vec();
                    let tid: &str = get(r, 0)?;
                    tx.execute(&format!("UPDATE {table} SET mac = $1 WHERE ctid = $2::text::tid"), &[&mac, &tid])
                        .map_err(pg("seal the catalog's rows"))?;
                    n += 1;
                }
            }
            self.upsert_setting(tx, SEALED_SETTING, "1")?;
            Ok(n)
        })?;
        self.rows.sealed.store(true, Ordering::Relaxed);
        Ok(n)
    }

    fn reseal_rows(&self, next: Arc<dyn RowAuth>) -> Result<u64> {
        if self.rows.auth().is_none() {
            return Err(RepoError::NeedsKey { table: "every authenticated table".into(), row: "all rows".into() });
        }
        self.tx("seal the catalog under its next key", Some(LOCK_OBJECTS), |tx| {
            // Every process that writes after this commits reads the keys
            // again first.
            let generation = hex::encode(custos_crypto::random_array::<8>().map_err(|e| corrupt(e.to_string()))?);
            self.upsert_setting(tx, GENERATION_SETTING, &generation)?;
            let mut n = 0u64;
            for &(table, _) in TABLES {
                let rows = tx
                    .query(&format!("SELECT ctid::text, {} FROM {table} FOR UPDATE", self.rows.selects[table]), &[])
                    .map_err(pg("check the catalog's rows"))?;
                // Every row is checked before any is sealed anew.
                for r in &rows {
                    self.check(table, r, 1)?;
                }
                for r in &rows {
                    let cols = self.values(table, r, 1)?;
                    let had: Option<&[u8]> = get(r, 1 + cols.len())?;
                    if had.is_none() {
                        continue; // rows written without the key stay unsealed
                    }
                    let msg = row_message(table, cols.iter().copied());
                    let mac = next.mac(&msg).map_err(|why| RepoError::RowKey { why })?.to_vec();
                    let tid: &str = get(r, 0)?;
                    tx.execute(&format!("UPDATE {table} SET mac = $1 WHERE ctid = $2::text::tid"), &[&mac, &tid])
                        .map_err(pg("seal the catalog's rows under the next key"))?;
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    fn verify_rows(&self) -> Result<CatalogCheck> {
        let auth = self.rows.auth().ok_or_else(|| RepoError::RowKey {
            why: "checking the catalog needs its key: the HSM is not open".into(),
        })?;
        let mut c = self.client()?;
        // One snapshot: every table as of one moment.
        let mut tx = c
            .client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(pg("start checking the catalog"))?;
        let mut check = CatalogCheck::default();
        for &(table, _) in TABLES {
            let rows = tx
                .query(&format!("SELECT {} FROM {table}", self.rows.selects[table]), &[])
                .map_err(pg("check the catalog's rows"))?;
            for r in &rows {
                check.rows += 1;
                match self.state(auth.as_ref(), table, r, 0)? {
                    (0, _) => {}
                    (1, _) => check.unsealed += 1,
                    (s, row) => check.faults.push(RowFault {
                        table: table.to_string(),
                        row,
                        why: if s == 2 { "has no MAC" } else { "does not match its MAC" }.into(),
                    }),
                }
            }
        }
        tx.commit().map_err(pg("finish checking the catalog"))?;
        Ok(check)
    }

    fn setting(&self, key: &str) -> Result<Option<String>> {
        Ok(self.read("read a setting", "settings", "WHERE key = $1", &[&key], |r| get(r, 1))?.pop())
    }

    fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        self.tx("write a setting", None, |tx| self.upsert_setting(tx, key, value))
    }

    fn set_setting_once(&self, key: &str, value: &str) -> Result<String> {
        self.tx("set a value once", None, |tx| {
            self.write(
                tx,
                "set a value once",
                "settings",
                "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&key, &value],
            )?;
            let r = tx.query_one("SELECT value FROM settings WHERE key = $1", &[&key]).map_err(pg("read a setting"))?;
            get(&r, 0)
        })
    }

    fn insert_key(&self, k: &KeyRecord) -> Result<()> {
        self.tx("store a key", None, |tx| self.insert_key_in(tx, k))
    }

    fn key(&self, label: &KeyLabel) -> Result<Option<KeyRecord>> {
        Ok(self.read("read a key", "keys", "WHERE label = $1", &[&label.as_str()], key_from)?.pop())
    }

    fn keys(&self) -> Result<Vec<KeyRecord>> {
        self.read("list keys", "keys", "ORDER BY label", &[], key_from)
    }

    fn keys_from(&self, from: &str, after: &str, limit: u32) -> Result<Vec<KeyRecord>> {
        self.read(
            "list a page of keys",
            "keys",
            "WHERE label >= $1 AND label > $2 ORDER BY label LIMIT $3",
            &[&from.max(after), &after, &i64::from(limit)],
            key_from,
        )
    }

    fn update_key(&self, k: &KeyRecord, was: &KeyRecord) -> Result<()> {
        self.tx("update a key", None, |tx| {
            check_key_names(tx, k)?;
            let found = self.lock_check(tx, "keys", "label = $1", &[&k.label.as_str()])?;
            let rows = self.write(
                tx,
                "update a key",
                "keys",
                "UPDATE keys SET state = $2, wrapped = $3, mkvp = $4, activated_at = $5, deactivated_at = $6,
                 destroyed_at = $7, expires_at = $8, escrow_kbk = $9, escrow = $10, attributes = $16
                 WHERE label = $1 AND state = $11 AND wrapped IS NOT DISTINCT FROM $12 AND mkvp = $13
                 AND escrow_kbk IS NOT DISTINCT FROM $14 AND escrow IS NOT DISTINCT FROM $15
                 AND attributes IS NOT DISTINCT FROM $17",
                &[
                    &k.label.as_str(),
                    &k.state.as_str(),
                    &k.wrapped.as_ref().map(|w| &w.0[..]),
                    &k.mkvp.to_hex(),
                    &k.activated_at.map(ts),
                    &k.deactivated_at.map(ts),
                    &k.destroyed_at.map(ts),
                    &k.expires_at.map(ts),
                    &k.escrow.as_ref().map(|e| e.kbk.as_str()),
                    &k.escrow.as_ref().map(|e| &e.blob[..]),
                    &was.state.as_str(),
                    &was.wrapped.as_ref().map(|w| &w.0[..]),
                    &was.mkvp.to_hex(),
                    &was.escrow.as_ref().map(|e| e.kbk.as_str()),
                    &was.escrow.as_ref().map(|e| &e.blob[..]),
                    &crate::key_attributes_text(&k.attributes),
                    &crate::key_attributes_text(&was.attributes),
                ],
            )?;
            if rows.is_empty() {
                return Err(if found == 0 {
                    RepoError::NotFound { kind: "key", name: k.label.to_string() }
                } else {
                    crate::key_raced(&k.label)
                });
            }
            Ok(())
        })
    }

    fn record_key_use(&self, label: &KeyLabel) -> Result<()> {
        self.record_key_uses(std::slice::from_ref(label))
    }

    fn record_key_uses(&self, labels: &[KeyLabel]) -> Result<()> {
        if labels.is_empty() {
            return Ok(());
        }
        self.tx("count key uses", None, |tx| self.count_uses(tx, labels))
    }

    fn insert_keys(&self, recs: &[KeyRecord]) -> Result<()> {
        // Sealed in Rust before they are written, a thousand per statement.
        self.tx("store keys", None, |tx| {
            // Names: none taken by a key already stored, nor twice in this batch.
            let mut seen: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
            for k in recs.iter().filter(|k| !k.attributes.names.is_empty()) {
                check_key_names(tx, k)?;
                for n in &k.attributes.names {
                    if let Some(first) = seen.insert(n.as_str(), k.label.as_str()) {
                        return Err(RepoError::NameTaken { name: n.clone(), label: first.to_string() });
                    }
                }
            }
            let generation = self.generation(tx)?;
            for batch in recs.chunks(1000) {
                let hex: Vec<(String, String)> = batch.iter().map(|k| (k.mkvp.to_hex(), k.kcv.to_hex())).collect();
                let attrs: Vec<Option<String>> = batch.iter().map(|k| crate::key_attributes_text(&k.attributes)).collect();
                let mut macs = Vec::with_capacity(batch.len());
                for ((k, (m, c)), a) in batch.iter().zip(&hex).zip(&attrs) {
                    macs.push(self.mac_for("keys", &self.key_values(k, m, c, a), generation.clone())?);
                }
                let text = |f: &dyn Fn(&KeyRecord) -> &str| batch.iter().map(f).collect::<Vec<&str>>();
                let time = |f: &dyn Fn(&KeyRecord) -> Option<Timestamp>| batch.iter().map(|k| f(k).map(ts)).collect::<Vec<_>>();
                let r = tx.execute(
                    "INSERT INTO keys (label, state, purpose, app, wrapped, mkvp, kcv, created_at, activated_at, deactivated_at,
                         destroyed_at, expires_at, last_used_at, use_count, escrow_kbk, escrow, mac, attributes)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[], $7::text[],
                         $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::int8[], $14::int8[], $15::text[],
                         $16::bytea[], $17::bytea[], $18::text[])",
                    &[
                        &text(&|k| k.label.as_str()),
                        &text(&|k| k.state.as_str()),
                        &text(&|k| k.purpose.as_str()),
                        &text(&|k| k.app.as_str()),
                        &batch.iter().map(|k| k.wrapped.as_ref().map(|w| &w.0[..])).collect::<Vec<_>>(),
                        &hex.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(),
                        &hex.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(),
                        &batch.iter().map(|k| ts(k.created_at)).collect::<Vec<_>>(),
                        &time(&|k| k.activated_at),
                        &time(&|k| k.deactivated_at),
                        &time(&|k| k.destroyed_at),
                        &time(&|k| k.expires_at),
                        &time(&|k| k.last_used_at),
                        &batch.iter().map(|k| k.use_count as i64).collect::<Vec<_>>(),
                        &batch.iter().map(|k| k.escrow.as_ref().map(|e| e.kbk.as_str())).collect::<Vec<_>>(),
                        &batch.iter().map(|k| k.escrow.as_ref().map(|e| &e.blob[..])).collect::<Vec<_>>(),
                        &macs,
                        &attrs,
                    ],
                );
                r.map_err(pg("store keys")).map_err(|e| match e {
                    RepoError::Exists { kind: "catalog row", name } => {
                        RepoError::Exists { kind: "key", name: duplicate_value(&name) }
                    }
                    e => e,
                })?;
            }
            Ok(())
        })?;
        if recs.len() >= ANALYZE_AFTER {
            self.analyze("keys");
        }
        Ok(())
    }

    fn key_counts_by_mkvp(&self) -> Result<Vec<(Mkvp, u64)>> {
        let mut c = self.client()?;
        c.query("SELECT mkvp, COUNT(*) FROM keys WHERE wrapped IS NOT NULL GROUP BY mkvp ORDER BY mkvp", &[])
            .map_err(pg("count keys by master key"))?
            .iter()
            .map(|r| {
                let m: String = get(r, 0)?;
                Ok((Mkvp::from_hex(&m).map_err(|_| corrupt("MKVP"))?, u(r, 1)?))
            })
            .collect()
    }

    fn keys_wrapped_under(&self, mkvp: &Mkvp, after: Option<&KeyLabel>, limit: usize) -> Result<Vec<KeyRecord>> {
        self.read(
            "list keys under a master key",
            "keys",
            "WHERE mkvp = $1 AND wrapped IS NOT NULL AND label > $2 ORDER BY label LIMIT $3",
            &[&mkvp.to_hex(), &after.map(|l| l.as_str()).unwrap_or(""), &(limit as i64)],
            key_from,
        )
    }

    fn rewrap_keys(&self, batch: &[Rewrap]) -> Result<usize> {
        if batch.is_empty() {
            return Ok(0);
        }
        self.tx("re-encipher keys", None, |tx| {
            let generation = self.generation(tx)?;
            let labels: Vec<&str> = batch.iter().map(|r| r.label.as_str()).collect();
            // Locked in label order (one order for every writer), each
            // checked before it is changed.
            let rows = tx
                .query(
                    &format!(
                        "SELECT {} FROM keys WHERE label = ANY($1) ORDER BY label FOR UPDATE",
                        self.rows.selects["keys"]
                    ),
                    &[&labels],
                )
                .map_err(pg("lock the keys to re-encipher"))?;
            let mut held: HashMap<String, (KeyRecord, Option<i64>)> = HashMap::with_capacity(rows.len());
            for r in &rows {
                self.check("keys", r, 0)?;
                let k = key_from(r)?;
                held.insert(k.label.as_str().to_string(), (k, get(r, 16)?));
            }
            // Only a record still under `from` with material moves: a
            // concurrent or repeated run cannot undo another.
            let moves: Vec<(&KeyRecord, Option<i64>, &Rewrap)> = batch
                .iter()
                .filter_map(|r| held.get(r.label.as_str()).map(|(k, after)| (k, *after, r)))
                .filter(|(k, _, r)| k.mkvp == r.from && k.wrapped.is_some())
                .collect();
            self.write_rewraps(tx, generation, &moves)
        })
    }

    fn rewrap_page(
        &self,
        from: &Mkvp,
        after: Option<&KeyLabel>,
        limit: usize,
        rewrap: RewrapFn<'_>,
    ) -> Result<RewrapPage> {
        // One transaction: the page is read in label order and locked as
        // it is read (so no other writer changes it before it is written),
        // checked, re-wrapped and written.
        self.tx("re-encipher keys", None, |tx| {
            let generation = self.generation(tx)?;
            let rows = tx
                .query(
                    &format!(
                        "SELECT {} FROM keys WHERE mkvp = $1 AND wrapped IS NOT NULL AND label > $2
                         ORDER BY label LIMIT $3 FOR UPDATE",
                        self.rows.selects["keys"]
                    ),
                    &[&from.to_hex(), &after.map(|l| l.as_str()).unwrap_or(""), &(limit as i64)],
                )
                .map_err(pg("lock the keys to re-encipher"))?;
            let mut held = Vec::with_capacity(rows.len());
            for r in &rows {
                self.check("keys", r, 0)?;
                held.push((key_from(r)?, get::<Option<i64>>(r, 16)?));
            }
            let mut page = RewrapPage { last: held.last().map(|(k, _)| k.label.clone()), ..Default::default() };
            let mut rewraps = Vec::with_capacity(held.len());
            for (i, (k, _)) in held.iter().enumerate() {
                match rewrap(k) {
                    Some((to, wrapped)) => {
                        rewraps.push((i, Rewrap { label: k.label.clone(), from: *from, to, wrapped }))
                    }
                    None => page.failed.push(k.label.clone()),
                }
            }
            let moves: Vec<(&KeyRecord, Option<i64>, &Rewrap)> =
                rewraps.iter().map(|(i, r)| (&held[*i].0, held[*i].1, r)).collect();
            page.moved = self.write_rewraps(tx, generation, &moves)?;
            Ok(page)
        })
    }

    fn insert_backups(&self, items: &[BackupInsert<'_>]) -> Result<Vec<u64>> {
        self.tx("record a backup", Some(LOCK_OBJECTS), |tx| {
            items.iter().map(|x| self.backup_in(tx, x)).collect::<Result<Vec<_>>>()
        })
    }

    fn deletion_seq(&self) -> Result<u64> {
        deletion_seq(&mut self.client()?.db())
    }

    fn backups_after(&self, after: u64, limit: u32) -> Result<Vec<BackupRecord>> {
        self.read_after("list backups", "backups", after, limit, backup_from)
    }

    fn dataset_backups(&self, name: &DatasetName) -> Result<Vec<BackupRecord>> {
        self.read(
            "list a dataset's backups",
            "backups",
            "WHERE dataset = $1 ORDER BY id",
            &[&name.as_str()],
            backup_from,
        )
    }

    fn backups_since(&self, after: u64) -> Result<(u64, Vec<DatasetName>)> {
        // Identities are handed out before commit, so a copy committed out
        // of id order after this read can fall below the mark: it is seen
        // with its dataset's next copy.
        let mut c = self.client()?;
        let rows = c
            .query("SELECT coalesce(max(id), 0)::BIGINT FROM backups", &[])
            .map_err(pg("read what was copied since"))?;
        let newest: i64 = match rows.first() {
            Some(r) => get(r, 0)?,
            None => 0,
        };
        let after = after.min(i64::MAX as u64) as i64;
        let names = c
            .query(
                "SELECT DISTINCT dataset FROM backups WHERE id > $1 AND id <= $2 ORDER BY dataset",
                &[&after, &newest],
            )
            .map_err(pg("read what was copied since"))?
            .iter()
            .map(|r| ds_name(r, 0))
            .collect::<Result<Vec<_>>>()?;
        Ok((newest.max(0) as u64, names))
    }

    fn backup_chunks(&self, id: u64) -> Result<Vec<ChunkId>> {
        chunk_list(
            &mut self.client()?.db(),
            "SELECT chunk_id FROM backup_chunks WHERE backup_id = $1 ORDER BY idx",
            &[&(id as i64)],
        )
    }

    fn remove_backup(&self, id: u64) -> Result<Garbage> {
        self.remove_pinned("backup", "backups", "copy_id", "backup_chunks", "backup_id", id)
    }

    fn backup_sources(&self, id: u64) -> Result<Vec<Option<ChunkId>>> {
        self.client()?
            .query("SELECT source_id FROM backup_chunks WHERE backup_id = $1 ORDER BY idx", &[&(id as i64)])
            .map_err(pg("list backup sources"))?
            .iter()
            .map(|r| {
                let v: Option<&[u8]> = get(r, 0)?;
                v.map(|v| Ok(ChunkId(v.try_into().map_err(|_| corrupt("a 16-byte id"))?))).transpose()
            })
            .collect()
    }

    fn create_snapshot(&self, name: &DatasetName) -> Result<SnapshotRecord> {
        self.tx("record a snapshot", Some(LOCK_OBJECTS), |tx| {
            let r = tx
                .query_opt(&format!("{DATASET_SELECT} WHERE d.name = $1"), &[&name.as_str()])
                .map_err(pg("read a dataset"))?
                .ok_or_else(|| RepoError::NotFound { kind: "dataset", name: name.to_string() })?;
            let d = dataset_from(&r)?;
            let g = &d.current;
            let now = Timestamp::now();
            let rows = self.write(
                tx,
                "record a snapshot",
                "snapshots",
                "INSERT INTO snapshots (dataset, dataset_id, generation, volume, key_label, size, chunk_count, manifest_hash, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &name.as_str(),
                    &&d.id.0[..],
                    &(g.generation as i64),
                    &g.volume.as_str(),
                    &g.key_label.as_str(),
                    &(g.size as i64),
                    &(g.chunk_count as i64),
                    &&g.manifest_hash[..],
                    &ts(now),
                ],
            )?;
            let id: i64 = get(rows.first().ok_or_else(|| corrupt("a snapshot id"))?, 2)?;
            tx.execute(
                "INSERT INTO snapshot_chunks (snapshot_id, idx, chunk_id)
                 SELECT $1, idx, chunk_id FROM generation_chunks WHERE dataset_id = $2 AND generation = $3",
                &[&id, &&d.id.0[..], &(g.generation as i64)],
            )
            .map_err(pg("record snapshot chunks"))?;
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
        })
    }

    fn record_check(&self, what: CheckedCopy, id: u64, check: &CopyCheck) -> Result<()> {
        let table = match what {
            CheckedCopy::Backup => "backups",
            CheckedCopy::Snapshot => "snapshots",
        };
        let action = "record a copy's check";
        self.tx(action, None, |tx| {
            self.lock_check(tx, table, "id = $1", &[&(id as i64)])?;
            // A copy removed meanwhile has nothing left to record on.
            self.write(
                tx,
                action,
                table,
                &format!(
                    "UPDATE {table} SET checked_at = $2, checked_data = $3, check_problem = $4
                     WHERE id = $1 AND ($3::bigint = 1 OR $4::text IS NOT NULL OR (coalesce(checked_data, 0) = 0 AND check_problem IS NULL))"
                ),
                &[&(id as i64), &ts(check.at), &i64::from(check.read_data), &check.problem.as_deref()],
            )
            .map(|_| ())
        })
    }

    fn snapshots_after(&self, after: u64, limit: u32) -> Result<Vec<SnapshotRecord>> {
        self.read_after("list snapshots", "snapshots", after, limit, snapshot_from)
    }

    fn snapshot_chunks(&self, id: u64) -> Result<Vec<ChunkId>> {
        chunk_list(
            &mut self.client()?.db(),
            "SELECT chunk_id FROM snapshot_chunks WHERE snapshot_id = $1 ORDER BY idx",
            &[&(id as i64)],
        )
    }

    fn remove_snapshot(&self, id: u64) -> Result<Garbage> {
        self.remove_pinned("snapshot", "snapshots", "dataset_id", "snapshot_chunks", "snapshot_id", id)
    }

    fn insert_mirror(&self, primary: &VolumeName, secondary: &VolumeName) -> Result<()> {
        self.tx("record a mirror", None, |tx| {
            self.write(
                tx,
                "record a mirror",
                "mirrors",
                "INSERT INTO mirrors (primary_volume, secondary_volume, created_at) VALUES ($1, $2, $3)",
                &[&primary.as_str(), &secondary.as_str(), &ts(Timestamp::now())],
            )
            .map(|_| ())
        })
        .map_err(exists_as("mirror", primary.to_string()))
    }

    fn mirrors(&self) -> Result<Vec<(VolumeName, VolumeName, Timestamp)>> {
        self.read("list mirrors", "mirrors", "ORDER BY primary_volume", &[], |r| {
            Ok((vol(r, 0)?, vol(r, 1)?, at(r, 2)?))
        })
    }

    fn remove_mirror(&self, primary: &VolumeName) -> Result<bool> {
        let n = self
            .client()?
            .execute("DELETE FROM mirrors WHERE primary_volume = $1", &[&primary.as_str()])
            .map_err(pg("remove a mirror"))?;
        Ok(n > 0)
    }

    fn record_drills(&self, rows: &[custos_model::DrillRecord]) -> Result<()> {
        self.tx("record drill results", None, |tx| {
            for d in rows {
                tx.execute("DELETE FROM drills WHERE dataset = $1 AND threats = $2", &[&d.dataset, &d.threats])
                    .map_err(pg("record drill results"))?;
                self.write(
                    tx,
                    "record drill results",
                    "drills",
                    "INSERT INTO drills (dataset, threats, at, survived, agrees, how, by_principal) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[&d.dataset, &d.threats, &ts(d.at), &i64::from(d.survived), &i64::from(d.agrees), &d.how, &d.by],
                )?;
            }
            Ok(())
        })
    }

    fn drills(&self) -> Result<Vec<custos_model::DrillRecord>> {
        self.read("list drill results", "drills", "ORDER BY dataset, threats", &[], |r| {
            Ok(custos_model::DrillRecord {
                dataset: get(r, 0)?,
                threats: get(r, 1)?,
                at: at(r, 2)?,
                survived: get::<i64>(r, 3)? != 0,
                agrees: get::<i64>(r, 4)? != 0,
                how: get(r, 5)?,
                by: get(r, 6)?,
            })
        })
    }

    fn volume_objects(&self, v: &VolumeName) -> Result<VolumeObjects> {
        let mut c = self.client()?;
        let v = v.as_str();
        let mut chunks = chunk_list(
            &mut c.db(),
            "SELECT c.chunk_id FROM generation_chunks c JOIN generations g
                 ON g.dataset_id = c.dataset_id AND g.generation = c.generation WHERE g.volume = $1
             UNION SELECT bc.chunk_id FROM backup_chunks bc JOIN backups b ON b.id = bc.backup_id WHERE b.volume = $1
             UNION SELECT sc.chunk_id FROM snapshot_chunks sc JOIN snapshots s ON s.id = sc.snapshot_id WHERE s.volume = $1",
            &[&v],
        )?;
        chunks.sort();
        let manifests = c
            .query(
                "SELECT dataset_id, generation FROM generations WHERE volume = $1
                 UNION SELECT copy_id, generation FROM backups WHERE volume = $1
                 UNION SELECT dataset_id, generation FROM snapshots WHERE volume = $1",
                &[&v],
            )
            .map_err(pg("list a volume's manifests"))?
            .iter()
            .map(|r| Ok((DatasetId(id16(r, 0)?), u(r, 1)?)))
            .collect::<Result<_>>()?;
        let keystore_backups = c
            .query("SELECT id FROM keystore_backups WHERE volume = $1", &[&v])
            .map_err(pg("list a volume's keystore backups"))?
            .iter()
            .map(|r| get(r, 0))
            .collect::<Result<_>>()?;
        Ok(VolumeObjects { chunks, manifests, keystore_backups })
    }

    fn insert_kbk(&self, k: &KbkRecord, escrows: &[(KeyLabel, EscrowCopy)], shares: &[SealedShare]) -> Result<()> {
        self.tx("record a key-backup key", None, |tx| {
            self.write(
                tx,
                "record a key-backup key",
                "kbks",
                "INSERT INTO kbks (id, public, threshold, custodians, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[&k.id, &&k.public[..], &(k.threshold as i64), &k.custodians.join(","), &ts(k.created_at)],
            )?;
            let mut escrows: Vec<&(KeyLabel, EscrowCopy)> = escrows.iter().collect();
            escrows.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
            for (label, e) in escrows {
                self.lock_check(tx, "keys", "label = $1", &[&label.as_str()])?;
                self.write(
                    tx,
                    "escrow keys",
                    "keys",
                    "UPDATE keys SET escrow_kbk = $2, escrow = $3 WHERE label = $1",
                    &[&label.as_str(), &e.kbk, &e.blob],
                )?;
            }
            for sh in shares {
                self.write(
                    tx,
                    "store sealed shares",
                    "escrow_shares",
                    "INSERT INTO escrow_shares (kbk, custodian, recipient, sealed, confirm, confirmed_at) VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &sh.kbk,
                        &sh.custodian,
                        &&sh.recipient[..],
                        &sh.sealed,
                        &&sh.confirm[..],
                        &sh.confirmed_at.map(ts),
                    ],
                )?;
            }
            Ok(())
        })
    }

    fn key_labels(&self) -> Result<Vec<KeyLabel>> {
        self.client()?
            .query("SELECT label FROM keys ORDER BY label", &[])
            .map_err(pg("list key labels"))?
            .iter()
            .map(|r| label(r, 0))
            .collect()
    }

    fn kbks(&self) -> Result<Vec<KbkRecord>> {
        self.read("list key-backup keys", "kbks", "ORDER BY created_at, id", &[], |r| {
            let custodians: String = get(r, 3)?;
            Ok(KbkRecord {
                id: get(r, 0)?,
                public: bytes32(r, 1, "KBK public key")?,
                threshold: u(r, 2)? as u8,
                custodians: custodians.split(',').map(String::from).collect(),
                created_at: at(r, 4)?,
            })
        })
    }

    fn escrow_shares(&self, kbk: &str) -> Result<Vec<SealedShare>> {
        self.read("list sealed shares", "escrow_shares", "WHERE kbk = $1 ORDER BY custodian", &[&kbk], |r| {
            Ok(SealedShare {
                kbk: get(r, 0)?,
                custodian: get(r, 1)?,
                recipient: bytes32(r, 2, "share recipient")?,
                sealed: get(r, 3)?,
                confirm: bytes32(r, 4, "share confirmation")?,
                confirmed_at: opt_at(r, 5)?,
            })
        })
    }

    fn confirm_escrow_share(&self, kbk: &str, custodian: &str, when: Timestamp) -> Result<bool> {
        self.tx("confirm a share", None, |tx| {
            self.lock_check(tx, "escrow_shares", "kbk = $1 AND custodian = $2", &[&kbk, &custodian])?;
            let rows = self.write(
                tx,
                "confirm a share",
                "escrow_shares",
                "UPDATE escrow_shares SET confirmed_at = $3 WHERE kbk = $1 AND custodian = $2",
                &[&kbk, &custodian, &ts(when)],
            )?;
            Ok(!rows.is_empty())
        })
    }

    fn set_custodian_key(&self, k: &CustodianKey) -> Result<()> {
        self.tx("register a custodian recipient", None, |tx| {
            self.lock_check(tx, "custodian_keys", "principal = $1", &[&k.principal])?;
            self.write(
                tx,
                "register a custodian recipient",
                "custodian_keys",
                "INSERT INTO custodian_keys (principal, public, registered_at) VALUES ($1, $2, $3)
                 ON CONFLICT (principal) DO UPDATE SET public = excluded.public, registered_at = excluded.registered_at",
                &[&k.principal, &&k.public[..], &ts(k.registered_at)],
            )
            .map(|_| ())
        })
        .map_err(exists_as("custodian recipient", hex::encode(k.public)))
    }

    fn custodian_keys(&self) -> Result<Vec<CustodianKey>> {
        self.read("list custodian recipients", "custodian_keys", "ORDER BY principal", &[], |r| {
            Ok(CustodianKey {
                principal: get(r, 0)?,
                public: bytes32(r, 1, "custodian recipient")?,
                registered_at: at(r, 2)?,
            })
        })
    }

    fn insert_keystore_backup(&self, b: &KeystoreBackupRecord) -> Result<()> {
        self.tx("record a keystore backup", None, |tx| {
            self.write(
                tx,
                "record a keystore backup",
                "keystore_backups",
                "INSERT INTO keystore_backups (id, volume, created_at, key_count, mkvps, sha256) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&b.id, &b.volume.as_str(), &ts(b.created_at), &(b.key_count as i64), &b.mkvps.join(","), &&b.sha256[..]],
            )
            .map(|_| ())
        })
    }

    fn keystore_backups(&self) -> Result<Vec<KeystoreBackupRecord>> {
        self.read("list keystore backups", "keystore_backups", "ORDER BY created_at, id", &[], |r| {
            let mkvps: String = get(r, 4)?;
            Ok(KeystoreBackupRecord {
                id: get(r, 0)?,
                volume: vol(r, 1)?,
                created_at: at(r, 2)?,
                key_count: u(r, 3)?,
                mkvps: mkvps.split(',').filter(|m| !m.is_empty()).map(String::from).collect(),
                sha256: bytes32(r, 5, "backup hash")?,
            })
        })
    }

    fn insert_vault_backup(&self, b: &VaultBackupRecord) -> Result<()> {
        self.tx("record a vault backup", None, |tx| {
            self.write(
                tx,
                "record a vault backup",
                "vault_backups",
                "INSERT INTO vault_backups (id, volume, created_at, audit_seq, bytes) VALUES ($1, $2, $3, $4, $5)",
                &[&b.id, &b.volume.as_str(), &ts(b.created_at), &(b.audit_seq as i64), &(b.bytes as i64)],
            )
            .map(|_| ())
        })
    }

    fn vault_backups(&self) -> Result<Vec<VaultBackupRecord>> {
        self.read("list vault backups", "vault_backups", "ORDER BY created_at, id", &[], |r| {
            Ok(VaultBackupRecord {
                id: get(r, 0)?,
                volume: vol(r, 1)?,
                created_at: at(r, 2)?,
                audit_seq: u(r, 3)?,
                bytes: u(r, 4)?,
            })
        })
    }

    fn delete_vault_backup(&self, id: &str) -> Result<()> {
        self.client()?
            .execute("DELETE FROM vault_backups WHERE id = $1", &[&id])
            .map_err(pg("forget a vault backup"))?;
        Ok(())
    }

    fn insert_volume(&self, v: &VolumeRecord) -> Result<()> {
        self.tx("store a volume", None, |tx| {
            self.write(
                tx,
                "store a volume",
                "volumes",
                "INSERT INTO volumes (name, location, site, medium, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[&v.name.as_str(), &v.location, &v.site, &v.medium.as_str(), &ts(v.created_at)],
            )
            .map(|_| ())
        })
        .map_err(exists_as("volume", v.name.to_string()))
    }

    fn remove_volume(&self, name: &VolumeName) -> Result<()> {
        self.tx("remove a volume", None, |tx| {
            // Locked against a concurrent writer that would start using it.
            let found = tx
                .query("SELECT 1 FROM volumes WHERE name = $1 FOR UPDATE", &[&name.as_str()])
                .map_err(pg("remove a volume"))?;
            if found.is_empty() {
                return Err(RepoError::NotFound { kind: "volume", name: name.to_string() });
            }
            let r = tx
                .query_one(&crate::volume_uses_sql("$1", "string_agg"), &[&name.as_str()])
                .map_err(pg("read what uses a volume"))?;
            let uses = crate::VolumeUses {
                datasets: r.try_get(0).map_err(pg("read what uses a volume"))?,
                migrated: r.try_get(1).map_err(pg("read what uses a volume"))?,
                policies: r.try_get(2).map_err(pg("read what uses a volume"))?,
                backups: r.try_get(3).map_err(pg("read what uses a volume"))?,
                snapshots: r.try_get(4).map_err(pg("read what uses a volume"))?,
                mirrors: r.try_get(5).map_err(pg("read what uses a volume"))?,
                rules: r.try_get(6).map_err(pg("read what uses a volume"))?,
                keystore_backups: r.try_get(7).map_err(pg("read what uses a volume"))?,
                vault_backups: r.try_get(8).map_err(pg("read what uses a volume"))?,
                trash: r.try_get(9).map_err(pg("read what uses a volume"))?,
            };
            uses.refuse(name)?;
            tx.execute("DELETE FROM volumes WHERE name = $1", &[&name.as_str()]).map_err(pg("remove a volume"))?;
            Ok(())
        })
    }

    fn relocate_volume(&self, name: &VolumeName, location: &str) -> Result<()> {
        self.tx("relocate a volume", None, |tx| {
            self.lock_check(tx, "volumes", "name = $1", &[&name.as_str()])?;
            let rows = self.write(
                tx,
                "relocate a volume",
                "volumes",
                "UPDATE volumes SET location = $2 WHERE name = $1",
                &[&name.as_str(), &location],
            )?;
            if rows.is_empty() {
                return Err(RepoError::NotFound { kind: "volume", name: name.to_string() });
            }
            Ok(())
        })
    }

    fn copy_to(&self, path: &std::path::Path) -> Result<()> {
        crate::copy::postgres_to_sqlite(&mut self.client()?.client, path).map(|_| ())
    }

    fn row_counts(&self) -> Result<crate::copy::RowCounts> {
        crate::copy::pg_counts(&mut self.client()?.client)
    }

    fn volume(&self, name: &VolumeName) -> Result<Option<VolumeRecord>> {
        Ok(self.read("read a volume", "volumes", "WHERE name = $1", &[&name.as_str()], volume_from)?.pop())
    }

    fn volumes(&self) -> Result<Vec<VolumeRecord>> {
        self.read("list volumes", "volumes", "ORDER BY name", &[], volume_from)
    }

    fn insert_policy(&self, p: &PolicyRecord) -> Result<()> {
        let (key, template, app) = match &p.target {
            PolicyTarget::Key(l) => (Some(l.as_str()), 0i64, None),
            PolicyTarget::Template { app } => (None, 1i64, app.as_deref()),
        };
        self.tx("store a policy", None, |tx| {
            self.write(
                tx,
                "store a policy",
                "policies",
                "INSERT INTO policies (name, pattern, volume, key_label, template, template_app, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&p.name, &p.pattern.as_str(), &p.volume.as_str(), &key, &template, &app, &ts(p.created_at)],
            )
            .map(|_| ())
        })
        .map_err(exists_as("policy", p.name.clone()))
    }

    fn policies(&self) -> Result<Vec<PolicyRecord>> {
        self.read("list policies", "policies", "ORDER BY name", &[], policy_from)
    }

    fn remove_policy(&self, name: &str) -> Result<bool> {
        let n =
            self.client()?.execute("DELETE FROM policies WHERE name = $1", &[&name]).map_err(pg("remove a policy"))?;
        Ok(n > 0)
    }

    fn dataset(&self, name: &DatasetName) -> Result<Option<DatasetRecord>> {
        self.client()?
            .query_opt(&format!("{DATASET_SELECT} WHERE d.name = $1"), &[&name.as_str()])
            .map_err(pg("read a dataset"))?
            .map(|r| dataset_from(&r))
            .transpose()
    }

    fn datasets(&self) -> Result<Vec<DatasetRecord>> {
        self.client()?
            .query(&format!("{DATASET_SELECT} ORDER BY d.name"), &[])
            .map_err(pg("list datasets"))?
            .iter()
            .map(dataset_from)
            .collect()
    }

    fn datasets_from(&self, from: &str, after: &str, limit: u32) -> Result<Vec<DatasetRecord>> {
        self.client()?
            .query(
                &format!("{DATASET_SELECT} WHERE d.name >= $1 AND d.name > $2 ORDER BY d.name LIMIT $3"),
                &[&from.max(after), &after, &i64::from(limit)],
            )
            .map_err(pg("list a page of datasets"))?
            .iter()
            .map(dataset_from)
            .collect()
    }

    fn datasets_without_copy(
        &self,
        prefix: &str,
        method: CopyMethod,
        volume: &VolumeName,
    ) -> Result<Vec<DatasetRecord>> {
        self.client()?
            .query(
                &format!("{DATASET_SELECT} {}", crate::without_copy_sql(|n| format!("${n}"))),
                &[&prefix, &crate::prefix_end(prefix), &method.as_str(), &volume.as_str()],
            )
            .map_err(pg("find datasets without a copy"))?
            .iter()
            .map(dataset_from)
            .collect()
    }

    fn datasets_idle(&self, prefix: &str, before: Timestamp, not_on: &VolumeName) -> Result<Vec<DatasetRecord>> {
        self.client()?
            .query(
                &format!("{DATASET_SELECT} {}", crate::idle_sql(|n| format!("${n}"))),
                &[&prefix, &crate::prefix_end(prefix), &not_on.as_str(), &ts(before)],
            )
            .map_err(pg("find idle datasets"))?
            .iter()
            .map(dataset_from)
            .collect()
    }

    fn datasets_using_key(&self, l: &KeyLabel) -> Result<Vec<DatasetName>> {
        self.client()?
            .query(
                "SELECT DISTINCT d.name FROM datasets d JOIN generations g ON g.dataset_id = d.id WHERE g.key_label = $1 ORDER BY d.name",
                &[&l.as_str()],
            )
            .map_err(pg("find datasets using a key"))?
            .iter()
            .map(|r| ds_name(r, 0))
            .collect()
    }

    fn generation_chunks(&self, id: &DatasetId, generation: u64) -> Result<Vec<ChunkId>> {
        chunk_list(
            &mut self.client()?.db(),
            "SELECT chunk_id FROM generation_chunks WHERE dataset_id = $1 AND generation = $2 ORDER BY idx",
            &[&&id.0[..], &(generation as i64)],
        )
    }

    fn commit_generations(&self, commits: &[GenerationCommit]) -> Result<Vec<Garbage>> {
        let mut at = 0;
        let r = self.tx("commit a generation", Some(LOCK_OBJECTS), |tx| {
            let mut out = Vec::with_capacity(commits.len());
            for (i, c) in commits.iter().enumerate() {
                at = i;
                out.push(self.commit_in(tx, c)?);
            }
            Ok(out)
        });
        match r {
            // Two writers created the same dataset at once: the second lost.
            Err(RepoError::Exists { kind: "catalog row", name: c_name })
                if c_name.starts_with("Key (name)=") || c_name.starts_with("Key (id)=") =>
            {
                let c = &commits[at];
                Err(RepoError::Conflict { name: c.name.to_string(), expected: c.previous, found: 1 })
            }
            r => r,
        }
    }

    fn remove_dataset(&self, name: &DatasetName) -> Result<Garbage> {
        let me = self.session()?;
        self.tx("remove a dataset", Some(LOCK_OBJECTS), |tx| {
            let r = tx
                .query_opt("SELECT id FROM datasets WHERE name = $1 FOR UPDATE", &[&name.as_str()])
                .map_err(pg("read a dataset"))?
                .ok_or_else(|| RepoError::NotFound { kind: "dataset", name: name.to_string() })?;
            let id = DatasetId(id16(&r, 0)?);
            let gens: Vec<(u64, String)> = tx
                .query("SELECT generation, volume FROM generations WHERE dataset_id = $1", &[&&id.0[..]])
                .map_err(pg("list generations"))?
                .iter()
                .map(|r| Ok((u(r, 0)?, get(r, 1)?)))
                .collect::<Result<_>>()?;
            let garbage = self.drop_generations(tx, &id, &gens, Some(&me))?;
            tx.execute("DELETE FROM datasets WHERE id = $1", &[&&id.0[..]]).map_err(pg("remove a dataset"))?;
            Ok(garbage)
        })
    }

    fn touch_datasets(&self, ids: &[DatasetId]) -> Result<()> {
        let ids: Vec<&[u8]> = ids.iter().map(|id| &id.0[..]).collect();
        self.client()?
            .execute("UPDATE datasets SET last_access = $2 WHERE id = ANY($1)", &[&ids, &ts(Timestamp::now())])
            .map_err(pg("record a dataset's access"))?;
        Ok(())
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
        self.tx("move a generation", Some(LOCK_OBJECTS), |tx| {
            let gi = generation as i64;
            let n = tx
                .execute(
                    "UPDATE generations SET volume = $4 WHERE dataset_id = $1 AND generation = $2 AND volume = $3",
                    &[&&id.0[..], &gi, &from.as_str(), &to.as_str()],
                )
                .map_err(pg("move a generation"))?;
            if n != 1 {
                return Err(RepoError::NotFound {
                    kind: "generation to move",
                    name: format!("{generation} of dataset id {} on volume {from}", id.to_hex()),
                });
            }
            let what = || format!("the move of dataset id {} to {to}", id.to_hex());
            check_reused(tx, reused, to.as_str(), what)?;
            let moved = chunk_list(
                tx,
                "SELECT chunk_id FROM generation_chunks WHERE dataset_id = $1 AND generation = $2",
                &[&&id.0[..], &gi],
            )?;
            check_not_claimed(tx, to.as_str(), &listed(to.as_str(), &moved, (*id, generation))?, since, what)?;
            tx.execute(
                "UPDATE datasets SET migrated_from = $2 WHERE id = $1",
                &[&&id.0[..], &migrated_from.map(|v| v.as_str())],
            )
            .map_err(pg("mark a migration"))?;
            garbage_after(tx, moved, from.as_str(), (*id, generation), Some(&me))
        })
    }

    fn chunk_referenced(&self, v: &VolumeName, id: &ChunkId) -> Result<bool> {
        Ok(referenced(&mut self.client()?.db(), std::slice::from_ref(id), v.as_str())?[0])
    }

    fn trash(&self) -> Result<Vec<TrashEntry>> {
        self.client()?
            .query(
                "SELECT volume, kind, object, generation, released_at, claimed FROM trash WHERE claimed != 3 ORDER BY released_at, volume, object",
                &[],
            )
            .map_err(pg("list the trash"))?
            .iter()
            .map(trash_from)
            .collect()
    }

    fn claim_trash(&self, released_before: Timestamp) -> Result<Garbage> {
        let me = self.session()?;
        self.tx("claim the trash", Some(LOCK_OBJECTS), |tx| {
            let due: Vec<(TrashEntry, i64, Option<String>)> = tx
                .query(
                    "SELECT volume, kind, object, generation, released_at, claimed, claimed_by FROM trash
                     WHERE (claimed = 0 AND released_at < $1) OR claimed IN (1, 2)",
                    &[&ts(released_before)],
                )
                .map_err(pg("read the trash"))?
                .iter()
                .map(|r| Ok((trash_from(r)?, get(r, 5)?, get(r, 6)?)))
                .collect::<Result<_>>()?;
            let mut claim = Garbage::default();
            let mut rescued = Garbage::default();
            let mut alive: HashMap<Option<String>, bool> = HashMap::new();
            for (e, state, by) in due {
                if state == 1 {
                    let live = match alive.get(&by) {
                        Some(l) => *l,
                        None => {
                            let l = self.claimer_alive(tx, &me, by.as_deref(), e.released_at, released_before)?;
                            alive.insert(by.clone(), l);
                            l
                        }
                    };
                    if live {
                        continue;
                    }
                }
                let still_used = match (&e.chunk, &e.manifest) {
                    (Some(c), _) => referenced(tx, std::slice::from_ref(c), e.volume.as_str())?[0],
                    (None, Some((d, g))) => manifest_referenced(tx, d, *g, e.volume.as_str())?,
                    (None, None) => false,
                };
                let to = if still_used { &mut rescued } else { &mut claim };
                match (e.chunk, e.manifest) {
                    (Some(c), _) => to.chunks.push((e.volume, c)),
                    (None, Some((d, g))) => to.manifests.push((e.volume, d, g)),
                    (None, None) => {}
                }
            }
            forget(tx, &rescued)?;
            forget(tx, &claim)?;
            to_trash(tx, &claim, Some(&me))?;
            Ok(claim)
        })
    }

    fn claim_orphans(&self, found: &Garbage) -> Result<Garbage> {
        let me = self.session()?;
        self.tx("claim orphans", Some(LOCK_OBJECTS), |tx| {
            let mut claim = Garbage::default();
            let free = |tx: &mut Db<'_>, vol: &str, kind: &str, object: &[u8], generation: i64| -> Result<bool> {
                let r = tx
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM trash WHERE volume = $1 AND kind = $2 AND object = $3 AND generation = $4
                             AND claimed != 3)",
                        &[&vol, &kind, &object, &generation],
                    )
                    .map_err(pg("look in the trash"))?;
                Ok(!get::<bool>(&r, 0)?)
            };
            for (v, c) in &found.chunks {
                if !referenced(tx, std::slice::from_ref(c), v.as_str())?[0] && free(tx, v.as_str(), "chunk", &c.0, 0)? {
                    claim.chunks.push((v.clone(), *c));
                }
            }
            for (v, d, g) in &found.manifests {
                if !manifest_referenced(tx, d, *g, v.as_str())? && free(tx, v.as_str(), "manifest", &d.0, *g as i64)? {
                    claim.manifests.push((v.clone(), *d, *g));
                }
            }
            to_trash(tx, &claim, Some(&me))?;
            Ok(claim)
        })
    }

    fn abandon_claims(&self, left: &Garbage) -> Result<()> {
        self.tx("give up claims", Some(LOCK_OBJECTS), |tx| {
            for (vol, kind, object, generation) in trash_keys(left) {
                tx.execute(
                    "UPDATE trash SET claimed = 2 WHERE volume = $1 AND kind = $2 AND object = $3 AND generation = $4",
                    &[&vol, &kind, &object, &generation],
                )
                .map_err(pg("give up claims"))?;
            }
            Ok(())
        })
    }

    fn forget_trash(&self, gone: &Garbage) -> Result<()> {
        self.tx("empty the trash", Some(LOCK_OBJECTS), |tx| {
            let seq = deletion_seq(tx)? + 1;
            self.upsert_setting(tx, DELETIONS, &seq.to_string())?;
            let now = ts(Timestamp::now());
            for (vol, kind, object, generation) in trash_keys(gone) {
                tx.execute(
                    "UPDATE trash SET claimed = 3, released_at = $5, deleted_seq = $6
                     WHERE volume = $1 AND kind = $2 AND object = $3 AND generation = $4",
                    &[&vol, &kind, &object, &generation, &now, &(seq as i64)],
                )
                .map_err(pg("empty the trash"))?;
            }
            tx.execute(
                "DELETE FROM trash WHERE claimed = 3 AND released_at < $1",
                &[&(now - TOMBSTONE_DAYS * 86_400_000_000)],
            )
            .map_err(pg("empty the trash"))?;
            Ok(())
        })
    }

    fn append_audit_batch(
        &self,
        entries: &[AuditRow],
        link: &AuditLink<'_>,
        key_uses: &[KeyLabel],
    ) -> Result<Vec<AuditRow>> {
        self.tx("append to the audit log", Some(LOCK_AUDIT), |tx| {
            let last = tx
                .query_opt("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1", &[])
                .map_err(pg("read the audit log's head"))?;
            let (mut seq, mut prev) = match last {
                Some(r) => (u(&r, 0)? + 1, bytes32(&r, 1, "audit hash")?),
                None => (1, [0u8; 32]),
            };
            let mut out = Vec::with_capacity(entries.len());
            for e in entries {
                let mut row = AuditRow { seq, ..e.clone() };
                row.hash = link(&prev, &row);
                prev = row.hash;
                seq += 1;
                out.push(row);
            }
            // One statement for the whole group.
            tx.execute(
                "INSERT INTO audit_log (seq, at, principal, action, object, result, hash, keyed)
                 SELECT * FROM unnest($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[], $8::int8[])",
                &[
                    &out.iter().map(|r| r.seq as i64).collect::<Vec<_>>(),
                    &out.iter().map(|r| ts(r.at)).collect::<Vec<_>>(),
                    &out.iter().map(|r| r.principal.as_str()).collect::<Vec<_>>(),
                    &out.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(),
                    &out.iter().map(|r| r.object.as_str()).collect::<Vec<_>>(),
                    &out.iter().map(|r| r.result.as_str()).collect::<Vec<_>>(),
                    &out.iter().map(|r| &r.hash[..]).collect::<Vec<_>>(),
                    &out.iter().map(|r| i64::from(r.keyed)).collect::<Vec<_>>(),
                ],
            )
            .map_err(pg("append to the audit log"))?;
            self.count_uses(tx, key_uses)?;
            Ok(out)
        })
    }

    fn audit_head(&self) -> Result<Option<AuditRow>> {
        self.client()?
            .query_opt(
                "SELECT seq, at, principal, action, object, result, hash, keyed FROM audit_log ORDER BY seq DESC LIMIT 1",
                &[],
            )
            .map_err(pg("read the audit log's head"))?
            .map(|r| audit_from(&r))
            .transpose()
    }

    fn audit_rows(&self, after: u64) -> Result<Vec<AuditRow>> {
        self.client()?
            .query(
                "SELECT seq, at, principal, action, object, result, hash, keyed FROM audit_log WHERE seq > $1 ORDER BY seq",
                &[&(after as i64)],
            )
            .map_err(pg("read the audit log"))?
            .iter()
            .map(audit_from)
            .collect()
    }

    fn audit_rows_page(&self, after: u64, limit: u32) -> Result<Vec<AuditRow>> {
        self.client()?
            .query(
                "SELECT seq, at, principal, action, object, result, hash, keyed FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&(after as i64), &i64::from(limit)],
            )
            .map_err(pg("read the audit log"))?
            .iter()
            .map(audit_from)
            .collect()
    }

    fn insert_audit_checkpoint(&self, c: &AuditCheckpoint) -> Result<()> {
        self.client()?
            .execute(
                // A checkpoint of the same entry is renewed only while the
                // entry is unchanged (as in SQLite).
                "INSERT INTO audit_checkpoints AS a (seq, head, at, mac) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (seq) DO UPDATE SET at = excluded.at, mac = excluded.mac WHERE a.head = excluded.head",
                &[&(c.seq as i64), &&c.head[..], &ts(c.at), &c.mac],
            )
            .map_err(pg("record an audit checkpoint"))?;
        Ok(())
    }

    fn audit_checkpoints(&self) -> Result<Vec<AuditCheckpoint>> {
        self.client()?
            .query("SELECT seq, head, at, mac FROM audit_checkpoints ORDER BY seq", &[])
            .map_err(pg("read audit checkpoints"))?
            .iter()
            .map(|r| {
                Ok(AuditCheckpoint {
                    seq: u(r, 0)?,
                    head: bytes32(r, 1, "checkpoint head")?,
                    at: at(r, 2)?,
                    mac: get(r, 3)?,
                })
            })
            .collect()
    }

    fn set_destroy_after(&self, l: &KeyLabel, when: Option<Timestamp>) -> Result<()> {
        self.tx("schedule a key's destruction", None, |tx| {
            self.lock_check(tx, "keys", "label = $1", &[&l.as_str()])?;
            let rows = self.write(
                tx,
                "schedule a key's destruction",
                "keys",
                "UPDATE keys SET destroy_after = $2 WHERE label = $1",
                &[&l.as_str(), &when.map(ts)],
            )?;
            if rows.is_empty() {
                return Err(RepoError::NotFound { kind: "key", name: l.to_string() });
            }
            Ok(())
        })
    }

    fn unschedule_destroy(&self, l: &KeyLabel, at: Timestamp) -> Result<bool> {
        self.tx("take a key off the destruction schedule", None, |tx| {
            self.lock_check(tx, "keys", "label = $1", &[&l.as_str()])?;
            let rows = self.write(
                tx,
                "take a key off the destruction schedule",
                "keys",
                "UPDATE keys SET destroy_after = NULL WHERE label = $1 AND destroy_after = $2",
                &[&l.as_str(), &ts(at)],
            )?;
            Ok(!rows.is_empty())
        })
    }

    fn destroy_after(&self, l: &KeyLabel) -> Result<Option<Timestamp>> {
        Ok(self
            .read("read a key's destruction schedule", "keys", "WHERE label = $1", &[&l.as_str()], |r| opt_at(r, 16))?
            .pop()
            .flatten())
    }

    fn destroy_schedule(&self) -> Result<Vec<(KeyLabel, Timestamp)>> {
        self.read(
            "list scheduled destructions",
            "keys",
            "WHERE destroy_after IS NOT NULL ORDER BY destroy_after, label",
            &[],
            |r| Ok((label(r, 0)?, at(r, 16)?)),
        )
    }

    fn insert_principal(&self, p: &PrincipalRecord) -> Result<()> {
        let roles: Vec<&str> = p.roles.iter().map(|r| r.as_str()).collect();
        self.tx("store a user", None, |tx| {
            self.write(
                tx,
                "store a user",
                "principals",
                "INSERT INTO principals (name, role, credential, disabled, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[&p.name, &roles.join(","), &p.credential, &i64::from(p.disabled), &ts(p.created_at)],
            )
            .map(|_| ())
        })
        .map_err(exists_as("user", p.name.clone()))
    }

    fn principal(&self, name: &str) -> Result<Option<PrincipalRecord>> {
        let Some(mut p) = self.read("read a user", "principals", "WHERE name = $1", &[&name], principal_from)?.pop()
        else {
            return Ok(None);
        };
        let grants = self.read(
            "read a user's grants",
            "grants",
            "WHERE principal = $1 ORDER BY kind, pattern",
            &[&name],
            |r| Ok((get::<String>(r, 1)?, get::<String>(r, 2)?)),
        )?;
        for (kind, pat) in grants {
            let pat = Pattern::new(pat).map_err(|e| corrupt(e.to_string()))?;
            match kind.as_str() {
                "data" => p.data_grants.push(pat),
                _ => p.key_grants.push(pat),
            }
        }
        Ok(Some(p))
    }

    fn principals(&self) -> Result<Vec<PrincipalRecord>> {
        let mut ps = self.read("list users", "principals", "ORDER BY name", &[], principal_from)?;
        let grants = self.read("list grants", "grants", "ORDER BY principal, kind, pattern", &[], |r| {
            Ok((get::<String>(r, 0)?, get::<String>(r, 1)?, get::<String>(r, 2)?))
        })?;
        for (who, kind, pat) in grants {
            let pat = Pattern::new(pat).map_err(|e| corrupt(e.to_string()))?;
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
        self.update_principal(name, "disabled", &i64::from(disabled), "change a user")
    }

    fn remove_principal(&self, name: &str) -> Result<bool> {
        self.tx("remove a user", Some(LOCK_PRINCIPALS), |tx| {
            let before = enabled_admins(tx, "remove a user")?;
            tx.execute("DELETE FROM grants WHERE principal = $1", &[&name]).map_err(pg("remove a user's grants"))?;
            let n = tx.execute("DELETE FROM principals WHERE name = $1", &[&name]).map_err(pg("remove a user"))?;
            if before > 0 && enabled_admins(tx, "remove a user")? == 0 {
                return Err(RepoError::LastAdmin { name: name.into() });
            }
            Ok(n > 0)
        })
    }

    fn set_principal_credential(&self, name: &str, credential: &str) -> Result<()> {
        self.update_principal(name, "credential", &credential, "change a user's credential")
    }

    fn set_principal_roles(&self, name: &str, roles: &[custos_model::Role]) -> Result<()> {
        let roles = roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",");
        self.update_principal(name, "role", &roles, "change a user's roles")
    }

    fn add_grant(&self, name: &str, kind: &str, pattern: &Pattern) -> Result<()> {
        if self.principal(name)?.is_none() {
            return Err(RepoError::NotFound { kind: "user", name: name.into() });
        }
        self.tx("grant", None, |tx| {
            self.write(
                tx,
                "grant",
                "grants",
                "INSERT INTO grants (principal, kind, pattern, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&name, &kind, &pattern.as_str(), &ts(Timestamp::now())],
            )
            .map(|_| ())
        })
    }

    fn remove_grant(&self, name: &str, kind: &str, pattern: &Pattern) -> Result<bool> {
        let n = self
            .client()?
            .execute(
                "DELETE FROM grants WHERE principal = $1 AND kind = $2 AND pattern = $3",
                &[&name, &kind, &pattern.as_str()],
            )
            .map_err(pg("revoke"))?;
        Ok(n > 0)
    }

    fn insert_request(&self, r: &RequestRow) -> Result<u64> {
        self.tx("record a request", None, |tx| {
            let rows = self.write(
                tx,
                "record a request",
                "requests",
                "INSERT INTO requests (action, args, requested_by, created_at, expires_at, state) VALUES ($1, $2, $3, $4, $5, 'pending')",
                &[&r.action, &r.args, &r.requested_by, &ts(r.created_at), &ts(r.expires_at)],
            )?;
            u(rows.first().ok_or_else(|| corrupt("a request id"))?, 2)
        })
    }

    fn requests_before(&self, before: u64, limit: u32) -> Result<Vec<RequestRow>> {
        let before = before.min(i64::MAX as u64) as i64;
        self.read(
            "list requests",
            "requests",
            "WHERE id < $1 ORDER BY id DESC LIMIT $2",
            &[&before, &i64::from(limit)],
            |r| {
                Ok(RequestRow {
                    id: u(r, 0)?,
                    action: get(r, 1)?,
                    args: get(r, 2)?,
                    requested_by: get(r, 3)?,
                    created_at: at(r, 4)?,
                    expires_at: at(r, 5)?,
                    state: get(r, 6)?,
                    decided_by: get(r, 7)?,
                    decided_at: opt_at(r, 8)?,
                })
            },
        )
    }

    fn decide_request(&self, id: u64, state: &str, by: &str) -> Result<bool> {
        // Exactly one decision wins: the row is locked, checked, and changed
        // only while it is still undecided.
        let cond = "id = $1 AND (state = 'pending' OR (state = 'approved' AND $2::text NOT IN ('approved', 'denied')))";
        self.tx("decide a request", None, |tx| {
            self.lock_check(tx, "requests", cond, &[&(id as i64), &state])?;
            let rows = self.write(
                tx,
                "decide a request",
                "requests",
                &format!("UPDATE requests SET state = $2, decided_by = $3, decided_at = $4 WHERE {cond}"),
                &[&(id as i64), &state, &by, &ts(Timestamp::now())],
            )?;
            Ok(!rows.is_empty())
        })
    }

    fn idempotency_begin(&self, key: &str, principal: &str, request: &[u8; 32]) -> Result<crate::Idempotency> {
        let me = self.session()?;
        let now = Timestamp::now();
        self.tx("take up an idempotency key", None, |tx| {
            tx.execute(
                "DELETE FROM idempotency WHERE created_at < $1",
                &[&(ts(now) - crate::sqlite::IDEMPOTENCY_DAYS * 86_400_000_000)],
            )
            .map_err(pg("forget old idempotency keys"))?;
            let inserted = tx
                .execute(
                    "INSERT INTO idempotency (key, principal, request, state, owner, created_at)
                     VALUES ($1, $2, $3, 'running', $4, $5) ON CONFLICT (key) DO NOTHING",
                    &[&key, &principal, &&request[..], &me, &ts(now)],
                )
                .map_err(pg("record an idempotency key"))?;
            if inserted == 1 {
                return Ok(crate::Idempotency::New);
            }
            let r = tx
                .query_one(
                    "SELECT principal, request, state, owner, status, reply FROM idempotency WHERE key = $1 FOR UPDATE",
                    &[&key],
                )
                .map_err(pg("read an idempotency key"))?;
            let (p, req, state, owner): (&str, &[u8], &str, &str) =
                (get(&r, 0)?, get(&r, 1)?, get(&r, 2)?, get(&r, 3)?);
            Ok(if p != principal || req != request {
                crate::Idempotency::Mismatch
            } else if state == "done" {
                let status: Option<i64> = get(&r, 4)?;
                crate::Idempotency::Done { status: status.unwrap_or(200) as u16, reply: get(&r, 5)? }
            } else if self.claimer_alive(tx, &me, Some(owner), now, now)? {
                crate::Idempotency::Running
            } else {
                crate::Idempotency::Orphaned
            })
        })
    }

    fn idempotency_finish(&self, key: &str, status: u16, reply: Option<&[u8]>) -> Result<()> {
        self.client()?
            .execute(
                "UPDATE idempotency SET state = 'done', status = $2, reply = $3 WHERE key = $1",
                &[&key, &i64::from(status), &reply],
            )
            .map_err(pg("record a request's answer"))?;
        Ok(())
    }

    fn hsm_state(&self) -> Result<Option<(Vec<u8>, u64)>> {
        let r = self
            .client()?
            .query_opt("SELECT sealed, generation FROM hsm_state WHERE id = 1", &[])
            .map_err(pg("read the software HSM's state"))?;
        r.map(|r| Ok((get(&r, 0)?, u(&r, 1)?))).transpose()
    }

    fn hsm_state_generation(&self) -> Result<Option<u64>> {
        let r = self
            .client()?
            .query_opt("SELECT generation FROM hsm_state WHERE id = 1", &[])
            .map_err(pg("read the software HSM's state"))?;
        r.map(|r| u(&r, 0)).transpose()
    }

    fn put_hsm_state(&self, sealed: &[u8], was: Option<u64>) -> Result<Option<u64>> {
        let mut c = self.client()?;
        let n = match was {
            None => c.execute(
                "INSERT INTO hsm_state (id, generation, sealed) VALUES (1, 1, $1) ON CONFLICT (id) DO NOTHING",
                &[&sealed],
            ),
            Some(g) => c.execute(
                "UPDATE hsm_state SET sealed = $1, generation = generation + 1 WHERE id = 1 AND generation = $2",
                &[&sealed, &(g as i64)],
            ),
        }
        .map_err(pg("store the software HSM's state"))?;
        Ok((n == 1).then(|| was.map_or(1, |g| g + 1)))
    }

    fn remove_hsm_state(&self) -> Result<bool> {
        Ok(self.client()?.execute("DELETE FROM hsm_state", &[]).map_err(pg("forget the software HSM's state"))? > 0)
    }

    fn insert_hsm_rule(&self, r: &HsmRule) -> Result<()> {
        self.tx("store an hsm rule", None, |tx| {
            self.write(
                tx,
                "store an hsm rule",
                "hsm_rules",
                "INSERT INTO hsm_rules (name, pattern, method, backup_to, keep_last, keep_daily, keep_monthly, keep_yearly, migrate_after_days, migrate_to, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    &r.name,
                    &r.pattern.as_str(),
                    &r.method.as_str(),
                    &r.backup_to.as_ref().map(|v| v.as_str()),
                    &i64::from(r.keep_last),
                    &i64::from(r.keep_daily),
                    &i64::from(r.keep_monthly),
                    &i64::from(r.keep_yearly),
                    &r.migrate_after_days.map(i64::from),
                    &r.migrate_to.as_ref().map(|v| v.as_str()),
                    &ts(r.created_at),
                ],
            )
            .map(|_| ())
        })
        .map_err(exists_as("hsm rule", r.name.clone()))
    }

    fn hsm_rules(&self) -> Result<Vec<HsmRule>> {
        let n = |r: &Row, i: usize| -> Result<u32> {
            u32::try_from(get::<i64>(r, i)?).map_err(|_| corrupt("an hsm rule's count"))
        };
        self.read("list hsm rules", "hsm_rules", "ORDER BY name", &[], |r| {
            let method: String = get(r, 2)?;
            Ok(HsmRule {
                name: get(r, 0)?,
                pattern: Pattern::new(get::<String>(r, 1)?).map_err(|e| corrupt(e.to_string()))?,
                method: CopyMethod::parse(&method).ok_or_else(|| corrupt(format!("copy method {method}")))?,
                backup_to: opt_vol(r, 3)?,
                keep_last: n(r, 4)?,
                keep_daily: n(r, 5)?,
                keep_monthly: n(r, 6)?,
                keep_yearly: n(r, 7)?,
                migrate_after_days: get::<Option<i64>>(r, 8)?
                    .map(|d| u32::try_from(d).map_err(|_| corrupt("an hsm rule's age")))
                    .transpose()?,
                migrate_to: opt_vol(r, 9)?,
                created_at: at(r, 10)?,
            })
        })
    }

    fn remove_hsm_rule(&self, name: &str) -> Result<bool> {
        let n = self
            .client()?
            .execute("DELETE FROM hsm_rules WHERE name = $1", &[&name])
            .map_err(pg("remove an hsm rule"))?;
        Ok(n > 0)
    }
}

/// Refuse `k`'s names when another key already carries one (KMIP Name: a
/// name belongs to one key). Writers of named keys take one lock first, so
/// two of them cannot both pass the check before either commits.
fn check_key_names(tx: &mut Db<'_>, k: &KeyRecord) -> Result<()> {
    if k.attributes.names.is_empty() {
        return Ok(());
    }
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY_NAMES]).map_err(pg("check a key's names"))?;
    for name in &k.attributes.names {
        let rows = tx
            .query(
                "SELECT label FROM keys WHERE label <> $2 AND attributes IS NOT NULL
                 AND jsonb_exists(COALESCE(attributes::jsonb -> 'names', '[]'::jsonb), $1) LIMIT 1",
                &[name, &k.label.as_str()],
            )
            .map_err(pg("check a key's names"))?;
        if let Some(r) = rows.first() {
            let label: String = r.try_get(0).map_err(pg("check a key's names"))?;
            return Err(RepoError::NameTaken { name: name.clone(), label });
        }
    }
    Ok(())
}

/// How many enabled security-admins there are, in this transaction.
fn enabled_admins(tx: &mut Db<'_>, action: &'static str) -> Result<i64> {
    tx.query_one(crate::ENABLED_ADMINS_SQL, &[]).and_then(|r| r.try_get(0)).map_err(pg(action))
}

#[cfg(test)]
mod tests {
    use super::take_param;

    #[test]
    fn sslrootcert_is_taken_off_either_form_and_nothing_else_changes() {
        let t = |u: &str| take_param(u, "sslrootcert");
        assert_eq!(
            t("postgres://c@h/db?sslmode=require&sslrootcert=/etc/ca.pem&port=5"),
            ("postgres://c@h/db?sslmode=require&port=5".into(), Some("/etc/ca.pem".into()))
        );
        assert_eq!(t("postgres://c@h/db?sslrootcert=/ca.pem"), ("postgres://c@h/db".into(), Some("/ca.pem".into())));
        assert_eq!(t("host=h sslrootcert='/ca.pem' user=c"), ("host=h user=c".into(), Some("/ca.pem".into())));
        for same in ["postgres://c@h/db?host=/run/x", "host=h  password='a  b'", "postgres://c@h/db"] {
            assert_eq!(t(same), (same.into(), None));
        }
    }
}
