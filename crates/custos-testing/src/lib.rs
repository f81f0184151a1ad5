//! Fixtures for tests that need real parts: a SoftHSM2 token directory with
//! initialised tokens, an S3-protocol server on localhost, and a private
//! PostgreSQL server.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The PKCS#11 module under test: `CUSTOS_PKCS11_MODULE`, or Debian's SoftHSM2.
pub fn pkcs11_module() -> PathBuf {
    std::env::var_os("CUSTOS_PKCS11_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"))
}

/// A private SoftHSM2 configuration and token directory, removed on drop.
/// Point a process at it with `SOFTHSM2_CONF` = [`SoftHsmTokens::conf`].
pub struct SoftHsmTokens {
    _dir: tempfile::TempDir,
    conf: PathBuf,
}

impl SoftHsmTokens {
    /// Initialise one token per label, all with the same user and SO PIN.
    /// Panics with what to install when SoftHSM2 is missing.
    pub fn new(labels: &[&str], pin: &str, so_pin: &str) -> Self {
        assert!(
            pkcs11_module().exists(),
            "SoftHSM2 is needed ({}): apt-get install softhsm2, or run .ci/run",
            pkcs11_module().display()
        );
        let dir = tempfile::tempdir().expect("temporary directory");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens).expect("token directory");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display()),
        )
        .expect("softhsm2.conf");
        for label in labels {
            let o = Command::new("softhsm2-util")
                .args(["--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", so_pin])
                .env("SOFTHSM2_CONF", &conf)
                .output()
                .expect("softhsm2-util runs (apt-get install softhsm2)");
            assert!(o.status.success(), "softhsm2-util: {}", String::from_utf8_lossy(&o.stderr));
        }
        Self { _dir: dir, conf }
    }

    pub fn conf(&self) -> &Path {
        &self.conf
    }
}

/// The Kryoptic PKCS#11 module under test: `CUSTOS_KRYOPTIC_MODULE`
/// (`.ci/run` builds it from crates.io). Panics with what to do when unset.
pub fn kryoptic_module() -> PathBuf {
    let m = std::env::var_os("CUSTOS_KRYOPTIC_MODULE").map(PathBuf::from).unwrap_or_else(|| {
        panic!("CUSTOS_KRYOPTIC_MODULE is not set: build kryoptic (see .ci/run) and point it at libkryoptic_pkcs11.so, or run .ci/run")
    });
    assert!(m.exists(), "CUSTOS_KRYOPTIC_MODULE names {}, which does not exist", m.display());
    m
}

/// A Kryoptic token in a private SQLite file, initialised with a label,
/// an SO PIN and a user PIN; removed on drop. Point a process at it with
/// `KRYOPTIC_CONF` = [`KryopticToken::conf`]. Kryoptic reads its
/// configuration when the module is initialised, so a test process uses
/// one token file (set the variable before any context is made).
pub struct KryopticToken {
    _dir: tempfile::TempDir,
    conf: PathBuf,
}

impl KryopticToken {
    pub fn new(label: &str, pin: &str, so_pin: &str) -> Self {
        use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
        use cryptoki::session::UserType;
        use cryptoki::types::AuthPin;
        let module = kryoptic_module();
        let dir = tempfile::tempdir().expect("temporary directory");
        let conf = dir.path().join("token.sql");
        std::env::set_var("KRYOPTIC_CONF", &conf);
        let ctx = Pkcs11::new(&module).expect("load Kryoptic");
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)).expect("initialize Kryoptic");
        let slot = *ctx.get_all_slots().expect("Kryoptic's slots").first().expect("a slot");
        let so = AuthPin::new(so_pin.into());
        ctx.init_token(slot, &so, label).expect("initialise the token");
        let s = ctx.open_rw_session(slot).expect("a session");
        s.login(UserType::So, Some(&so)).expect("log in as SO");
        s.init_pin(&AuthPin::new(pin.into())).expect("set the user PIN");
        drop(s);
        let _ = ctx.finalize();
        Self { _dir: dir, conf }
    }

    pub fn conf(&self) -> &Path {
        &self.conf
    }
}

/// NSS's softoken (Debian's libnss3), the third PKCS#11 module the tests
/// use: its module path.
pub fn nss_softoken() -> PathBuf {
    let p = PathBuf::from("/usr/lib/x86_64-linux-gnu/libsoftokn3.so");
    assert!(p.exists(), "{} is missing: apt-get install libnss3, or run .ci/run", p.display());
    p
}

/// A new NSS database in a temporary directory, its user PIN set with
/// NSS's own `certutil -N` (libnss3-tools). Its one token is labelled
/// [`NssDb::TOKEN`]; the module finds it through [`NssDb::init_args`].
pub struct NssDb {
    dir: tempfile::TempDir,
}

impl NssDb {
    pub const TOKEN: &'static str = "NSS Certificate DB";

    pub fn new(pin: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let pw = dir.path().join("pin");
        std::fs::write(&pw, format!("{pin}\n")).expect("write the PIN file");
        let st = Command::new("certutil")
            .args(["-N", "-d", &format!("sql:{}", dir.path().display()), "-f"])
            .arg(&pw)
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("certutil does not run ({e}): apt-get install libnss3-tools, or run .ci/run"));
        assert!(st.success(), "certutil -N failed: {st}");
        let _ = std::fs::remove_file(&pw);
        Self { dir }
    }

    /// What NSS's `C_Initialize` needs to find this database.
    pub fn init_args(&self) -> String {
        format!("configdir='sql:{}' certPrefix='' keyPrefix='' secmod='secmod.db' flags=", self.dir.path().display())
    }
}

/// A real S3-protocol server (moto's `moto_server`, from PyPI) on a free
/// localhost port, with one empty bucket; killed on drop. Panics with what
/// to install when it is missing. Point a client at it with [`S3Server::env`].
pub struct S3Server {
    child: Child,
    port: u16,
    bucket: String,
}

impl S3Server {
    pub fn start(bucket: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("moto_server does not start ({e}): pip install 'moto[server]', or run .ci/run"));
        let s = Self { child, port, bucket: bucket.to_string() };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(status) = s.request("PUT", &format!("/{bucket}")) {
                assert!(status == 200, "creating bucket {bucket} answered HTTP {status}");
                break;
            }
            assert!(Instant::now() < deadline, "moto_server did not answer on port {port} within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The environment an S3 client needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "custos-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "custos-test-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// Count the objects whose key starts with `prefix` (a plain,
    /// unsigned ListObjectsV2 call, which moto accepts).
    pub fn count_objects(&self, prefix: &str) -> usize {
        self.keys(prefix).len()
    }

    /// The keys of the objects whose key starts with `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let body = self.get(&format!("/{}?list-type=2&prefix={prefix}", self.bucket));
        body.split("<Key>").skip(1).filter_map(|k| k.split("</Key>").next()).map(str::to_string).collect()
    }

    /// Overwrite an object behind Custos's back (a tamper test). moto wants
    /// an Authorization header on object writes but checks no signature.
    pub fn put_raw(&self, key: &str, bytes: &[u8]) {
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        write!(
            c,
            "PUT /{}/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: AWS4-HMAC-SHA256 Credential=custos-test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.bucket,
            bytes.len()
        )
        .expect("request");
        c.write_all(bytes).expect("body");
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 200"), "raw PUT failed: {out}");
    }

    fn request(&self, method: &str, path: &str) -> std::io::Result<u16> {
        let mut c = TcpStream::connect(("127.0.0.1", self.port))?;
        write!(c, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        c.read_to_string(&mut out)?;
        out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| std::io::Error::other("no status"))
    }

    fn get(&self, path: &str) -> String {
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        write!(c, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").expect("request");
        let mut out = String::new();
        c.read_to_string(&mut out).expect("response");
        out
    }
}

/// An S3-protocol server that ignores conditional writes: s3rver (npm), on
/// a free localhost port with one bucket, its data in a private directory;
/// killed on drop. `CUSTOS_S3RVER` names its `s3rver.js` (`.ci/run` installs
/// it); panics with what to do when it is missing. It answers 200 to a PUT
/// with `If-None-Match: *` and replaces the object, which is what the
/// write-once probe must catch.
pub struct S3rver {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
}

impl S3rver {
    pub fn start(bucket: &str) -> Self {
        let script = std::env::var_os("CUSTOS_S3RVER").map(PathBuf::from).unwrap_or_else(|| {
            panic!("CUSTOS_S3RVER is not set: install s3rver (npm install s3rver@3.7.1) and point it at node_modules/s3rver/bin/s3rver.js, or run .ci/run")
        });
        let data = tempfile::tempdir().expect("a data directory for s3rver");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let child = Command::new("node")
            .arg(&script)
            .args([
                "--silent",
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "--no-vhost-buckets",
                "--configure-bucket",
                bucket,
                "-d",
            ])
            .arg(data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("s3rver does not start with node ({e}): install nodejs, or run .ci/run"));
        let s = Self { child, port, _data: data };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3rver did not listen on port {port} within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    /// The environment an S3 client needs to reach it (s3rver's fixed
    /// credentials).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ACCESS_KEY_ID", "S3RVER".into()),
            ("AWS_SECRET_ACCESS_KEY", "S3RVER".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

impl Drop for S3rver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private PostgreSQL server (Debian's `postgresql`: `initdb` and
/// `pg_ctl`) in a temporary directory, listening only on a Unix socket
/// there, with a superuser `custos` trusted on that socket; stopped and
/// removed on drop. It runs as the `postgres` OS user when the tests run as
/// root (PostgreSQL refuses root). Panics with what to install when
/// PostgreSQL is missing.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// The account it runs as, when not this process's.
    owner: Option<(u32, u32)>,
}

impl Postgres {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// The same, also listening on 127.0.0.1 (the port [`Postgres::port`])
    /// with TLS on, its certificate (for `localhost` and `127.0.0.1`) signed
    /// by a CA made for it, whose certificate is at [`Postgres::ca_file`].
    /// Over TCP only `hostssl` connections are let in.
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    /// The port it listens on (TCP with [`Postgres::start_tls`]; otherwise
    /// only the socket file's name).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA certificate (PEM) a [`Postgres::start_tls`] server's
    /// certificate is signed by.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn start_with(tls: bool) -> Self {
        let bin = postgres_bin().unwrap_or_else(|| {
            panic!("PostgreSQL's initdb and pg_ctl are needed: apt-get install postgresql, or run .ci/run")
        });
        let dir = tempfile::tempdir().expect("temporary directory");
        // Other accounts (a server under test runs as one) reach the socket;
        // the data directory inside stays the server's alone.
        std::fs::set_permissions(
            dir.path(),
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
        )
        .expect("open the directory to the socket's users");
        let owner = if rustix::process::geteuid().is_root() {
            let (uid, gid) = account("postgres").expect("the postgres account (apt-get install postgresql)");
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("give the directory to postgres");
            Some((uid, gid))
        } else {
            None
        };
        // A port number names the socket file; nothing listens on TCP.
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let pg = Self { dir, bin, port, owner };
        let data = pg.data();
        pg.run("initdb", &["-D", &data, "-U", "custos", "--auth=trust", "--no-sync", "--encoding=UTF8", "--locale=C"]);
        let mut opts = format!("-c listen_addresses='' -k {} -p {}", pg.dir.path().display(), port);
        if tls {
            pg.make_certificates();
            let d = pg.dir.path().display();
            opts = format!(
                "-c listen_addresses=127.0.0.1 -k {d} -p {port} -c ssl=on -c ssl_cert_file={d}/server.pem -c ssl_key_file={d}/server.key"
            );
            // TCP connections must use TLS; the socket stays trusted.
            std::fs::write(
                pg.dir.path().join("data/pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .expect("write pg_hba.conf");
        }
        let log = pg.dir.path().join("postgres.log").display().to_string();
        pg.run("pg_ctl", &["-D", &data, "-l", &log, "-o", &opts, "-w", "-t", "60", "start"]);
        pg
    }

    /// A CA and a server certificate signed by it, in the directory, the
    /// key readable by the server's account only.
    fn make_certificates(&self) {
        use std::os::unix::fs::PermissionsExt;
        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, "custos test PostgreSQL CA");
        let ca = p.self_signed(&ca_key).expect("the CA certificate");
        let key = rcgen::KeyPair::generate().expect("a server key");
        let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server parameters");
        p.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        let cert = p.signed_by(&key, &ca, &ca_key).expect("the server certificate");
        let dir = self.dir.path();
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write the CA certificate");
        std::fs::write(dir.join("server.pem"), cert.pem()).expect("write the server certificate");
        let key_file = dir.join("server.key");
        std::fs::write(&key_file, key.serialize_pem()).expect("write the server key");
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("key permissions");
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&key_file, Some(uid), Some(gid)).expect("give the key to postgres");
        }
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Run one of PostgreSQL's programs as its account; panics with its
    /// output when it fails.
    fn run(&self, program: &str, args: &[&str]) {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(self.bin.join(program));
        c.args(args).current_dir(self.dir.path()).env("LC_ALL", "C");
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        let o = c.output().unwrap_or_else(|e| panic!("{program} does not run: {e}"));
        assert!(
            o.status.success(),
            "{program} failed: {}{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
        );
    }

    /// Connection parameters for database `db` (libpq's key=value form).
    pub fn params(&self, db: &str) -> String {
        format!("host={} port={} user=custos dbname={db}", self.dir.path().display(), self.port)
    }

    /// The same as a URL (`postgres://custos@/db?host=…&port=…`).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://custos@/{db}?host={}&port={}", self.dir.path().display(), self.port)
    }

    /// Make an empty database and return its connection parameters.
    pub fn create_database(&self, db: &str) -> String {
        let host = self.dir.path().display().to_string();
        self.run("createdb", &["-h", &host, "-p", &self.port.to_string(), "-U", "custos", db]);
        self.params(db)
    }

    /// Run SQL on database `db` as Custos's account (psql), as a database
    /// administrator would; panics when it fails.
    pub fn execute(&self, db: &str, sql: &str) {
        let host = self.dir.path().display().to_string();
        self.run(
            "psql",
            &["-h", &host, "-p", &self.port.to_string(), "-U", "custos", "-d", db, "-v", "ON_ERROR_STOP=1", "-qc", sql],
        );
    }

    /// Where the server's socket lives.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(self.bin.join("pg_ctl"));
        c.args(["-D", &self.data(), "-m", "immediate", "-w", "stop"]).stdout(Stdio::null()).stderr(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            c.uid(uid).gid(gid);
        }
        let _ = c.status();
    }
}

/// Where `initdb` and `pg_ctl` are: on PATH, else the newest of Debian's
/// `/usr/lib/postgresql/<version>/bin`.
fn postgres_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file()));
    // Through a symlink to the real directory, where createdb is too.
    if let Some(real) = on_path.and_then(|d| d.join("initdb").canonicalize().ok()) {
        return real.parent().map(Path::to_path_buf);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

/// The uid and gid of the account `name`, from /etc/passwd.
fn account(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name) && f.len() > 3).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}
