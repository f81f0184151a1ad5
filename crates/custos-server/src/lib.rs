//! `custos serve`: one process owns the vault (catalog, HSM, volumes);
//! principals reach the operation boundary over a Unix socket or TLS 1.3
//! and never hold the HSM's passphrase. See ADR 0015.
//!
//! The HTTP API, under `/v1/`:
//! - `POST /v1/ops`: any operation as JSON (`{"op":"key-ls",…}`); the answer
//!   is `{"result":…, "text":…, "warnings":[…], "failure":…}`;
//! - `PUT /v1/datasets/{name}` (body: the data) and `GET /v1/datasets/{name}`
//!   (`?start=&end=`): datasets streamed both ways, never buffered whole;
//! - `GET /v1/audit/export`: the audit log as JSON lines;
//! - `GET /v1/health`, `GET /metrics`.
//!
//! Errors are problem documents (`application/problem+json`) carrying the
//! CLI's exit code; statuses come from the error's kind, in one place.
#![forbid(unsafe_code)]

mod auth;
pub mod config;
mod console;
mod http;
mod kmip;
mod linger;
mod metrics;
mod net;
pub mod openapi;

use std::path::Path;
use std::sync::Arc;

use custos_core::{Passphrase, Vault};
use custos_ops::Engine;

pub use auth::basic;
pub use config::{Config, ConfigError, HsmConfig};
pub use http::problem_exit;

/// Why the server cannot start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Engine(#[from] custos_core::Error),
    #[error("{what}: {why}")]
    Setup { what: String, why: String },
    #[error("the vault {path} is readable by other accounts ({detail}): run `chmod -R go-rwx {path}` and start the server again")]
    Exposed { path: String, detail: String },
}

fn setup(what: impl Into<String>, why: impl std::fmt::Display) -> ServeError {
    ServeError::Setup { what: what.into(), why: why.to_string() }
}

/// Refuse a vault whose directory or files other accounts can read.
pub fn check_private(dir: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::PermissionsExt;
    let exposed = |p: &Path| -> Option<String> {
        let m = std::fs::symlink_metadata(p).ok()?;
        let mode = m.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then(|| format!("{} is {mode:o}", p.display()))
    };
    let mut found: Vec<String> = exposed(dir).into_iter().collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_file()) {
                found.extend(exposed(&p));
            }
        }
    }
    if found.is_empty() {
        Ok(())
    } else {
        Err(ServeError::Exposed { path: dir.display().to_string(), detail: found.join(", ") })
    }
}

/// The HSM's secret, read once: from the configured file, the
/// environment, or a prompt.
fn secret(file: Option<&Path>, env: &str, what: &str) -> Result<zeroize::Zeroizing<String>, ServeError> {
    if let Some(f) = file {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(f).map_err(|e| setup(format!("{what} file {}", f.display()), e))?,
        );
        return Ok(zeroize::Zeroizing::new(text.lines().next().unwrap_or("").to_string()));
    }
    if let Ok(v) = std::env::var(env) {
        return Ok(zeroize::Zeroizing::new(v));
    }
    Err(setup(what, format!("give secret_file in [hsm], or set {env}")))
}

/// Open the configured vault and its HSM: the engine a server runs.
pub fn open_engine(config: &Config) -> Result<Engine, ServeError> {
    // Everything the server creates is private to its account.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    check_private(&config.vault)?;
    let sealed = Vault::open_at(&config.vault, config.repository.as_deref())?;
    // A vault made before principals existed would let anyone who reaches
    // the socket act unauthenticated.
    if !sealed.has_users()? {
        return Err(setup(
            format!("the vault {}", config.vault.display()),
            "has no principals, so nobody could be authenticated: add one in embedded mode (`custos user add`) first",
        ));
    }
    let (open, passphrase) = match &config.hsm {
        HsmConfig::Soft { secret_file } => {
            let p = secret(secret_file.as_deref(), "CUSTOS_PASSPHRASE", "the HSM passphrase")?;
            let pass = Passphrase::from(p.to_string());
            let keep = Passphrase::from(p.to_string());
            (sealed.unseal(&pass)?, Some(keep))
        }
        HsmConfig::Pkcs11 { module, token, secret_file, init_args } => {
            let pin = secret(secret_file.as_deref(), "CUSTOS_PKCS11_PIN", "the token's PIN")?;
            let cfg = custos_core::Pkcs11Config {
                module: module.clone(),
                token: token.clone(),
                pin,
                init_args: init_args.clone(),
            };
            (sealed.unseal_pkcs11_with(cfg)?, None)
        }
    };
    // As every opening: the catalog is checked against the HSM's anchor (a
    // rolled-back catalog is refused), and the audit log is keyed from now.
    open.audit_arm(false)?;
    open.record_server_config(&config.text_to_keep())?;
    let mut engine = Engine::server(open, passphrase);
    engine.allow_volume_roots(config.volumes.clone());
    Ok(engine)
}

/// Serve until SIGTERM or SIGINT, then drain.
pub fn run(config: Config, engine: Engine, ready: impl FnOnce() + Send + 'static) -> Result<(), ServeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("custos-serve")
        .max_blocking_threads(64)
        .build()
        .map_err(|e| setup("the server runtime", e))?;
    // The engine is let go here, outside the runtime: closing the vault
    // writes the audit anchor last, which on PostgreSQL (the catalog then
    // keeps the software HSM) is a blocking client's query, and a blocking
    // client cannot run on a thread that drives the runtime.
    let engine = Arc::new(engine);
    let serving = engine.clone();
    let served = rt.block_on(async move {
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM can be handled");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        net::serve(config, serving, shutdown, ready).await
    });
    // As before: the runtime waits for work still running on its blocking
    // threads; then the vault closes here.
    drop(rt);
    drop(engine);
    served
}
