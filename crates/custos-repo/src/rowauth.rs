//! Authenticated catalog rows (ADR 0019). Every row of a table that decides
//! security carries a MAC under the HSM's catalog key over a canonical
//! encoding of its table and its non-NULL columns, by name. The SQLite
//! connections Custos opens compute and check them through SQL functions
//! it registers:
//!
//! * `custos_mac(table, generation, name, value, …)`: the MAC a row should
//!   carry. The writer's temporary triggers set it after every insert and
//!   update, so no statement can forget it; a tool that writes the file
//!   directly has neither the triggers nor the key. `generation` is the
//!   catalog's key generation (a setting a rotation changes): when it is
//!   not the one this process last saw, the keys are read again first, so
//!   a process that opened the HSM before another rotated its catalog key
//!   never seals a row under the retired key.
//! * `custos_row_ok(table, mac, name, value, …)`: 1, or an error that names
//!   the table and the row. Every read of an authenticated row selects it,
//!   and the update triggers check the row being replaced first (an update
//!   never re-seals a forged row).
//! * `custos_mac_next(table, name, value, …)`: the MAC under the NEXT
//!   catalog key, while a rotation seals every row again.
//! * `custos_row_state(table, mac, name, value, …)`: 0 sealed, 1 written
//!   without the key where that is allowed, 2 no MAC, 3 wrong MAC (for
//!   `catalog verify`, which lists every fault rather than stopping).
//!
//! A column that is NULL is left out of the encoding, so adding a column
//! (NULL in existing rows) keeps every MAC valid.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::types::ValueRef;
use rusqlite::Connection;

use crate::RowAuth;

/// Tables whose rows carry a MAC, and whether a process without the key
/// (an embedded command run without the passphrase: raw copies, snapshots,
/// mirrors) may write rows into them unsealed.
pub(crate) const TABLES: &[(&str, bool)] = &[
    ("settings", false),
    ("keys", false),
    ("volumes", false),
    ("policies", false),
    ("hsm_rules", false),
    ("principals", false),
    ("grants", false),
    ("requests", false),
    ("kbks", false),
    ("keystore_backups", false),
    ("vault_backups", false),
    ("custodian_keys", false),
    ("escrow_shares", false),
    ("drills", false),
    ("backups", true),
    ("snapshots", true),
    ("mirrors", true),
];

/// Settings a command without the key writes (the deletion counter of
/// `gc`): they may be unsealed.
pub(crate) const KEYLESS_SETTINGS: &[&str] = &["trash.deletions"];

/// The setting a catalog key rotation changes, in the transaction that
/// seals every row under the next key.
pub(crate) const GENERATION_SETTING: &str = "catalog.key.generation";

/// The setting that says the catalog's rows were sealed: from then on a
/// process without the key may not write a strict table.
pub(crate) const SEALED_SETTING: &str = "catalog.sealed";

/// What an error from the SQL functions starts with, to be told apart.
pub(crate) const FAULT: &str = "custos-row-fault";
pub(crate) const KEYLESS: &str = "custos-keyless-write";

/// One authenticated table: its columns (without `mac`), and its key.
#[derive(Clone, Debug)]
pub(crate) struct Table {
    pub cols: Vec<String>,
    pub pk: Vec<String>,
    pub keyless: bool,
}

/// What every connection of one repository shares.
#[derive(Default)]
pub(crate) struct Shared {
    pub auth: RwLock<Option<Arc<dyn RowAuth>>>,
    /// The NEXT key's MACs while a rotation seals the rows again.
    pub next: RwLock<Option<Arc<dyn RowAuth>>>,
    /// The key generation this process last sealed a row under (`None`:
    /// none yet).
    pub seen: std::sync::Mutex<Option<Option<String>>>,
    /// The catalog was sealed (its rows carry MACs).
    pub sealed: AtomicBool,
    pub tables: HashMap<&'static str, Table>,
    /// [`Shared::check_expr`] of each table under its own name, made once.
    pub checks: HashMap<&'static str, String>,
}

impl Shared {
    /// Read the tables' columns from the schema.
    pub fn load(conn: &Connection) -> rusqlite::Result<Self> {
        let mut tables = HashMap::new();
        for &(name, keyless) in TABLES {
            let mut stmt = conn.prepare(&format!("PRAGMA table_info({name})"))?;
            let mut cols: Vec<(String, i64)> =
                stmt.query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, i64>(5)?)))?.collect::<Result<_, _>>()?;
            cols.retain(|(c, _)| c != "mac");
            let mut pk: Vec<(i64, String)> =
                cols.iter().filter(|(_, k)| *k > 0).map(|(c, k)| (*k, c.clone())).collect();
            pk.sort();
            tables.insert(
                name,
                Table {
                    cols: cols.into_iter().map(|(c, _)| c).collect(),
                    pk: pk.into_iter().map(|(_, c)| c).collect(),
                    keyless,
                },
            );
        }
        let sealed: Option<String> = conn
            .query_row("SELECT value FROM settings WHERE key = ?1", [SEALED_SETTING], |r| r.get(0))
            .or_else(|e| if matches!(e, rusqlite::Error::QueryReturnedNoRows) { Ok(None) } else { Err(e) })?;
        let mut s = Self {
            auth: RwLock::new(None),
            next: RwLock::new(None),
            seen: Default::default(),
            sealed: AtomicBool::new(sealed.is_some()),
            tables,
            checks: HashMap::new(),
        };
        s.checks = TABLES.iter().map(|&(t, _)| (t, s.check_expr(t, t))).collect();
        Ok(s)
    }

    fn auth(&self) -> Option<Arc<dyn RowAuth>> {
        self.auth.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `'name', prefix.name, …` for every column of `table`.
    fn args(&self, table: &str, prefix: &str) -> String {
        self.tables[table].cols.iter().map(|c| format!("'{c}', {prefix}{c}")).collect::<Vec<_>>().join(", ")
    }

    /// The expression a read selects to check a row of `table` (named
    /// `alias` in the query).
    pub fn check_expr(&self, table: &str, alias: &str) -> String {
        format!("custos_row_ok('{table}', {alias}.mac, {})", self.args(table, &format!("{alias}.")))
    }

    /// The expression `catalog verify` selects.
    pub fn state_expr(&self, table: &str) -> String {
        format!("custos_row_state('{table}', mac, {})", self.args(table, ""))
    }

    /// The expression that computes a row's MAC from its columns.
    pub fn mac_expr(&self, table: &str, prefix: &str) -> String {
        format!(
            "custos_mac('{table}', (SELECT value FROM main.settings WHERE key = '{GENERATION_SETTING}'), {})",
            self.args(table, prefix)
        )
    }

    /// The expression that computes a row's MAC under the NEXT key.
    pub fn next_mac_expr(&self, table: &str) -> String {
        format!("custos_mac_next('{table}', {})", self.args(table, ""))
    }

    /// The writer's triggers: seal each inserted or updated row, and check
    /// a row before an update replaces it.
    pub fn triggers(&self) -> String {
        let mut sql = String::new();
        for &(name, _) in TABLES {
            let t = &self.tables[name];
            let key = t.pk.iter().map(|c| format!("{c} IS NEW.{c}")).collect::<Vec<_>>().join(" AND ");
            let seal = format!("UPDATE {name} SET mac = {} WHERE {key};", self.mac_expr(name, "NEW."));
            sql.push_str(&format!(
                "CREATE TEMP TRIGGER IF NOT EXISTS custos_seal_{name}_insert AFTER INSERT ON main.{name} BEGIN {seal} END;\n"
            ));
            sql.push_str(&format!(
                "CREATE TEMP TRIGGER IF NOT EXISTS custos_seal_{name}_update AFTER UPDATE OF {} ON main.{name} BEGIN SELECT {}; {seal} END;\n",
                t.cols.join(", "),
                self.check_expr(name, "OLD"),
            ));
        }
        sql
    }
}

/// A column's value as a row's MAC covers it: the same for every backend,
/// so a row keeps its MAC when the catalog moves between them (ADR 0020).
#[derive(Clone, Copy, Debug)]
pub enum Col<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a [u8]),
    Blob(&'a [u8]),
}

/// The canonical message a row's MAC covers (ADR 0019): the version tag, the
/// table, then each non-NULL column in schema order as name, type tag,
/// length and value.
pub fn row_message<'a>(table: &str, cols: impl IntoIterator<Item = (&'a [u8], Col<'a>)>) -> Vec<u8> {
    let mut msg = Vec::with_capacity(256);
    msg.extend_from_slice(b"custos-catalog-row-v1\0");
    msg.extend_from_slice(table.as_bytes());
    msg.push(0);
    for (name, value) in cols {
        let (tag, bytes): (u8, std::borrow::Cow<'_, [u8]>) = match value {
            Col::Null => continue,
            Col::Int(n) => (b'i', n.to_be_bytes().to_vec().into()),
            Col::Real(f) => (b'r', f.to_bits().to_be_bytes().to_vec().into()),
            Col::Text(s) => (b't', s.into()),
            Col::Blob(b) => (b'b', b.into()),
        };
        msg.extend_from_slice(name);
        msg.push(0);
        msg.push(tag);
        msg.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        msg.extend_from_slice(&bytes);
    }
    msg
}

/// The canonical encoding a MAC covers, from `table` and the (name, value)
/// pairs of the SQL function's arguments starting at `from`.
fn encode(shared: &Shared, table: &str, ctx: &Context<'_>, from: usize) -> rusqlite::Result<Vec<u8>> {
    if !shared.tables.contains_key(table) {
        return Err(user(format!("{table} is not an authenticated table")));
    }
    let mut cols = Vec::with_capacity((ctx.len() - from) / 2);
    let mut i = from;
    while i + 1 < ctx.len() {
        let name = match ctx.get_raw(i) {
            ValueRef::Text(n) => n,
            _ => return Err(user("a column name must be text".into())),
        };
        let value = match ctx.get_raw(i + 1) {
            ValueRef::Null => Col::Null,
            ValueRef::Integer(n) => Col::Int(n),
            ValueRef::Real(f) => Col::Real(f),
            ValueRef::Text(s) => Col::Text(s),
            ValueRef::Blob(b) => Col::Blob(b),
        };
        cols.push((name, value));
        i += 2;
    }
    Ok(row_message(table, cols))
}

/// A row's key as messages name it (`column=value` for each key column);
/// made only when a message needs it.
fn row_key(shared: &Shared, table: &str, ctx: &Context<'_>, from: usize) -> String {
    let Some(t) = shared.tables.get(table) else { return String::new() };
    let mut key = Vec::new();
    let mut i = from;
    while i + 1 < ctx.len() {
        if let ValueRef::Text(n) = ctx.get_raw(i) {
            if t.pk.iter().any(|p| p.as_bytes() == n) {
                key.push(format!("{}={}", String::from_utf8_lossy(n), shown(ctx.get_raw(i + 1))));
            }
        }
        i += 2;
    }
    key.join(" ")
}

/// A value as a message shows it (short; never a blob's bytes).
fn shown(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(n) => n.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(s) => format!("'{}'", String::from_utf8_lossy(s).chars().take(80).collect::<String>()),
        ValueRef::Blob(b) => format!("<{} bytes>", b.len()),
    }
}

fn user(msg: String) -> rusqlite::Error {
    rusqlite::Error::UserFunctionError(msg.into())
}

fn text_arg(ctx: &Context<'_>, i: usize) -> rusqlite::Result<String> {
    match ctx.get_raw(i) {
        ValueRef::Text(s) => Ok(String::from_utf8_lossy(s).into_owned()),
        _ => Err(user("the table name must be text".into())),
    }
}

/// Whether a row of `table` may lack a MAC because a process without the
/// key wrote it.
fn keyless_allowed(shared: &Shared, table: &str, ctx: &Context<'_>, from: usize) -> bool {
    if shared.tables.get(table).is_some_and(|t| t.keyless) {
        return true;
    }
    if table != "settings" {
        return false;
    }
    // settings: key, value: the key is the first pair.
    matches!((ctx.get_raw(from), ctx.get_raw(from + 1)), (ValueRef::Text(n), ValueRef::Text(k)) if n == b"key" && KEYLESS_SETTINGS.iter().any(|s| s.as_bytes() == k))
}

/// The state of one row: 0 sealed, 1 unsealed where allowed, 2 no MAC, 3 wrong MAC.
fn state(shared: &Shared, auth: &dyn RowAuth, ctx: &Context<'_>) -> rusqlite::Result<(u8, String)> {
    let table = text_arg(ctx, 0)?;
    if !shared.tables.contains_key(table.as_str()) {
        return Err(user(format!("{table} is not an authenticated table")));
    }
    let state = match ctx.get_raw(1) {
        ValueRef::Null if keyless_allowed(shared, &table, ctx, 2) => 1,
        ValueRef::Null => 2,
        ValueRef::Blob(mac) => {
            // Only a sealed row's columns are encoded: a keyless one (every
            // backup record) costs no copy of its values.
            let msg = encode(shared, &table, ctx, 2)?;
            let want = auth.mac(&msg).map_err(user)?;
            if constant_time_eq(mac, &want)
                || auth.others(&msg).map_err(user)?.iter().any(|other| constant_time_eq(mac, other))
            {
                0
            } else {
                3
            }
        }
        _ => 3,
    };
    Ok((state, table))
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Register the functions on a connection.
pub(crate) fn register(conn: &Connection, shared: &Arc<Shared>) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC | FunctionFlags::SQLITE_DIRECTONLY;
    let s = shared.clone();
    conn.create_scalar_function("custos_mac", -1, flags, move |ctx| {
        let table = text_arg(ctx, 0)?;
        match s.auth() {
            Some(a) => {
                let generation = match ctx.get_raw(1) {
                    ValueRef::Text(g) => Some(String::from_utf8_lossy(g).into_owned()),
                    _ => None,
                };
                let mut seen = s.seen.lock().unwrap_or_else(|p| p.into_inner());
                if seen.as_ref() != Some(&generation) {
                    a.refresh().map_err(user)?;
                    *seen = Some(generation);
                }
                drop(seen);
                Ok(Some(a.seal(&encode(&s, &table, ctx, 2)?).map_err(user)?.to_vec()))
            }
            None if !s.sealed.load(Ordering::Relaxed) || keyless_allowed(&s, &table, ctx, 2) => Ok(None),
            None => Err(user(format!("{KEYLESS}\t{table}\t{}", row_key(&s, &table, ctx, 2)))),
        }
    })?;
    let s = shared.clone();
    conn.create_scalar_function("custos_mac_next", -1, flags, move |ctx| {
        let table = text_arg(ctx, 0)?;
        let next = s.next.read().unwrap_or_else(|p| p.into_inner()).clone();
        let next = next.ok_or_else(|| user("no catalog key rotation is under way".into()))?;
        Ok(next.mac(&encode(&s, &table, ctx, 1)?).map_err(user)?.to_vec())
    })?;
    let s = shared.clone();
    conn.create_scalar_function("custos_row_ok", -1, flags, move |ctx| {
        let Some(auth) = s.auth() else { return Ok(1) };
        let (state, table) = state(&s, auth.as_ref(), ctx)?;
        let why = match state {
            0 | 1 => return Ok(1),
            2 => "has no MAC",
            _ => "does not match its MAC",
        };
        Err(user(format!("{FAULT}\t{table}\t{}\t{why}", row_key(&s, &table, ctx, 2))))
    })?;
    let s = shared.clone();
    conn.create_scalar_function("custos_row_state", -1, flags, move |ctx| {
        let auth = s.auth().ok_or_else(|| user("checking the catalog needs its key: the HSM is not open".into()))?;
        Ok(state(&s, auth.as_ref(), ctx)?.0 as i64)
    })?;
    Ok(())
}

/// A fault or keyless refusal from the functions, if `e` is one: (kind,
/// table, row, why).
pub(crate) fn parse(e: &rusqlite::Error) -> Option<(&'static str, String, String, String)> {
    let text = e.to_string();
    for kind in [FAULT, KEYLESS] {
        if let Some(at) = text.find(kind) {
            let mut f = text[at..].split('\t').skip(1);
            let table = f.next().unwrap_or_default().to_string();
            let row = f.next().unwrap_or_default().to_string();
            let why = f.next().unwrap_or_default().to_string();
            return Some((kind, table, row, why));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoding is a format (rows keep their MACs across backends and
    /// releases): pinned byte for byte.
    #[test]
    fn the_row_message_is_pinned() {
        let msg = row_message(
            "grants",
            [
                (&b"principal"[..], Col::Text(b"clerk")),
                (b"kind", Col::Null),
                (b"created_at", Col::Int(-2)),
                (b"weight", Col::Real(0.5)),
                (b"blob", Col::Blob(&[0xff])),
            ],
        );
        let mut want = b"custos-catalog-row-v1\0grants\0".to_vec();
        want.extend(b"principal\0t\0\0\0\0\0\0\0\x05clerk");
        want.extend(b"created_at\0i\0\0\0\0\0\0\0\x08\xff\xff\xff\xff\xff\xff\xff\xfe");
        want.extend(b"weight\0r\0\0\0\0\0\0\0\x08\x3f\xe0\0\0\0\0\0\0");
        want.extend(b"blob\0b\0\0\0\0\0\0\0\x01\xff");
        assert_eq!(msg, want);
    }
}
