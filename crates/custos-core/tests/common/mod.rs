#![allow(dead_code)]
use std::path::PathBuf;

use custos_core::model::{DatasetName, Medium, VolumeName};
use custos_core::{InitOptions, KdfParams, NewVolume, Open, Passphrase, PutOptions, Vault};

pub const CS: usize = 64 * 1024;

pub struct T {
    pub _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub vault: Vault<Open>,
}

pub fn pass() -> Passphrase {
    Passphrase::from("correct horse battery staple".to_string())
}

/// A fresh vault with the cheapest KDF and 64 KiB chunks.
pub fn vault() -> T {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault");
    let vault =
        Vault::init(&path, &pass(), &InitOptions { kdf: KdfParams::MINIMUM, site: "A".into(), ..Default::default() })
            .unwrap();
    vault.set_chunk_size(CS as u32).unwrap();
    T { _dir: dir, path, vault }
}

/// Add the volume `offsite` (site B, tape) under the vault directory.
pub fn offsite(t: &T) -> VolumeName {
    let name = VolumeName::new("offsite").unwrap();
    t.vault
        .add_volume(&NewVolume {
            name: name.clone(),
            location: t.path.join("volumes/offsite").display().to_string(),
            site: "B".into(),
            medium: Medium::Tape,
        })
        .unwrap();
    name
}

pub fn ds(s: &str) -> DatasetName {
    DatasetName::new(s).unwrap()
}

/// Deterministic, incompressible test data.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

impl T {
    pub fn put(&self, name: &str, bytes: &[u8]) -> custos_core::PutReport {
        self.vault.put(&ds(name), &mut &bytes[..], &PutOptions::default()).unwrap()
    }

    pub fn get(&self, name: &str) -> custos_core::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.vault.get(&ds(name), &mut out, None).map(|_| out)
    }

    /// Paths of the chunk files of a dataset's current generation, in order.
    pub fn chunk_paths(&self, name: &str) -> Vec<PathBuf> {
        let d = self.vault.dataset(&ds(name)).unwrap();
        let vol = self.vault.volume_record(&d.current.volume).unwrap();
        self.vault
            .repository()
            .generation_chunks(&d.id, d.current.generation)
            .unwrap()
            .iter()
            .map(|id| {
                let h = id.to_hex();
                PathBuf::from(&vol.location).join("chunks").join(&h[..2]).join(h)
            })
            .collect()
    }

    pub fn manifest_path(&self, name: &str) -> PathBuf {
        let d = self.vault.dataset(&ds(name)).unwrap();
        let vol = self.vault.volume_record(&d.current.volume).unwrap();
        custos_store::LocalVolume::open("t", std::path::Path::new(&vol.location))
            .unwrap()
            .manifest_path(&d.id, d.current.generation)
    }

    /// Every file under the default volume's chunk directory.
    pub fn chunk_file_count(&self) -> usize {
        let root = self.path.join("volumes/default/chunks");
        std::fs::read_dir(root).unwrap().map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count()).sum()
    }
}

impl T {
    /// Set up escrow among `names` (made users, each with a key pair of
    /// their own registered), and return each one's share as they would
    /// open it: fetched sealed, opened with their own key, confirmed.
    pub fn escrow(&self, names: &[&str], threshold: u8) -> Vec<custos_core::ShareFile> {
        use custos_core::model::Role;
        use custos_core::{CustodianIdentity, SealedShareFile};
        let ids: Vec<CustodianIdentity> = names
            .iter()
            .map(|n| {
                if self.vault.user(n).is_err() {
                    self.vault.user_add(n, &[Role::KeyCustodian], None).unwrap();
                }
                let id = CustodianIdentity::generate(n).unwrap();
                self.vault.custodian_register(n, &id.recipient()).unwrap();
                id
            })
            .collect();
        let custodians: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let kbk = self.vault.escrow_init(&custodians, threshold).unwrap();
        ids.iter()
            .map(|id| {
                let sealed = SealedShareFile(self.vault.escrow_share(&id.custodian, None).unwrap());
                let share = id.open_share(&sealed, "share").unwrap();
                self.vault.escrow_confirm(&id.custodian, &kbk.id, &custos_core::share_confirmation(&share)).unwrap();
                share
            })
            .collect()
    }
}
