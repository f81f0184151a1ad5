//! The software HSM: master key registers sealed in one file under a
//! passphrase (Argon2id → AES-256-GCM). Layout in docs/format.md, "Software
//! HSM file".

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use aws_lc_rs::hmac;
use custos_crypto::{
    open_with_passphrase_key, random_array, seal_with_passphrase_key, unwrap_key, wrap_key, DataKey, Kcv, Kdf,
    KdfParams, MasterKey, Mkvp, Nonce, Passphrase, PassphraseKey, TAG_LEN,
};
use jiff::Timestamp;
use zeroize::Zeroizing;

use crate::{
    combine_parts, AuditAnchor, CatalogKeyState, Hsm, HsmError, NewMasterKey, Register, RegisterInfo, WrappedKey,
};

const MAGIC: &[u8; 8] = b"CUSTOSHS";
/// Version 1 held the registers; version 2 adds the audit anchor, version 3
/// the catalog key, version 4 the NEXT catalog key of a rotation.
const VERSION: u8 = 4;
const HEADER_LEN: usize = 8 + 1 + 12 + 16 + 12;
const REG_LEN: usize = 1 + 32 + 8;
const ANCHOR_LEN: usize = 1 + AuditAnchor::LEN;
const CATALOG_LEN: usize = 1 + 32;

fn body_len(version: u8) -> usize {
    3 * REG_LEN
        + if version >= 2 { ANCHOR_LEN } else { 0 }
        + if version >= 3 { CATALOG_LEN } else { 0 }
        + if version >= 4 { CATALOG_LEN } else { 0 }
}

/// What the file holds besides the registers.
#[derive(Default)]
struct Stored {
    anchor: Option<AuditAnchor>,
    catalog: Option<Zeroizing<[u8; 32]>>,
    /// Whether every catalog row was sealed under it.
    sealed: bool,
    /// The NEXT catalog key while a rotation is under way.
    next: Option<Zeroizing<[u8; 32]>>,
}

struct Slot {
    key: MasterKey,
    mkvp: Mkvp,
    since: Timestamp,
}

#[derive(Default)]
struct Registers {
    new: Option<Slot>,
    current: Option<Slot>,
    old: Option<Slot>,
}

/// The embedded software HSM.
pub struct SoftHsm {
    path: PathBuf,
    kdf: Kdf,
    /// Derived once when opened, to re-seal the file after register changes.
    seal_key: PassphraseKey,
    regs: RwLock<Registers>,
    /// The catalog key, once the file holds one.
    catalog: RwLock<Option<hmac::Key>>,
    /// The NEXT catalog key, while a rotation is pending.
    next: RwLock<Option<hmac::Key>>,
    /// The file as this handle last read or wrote it: when it differs on
    /// disk, another process (a second server on the vault) changed the
    /// registers, and they are read again before a key is wrapped.
    stamp: std::sync::Mutex<Option<Stamp>>,
}

/// What identifies one version of the file: a rename makes a new inode.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn stamp_of(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).ok()?;
    Some(Stamp { dev: m.dev(), ino: m.ino(), len: m.len(), mtime: m.mtime(), mtime_nsec: m.mtime_nsec() })
}

fn hmac_key(k: &[u8; 32]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, &k[..])
}

/// The shortest passphrase a new software HSM accepts.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

impl SoftHsm {
    /// Create the HSM file with a freshly generated CURRENT master key.
    pub fn create(path: &Path, passphrase: &Passphrase, params: KdfParams) -> Result<Self, HsmError> {
        if path.exists() {
            return Err(HsmError::AlreadyExists { path: path.into() });
        }
        let kdf = Kdf { params, salt: random_array()? };
        params.validate_new()?;
        let chars = String::from_utf8_lossy(passphrase.expose_secret()).chars().count();
        if chars < MIN_PASSPHRASE_CHARS {
            return Err(HsmError::WeakPassphrase { min: MIN_PASSPHRASE_CHARS });
        }
        let key = MasterKey::generate()?;
        let regs = Registers {
            current: Some(Slot { mkvp: Mkvp::of(&key), key, since: Timestamp::now() }),
            ..Default::default()
        };
        let seal_key = kdf.derive(passphrase)?;
        let hsm = Self {
            path: path.into(),
            kdf,
            seal_key,
            regs: RwLock::new(regs),
            catalog: RwLock::new(None),
            next: RwLock::new(None),
            stamp: Default::default(),
        };
        hsm.write(&hsm.regs.read().expect("registers lock"), &Stored::default())?;
        Ok(hsm)
    }

    /// Open an existing HSM file.
    pub fn open(path: &Path, passphrase: &Passphrase) -> Result<Self, HsmError> {
        let io = |source| HsmError::Io { path: path.into(), source };
        let stamp = stamp_of(path);
        let bytes = Zeroizing::new(fs::read(path).map_err(io)?);
        let (kdf, _) = header(path, &bytes)?;
        let pk = kdf.derive(passphrase)?;
        let (regs, stored) = decode(path, &pk, bytes)?;
        let catalog = stored.catalog.as_ref().map(|k| hmac_key(k));
        let next = stored.next.as_ref().map(|k| hmac_key(k));
        Ok(Self {
            path: path.into(),
            kdf,
            seal_key: pk,
            regs: RwLock::new(regs),
            catalog: RwLock::new(catalog),
            next: RwLock::new(next),
            stamp: std::sync::Mutex::new(stamp),
        })
    }

    /// Read the registers and catalog keys again if another process
    /// changed the file since this handle last saw it (one `stat` when it
    /// did not): a key is never wrapped under a register another server
    /// has moved on from.
    fn refresh(&self) -> Result<(), HsmError> {
        let now = stamp_of(&self.path);
        if now.is_none() || *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) == now {
            return Ok(());
        }
        let (regs, stored) = self.read_back()?;
        *self.regs.write().expect("registers lock") = regs;
        *self.catalog.write().expect("catalog key lock") = stored.catalog.as_ref().map(|k| hmac_key(k));
        *self.next.write().expect("catalog key lock") = stored.next.as_ref().map(|k| hmac_key(k));
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = now;
        Ok(())
    }

    /// Change the registers as the file holds them now (never this
    /// handle's possibly older copy), under the file's lock, and write them
    /// back; this handle then holds what was written.
    fn change<T>(&self, f: impl FnOnce(&mut Registers) -> Result<T, HsmError>) -> Result<T, HsmError> {
        let _lock = self.lock()?;
        let (mut regs, stored) = self.read_back()?;
        let out = f(&mut regs)?;
        self.write(&regs, &stored)?;
        *self.regs.write().expect("registers lock") = regs;
        Ok(out)
    }

    /// The registers and the anchor as the file holds them now. The file
    /// must still be sealed under the key this handle derived.
    fn read_back(&self) -> Result<(Registers, Stored), HsmError> {
        let bytes =
            Zeroizing::new(fs::read(&self.path).map_err(|source| HsmError::Io { path: self.path.clone(), source })?);
        let (kdf, _) = header(&self.path, &bytes)?;
        if kdf.salt != self.kdf.salt || kdf.params != self.kdf.params {
            return Err(HsmError::Corrupt {
                path: self.path.clone(),
                why: "it was sealed anew by another process since this one opened it; run the command again",
            });
        }
        decode(&self.path, &self.seal_key, bytes)
    }

    /// Hold the HSM file's lock (a file beside it) while reading it back
    /// and writing it, so that processes sharing the HSM take turns.
    fn lock(&self) -> Result<File, HsmError> {
        let lock = self.path.with_extension("lock");
        let io = |source| HsmError::Io { path: lock.clone(), source };
        let f = OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&lock).map_err(io)?;
        f.lock().map_err(io)?;
        Ok(f)
    }

    /// Write the file atomically (temp file, fsync, rename, fsync dir).
    fn write(&self, regs: &Registers, stored: &Stored) -> Result<(), HsmError> {
        let io = |source| HsmError::Io { path: self.path.clone(), source };
        let pk = &self.seal_key;
        let nonce = Nonce::random()?;
        let mut out = Zeroizing::new(Vec::with_capacity(HEADER_LEN + body_len(VERSION) + TAG_LEN));
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        for v in [self.kdf.params.memory_kib, self.kdf.params.iterations, self.kdf.params.parallelism] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&self.kdf.salt);
        out.extend_from_slice(&nonce.0);
        for slot in [&regs.new, &regs.current, &regs.old] {
            match slot {
                Some(s) => {
                    out.push(1);
                    out.extend_from_slice(s.key.expose_secret());
                    out.extend_from_slice(&s.since.as_second().to_be_bytes());
                }
                None => out.extend_from_slice(&[0u8; REG_LEN]),
            }
        }
        match &stored.anchor {
            Some(a) => {
                out.push(1);
                out.extend_from_slice(&a.encode());
            }
            None => out.extend_from_slice(&[0u8; ANCHOR_LEN]),
        }
        match &stored.catalog {
            Some(k) => {
                out.push(if stored.sealed { 2 } else { 1 });
                out.extend_from_slice(&k[..]);
            }
            None => out.extend_from_slice(&[0u8; CATALOG_LEN]),
        }
        match &stored.next {
            Some(k) => {
                out.push(1);
                out.extend_from_slice(&k[..]);
            }
            None => out.extend_from_slice(&[0u8; CATALOG_LEN]),
        }
        out.extend_from_slice(&[0u8; TAG_LEN]);
        let (header, body) = out.split_at_mut(HEADER_LEN);
        seal_with_passphrase_key(pk, nonce, header, body)?;
        let tmp = self.path.with_extension("tmp");
        // A temp file left by a crash is stale: the real file was not replaced.
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io)?;
        let written = f.write_all(&out).and_then(|_| f.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io(e));
        }
        fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = stamp_of(&self.path);
        Ok(())
    }

    fn with_key<T>(&self, mkvp: &Mkvp, f: impl FnOnce(&MasterKey) -> Result<T, HsmError>) -> Result<T, HsmError> {
        let regs = self.regs.read().expect("registers lock");
        let slot = [&regs.current, &regs.old, &regs.new]
            .into_iter()
            .flatten()
            .find(|s| s.mkvp == *mkvp)
            .ok_or_else(|| HsmError::UnknownMkvp { mkvp: *mkvp, held: held(&regs) })?;
        f(&slot.key)
    }

    fn with_current<T>(&self, f: impl FnOnce(&MasterKey, Mkvp) -> Result<T, HsmError>) -> Result<T, HsmError> {
        let regs = self.regs.read().expect("registers lock");
        let cur = regs.current.as_ref().ok_or(HsmError::NoCurrentMasterKey)?;
        f(&cur.key, cur.mkvp)
    }
}

fn held(regs: &Registers) -> String {
    let list: Vec<String> = [("NEW", &regs.new), ("CURRENT", &regs.current), ("OLD", &regs.old)]
        .into_iter()
        .filter_map(|(n, s)| s.as_ref().map(|s| format!("{n}={}", s.mkvp)))
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// The key derivation a file names in its header, and its version,
/// checked before any key is derived.
fn header(path: &Path, bytes: &[u8]) -> Result<(Kdf, u8), HsmError> {
    let corrupt = |why| HsmError::Corrupt { path: path.into(), why };
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(corrupt("not a Custos software HSM file"));
    }
    let version = bytes[8];
    if !(1..=VERSION).contains(&version) {
        return Err(corrupt("unsupported version; upgrade Custos"));
    }
    if bytes.len() != HEADER_LEN + body_len(version) + TAG_LEN {
        return Err(corrupt("not a Custos software HSM file"));
    }
    let u32_at = |o: usize| u32::from_be_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let params = KdfParams { memory_kib: u32_at(9), iterations: u32_at(13), parallelism: u32_at(17) };
    params.validate().map_err(|_| corrupt("key derivation parameters out of range"))?;
    let salt: [u8; 16] = bytes[21..37].try_into().expect("16 bytes");
    Ok((Kdf { params, salt }, version))
}

/// Open a file's body under the key derived from its passphrase.
fn decode(path: &Path, pk: &PassphraseKey, mut bytes: Zeroizing<Vec<u8>>) -> Result<(Registers, Stored), HsmError> {
    let corrupt = |why| HsmError::Corrupt { path: path.into(), why };
    let version = bytes[8];
    let nonce = Nonce(bytes[37..49].try_into().expect("12 bytes"));
    let (header, body) = bytes.split_at_mut(HEADER_LEN);
    let plain = open_with_passphrase_key(pk, nonce, header, body)
        .map_err(|_| HsmError::WrongPassphrase { path: path.into() })?;
    let mut regs = Registers::default();
    for (i, slot) in [&mut regs.new, &mut regs.current, &mut regs.old].into_iter().enumerate() {
        let r = &plain[i * REG_LEN..(i + 1) * REG_LEN];
        if r[0] == 1 {
            let key = MasterKey::from_slice(&r[1..33])?;
            let secs = i64::from_be_bytes(r[33..41].try_into().expect("8 bytes"));
            let since = Timestamp::from_second(secs).map_err(|_| corrupt("bad timestamp"))?;
            *slot = Some(Slot { mkvp: Mkvp::of(&key), key, since });
        }
    }
    let mut stored = Stored::default();
    if version >= 2 {
        let a = &plain[3 * REG_LEN..3 * REG_LEN + ANCHOR_LEN];
        if a[0] != 0 {
            stored.anchor = Some(AuditAnchor::decode(&a[1..]).ok_or_else(|| corrupt("bad audit anchor"))?);
        }
    }
    if version >= 3 {
        let at = 3 * REG_LEN + ANCHOR_LEN;
        let c = &plain[at..at + CATALOG_LEN];
        match c[0] {
            0 => {}
            1 | 2 => {
                stored.catalog = Some(Zeroizing::new(c[1..].try_into().expect("32 bytes")));
                stored.sealed = c[0] == 2;
            }
            _ => return Err(corrupt("bad catalog key")),
        }
    }
    if version >= 4 {
        let at = 3 * REG_LEN + ANCHOR_LEN + CATALOG_LEN;
        let c = &plain[at..at + CATALOG_LEN];
        match c[0] {
            0 => {}
            1 if stored.catalog.is_some() => stored.next = Some(Zeroizing::new(c[1..].try_into().expect("32 bytes"))),
            _ => return Err(corrupt("bad next catalog key")),
        }
    }
    Ok((regs, stored))
}

impl Hsm for SoftHsm {
    fn describe(&self) -> String {
        format!("software HSM at {}", self.path.display())
    }

    fn registers(&self) -> Result<Vec<RegisterInfo>, HsmError> {
        self.refresh()?;
        let regs = self.regs.read().expect("registers lock");
        Ok([(Register::New, &regs.new), (Register::Current, &regs.current), (Register::Old, &regs.old)]
            .into_iter()
            .filter_map(|(register, s)| s.as_ref().map(|s| RegisterInfo { register, mkvp: s.mkvp, since: s.since }))
            .collect())
    }

    fn generate_key(&self) -> Result<WrappedKey, HsmError> {
        let key = DataKey::generate()?;
        self.wrap_key(&key)
    }

    fn wrap_key(&self, key: &DataKey) -> Result<WrappedKey, HsmError> {
        self.refresh()?;
        self.with_current(|mk, mkvp| Ok(WrappedKey { mkvp, kcv: Kcv::of(key), bytes: wrap_key(mk, key)? }))
    }

    fn unwrap_key(&self, mkvp: &Mkvp, wrapped: &[u8]) -> Result<DataKey, HsmError> {
        let unwrap = || self.with_key(mkvp, |mk| unwrap_key(mk, wrapped).map_err(|_| HsmError::Unwrap { mkvp: *mkvp }));
        match unwrap() {
            // Wrapped under a master key another process loaded since.
            Err(HsmError::UnknownMkvp { .. }) => {
                self.refresh()?;
                unwrap()
            }
            r => r,
        }
    }

    fn rewrap_key(&self, mkvp: &Mkvp, wrapped: &[u8]) -> Result<WrappedKey, HsmError> {
        let key = self.unwrap_key(mkvp, wrapped)?;
        self.wrap_key(&key)
    }

    fn load_new(&self, new: NewMasterKey, expect: Option<Mkvp>) -> Result<Mkvp, HsmError> {
        self.change(|regs| {
            if let Some(n) = &regs.new {
                return Err(HsmError::NewLoaded { mkvp: n.mkvp });
            }
            let key = match new {
                NewMasterKey::Generate => MasterKey::generate()?,
                NewMasterKey::Parts(parts) => combine_parts(&parts)?,
            };
            let mkvp = Mkvp::of(&key);
            if let Some(want) = expect.filter(|w| *w != mkvp) {
                return Err(HsmError::MkvpMismatch { got: mkvp, want });
            }
            regs.new = Some(Slot { key, mkvp, since: Timestamp::now() });
            Ok(mkvp)
        })
    }

    fn clear_new(&self) -> Result<(), HsmError> {
        self.change(|regs| {
            regs.new = None;
            Ok(())
        })
    }

    fn activate(&self) -> Result<(), HsmError> {
        self.change(|regs| {
            let Some(mut new) = regs.new.take() else {
                return Err(HsmError::NoNewMasterKey);
            };
            let now = Timestamp::now();
            new.since = now;
            let mut current = regs.current.take();
            if let Some(c) = current.as_mut() {
                c.since = now;
            }
            regs.old = current;
            regs.current = Some(new);
            Ok(())
        })
    }

    fn anchor(&self) -> Result<Option<AuditAnchor>, HsmError> {
        Ok(self.read_back()?.1.anchor)
    }

    fn set_anchor(&self, anchor: &AuditAnchor, force: bool) -> Result<(), HsmError> {
        let _lock = self.lock()?;
        let (regs, mut stored) = self.read_back()?;
        if !force && stored.anchor.is_some_and(|s| s.seq >= anchor.seq) {
            return Ok(());
        }
        stored.anchor = Some(*anchor);
        self.write(&regs, &stored)
    }

    fn catalog_key_state(&self) -> Result<CatalogKeyState, HsmError> {
        let stored = self.read_back()?.1;
        Ok(match (&stored.catalog, stored.sealed) {
            (None, _) => CatalogKeyState::None,
            (Some(_), false) => CatalogKeyState::Made,
            (Some(_), true) => CatalogKeyState::Sealed,
        })
    }

    fn make_catalog_key(&self) -> Result<(), HsmError> {
        let _lock = self.lock()?;
        let (regs, mut stored) = self.read_back()?;
        if stored.catalog.is_none() {
            stored.catalog = Some(Zeroizing::new(random_array()?));
            self.write(&regs, &stored)?;
        }
        let k = stored.catalog.as_ref().expect("held or made");
        *self.catalog.write().expect("catalog key lock") = Some(hmac_key(k));
        Ok(())
    }

    fn catalog_key_sealed(&self) -> Result<(), HsmError> {
        let _lock = self.lock()?;
        let (regs, mut stored) = self.read_back()?;
        if stored.catalog.is_none() {
            return Err(HsmError::NoCatalogKey);
        }
        if !stored.sealed {
            stored.sealed = true;
            self.write(&regs, &stored)?;
        }
        Ok(())
    }

    fn catalog_mac(&self, msg: &[u8]) -> Result<[u8; 32], HsmError> {
        let mut held = self.catalog.read().expect("catalog key lock");
        if held.is_none() {
            // Another process may have made it since this one opened.
            drop(held);
            if let Some(k) = self.read_back()?.1.catalog {
                *self.catalog.write().expect("catalog key lock") = Some(hmac_key(&k));
            }
            held = self.catalog.read().expect("catalog key lock");
        }
        let key = held.as_ref().ok_or(HsmError::NoCatalogKey)?;
        Ok(hmac::sign(key, msg).as_ref().try_into().expect("HMAC-SHA-256 is 32 bytes"))
    }

    fn begin_catalog_rotation(&self) -> Result<(), HsmError> {
        let _lock = self.lock()?;
        let (regs, mut stored) = self.read_back()?;
        if stored.catalog.is_none() {
            return Err(HsmError::NoCatalogKey);
        }
        if stored.next.is_none() {
            stored.next = Some(Zeroizing::new(random_array()?));
            self.write(&regs, &stored)?;
        }
        *self.next.write().expect("catalog key lock") = stored.next.as_ref().map(|k| hmac_key(k));
        Ok(())
    }

    fn catalog_rotation_pending(&self) -> Result<bool, HsmError> {
        Ok(self.read_back()?.1.next.is_some())
    }

    fn catalog_mac_next(&self, msg: &[u8]) -> Result<Option<[u8; 32]>, HsmError> {
        let held = self.next.read().expect("catalog key lock");
        Ok(held.as_ref().map(|k| hmac::sign(k, msg).as_ref().try_into().expect("HMAC-SHA-256 is 32 bytes")))
    }

    fn finish_catalog_rotation(&self) -> Result<(), HsmError> {
        let _lock = self.lock()?;
        let (regs, mut stored) = self.read_back()?;
        if let Some(next) = stored.next.take() {
            stored.catalog = Some(next);
            self.write(&regs, &stored)?;
        }
        *self.catalog.write().expect("catalog key lock") = stored.catalog.as_ref().map(|k| hmac_key(k));
        *self.next.write().expect("catalog key lock") = None;
        Ok(())
    }

    fn refresh_catalog_keys(&self) -> Result<(), HsmError> {
        let stored = self.read_back()?.1;
        *self.catalog.write().expect("catalog key lock") = stored.catalog.as_ref().map(|k| hmac_key(k));
        *self.next.write().expect("catalog key lock") = stored.next.as_ref().map(|k| hmac_key(k));
        Ok(())
    }
}

impl std::fmt::Debug for SoftHsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftHsm").field("path", &self.path).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(s: &str) -> Passphrase {
        Passphrase::from(s.to_string())
    }

    #[test]
    fn conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let hsm =
            SoftHsm::create(&dir.path().join("hsm"), &pass("a long test passphrase"), KdfParams::MINIMUM).unwrap();
        crate::conformance::run(&hsm);
    }

    #[test]
    fn reopen_keeps_registers_and_wrong_passphrase_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hsm");
        let hsm = SoftHsm::create(&p, &pass("the right passphrase"), KdfParams::MINIMUM).unwrap();
        let w = hsm.generate_key().unwrap();
        drop(hsm);
        let again = SoftHsm::open(&p, &pass("the right passphrase")).unwrap();
        assert_eq!(Kcv::of(&again.unwrap_key(&w.mkvp, &w.bytes).unwrap()), w.kcv);
        // Register changes persist.
        let new = again.load_new(NewMasterKey::Generate, None).unwrap();
        again.activate().unwrap();
        drop(again);
        let again = SoftHsm::open(&p, &pass("the right passphrase")).unwrap();
        let regs = again.registers().unwrap();
        assert_eq!(regs.iter().find(|r| r.register == Register::Current).unwrap().mkvp, new);
        assert_eq!(regs.iter().find(|r| r.register == Register::Old).unwrap().mkvp, w.mkvp);
        let before = fs::read(&p).unwrap();
        let e = SoftHsm::open(&p, &pass("wrong")).unwrap_err();
        assert!(matches!(e, HsmError::WrongPassphrase { .. }), "{e}");
        assert!(e.to_string().contains("wrong passphrase"));
        assert_eq!(fs::read(&p).unwrap(), before, "a failed open changes nothing");
        assert!(matches!(
            SoftHsm::create(&p, &pass("another passphrase"), KdfParams::MINIMUM),
            Err(HsmError::AlreadyExists { .. })
        ));
    }

    /// Two processes on one HSM file (two servers on one vault): each sees
    /// the other's register changes before it wraps a key, and a change is
    /// made to the registers the file holds, never to a stale copy.
    #[test]
    fn two_handles_on_one_file_see_each_others_register_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hsm");
        let a = SoftHsm::create(&p, &pass("a long test passphrase"), KdfParams::MINIMUM).unwrap();
        let b = SoftHsm::open(&p, &pass("a long test passphrase")).unwrap();
        let first = b.generate_key().unwrap();
        let new = a.load_new(NewMasterKey::Generate, None).unwrap();
        assert!(matches!(b.load_new(NewMasterKey::Generate, None), Err(HsmError::NewLoaded { mkvp }) if mkvp == new));
        a.activate().unwrap();
        let w = b.generate_key().unwrap();
        assert_eq!(w.mkvp, new, "b wraps under the master key a activated");
        assert_eq!(Kcv::of(&a.unwrap_key(&w.mkvp, &w.bytes).unwrap()), w.kcv);
        assert!(b.unwrap_key(&first.mkvp, &first.bytes).is_ok(), "the old one is still held, as OLD");
        // b's change starts from what a wrote: a's activation stays.
        let third = b.load_new(NewMasterKey::Generate, None).unwrap();
        let regs = a.registers().unwrap();
        let of = |r: Register| regs.iter().find(|x| x.register == r).map(|x| x.mkvp);
        assert_eq!(
            (of(Register::New), of(Register::Current), of(Register::Old)),
            (Some(third), Some(new), Some(first.mkvp))
        );
    }

    #[test]
    fn fail_altered_or_truncated_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hsm");
        SoftHsm::create(&p, &pass("a long test passphrase"), KdfParams::MINIMUM).unwrap();
        let good = fs::read(&p).unwrap();
        for i in [0, 9, 25, 40, HEADER_LEN + 5, good.len() - 1] {
            let mut b = good.clone();
            b[i] ^= 0x01;
            fs::write(&p, &b).unwrap();
            assert!(SoftHsm::open(&p, &pass("a long test passphrase")).is_err(), "byte {i}");
        }
        fs::write(&p, &good[..good.len() - 1]).unwrap();
        assert!(matches!(SoftHsm::open(&p, &pass("a long test passphrase")), Err(HsmError::Corrupt { .. })));
        assert!(matches!(
            SoftHsm::open(&dir.path().join("nope"), &pass("a long test passphrase")),
            Err(HsmError::Io { .. })
        ));
    }

    #[test]
    fn fail_new_hsm_below_the_kdf_floor_or_with_a_short_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let weak = KdfParams { memory_kib: 8 * 1024, iterations: 1, parallelism: 1 };
        let e = SoftHsm::create(&dir.path().join("a"), &pass("a long test passphrase"), weak).unwrap_err();
        assert!(e.to_string().contains("below the floor of 19 MiB and 2 passes"), "{e}");
        let one_pass = KdfParams { memory_kib: 64 * 1024, iterations: 1, parallelism: 1 };
        assert!(SoftHsm::create(&dir.path().join("b"), &pass("a long test passphrase"), one_pass).is_err());
        let e = SoftHsm::create(&dir.path().join("c"), &pass("elevenchars"), KdfParams::MINIMUM).unwrap_err();
        assert!(matches!(e, HsmError::WeakPassphrase { min: 12 }), "{e}");
        assert!(!dir.path().join("a").exists() && !dir.path().join("c").exists(), "nothing was created");
        SoftHsm::create(&dir.path().join("d"), &pass("twelve chars"), KdfParams::MINIMUM).unwrap();
    }
}
