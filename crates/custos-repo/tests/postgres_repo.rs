//! The repository conformance suite on a real PostgreSQL (ADR 0020): the
//! same contract SQLite meets, run unchanged, and the row authentication
//! contract with edits made through a connection of its own, the way a
//! tool outside Custos would make them.

use custos_repo::{conformance, PgRepository, RepoError, Repository};
use custos_testing::Postgres;

#[test]
fn conformance_on_postgres() {
    let pg = Postgres::start();
    let url = pg.url("contract");
    pg.create_database("contract");
    conformance::run(&PgRepository::open(&url).unwrap());
    let again = PgRepository::open(&url).unwrap();
    assert!(!again.keys().unwrap().is_empty(), "data survives reopening");
}

#[test]
fn rows_are_authenticated_on_postgres() {
    let pg = Postgres::start();
    let params = pg.create_database("rows");
    let url = pg.url("rows");
    let repo = PgRepository::open(&url).unwrap();
    let raw = |sql: &str| {
        let mut c = postgres::Client::connect(&params, postgres::NoTls).unwrap();
        c.batch_execute(sql).unwrap();
    };
    let reopen = || PgRepository::open(&url).map(|r| Box::new(r) as Box<dyn Repository>);
    let plant = "CREATE FUNCTION evil() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN UPDATE principals SET role = 'security-admin'; RETURN NEW; END $$;
                 CREATE TRIGGER evil AFTER INSERT ON settings FOR EACH ROW EXECUTE FUNCTION evil();";
    conformance::row_auth(&repo, &raw, &reopen, (plant, "DROP TRIGGER evil ON settings; DROP FUNCTION evil();"));
}

#[test]
fn a_database_that_is_not_a_catalog_is_refused() {
    let pg = Postgres::start();
    let params = pg.create_database("other");
    let mut c = postgres::Client::connect(&params, postgres::NoTls).unwrap();
    c.batch_execute("CREATE TABLE keys (label TEXT PRIMARY KEY)").unwrap();
    match PgRepository::open(&pg.url("other")) {
        Err(e @ RepoError::NotACatalog { .. }) => assert!(e.to_string().contains("no Custos schema"), "{e}"),
        Err(e) => panic!("expected NotACatalog, got {e}"),
        Ok(_) => panic!("a database holding foreign tables of Custos's names must be refused"),
    }
    let n: i64 = c.query_one("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", &[]).unwrap().get(0);
    assert_eq!(n, 1, "nothing was made in it");
    drop(c);
    pg.create_database("newer");
    drop(PgRepository::open(&pg.url("newer")).unwrap());
    let mut c = postgres::Client::connect(&pg.params("newer"), postgres::NoTls).unwrap();
    c.batch_execute("INSERT INTO schema_version VALUES (99)").unwrap();
    match PgRepository::open(&pg.url("newer")) {
        Err(e @ RepoError::SchemaTooNew { found: 99, .. }) => assert!(e.to_string().contains("upgrade Custos"), "{e}"),
        Err(e) => panic!("expected SchemaTooNew, got {e}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
}

#[test]
fn an_unreachable_server_is_named_not_hung_on() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("postgres://custos@/nowhere?host={}&port=1", dir.path().display());
    let started = std::time::Instant::now();
    let e = PgRepository::open(&url).err().expect("no server there");
    assert!(matches!(e, RepoError::Postgres { .. }), "{e}");
    assert!(e.to_string().contains("PostgreSQL is running"), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "gave up in time");
}

/// A whole catalog moves from SQLite to PostgreSQL and back (ADR 0020):
/// every row, each with its MAC unchanged, so the copy verifies under the
/// same catalog key; a target that holds anything is refused; ids handed
/// out after the move follow those that came with it.
#[test]
fn a_catalog_moves_between_backends_with_its_macs() {
    use custos_repo::{copy, SqliteRepository};
    use std::sync::Arc;
    let pg = Postgres::start();
    pg.create_database("moved");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("custos.db");
    let sqlite = SqliteRepository::open(&src).unwrap();
    conformance::run(&sqlite);
    let auth: Arc<dyn custos_repo::RowAuth> = Arc::new(conformance::TestRowAuth(7));
    sqlite.set_row_auth(Some(auth.clone()));
    sqlite.seal_rows().unwrap();
    let before = sqlite.row_counts().unwrap();
    assert!(before.iter().filter(|(_, n)| *n > 0).count() >= 15, "the contract left rows in most tables: {before:?}");
    let (keys, datasets, backups) = (
        format!("{:?}", sqlite.keys().unwrap()),
        format!("{:?}", sqlite.datasets().unwrap()),
        format!("{:?}", sqlite.backups().unwrap()),
    );
    let (audit, principals) = (sqlite.audit_rows(0).unwrap(), format!("{:?}", sqlite.principals().unwrap()));
    let sealed_rows = sqlite.verify_rows().unwrap().rows;
    let max = sqlite.requests().unwrap().iter().map(|r| r.id).max().unwrap_or(0);

    let target = PgRepository::open(&pg.url("moved")).unwrap();
    let mut seen = None;
    let counts = copy::sqlite_to_postgres(&src, &target, |c| {
        seen = Some(c.clone());
        Ok(())
    })
    .unwrap();
    assert_eq!(counts, before);
    assert_eq!(seen.as_ref(), Some(&before), "the check ran on the committed copy");
    assert_eq!(target.row_counts().unwrap(), before);
    target.set_row_auth(Some(auth.clone()));
    let check = target.verify_rows().unwrap();
    assert!(check.faults.is_empty(), "{:?}", check.faults);
    assert_eq!(check.rows, sealed_rows);
    assert_eq!(format!("{:?}", target.keys().unwrap()), keys);
    assert_eq!(format!("{:?}", target.datasets().unwrap()), datasets);
    assert_eq!(format!("{:?}", target.backups().unwrap()), backups);
    assert_eq!(target.audit_rows(0).unwrap(), audit);
    assert_eq!(format!("{:?}", target.principals().unwrap()), principals);
    // The source is retired: a writer that waited for it while it moved
    // fails rather than write where nobody will read.
    assert!(sqlite.set_setting("late", "write").is_err(), "a write into the catalog left behind must fail");

    // Anything in the target: refused, and nothing is added to it.
    match copy::sqlite_to_postgres(&src, &target, |_| Ok(())) {
        Err(e @ RepoError::NotEmpty { .. }) => assert!(e.to_string().contains("give an empty database"), "{e}"),
        other => panic!("a target holding a catalog must be refused: {other:?}"),
    }
    assert_eq!(target.row_counts().unwrap(), before);

    // New ids follow the copied ones.
    let id = target
        .insert_request(&custos_repo::RequestRow {
            id: 0,
            action: "key-destroy".into(),
            args: "[]".into(),
            requested_by: "alice".into(),
            created_at: jiff::Timestamp::now(),
            expires_at: jiff::Timestamp::now(),
            state: "pending".into(),
            decided_by: None,
            decided_at: None,
        })
        .unwrap();
    assert!(id > max, "id {id} after {max}");

    // And back: a SQLite file that verifies under the same key.
    let back = dir.path().join("back.db");
    target.copy_to(&back).unwrap();
    assert!(target.copy_to(&back).is_err(), "an existing file is never overwritten");
    let again = SqliteRepository::open_existing(&back).unwrap();
    again.set_row_auth(Some(auth));
    assert!(again.verify_rows().unwrap().faults.is_empty());
    assert_eq!(again.row_counts().unwrap(), target.row_counts().unwrap());
    assert_eq!(format!("{:?}", again.keys().unwrap()), keys);
}

/// A request whose server died while carrying it out is neither run again
/// nor reported done: its outcome is unknown (the server's session lock is
/// gone with its connection).
#[test]
fn an_idempotency_key_whose_server_died_is_orphaned() {
    use custos_repo::Idempotency;
    let pg = Postgres::start();
    pg.create_database("idem");
    let url = pg.url("idem");
    let first = PgRepository::open(&url).unwrap();
    let second = PgRepository::open(&url).unwrap();
    assert_eq!(second.idempotency_begin("k", "alice", &[1; 32]).unwrap(), Idempotency::New);
    assert_eq!(first.idempotency_begin("k", "alice", &[1; 32]).unwrap(), Idempotency::Running, "its server lives");
    drop(second);
    let t = std::time::Instant::now();
    loop {
        match first.idempotency_begin("k", "alice", &[1; 32]).unwrap() {
            Idempotency::Orphaned => break,
            Idempotency::Running if t.elapsed() < std::time::Duration::from_secs(10) => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            other => panic!("expected the attempt to be orphaned, got {other:?}"),
        }
    }
}

/// Over TCP the catalog is reached with TLS, the server's certificate
/// verified against `sslrootcert` (or the system's roots), name included;
/// the server here lets TCP connections in only with TLS, so a catalog that
/// opens over TCP was encrypted.
#[test]
fn tls_to_the_catalog_is_used_and_verified() {
    let pg = Postgres::start_tls();
    pg.create_database("tls");
    let ca = pg.ca_file();
    let at = |host: &str, extra: &str| format!("postgres://custos@{host}:{}/tls?{extra}", pg.port());
    let repo = PgRepository::open(&at("127.0.0.1", &format!("sslmode=require&sslrootcert={}", ca.display()))).unwrap();
    repo.set_setting("chunk.size", "65536").unwrap();
    assert_eq!(repo.setting("chunk.size").unwrap().as_deref(), Some("65536"));
    // The default (prefer) uses TLS when offered; the key=value form too.
    let kv = format!("host=localhost port={} user=custos dbname=tls sslrootcert={}", pg.port(), ca.display());
    assert_eq!(PgRepository::open(&kv).unwrap().setting("chunk.size").unwrap().as_deref(), Some("65536"));
    let refused = |url: &str, words: &[&str]| {
        let e = PgRepository::open(url).err().expect("refused").to_string();
        assert!(words.iter().any(|w| e.contains(w)), "{e}");
        assert!(e.contains("catalog"), "{e}");
        e
    };
    // A CA the system does not know: the certificate is not trusted.
    let untrusted = refused(&at("127.0.0.1", "sslmode=require"), &["certificate", "UnknownIssuer"]);
    assert!(untrusted.contains("sslrootcert=FILE"), "the remedy is the CA to trust: {untrusted}");
    // Without TLS the server lets nobody in over TCP.
    refused(&at("127.0.0.1", "sslmode=disable"), &["no encryption", "pg_hba.conf"]);
    // A CA file that is not there, or holds no certificate, is named.
    let missing = refused(&at("127.0.0.1", "sslrootcert=/nonexistent/ca.pem"), &["/nonexistent/ca.pem"]);
    assert!(!missing.contains("PostgreSQL is running"), "{missing}");
    let empty = pg.socket_dir().join("data").join("PG_VERSION");
    refused(&at("127.0.0.1", &format!("sslrootcert={}", empty.display())), &["no certificate"]);
}

/// Connections PostgreSQL dropped while they sat in the pool (a restart, a
/// failover, an administrator's `pg_terminate_backend`) are not handed to
/// a transaction: it starts on a fresh connection and nothing is lost; a
/// read after an idle spell checks its connection first.
#[test]
fn connections_the_server_dropped_are_replaced() {
    let pg = Postgres::start();
    let params = pg.create_database("dropped");
    let repo = PgRepository::open(&pg.url("dropped")).unwrap();
    // Several connections in the pool, all of which will be dead.
    std::thread::scope(|s| {
        for t in 0..6 {
            let repo = &repo;
            s.spawn(move || {
                for i in 0..20 {
                    repo.set_setting(&format!("busy.{t}"), &i.to_string()).unwrap();
                }
            });
        }
    });
    repo.set_setting("probe", "1").unwrap();
    assert_eq!(repo.setting("probe").unwrap().as_deref(), Some("1"));
    let mut admin = postgres::Client::connect(&params, postgres::NoTls).unwrap();
    let kill = |admin: &mut postgres::Client| {
        let n: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity
                 WHERE application_name = 'custos' AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(n > 0, "the repository's pooled connections were there to drop");
        n
    };
    let dropped = kill(&mut admin);
    assert!(dropped > 1, "more than one connection was pooled ({dropped})");
    repo.set_setting("probe", "2").expect("a write right after its connections were dropped");
    kill(&mut admin);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert_eq!(repo.setting("probe").unwrap().as_deref(), Some("2"), "a read after an idle spell");
}
