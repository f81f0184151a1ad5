//! Where a vault's software HSM keeps its sealed state: the file
//! `hsm.sealed` beside an embedded catalog, or one row of the catalog when
//! servers share it on PostgreSQL (ADR 0020, item 5), so that every server
//! sees a master key change the moment it is made.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use custos_hsm::{FileStore, HsmError, SealedState, SealedStore};
use custos_repo::Repository;
use zeroize::Zeroizing;

use crate::vault::HSM_FILE;
use crate::{Error, Result, Vault, VaultState};

/// How long a check that the catalog's state has not moved holds before
/// the next key wrapped asks again. A server that wraps under a master key
/// another server just retired wraps under OLD, which every register set
/// still holds; `mk activate` refuses to drop OLD while any key is under
/// it, and re-encipherment moves such keys on.
pub const RECHECK: Duration = Duration::from_millis(100);

/// The sealed state in the catalog's `hsm_state` row.
pub struct CatalogStore {
    repo: Arc<dyn Repository>,
    /// When the generation was last seen unchanged, and which it was.
    checked: Mutex<Option<(Instant, u64)>>,
}

impl CatalogStore {
    pub fn new(repo: Arc<dyn Repository>) -> Self {
        Self { repo, checked: Mutex::new(None) }
    }

    fn unreachable(&self) -> impl Fn(custos_repo::RepoError) -> HsmError + '_ {
        |e| HsmError::Unreachable { at: self.at(), why: e.to_string() }
    }

    fn seen(&self, generation: u64) {
        *self.checked.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), generation));
    }
}

impl SealedStore for CatalogStore {
    fn at(&self) -> String {
        "in the catalog, table hsm_state".into()
    }

    fn load(&self) -> std::result::Result<Option<SealedState>, HsmError> {
        let got = self.repo.hsm_state().map_err(self.unreachable())?;
        Ok(got.map(|(bytes, g)| {
            self.seen(g);
            (Zeroizing::new(bytes), g)
        }))
    }

    fn moved(&self, version: u64) -> std::result::Result<bool, HsmError> {
        if let Some((at, g)) = *self.checked.lock().unwrap_or_else(|p| p.into_inner()) {
            if g == version && at.elapsed() < RECHECK {
                return Ok(false);
            }
        }
        match self.repo.hsm_state_generation().map_err(self.unreachable())? {
            Some(g) if g == version => {
                self.seen(g);
                Ok(false)
            }
            _ => Ok(true),
        }
    }

    fn store(&self, sealed: &[u8], was: Option<u64>) -> std::result::Result<Option<u64>, HsmError> {
        let stored = self.repo.put_hsm_state(sealed, was).map_err(self.unreachable())?;
        if let Some(g) = stored {
            self.seen(g);
        }
        Ok(stored)
    }
}

/// Where a vault's software HSM is, or where a new one goes.
pub(crate) enum SoftHome {
    File(PathBuf),
    Catalog(Arc<dyn Repository>),
}

impl SoftHome {
    pub(crate) fn store(&self) -> Box<dyn SealedStore> {
        match self {
            SoftHome::File(p) => Box::new(FileStore::new(p)),
            SoftHome::Catalog(repo) => Box::new(CatalogStore::new(repo.clone())),
        }
    }

    /// The sealed state as it is kept; `None` when there is none.
    pub(crate) fn read(&self) -> Result<Option<Zeroizing<Vec<u8>>>> {
        Ok(self.store().load()?.map(|(b, _)| b))
    }

    /// Forget the state (a new HSM that could not be completed).
    pub(crate) fn remove(&self) -> Result<()> {
        match self {
            SoftHome::File(p) => {
                for f in [p.clone(), p.with_extension("lock")] {
                    match std::fs::remove_file(&f) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(Error::VaultIo { path: f, source: e })
                        }
                        _ => {}
                    }
                }
            }
            SoftHome::Catalog(repo) => {
                repo.remove_hsm_state()?;
            }
        }
        Ok(())
    }

    pub(crate) fn describe(&self) -> String {
        self.store().at()
    }
}

impl<S: VaultState> Vault<S> {
    /// Where this vault's software HSM is kept: the catalog's row or the
    /// file, whichever holds it; with neither (a new HSM), the catalog when
    /// it is on PostgreSQL, else the file. Both at once is refused unless
    /// they hold the same state (a `repo migrate` that stopped before it
    /// moved the file aside, which is then done).
    pub(crate) fn soft_home(&self) -> Result<SoftHome> {
        let file = self.dir.join(HSM_FILE);
        let row = self.repo.hsm_state()?;
        let read_file = || std::fs::read(&file).map_err(|source| Error::VaultIo { path: file.clone(), source });
        match (row, file.exists()) {
            (Some(_), false) => Ok(SoftHome::Catalog(self.repo.clone())),
            (None, true) => Ok(SoftHome::File(file)),
            (None, false) if self.repo.remote() => Ok(SoftHome::Catalog(self.repo.clone())),
            (None, false) => Ok(SoftHome::File(file)),
            (Some((row, _)), true) if read_file()? == row => {
                let aside = self.dir.join(format!("{HSM_FILE}.migrated"));
                std::fs::rename(&file, &aside).map_err(|source| Error::VaultIo { path: file.clone(), source })?;
                Ok(SoftHome::Catalog(self.repo.clone()))
            }
            (Some(_), true) => Err(Error::Invalid {
                what: "software HSM",
                why: format!(
                    "both {} and the catalog (table hsm_state) hold one, and they differ: keep the one with the newest master keys (`custos mk status` on a copy of the vault with only that one), and move the other aside",
                    file.display()
                ),
            }),
        }
    }
}
