//! The PostgreSQL schema (ADR 0020) against the one SQLite's migrations
//! leave, on a real PostgreSQL: the same tables, the same columns in the
//! same order with matching types and nullability, the same primary keys
//! and the same indexes. The backends cannot drift apart unnoticed.

use std::collections::BTreeMap;

use custos_repo::{pg, SqliteRepository};

/// Per table: (column, type, not null) in order, and the primary key.
type Schema = BTreeMap<String, (Vec<(String, String, bool)>, Vec<String>)>;

fn sqlite_schema() -> (Schema, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("custos.db");
    drop(SqliteRepository::open(&path).unwrap());
    let c = rusqlite::Connection::open(&path).unwrap();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut schema = Schema::new();
    for t in tables {
        let mut cols = Vec::new();
        let mut pk: Vec<(i64, String)> = Vec::new();
        let mut st = c.prepare(&format!("PRAGMA table_info({t})")).unwrap();
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?, r.get::<_, i64>(5)?))
            })
            .unwrap();
        for row in rows {
            let (name, ty, notnull, key) = row.unwrap();
            let ty = match ty.as_str() {
                "INTEGER" => "bigint",
                "BLOB" => "bytea",
                "TEXT" => "text",
                other => panic!("{t}.{name}: SQLite type {other} has no PostgreSQL counterpart here"),
            };
            // A key column is NOT NULL in PostgreSQL whatever SQLite says.
            cols.push((name.clone(), ty.to_string(), notnull == 1 || key > 0));
            if key > 0 {
                pk.push((key, name));
            }
        }
        pk.sort();
        schema.insert(t, (cols, pk.into_iter().map(|(_, n)| n).collect()));
    }
    let indexes: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    (schema, indexes)
}

fn postgres_schema(c: &mut postgres::Client) -> (Schema, Vec<String>) {
    let mut schema = Schema::new();
    let tables = c
        .query(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = 'public' AND table_name <> 'schema_version' ORDER BY 1",
            &[],
        )
        .unwrap();
    for t in tables {
        let t: String = t.get(0);
        let cols = c
            .query(
                "SELECT column_name::text, data_type::text, is_nullable::text FROM information_schema.columns
                 WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
                &[&t],
            )
            .unwrap()
            .into_iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, String>(2) == "NO"))
            .collect();
        let pk = c
            .query(
                "SELECT a.attname::text FROM pg_index i
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                 WHERE i.indrelid = $1::text::regclass AND i.indisprimary
                 ORDER BY array_position(i.indkey, a.attnum)",
                &[&t],
            )
            .unwrap()
            .into_iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        schema.insert(t, (cols, pk));
    }
    // Secondary indexes only: SQLite lists its own for keys and UNIQUE
    // under sqlite_autoindex names, left out above.
    let indexes = c
        .query(
            "SELECT c.relname::text FROM pg_index x
             JOIN pg_class c ON c.oid = x.indexrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND NOT x.indisprimary AND NOT x.indisunique
             ORDER BY 1",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    (schema, indexes)
}

#[test]
fn the_postgresql_schema_matches_sqlites_column_for_column() {
    assert_eq!(
        pg::SCHEMA_VERSION,
        SqliteRepository::schema_version(),
        "a new SQLite migration needs its PostgreSQL counterpart (ADR 0020)"
    );
    let (lite, lite_indexes) = sqlite_schema();
    let server = custos_testing::Postgres::start();
    let mut c = postgres::Client::connect(&server.create_database("schema"), postgres::NoTls).unwrap();
    c.batch_execute(pg::BASELINE).expect("the baseline applies to an empty database");
    let v: i64 = c.query_one("SELECT version FROM schema_version", &[]).unwrap().get(0);
    assert_eq!(v, pg::BASELINE_VERSION);
    // The repository brings it up to date with the later migrations.
    drop(custos_repo::PgRepository::open(&server.url("schema")).unwrap());
    let v: i64 = c.query_one("SELECT version FROM schema_version", &[]).unwrap().get(0);
    assert_eq!(v, pg::SCHEMA_VERSION);
    let (pgs, pg_indexes) = postgres_schema(&mut c);
    assert_eq!(lite.keys().collect::<Vec<_>>(), pgs.keys().collect::<Vec<_>>(), "the same tables");
    for (t, (cols, pk)) in &lite {
        let (pcols, ppk) = &pgs[t];
        assert_eq!(cols, pcols, "table {t}: columns (name, type, not null), in order");
        assert_eq!(pk, ppk, "table {t}: primary key");
    }
    assert_eq!(lite_indexes, pg_indexes, "the same secondary indexes");
}
