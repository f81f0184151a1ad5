//! The server's configuration (TOML): what catalog rows must not decide.
//! The HSM and its module, where to listen, TLS material, client
//! certificates' principals, and where volumes may live.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// `custos serve --config FILE`.
#[derive(Clone, Deserialize)]
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
    /// The KMIP listener (issue 16, ADR 0024): devices ask for keys over
    /// TTLV on mutually authenticated TLS.
    pub kmip: Option<KmipConfig>,
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

impl std::fmt::Debug for Config {
    /// The repository's address and the file's text are left out: they
    /// may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("vault", &self.vault)
            .field("repository", &self.repository.as_ref().map(|_| "<address>"))
            .field("hsm", &self.hsm)
            .field("listen", &self.listen)
            .field("tls", &self.tls)
            .field("kmip", &self.kmip)
            .field("volumes", &self.volumes)
            .field("drain_secs", &self.drain_secs)
            .finish_non_exhaustive()
    }
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
    Soft {
        secret_file: Option<PathBuf>,
    },
    Pkcs11 {
        module: PathBuf,
        token: String,
        secret_file: Option<PathBuf>,
        /// The module's initialisation string (NSS: `configdir='sql:/path'`).
        init_args: Option<String>,
    },
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

/// `[kmip]`: where devices reach the KMIP service, and who they are.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmipConfig {
    /// host:port (KMIP's port is 5696). The server's certificate and key
    /// are `[tls]`'s.
    pub listen: String,
    /// PEM CA bundle that signs devices' certificates (default: `[tls]`'s
    /// `client_ca`). A client without a certificate it signed is refused
    /// in the handshake.
    pub client_ca: Option<PathBuf>,
    /// Which principal a certificate's subject common name is. A name not
    /// listed is refused unless `cn_is_principal` is set.
    #[serde(default)]
    pub clients: Vec<KmipClient>,
    /// A listed name's principal, else the common name itself.
    #[serde(default)]
    pub cn_is_principal: bool,
    /// The application whose naming sequence labels keys made over KMIP
    /// (default `KMIP`: `DSET.PRIM.KMIP.key001`, …).
    #[serde(default = "default_kmip_app")]
    pub app: String,
    /// The largest request message taken, in bytes (default 1 MiB).
    #[serde(default = "default_kmip_max")]
    pub max_message: usize,
}

fn default_kmip_app() -> String {
    "KMIP".into()
}

fn default_kmip_max() -> usize {
    1 << 20
}

/// A device certificate's subject common name, its principal, and the
/// application whose naming sequence labels the keys that principal makes
/// over KMIP (default: `[kmip] app`): a storage array's keys
/// `DSET.PRIM.ARRAYS.key001`, a database's `DSET.PRIM.DBKEYS.key001`, each
/// granted by its own pattern.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmipClient {
    pub cn: String,
    pub principal: String,
    pub app: Option<String>,
}

impl KmipConfig {
    /// The application each listed principal's keys are made under, where
    /// it is not `app`.
    pub fn apps(&self) -> std::collections::HashMap<String, String> {
        self.clients.iter().filter_map(|c| Some((c.principal.clone(), c.app.clone()?))).collect()
    }
}

/// Whether `app` can stand in a key label as one qualifier.
fn is_app(app: &str) -> bool {
    !app.is_empty() && !app.contains('.') && custos_core::model::KeyLabel::new(app).is_ok()
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
        if let Some(k) = &c.kmip {
            let Some(tls) = &c.tls else {
                return Err(err("[kmip] needs [tls] cert and key: KMIP runs over TLS only".into()));
            };
            if k.client_ca.is_none() && tls.client_ca.is_none() {
                return Err(err(
                    "[kmip] needs client_ca (in [kmip] or [tls]): KMIP clients are authenticated by their certificates"
                        .into(),
                ));
            }
            if !(1024..=64 << 20).contains(&k.max_message) {
                return Err(err("[kmip] max_message must be 1024 bytes to 64 MiB".into()));
            }
            for app in std::iter::once(&k.app).chain(k.clients.iter().filter_map(|c| c.app.as_ref())) {
                if !is_app(app) {
                    return Err(err(format!(
                        "[kmip] app {app:?} cannot be part of a key label: use letters, digits and _ - $ # @, no dots"
                    )));
                }
            }
            let app_of = |c: &KmipClient| c.app.clone().unwrap_or_else(|| k.app.clone());
            for c in &k.clients {
                let other = k.clients.iter().find(|o| o.principal == c.principal && app_of(o) != app_of(c));
                if let Some(o) = other {
                    return Err(err(format!(
                        "[[kmip.clients]] gives principal {:?} two applications ({} and {}): one principal's keys go to one application",
                        c.principal,
                        app_of(c),
                        app_of(o)
                    )));
                }
            }
            if k.clients.is_empty() && !k.cn_is_principal {
                return Err(err(
                    "[kmip] maps no certificate to a principal: add [[kmip.clients]] cn and principal, or cn_is_principal = true".into(),
                ));
            }
        }
        Ok(c)
    }
}

impl Config {
    /// The configuration's text as the catalog keeps it (and so every
    /// vault backup): a password in an address replaced by `REDACTED`.
    pub fn text_to_keep(&self) -> String {
        redact_passwords(&self.text)
    }
}

/// `text` with the password of every `scheme://user:password@host`
/// address, and every libpq `password=…`, replaced by `REDACTED`.
pub fn redact_passwords(text: &str) -> String {
    let mut s = text.to_string();
    let mut from = 0;
    while let Some(i) = s[from..].find("://") {
        let start = from + i + 3;
        let end = s[start..].find(['/', '"', '\'', ' ', '?', '\n']).map_or(s.len(), |e| start + e);
        if let Some(at) = s[start..end].rfind('@') {
            if let Some(colon) = s[start..start + at].find(':') {
                s.replace_range(start + colon + 1..start + at, "REDACTED");
            }
        }
        from = start;
    }
    let mut from = 0;
    while let Some(i) = s[from..].find("password=") {
        let start = from + i + "password=".len();
        let end = s[start..].find(['&', '"', '\'', ' ', '\n']).map_or(s.len(), |e| start + e);
        s.replace_range(start..end, "REDACTED");
        from = start;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A password in the catalog's address never reaches the catalog (nor
    /// its backups): the kept text says REDACTED where it stood.
    #[test]
    fn the_kept_configuration_holds_no_password() {
        let text = "vault = \"/v\"\nrepository = \"postgres://custos:s3cr3t@db.example:5432/custos?sslmode=require\"\n\
                    # repository = \"host=db user=custos password=hunter2 dbname=custos\"\n[hsm]\nkind = \"soft\"\n";
        let kept = redact_passwords(text);
        assert!(!kept.contains("s3cr3t") && !kept.contains("hunter2"), "{kept}");
        assert!(kept.contains("postgres://custos:REDACTED@db.example:5432/custos?sslmode=require"), "{kept}");
        assert!(kept.contains("password=REDACTED dbname=custos"), "{kept}");
        let plain = "repository = \"postgres://custos@/custos?host=/run/postgresql\"\n";
        assert_eq!(redact_passwords(plain), plain, "nothing else changes");
    }

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
        // KMIP needs TLS, a CA for its clients' certificates, a way to name
        // their principals, and a sane message limit.
        let base = "vault = \"/v\"\n[hsm]\nkind = \"soft\"\n[listen]\nunix = \"/s\"\n";
        let tls = "[tls]\ncert = \"/c\"\nkey = \"/k\"\n";
        let e = load(&format!("{base}[kmip]\nlisten = \"127.0.0.1:5696\"\ncn_is_principal = true\n")).unwrap_err();
        assert!(e.to_string().contains("[kmip] needs [tls]"), "{e}");
        let e = load(&format!("{base}{tls}[kmip]\nlisten = \"127.0.0.1:5696\"\ncn_is_principal = true\n")).unwrap_err();
        assert!(e.to_string().contains("needs client_ca"), "{e}");
        let k = "[kmip]\nlisten = \"127.0.0.1:5696\"\nclient_ca = \"/ca\"\n";
        let e = load(&format!("{base}{tls}{k}")).unwrap_err();
        assert!(e.to_string().contains("maps no certificate to a principal"), "{e}");
        let e = load(&format!("{base}{tls}{k}cn_is_principal = true\nmax_message = 10\n")).unwrap_err();
        assert!(e.to_string().contains("max_message"), "{e}");
        let c = load(&format!("{base}{tls}{k}[[kmip.clients]]\ncn = \"array1\"\nprincipal = \"a1\"\n")).unwrap();
        let kmip = c.kmip.unwrap();
        assert_eq!((kmip.app.as_str(), kmip.max_message, kmip.clients.len()), ("KMIP", 1 << 20, 1));
        assert!(kmip.apps().is_empty());
        // A client's own application; one principal, one application; an
        // application that cannot be part of a label.
        let two = "[[kmip.clients]]\ncn = \"db1\"\nprincipal = \"db\"\napp = \"DBKEYS\"\n";
        let c = load(&format!("{base}{tls}{k}{two}")).unwrap();
        assert_eq!(c.kmip.unwrap().apps().get("db").map(String::as_str), Some("DBKEYS"));
        let clash = "[[kmip.clients]]\ncn = \"db2\"\nprincipal = \"db\"\n";
        let e = load(&format!("{base}{tls}{k}{two}{clash}")).unwrap_err();
        assert!(e.to_string().contains("two applications (DBKEYS and KMIP)"), "{e}");
        // The default named, and left out: one application, not two.
        let named = "[[kmip.clients]]\ncn = \"db3\"\nprincipal = \"db\"\napp = \"KMIP\"\n";
        assert!(load(&format!("{base}{tls}{k}{named}{clash}")).is_ok());
        let e = load(&format!("{base}{tls}{k}[[kmip.clients]]\ncn = \"x\"\nprincipal = \"x\"\napp = \"A.B\"\n"))
            .unwrap_err();
        assert!(e.to_string().contains("cannot be part of a key label"), "{e}");
    }
}
