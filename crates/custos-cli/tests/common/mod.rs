//! The test harness for the real `custos` binary: a vault in a temporary
//! directory, commands run as a principal, and data generators.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

pub const PASS: &str = "a-long-test-passphrase-4711";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub vault: PathBuf,
    /// Extra environment for every command (the PKCS#11 token's settings).
    pub env: Vec<(String, String)>,
    _tokens: Option<custos_testing::SoftHsmTokens>,
    _kryoptic: Option<custos_testing::KryopticToken>,
    _nss: Option<custos_testing::NssDb>,
    /// The PostgreSQL server holding the catalog, for a vault made with
    /// [`Env::new_postgres`].
    pub pg: Option<std::sync::Arc<custos_testing::Postgres>>,
}

pub const ADMIN_CRED: &str = "admin credential, long enough";
/// The passphrase of every custodian key file the tests make.
pub const CUSTODIAN_PASS: &str = "a custodian's own passphrase";
pub const OPS_CRED: &str = "operator credential, long enough";

pub fn admin_env() -> Vec<(String, String)> {
    vec![("CUSTOS_USER".into(), "admin".into()), ("CUSTOS_CREDENTIAL".into(), ADMIN_CRED.into())]
}

impl Env {
    pub fn new() -> Self {
        Self::made(None)
    }

    /// A vault whose catalog is on a PostgreSQL server of its own.
    pub fn new_postgres() -> Self {
        let pg = custos_testing::Postgres::start();
        pg.create_database("custos");
        Self::made(Some(pg))
    }

    fn made(pg: Option<custos_testing::Postgres>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let vault = dir.path().join("vault");
        let pg = pg.map(std::sync::Arc::new);
        let mut e = Self { dir, vault, env: admin_env(), _tokens: None, _kryoptic: None, _nss: None, pg: pg.clone() };
        let mut init = vec!["init", "--kdf-memory-mib", "19", "--kdf-iterations", "2", "--site", "A"];
        let url = pg.as_ref().map(|p| p.url("custos"));
        if let Some(url) = &url {
            init.extend(["--repository", url.as_str()]);
        }
        e.ok(&init);
        e.ok(&["config", "set", "chunk.size", "65536"]);
        // Most tests want `key destroy` at once; the waiting period has its own test.
        e.ok(&["config", "set", "key.destroy.min-wait", "0s"]);
        e.ok(&["config", "set", "key.destroy.wait", "0s"]);
        // And without dual control, which also has its own test.
        e.ok(&["config", "set", "dual-control", "none"]);
        e.as_operator();
        e
    }

    /// Add the principal `ops` with every role and grants on everything,
    /// and act as it from now on: the tests of other features run as one
    /// all-powerful operator; separation of duties has tests of its own.
    pub fn as_operator(&mut self) {
        self.cmd(&[
            "user",
            "add",
            "ops",
            "--role",
            "security-admin",
            "--role",
            "key-custodian",
            "--role",
            "storage-admin",
            "--role",
            "app",
            "--role",
            "auditor",
        ])
        .env("CUSTOS_NEW_CREDENTIAL", OPS_CRED)
        .assert()
        .success();
        self.ok(&["user", "grant", "ops", "--data", "**"]);
        self.ok(&["user", "grant", "ops", "--key", "**"]);
        self.env.retain(|(k, _)| k != "CUSTOS_USER" && k != "CUSTOS_CREDENTIAL");
        self.env.push(("CUSTOS_USER".into(), "ops".into()));
        self.env.push(("CUSTOS_CREDENTIAL".into(), OPS_CRED.into()));
    }

    /// Act as another principal.
    pub fn as_user(&self, name: &str, cred: &str) -> Self {
        let mut env: Vec<(String, String)> =
            self.env.iter().filter(|(k, _)| k != "CUSTOS_USER" && k != "CUSTOS_CREDENTIAL").cloned().collect();
        env.push(("CUSTOS_USER".into(), name.into()));
        env.push(("CUSTOS_CREDENTIAL".into(), cred.into()));
        Self {
            dir: tempfile::tempdir().unwrap(),
            vault: self.vault.clone(),
            env,
            _tokens: None,
            _kryoptic: None,
            _nss: None,
            pg: self.pg.clone(),
        }
    }

    /// Add the key-custodian `name` (credential "NAME's credential, long"),
    /// make their key pair in their own directory and register it: returns
    /// the custodian acting, and their key file.
    pub fn custodian(&self, name: &str) -> (Self, PathBuf) {
        let cred = format!("{name}'s credential, long");
        self.cmd(&["user", "add", name, "--role", "key-custodian"])
            .env("CUSTOS_NEW_CREDENTIAL", &cred)
            .assert()
            .success();
        let c = self.as_user(name, &cred);
        let key = c.dir.path().join(format!("{name}.key"));
        let out = c.ok(&["escrow", "keygen", "--out", Env::s(&key), "--kdf-memory-mib", "19", "--kdf-iterations", "2"]);
        assert!(out.contains("recipient: custos-recipient-v1:"), "{out}");
        c.ok(&["escrow", "register", Env::s(&key)]);
        (c, key)
    }

    /// The test admin on a vault that already exists at `vault` (made
    /// elsewhere, such as by an older Custos).
    pub fn existing(vault: PathBuf) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            vault,
            env: admin_env(),
            _tokens: None,
            _kryoptic: None,
            _nss: None,
            pg: None,
        }
    }

    /// The same principal on the vault in another directory (a copy).
    pub fn at(&self, vault: PathBuf) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            vault,
            env: self.env.clone(),
            _tokens: None,
            _kryoptic: None,
            _nss: None,
            pg: self.pg.clone(),
        }
    }

    /// A vault whose master keys live on a fresh SoftHSM2 token.
    pub fn new_pkcs11() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let vault = dir.path().join("vault");
        let tokens = custos_testing::SoftHsmTokens::new(&["custos-cli"], "2468", "1357");
        let mut env = vec![
            ("SOFTHSM2_CONF".to_string(), tokens.conf().display().to_string()),
            ("CUSTOS_PKCS11_PIN".to_string(), "2468".to_string()),
        ];
        env.extend(admin_env());
        let mut e = Self { dir, vault, env, _tokens: Some(tokens), _kryoptic: None, _nss: None, pg: None };
        e.ok(&["init", "--hsm", "pkcs11", "--pkcs11-token", "custos-cli", "--site", "A"]);
        e.ok(&["config", "set", "dual-control", "none"]);
        e.as_operator();
        e
    }

    /// A vault whose master keys live on a fresh Kryoptic token (a second
    /// PKCS#11 implementation, which wraps with CKM_AES_KEY_WRAP_KWP).
    pub fn new_kryoptic() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let vault = dir.path().join("vault");
        let token = custos_testing::KryopticToken::new("custos-cli", "2468", "1357");
        let mut env = vec![
            ("KRYOPTIC_CONF".to_string(), token.conf().display().to_string()),
            ("CUSTOS_PKCS11_PIN".to_string(), "2468".to_string()),
        ];
        env.extend(admin_env());
        let mut e = Self { dir, vault, env, _tokens: None, _kryoptic: Some(token), _nss: None, pg: None };
        let module = custos_testing::kryoptic_module().display().to_string();
        e.ok(&["init", "--hsm", "pkcs11", "--pkcs11-token", "custos-cli", "--pkcs11-module", &module, "--site", "A"]);
        e.ok(&["config", "set", "dual-control", "none"]);
        e.as_operator();
        e
    }

    /// A vault on NSS's softoken (a third PKCS#11 module), reached through
    /// its initialisation arguments; NSS keeps no data objects, so the
    /// token's records are kept in the catalog.
    pub fn new_nss() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let vault = dir.path().join("vault");
        let db = custos_testing::NssDb::new("2468");
        let mut env = vec![("CUSTOS_PKCS11_PIN".to_string(), "2468".to_string())];
        env.extend(admin_env());
        let args = db.init_args();
        let module = custos_testing::nss_softoken().display().to_string();
        let mut e = Self { dir, vault, env, _tokens: None, _kryoptic: None, _nss: Some(db), pg: None };
        let token = custos_testing::NssDb::TOKEN;
        e.ok(&[
            "init",
            "--hsm",
            "pkcs11",
            "--pkcs11-token",
            token,
            "--pkcs11-module",
            &module,
            "--pkcs11-init-args",
            &args,
            "--site",
            "A",
        ]);
        e.ok(&["config", "set", "dual-control", "none"]);
        e.as_operator();
        e
    }

    /// The NSS database's initialisation arguments (a vault of [`Env::new_nss`]).
    pub fn nss_init_args(&self) -> String {
        self._nss.as_ref().expect("a vault on NSS").init_args()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::cargo_bin("custos").unwrap();
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CUSTOS_VAULT", &self.vault)
            .env("CUSTOS_PASSPHRASE", PASS)
            .env("CUSTOS_CUSTODIAN_PASSPHRASE", CUSTODIAN_PASS)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(args);
        c
    }

    /// Start `custos ARGS` on this vault, SIGKILL it after `after`, and say
    /// whether the kill interrupted it (false when it had already finished).
    pub fn run_killed(&self, args: &[&str], after: std::time::Duration) -> bool {
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("custos"))
            .env_clear()
            .env("CUSTOS_VAULT", &self.vault)
            .env("CUSTOS_PASSPHRASE", PASS)
            .env("CUSTOS_CUSTODIAN_PASSPHRASE", CUSTODIAN_PASS)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(after);
        let _ = child.kill();
        !child.wait().unwrap().success()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?} failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Run a command that must fail with `code`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let before = self.state();
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.starts_with("custos: "), "{err}");
        assert_said_once(&err);
        assert_eq!(self.state(), before, "a failed {args:?} changed the vault");
        assert!(!err.contains(PASS) && !String::from_utf8_lossy(&o.stdout).contains(PASS));
        err
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Everything the catalog and keystore say, for before/after comparisons.
    pub fn state(&self) -> String {
        ["key", "ds", "volume", "policy"].iter().map(|c| self.ok(&[c, "ls", "--json"])).collect::<Vec<_>>().join("\n")
    }

    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    pub fn s(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    /// The chunk files of a dataset's current generation, in order. Chunk
    /// ids come from the repository, the test's only back door.
    pub fn chunk_paths(&self, ds: &str) -> Vec<PathBuf> {
        let info = self.json(&["ds", "info", ds]);
        let loc = PathBuf::from(info["volume_detail"]["location"].as_str().unwrap());
        let id = custos_core::model::DatasetId::from_hex(info["id"].as_str().unwrap()).unwrap();
        let gen = info["current"]["generation"].as_u64().unwrap();
        let v = custos_core::Vault::open(&self.vault).unwrap();
        v.repository()
            .generation_chunks(&id, gen)
            .unwrap()
            .iter()
            .map(|c| {
                let h = c.to_hex();
                loc.join("chunks").join(&h[..2]).join(h)
            })
            .collect()
    }
}

pub fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u64).wrapping_mul(2654435761).wrapping_add(seed as u64).to_le_bytes()[2] ^ seed).collect()
}

/// Bytes that do not compress (xorshift64*), for tests about stored sizes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Every file below `d` (none when it is missing).
pub fn walk_files(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(d) {
        for entry in rd.flatten() {
            let p = entry.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A path under the cache `.ci/run` installs test tools into
/// (`~/.cache/custos-ci`, or under XDG_CACHE_HOME).
pub fn ci_cache(rel: &str) -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache"));
    cache.join("custos-ci").join(rel)
}

/// An error says each thing once: no clause of it (the text between ": ")
/// longer than a few words comes twice, as when a wrapper prints its cause
/// and the printer appends the cause again.
pub fn assert_said_once(err: &str) {
    for line in err.lines() {
        let parts: Vec<&str> = line.split(": ").map(str::trim).filter(|p| p.len() > 24).collect();
        for (i, p) in parts.iter().enumerate() {
            assert!(!parts[i + 1..].contains(p), "the error repeats {p:?}: {err}");
        }
    }
}
