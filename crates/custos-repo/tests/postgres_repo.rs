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
