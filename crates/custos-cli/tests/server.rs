//! `custos serve` with real processes: the server under one OS account,
//! clients under others that cannot read the vault and hold no passphrase.
//! (Distinct accounts need root to switch to; as another user the tests run
//! everything under that one account and say so.)

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{data, Env, ADMIN_CRED, CUSTODIAN_PASS, OPS_CRED, PASS};

/// Numeric accounts without /etc/passwd entries: the server's, the
/// clients', and the group that may reach the socket.
const SERVER_UID: u32 = 61_001;
const CLIENT_UID: u32 = 61_002;
const OTHER_UID: u32 = 61_003;
const SOCKET_GID: u32 = 61_000;

fn root() -> bool {
    rustix::process::geteuid().is_root()
}

fn chown_tree(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
    if p.is_dir() && !p.is_symlink() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

/// A running `custos serve` on a vault prepared in embedded mode.
struct Served {
    vault: PathBuf,
    sock: PathBuf,
    config: PathBuf,
    child: std::sync::Mutex<Option<Child>>,
    log: PathBuf,
    /// The server's environment (a SoftHSM2 configuration).
    env: Vec<(String, String)>,
}

impl Served {
    /// Hand `e`'s vault to a server: owned by the server's account, its
    /// passphrase in a file only that account reads.
    fn start(e: &Env) -> Served {
        Self::start_with(e, "")
    }

    /// The same, with more configuration (a `[tls]` table, `tcp`).
    fn start_with(e: &Env, extra: &str) -> Served {
        Self::start_hsm(e, "kind = \"soft\"", PASS, extra)
    }

    /// With an `[hsm]` table of its own (`hsm` holds its lines but the
    /// secret file, which holds `secret`).
    fn start_hsm(e: &Env, hsm: &str, secret_text: &str, extra: &str) -> Served {
        Self::start_named(e, "custos", "", hsm, secret_text, extra)
    }

    /// One of several servers on `e`'s vault (`name` tells apart their
    /// sockets, configurations and logs), with top-level configuration
    /// lines of its own (`repository = …`).
    fn start_named(e: &Env, name: &str, top: &str, hsm: &str, secret_text: &str, extra: &str) -> Served {
        let base = e.dir.path();
        std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let run = base.join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o750)).unwrap();
        let secret = base.join(format!("{name}.passphrase"));
        std::fs::write(&secret, secret_text).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o400)).unwrap();
        let sock = run.join(format!("{name}.sock"));
        let config = base.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "vault = {:?}\ndrain_secs = 10\n{top}\n[hsm]\n{hsm}\nsecret_file = {:?}\n[listen]\nunix = {:?}\n{extra}",
                e.vault, secret, sock
            ),
        )
        .unwrap();
        if root() {
            chown_tree(&e.vault, SERVER_UID, SOCKET_GID);
            chown_tree(&run, SERVER_UID, SOCKET_GID);
            chown_tree(&secret, SERVER_UID, SOCKET_GID);
        }
        let env = e.env.iter().filter(|(k, _)| k == "SOFTHSM2_CONF").cloned().collect();
        let s = Served {
            vault: e.vault.clone(),
            sock,
            config,
            child: Default::default(),
            log: base.join(format!("{name}.log")),
            env,
        };
        s.spawn();
        s
    }

    fn spawn(&self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("custos"));
        c.env_clear().envs(self.env.iter().cloned()).args(["serve", "--config"]).arg(&self.config);
        c.stdout(Stdio::null()).stderr(log);
        if root() {
            c.uid(SERVER_UID).gid(SOCKET_GID);
        }
        let mut child = c.spawn().unwrap();
        let t = Instant::now();
        while std::os::unix::net::UnixStream::connect(&self.sock).is_err() {
            assert!(t.elapsed() < Duration::from_secs(20), "the server did not start: {}", self.log());
            if let Some(st) = child.try_wait().unwrap() {
                panic!("the server exited ({st}): {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        *self.child.lock().unwrap() = Some(child);
    }

    /// Start the server again on its configuration, which must fail (it
    /// would otherwise keep running): its stderr.
    fn start_refused(&self) -> String {
        let _ = std::fs::remove_file(&self.sock);
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("custos"));
        c.env_clear().envs(self.env.iter().cloned()).args(["serve", "--config"]).arg(&self.config);
        if root() {
            c.uid(SERVER_UID).gid(SOCKET_GID);
        }
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success(), "the server must refuse to start: {err}");
        err
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A client command as `user`, under the client account, with nothing
    /// of the vault's: no passphrase, no vault directory.
    fn client(&self, user: &str, cred: &str, args: &[&str]) -> Command {
        client_of(&format!("unix:{}", self.sock.display()), user, cred, args)
    }

    fn run(&self, user: &str, cred: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut c = self.client(user, cred, args);
        c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        if let Some(b) = stdin {
            let mut w = child.stdin.take().unwrap();
            let b = b.to_vec();
            std::thread::spawn(move || {
                let _ = w.write_all(&b);
            });
        }
        child.wait_with_output().unwrap()
    }

    fn ok(&self, user: &str, cred: &str, args: &[&str]) -> String {
        let o = self.run(user, cred, args, None);
        assert!(o.status.success(), "{user} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    }

    fn fails(&self, user: &str, cred: &str, args: &[&str], code: i32) -> String {
        let o = self.run(user, cred, args, None);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(code), "{user} {args:?}: {err}");
        common::assert_said_once(&err);
        assert!(!err.contains(PASS));
        err
    }
}

/// A client command to `servers` (one URL, or several comma-separated) as
/// `user`, under the client account, with nothing of the vault's.
fn client_of(servers: &str, user: &str, cred: &str, args: &[&str]) -> Command {
    let mut c = Command::new(assert_cmd::cargo::cargo_bin("custos"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CUSTOS_SERVER", servers)
        .env("CUSTOS_USER", user)
        .env("CUSTOS_CREDENTIAL", cred)
        .env("CUSTOS_VAULT", "/nonexistent")
        .env("CUSTOS_CUSTODIAN_PASSPHRASE", CUSTODIAN_PASS)
        .current_dir("/")
        .args(args);
    if root() {
        c.uid(CLIENT_UID).gid(SOCKET_GID);
    }
    c
}

/// Run a client command to `servers`, feeding it `stdin`.
fn run_of(servers: &str, user: &str, cred: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut c = client_of(servers, user, cred, args);
    c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(b) = stdin {
        let mut w = child.stdin.take().unwrap();
        let b = b.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&b);
        });
    }
    child.wait_with_output().unwrap()
}

impl Served {
    /// Stop the server as an operator does (SIGTERM), killing it after 15 s:
    /// how it exited, if it was running.
    fn stop(&self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.lock().unwrap().take()?;
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(c.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        );
        let t = Instant::now();
        while c.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
        // Give the tree back to this account so the temp dir can go.
        if root() {
            chown_tree(self.vault.parent().unwrap(), 0, 0);
        }
    }
}

const APP: &str = "application credential";
const STOR: &str = "storage admin credential";
const AUD: &str = "auditor credential long";
const ALICE: &str = "second admin credential";

fn add(e: &Env, name: &str, role: &str, cred: &str) {
    e.cmd(&["user", "add", name, "--role", role]).env("CUSTOS_NEW_CREDENTIAL", cred).assert().success();
}

#[test]
fn principals_on_other_accounts_do_exactly_what_their_grants_allow() {
    if !root() {
        eprintln!("not root: the server and its clients share this account");
    }
    let e = Env::new();
    let pay = data(300_000, 5);
    e.ok(&["ds", "put", "PAY.MASTER", Env::s(&e.file("pay", &pay))]);
    let offsite = e.vault.join("volumes").join("offsite");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&offsite), "--site", "B"]);
    add(&e, "app1", "app", APP);
    e.ok(&["user", "grant", "app1", "--data", "MINE.**"]);
    e.ok(&["user", "grant", "app1", "--key", "DSET.PRIM.MINE.*"]);
    add(&e, "stor", "storage-admin", STOR);
    add(&e, "aud", "auditor", AUD);
    add(&e, "alice", "security-admin", ALICE);
    e.ok(&["config", "set", "dual-control", "key-destroy"]);
    let snap = e.json(&["snapshot", "create", "PAY.MASTER"])["id"].as_u64().unwrap().to_string();
    let s = Served::start(&e);

    // The client account can read nothing of the vault.
    if root() {
        let mut cat = Command::new("cat");
        cat.arg(s.vault.join("custos.db")).uid(CLIENT_UID).gid(SOCKET_GID).stdout(Stdio::null()).stderr(Stdio::null());
        assert!(!cat.status().unwrap().success(), "the client account reads the catalog");
        let mut embedded = Command::new(assert_cmd::cargo::cargo_bin("custos"));
        embedded.env_clear().env("CUSTOS_VAULT", &s.vault).args(["ds", "ls"]).uid(OTHER_UID).gid(OTHER_UID);
        assert!(!embedded.output().unwrap().status.success(), "another account opened the vault in embedded mode");
    }

    // The app: its own datasets, nothing else, by no route.
    let mine = data(200_000, 9);
    let o = s.run("app1", APP, &["ds", "put", "MINE.A"], Some(&mine));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(s.run("app1", APP, &["ds", "get", "MINE.A"], None).stdout, mine);
    assert!(s
        .fails("app1", APP, &["ds", "get", "PAY.MASTER"], 8)
        .contains("no data grant that covers dataset PAY.MASTER"));
    s.fails("app1", APP, &["restore", "PAY.MASTER", "--as", "MINE.STOLEN"], 8);
    s.fails("app1", APP, &["snapshot", "restore", &snap, "--as", "MINE.STOLEN"], 8);
    s.fails("app1", APP, &["risk", "drill", "--threat", "disk-failure"], 8);
    s.fails("app1", APP, &["ds", "get", "MINE.STOLEN"], 3);

    // The storage-admin copies and snapshots what it cannot read.
    s.ok("stor", STOR, &["backup", "run", "PAY.**", "--method", "raw", "--to", "offsite"]);
    s.ok("stor", STOR, &["snapshot", "create", "PAY.MASTER"]);
    s.fails("stor", STOR, &["ds", "get", "PAY.MASTER"], 8);
    assert!(s.ok("ops", OPS_CRED, &["backup", "verify", "--read-data"]).contains("every chunk read"));

    // The auditor verifies the log; every request above is in it, by its principal.
    assert!(s.ok("aud", AUD, &["audit", "verify"]).contains("audit log intact"));
    let log = s.ok("aud", AUD, &["--json", "audit", "ls", "--principal", "app1"]);
    assert!(log.contains("\"restore\"") && log.contains("refused"), "{log}");
    s.fails("aud", AUD, &["ds", "get", "MINE.A"], 8);

    // A second principal approves a request.
    s.ok("ops", OPS_CRED, &["key", "create", "DSET.PRIM.GONE.key001"]);
    let out = s.ok("ops", OPS_CRED, &["key", "destroy", "DSET.PRIM.GONE.key001", "--crypto-erase"]);
    assert!(out.contains("under dual control"), "{out}");
    let id = out.split_whitespace().nth(1).unwrap().trim_end_matches(':').to_string();
    assert!(s.fails("ops", OPS_CRED, &["request", "approve", &id], 8).contains("its own"));
    assert!(s.ok("alice", ALICE, &["request", "approve", &id]).contains("approved by alice"));
    assert!(s.ok("aud", AUD, &["key", "show", "DSET.PRIM.GONE.key001"]).contains("destroyed"));

    // A wrong credential is refused (exit 6) and recorded.
    s.fails("app1", "not the credential", &["ds", "ls"], 6);
    assert!(s.ok("aud", AUD, &["audit", "ls"]).contains("app1 (unverified)"));
    let _ = ADMIN_CRED;
}

/// What one soak worker saw acknowledged.
#[derive(Default)]
struct Seen {
    /// Datasets written once: name → content.
    acked: Vec<(String, Vec<u8>)>,
    /// The dataset written over and over: the last content acknowledged,
    /// and every attempt after it (a write cut by the kill may or may not
    /// have landed).
    hot: Option<Vec<u8>>,
    hot_after: Vec<Vec<u8>>,
    backups: u64,
    /// Commands the kill cut off, with a message saying so.
    cut: u64,
    refused: Vec<String>,
}

/// 16 clients put, get, back up and create keys against one server;
/// halfway, the server is SIGKILLed and restarted. Every acknowledged write
/// reads back, the audit log verifies, every backup verifies.
#[test]
fn sixteen_clients_and_a_server_killed_mid_run_lose_nothing_acknowledged() {
    let secs: u64 = std::env::var("CUSTOS_SERVER_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let e = Env::new();
    let offsite = e.vault.join("volumes").join("offsite");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&offsite), "--site", "B"]);
    let s = Served::start(&e);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let results: Vec<Seen> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..16u8)
            .map(|w| {
                let s = &s;
                scope.spawn(move || {
                    let mut seen = Seen::default();
                    let mut n = 0u32;
                    // Retry what the kill cut (exit 7: unreachable or the
                    // request ended); anything else is a finding.
                    let attempt = |args: &[&str], stdin: Option<&[u8]>, seen: &mut Seen| -> Option<Output> {
                        let o = s.run("ops", OPS_CRED, args, stdin);
                        match o.status.code() {
                            // Cut off, and carried out when sent again.
                            Some(0) if String::from_utf8_lossy(&o.stderr).contains("did not carry it out") => {
                                seen.cut += 1;
                                Some(o)
                            }
                            Some(0) => Some(o),
                            Some(7) | Some(1) if String::from_utf8_lossy(&o.stderr).contains("server") => {
                                seen.cut += 1;
                                None
                            }
                            _ => {
                                seen.refused.push(format!("{args:?}: {}", String::from_utf8_lossy(&o.stderr)));
                                None
                            }
                        }
                    };
                    while Instant::now() < deadline {
                        n += 1;
                        match n % 5 {
                            0 | 1 => {
                                let name = format!("SOAK.W{w}.N{n}");
                                let body = data(1_000 + (n as usize * 97) % 30_000, w ^ n as u8);
                                if attempt(&["ds", "put", &name], Some(&body), &mut seen).is_some() {
                                    seen.acked.push((name, body));
                                }
                            }
                            2 => {
                                let body = data(5_000 + n as usize % 7_000, n as u8);
                                let name = format!("SOAK.W{w}.HOT");
                                seen.hot_after.push(body.clone());
                                if attempt(&["ds", "put", &name], Some(&body), &mut seen).is_some() {
                                    seen.hot = Some(body);
                                    seen.hot_after.clear();
                                }
                            }
                            3 => {
                                if let Some((name, want)) = seen.acked.last().cloned() {
                                    if let Some(o) = attempt(&["ds", "get", &name], None, &mut seen) {
                                        if o.stdout != want {
                                            seen.refused.push(format!("{name} read back wrong"));
                                        }
                                    }
                                }
                            }
                            _ => {
                                if let Some((name, _)) = seen.acked.last().cloned() {
                                    let args = ["backup", "run", name.as_str(), "--method", "raw", "--to", "offsite"];
                                    if attempt(&args, None, &mut seen).is_some() {
                                        seen.backups += 1;
                                    }
                                }
                                attempt(&["key", "create", "--app", &format!("SOAKW{w}")], None, &mut seen);
                            }
                        }
                    }
                    seen
                })
            })
            .collect();
        // Halfway: kill the server without warning, and start it again.
        std::thread::sleep(Duration::from_secs(secs / 2));
        s.kill9();
        std::thread::sleep(Duration::from_millis(500));
        s.spawn();
        workers.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    let refused: Vec<&String> = results.iter().flat_map(|r| &r.refused).collect();
    assert!(refused.is_empty(), "{} commands failed for good: {refused:#?}", refused.len());
    let acked: usize = results.iter().map(|r| r.acked.len()).sum();
    let backups: u64 = results.iter().map(|r| r.backups).sum();
    assert!(acked > 50 && backups > 10, "too little work to prove anything: {acked} writes, {backups} backups");
    let cut: u64 = results.iter().map(|r| r.cut).sum();
    assert!(cut > 0, "the kill cut no command off: it proved nothing");
    for r in &results {
        for (name, want) in &r.acked {
            let got = s.run("ops", OPS_CRED, &["ds", "get", name], None);
            assert!(got.status.success() && got.stdout == *want, "{name}: acknowledged, then lost");
        }
        if let Some(hot) = &r.hot {
            let name = r.acked.first().map(|(n, _)| n.rsplit_once('.').unwrap().0.to_string() + ".HOT").unwrap();
            let got = s.run("ops", OPS_CRED, &["ds", "get", &name], None).stdout;
            assert!(
                got == *hot || r.hot_after.contains(&got),
                "{name} holds neither its last acknowledged content nor a later attempt"
            );
        }
    }
    assert!(s.ok("ops", OPS_CRED, &["audit", "verify"]).contains("audit log intact"));
    assert!(s.ok("ops", OPS_CRED, &["backup", "verify", "--read-data"]).contains("every chunk read"));
    eprintln!("{acked} acknowledged writes, {backups} backups over {secs}s; the kill cut {cut} commands, all retried");
}

/// A CA, a certificate it signed for `names`, and the PEM of both.
struct Pki {
    ca_pem: String,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new(cn: &str) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let ca = p.self_signed(&ca_key).unwrap();
        Pki { ca_pem: ca.pem(), ca, ca_key }
    }

    /// (certificate PEM, key PEM, SHA-256 of the certificate's DER).
    fn issue(&self, cn: &str, names: &[&str]) -> (String, String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let c = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let fp = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, c.der()).as_ref());
        (c.pem(), key.serialize_pem(), fp)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// TLS 1.3 on TCP: a principal by credential, or by a pinned client
/// certificate; a client that does not trust the server's CA gets nowhere.
#[test]
fn tls_clients_by_credential_or_by_pinned_certificate() {
    let e = Env::new();
    add(&e, "app1", "app", APP);
    e.ok(&["user", "grant", "app1", "--data", "MINE.**"]);
    e.ok(&["user", "grant", "app1", "--key", "DSET.PRIM.MINE.*"]);
    let server_pki = Pki::new("custos test server CA");
    let client_pki = Pki::new("custos test client CA");
    let (cert, key, _) = server_pki.issue("custos", &["localhost"]);
    let (ccert, ckey, cfp) = client_pki.issue("app1", &[]);
    let (stranger_cert, stranger_key, _) = Pki::new("someone else").issue("app1", &[]);
    let d = e.dir.path();
    let w = |name: &str, text: &str| {
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p
    };
    let (cert_p, key_p, cca_p) =
        (w("server.pem", &cert), w("server.key", &key), w("client-ca.pem", &client_pki.ca_pem));
    let ca_p = w("ca.pem", &server_pki.ca_pem);
    let (ccert_p, ckey_p) = (w("app1.pem", &ccert), w("app1.key", &ckey));
    let (scert_p, skey_p) = (w("stranger.pem", &stranger_cert), w("stranger.key", &stranger_key));
    let port = free_port();
    let extra = format!(
        "tcp = \"127.0.0.1:{port}\"\n[tls]\ncert = {cert_p:?}\nkey = {key_p:?}\nclient_ca = {cca_p:?}\n[[tls.clients]]\nsha256 = \"{cfp}\"\nprincipal = \"app1\"\n"
    );
    let s = Served::start_with(&e, &extra);
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "no TLS listener: {}", s.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("https://localhost:{port}");
    let https = |args: &[&str], user: Option<(&str, &str)>, cert: Option<(&Path, &Path)>, ca: &Path| {
        let mut c = Command::new(assert_cmd::cargo::cargo_bin("custos"));
        c.env_clear().env("CUSTOS_SERVER", &url).env("CUSTOS_CA", ca).args(args);
        if let Some((u, cred)) = user {
            c.env("CUSTOS_USER", u).env("CUSTOS_CREDENTIAL", cred);
        }
        if let Some((cp, kp)) = cert {
            c.env("CUSTOS_CLIENT_CERT", cp).env("CUSTOS_CLIENT_KEY", kp);
        }
        c.output().unwrap()
    };
    // By credential.
    let o = https(&["ds", "ls"], Some(("app1", APP)), None, &ca_p);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // By the pinned certificate alone: it is app1, with app1's rights.
    let o = https(&["--json", "key", "create", "DSET.PRIM.MINE.key001"], None, Some((&ccert_p, &ckey_p)), &ca_p);
    assert_eq!(o.status.code(), Some(8), "app1 may not create keys: {}", String::from_utf8_lossy(&o.stderr));
    let o = https(&["ds", "ls"], None, Some((&ccert_p, &ckey_p)), &ca_p);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = e.json(&["audit", "ls", "--principal", "app1"]);
    assert!(log
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["action"] == "key create" && r["result"].as_str().unwrap().starts_with("refused")));
    // A certificate from another CA (same name) is nobody: TLS refuses it.
    let o = https(&["ds", "ls"], None, Some((&scert_p, &skey_p)), &ca_p);
    assert!(!o.status.success());
    // No credential and no certificate: who is calling?
    let o = https(&["ds", "ls"], None, None, &ca_p);
    assert_eq!(o.status.code(), Some(6), "{}", String::from_utf8_lossy(&o.stderr));
    // A client that trusts another CA does not talk to this server.
    let o = https(&["ds", "ls"], Some(("app1", APP)), None, &cca_p);
    assert_eq!(o.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&o.stderr).contains("TLS"), "{}", String::from_utf8_lossy(&o.stderr));
}

/// One HTTP/1.1 request over the server's socket, by hand: (status, body).
fn http(sock: &Path, method: &str, path: &str, auth: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, _, json) = http_with(sock, method, path, auth, "", body);
    (status, json)
}

/// The same with more header lines (each ending in CRLF): (status, the
/// response's headers, body).
fn http_with(
    sock: &Path,
    method: &str,
    path: &str,
    auth: &str,
    headers: &str,
    body: &str,
) -> (u16, String, serde_json::Value) {
    use std::io::Read;
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // A server that answers from the headers alone (a refusal) still reads
    // the body it did not want, so writing all of it never fails.
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let (head, json) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let head = head.to_ascii_lowercase();
    // Bodies may be chunked: take the JSON object between the first { and the last }.
    let json = match (json.find('{'), json.rfind('}')) {
        (Some(a), Some(b)) => &json[a..=b],
        _ => "null",
    };
    (status, head, serde_json::from_str(json).unwrap_or(serde_json::Value::Null))
}

/// A request refused from its headers alone (a bad name, a wrong
/// credential, a key that does not exist) is answered, and its unwanted body
/// read to the end, so a client that writes the whole body before it reads
/// gets the answer (not a reset) and can go on using the connection.
#[test]
fn a_refused_upload_is_answered_and_the_connection_stays_usable() {
    use std::io::{BufRead, BufReader, Read};
    let e = Env::new();
    add(&e, "app1", "app", APP);
    e.ok(&["user", "grant", "app1", "--data", "MINE.**"]);
    e.ok(&["user", "grant", "app1", "--key", "DSET.PRIM.MINE.*"]);
    let s = Served::start(&e);
    let good = custos_server::basic("app1", APP.as_bytes());
    let wrong = custos_server::basic("app1", b"not the credential");
    let body = vec![7u8; 16 << 20];
    let mut conn = std::os::unix::net::UnixStream::connect(&s.sock).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    // One answer off a kept-alive connection: (status, body).
    let mut answer = || {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status: u16 = line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{line:?}"));
        let mut len = 0;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut b = vec![0; len];
        reader.read_exact(&mut b).unwrap();
        (status, String::from_utf8_lossy(&b).into_owned())
    };
    for (path, auth, want) in [
        ("/v1/datasets/bad%20name", &good, 400),
        ("/v1/datasets/MINE.DATA", &wrong, 401),
        ("/v1/datasets/MINE.DATA?key=DSET.PRIM.MINE.key009", &good, 404),
        ("/v1/datasets/THEIRS.DATA", &good, 403),
    ] {
        let head = format!(
            "PUT {path} HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
            auth.as_str(),
            body.len()
        );
        conn.write_all(head.as_bytes()).unwrap();
        conn.write_all(&body).unwrap_or_else(|e| panic!("{path}: the server stopped reading the body: {e}"));
        let (status, text) = answer();
        assert_eq!(status, want, "{path}: {text}");
    }
    // The same connection still serves, and nothing was stored.
    conn.write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    assert_eq!(answer().0, 200);
    assert_eq!(e.json(&["ds", "ls"]).as_array().map(Vec::len), Some(0));
}

/// The key service: an application seals and opens its own data under a
/// Custos key it is granted, bound to a context; each use is counted and
/// audited; another application's key, a wrong context or a tampered
/// ciphertext are refused.
#[test]
fn key_service_encrypts_for_granted_applications_only() {
    let e = Env::new();
    add(&e, "app1", "app", APP);
    e.ok(&["user", "grant", "app1", "--key", "DSET.PRIM.MINE.*"]);
    e.ok(&["key", "create", "DSET.PRIM.MINE.key001", "--activate"]);
    e.ok(&["key", "create", "DSET.PRIM.THEIRS.key001", "--activate"]);
    let s = Served::start(&e);
    let auth = custos_server::basic("app1", APP.as_bytes());
    let b64 = |b: &[u8]| custos_ops::base64_encode(b);
    let (st, enc) = http(
        &s.sock,
        "POST",
        "/v1/keys/DSET.PRIM.MINE.key001/encrypt",
        &auth,
        &format!("{{\"plaintext\":\"{}\",\"context\":{{\"tenant\":\"7\"}}}}", b64(b"card 4111")),
    );
    assert_eq!(st, 200, "{enc}");
    let ct = enc["ciphertext"].as_str().unwrap().to_string();
    let dec = |ctx: &str, ct: &str| {
        http(
            &s.sock,
            "POST",
            "/v1/keys/DSET.PRIM.MINE.key001/decrypt",
            &auth,
            &format!("{{\"ciphertext\":\"{ct}\",\"context\":{ctx}}}"),
        )
    };
    let (st, plain) = dec("{\"tenant\":\"7\"}", &ct);
    assert_eq!((st, plain["plaintext"].as_str()), (200, Some(b64(b"card 4111").as_str())), "{plain}");
    // Another context, or one bit changed: integrity failure (422, exit 4).
    let (st, p) = dec("{\"tenant\":\"8\"}", &ct);
    assert_eq!((st, p["exit"].as_u64()), (422, Some(4)), "{p}");
    let mut raw = custos_ops::base64_decode(&ct).unwrap();
    *raw.last_mut().unwrap() ^= 1;
    assert_eq!(dec("{\"tenant\":\"7\"}", &b64(&raw)).0, 422);
    // A data key: 32 bytes in the clear, and sealed.
    let (st, dk) = http(&s.sock, "POST", "/v1/keys/DSET.PRIM.MINE.key001/datakey", &auth, "{}");
    assert_eq!(st, 200, "{dk}");
    assert_eq!(custos_ops::base64_decode(dk["plaintext"].as_str().unwrap()).unwrap().len(), 32);
    // Without the key grant: forbidden, and nothing is sealed.
    let (st, p) = http(&s.sock, "POST", "/v1/keys/DSET.PRIM.THEIRS.key001/encrypt", &auth, "{\"plaintext\":\"eA==\"}");
    assert_eq!((st, p["exit"].as_u64()), (403, Some(8)), "{p}");
    // Bad input: a clear problem, never a 5xx.
    for body in ["", "{", "{\"plaintext\":\"not base64!\"}", "{\"plaintext\":\"eA==\",\"extra\":1}"] {
        let (st, p) = http(&s.sock, "POST", "/v1/keys/DSET.PRIM.MINE.key001/encrypt", &auth, body);
        assert_eq!(st, 400, "{body:?}: {p}");
    }
    // Counted and audited (as key use, under the caller's name).
    let k = e.json(&["key", "show", "DSET.PRIM.MINE.key001"]);
    assert_eq!(k["use_count"], 3, "one encrypt, one decrypt that opened, one data key: {k}");
    let log = e.json(&["audit", "ls", "--principal", "app1"]);
    let actions: Vec<&str> = log.as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"key encrypt") && actions.contains(&"key decrypt") && actions.contains(&"key datakey"));
    assert!(!serde_json::to_string(&log).unwrap().contains(&b64(b"card 4111")), "no plaintext in the audit log");
}

/// The server does not start on a vault other accounts can read, nor on
/// one nobody could authenticate to; it says what to do.
#[test]
fn the_server_refuses_an_exposed_vault_and_one_without_principals() {
    let dir = tempfile::tempdir().unwrap();
    let vault = dir.path().join("vault");
    let pass = custos_core::Passphrase::from(PASS.to_string());
    let opts = custos_core::InitOptions { kdf: custos_core::KdfParams::MINIMUM, ..Default::default() };
    drop(custos_core::Vault::init(&vault, &pass, &opts).unwrap());
    std::fs::set_permissions(&vault, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!("vault = {vault:?}\n[hsm]\nkind = \"soft\"\n[listen]\nunix = {:?}\n", dir.path().join("s.sock")),
    )
    .unwrap();
    let serve = || {
        Command::new(assert_cmd::cargo::cargo_bin("custos"))
            .env_clear()
            .env("CUSTOS_PASSPHRASE", PASS)
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let o = serve();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("readable by other accounts") && err.contains("chmod -R go-rwx"),
        "{err}"
    );
    let mut chmod = Command::new("chmod");
    assert!(chmod.args(["-R", "go-rwx"]).arg(&vault).status().unwrap().success());
    let o = serve();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("has no principals"), "{err}");
    assert!(!dir.path().join("s.sock").exists(), "nothing listened");
}

/// A server will not start on a catalog older than its HSM's anchor: the
/// copy of `custos.db` taken before a client's write is refused, naming the
/// entry it ends at and the one the HSM recorded, and nothing listens.
#[test]
fn a_server_refuses_a_rolled_back_catalog() {
    let e = Env::new();
    e.ok(&["ds", "put", "RB.SRV", Env::s(&e.file("a", b"before"))]);
    let db = e.vault.join("custos.db");
    let copy = std::fs::read(&db).unwrap();
    let head = || {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.query_row("SELECT MAX(seq) FROM audit_log", [], |r| r.get::<_, i64>(0)).unwrap()
    };
    let before = head();
    let s = Served::start(&e);
    let o = s.run("ops", OPS_CRED, &["ds", "put", "RB.SRV"], Some(b"after"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A drained server anchors the log's end.
    let pid = s.child.lock().unwrap().as_ref().unwrap().id();
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), rustix::process::Signal::TERM)
        .unwrap();
    let st = s.child.lock().unwrap().take().unwrap().wait().unwrap();
    assert!(st.success(), "{}", s.log());
    let after = head();
    assert!(after > before);
    for leftover in ["custos.db-wal", "custos.db-shm"] {
        let _ = std::fs::remove_file(e.vault.join(leftover));
    }
    std::fs::write(&db, &copy).unwrap();
    let err = s.start_refused();
    assert!(err.contains(&format!("ends at entry {before}, but the HSM recorded entry {after}")), "{err}");
    assert!(!s.sock.exists(), "nothing listened");
}

/// The write-ahead log deleted under a running server (which once rolled
/// the catalog back, unnoticed, to a generation whose chunks were gone):
/// when the server then dies before it checkpoints, the commits only the
/// WAL held are lost, and the next start refuses the catalog, naming the
/// entry it ends at and the later one the HSM recorded.
#[test]
fn a_wal_deleted_under_the_server_is_a_rollback_it_refuses() {
    let e = Env::new();
    e.ok(&["ds", "put", "WAL.ONE", Env::s(&e.file("a", b"first"))]);
    let s = Served::start(&e);
    s.ok("ops", OPS_CRED, &["ds", "ls"]);
    // The anchor is written at a commit at most once a second.
    std::thread::sleep(Duration::from_millis(1200));
    for content in [&b"second"[..], b"third"] {
        let o = s.run("ops", OPS_CRED, &["ds", "put", "WAL.ONE"], Some(content));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let wal = e.vault.join("custos.db-wal");
    assert!(wal.exists(), "the server's commits are in the WAL");
    std::fs::remove_file(&wal).unwrap();
    s.kill9();
    let err = s.start_refused();
    let number = |after: &str| -> u64 {
        let at = err.find(after).unwrap_or_else(|| panic!("{after:?} not in: {err}")) + after.len();
        err[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
    };
    let (ends, recorded) = (number("ends at entry "), number("the HSM recorded entry "));
    assert!(ends < recorded, "{err}");
    assert!(err.contains("accept-rollback"), "it says what to do: {err}");
    assert!(!s.sock.exists(), "nothing listened");
}

/// A vault backup taken through a server carries the server's
/// configuration: recovery writes it out beside the recovered catalog for
/// review, byte for byte.
#[test]
fn a_vault_backup_carries_the_servers_configuration() {
    let e = Env::new();
    let off = e.dir.path().join("offsite");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&off), "--site", "B"]);
    let s = Served::start(&e);
    if root() {
        chown_tree(&off, SERVER_UID, SOCKET_GID);
    }
    let out = s.ok("ops", OPS_CRED, &["vault", "backup", "--to", "offsite"]);
    assert!(out.contains("read back and opened"), "{out}");
    let config = std::fs::read_to_string(&s.config).unwrap();
    drop(s);
    if root() {
        chown_tree(&off, 0, 0);
    }
    let r = e.at(e.dir.path().join("recovered"));
    let said = r.ok(&["vault", "recover", "--from", Env::s(&off)]);
    let kept = e.dir.path().join("recovered").join("server.toml.recovered");
    assert!(said.contains("server.toml.recovered") && said.contains("review"), "{said}");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), config);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&kept).unwrap().permissions().mode() & 0o777, 0o600);
}

/// A catalog row naming a PKCS#11 library is never what a server loads:
/// the module and token come from its configuration. (Embedded mode, where
/// whoever runs the command is every role anyway, still reads the row.)
#[test]
fn a_catalog_row_cannot_make_the_server_load_a_library() {
    let e = Env::new_pkcs11();
    e.ok(&["ds", "put", "P11.DATA", Env::s(&e.file("d", b"sealed by the token's master key"))]);
    let evil = e.dir.path().join("evil-module.so");
    let db = rusqlite::Connection::open(e.vault.join("custos.db")).unwrap();
    db.execute("UPDATE settings SET value = ?1 WHERE key = 'hsm.pkcs11.module'", [evil.to_str().unwrap()]).unwrap();
    drop(db);
    let err = String::from_utf8_lossy(&e.run(&["ds", "get", "P11.DATA"]).stderr).to_string();
    assert!(err.contains("evil-module.so"), "embedded mode reads the row: {err}");
    // The server's configuration names the real module and the token.
    let conf = e.env.iter().find(|(k, _)| k == "SOFTHSM2_CONF").map(|(_, v)| PathBuf::from(v)).unwrap();
    if root() {
        chown_tree(conf.parent().unwrap(), SERVER_UID, SOCKET_GID);
    }
    let hsm = format!("kind = \"pkcs11\"\nmodule = {:?}\ntoken = \"custos-cli\"", custos_testing::pkcs11_module());
    let s = Served::start_hsm(&e, &hsm, "2468", "");
    let got = s.run("ops", OPS_CRED, &["ds", "get", "P11.DATA"], None);
    assert_eq!(got.stdout, b"sealed by the token's master key", "{}", String::from_utf8_lossy(&got.stderr));
    assert!(!s.log().contains("evil-module"), "{}", s.log());
    if root() {
        chown_tree(conf.parent().unwrap(), 0, 0);
    }
}

/// Waiting periods run on the server's clock: a client whose clock is eight
/// days ahead does not carry out a destruction scheduled for seven days
/// from now. (In embedded mode the caller's clock decides, and it does.)
#[test]
fn a_clients_clock_decides_nothing() {
    assert!(
        Command::new("faketime").arg("--version").output().is_ok(),
        "faketime is needed (Debian package faketime; .ci/run installs it)"
    );
    let e = Env::new();
    e.ok(&["config", "set", "key.destroy.wait", "7d"]);
    e.ok(&["key", "create", "DSET.PRIM.CLOCK.key001"]);
    e.ok(&["key", "create", "DSET.PRIM.CLOCK.key002"]);
    add(&e, "alice", "security-admin", ALICE);
    let s = Served::start(&e);
    // A client whose clock says `offset`.
    let faked = |offset: &str, user: &str, cred: &str, args: &[&str]| {
        let mut c = Command::new("faketime");
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CUSTOS_SERVER", format!("unix:{}", s.sock.display()))
            .env("CUSTOS_USER", user)
            .env("CUSTOS_CREDENTIAL", cred)
            .current_dir("/")
            .arg(offset)
            .arg(assert_cmd::cargo::cargo_bin("custos"))
            .args(args);
        if root() {
            c.uid(CLIENT_UID).gid(SOCKET_GID);
        }
        c.output().unwrap()
    };
    let out = s.ok("ops", OPS_CRED, &["key", "destroy", "DSET.PRIM.CLOCK.key001"]);
    assert!(out.contains("will be destroyed at"), "{out}");
    // A client eight days ahead asks about the key: nothing falls due.
    let o = faked("+8 days", "ops", OPS_CRED, &["--json", "key", "show", "DSET.PRIM.CLOCK.key001"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let k: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_ne!(k["state"], "destroyed", "a client's clock carried out the destruction: {k}");
    let k = s.ok("ops", OPS_CRED, &["--json", "key", "show", "DSET.PRIM.CLOCK.key001"]);
    assert!(!k.contains("\"destroyed\""), "{k}");
    // A request that expired on the server's clock stays expired for an
    // approver whose clock is a day behind.
    s.ok("ops", OPS_CRED, &["config", "set", "dual-control", "key-destroy"]);
    s.ok("ops", OPS_CRED, &["config", "set", "request.ttl", "1s"]);
    let out = s.ok("ops", OPS_CRED, &["key", "destroy", "DSET.PRIM.CLOCK.key002"]);
    let id = out.split_whitespace().nth(1).unwrap().trim_end_matches(':').to_string();
    std::thread::sleep(Duration::from_millis(1500));
    let o = faked("-1 day", "alice", ALICE, &["request", "approve", &id]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("expired"), "{err}");
    let k: serde_json::Value =
        serde_json::from_str(&s.ok("ops", OPS_CRED, &["--json", "key", "show", "DSET.PRIM.CLOCK.key002"])).unwrap();
    assert_eq!(k["state"], "pre-active", "the expired request did not run: {k}");
    let r = s.ok("ops", OPS_CRED, &["--json", "request", "show", &id]);
    assert!(r.contains("\"expired\""), "{r}");
    // A command in embedded mode that opens the HSM, eight days ahead: that
    // process's clock decides (embedded mode trusts its caller; the threat
    // model says so).
    let mut c = Command::new("faketime");
    c.env_clear()
        .env("CUSTOS_VAULT", &e.vault)
        .env("CUSTOS_PASSPHRASE", PASS)
        .envs(e.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .arg("+8 days")
        .arg(assert_cmd::cargo::cargo_bin("custos"))
        .args(["audit", "verify"]);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let k = s.ok("ops", OPS_CRED, &["--json", "key", "show", "DSET.PRIM.CLOCK.key001"]);
    assert!(k.contains("\"destroyed\""), "{k}");
}

/// Escrow through the server: one custodian cannot set it up alone, each
/// share reaches only its own custodian (sealed to the key pair they made),
/// a recovery needs a threshold of custodians each giving their own share,
/// and purging an in-use key's escrow copy waits for a second person, all
/// under the default dual-control settings.
#[test]
fn escrow_shares_reach_only_their_custodians() {
    let e = Env::new();
    add(&e, "alice", "security-admin", ALICE);
    let bytes = data(50_000, 3);
    e.ok(&["ds", "put", "ESC.A", Env::s(&e.file("a", &bytes))]);
    // Each custodian's own directory (their machine), which only the
    // client account reads.
    let home = e.dir.path().join("custodians");
    std::fs::create_dir(&home).unwrap();
    let mut keys = Vec::new();
    let mut custodians = Vec::new();
    for n in ["cara", "dan", "erin"] {
        let (c, key) = e.custodian(n);
        let mine = home.join(format!("{n}.key"));
        std::fs::copy(&key, &mine).unwrap();
        keys.push(mine);
        custodians.push(c);
    }
    if root() {
        chown_tree(&home, CLIENT_UID, SOCKET_GID);
    }
    e.ok(&["config", "set", "dual-control", &custos_core::DEFAULT_DUAL_CONTROL.join(",")]);
    let cred = |n: &str| format!("{n}'s credential, long");
    let (cara, dan) = (cred("cara"), cred("dan"));
    let s = Served::start(&e);
    let id_of = |out: &str| out.split_whitespace().nth(1).unwrap().trim_end_matches(':').to_string();

    // One custodian's `escrow init` is a request; a second person's
    // approval runs it, and no share is handed to either.
    let init =
        ["escrow", "init", "--custodian", "cara", "--custodian", "dan", "--custodian", "erin", "--threshold", "2"];
    let out = s.ok("cara", &cara, &init);
    assert!(out.contains("under dual control"), "{out}");
    let out = s.ok("dan", &dan, &["request", "approve", &id_of(&out)]);
    assert!(out.contains("sealed to its custodian's registered recipient"), "{out}");
    let sealed = |n: &str| home.join(format!("{n}.sealed"));
    let (cara_sealed, dan_sealed) = (sealed("cara"), sealed("dan"));
    for n in ["cara", "dan"] {
        // With --json too the file is written; the JSON says where.
        let j: serde_json::Value =
            serde_json::from_str(&s.ok(n, &cred(n), &["escrow", "share", "--out", Env::s(&sealed(n)), "--json"]))
                .unwrap();
        assert_eq!((j["path"].as_str(), j["custodian"].as_str()), (Some(Env::s(&sealed(n))), Some(n)), "{j}");
        assert!(j.get("sealed_share").is_none(), "{j}");
        let text = std::fs::read_to_string(sealed(n)).unwrap();
        assert!(text.contains(&format!("custodian: {n}\n")) && !text.contains("\nshare: "), "{text}");
    }
    // Cara's key does not open Dan's share.
    let err =
        s.fails("cara", &cara, &["escrow", "confirm", "--share", Env::s(&sealed("dan")), "--key", Env::s(&keys[0])], 1);
    assert!(err.contains("use the key of custodian dan"), "{err}");
    s.ok("cara", &cara, &["escrow", "confirm", "--share", Env::s(&sealed("cara")), "--key", Env::s(&keys[0])]);

    // The key is crypto-erased (a second person approves that too).
    s.ok("ops", OPS_CRED, &["key", "deactivate", "DSET.PRIM.ESC.key001"]);
    let out = s.ok("ops", OPS_CRED, &["key", "destroy", "DSET.PRIM.ESC.key001", "--crypto-erase"]);
    s.ok("alice", ALICE, &["request", "approve", &id_of(&out)]);
    s.fails("ops", OPS_CRED, &["ds", "get", "ESC.A"], 5);

    // A recovery: Cara gives her share; she cannot give Dan's, even holding it.
    let recover = ["key", "recover", "DSET.PRIM.ESC.key001", "--escrow"];
    let both = [&recover[..], &["--share", Env::s(&cara_sealed), "--share", Env::s(&dan_sealed)]].concat();
    let err = s.fails("cara", &cara, &[&both[..], &["--key", Env::s(&keys[0]), "--key", Env::s(&keys[1])]].concat(), 1);
    assert!(err.contains("is dan's: on a server each custodian gives only their own share"), "{err}");
    let out =
        s.ok("cara", &cara, &[&recover[..], &["--share", Env::s(&sealed("cara")), "--key", Env::s(&keys[0])]].concat());
    assert!(out.contains("shares given by cara (1 of 2 needed)"), "{out}");
    let id = id_of(&out);
    s.fails("ops", OPS_CRED, &["ds", "get", "ESC.A"], 5);
    // An approval without a share adds nothing; Dan's share completes it.
    let err = s.fails("alice", ALICE, &["request", "approve", &id], 8);
    assert!(err.contains("do not allow Escrow"), "{err}");
    let err = s.fails("erin", &cred("erin"), &["request", "approve", &id], 1);
    assert!(err.contains("approve it with your own share"), "{err}");
    let out =
        s.ok("dan", &dan, &["request", "approve", &id, "--share", Env::s(&sealed("dan")), "--key", Env::s(&keys[1])]);
    assert!(out.contains("recovered key DSET.PRIM.ESC.key001"), "{out}");
    let o = s.run("ops", OPS_CRED, &["ds", "get", "ESC.A"], None);
    assert!(o.status.success() && o.stdout == bytes, "{}", String::from_utf8_lossy(&o.stderr));

    // Purging an escrow copy (of a key in use again) waits for a second person.
    s.ok("ops", OPS_CRED, &["key", "activate", "DSET.PRIM.ESC.key001"]);
    let out = s.ok("cara", &cara, &["escrow", "purge", "DSET.PRIM.ESC.key001"]);
    assert!(out.contains("under dual control"), "{out}");
    let st: serde_json::Value = serde_json::from_str(&s.ok("cara", &cara, &["--json", "escrow", "status"])).unwrap();
    assert_eq!(st["escrowed_count"], 1, "{st}");
    assert!(s.ok("ops", OPS_CRED, &["audit", "verify"]).contains("audit log intact"));
    drop(custodians);
}

/// Rows edited in the catalog while a server runs (by whoever can write
/// the file, without the HSM): the server acts on none of them, and names
/// the table and row, to the client and in `catalog verify`. Every kind of
/// edit issue 13 lists, one after another; each forged row is deleted again
/// once shown (a deletion is not what a MAC catches), the last ones stay.
#[test]
fn a_server_refuses_rows_edited_outside_it() {
    let e = Env::new();
    let ka = e.json(&["ds", "put", "PAY.A", Env::s(&e.file("a", b"alpha"))])["key_label"].as_str().unwrap().to_string();
    let kb = e.json(&["ds", "put", "PAY.B", Env::s(&e.file("b", b"bravo"))])["key_label"].as_str().unwrap().to_string();
    let clerk = "a clerk's credential";
    e.cmd(&["user", "add", "clerk", "--role", "app"]).env("CUSTOS_NEW_CREDENTIAL", clerk).assert().success();
    e.ok(&["user", "grant", "clerk", "--data", "PAY.A"]);
    e.ok(&["user", "grant", "clerk", "--key", "DSET.PRIM.PAY.*"]);
    let s = Served::start(&e);
    let got = s.run("clerk", clerk, &["ds", "get", "PAY.A"], None);
    assert_eq!(got.stdout, b"alpha", "{}", String::from_utf8_lossy(&got.stderr));
    // A request, approved by a second admin and executed.
    s.ok("admin", ADMIN_CRED, &["config", "set", "dual-control", "role-change"]);
    s.ok("ops", OPS_CRED, &["user", "grant", "clerk", "--data", "PAY.C"]);
    let id = s.ok("ops", OPS_CRED, &["--json", "request", "ls"]);
    let id = serde_json::from_str::<serde_json::Value>(&id).unwrap()[0]["id"].as_u64().unwrap().to_string();
    s.ok("admin", ADMIN_CRED, &["request", "approve", &id]);
    let verdict = s.run("ops", OPS_CRED, &["catalog", "verify"], None);
    assert!(String::from_utf8_lossy(&verdict.stdout).contains("catalog intact"), "{}", s.log());

    let db = rusqlite::Connection::open(e.vault.join("custos.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    let edit = |sql: &str| db.execute_batch(sql).unwrap();
    let refused = |o: &Output, table: &str, row: &str| {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(4), "{table} {row}: {err}");
        assert!(err.contains(&format!("catalog row {table} ")) && err.contains(row), "{err}");
        assert!(o.stdout.is_empty(), "nothing was read");
    };
    let listed = |expect: &[&str]| {
        let o = s.run("ops", OPS_CRED, &["catalog", "verify"], None);
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(4), "{out}");
        for x in expect {
            assert!(out.contains(x), "{x} not in {out}");
        }
    };
    // A grant inserted.
    edit("INSERT INTO grants (principal, kind, pattern, created_at) VALUES ('clerk', 'data', 'PAY.**', 0)");
    refused(&s.run("clerk", clerk, &["ds", "get", "PAY.B"], None), "grants", "pattern='PAY.**'");
    listed(&["grants principal='clerk' kind='data' pattern='PAY.**'"]);
    edit("DELETE FROM grants WHERE pattern = 'PAY.**'");
    // A principal added, with a copy of another's credential hash.
    edit("INSERT INTO principals (name, role, credential, disabled, created_at) SELECT 'mallory', 'security-admin', credential, 0, created_at FROM principals WHERE name = 'ops'");
    refused(&s.run("mallory", OPS_CRED, &["key", "ls"], None), "principals", "name='mallory'");
    listed(&["principals name='mallory'"]);
    edit("DELETE FROM principals WHERE name = 'mallory'");
    // requested_by changed (so its requester could approve it), and the
    // executed request reset to pending.
    edit(&format!("UPDATE requests SET requested_by = 'admin' WHERE id = {id}"));
    refused(&s.run("ops", OPS_CRED, &["request", "approve", &id], None), "requests", &format!("id={id}"));
    edit(&format!("UPDATE requests SET state = 'pending', decided_by = NULL, decided_at = NULL WHERE id = {id}"));
    refused(&s.run("admin", ADMIN_CRED, &["request", "approve", &id], None), "requests", &format!("id={id}"));
    listed(&[&format!("requests id={id}")]);
    edit(&format!("DELETE FROM requests WHERE id = {id}"));
    // A setting changed: dual control off.
    edit("UPDATE settings SET value = 'none' WHERE key = 'dual-control'");
    refused(
        &s.run("ops", OPS_CRED, &["user", "grant", "clerk", "--data", "PAY.D"], None),
        "settings",
        "key='dual-control'",
    );
    // A key's state, and two keys' wrapped material and check values swapped.
    edit(&format!("UPDATE keys SET state = 'destroyed' WHERE label = '{kb}'"));
    refused(&s.run("ops", OPS_CRED, &["ds", "get", "PAY.B"], None), "keys", &format!("label='{kb}'"));
    edit(&format!(
        "UPDATE keys SET wrapped = CASE label WHEN '{ka}' THEN (SELECT wrapped FROM keys WHERE label = '{kb}') ELSE (SELECT wrapped FROM keys WHERE label = '{ka}') END,
         kcv = CASE label WHEN '{ka}' THEN (SELECT kcv FROM keys WHERE label = '{kb}') ELSE (SELECT kcv FROM keys WHERE label = '{ka}') END
         WHERE label IN ('{ka}', '{kb}')"
    ));
    refused(&s.run("ops", OPS_CRED, &["ds", "get", "PAY.A"], None), "keys", &format!("label='{ka}'"));
    // A credential hash replaced (by another principal's).
    edit("UPDATE principals SET credential = (SELECT credential FROM principals WHERE name = 'ops') WHERE name = 'clerk'");
    refused(&s.run("clerk", OPS_CRED, &["ds", "get", "PAY.A"], None), "principals", "name='clerk'");
    listed(&[
        "settings key='dual-control'",
        &format!("keys label='{ka}'"),
        &format!("keys label='{kb}'"),
        "principals name='clerk'",
    ]);
    // The server stays up and serves what was not touched.
    let got = s.run("ops", OPS_CRED, &["ds", "ls"], None);
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
}

/// A vault whose catalog is on PostgreSQL (ADR 0020): made by `init
/// --repository`, used by embedded commands through the address the vault
/// records, and served by a server whose configuration names it. Nothing
/// is written to custos.db.
#[test]
fn a_vault_whose_catalog_is_on_postgres() {
    let e = Env::new_postgres();
    // A default volume only this machine reaches is pointed out.
    let pg = e.pg.as_ref().unwrap();
    pg.create_database("warned");
    let o = e
        .at(e.dir.path().join("warned"))
        .cmd(&["init", "--kdf-memory-mib", "19", "--kdf-iterations", "2", "--repository", &pg.url("warned")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("default volume is inside this vault directory"), "{err}");
    let url = e.pg.as_ref().unwrap().url("custos");
    assert!(!e.vault.join("custos.db").exists(), "no embedded catalog");
    let mode = std::fs::metadata(e.vault.join("repository")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the catalog's address is the owner's alone");
    let body = data(300_000, 7);
    e.cmd(&["ds", "put", "PAY.JAN"]).write_stdin(body.clone()).assert().success();
    assert_eq!(e.cmd(&["ds", "get", "PAY.JAN"]).output().unwrap().stdout, body);
    let offsite = e.vault.join("volumes").join("offsite");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&offsite), "--site", "B"]);
    e.ok(&["backup", "run", "PAY.JAN", "--method", "logical", "--to", "offsite"]);
    e.ok(&["snapshot", "create", "PAY.JAN"]);
    e.ok(&["catalog", "verify"]); // exit 0: every row checked and sound
    assert!(e.ok(&["audit", "verify"]).contains("audit log intact"));
    // A second `init` on the same database is refused: it holds a vault.
    let other = e.dir.path().join("other");
    let o = e
        .cmd(&["init", "--kdf-memory-mib", "19", "--kdf-iterations", "2", "--repository", &url])
        .env("CUSTOS_VAULT", &other)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("already holds a Custos catalog") && err.matches("already holds").count() == 1, "{err}");
    assert!(!other.join("repository").exists() && !other.join("hsm.sealed").exists(), "nothing made");
    assert!(!e.vault.join("hsm.sealed").exists(), "the catalog keeps the software HSM");

    // The server, told where the catalog is by its configuration.
    let s = Served::start_named(&e, "pg", &format!("repository = {url:?}"), "kind = \"soft\"", PASS, "");
    assert_eq!(s.run("ops", OPS_CRED, &["ds", "get", "PAY.JAN"], None).stdout, body);
    let next = data(120_000, 9);
    let put = s.run("ops", OPS_CRED, &["ds", "put", "PAY.FEB"], Some(&next));
    assert!(put.status.success(), "{}: {}", String::from_utf8_lossy(&put.stderr), s.log());
    s.ok("ops", OPS_CRED, &["backup", "run", "PAY.FEB", "--method", "raw", "--to", "offsite"]);
    assert!(s.ok("ops", OPS_CRED, &["backup", "verify", "--read-data"]).contains("every chunk read"));
    assert!(s.ok("ops", OPS_CRED, &["audit", "verify"]).contains("audit log intact"));
    s.ok("ops", OPS_CRED, &["catalog", "verify"]);
    // Stopped, the server closes the vault, anchoring the audit log in the
    // catalog's HSM, and exits cleanly.
    let st = s.stop().expect("it was running");
    assert!(st.success(), "{st}: {}", s.log());
    assert!(!e.vault.join("custos.db").exists(), "the server wrote no embedded catalog either");
    // And the rows the server wrote read back embedded, checked.
    assert_eq!(e.cmd(&["ds", "get", "PAY.FEB"]).output().unwrap().stdout, next);
}

/// A vault on PostgreSQL keeps its software HSM in the catalog, and every
/// path that handles the HSM as a whole finds it there: a drill's clone, a
/// vault backup and its recovery (as an embedded vault with `hsm.sealed`),
/// and, once a database administrator deletes the row, the clear refusal
/// and `vault rebuild` from the custodians' escrow shares into the catalog.
#[test]
fn a_software_hsm_kept_in_the_catalog_is_backed_up_drilled_lost_and_rebuilt() {
    let e = Env::new_postgres();
    assert!(!e.vault.join("hsm.sealed").exists());
    let off = e.dir.path().join("offsite");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&off), "--site", "B"]);
    let body = data(90_000, 5);
    e.cmd(&["ds", "put", "PAY.JAN"]).write_stdin(body.clone()).assert().success();
    e.ok(&["backup", "run", "PAY.**", "--to", "offsite"]);
    let out = e.ok(&["risk", "drill", "--threat", "master-key-loss"]);
    assert!(out.contains("agree") && !out.contains("DISAGREES"), "{out}");
    assert!(!e.vault.join("hsm.sealed").exists(), "the drill's clone left nothing here");

    // The vault backup carries the catalog's HSM; it comes back as a file.
    e.ok(&["vault", "backup", "--to", "offsite"]);
    let r = e.at(e.dir.path().join("recovered"));
    r.ok(&["vault", "recover", "--from", Env::s(&off)]);
    assert!(r.vault.join("hsm.sealed").exists() && r.vault.join("custos.db").exists());
    assert_eq!(r.ok(&["mk", "status"]), e.ok(&["mk", "status"]), "the same master keys");
    r.ok(&["restore", "PAY.JAN"]);
    assert_eq!(r.cmd(&["ds", "get", "PAY.JAN"]).output().unwrap().stdout, body);

    // Custodians hold the escrow; then the row is lost.
    let custodians: Vec<(Env, PathBuf)> = ["alice", "bob"].iter().map(|n| e.custodian(n)).collect();
    e.ok(&["escrow", "init", "--threshold", "2", "--custodian", "alice", "--custodian", "bob"]);
    let mut shares = Vec::new();
    for (c, _) in &custodians {
        let p = c.dir.path().join("mine.sealed");
        c.ok(&["escrow", "share", "--out", Env::s(&p)]);
        shares.push(p);
    }
    let pg = e.pg.as_ref().unwrap();
    pg.execute("custos", "DELETE FROM hsm_state");
    let o = e.run(&["ds", "get", "PAY.JAN"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no software HSM (in the catalog, table hsm_state)"), "{err}");
    assert!(err.contains("vault rebuild"), "says what to do: {err}");
    let mut rebuild = vec!["vault", "rebuild"];
    for ((_, key), share) in custodians.iter().zip(&shares) {
        rebuild.extend(["--share", Env::s(share), "--key", Env::s(key)]);
    }
    let out = e.ok(&rebuild);
    assert!(out.contains("recovered"), "{out}");
    assert!(!e.vault.join("hsm.sealed").exists(), "the new HSM is in the catalog too");
    assert_eq!(e.cmd(&["ds", "get", "PAY.JAN"]).output().unwrap().stdout, body);
    let again = e.run(&rebuild);
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"), "a second rebuild is refused");
}

/// `custos repo migrate` moves an embedded vault's catalog into an empty
/// PostgreSQL database and back (ADR 0020): the copy verifies (every MAC,
/// the audit chain, the same rows) before the vault switches, the old
/// catalog is kept, data reads back the same throughout, and a database
/// that already holds a catalog is refused with the source untouched.
#[test]
fn a_catalog_moves_to_postgres_and_back() {
    let pg = custos_testing::Postgres::start();
    pg.create_database("moved");
    let url = pg.url("moved");
    let e = Env::new();
    let body = data(200_000, 3);
    e.cmd(&["ds", "put", "PAY.JAN"]).write_stdin(body.clone()).assert().success();
    let offsite = e.vault.join("volumes").join("offsite");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&offsite), "--site", "B"]);
    e.ok(&["backup", "run", "PAY.JAN", "--method", "logical", "--to", "offsite"]);
    // Every key, all but its use count (reads count uses).
    let key_ls = |e: &Env| -> Vec<String> {
        e.ok(&["key", "ls"]).lines().map(|l| l.rsplit_once(' ').map_or(l, |(a, _)| a).to_string()).collect()
    };
    let keys = key_ls(&e);
    // Only a security-admin moves the catalog.
    e.cmd(&["user", "add", "clerk", "--role", "app"])
        .env("CUSTOS_NEW_CREDENTIAL", "clerk credential long")
        .assert()
        .success();
    let err = e.as_user("clerk", "clerk credential long").fails(&["repo", "migrate", "--to", &url], 8);
    assert!(err.contains("security-admin"), "{err}");
    let err = e.fails(&["repo", "migrate", "--to", "mysql://x"], 1);
    assert!(err.contains("neither `sqlite` nor a PostgreSQL address"), "{err}");

    let out = e.ok(&["repo", "migrate", "--to", &url]);
    assert!(out.contains("moved the catalog from custos.db to PostgreSQL") && out.contains("verified"), "{out}");
    assert!(
        !e.vault.join("custos.db").exists() && e.vault.join("custos.db.migrated").exists(),
        "old catalog kept aside"
    );
    // The software HSM moved into the catalog, its file kept aside.
    assert!(out.contains("software HSM moved into the catalog"), "{out}");
    assert!(!e.vault.join("hsm.sealed").exists() && e.vault.join("hsm.sealed.migrated").exists());
    // Once the two differ, a file put back beside the catalog's HSM is
    // refused, never silently preferred, and nothing changes.
    e.ok(&["mk", "load-new", "--generate"]);
    let held = e.ok(&["mk", "status"]);
    std::fs::copy(e.vault.join("hsm.sealed.migrated"), e.vault.join("hsm.sealed")).unwrap();
    let o = e.run(&["mk", "status"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("both") && err.contains("hsm_state") && err.contains("differ"), "{err}");
    std::fs::remove_file(e.vault.join("hsm.sealed")).unwrap();
    assert_eq!(e.ok(&["mk", "status"]), held, "the catalog's HSM, NEW register loaded, is the one in use");
    e.ok(&["mk", "clear-new"]);
    assert_eq!(e.cmd(&["ds", "get", "PAY.JAN"]).output().unwrap().stdout, body);
    assert_eq!(key_ls(&e), keys);
    e.ok(&["catalog", "verify"]);
    assert!(e.ok(&["audit", "verify"]).contains("audit log intact"));
    assert!(e.ok(&["audit", "ls"]).contains("repo-migrate"), "the move is in the log it moved");
    assert!(e.ok(&["backup", "verify", "--read-data"]).contains("every chunk read"));
    let err = e.fails(&["repo", "migrate", "--to", &url], 1);
    assert!(err.contains("on PostgreSQL already"), "{err}");

    // A second vault cannot move into the database the first now uses.
    let other = Env::new();
    let before = std::fs::read(other.vault.join("custos.db")).unwrap();
    let err = other.fails(&["repo", "migrate", "--to", &url], 1);
    assert!(err.contains("not empty") && err.contains("give an empty database"), "{err}");
    assert!(other.vault.join("custos.db").exists() && !other.vault.join("repository").exists());
    assert_eq!(std::fs::read(other.vault.join("custos.db")).unwrap().len(), before.len());

    // And back into custos.db.
    let next = data(50_000, 4);
    e.cmd(&["ds", "put", "PAY.FEB"]).write_stdin(next.clone()).assert().success();
    let out = e.ok(&["repo", "migrate", "--to", "sqlite"]);
    assert!(out.contains("moved the catalog from PostgreSQL to custos.db"), "{out}");
    assert!(e.vault.join("custos.db").exists() && e.vault.join("repository.migrated").exists());
    assert!(!e.vault.join("repository").exists());
    assert!(!e.vault.join("hsm.sealed").exists(), "the HSM came back inside the catalog's copy");
    assert_eq!(e.cmd(&["ds", "get", "PAY.JAN"]).output().unwrap().stdout, body);
    assert_eq!(e.cmd(&["ds", "get", "PAY.FEB"]).output().unwrap().stdout, next);
    e.ok(&["catalog", "verify"]);
    assert!(e.ok(&["audit", "verify"]).contains("audit log intact"));
}

/// Two servers on one PostgreSQL catalog, each with a vault directory of
/// its own (they share the catalog, which keeps the software HSM, and the
/// volumes' directory, as machines share a mount): while server B creates
/// keys as fast as it can, server A loads and activates a new master key
/// twice, re-enciphering in between. Afterwards every key B acknowledged
/// is in the catalog wrapped under a master key some register still holds,
/// both servers report the same registers, and data written through B
/// after the changes reads back through A.
#[test]
fn master_key_changes_on_one_server_reach_the_other_before_it_wraps() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let e = Env::new_postgres();
    assert!(!e.vault.join("hsm.sealed").exists(), "the catalog keeps the software HSM");
    let top = format!("repository = {:?}", e.pg.as_ref().unwrap().url("custos"));
    let a = Served::start_named(&e, "a", &top, "kind = \"soft\"", PASS, "");
    let other = tempfile::tempdir().unwrap();
    let vault_b = other.path().join("vault-b");
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(&vault_b).unwrap();
    std::os::unix::fs::symlink(e.vault.join("volumes"), vault_b.join("volumes")).unwrap();
    let eb = e.at(vault_b.clone());
    let b = Served::start_named(&eb, "b", &top, "kind = \"soft\"", PASS, "");
    let json = |s: &Served, args: &[&str]| -> serde_json::Value {
        let mut v = args.to_vec();
        v.push("--json");
        serde_json::from_str(&s.ok("ops", OPS_CRED, &v)).unwrap()
    };
    let stop = AtomicBool::new(false);
    let (made, failed) = std::thread::scope(|scope| {
        let creator = scope.spawn(|| {
            let (mut made, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let o = b.run("ops", OPS_CRED, &["key", "create", "--app", "RACE", "--activate"], None);
                if o.status.success() {
                    made += 1;
                } else {
                    failed.push(String::from_utf8_lossy(&o.stderr).to_string());
                }
            }
            (made, failed)
        });
        for _ in 0..2 {
            std::thread::sleep(Duration::from_millis(700));
            a.ok("ops", OPS_CRED, &["mk", "load-new", "--generate"]);
            // Keys B wrapped under the register about to be dropped hold the
            // activation back until they are re-enciphered.
            let mut tries = 0;
            while a.run("ops", OPS_CRED, &["mk", "activate"], None).status.code() != Some(0) {
                tries += 1;
                assert!(tries < 20, "mk activate never got through: {}", a.log());
                a.ok("ops", OPS_CRED, &["mk", "reencipher"]);
            }
            std::thread::sleep(Duration::from_millis(300));
            a.ok("ops", OPS_CRED, &["mk", "reencipher"]);
        }
        std::thread::sleep(Duration::from_millis(700));
        stop.store(true, Ordering::Relaxed);
        creator.join().unwrap()
    });
    assert!(failed.is_empty(), "key creation failed on B: {failed:#?}");
    assert!(made > 10, "too few keys made to prove anything: {made}");
    let regs = |s: &Served| -> Vec<String> {
        json(s, &["mk", "status"])["registers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| format!("{}={}", r["register"].as_str().unwrap(), r["mkvp"].as_str().unwrap()))
            .collect()
    };
    let held = regs(&a);
    assert_eq!(regs(&b), held, "both servers hold the same registers");
    assert_eq!(held.len(), 2, "CURRENT and OLD after two activations: {held:?}");
    let keys = json(&a, &["key", "ls"]);
    let keys = keys.as_array().unwrap();
    let race: Vec<&serde_json::Value> =
        keys.iter().filter(|k| k["label"].as_str().unwrap().contains(".RACE.")).collect();
    assert_eq!(race.len() as u32, made, "every acknowledged key is in the catalog");
    for k in keys {
        let m = k["mkvp"].as_str().unwrap_or_else(|| panic!("a key without an MKVP: {k}"));
        assert!(
            held.iter().any(|r| r.ends_with(m)),
            "{} is wrapped under {m}, which no register holds ({held:?})",
            k["label"]
        );
    }
    let body = data(40_000, 5);
    assert!(b.run("ops", OPS_CRED, &["ds", "put", "RACE.AFTER"], Some(&body)).status.success());
    assert_eq!(a.run("ops", OPS_CRED, &["ds", "get", "RACE.AFTER"], None).stdout, body);
    assert!(a.ok("ops", OPS_CRED, &["audit", "verify"]).contains("audit log intact"));
    let only_b: Vec<_> = std::fs::read_dir(&vault_b).unwrap().map(|f| f.unwrap().file_name()).collect();
    assert!(!vault_b.join("hsm.sealed").exists(), "B kept no HSM of its own: {only_b:?}");
    eprintln!("B made {made} keys while A changed master keys twice");
}

/// What one client of the two-server soak saw.
#[derive(Default)]
struct Client2 {
    /// Datasets written (each name once) and their content, acknowledged.
    acked: Vec<(String, Vec<u8>)>,
    backups: u64,
    /// Keys destroyed through a request another principal approved.
    approved: Vec<(String, u64)>,
    /// Commands whose outcome the kill left unknown (said so, exit non-zero).
    unknown: u64,
    /// Commands a server failed that the next one carried out.
    failed_over: u64,
    refused: Vec<String>,
}

/// Two servers on one PostgreSQL catalog and one vault, eight clients each
/// given both (four with A first, four with B first), for 60 s: puts, gets,
/// backups, key lifecycle and dual-control approvals. Halfway, server A is
/// killed with SIGKILL and stays down; its clients go on through B.
/// Afterwards every acknowledged write reads back through B, no write was
/// carried out twice (each dataset has one successful put in the audit log
/// and is at generation 1; each approved destruction ran once), `audit
/// verify` passes over the one chain, and every backup verifies.
#[test]
fn eight_clients_on_two_servers_one_killed_lose_and_repeat_nothing() {
    let secs: u64 = std::env::var("CUSTOS_SERVER_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let e = Env::new_postgres();
    let offsite = e.vault.join("volumes").join("offsite");
    e.ok(&["volume", "add", "offsite", "--path", Env::s(&offsite), "--site", "B"]);
    e.ok(&["config", "set", "dual-control", "key-destroy"]);
    let top = format!("repository = {:?}", e.pg.as_ref().unwrap().url("custos"));
    let a = Served::start_named(&e, "a", &top, "kind = \"soft\"", PASS, "");
    let b = Served::start_named(&e, "b", &top, "kind = \"soft\"", PASS, "");
    let (sa, sb) = (format!("unix:{}", a.sock.display()), format!("unix:{}", b.sock.display()));
    let (ab, ba) = (format!("{sa},{sb}"), format!("{sb},{sa}"));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let results: Vec<Client2> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8u8)
            .map(|w| {
                let servers = if w % 2 == 0 { ab.clone() } else { ba.clone() };
                scope.spawn(move || {
                    let mut seen = Client2::default();
                    let attempt = |user: &str, cred: &str, args: &[&str], stdin: Option<&[u8]>, seen: &mut Client2| {
                        let o = run_of(&servers, user, cred, args, stdin);
                        let err = String::from_utf8_lossy(&o.stderr).to_string();
                        if err.contains("did not carry it out") {
                            seen.failed_over += 1;
                        }
                        match o.status.code() {
                            Some(0) => Some(o),
                            _ if err.contains("whether it took effect is unknown") => {
                                seen.unknown += 1;
                                None
                            }
                            _ => {
                                seen.refused.push(format!("{args:?}: {err}"));
                                None
                            }
                        }
                    };
                    let mut n = 0u32;
                    while Instant::now() < deadline {
                        n += 1;
                        match n % 6 {
                            0 | 1 => {
                                let name = format!("SOAK.W{w}.N{n}");
                                let body = data(1_000 + (n as usize * 131) % 20_000, w ^ n as u8);
                                if attempt("ops", OPS_CRED, &["ds", "put", &name], Some(&body), &mut seen).is_some() {
                                    seen.acked.push((name, body));
                                }
                            }
                            2 => {
                                if let Some((name, want)) = seen.acked.last().cloned() {
                                    if let Some(o) = attempt("ops", OPS_CRED, &["ds", "get", &name], None, &mut seen) {
                                        if o.stdout != want {
                                            seen.refused.push(format!("{name} read back wrong"));
                                        }
                                    }
                                }
                            }
                            3 => {
                                if let Some((name, _)) = seen.acked.last().cloned() {
                                    let args = ["backup", "run", name.as_str(), "--method", "raw", "--to", "offsite"];
                                    if attempt("ops", OPS_CRED, &args, None, &mut seen).is_some() {
                                        seen.backups += 1;
                                    }
                                }
                            }
                            4 => {
                                // A key's whole life: made, used up, destroyed
                                // under dual control (admin approves).
                                let label = format!("DSET.PRIM.SOAKW{w}.key{n:03}");
                                let made =
                                    attempt("ops", OPS_CRED, &["key", "create", &label, "--activate"], None, &mut seen);
                                if made.is_none()
                                    || attempt("ops", OPS_CRED, &["key", "deactivate", &label], None, &mut seen)
                                        .is_none()
                                {
                                    continue;
                                }
                                let Some(o) =
                                    attempt("ops", OPS_CRED, &["key", "destroy", &label, "--json"], None, &mut seen)
                                else {
                                    continue;
                                };
                                let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
                                let Some(id) = v["id"].as_u64().or(v["request"]["id"].as_u64()) else {
                                    seen.refused.push(format!("key destroy {label} made no request: {v}"));
                                    continue;
                                };
                                let id_s = id.to_string();
                                if attempt("admin", ADMIN_CRED, &["request", "approve", &id_s], None, &mut seen)
                                    .is_some()
                                {
                                    seen.approved.push((label, id));
                                }
                            }
                            _ => {
                                attempt(
                                    "ops",
                                    OPS_CRED,
                                    &["key", "create", "--app", &format!("SOAKW{w}")],
                                    None,
                                    &mut seen,
                                );
                            }
                        }
                    }
                    seen
                })
            })
            .collect();
        // Halfway: server A dies without warning and stays down.
        std::thread::sleep(Duration::from_secs(secs / 2));
        a.kill9();
        workers.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    let refused: Vec<&String> = results.iter().flat_map(|r| &r.refused).collect();
    assert!(refused.is_empty(), "{} commands failed for good: {refused:#?}", refused.len());
    let acked: usize = results.iter().map(|r| r.acked.len()).sum();
    let backups: u64 = results.iter().map(|r| r.backups).sum();
    let approved: usize = results.iter().map(|r| r.approved.len()).sum();
    let failed_over: u64 = results.iter().map(|r| r.failed_over).sum();
    let unknown: u64 = results.iter().map(|r| r.unknown).sum();
    assert!(
        acked > 40 && backups > 5 && approved > 3,
        "too little work: {acked} puts, {backups} backups, {approved} approvals"
    );
    assert!(failed_over > 0, "no command went from the killed server to the other: the kill proved nothing");
    // Every acknowledged write reads back through the survivor, once written.
    let json = |args: &[&str]| -> serde_json::Value {
        let mut v = args.to_vec();
        v.push("--json");
        serde_json::from_str(&b.ok("ops", OPS_CRED, &v)).unwrap()
    };
    // Four clients at a time: the server answers them together.
    let gets: Vec<_> = results.iter().flat_map(|r| &r.acked).collect();
    let approvals: Vec<_> = results.iter().flat_map(|r| &r.approved).collect();
    std::thread::scope(|s| {
        for i in 0..4 {
            let (gets, approvals, json, b) = (&gets, &approvals, &json, &b);
            s.spawn(move || {
                for (name, want) in gets.iter().skip(i).step_by(4) {
                    let got = b.run("ops", OPS_CRED, &["ds", "get", name], None);
                    assert!(got.status.success() && got.stdout == *want, "{name}: acknowledged, then lost");
                }
                for (label, id) in approvals.iter().skip(i).step_by(4) {
                    assert_eq!(json(&["key", "show", label])["state"], "destroyed", "{label}");
                    assert_eq!(json(&["request", "show", &id.to_string()])["state"], "executed", "request {id}");
                }
            });
        }
    });
    // Nothing carried out twice: one successful put per dataset, each at
    // generation 1; one destruction per approved key.
    let log = json(&["audit", "ls"]);
    let mut puts: std::collections::BTreeMap<String, u32> = Default::default();
    let mut destroys: std::collections::BTreeMap<String, u32> = Default::default();
    for entry in log.as_array().unwrap() {
        let (action, object, result) =
            (entry["action"].as_str().unwrap(), entry["object"].as_str().unwrap(), entry["result"].as_str().unwrap());
        if result == "ok" && action == "ds put" {
            *puts.entry(object.to_string()).or_default() += 1;
        }
        if result == "ok" && action == "key destroy" {
            *destroys.entry(object.to_string()).or_default() += 1;
        }
    }
    let twice: Vec<_> = puts.iter().chain(&destroys).filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "carried out more than once: {twice:?}");
    for ds in json(&["ds", "ls", "SOAK.**"]).as_array().unwrap() {
        let generation = ds["generation"].as_u64().or(ds["current"]["generation"].as_u64());
        assert_eq!(generation, Some(1), "{} was written twice: {ds}", ds["name"]);
    }
    assert!(b.ok("ops", OPS_CRED, &["audit", "verify"]).contains("audit log intact"));
    assert!(b.ok("ops", OPS_CRED, &["backup", "verify", "--read-data"]).contains("every chunk read"));
    eprintln!(
        "{acked} puts, {backups} backups, {approved} approved destructions over {secs}s; {failed_over} commands failed over, {unknown} left unknown by the kill"
    );
}

/// A write sent again with the same `Idempotency-Key` (a client's retry
/// after a cut) is carried out once: the second gets the first answer,
/// marked replayed. The key belongs to one request from one principal;
/// reads ignore it.
/// A read cut off by its server's death is asked again of the next
/// server when nothing of it reached the output yet, or when the output is
/// a file still being written aside; once bytes went to stdout, it is not,
/// and the error says how many did.
#[test]
fn a_read_cut_off_by_a_dying_server_is_asked_of_the_next() {
    let e = Env::new_postgres();
    let body = data(48 << 20, 3);
    e.cmd(&["ds", "put", "CUT.BIG"]).write_stdin(body.clone()).assert().success();
    let top = format!("repository = {:?}", e.pg.as_ref().unwrap().url("custos"));
    let out = tempfile::tempdir().unwrap();
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let file = out.path().join("big.out");
    let both = |a: &Served, b: &Served| format!("unix:{},unix:{}", a.sock.display(), b.sock.display());
    // Into a file: server A dies once the copy aside has begun.
    let a = Served::start_named(&e, "a", &top, "kind = \"soft\"", PASS, "");
    let b = Served::start_named(&e, "b", &top, "kind = \"soft\"", PASS, "");
    let mut c = client_of(&both(&a, &b), "ops", OPS_CRED, &["ds", "get", "CUT.BIG", "-o", Env::s(&file)]);
    let child = c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let begun = Instant::now();
    let aside = || {
        std::fs::read_dir(out.path()).unwrap().flatten().any(|d| {
            d.file_name().to_string_lossy().starts_with(".custos-get-") && d.metadata().is_ok_and(|m| m.len() > 0)
        })
    };
    while !aside() {
        assert!(begun.elapsed() < Duration::from_secs(60), "the copy aside never began");
        std::thread::sleep(Duration::from_millis(2));
    }
    a.kill9();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("stopped sending") && err.contains("asking the servers again"), "{err}");
    assert!(std::fs::read(&file).unwrap() == body, "the whole dataset, from server B");
    let left: Vec<_> = std::fs::read_dir(out.path()).unwrap().flatten().map(|d| d.file_name()).collect();
    assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
    b.stop();
    // To stdout: once bytes went out, the read is not asked again (the
    // output cannot be taken back), and the error counts what went.
    let a = Served::start_named(&e, "a2", &top, "kind = \"soft\"", PASS, "");
    let b = Served::start_named(&e, "b2", &top, "kind = \"soft\"", PASS, "");
    let mut c = client_of(&both(&a, &b), "ops", OPS_CRED, &["ds", "get", "CUT.BIG"]);
    let mut child = c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = vec![0u8; 1 << 20];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    a.kill9();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut stdout, &mut rest).unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("only the first") && err.contains("run the command again"), "{err}");
    assert!(!err.contains("asking the servers again"), "{err}");
    assert!(first.len() + rest.len() < body.len(), "cut short");
    b.stop();
}

/// A server never takes a path from a client: imports and exports name
/// files on the engine's machine, so a server refuses them (the client's
/// user may have no right to that machine's files at all).
#[test]
fn a_server_takes_no_paths_to_import_or_export() {
    let e = Env::new();
    e.ok(&["ds", "put", "PATHS.ONE", Env::s(&e.file("one", b"one"))]);
    let s = Served::start(&e);
    let import: &[&str] = &["ds", "import", "/etc", "--prefix", "PATHS"];
    for args in [import, &["ds", "export", "PATHS", "/tmp/custos-export-test"]] {
        let err = s.fails("admin", ADMIN_CRED, args, 2);
        assert!(err.contains("a path on the server's machine"), "{args:?}: {err}");
    }
    assert!(!Path::new("/tmp/custos-export-test").exists(), "nothing written");
    assert_eq!(e.json(&["ds", "ls", "PATHS.**"]).as_array().unwrap().len(), 1, "nothing imported");
}

#[test]
fn a_write_sent_twice_with_one_idempotency_key_is_carried_out_once() {
    let e = Env::new();
    add(&e, "app1", "app", APP);
    e.ok(&["user", "grant", "app1", "--data", "IDEM.**"]);
    e.ok(&["user", "grant", "app1", "--key", "DSET.PRIM.IDEM.*"]);
    let s = Served::start(&e);
    let ops = custos_server::basic("ops", OPS_CRED.as_bytes());
    let key = "idempotency-key: 0123456789abcdef\r\n";
    let (st, head, first) = http_with(&s.sock, "PUT", "/v1/datasets/IDEM.ONE", &ops, key, "first content");
    assert_eq!(st, 200, "{first}");
    assert!(!head.contains("x-custos-idempotency"), "{head}");
    let (st, head, again) = http_with(&s.sock, "PUT", "/v1/datasets/IDEM.ONE", &ops, key, "first content");
    assert_eq!((st, &again), (200, &first), "the first answer, replayed");
    assert!(head.contains("x-custos-idempotency: replayed"), "{head}");
    let info = s.ok("ops", OPS_CRED, &["ds", "info", "IDEM.ONE", "--json"]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let generation = info["generation"].as_u64().or(info["current"]["generation"].as_u64());
    assert_eq!(generation, Some(1), "written once: {info}");
    // One key, one request: another dataset, or another principal, is refused.
    let (st, _, other) = http_with(&s.sock, "PUT", "/v1/datasets/IDEM.TWO", &ops, key, "x");
    assert_eq!(st, 422, "{other}");
    assert!(other["detail"].as_str().unwrap().contains("another request"), "{other}");
    let app = custos_server::basic("app1", APP.as_bytes());
    let (st, _, _) = http_with(&s.sock, "PUT", "/v1/datasets/IDEM.ONE", &app, key, "first content");
    assert_eq!(st, 422);
    // An operation: created once, the same answer again.
    let op = "{\"op\":\"key-create\",\"label\":\"DSET.PRIM.IDEM.key007\",\"purpose\":\"PRIM\",\"activate\":true}";
    let k2 = "idempotency-key: key-create-7\r\n";
    let (st, _, made) = http_with(&s.sock, "POST", "/v1/ops", &ops, k2, op);
    assert_eq!(st, 200, "{made}");
    let (st, head, again) = http_with(&s.sock, "POST", "/v1/ops", &ops, k2, op);
    assert_eq!((st, &again), (200, &made), "not 'already exists': the first answer");
    assert!(head.contains("replayed"), "{head}");
    // Without the key, the same request is a second request.
    let (st, _, exists) = http_with(&s.sock, "POST", "/v1/ops", &ops, "", op);
    assert_eq!(st, 409, "{exists}");
    // A malformed key is refused before anything runs.
    let (st, _, _) =
        http_with(&s.sock, "PUT", "/v1/datasets/IDEM.BAD", &ops, "idempotency-key: no spaces allowed\r\n", "x");
    assert_eq!(st, 400);
    assert!(s.run("ops", OPS_CRED, &["ds", "info", "IDEM.BAD"], None).status.code() == Some(3), "nothing stored");
    // Reads take no key's record: both answered afresh.
    let (st, head, _) =
        http_with(&s.sock, "POST", "/v1/ops", &ops, "idempotency-key: read-1\r\n", "{\"op\":\"ds-list\"}");
    assert_eq!(st, 200);
    let (_, head2, _) =
        http_with(&s.sock, "POST", "/v1/ops", &ops, "idempotency-key: read-1\r\n", "{\"op\":\"ds-list\"}");
    assert!(!head.contains("replayed") && !head2.contains("replayed"));
}

#[path = "server/kmip.rs"]
mod kmip;

#[path = "server/console.rs"]
mod console;

/// A server remembers a verified credential for a few minutes; a new
/// credential ends that at once, so a leaked one stops working when it is
/// rotated, not five minutes later.
#[test]
fn a_rotated_credential_stops_working_on_the_server_at_once() {
    let e = Env::new();
    add(&e, "aud", "auditor", AUD);
    let s = Served::start(&e);
    s.ok("aud", AUD, &["key", "ls"]);
    s.ok("aud", AUD, &["key", "ls"]); // now remembered
    let o = s
        .client("ops", OPS_CRED, &["user", "credential", "aud"])
        .env("CUSTOS_NEW_CREDENTIAL", "auditor's new credential")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    s.fails("aud", AUD, &["key", "ls"], 6);
    s.ok("aud", "auditor's new credential", &["key", "ls"]);
}
