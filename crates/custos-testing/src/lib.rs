//! Fixtures for tests that need real parts: a SoftHSM2 token directory with
//! initialised tokens, and an S3-protocol server on localhost.
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

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
