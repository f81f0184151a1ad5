//! The vault: where the repository, the HSM and the volumes are found, and
//! the administration that needs no key (volumes, policies, settings).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use custos_crypto::{KdfParams, Passphrase};
use custos_hsm::{Hsm, Keep, MemoryStore, Pkcs11Config, Pkcs11Hsm, SoftHsm};
use custos_model::{
    DatasetName, KeyLabel, Medium, NamingStandard, Pattern, PolicyRecord, PolicyTarget, VolumeName, VolumeRecord,
};
use custos_object::{Location, ObjectVolume, S3Options};
use custos_repo::{PgRepository, Repository, SqliteRepository};
use custos_store::{LocalVolume, Volume};
use jiff::Timestamp;

use crate::softhome::SoftHome;
use crate::{Error, Result};

/// Default chunk size: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;

pub(crate) const DB_FILE: &str = "custos.db";
pub(crate) const HSM_FILE: &str = "hsm.sealed";
/// In a vault whose catalog is on PostgreSQL (instead of `custos.db`): the
/// catalog's address, owner-only (ADR 0020).
pub const REPOSITORY_FILE: &str = "repository";
const SETTING_NAMING: &str = "key.naming";
const SETTING_HSM: &str = "hsm.kind";
const SETTING_P11_MODULE: &str = "hsm.pkcs11.module";
const SETTING_P11_TOKEN: &str = "hsm.pkcs11.token";
const SETTING_P11_INIT_ARGS: &str = "hsm.pkcs11.init-args";
/// `catalog` when the token's records (registers, anchor) are kept in the
/// catalog because it stores no data objects; absent when on the token.
const SETTING_P11_RECORDS: &str = "hsm.pkcs11.records";
const SETTING_CHUNK: &str = "chunk.size";
const SETTING_COMPRESSION: &str = "compression";
const SETTING_S3_ENDPOINT: &str = "s3.endpoint";
const SETTING_S3_REGION: &str = "s3.region";
/// A random id of this vault, written into the labels of its volumes.
const SETTING_VAULT_ID: &str = "vault.id";

/// A vault whose HSM is closed: no key can be used.
pub struct Sealed;

/// A vault whose HSM is open.
pub struct Open {
    pub(crate) hsm: Arc<dyn Hsm>,
}

/// The two vault states.
pub trait VaultState: Send + Sync {}
impl VaultState for Sealed {}
impl VaultState for Open {}

/// A Custos vault in state `S`.
pub struct Vault<S: VaultState> {
    pub(crate) dir: PathBuf,
    pub(crate) repo: Arc<dyn Repository>,
    pub(crate) state: S,
    pub(crate) threads: usize,
    /// Audit entries and key uses from every thread sharing this vault,
    /// written in group commits.
    pub(crate) journal: Arc<crate::audit::Journal>,
    /// The highest sequence number known taken per naming template,
    /// application and purpose, so that naming a new key costs a lookup or
    /// two, not a scan of every key (see `Vault::next_label`).
    pub(crate) labels: Arc<std::sync::Mutex<LabelSeqs>>,
    /// Settings and policies a batch reads once instead of once per
    /// dataset (see [`Vault::batch_memo`]).
    pub(crate) memo: Arc<std::sync::Mutex<Memo>>,
}

/// Reads a batch of many small datasets would repeat for every one of them.
/// Kept only while a batch runs (at most 1,024 datasets); a change made
/// through this vault clears them. A change another process makes while a
/// batch runs (a setting, a policy, a mirror added to a volume) is seen by
/// the next batch, as if it had been made just after this one began.
#[derive(Default)]
pub(crate) struct Memo {
    pub(crate) batches: usize,
    settings: std::collections::HashMap<&'static str, Option<String>>,
    policies: Option<Vec<PolicyRecord>>,
    /// Volumes opened during the batch (a local volume keeps the indexes
    /// of the packs it read, so a batch reading many small datasets from
    /// one pack parses its index once).
    volumes: std::collections::HashMap<VolumeName, Arc<dyn Volume>>,
    /// Volume records read during the batch.
    volume_records: std::collections::HashMap<VolumeName, VolumeRecord>,
    /// The current key-backup key, which escrows each key the batch makes.
    pub(crate) kbk: Option<Option<custos_model::KbkRecord>>,
    /// Key-label sequences (as in [`LabelSeqs`]) found free by a lookup in
    /// this batch: the labels after it are taken without another lookup
    /// (one that another process took meanwhile fails the batch's commit,
    /// and each dataset is then committed on its own, relabelled).
    pub(crate) trusted: std::collections::HashSet<(String, String, custos_model::Purpose)>,
    /// Keys scheduled for destruction and when, read once for the batch.
    pub(crate) destroy: Option<Arc<std::collections::HashMap<KeyLabel, jiff::Timestamp>>>,
    /// The naming standard, parsed once for the batch.
    naming: Option<NamingStandard>,
}

/// Holds the memo on while a batch runs.
pub(crate) struct MemoGuard<'a>(&'a std::sync::Mutex<Memo>);

impl Drop for MemoGuard<'_> {
    fn drop(&mut self) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.batches -= 1;
        if m.batches == 0 {
            *m = Memo::default();
        }
    }
}

/// (naming template, application, purpose) → highest sequence seen taken.
pub(crate) type LabelSeqs = std::collections::HashMap<(String, String, custos_model::Purpose), u32>;

/// Which HSM a vault uses.
#[derive(Debug)]
pub enum HsmChoice {
    /// The software HSM, sealed in `hsm.sealed` under the passphrase.
    Soft,
    /// A PKCS#11 token; the PIN is asked for on every use, never stored.
    /// A token that holds another vault's master keys is refused unless
    /// `adopt` (see [`Pkcs11Hsm::create`]).
    Pkcs11 { config: Pkcs11Config, adopt: bool },
}

/// The HSM a vault was created with, as recorded in its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HsmKind {
    Soft,
    Pkcs11 { module: PathBuf, token: String, init_args: Option<String> },
}

/// How `custos init` sets a vault up.
pub struct InitOptions {
    pub kdf: KdfParams,
    /// Site name of the default volume.
    pub site: String,
    pub hsm: HsmChoice,
    /// Where the default volume lives, when not inside the vault directory
    /// (another disk, or another site: then the data outlives the loss of
    /// the vault directory).
    pub volume: Option<PathBuf>,
    /// Keep the catalog on PostgreSQL at this address (an empty database)
    /// rather than in `custos.db`.
    pub repository: Option<String>,
}

impl std::fmt::Debug for InitOptions {
    /// The repository's address is left out: it may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitOptions")
            .field("kdf", &self.kdf)
            .field("site", &self.site)
            .field("hsm", &self.hsm)
            .field("volume", &self.volume)
            .field("repository", &self.repository.as_ref().map(|_| "<address>"))
            .finish()
    }
}

impl Default for InitOptions {
    fn default() -> Self {
        Self { kdf: KdfParams::DEFAULT, site: "primary".into(), hsm: HsmChoice::Soft, volume: None, repository: None }
    }
}

/// Open the PostgreSQL catalog at `url` for a new vault: it must hold no
/// vault yet.
fn new_pg_catalog(url: &str) -> Result<PgRepository> {
    let repo = PgRepository::open(url)?;
    if let Some(id) = repo.setting(SETTING_VAULT_ID)? {
        return Err(Error::Invalid {
            what: "repository",
            why: format!(
                "the PostgreSQL database already holds a Custos catalog (vault {id}); nothing was changed: give an empty database, or open that vault with `repository = \"…\"` in the server configuration"
            ),
        });
    }
    // An init that stopped after storing its HSM but before naming the
    // vault wrapped no key under it: start again.
    repo.remove_hsm_state()?;
    Ok(repo)
}

/// A volume to add.
#[derive(Debug, Clone)]
pub struct NewVolume {
    pub name: VolumeName,
    /// A directory, or for a tape volume also `s3://bucket/prefix`.
    pub location: String,
    pub site: String,
    pub medium: Medium,
}

/// A policy to add.
#[derive(Debug, Clone)]
pub struct NewPolicy {
    pub name: String,
    pub pattern: Pattern,
    pub volume: VolumeName,
    pub target: PolicyTarget,
}

impl Vault<Sealed> {
    /// Create a vault: repository, software HSM with a generated master key,
    /// a default volume and a default policy (`**` → default volume, one new
    /// key per dataset named for its first qualifier).
    pub fn init(dir: &Path, passphrase: &Passphrase, opts: &InitOptions) -> Result<Vault<Open>> {
        let io = |source| Error::VaultIo { path: dir.into(), source };
        if dir.exists() && std::fs::read_dir(dir).map_err(io)?.next().is_some() {
            return Err(Error::VaultExists { path: dir.into() });
        }
        if let Some(p) = opts.volume.as_ref().filter(|p| p.is_relative()) {
            return Err(Error::Invalid {
                what: "volume",
                why: format!("{} is a relative path: give the default volume's absolute path", p.display()),
            });
        }
        if matches!(opts.hsm, HsmChoice::Soft) && passphrase.is_empty() {
            return Err(Error::Invalid { what: "passphrase", why: "it is empty; choose a long one".into() });
        }
        // Reach the HSM and the catalog before anything is written, so a
        // wrong module, token, PIN or database leaves no half-made vault.
        let pg = opts.repository.as_deref().map(new_pg_catalog).transpose()?;
        let token = match &opts.hsm {
            // Records go to memory first, and into the catalog once it exists.
            HsmChoice::Pkcs11 { config, adopt } => {
                Some(Pkcs11Hsm::create(config, *adopt, Keep::OnTokenElseBeside(Box::new(MemoryStore::default())))?)
            }
            HsmChoice::Soft => None,
        };
        // From here a failure takes back what was made: the directory (it
        // was absent or empty) and, on a token new to Custos, the master
        // key and everything else made there, so that `init` can be run
        // again as if the first had never been.
        let fresh_token = token.as_ref().is_some_and(|(_, fresh)| *fresh);
        let existed = dir.exists();
        let made = Self::init_in(dir, passphrase, opts, pg, token.map(|(t, _)| t));
        if made.is_err() {
            if let (true, HsmChoice::Pkcs11 { config, .. }) = (fresh_token, &opts.hsm) {
                Pkcs11Hsm::discard_on(config, Keep::OnToken);
            }
            if !existed {
                let _ = std::fs::remove_dir_all(dir);
            } else if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    let p = e.path();
                    let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
                }
            }
        }
        made
    }

    fn init_in(
        dir: &Path,
        passphrase: &Passphrase,
        opts: &InitOptions,
        pg: Option<PgRepository>,
        token: Option<Pkcs11Hsm>,
    ) -> Result<Vault<Open>> {
        let io = |source| Error::VaultIo { path: dir.into(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let dir = dir.canonicalize().map_err(io)?;
        let pg: Option<Arc<dyn Repository>> = pg.map(|r| Arc::new(r) as _);
        let on_pg = pg.is_some();
        let repo: Arc<dyn Repository> = match (pg, &opts.repository) {
            (Some(pg), Some(url)) => {
                crate::vaultbackup::write_new_private(&dir.join(REPOSITORY_FILE), format!("{url}\n").as_bytes())?;
                pg
            }
            _ => Arc::new(SqliteRepository::open(&dir.join(DB_FILE))?),
        };
        // The software HSM: in the catalog when servers share it on
        // PostgreSQL, else in a file beside custos.db. A token's records,
        // when it keeps no data objects, in the catalog.
        let hsm: Box<dyn Hsm> = match (token, on_pg) {
            (Some(mut t), _) => {
                if t.records_beside() {
                    t.move_records(Box::new(crate::softhome::CatalogStore::new(repo.clone())))?;
                    repo.set_setting(SETTING_P11_RECORDS, "catalog")?;
                }
                Box::new(t)
            }
            (None, true) => {
                Box::new(SoftHsm::create_in(SoftHome::Catalog(repo.clone()).store(), passphrase, opts.kdf)?)
            }
            (None, false) => Box::new(SoftHsm::create(&dir.join(HSM_FILE), passphrase, opts.kdf)?),
        };
        match &opts.hsm {
            HsmChoice::Soft => repo.set_setting(SETTING_HSM, "soft")?,
            HsmChoice::Pkcs11 { config: cfg, .. } => {
                repo.set_setting(SETTING_HSM, "pkcs11")?;
                repo.set_setting(SETTING_P11_MODULE, &cfg.module.display().to_string())?;
                repo.set_setting(SETTING_P11_TOKEN, &cfg.token)?;
                if let Some(a) = &cfg.init_args {
                    repo.set_setting(SETTING_P11_INIT_ARGS, a)?;
                }
            }
        }
        repo.set_setting(SETTING_NAMING, NamingStandard::DEFAULT)?;
        repo.set_setting(SETTING_CHUNK, &DEFAULT_CHUNK_SIZE.to_string())?;
        repo.set_setting(SETTING_VAULT_ID, &custos_model::DatasetId::random().to_hex())?;
        let vault = Vault {
            dir: dir.clone(),
            repo,
            state: Sealed,
            threads: crate::default_threads(),
            journal: Default::default(),
            labels: Default::default(),
            memo: Default::default(),
        };
        let default = VolumeName::new("default")?;
        let location = opts.volume.clone().unwrap_or_else(|| dir.join("volumes").join("default"));
        vault.add_volume(&NewVolume {
            name: default.clone(),
            location: location.display().to_string(),
            site: opts.site.clone(),
            medium: Medium::Disk,
        })?;
        vault.add_policy(&NewPolicy {
            name: "default".into(),
            pattern: Pattern::new("**")?,
            volume: default,
            target: PolicyTarget::Template { app: None },
        })?;
        vault.armed(hsm)
    }

    /// Open an existing vault, sealed: its catalog is `custos.db`, or on
    /// PostgreSQL at the address in its `repository` file.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_at(dir, None)
    }

    /// Open an existing vault whose catalog is at `repository` when given
    /// (a server's configuration names it), else as [`Vault::open`] finds.
    pub fn open_at(dir: &Path, repository: Option<&str>) -> Result<Self> {
        let io = |source| Error::VaultIo { path: dir.into(), source };
        let embedded = dir.join(DB_FILE).is_file();
        let url = match repository {
            Some(_) if embedded => {
                return Err(Error::Invalid {
                    what: "repository",
                    why: format!(
                        "{} holds an embedded catalog (custos.db) and the configuration names a PostgreSQL one: move it there with `custos repo migrate --to postgres://…` first, or drop `repository` from the configuration",
                        dir.display()
                    ),
                })
            }
            Some(url) => Some(url.to_string()),
            None if embedded => None,
            None if dir.join(REPOSITORY_FILE).is_file() => {
                Some(std::fs::read_to_string(dir.join(REPOSITORY_FILE)).map_err(io)?.trim().to_string())
            }
            None => return Err(Error::NoVault { path: dir.into() }),
        };
        let dir = dir.canonicalize().map_err(io)?;
        let repo: Arc<dyn Repository> = match url {
            Some(url) => Arc::new(PgRepository::open(&url)?),
            None => Arc::new(SqliteRepository::open_existing(&dir.join(DB_FILE))?),
        };
        let v = Vault {
            dir,
            repo,
            state: Sealed,
            threads: crate::default_threads(),
            journal: Default::default(),
            labels: Default::default(),
            memo: Default::default(),
        };
        v.adopt_older_layout()?;
        Ok(v)
    }

    /// Open the software HSM with its passphrase.
    pub fn unseal(self, passphrase: &Passphrase) -> Result<Vault<Open>> {
        if self.hsm_kind()? != HsmKind::Soft {
            return Err(Error::Invalid { what: "unseal", why: "this vault uses a PKCS#11 token: give its PIN".into() });
        }
        let hsm = SoftHsm::open_in(self.soft_home()?.store(), passphrase)?;
        self.armed(Box::new(hsm))
    }

    /// Open the vault's PKCS#11 token with its user PIN.
    pub fn unseal_pkcs11(self, pin: zeroize::Zeroizing<String>) -> Result<Vault<Open>> {
        let HsmKind::Pkcs11 { module, token, init_args } = self.hsm_kind()? else {
            return Err(Error::Invalid {
                what: "unseal",
                why: "this vault uses the software HSM: give its passphrase".into(),
            });
        };
        let hsm = Pkcs11Hsm::open(&Pkcs11Config { module, token, pin, init_args }, self.p11_keep()?)?;
        self.armed(Box::new(hsm))
    }

    /// Open the vault's PKCS#11 token through a module and token the
    /// caller names (a server's configuration), never the catalog's: a
    /// catalog row must not choose a library to load.
    pub fn unseal_pkcs11_with(self, config: Pkcs11Config) -> Result<Vault<Open>> {
        if !matches!(self.hsm_kind()?, HsmKind::Pkcs11 { .. }) {
            return Err(Error::Invalid {
                what: "unseal",
                why: "this vault uses the software HSM: configure hsm.kind = \"soft\" and its passphrase".into(),
            });
        }
        let hsm = Pkcs11Hsm::open(&config, self.p11_keep()?)?;
        self.armed(Box::new(hsm))
    }

    /// Open with `hsm` and authenticate the catalog's rows under its
    /// catalog key from now on (sealing them all the first time).
    fn armed(self, hsm: Box<dyn Hsm>) -> Result<Vault<Open>> {
        let v = self.with_hsm(hsm);
        v.arm_catalog()?;
        Ok(v)
    }

    /// Open with any HSM implementation (PKCS#11, or a test double).
    pub fn with_hsm(self, hsm: Box<dyn Hsm>) -> Vault<Open> {
        Vault {
            dir: self.dir,
            repo: self.repo,
            state: Open { hsm: Arc::from(hsm) },
            threads: self.threads,
            journal: self.journal,
            labels: self.labels,
            memo: self.memo,
        }
    }
}

impl Vault<Sealed> {
    /// Vaults made before volumes had identity: give the vault its id, and
    /// store the locations of volumes inside the vault directory relative
    /// to it, so that a copy of the directory uses its own copies of them.
    fn adopt_older_layout(&self) -> Result<()> {
        if self.repo.setting(SETTING_VAULT_ID)?.is_none() {
            self.repo.set_setting_once(SETTING_VAULT_ID, &custos_model::DatasetId::random().to_hex())?;
        }
        for v in self.repo.volumes()? {
            if let Some(rel) =
                Path::new(&v.location).strip_prefix(&self.dir).ok().filter(|_| !v.location.contains("://"))
            {
                self.repo.relocate_volume(&v.name, &rel.display().to_string())?;
            }
        }
        Ok(())
    }
}

impl Vault<Open> {
    /// Close the HSM again (rows are no longer sealed or checked).
    pub fn seal(self) -> Vault<Sealed> {
        self.repo.set_row_auth(None);
        Vault {
            dir: self.dir,
            repo: self.repo,
            state: Sealed,
            threads: self.threads,
            journal: self.journal,
            labels: self.labels,
            memo: self.memo,
        }
    }

    pub fn hsm(&self) -> &dyn Hsm {
        self.state.hsm.as_ref()
    }
}

impl<S: VaultState> Vault<S> {
    /// Take up a request's idempotency key (see
    /// [`custos_repo::Repository::idempotency_begin`]).
    pub fn idempotency_begin(
        &self,
        key: &str,
        principal: &str,
        request: &[u8; 32],
    ) -> Result<custos_repo::Idempotency> {
        Ok(self.repo.idempotency_begin(key, principal, request)?)
    }

    /// Record the answer of a request begun with [`Vault::idempotency_begin`].
    pub fn idempotency_finish(&self, key: &str, status: u16, reply: Option<&[u8]>) -> Result<()> {
        Ok(self.repo.idempotency_finish(key, status, reply)?)
    }

    /// Whether the catalog is on another server (PostgreSQL): reaching it
    /// waits on the network.
    pub fn catalog_is_remote(&self) -> bool {
        self.repo.remote()
    }

    /// Let the catalog take a destroyed key's wrapped material out of its
    /// write-ahead log up to `lag` after the destruction, one checkpoint
    /// serving every destruction in between (a server, whose catalog stays
    /// open; see `Repository::set_erase_lag`).
    pub fn set_erase_lag(&self, lag: std::time::Duration) {
        self.repo.set_erase_lag(lag);
    }

    /// Let the catalog remember principals and settings between reads for
    /// up to `max_age` (a server, which reads them on every request; see
    /// `Repository::set_read_cache`).
    pub fn set_read_cache(&self, max_age: std::time::Duration) {
        self.repo.set_read_cache(max_age);
    }

    /// A sealed handle on the same vault (catalog and volumes, no HSM):
    /// for work that needs no key while this handle stays open.
    pub fn sealed_view(&self) -> Vault<Sealed> {
        Vault {
            dir: self.dir.clone(),
            repo: self.repo.clone(),
            state: Sealed,
            threads: self.threads,
            journal: self.journal.clone(),
            labels: self.labels.clone(),
            memo: self.memo.clone(),
        }
    }

    /// Where this vault's token keeps its records.
    pub(crate) fn p11_keep(&self) -> Result<Keep> {
        Ok(match self.repo.setting(SETTING_P11_RECORDS)?.as_deref() {
            Some("catalog") => Keep::Beside(Box::new(crate::softhome::CatalogStore::new(self.repo.clone()))),
            _ => Keep::OnToken,
        })
    }

    /// The HSM this vault was created with.
    pub fn hsm_kind(&self) -> Result<HsmKind> {
        match self.repo.setting(SETTING_HSM)?.as_deref() {
            None | Some("soft") => Ok(HsmKind::Soft),
            Some("pkcs11") => Ok(HsmKind::Pkcs11 {
                module: PathBuf::from(self.repo.setting(SETTING_P11_MODULE)?.unwrap_or_default()),
                token: self.repo.setting(SETTING_P11_TOKEN)?.unwrap_or_default(),
                init_args: self.repo.setting(SETTING_P11_INIT_ARGS)?,
            }),
            Some(other) => {
                Err(Error::Invalid { what: "hsm.kind setting", why: format!("{other:?} is not soft or pkcs11") })
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// This vault's random id, which its volumes' labels name.
    pub fn vault_id(&self) -> Result<String> {
        self.repo.setting(SETTING_VAULT_ID)?.ok_or_else(|| Error::Invalid {
            what: "catalog",
            why: "it holds no vault.id setting: restore custos.db from a backup".into(),
        })
    }

    /// A volume record with its location as the catalog stores it made
    /// absolute: a volume inside the vault directory is stored relative to
    /// it, so a copy of the directory finds its own copy of the volume.
    fn resolved(&self, mut rec: VolumeRecord) -> VolumeRecord {
        if !rec.location.contains("://") && Path::new(&rec.location).is_relative() {
            rec.location = self.dir.join(&rec.location).display().to_string();
        }
        rec
    }

    /// How a location is stored: relative when it lies inside the vault directory.
    fn stored_location(&self, absolute: &Path) -> String {
        match absolute.strip_prefix(&self.dir) {
            Ok(rel) => rel.display().to_string(),
            Err(_) => absolute.display().to_string(),
        }
    }

    /// Refuse a directory for volume `name` that is, contains or lies inside
    /// another volume, contains the vault directory, or lies in the vault
    /// directory anywhere but `volumes/<name>`. `path` is canonical.
    fn check_volume_path(&self, name: &VolumeName, path: &Path) -> Result<()> {
        let clash = |why: String| Error::Invalid { what: "volume location", why };
        for other in self.volumes()? {
            if other.location.contains("://") {
                continue;
            }
            let theirs = Path::new(&other.location);
            let theirs = theirs.canonicalize().unwrap_or_else(|_| theirs.to_path_buf());
            let how = if theirs == path {
                "is"
            } else if path.starts_with(&theirs) {
                "lies inside"
            } else if theirs.starts_with(path) {
                "holds"
            } else {
                continue;
            };
            return Err(clash(format!(
                "{} {how} volume {} ({}): volumes may not share directories, or one's cleanup would delete the other's data; choose another directory",
                path.display(),
                other.name,
                theirs.display()
            )));
        }
        if self.dir.starts_with(path) {
            return Err(clash(format!(
                "{} holds the vault directory {}: choose a directory outside it",
                path.display(),
                self.dir.display()
            )));
        }
        if path.starts_with(&self.dir) && path != self.dir.join("volumes").join(name.as_str()) {
            return Err(clash(format!(
                "{} lies inside the vault directory {}: volumes there live in volumes/{name}; choose that, or a directory outside the vault",
                path.display(),
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Worker threads for sealing and opening chunks (default: all cores).
    pub fn set_threads(&mut self, n: usize) {
        self.threads = n.max(1);
    }

    pub fn repository(&self) -> &dyn Repository {
        self.repo.as_ref()
    }

    // ---- settings -------------------------------------------------------

    /// Keep settings and policies read once for the batch that holds the
    /// guard (nested batches share it).
    pub(crate) fn batch_memo(&self) -> MemoGuard<'_> {
        self.memo.lock().unwrap_or_else(|p| p.into_inner()).batches += 1;
        MemoGuard(&self.memo)
    }

    /// A setting, from the memo while a batch runs.
    fn memo_setting(&self, key: &'static str) -> Result<Option<String>> {
        self.memoized(
            |m| m.settings.get(key).cloned(),
            |m, v| {
                m.settings.insert(key, v);
            },
            || Ok(self.repo.setting(key)?),
        )
    }

    /// What `get` finds in the memo while a batch runs; otherwise `load`,
    /// kept by `put` while a batch runs.
    pub(crate) fn memoized<T: Clone>(
        &self,
        get: impl FnOnce(&Memo) -> Option<T>,
        put: impl FnOnce(&mut Memo, T),
        load: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        {
            let m = self.memo.lock().unwrap_or_else(|p| p.into_inner());
            if m.batches > 0 {
                if let Some(v) = get(&m) {
                    return Ok(v);
                }
            }
        }
        let v = load()?;
        let mut m = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        if m.batches > 0 {
            put(&mut m, v.clone());
        }
        Ok(v)
    }

    /// Forget what the memo holds (this vault changed a setting or policy).
    fn memo_clear(&self) {
        let mut m = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        m.settings.clear();
        m.policies = None;
        m.volumes.clear();
        m.volume_records.clear();
        m.kbk = None;
        m.destroy = None;
        m.naming = None;
    }

    pub fn naming(&self) -> Result<NamingStandard> {
        self.memoized(
            |m| m.naming.clone(),
            |m, ns| m.naming = Some(ns),
            || match self.memo_setting(SETTING_NAMING)? {
                Some(t) => Ok(NamingStandard::new(&t)?),
                None => Ok(NamingStandard::default()),
            },
        )
    }

    pub fn set_naming(&self, template: &str) -> Result<NamingStandard> {
        let ns = NamingStandard::new(template)?;
        self.repo.set_setting(SETTING_NAMING, template)?;
        self.memo_clear();
        Ok(ns)
    }

    pub fn chunk_size(&self) -> Result<u32> {
        match self.memo_setting(SETTING_CHUNK)? {
            Some(s) => s.parse().map_err(|_| Error::Invalid { what: "chunk.size setting", why: s }),
            None => Ok(DEFAULT_CHUNK_SIZE),
        }
    }

    pub fn set_chunk_size(&self, bytes: u32) -> Result<()> {
        if !(64 << 10..=custos_store::format::MAX_CHUNK_SIZE).contains(&bytes) {
            return Err(Error::Invalid { what: "chunk size", why: format!("{bytes} is outside 64 KiB..64 MiB") });
        }
        self.repo.set_setting(SETTING_CHUNK, &bytes.to_string())?;
        self.memo_clear();
        Ok(())
    }

    /// Whether new chunks are compressed (setting `compression`: `lz4`,
    /// the default, or `none`).
    pub fn compression(&self) -> Result<bool> {
        match self.memo_setting(SETTING_COMPRESSION)?.as_deref() {
            None | Some("lz4") => Ok(true),
            Some("none") => Ok(false),
            Some(s) => Err(Error::Invalid { what: "compression setting", why: s.to_string() }),
        }
    }

    pub fn set_compression(&self, value: &str) -> Result<()> {
        if !matches!(value, "lz4" | "none") {
            return Err(Error::Invalid {
                what: "compression",
                why: format!("{value:?}: it takes lz4 (compress chunks where that saves space) or none"),
            });
        }
        self.repo.set_setting(SETTING_COMPRESSION, value)?;
        self.memo_clear();
        Ok(())
    }

    /// All settings with their current values.
    pub fn settings(&self) -> Result<Vec<(&'static str, String)>> {
        Ok(vec![
            (SETTING_NAMING, self.naming()?.template().to_string()),
            (SETTING_CHUNK, self.chunk_size()?.to_string()),
            (SETTING_COMPRESSION, if self.compression()? { "lz4" } else { "none" }.to_string()),
            (SETTING_S3_ENDPOINT, self.repo.setting(SETTING_S3_ENDPOINT)?.unwrap_or_default()),
            (SETTING_S3_REGION, self.repo.setting(SETTING_S3_REGION)?.unwrap_or_default()),
            ("key.destroy.wait", format!("{:#}", self.destroy_default_wait()?)),
            ("key.destroy.min-wait", format!("{:#}", self.destroy_min_wait()?)),
            ("dual-control", {
                let d = self.dual_control()?;
                if d.is_empty() {
                    "none".to_string()
                } else {
                    d.join(",")
                }
            }),
            ("request.ttl", format!("{:#}", self.request_ttl()?)),
            (crate::gc::SETTING_GC_GRACE, format!("{:#}", self.gc_grace()?)),
            (crate::SETTING_PLAINTEXT, if self.plaintext_allowed()? { "allow" } else { "refuse" }.to_string()),
        ])
    }

    // ---- volumes --------------------------------------------------------

    pub fn add_volume(&self, v: &NewVolume) -> Result<VolumeRecord> {
        if self.repo.volume(&v.name)?.is_some() {
            return Err(custos_repo::RepoError::Exists { kind: "volume", name: v.name.to_string() }.into());
        }
        if v.site.trim().is_empty() {
            return Err(Error::Invalid { what: "site", why: "it is empty".into() });
        }
        let location = match v.medium {
            Medium::Disk => {
                if v.location.contains("://") {
                    return Err(Error::Invalid {
                        what: "volume location",
                        why: format!("{}: object storage holds tape volumes only; add --medium tape", v.location),
                    });
                }
                let path = Path::new(&v.location);
                let absolute = self.checked_new_dir(&v.name, path)?;
                LocalVolume::create_owned(v.name.as_str(), &absolute, &self.vault_id()?)?;
                self.stored_location(&absolute)
            }
            Medium::Tape => {
                let loc =
                    Location::parse(&v.location).map_err(|why| Error::Invalid { what: "volume location", why })?;
                let loc = match loc {
                    Location::Dir(p) => Location::Dir(self.checked_new_dir(&v.name, &p)?),
                    s3 => s3,
                };
                ObjectVolume::create(v.name.as_str(), &loc, &self.s3_options()?)?;
                match &loc {
                    Location::Dir(p) => self.stored_location(p),
                    s3 => s3.to_string(),
                }
            }
        };
        let rec = VolumeRecord {
            name: v.name.clone(),
            location,
            site: v.site.clone(),
            medium: v.medium,
            created_at: Timestamp::now(),
        };
        self.repo.insert_volume(&rec)?;
        Ok(rec)
    }

    /// Make (if needed) the directory of a new volume, check it against the
    /// vault and the other volumes, and return it canonical. A directory
    /// this made is removed again when the check fails.
    fn checked_new_dir(&self, name: &VolumeName, path: &Path) -> Result<PathBuf> {
        let existed = path.exists();
        if existed && !path.is_dir() {
            return Err(Error::Invalid {
                what: "volume path",
                why: format!(
                    "{} is a file, not a directory: give a directory (it is created if missing)",
                    path.display()
                ),
            });
        }
        let io = |source| Error::Io { what: "the volume directory", path: path.into(), source };
        std::fs::create_dir_all(path).map_err(io)?;
        let checked = path.canonicalize().map_err(io).and_then(|p| self.check_volume_path(name, &p).map(|_| p));
        if checked.is_err() && !existed {
            let _ = std::fs::remove_dir(path);
        }
        checked
    }

    /// Forget a volume that nothing in the catalog refers to (checked and
    /// removed in one transaction). Its directory or bucket, and whatever
    /// is in it, is left as it is.
    pub fn remove_volume(&self, name: &VolumeName) -> Result<VolumeRecord> {
        let rec = self.volume_record(name)?;
        self.repo.remove_volume(name)?;
        Ok(rec)
    }

    pub fn volumes(&self) -> Result<Vec<VolumeRecord>> {
        Ok(self.repo.volumes()?.into_iter().map(|v| self.resolved(v)).collect())
    }

    pub fn volume_record(&self, name: &VolumeName) -> Result<VolumeRecord> {
        self.memoized(
            |m| m.volume_records.get(name).cloned(),
            |m, v| {
                m.volume_records.insert(name.clone(), v);
            },
            || {
                let rec = self.repo.volume(name)?.ok_or_else(|| Error::VolumeNotFound { name: name.to_string() })?;
                Ok(self.resolved(rec))
            },
        )
    }

    /// Open a volume; a mirrored one comes wrapped, so that writes go to
    /// both sides and reads fail over to the secondary.
    pub(crate) fn open_volume(&self, name: &VolumeName) -> Result<Arc<dyn Volume>> {
        self.memoized(
            |m| m.volumes.get(name).cloned(),
            |m, v| {
                m.volumes.insert(name.clone(), v);
            },
            || self.open_volume_now(name),
        )
    }

    fn open_volume_now(&self, name: &VolumeName) -> Result<Arc<dyn Volume>> {
        let rec = self.volume_record(name)?;
        match self.repo.mirrors()?.into_iter().find(|(p, _, _)| p == name) {
            None => Ok(self.open_record(&rec)?.into()),
            Some((_, secondary, _)) => {
                let sec = self.open_record(&self.volume_record(&secondary)?)?;
                let prim: Box<dyn Volume> = match rec.medium {
                    Medium::Disk => Box::new(LocalVolume::attach(rec.name.as_str(), Path::new(&rec.location))),
                    Medium::Tape => Box::new(self.open_tape(&rec)?),
                };
                Ok(Arc::new(custos_store::MirroredVolume::new(prim, sec)))
            }
        }
    }

    /// After a recovery into a new directory: the disk volumes that lived
    /// inside the old vault directory (stored relative to it) and are not
    /// here, made again, empty and labelled for this vault. Returns them.
    pub(crate) fn recreate_lost_inner_volumes(&self) -> Result<Vec<VolumeName>> {
        let mut made = Vec::new();
        for rec in self.repo.volumes()? {
            let inside = rec.medium == Medium::Disk && Path::new(&rec.location).is_relative();
            let path = self.dir.join(&rec.location);
            if inside && !path.exists() {
                LocalVolume::create_owned(rec.name.as_str(), &path, &self.vault_id()?)?;
                made.push(rec.name);
            }
        }
        Ok(made)
    }

    /// Open a volume's own storage, ignoring any mirror.
    pub(crate) fn open_plain_volume(&self, name: &VolumeName) -> Result<Arc<dyn Volume>> {
        Ok(self.open_record(&self.volume_record(name)?)?.into())
    }

    fn open_record(&self, rec: &VolumeRecord) -> Result<Box<dyn Volume>> {
        Ok(match rec.medium {
            Medium::Disk => {
                let v = LocalVolume::open(rec.name.as_str(), Path::new(&rec.location))?;
                // A volume labelled for another vault is never written or
                // cleaned by this one.
                match v.owner() {
                    Some(o) if o != self.vault_id()? => {
                        return Err(custos_store::StoreError::OtherVault {
                            path: rec.location.clone().into(),
                            vault: o.to_string(),
                            name: rec.name.to_string(),
                        }
                        .into())
                    }
                    _ => Box::new(v),
                }
            }
            Medium::Tape => Box::new(self.open_tape(rec)?),
        })
    }

    fn open_tape(&self, rec: &VolumeRecord) -> Result<ObjectVolume> {
        let loc = Location::parse(&rec.location).map_err(|why| Error::Invalid { what: "volume location", why })?;
        Ok(ObjectVolume::open(rec.name.as_str(), &loc, &self.s3_options()?)?)
    }

    /// The S3 endpoint and region set with `config set` (the environment's
    /// otherwise). Credentials are never stored: they come from the
    /// environment.
    pub fn s3_options(&self) -> Result<S3Options> {
        Ok(S3Options {
            endpoint: self.repo.setting(SETTING_S3_ENDPOINT)?.filter(|s| !s.is_empty()),
            region: self.repo.setting(SETTING_S3_REGION)?.filter(|s| !s.is_empty()),
        })
    }

    pub fn set_s3_setting(&self, key: &str, value: &str) -> Result<()> {
        let key = match key {
            "s3.endpoint" => {
                if !(value.is_empty() || value.starts_with("http://") || value.starts_with("https://")) {
                    return Err(Error::Invalid {
                        what: "s3.endpoint",
                        why: format!("{value:?} is not an http:// or https:// URL"),
                    });
                }
                SETTING_S3_ENDPOINT
            }
            "s3.region" => SETTING_S3_REGION,
            _ => return Err(Error::Invalid { what: "setting", why: format!("{key:?} is not an S3 setting") }),
        };
        self.repo.set_setting(key, value)?;
        Ok(())
    }

    // ---- policies -------------------------------------------------------

    pub fn add_policy(&self, p: &NewPolicy) -> Result<PolicyRecord> {
        if p.name.is_empty() || !p.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(Error::Invalid {
                what: "policy name",
                why: format!("{:?}: use letters, digits and - _ .", p.name),
            });
        }
        self.volume_record(&p.volume)?;
        match &p.target {
            PolicyTarget::Key(label) => {
                self.key_record(label)?;
            }
            PolicyTarget::Template { app: Some(app) } => {
                // The template must be able to name a key for this application.
                let ns = self.naming()?;
                ns.parse(&ns.label(custos_model::Purpose::Prim, app, 1))?;
            }
            PolicyTarget::Template { app: None } => {}
        }
        let rec = PolicyRecord {
            name: p.name.clone(),
            pattern: p.pattern.clone(),
            volume: p.volume.clone(),
            target: p.target.clone(),
            created_at: Timestamp::now(),
        };
        self.repo.insert_policy(&rec)?;
        self.memo_clear();
        Ok(rec)
    }

    pub fn policies(&self) -> Result<Vec<PolicyRecord>> {
        Ok(self.repo.policies()?)
    }

    pub fn remove_policy(&self, name: &str) -> Result<()> {
        self.memo_clear();
        if !self.repo.remove_policy(name)? {
            return Err(Error::PolicyNotFound { name: name.into() });
        }
        Ok(())
    }

    /// The policy that governs a dataset name: the most specific matching
    /// pattern; among equals, the first by name.
    pub fn policy_for(&self, dataset: &DatasetName) -> Result<Option<PolicyRecord>> {
        let policies =
            self.memoized(|m| m.policies.clone(), |m, p| m.policies = Some(p), || Ok(self.repo.policies()?))?;
        let mut best: Option<PolicyRecord> = None;
        for p in policies {
            if p.pattern.matches(dataset.as_str())
                && best.as_ref().is_none_or(|b| p.pattern.specificity() > b.pattern.specificity())
            {
                best = Some(p);
            }
        }
        Ok(best)
    }

    pub(crate) fn key_record(&self, label: &KeyLabel) -> Result<custos_model::KeyRecord> {
        self.repo.key(label)?.ok_or_else(|| Error::KeyNotFound { label: label.clone() })
    }
}
