//! Fixtures for tests that need real parts: a SoftHSM2 token directory with
//! initialised tokens. (S3 servers and broken vaults will join it.)
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

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
