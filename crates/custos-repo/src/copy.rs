//! Copying a whole catalog between backends (ADR 0020): every row of every
//! table, as of one moment, with its MAC unchanged (the row encoding is the
//! same on both, so the copy verifies under the same catalog key). Used by
//! `custos repo migrate` and by [`crate::Repository::copy_to`] on
//! PostgreSQL (a vault backup, a drill's copy).

use std::path::Path;

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use rusqlite::types::ValueRef;

use crate::{PgRepository, RepoError, Result, SqliteRepository};

/// Every table, parents before children (foreign keys hold at each insert).
pub const TABLES: &[&str] = &[
    "settings",
    "volumes",
    "kbks",
    "keys",
    "datasets",
    "generations",
    "generation_chunks",
    "policies",
    "backups",
    "backup_chunks",
    "snapshots",
    "snapshot_chunks",
    "mirrors",
    "hsm_rules",
    "principals",
    "grants",
    "requests",
    "custodian_keys",
    "escrow_shares",
    "keystore_backups",
    "vault_backups",
    "drills",
    "trash",
    "audit_log",
    "audit_checkpoints",
    "idempotency",
    "hsm_state",
];

/// Tables whose ids a sequence hands out on PostgreSQL.
const IDENTITY: &[&str] = &["backups", "snapshots", "requests"];

/// Rows copied, per table, in [`TABLES`] order.
pub type RowCounts = Vec<(String, u64)>;

/// One value on its way between backends.
#[derive(Debug)]
enum Val {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl ToSql for Val {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Val::Null => Ok(IsNull::Yes),
            Val::Int(n) => n.to_sql(ty, out),
            Val::Text(s) => s.to_sql(ty, out),
            Val::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::INT8 || *ty == Type::TEXT || *ty == Type::BYTEA
    }

    to_sql_checked!();
}

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(match self {
            Val::Null => rusqlite::types::ToSqlOutput::Owned(rusqlite::types::Value::Null),
            Val::Int(n) => (*n).into(),
            Val::Text(s) => s.as_str().into(),
            Val::Blob(b) => b.as_slice().into(),
        })
    }
}

fn sqlite(action: &'static str) -> impl Fn(rusqlite::Error) -> RepoError {
    move |source| RepoError::Database { action, source }
}

fn pg(action: &'static str) -> impl Fn(postgres::Error) -> RepoError {
    move |e| RepoError::Postgres {
        action,
        why: e.as_db_error().map_or_else(|| e.to_string(), |d| format!("{}: {}", d.severity(), d.message())),
    }
}

/// The columns of `table` in the SQLite schema, in order.
fn sqlite_columns(c: &rusqlite::Connection, table: &str) -> Result<Vec<String>> {
    let mut st = c.prepare(&format!("PRAGMA table_info({table})")).map_err(sqlite("read the schema"))?;
    let cols = st
        .query_map([], |r| r.get::<_, String>(1))
        .map_err(sqlite("read the schema"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sqlite("read the schema"))?;
    if cols.is_empty() {
        return Err(RepoError::NotACatalog {
            path: "the SQLite catalog".into(),
            why: format!("it has no table {table}"),
        });
    }
    Ok(cols)
}

/// The column types PostgreSQL gives `cols` of `table`, in that order.
fn pg_types(c: &mut impl postgres::GenericClient, table: &str, cols: &[String]) -> Result<Vec<Type>> {
    let mut out = Vec::with_capacity(cols.len());
    for col in cols {
        let r = c
            .query_opt(
                "SELECT atttypid FROM pg_attribute WHERE attrelid = to_regclass($1) AND attname = $2 AND NOT attisdropped",
                &[&table, &col.as_str()],
            )
            .map_err(pg("read the schema"))?
            .ok_or_else(|| RepoError::NotACatalog {
                path: "the PostgreSQL catalog".into(),
                why: format!("its table {table} has no column {col}"),
            })?;
        let oid: u32 = r.get(0);
        out.push(Type::from_oid(oid).unwrap_or(Type::TEXT));
    }
    Ok(out)
}

/// How many rows each table of the PostgreSQL catalog holds.
pub(crate) fn pg_counts(c: &mut impl postgres::GenericClient) -> Result<RowCounts> {
    TABLES
        .iter()
        .map(|t| {
            let n: i64 = c.query_one(&format!("SELECT count(*) FROM {t}"), &[]).map_err(pg("count the rows"))?.get(0);
            Ok((t.to_string(), n as u64))
        })
        .collect()
}

/// How many rows each table of a SQLite catalog holds.
pub(crate) fn sqlite_counts(c: &rusqlite::Connection) -> Result<RowCounts> {
    TABLES
        .iter()
        .map(|t| {
            let n: i64 = c
                .query_row(&format!("SELECT count(*) FROM main.{t}"), [], |r| r.get(0))
                .map_err(sqlite("count the rows"))?;
            Ok((t.to_string(), n as u64))
        })
        .collect()
}

/// Copy the SQLite catalog at `src` into the empty PostgreSQL catalog
/// `to`, in one transaction on each side: the source is held against
/// writers (an immediate transaction) from before the first row is read
/// until `then` has run on the committed copy, so no write lands in the
/// source unseen; once `then` succeeds the source is retired (its main
/// tables renamed), so a writer that waited meanwhile fails rather than
/// write into it. A target holding any row is refused.
pub fn sqlite_to_postgres(
    src: &Path,
    to: &PgRepository,
    then: impl FnOnce(&RowCounts) -> Result<()>,
) -> Result<RowCounts> {
    let mut s = rusqlite::Connection::open_with_flags(src, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(sqlite("open the catalog to copy"))?;
    s.busy_timeout(std::time::Duration::from_secs(30)).map_err(sqlite("set the busy timeout"))?;
    let held = s
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sqlite("hold the catalog against writers"))?;
    let mut c = to.client_for_copy()?;
    let filled: Vec<(String, u64)> = pg_counts(&mut c.client)?.into_iter().filter(|(_, n)| *n > 0).collect();
    if !filled.is_empty() {
        return Err(RepoError::NotEmpty {
            target: "PostgreSQL database".into(),
            holds: filled.iter().map(|(t, n)| format!("{n} rows in {t}")).collect::<Vec<_>>().join(", "),
        });
    }
    // Every table the source has is one this copy knows: nothing is left behind.
    let mut st = held
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .map_err(sqlite("read the schema"))?;
    let names = st
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(sqlite("read the schema"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sqlite("read the schema"))?;
    drop(st);
    if let Some(unknown) = names.iter().find(|n| !TABLES.contains(&n.as_str())) {
        return Err(RepoError::NotACatalog {
            path: src.display().to_string(),
            why: format!("it has a table {unknown} this Custos does not copy"),
        });
    }
    let mut tx = c.client.transaction().map_err(pg("start the copy"))?;
    let mut counts = RowCounts::new();
    for table in TABLES {
        let cols = sqlite_columns(&held, table)?;
        let types = pg_types(&mut tx, table, &cols)?;
        let sink =
            tx.copy_in(&format!("COPY {table} ({}) FROM STDIN BINARY", cols.join(", "))).map_err(pg("copy rows"))?;
        let mut w = BinaryCopyInWriter::new(sink, &types);
        let mut st =
            held.prepare(&format!("SELECT {} FROM main.{table}", cols.join(", "))).map_err(sqlite("read rows"))?;
        let mut rows = st.query([]).map_err(sqlite("read rows"))?;
        let mut n = 0u64;
        while let Some(r) = rows.next().map_err(sqlite("read rows"))? {
            let mut vals = Vec::with_capacity(cols.len());
            for (i, col) in cols.iter().enumerate() {
                vals.push(match r.get_ref(i).map_err(sqlite("read rows"))? {
                    ValueRef::Null => Val::Null,
                    ValueRef::Integer(v) => Val::Int(v),
                    ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Val::Blob(b.to_vec()),
                    ValueRef::Real(_) => {
                        return Err(RepoError::Corrupt { what: format!("a real number in {table}.{col}") })
                    }
                });
            }
            let refs: Vec<&(dyn ToSql + Sync)> = vals.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
            w.write(&refs).map_err(pg("copy rows"))?;
            n += 1;
        }
        w.finish().map_err(pg("copy rows"))?;
        counts.push((table.to_string(), n));
    }
    for t in IDENTITY {
        tx.execute(
            &format!(
                "SELECT setval(pg_get_serial_sequence('{t}', 'id'), COALESCE((SELECT max(id) FROM {t}), 0) + 1, false)"
            ),
            &[],
        )
        .map_err(pg("carry the ids on"))?;
    }
    tx.commit().map_err(pg("commit the copy"))?;
    // The planner's statistics for what was just loaded (best effort;
    // autovacuum gets there later), so the first pages read by index.
    let _ = c.batch_execute("ANALYZE");
    then(&counts)?;
    // A command that waited for the catalog while it moved must not write
    // into the file left behind (its write would be lost): the tables every
    // write touches are renamed away, so it fails and says so instead.
    held.execute_batch(
        "ALTER TABLE settings RENAME TO moved_settings;
         ALTER TABLE keys RENAME TO moved_keys;
         ALTER TABLE datasets RENAME TO moved_datasets;
         ALTER TABLE audit_log RENAME TO moved_audit_log;
         ALTER TABLE trash RENAME TO moved_trash;",
    )
    .map_err(sqlite("retire the catalog that moved"))?;
    held.commit().map_err(sqlite("release the catalog"))?;
    Ok(counts)
}

/// Copy the PostgreSQL catalog behind `c` into a new SQLite file at `dst`
/// (which must not exist), as of one snapshot.
pub(crate) fn postgres_to_sqlite(c: &mut postgres::Client, dst: &Path) -> Result<RowCounts> {
    if dst.exists() {
        return Err(RepoError::Exists { kind: "file", name: dst.display().to_string() });
    }
    // The schema, by the migrations; then rows go in with no trigger of
    // Custos's attached (MACs are copied, not made).
    drop(SqliteRepository::open(dst)?);
    let mut d = rusqlite::Connection::open(dst).map_err(sqlite("open the copy"))?;
    d.execute_batch("PRAGMA foreign_keys=OFF; PRAGMA synchronous=FULL;").map_err(sqlite("configure the copy"))?;
    let dtx = d.transaction().map_err(sqlite("start the copy"))?;
    let mut tx = c
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(pg("start reading the catalog"))?;
    let mut counts = RowCounts::new();
    for table in TABLES {
        let cols = sqlite_columns(&dtx, table)?;
        let types = pg_types(&mut tx, table, &cols)?;
        let marks = (1..=cols.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
        let mut ins = dtx
            .prepare(&format!("INSERT INTO main.{table} ({}) VALUES ({marks})", cols.join(", ")))
            .map_err(sqlite("write rows"))?;
        let rows = tx
            .query_raw(&format!("SELECT {} FROM {table}", cols.join(", ")), std::iter::empty::<i64>())
            .map_err(pg("read rows"))?;
        let mut n = 0u64;
        let mut rows = rows;
        while let Some(r) = postgres::fallible_iterator::FallibleIterator::next(&mut rows).map_err(pg("read rows"))? {
            let mut vals = Vec::with_capacity(cols.len());
            for (i, ty) in types.iter().enumerate() {
                let bad = |e: postgres::Error| RepoError::Corrupt { what: format!("{table}.{}: {e}", cols[i]) };
                vals.push(if *ty == Type::INT8 {
                    r.try_get::<_, Option<i64>>(i).map_err(bad)?.map_or(Val::Null, Val::Int)
                } else if *ty == Type::BYTEA {
                    r.try_get::<_, Option<Vec<u8>>>(i).map_err(bad)?.map_or(Val::Null, Val::Blob)
                } else {
                    r.try_get::<_, Option<String>>(i).map_err(bad)?.map_or(Val::Null, Val::Text)
                });
            }
            ins.execute(rusqlite::params_from_iter(vals.iter())).map_err(sqlite("write rows"))?;
            n += 1;
        }
        counts.push((table.to_string(), n));
    }
    tx.commit().map_err(pg("finish reading the catalog"))?;
    dtx.commit().map_err(sqlite("commit the copy"))?;
    Ok(counts)
}
