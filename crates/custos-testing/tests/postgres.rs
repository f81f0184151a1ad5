//! The PostgreSQL fixture starts a real server, serves a client through its
//! private socket, and leaves nothing behind.

#[test]
fn a_private_postgres_starts_serves_and_stops() {
    let pg = custos_testing::Postgres::start();
    let params = pg.create_database("fixture");
    let mut c = postgres::Client::connect(&params, postgres::NoTls).expect("connect through the socket");
    c.batch_execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BYTEA NOT NULL)").unwrap();
    c.execute("INSERT INTO t VALUES ($1, $2)", &[&"a", &vec![1u8, 2, 3]]).unwrap();
    let v: Vec<u8> = c.query_one("SELECT v FROM t WHERE k = $1", &[&"a"]).unwrap().get(0);
    assert_eq!(v, [1, 2, 3]);
    // A second database on the same server is a separate catalog.
    let mut other = postgres::Client::connect(&pg.create_database("other"), postgres::NoTls).unwrap();
    assert!(other.query("SELECT * FROM t", &[]).is_err(), "each database has its own tables");
    let dir = pg.socket_dir().to_path_buf();
    drop((c, other));
    drop(pg);
    assert!(!dir.exists(), "the server stopped and its directory is gone");
}
