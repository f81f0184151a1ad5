//! The pool's connections and the statements prepared on each.
//!
//! A statement given as text to the `postgres` client costs two round
//! trips (prepare, then run) and a parse and plan in the server every
//! time. Each pooled connection here keeps the statements it prepared,
//! by their text, so a statement the catalog runs again (all but a few:
//! the text is fixed, values are parameters) costs one round trip, and
//! PostgreSQL skips parsing it. Prepared statements belong to their
//! session, not to a transaction: one prepared in a transaction that
//! rolled back still stands.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::{Row, Statement};

use super::{CatalogTls, P};

/// At most this many statements are kept per connection; the set is
/// emptied when it is reached (statement texts are fixed, so only a
/// caller building texts from data could get there).
const KEPT: usize = 256;

/// A connection that has been idle longer than this is checked (one empty
/// query) before it is handed out again: PostgreSQL may have restarted
/// or dropped it meanwhile. One used more recently is trusted.
const TRUST_FOR: Duration = Duration::from_secs(1);

/// One connection to the catalog and the statements prepared on it.
pub(crate) struct Conn {
    pub(crate) client: postgres::Client,
    kept: HashMap<String, Statement>,
    last_used: Instant,
    /// A transaction was begun and not ended (the work in it failed to
    /// end it, or panicked): the pool drops the connection.
    in_tx: bool,
    /// The server ended this connection.
    gone: bool,
}

impl Conn {
    /// Statements on this connection, outside a transaction.
    pub(crate) fn db(&mut self) -> Db<'_> {
        Db(self)
    }

    /// Mark this connection as ended by the server: the pool drops it.
    pub(super) fn broken(&mut self) {
        self.gone = true;
    }

    /// Start a transaction. A connection PostgreSQL dropped since its
    /// last use fails here, before anything ran ([`postgres::Error::is_closed`]).
    pub(super) fn begin(&mut self) -> Result<(), postgres::Error> {
        if let Err(e) = self.client.batch_execute("BEGIN") {
            self.gone |= dropped(&e);
            return Err(e);
        }
        self.in_tx = true;
        Ok(())
    }

    /// End the transaction: commit it, or roll it back.
    pub(super) fn end(&mut self, commit: bool) -> Result<(), postgres::Error> {
        let r = self.client.batch_execute(if commit { "COMMIT" } else { "ROLLBACK" });
        if r.is_ok() {
            self.in_tx = false;
        }
        r
    }

    /// Note that the connection is handed out now.
    pub(super) fn checked_out(&mut self) {
        self.last_used = Instant::now();
    }

    /// Whether this connection should be checked before it is used.
    pub(super) fn stale(&self) -> bool {
        self.last_used.elapsed() > TRUST_FOR
    }

    pub(crate) fn query(&mut self, sql: &str, p: &[P<'_>]) -> Result<Vec<Row>, postgres::Error> {
        self.db().query(sql, p)
    }

    pub(crate) fn query_opt(&mut self, sql: &str, p: &[P<'_>]) -> Result<Option<Row>, postgres::Error> {
        self.db().query_opt(sql, p)
    }

    pub(crate) fn execute(&mut self, sql: &str, p: &[P<'_>]) -> Result<u64, postgres::Error> {
        self.db().execute(sql, p)
    }

    pub(crate) fn batch_execute(&mut self, sql: &str) -> Result<(), postgres::Error> {
        self.client.batch_execute(sql)
    }
}

/// Whether `e` says the connection is gone: closed, or ended by the
/// server (an administrator's or a shutdown's FATAL, class 57P), which a
/// connection idle in the pool reads first on its next use.
pub(super) fn dropped(e: &postgres::Error) -> bool {
    e.is_closed() || e.code().is_some_and(|c| c.code().starts_with("57P"))
}

/// Makes the pool's connections (with the catalog's TLS and settings).
pub(crate) struct Manager {
    pub(super) config: postgres::Config,
    pub(super) tls: CatalogTls,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Conn, postgres::Error> {
        let client = self.config.connect(self.tls.clone())?;
        Ok(Conn { client, kept: HashMap::new(), last_used: Instant::now(), in_tx: false, gone: false })
    }

    fn is_valid(&self, c: &mut Conn) -> Result<(), postgres::Error> {
        c.client.simple_query("").map(|_| ())
    }

    fn has_broken(&self, c: &mut Conn) -> bool {
        c.in_tx || c.gone || c.client.is_closed()
    }
}

/// Statements run on one connection (in a transaction or not), each
/// prepared once per connection.
pub(crate) struct Db<'a>(&'a mut Conn);

impl Db<'_> {
    /// The prepared statement for `sql`: the one kept, or a new one.
    fn statement(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(st) = self.0.kept.get(sql) {
            return Ok(st.clone());
        }
        let st = self.0.client.prepare(sql)?;
        if self.0.kept.len() >= KEPT {
            self.0.kept.clear();
        }
        self.0.kept.insert(sql.to_owned(), st.clone());
        Ok(st)
    }

    /// Forget `sql`'s statement when the error says it no longer stands
    /// (the connection failed, or the schema changed under its plan), so
    /// that the next use prepares it again.
    fn after<T>(&mut self, sql: &str, r: Result<T, postgres::Error>) -> Result<T, postgres::Error> {
        if let Err(e) = &r {
            let gone = dropped(e)
                || e.code().is_some_and(|c| {
                    *c == SqlState::FEATURE_NOT_SUPPORTED || *c == SqlState::INVALID_SQL_STATEMENT_NAME
                });
            if gone {
                self.0.kept.remove(sql);
            }
            if dropped(e) {
                self.0.gone = true;
            }
        }
        r
    }

    /// Run `sql`'s statement with `f`. A failure to prepare it counts as
    /// the run's failure: a dropped connection is noticed either way.
    fn run<T>(
        &mut self,
        sql: &str,
        f: impl FnOnce(&mut postgres::Client, &Statement) -> Result<T, postgres::Error>,
    ) -> Result<T, postgres::Error> {
        let r = self.statement(sql).and_then(|st| f(&mut self.0.client, &st));
        self.after(sql, r)
    }

    pub(crate) fn query(&mut self, sql: &str, p: &[P<'_>]) -> Result<Vec<Row>, postgres::Error> {
        self.run(sql, |c, st| c.query(st, p))
    }

    pub(crate) fn query_one(&mut self, sql: &str, p: &[P<'_>]) -> Result<Row, postgres::Error> {
        self.run(sql, |c, st| c.query_one(st, p))
    }

    pub(crate) fn query_opt(&mut self, sql: &str, p: &[P<'_>]) -> Result<Option<Row>, postgres::Error> {
        self.run(sql, |c, st| c.query_opt(st, p))
    }

    pub(crate) fn execute(&mut self, sql: &str, p: &[P<'_>]) -> Result<u64, postgres::Error> {
        self.run(sql, |c, st| c.execute(st, p))
    }
}
