//! Vault backups (ADR 0018): the catalog and the HSM's state in one sealed
//! object on a volume, so that a vault survives the loss of its own
//! directory (catalog, HSM file and the default volume with it).
//!
//! Layout (docs/format.md, "Vault backup"): magic, version, a JSON header
//! (what the copy holds, and a fresh key wrapped under the master key), the
//! software HSM's file as it is (sealed under its passphrase), then the
//! catalog sealed under the fresh key in 1 MiB AES-256-GCM segments. The HSM
//! file is read before the catalog is copied, so its audit anchor is never
//! ahead of the copied log: a recovered vault passes the anchor check.

use std::path::{Path, PathBuf};

use custos_crypto::{DataKey, Kcv, Mkvp, Passphrase};
use custos_hsm::{Hsm, SoftHsm};
use custos_model::VolumeName;
use custos_repo::{Repository, SqliteRepository};
use custos_store::{Kept, LocalVolume, Volume};
use jiff::Timestamp;
use serde::Serialize;

use crate::softhome::SoftHome;
use crate::vault::{DB_FILE, HSM_FILE};
use custos_store::vault_backup::{self, Header};

use crate::{Error, HsmKind, Open, Result, Vault};

/// What opens a vault backup: the software HSM's passphrase (its file is in
/// the backup), or the PIN of the PKCS#11 token the vault's keys are on.
pub enum RecoverWith<'a> {
    Passphrase(&'a Passphrase),
    Pkcs11 {
        pin: zeroize::Zeroizing<String>,
        /// The module on this machine, when not where the lost one had it.
        module: Option<PathBuf>,
        /// The module's initialisation string (`--pkcs11-init-args`).
        init_args: Option<String>,
    },
    /// A drill's recovery of a PKCS#11 vault: the live vault's token,
    /// through a guard that keeps it unchanged.
    Guarded(&'a crate::drill::TokenGuard),
}

/// A vault backup written (`custos vault backup`).
#[derive(Debug, Clone, Serialize)]
pub struct VaultBackupReport {
    pub id: String,
    pub volume: VolumeName,
    pub created_at: Timestamp,
    /// The last audit entry the copy holds.
    pub audit_seq: u64,
    #[serde(rename = "size")]
    pub bytes: u64,
    #[serde(rename = "dataset_count")]
    pub datasets: u64,
    #[serde(rename = "key_count")]
    pub keys: u64,
}

/// What `vault prune` decided about one vault backup.
#[derive(Debug, Clone, Serialize)]
pub struct VaultPruneDecision {
    #[serde(flatten)]
    pub backup: custos_model::VaultBackupRecord,
    pub keep: bool,
}

/// A vault brought back (`custos vault recover`).
#[derive(Debug, Clone, Serialize)]
pub struct RecoverReport {
    pub id: String,
    pub created_at: Timestamp,
    pub audit_seq: u64,
    #[serde(rename = "dataset_count")]
    pub datasets: u64,
    /// Volumes inside the vault directory that were lost with it, made
    /// again empty: what lived only there must be restored from copies.
    pub emptied: Vec<VolumeName>,
    /// On a token, the audit entry its anchor had recorded when it was
    /// further along than the backup: the token outlived the lost catalog,
    /// and recovering puts the vault back to the backup's state on purpose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor_was: Option<u64>,
    /// The server's configuration as the backup recorded it, written out
    /// beside the recovered catalog for review (its paths may differ on
    /// this machine); `None` for a vault never served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_config: Option<PathBuf>,
}

/// The setting that holds the text of the server's configuration file.
const SETTING_SERVER_CONFIG: &str = "server.config";
/// Where recovery writes it out.
const RECOVERED_SERVER_CONFIG: &str = "server.toml.recovered";

fn bad(why: impl Into<String>) -> Error {
    Error::Invalid { what: "vault backup", why: why.into() }
}

/// Unwrap the key that seals a backup's catalog copy with `hsm`, checking
/// its KCV. (Not the HSM's catalog key, which MACs rows and never leaves it.)
fn backup_key(h: &Header, hsm: &dyn Hsm) -> Result<DataKey> {
    let mkvp = Mkvp::from_hex(&h.mkvp).map_err(|_| bad("its header names no valid MKVP"))?;
    let wrapped = hex::decode(&h.wrapped).map_err(|_| bad("its header holds no valid wrapped key"))?;
    let key = hsm.unwrap_key(&mkvp, &wrapped)?;
    if Kcv::of(&key).to_hex() != h.kcv {
        return Err(bad("its backup key does not match its check value: the backup was altered; use another one"));
    }
    Ok(key)
}

/// A temp path beside `dir`'s catalog, for the copy.
fn scratch(dir: &Path) -> Result<PathBuf> {
    let r: [u8; 8] = custos_crypto::random_array().map_err(|e| bad(e.to_string()))?;
    Ok(dir.join(format!(".custos-vault-backup-{}.db", hex::encode(r))))
}

impl Vault<Open> {
    /// Keep the server's configuration file's text in the catalog (when it
    /// changed), so that every vault backup carries it. Only recovery reads
    /// it, to write it out for review: the server takes its configuration
    /// from its file, never from a row.
    pub fn record_server_config(&self, text: &str) -> Result<()> {
        if self.repo.setting(SETTING_SERVER_CONFIG)?.as_deref() != Some(text) {
            self.repo.set_setting(SETTING_SERVER_CONFIG, text)?;
        }
        Ok(())
    }
}

impl<S: crate::VaultState> Vault<S> {
    /// Vault backups, oldest first.
    pub fn vault_backups(&self) -> Result<Vec<custos_model::VaultBackupRecord>> {
        Ok(self.repo.vault_backups()?)
    }

    /// The sites the vault's own directory is at: those of the volumes kept
    /// inside it (the default volume's, unless it was moved out).
    pub fn vault_sites(&self) -> Result<Vec<String>> {
        let mut sites: Vec<String> = self
            .repo
            .volumes()?
            .into_iter()
            .filter(|v| !v.location.contains("://") && Path::new(&v.location).is_relative())
            .map(|v| v.site)
            .collect();
        sites.sort();
        sites.dedup();
        Ok(sites)
    }
}

impl Vault<Open> {
    /// Retention for vault backups (`vault prune`): on each volume, keep
    /// what `keep` says (the newest always; "newest" by the audit entry
    /// the copy reaches, never by the clock) and delete the rest, the
    /// catalog's record first, so a crash in between leaves an object the
    /// catalog no longer counts on rather than a record of one that is gone.
    pub fn vault_prune(&self, keep: &crate::Retention, dry_run: bool) -> Result<Vec<VaultPruneDecision>> {
        if keep.is_empty() {
            return Err(Error::Invalid {
                what: "retention",
                why: "give at least one of --keep-last, --keep-daily, --keep-monthly, --keep-yearly".into(),
            });
        }
        let all = self.repo.vault_backups()?;
        let mut by_volume: std::collections::BTreeMap<&str, Vec<(u64, &custos_model::VaultBackupRecord)>> =
            Default::default();
        for (i, b) in all.iter().enumerate() {
            by_volume.entry(b.volume.as_str()).or_default().push((i as u64, b));
        }
        let mut out = Vec::new();
        for members in by_volume.values() {
            let items: Vec<_> = members.iter().map(|(i, b)| (*i, b.audit_seq, b.created_at)).collect();
            let kept = keep.keep(&items);
            for (i, b) in members {
                out.push(VaultPruneDecision { backup: (*b).clone(), keep: kept.contains(i) });
            }
        }
        out.sort_by(|a, b| (a.backup.created_at, &a.backup.id).cmp(&(b.backup.created_at, &b.backup.id)));
        if dry_run {
            return Ok(out);
        }
        for d in out.iter().filter(|d| !d.keep) {
            self.repo.delete_vault_backup(&d.backup.id)?;
            self.open_volume(&d.backup.volume)?.delete_kept(Kept::VaultBackup, &d.backup.id)?;
        }
        Ok(out)
    }

    /// Write a vault backup to `to`: the HSM's state (the software HSM's
    /// file as it is), then a consistent copy of the catalog sealed under a
    /// fresh key that the master key wraps; read back and opened before it
    /// counts.
    pub fn vault_backup(&self, to: &VolumeName) -> Result<VaultBackupReport> {
        let vol = self.open_volume(to)?;
        let kind = self.hsm_kind()?;
        let hsm_bytes = match kind {
            HsmKind::Soft => {
                let home = self.soft_home()?;
                home.read()?.ok_or_else(|| custos_hsm::HsmError::Missing { at: home.describe() })?.to_vec()
            }
            HsmKind::Pkcs11 { .. } => Vec::new(),
        };
        let copy = scratch(&self.dir)?;
        let taken = self.repo.copy_to(&copy).map_err(Error::from).and_then(|_| {
            let bytes = std::fs::read(&copy).map_err(|source| Error::VaultIo { path: copy.clone(), source })?;
            let r = SqliteRepository::open_existing(&copy)?;
            let seq = r.audit_head()?.map_or(0, |h| h.seq);
            Ok((bytes, seq, r.datasets()?.len() as u64, r.keys()?.len() as u64))
        });
        for f in [copy.clone(), copy.with_extension("db-wal"), copy.with_extension("db-shm")] {
            let _ = std::fs::remove_file(f);
        }
        let (catalog, audit_seq, datasets, keys) = taken?;
        let key = DataKey::generate().map_err(|e| bad(e.to_string()))?;
        let w = self.state.hsm.wrap_key(&key)?;
        let now = Timestamp::now();
        let suffix: [u8; 4] = custos_crypto::random_array().map_err(|e| bad(e.to_string()))?;
        let id = format!("{}-{}", now.strftime("%Y%m%dT%H%M%S%.6fZ"), hex::encode(suffix));
        let header = Header {
            id: id.clone(),
            vault_id: self.vault_id()?,
            created_at: now,
            audit_seq,
            hsm: match kind {
                HsmKind::Soft => "soft".into(),
                HsmKind::Pkcs11 { .. } => "pkcs11".into(),
            },
            pkcs11_module: match &kind {
                HsmKind::Pkcs11 { module, .. } => Some(module.display().to_string()),
                HsmKind::Soft => None,
            },
            pkcs11_token: match &kind {
                HsmKind::Pkcs11 { token, .. } => Some(token.clone()),
                HsmKind::Soft => None,
            },
            registers: match kind {
                HsmKind::Pkcs11 { .. } => self
                    .state
                    .hsm
                    .registers()?
                    .into_iter()
                    .map(|r| format!("{:?} {}", r.register, r.mkvp).to_uppercase())
                    .collect(),
                HsmKind::Soft => Vec::new(),
            },
            hsm_len: hsm_bytes.len() as u64,
            hsm_sha256: hex::encode(vault_backup::sha256(&hsm_bytes)),
            mkvp: w.mkvp.to_hex(),
            kcv: w.kcv.to_hex(),
            wrapped: hex::encode(&w.bytes),
            catalog_len: catalog.len() as u64,
        };
        let out = vault_backup::encode(&header, &hsm_bytes, &key, &catalog).map_err(bad)?;
        vol.put_kept(Kept::VaultBackup, &id, &out)?;
        // Counted only once it reads back and opens.
        let back = vol.read_kept(Kept::VaultBackup, &id)?;
        let parsed = vault_backup::parse(&back).map_err(bad)?;
        if vault_backup::open_catalog(&parsed, &backup_key(&parsed.header, self.state.hsm.as_ref())?).map_err(bad)?
            != catalog
        {
            return Err(bad(format!(
                "backup {id} did not read back from {to} as written: check the volume, then run it again"
            )));
        }
        self.repo.insert_vault_backup(&custos_model::VaultBackupRecord {
            id: id.clone(),
            volume: to.clone(),
            created_at: now,
            audit_seq,
            bytes: out.len() as u64,
        })?;
        Ok(VaultBackupReport {
            id,
            volume: to.clone(),
            created_at: now,
            audit_seq,
            bytes: out.len() as u64,
            datasets,
            keys,
        })
    }
}

/// Where a recovery reads: a directory volume, or an `s3://` one (its
/// endpoint and credentials from the environment).
fn open_location(location: &str) -> Result<Box<dyn Volume>> {
    if location.contains("://") {
        let loc = custos_object::Location::parse(location)
            .map_err(|why| Error::Invalid { what: "recovery location", why })?;
        let opts = custos_object::S3Options {
            endpoint: std::env::var("AWS_ENDPOINT_URL").ok(),
            region: std::env::var("AWS_REGION").ok(),
        };
        Ok(Box::new(custos_object::ObjectVolume::open("recovery", &loc, &opts)?))
    } else {
        Ok(Box::new(LocalVolume::open("recovery", Path::new(location))?))
    }
}

/// The ids of the vault backups at `location` (a volume's directory or
/// `s3://` URL), newest last: what a recovery there could start from.
pub fn vault_backups_at(location: &str) -> Result<Vec<String>> {
    let mut ids = open_location(location)?.list_kept(Kept::VaultBackup)?;
    ids.sort();
    Ok(ids)
}

/// Bring a vault back into the new directory `dir` from the newest vault
/// backup at `from` (a volume's location). With the software HSM's
/// passphrase, the HSM file comes from the backup and the recovered catalog
/// must pass its anchor check. With a PKCS#11 token's PIN, the token (which
/// outlived the vault directory) opens the backup; its anchor and catalog
/// key may have moved on since, so the catalog, authenticated by the
/// backup's own seal, is sealed anew under the token's catalog key and the
/// anchor set to it (reported). The volumes that lived inside the lost
/// vault directory come back empty.
pub fn recover(dir: &Path, from: &str, with: RecoverWith<'_>, who: &str) -> Result<RecoverReport> {
    if dir.exists() && std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(Error::VaultExists { path: dir.into() });
    }
    let vol = open_location(from)?;
    let newest = vol.list_kept(Kept::VaultBackup)?.into_iter().max().ok_or_else(|| Error::Invalid {
        what: "recovery",
        why: format!("{} holds no vault backup: give the volume `custos vault backup --to` wrote to", vol.describe()),
    })?;
    let bytes = vol.read_kept(Kept::VaultBackup, &newest)?;
    let parsed = vault_backup::parse(&bytes).map_err(bad)?;
    let h = &parsed.header;
    match (h.hsm.as_str(), &with) {
        ("soft", RecoverWith::Passphrase(_))
        | ("pkcs11", RecoverWith::Pkcs11 { .. })
        | ("pkcs11", RecoverWith::Guarded(_)) => {}
        ("soft", _) => {
            return Err(Error::Invalid {
                what: "recovery",
                why: "this backup holds a software HSM: give its passphrase, not a token's PIN".into(),
            })
        }
        ("pkcs11", _) => {
            return Err(Error::Invalid {
                what: "recovery",
                why: format!(
                    "this vault's master keys are on the PKCS#11 token {:?}: run with --pkcs11 and the token's PIN (CUSTOS_PKCS11_PIN or --pin-file)",
                    h.pkcs11_token.as_deref().unwrap_or("?")
                ),
            })
        }
        (other, _) => return Err(bad(format!("it names an HSM kind {other:?} this Custos does not know: upgrade Custos"))),
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| Error::VaultIo { path: dir.into(), source })?;
    }
    let mut anchor_was = None;
    let written = (|| -> Result<Vault<Open>> {
        let write = |name: &str, b: &[u8]| write_new_private(&dir.join(name), b);
        let check_id = |v: &Vault<crate::Sealed>| -> Result<()> {
            if v.vault_id()? != h.vault_id {
                return Err(bad(
                    "its catalog names another vault than its header: the backup was altered; use another one",
                ));
            }
            Ok(())
        };
        match with {
            RecoverWith::Passphrase(passphrase) => {
                write(HSM_FILE, parsed.hsm)?;
                let hsm = SoftHsm::open(&dir.join(HSM_FILE), passphrase)?;
                let key = backup_key(h, &hsm)?;
                let catalog = vault_backup::open_catalog(&parsed, &key).map_err(bad)?;
                write(DB_FILE, &catalog)?;
                drop(hsm);
                // The HSM comes back as the file the backup began with: a
                // copy of one the catalog kept (servers on PostgreSQL) goes.
                SqliteRepository::open_existing(&dir.join(DB_FILE))?.remove_hsm_state()?;
                let v = Vault::open(dir)?;
                check_id(&v)?;
                let v = v.unseal(passphrase)?;
                // The HSM file was copied before the catalog: its anchor is
                // never ahead of this log, so the usual check holds.
                v.audit_arm(false)?;
                Ok(v)
            }
            RecoverWith::Pkcs11 { .. } | RecoverWith::Guarded(_) => {
                // A token whose records were in the lost catalog is opened
                // again with the recovered one's (`cfg`), once it is written.
                let mut reopen = None;
                let (hsm, module): (Box<dyn custos_hsm::Hsm>, Option<PathBuf>) = match with {
                    RecoverWith::Pkcs11 { pin, module, init_args } => {
                        let token = h.pkcs11_token.clone().ok_or_else(|| bad("its header names no PKCS#11 token"))?;
                        let module = match module {
                            Some(m) => m,
                            None => PathBuf::from(
                                h.pkcs11_module.clone().ok_or_else(|| bad("its header names no PKCS#11 module"))?,
                            ),
                        };
                        let cfg = custos_hsm::Pkcs11Config { module: module.clone(), token, pin, init_args };
                        let (hsm, beside) = custos_hsm::Pkcs11Hsm::open_for_recovery(&cfg, &h.registers)?;
                        if beside {
                            reopen = Some(cfg);
                        }
                        (Box::new(hsm), Some(module))
                    }
                    RecoverWith::Guarded(g) => (Box::new(g.clone()), None),
                    RecoverWith::Passphrase(_) => unreachable!("matched above"),
                };
                let key = backup_key(h, hsm.as_ref())?;
                let catalog = vault_backup::open_catalog(&parsed, &key).map_err(bad)?;
                write(DB_FILE, &catalog)?;
                let v = Vault::open(dir)?;
                check_id(&v)?;
                let hsm = match reopen {
                    Some(cfg) => {
                        // One context at a time: dropping one finalises the module.
                        drop(hsm);
                        Box::new(custos_hsm::Pkcs11Hsm::open(&cfg, v.p11_keep()?)?)
                    }
                    None => hsm,
                };
                let v = v.with_hsm(hsm);
                // The backup's seal (under a key only the token unwraps)
                // vouches for every row: seal them under the token's
                // catalog key as it is now.
                v.seal_catalog_as_recovered()?;
                let head = v.repo.audit_head()?.map_or(0, |a| a.seq);
                anchor_was = v.state.hsm.anchor()?.map(|a| a.seq).filter(|s| *s > head);
                v.audit_arm(true)?;
                if let Some(module) = module.filter(|m| h.pkcs11_module.as_deref() != Some(&*m.display().to_string())) {
                    v.repo.set_setting("hsm.pkcs11.module", &module.display().to_string())?;
                }
                Ok(v)
            }
        }
    })();
    let v = match written {
        Ok(v) => v,
        Err(e) => {
            // Nothing half-recovered is left to be taken for a vault.
            for name in [DB_FILE, "custos.db-wal", "custos.db-shm", HSM_FILE, "hsm.lock"] {
                let _ = std::fs::remove_file(dir.join(name));
            }
            let _ = std::fs::remove_dir(dir);
            return Err(e);
        }
    };
    let emptied = v.recreate_lost_inner_volumes()?;
    let server_config = match v.repo.setting(SETTING_SERVER_CONFIG)? {
        Some(text) => {
            let p = dir.join(RECOVERED_SERVER_CONFIG);
            write_new_private(&p, text.as_bytes())?;
            Some(p)
        }
        None => None,
    };
    let datasets = v.repo.datasets()?.len() as u64;
    let moved = anchor_was.map(|m| format!("; the token had recorded entry {m}")).unwrap_or_default();
    v.audit_append(who, "vault recover", &h.id, &format!("ok: from {from}, up to audit entry {}{moved}", h.audit_seq))?;
    Ok(RecoverReport {
        id: h.id.clone(),
        created_at: h.created_at,
        audit_seq: h.audit_seq,
        datasets,
        emptied,
        anchor_was,
        server_config,
    })
}

/// Create `path` (it must not exist) readable by its owner only, write
/// `bytes` and make them durable.
pub(crate) fn write_new_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| Error::VaultIo { path: path.into(), source };
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io)
}

/// A vault given a new HSM after its own was lost (`custos vault rebuild`).
#[derive(Debug, Clone, Serialize)]
pub struct RebuildReport {
    /// The new master key.
    pub mkvp: String,
    /// Keys brought back from their escrow copies.
    pub recovered: Vec<String>,
    /// Keys with material that had no escrow copy (or whose copy did not
    /// open): lost with the HSM, and the datasets whose current generation
    /// needs one of them.
    pub lost_keys: Vec<String>,
    pub lost_datasets: Vec<String>,
    /// Audit entries keyed under the lost audit key: their links can no
    /// longer be checked.
    pub unverifiable_audit_entries: u64,
}

/// The vault at `dir`, whose software HSM must be the one thing lost; and
/// where the new one goes.
fn lost_hsm(dir: &Path) -> Result<(Vault<crate::Sealed>, SoftHome)> {
    let sealed = Vault::open(dir)?;
    if sealed.hsm_kind()? != HsmKind::Soft {
        return Err(Error::Invalid {
            what: "rebuild",
            why: "this vault's master keys live on a PKCS#11 token: recover the token with its vendor's tools".into(),
        });
    }
    let home = sealed.soft_home()?;
    if home.read()?.is_some() {
        let aside = match &home {
            SoftHome::File(p) => format!("move {} aside first", p.display()),
            SoftHome::Catalog(_) => "take a copy of its row first (pg_dump -t hsm_state), then delete it".into(),
        };
        return Err(Error::Invalid {
            what: "rebuild",
            why: format!(
                "the software HSM ({}) exists: rebuild is for a vault whose HSM is lost; if it is damaged, {aside}",
                home.describe()
            ),
        });
    }
    Ok((sealed, home))
}

/// The datasets whose current generation needs one of `lost` keys.
fn datasets_needing(v: &Vault<Open>, lost: &[String]) -> Result<Vec<String>> {
    Ok(v.repo
        .datasets()?
        .into_iter()
        .filter(|d| lost.iter().any(|l| l == d.current.key_label.as_str()))
        .map(|d| d.name.to_string())
        .collect())
}

/// HSM loss, the ICSF way: the custodians re-enter their parts of the lost
/// master key into a new software HSM (with `passphrase`). The parts must
/// combine to the master key most keys are wrapped under; then every key
/// under it, the audit key and the keystore backups made under it open
/// again, no escrow needed. Keys under another master key are reported lost.
pub fn rebuild_from_parts(
    dir: &Path,
    passphrase: &Passphrase,
    kdf: custos_crypto::KdfParams,
    parts: Vec<custos_hsm::files::KeyPartFile>,
    who: &str,
) -> Result<RebuildReport> {
    let (sealed, home) = lost_hsm(dir)?;
    let expect =
        sealed.repo.key_counts_by_mkvp()?.into_iter().max_by_key(|(_, n)| *n).map(|(m, _)| m).ok_or(
            Error::Invalid { what: "rebuild", why: "no key in the catalog is wrapped under a master key".into() },
        )?;
    let custodians: Vec<String> = parts.iter().map(|p| p.0.custodian.clone()).collect();
    let hsm = SoftHsm::create_in(home.store(), passphrase, kdf)?;
    // The parts become CURRENT; the key the new HSM was made with goes to
    // OLD, with nothing under it.
    let loaded = hsm
        .load_new(custos_hsm::NewMasterKey::Parts(parts.into_iter().map(|p| p.0).collect()), Some(expect))
        .and_then(|_| hsm.activate());
    if let Err(e) = loaded {
        drop(hsm);
        let _ = home.remove();
        return Err(e.into());
    }
    let v = sealed.with_hsm(Box::new(hsm));
    if let Err(e) = v.arm_catalog().and_then(|_| v.audit_arm(false)) {
        drop(v);
        let _ = home.remove();
        return Err(e);
    }
    let (mut recovered, mut lost_keys) = (Vec::new(), Vec::new());
    for k in v.repo.keys()?.into_iter().filter(|k| k.wrapped.is_some()) {
        if k.mkvp == expect { &mut recovered } else { &mut lost_keys }.push(k.label.to_string());
    }
    let lost_datasets = datasets_needing(&v, &lost_keys)?;
    v.audit_append(
        who,
        "vault rebuild",
        &expect.to_hex(),
        &format!("ok: master key re-entered from the parts of {}", custodians.join(", ")),
    )?;
    Ok(RebuildReport { mkvp: expect.to_hex(), recovered, lost_keys, lost_datasets, unverifiable_audit_entries: 0 })
}

/// HSM loss without a vault backup: the vault at `dir` lost its software
/// HSM file. A new one is made with a new master key and `passphrase`;
/// every key with an escrow copy is recovered into it with the custodians'
/// `shares`; the audit log goes on under a new audit key (entries keyed
/// under the lost one can no longer be checked, and `audit verify` says how
/// many). Keys without an escrow copy are reported lost, with the datasets
/// that needed them.
pub fn rebuild(
    dir: &Path,
    passphrase: &Passphrase,
    kdf: custos_crypto::KdfParams,
    shares: &[custos_hsm::files::ShareFile],
    who: &str,
) -> Result<RebuildReport> {
    let (sealed, home) = lost_hsm(dir)?;
    // Checked before anything is made: the shares must open the escrow.
    let (kbk, secret) = sealed.escrow_secret(shares)?;
    let hsm = SoftHsm::create_in(home.store(), passphrase, kdf)?;
    let v = sealed.with_hsm(Box::new(hsm));
    // Should what follows fail, the new HSM goes again: the keys already
    // moved under it come back from escrow on the next run, as the rest.
    // The catalog is taken as it stands (the HSM that authenticated it is
    // gone): its rows are sealed under the new HSM's catalog key first, so
    // that what follows may change them.
    let armed = v.arm_catalog().and_then(|_| v.audit_rekey_after_hsm_loss());
    let unverifiable = match armed.and_then(|n| v.audit_arm(false).map(|_| n)) {
        Ok(n) => n,
        Err(e) => {
            drop(v);
            let _ = home.remove();
            return Err(e);
        }
    };
    let mut recovered = Vec::new();
    let mut lost_keys = Vec::new();
    for k in v.repo.keys()?.into_iter().filter(|k| k.wrapped.is_some()) {
        let label = k.label.to_string();
        match k.escrow.clone() {
            // A copy under another (older) key-backup key than the shares'
            // does not open: that key is reported lost too. The shares were
            // reassembled once, above.
            Some(copy) if copy.kbk == kbk.id => match v.restore_escrowed(k, &secret) {
                Ok(_) => recovered.push(label),
                Err(_) => lost_keys.push(label),
            },
            Some(_) | None => lost_keys.push(label),
        }
    }
    let lost_datasets = datasets_needing(&v, &lost_keys)?;
    let mkvp = v.state.hsm.registers()?.into_iter().map(|r| r.mkvp.to_hex()).next().unwrap_or_default();
    v.audit_append(
        who,
        "vault rebuild",
        &mkvp,
        &format!("ok: {} keys recovered from escrow, {} lost", recovered.len(), lost_keys.len()),
    )?;
    Ok(RebuildReport { mkvp, recovered, lost_keys, lost_datasets, unverifiable_audit_entries: unverifiable })
}
