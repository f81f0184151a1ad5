//! The catalog on PostgreSQL (ADR 0020). This first step holds the schema,
//! at the version the SQLite history has reached; the repository over it
//! follows.

/// The schema version [`BASELINE`] is at. A test holds it equal to
/// [`crate::SqliteRepository::schema_version`]: a new SQLite migration
/// needs its PostgreSQL counterpart.
pub const BASELINE_VERSION: i64 = 16;

/// The whole schema at [`BASELINE_VERSION`], in PostgreSQL's dialect.
pub const BASELINE: &str = include_str!("postgres/schema.sql");
