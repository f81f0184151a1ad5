//! The server's configuration (TOML): what catalog rows must not decide.
//! The HSM and its module, where to listen, TLS material, client
//! certificates' principals, and where volumes may live.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `custos serve --config FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The vault directory the server alone opens.
    pub vault: PathBuf,
    /// The catalog on PostgreSQL (`postgres://user@host/db`, or libpq's
    /// `key=value` form), shared by every server configured with it
    /// (ADR 0020). Absent: the vault's own (`custos.db`, or the address
    /// `custos init --repository` recorded).
    pub repository: Option<String>,
    pub hsm: HsmConfig,
    pub listen: Listen,
    pub tls: Option<Tls>,
    /// Directories and URL prefixes volumes may live under (`volume add`
    /// outside them is refused). Empty: only inside the vault directory.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Seconds SIGTERM waits for operations in flight (default 30).
    #[serde(default = "default_drain")]
    pub drain_secs: u64,
    /// The file as read: kept in the catalog so that a vault backup
    /// carries it (recovery writes it out for review; nothing reads it back).
    #[serde(skip)]
    pub text: String,
}

fn default_drain() -> u64 {
    30
}

/// Which HSM, and where its secret comes from. The passphrase or PIN is
/// read once, at start: from `secret_file`, else CUSTOS_PASSPHRASE (or
/// CUSTOS_PKCS11_PIN), else a prompt on the terminal.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum HsmConfig {
    Soft { secret_file: Option<PathBuf> },
    Pkcs11 { module: PathBuf, token: String, secret_file: Option<PathBuf> },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// A Unix socket for local clients (created 0660; the directory's
    /// permissions decide who may connect, the credential who they are).
    pub unix: Option<PathBuf>,
    /// host:port for TLS 1.3 clients (needs `[tls]`).
    pub tcp: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain and private key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// PEM CA bundle; when set, clients may present certificates it signed.
    pub client_ca: Option<PathBuf>,
    /// Which principal a client certificate is.
    #[serde(default)]
    pub clients: Vec<ClientCert>,
}

/// A client certificate, pinned by the SHA-256 of its DER encoding (and
/// signed by `client_ca`), is this principal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCert {
    pub sha256: String,
    pub principal: String,
}

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
#[error("server configuration {path}: {why}")]
pub struct ConfigError {
    pub path: PathBuf,
    pub why: String,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |why: String| ConfigError { path: path.into(), why };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
        let mut c: Config = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        c.text = text;
        if c.listen.unix.is_none() && c.listen.tcp.is_none() {
            return Err(err("[listen] names neither unix nor tcp: say where clients connect".into()));
        }
        if c.listen.tcp.is_some() && c.tls.is_none() {
            return Err(err("[listen] tcp needs [tls] cert and key: the server speaks TLS 1.3 only".into()));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_configs_that_cannot_serve() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let load = |text: &str| {
            std::fs::write(&p, text).unwrap();
            Config::load(&p)
        };
        let e = load("vault = \"/v\"\n[hsm]\nkind = \"soft\"\n[listen]\n").unwrap_err();
        assert!(e.to_string().contains("neither unix nor tcp"), "{e}");
        let e = load("vault = \"/v\"\n[hsm]\nkind = \"soft\"\n[listen]\ntcp = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(e.to_string().contains("needs [tls]"), "{e}");
        let e = load("vault = \"/v\"\nmodule = \"/tmp/evil.so\"\n[hsm]\nkind = \"soft\"\n[listen]\nunix = \"/s\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let c = load("vault = \"/v\"\nvolumes = [\"/srv/custos\"]\n[hsm]\nkind = \"pkcs11\"\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken = \"t\"\n[listen]\nunix = \"/s\"\n").unwrap();
        assert_eq!(c.volumes, ["/srv/custos"]);
        assert!(matches!(c.hsm, HsmConfig::Pkcs11 { .. }));
    }
}
