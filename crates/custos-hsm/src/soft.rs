//! The software HSM: master key registers sealed under a passphrase
//! (Argon2id → AES-256-GCM), kept in one file beside the catalog or, for
//! servers sharing a catalog on PostgreSQL, in one row of the catalog.
//! Layout in docs/format.md, "Software HSM file".

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use aws_lc_rs::{digest, hmac};
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
/// How often a change races another process's before the change gives up.
const RACE_TRIES: usize = 32;

fn body_len(version: u8) -> usize {
    3 * REG_LEN
        + if version >= 2 { ANCHOR_LEN } else { 0 }
        + if version >= 3 { CATALOG_LEN } else { 0 }
        + if version >= 4 { CATALOG_LEN } else { 0 }
}

/// A sealed state as a store keeps it, and its version.
pub type SealedState = (Zeroizing<Vec<u8>>, u64);

/// Where the sealed state is kept: the seam between the software HSM and
/// its storage. The state is sealed before it gets here, so a store only
/// ever holds ciphertext; what it owes the HSM is an atomic
/// compare-and-set, so that processes sharing the state never overwrite a
/// change they did not see.
pub trait SealedStore: Send + Sync {
    /// Where the state is, for messages: "file /v/hsm.sealed".
    fn at(&self) -> String;
    /// The sealed state and its version; `None` when there is none yet.
    fn load(&self) -> Result<Option<SealedState>, HsmError>;
    /// Whether the state may have changed since `version` was loaded or
    /// stored: cheap, and allowed to say yes when unsure.
    fn moved(&self, version: u64) -> Result<bool, HsmError>;
    /// Replace the state if it is still at version `was` (`None`: only if
    /// there is none yet). The new version, or `None` when another writer
    /// changed it first (nothing was written then).
    fn store(&self, sealed: &[u8], was: Option<u64>) -> Result<Option<u64>, HsmError>;
}

/// The version of a sealed state: a digest of its bytes. Every sealing uses
/// a fresh nonce, so no two writes give the same bytes.
fn version_of(sealed: &[u8]) -> u64 {
    let d = digest::digest(&digest::SHA256, sealed);
    u64::from_be_bytes(d.as_ref()[..8].try_into().expect("8 bytes"))
}

/// A state held in memory only: for a PKCS#11 token's records before the
/// catalog they belong in exists (`Pkcs11Hsm::move_records`), and tests.
#[derive(Default)]
pub struct MemoryStore {
    state: std::sync::Mutex<Option<(Vec<u8>, u64)>>,
}

impl SealedStore for MemoryStore {
    fn at(&self) -> String {
        "in memory".into()
    }

    fn load(&self) -> Result<Option<SealedState>, HsmError> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Ok(s.as_ref().map(|(b, v)| (Zeroizing::new(b.clone()), *v)))
    }

    fn moved(&self, version: u64) -> Result<bool, HsmError> {
        Ok(self.state.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(_, v)| *v) != Some(version))
    }

    fn store(&self, sealed: &[u8], was: Option<u64>) -> Result<Option<u64>, HsmError> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = s.as_ref().map(|(_, v)| *v);
        if now != was {
            return Ok(None);
        }
        let next = now.unwrap_or(0) + 1;
        *s = Some((sealed.to_vec(), next));
        Ok(Some(next))
    }
}

/// The state in a file, replaced atomically (temp file, fsync, rename,
/// fsync of the directory) under a lock file beside it.
pub struct FileStore {
    path: PathBuf,
    /// The file as last read or written here, and its version.
    seen: Mutex<Option<(Stamp, u64)>>,
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

impl FileStore {
    pub fn new(path: &Path) -> Self {
        Self { path: path.into(), seen: Mutex::new(None) }
    }

    fn io(&self) -> impl Fn(std::io::Error) -> HsmError + '_ {
        |source| HsmError::Io { at: self.at(), source }
    }

    fn read(&self) -> Result<Option<SealedState>, HsmError> {
        let stamp = stamp_of(&self.path);
        let bytes = match fs::read(&self.path) {
            Ok(b) => Zeroizing::new(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io()(e)),
        };
        let v = version_of(&bytes);
        // Stamped before the read: if the file changed in between, the
        // next `moved` says so and the state is read again.
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = stamp.map(|s| (s, v));
        Ok(Some((bytes, v)))
    }
}

impl SealedStore for FileStore {
    fn at(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn load(&self) -> Result<Option<SealedState>, HsmError> {
        self.read()
    }

    fn moved(&self, version: u64) -> Result<bool, HsmError> {
        // A file gone missing is not a change: what is held stays in use.
        let Some(now) = stamp_of(&self.path) else { return Ok(false) };
        Ok(*self.seen.lock().unwrap_or_else(|p| p.into_inner()) != Some((now, version)))
    }

    fn store(&self, sealed: &[u8], was: Option<u64>) -> Result<Option<u64>, HsmError> {
        let io = self.io();
        let lock = self.path.with_extension("lock");
        let lock_io = |source| HsmError::Io { at: format!("file {}", lock.display()), source };
        let l = OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&lock).map_err(lock_io)?;
        l.lock().map_err(lock_io)?;
        if self.read()?.map(|(_, v)| v) != was {
            return Ok(None);
        }
        let tmp = self.path.with_extension("tmp");
        // A temp file left by a crash is stale: the real file was not replaced.
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(&io)?;
        let written = f.write_all(sealed).and_then(|_| f.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(io(e));
        }
        fs::rename(&tmp, &self.path).map_err(&io)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(&io)?;
        }
        let v = version_of(sealed);
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = stamp_of(&self.path).map(|s| (s, v));
        Ok(Some(v))
    }
}

/// What the state holds besides the registers.
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
    store: Box<dyn SealedStore>,
    kdf: Kdf,
    /// Derived once when opened, to re-seal the state after changes.
    seal_key: PassphraseKey,
    regs: RwLock<Registers>,
    /// The catalog key, once the state holds one.
    catalog: RwLock<Option<hmac::Key>>,
    /// The NEXT catalog key, while a rotation is pending.
    next: RwLock<Option<hmac::Key>>,
    /// The version of the state this handle last read or wrote: when the
    /// store has moved on, another process (a second server) changed the
    /// registers, and they are read again before a key is wrapped.
    seen: Mutex<Option<u64>>,
}

fn hmac_key(k: &[u8; 32]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, &k[..])
}

/// The shortest passphrase a new software HSM accepts.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

impl SoftHsm {
    /// Create the HSM file with a freshly generated CURRENT master key.
    pub fn create(path: &Path, passphrase: &Passphrase, params: KdfParams) -> Result<Self, HsmError> {
        Self::create_in(Box::new(FileStore::new(path)), passphrase, params)
    }

    /// Open an existing HSM file.
    pub fn open(path: &Path, passphrase: &Passphrase) -> Result<Self, HsmError> {
        Self::open_in(Box::new(FileStore::new(path)), passphrase)
    }

    /// Create the HSM in `store` with a freshly generated CURRENT master key.
    pub fn create_in(
        store: Box<dyn SealedStore>,
        passphrase: &Passphrase,
        params: KdfParams,
    ) -> Result<Self, HsmError> {
        if store.load()?.is_some() {
            return Err(HsmError::AlreadyExists { at: store.at() });
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
            store,
            kdf,
            seal_key,
            regs: RwLock::new(Registers::default()),
            catalog: RwLock::new(None),
            next: RwLock::new(None),
            seen: Mutex::new(None),
        };
        let sealed = hsm.encode(&regs, &Stored::default())?;
        let v = hsm.store.store(&sealed, None)?.ok_or_else(|| HsmError::AlreadyExists { at: hsm.store.at() })?;
        *hsm.regs.write().expect("registers lock") = regs;
        *hsm.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
        Ok(hsm)
    }

    /// Open the HSM kept in `store`.
    pub fn open_in(store: Box<dyn SealedStore>, passphrase: &Passphrase) -> Result<Self, HsmError> {
        let (bytes, v) = store.load()?.ok_or_else(|| HsmError::Missing { at: store.at() })?;
        let (kdf, _) = header(&store.at(), &bytes)?;
        let pk = kdf.derive(passphrase)?;
        let (regs, stored) = decode(&store.at(), &pk, bytes)?;
        let catalog = stored.catalog.as_ref().map(|k| hmac_key(k));
        let next = stored.next.as_ref().map(|k| hmac_key(k));
        Ok(Self {
            store,
            kdf,
            seal_key: pk,
            regs: RwLock::new(regs),
            catalog: RwLock::new(catalog),
            next: RwLock::new(next),
            seen: Mutex::new(Some(v)),
        })
    }

    /// Hold what was read or written: registers, catalog keys, version.
    fn install(&self, regs: Registers, stored: &Stored, version: u64) {
        *self.regs.write().expect("registers lock") = regs;
        *self.catalog.write().expect("catalog key lock") = stored.catalog.as_ref().map(|k| hmac_key(k));
        *self.next.write().expect("catalog key lock") = stored.next.as_ref().map(|k| hmac_key(k));
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(version);
    }

    /// Read the registers and catalog keys again if another process
    /// changed the state since this handle last saw it (when it did not:
    /// one `stat`, or one small query that the catalog's store trusts for
    /// a moment), so that keys are wrapped under the registers another
    /// server changed, not a stale copy of them.
    fn refresh(&self) -> Result<(), HsmError> {
        let seen = *self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = seen {
            if !self.store.moved(v)? {
                return Ok(());
            }
        }
        self.reload()
    }

    /// Read the registers and catalog keys again, whatever the store says.
    fn reload(&self) -> Result<(), HsmError> {
        let (regs, stored, v) = self.read_back()?;
        self.install(regs, &stored, v);
        Ok(())
    }

    /// Change the state as the store holds it now (never this handle's
    /// possibly older copy) and store it back if it is still what was read,
    /// else read it again and decide again. `f` says whether it changed
    /// anything; this handle then holds what the store holds.
    fn update<T>(
        &self,
        mut f: impl FnMut(&mut Registers, &mut Stored) -> Result<(T, bool), HsmError>,
    ) -> Result<T, HsmError> {
        for _ in 0..RACE_TRIES {
            let (mut regs, mut stored, v) = self.read_back()?;
            let (out, changed) = f(&mut regs, &mut stored)?;
            if !changed {
                self.install(regs, &stored, v);
                return Ok(out);
            }
            let sealed = self.encode(&regs, &stored)?;
            if let Some(nv) = self.store.store(&sealed, Some(v))? {
                self.install(regs, &stored, nv);
                return Ok(out);
            }
        }
        Err(HsmError::Busy { at: self.store.at() })
    }

    /// The registers and the rest of the state as the store holds them
    /// now, with their version. The state must still be sealed under the
    /// key this handle derived.
    fn read_back(&self) -> Result<(Registers, Stored, u64), HsmError> {
        let at = self.store.at();
        let (bytes, v) = self.store.load()?.ok_or_else(|| HsmError::Missing { at: at.clone() })?;
        let (kdf, _) = header(&at, &bytes)?;
        if kdf.salt != self.kdf.salt || kdf.params != self.kdf.params {
            return Err(HsmError::Corrupt {
                at,
                why: "it was sealed anew by another process since this one opened it; run the command again",
            });
        }
        let (regs, stored) = decode(&at, &self.seal_key, bytes)?;
        Ok((regs, stored, v))
    }

    /// Seal the state: the bytes a store keeps.
    fn encode(&self, regs: &Registers, stored: &Stored) -> Result<Zeroizing<Vec<u8>>, HsmError> {
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
        Ok(out)
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

/// The key derivation a sealed state names in its header, and its
/// version, checked before any key is derived.
fn header(at: &str, bytes: &[u8]) -> Result<(Kdf, u8), HsmError> {
    let corrupt = |why| HsmError::Corrupt { at: at.into(), why };
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(corrupt("not a Custos software HSM"));
    }
    let version = bytes[8];
    if !(1..=VERSION).contains(&version) {
        return Err(corrupt("unsupported version; upgrade Custos"));
    }
    if bytes.len() != HEADER_LEN + body_len(version) + TAG_LEN {
        return Err(corrupt("not a Custos software HSM"));
    }
    let u32_at = |o: usize| u32::from_be_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let params = KdfParams { memory_kib: u32_at(9), iterations: u32_at(13), parallelism: u32_at(17) };
    params.validate().map_err(|_| corrupt("key derivation parameters out of range"))?;
    let salt: [u8; 16] = bytes[21..37].try_into().expect("16 bytes");
    Ok((Kdf { params, salt }, version))
}

/// Open a sealed state's body under the key derived from its passphrase.
fn decode(at: &str, pk: &PassphraseKey, mut bytes: Zeroizing<Vec<u8>>) -> Result<(Registers, Stored), HsmError> {
    let corrupt = |why| HsmError::Corrupt { at: at.into(), why };
    let version = bytes[8];
    let nonce = Nonce(bytes[37..49].try_into().expect("12 bytes"));
    let (header, body) = bytes.split_at_mut(HEADER_LEN);
    let plain =
        open_with_passphrase_key(pk, nonce, header, body).map_err(|_| HsmError::WrongPassphrase { at: at.into() })?;
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
        format!("software HSM ({})", self.store.at())
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
                self.reload()?;
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
        if let Some(n) = self.read_back()?.0.new {
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
        self.update(|regs, _| {
            if let Some(n) = &regs.new {
                return Err(HsmError::NewLoaded { mkvp: n.mkvp });
            }
            let key = MasterKey::from_slice(key.expose_secret())?;
            regs.new = Some(Slot { key, mkvp, since: Timestamp::now() });
            Ok((mkvp, true))
        })
    }

    fn clear_new(&self) -> Result<(), HsmError> {
        self.update(|regs, _| Ok(((), regs.new.take().is_some())))
    }

    fn activate(&self) -> Result<(), HsmError> {
        self.update(|regs, _| {
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
            Ok(((), true))
        })
    }

    fn anchor(&self) -> Result<Option<AuditAnchor>, HsmError> {
        Ok(self.read_back()?.1.anchor)
    }

    fn set_anchor(&self, anchor: &AuditAnchor, force: bool) -> Result<(), HsmError> {
        self.update(|_, stored| {
            if !force && stored.anchor.is_some_and(|s| s.seq >= anchor.seq) {
                return Ok(((), false));
            }
            stored.anchor = Some(*anchor);
            Ok(((), true))
        })
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
        self.update(|_, stored| {
            if stored.catalog.is_some() {
                return Ok(((), false));
            }
            stored.catalog = Some(Zeroizing::new(random_array()?));
            Ok(((), true))
        })
    }

    fn catalog_key_sealed(&self) -> Result<(), HsmError> {
        self.update(|_, stored| {
            if stored.catalog.is_none() {
                return Err(HsmError::NoCatalogKey);
            }
            Ok(((), !std::mem::replace(&mut stored.sealed, true)))
        })
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
        self.update(|_, stored| {
            if stored.catalog.is_none() {
                return Err(HsmError::NoCatalogKey);
            }
            if stored.next.is_some() {
                return Ok(((), false));
            }
            stored.next = Some(Zeroizing::new(random_array()?));
            Ok(((), true))
        })
    }

    fn catalog_rotation_pending(&self) -> Result<bool, HsmError> {
        Ok(self.read_back()?.1.next.is_some())
    }

    fn catalog_mac_next(&self, msg: &[u8]) -> Result<Option<[u8; 32]>, HsmError> {
        let held = self.next.read().expect("catalog key lock");
        Ok(held.as_ref().map(|k| hmac::sign(k, msg).as_ref().try_into().expect("HMAC-SHA-256 is 32 bytes")))
    }

    fn finish_catalog_rotation(&self) -> Result<(), HsmError> {
        self.update(|_, stored| {
            let Some(next) = stored.next.take() else { return Ok(((), false)) };
            stored.catalog = Some(next);
            Ok(((), true))
        })
    }

    fn refresh_catalog_keys(&self) -> Result<(), HsmError> {
        self.reload()
    }
}

impl std::fmt::Debug for SoftHsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftHsm").field("at", &self.store.at()).finish_non_exhaustive()
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

    /// A store in memory, shared by the handles made on it; `before` runs
    /// once, just before the next store (another process's change landing
    /// between this one's read and its write).
    type Hook = Box<dyn FnOnce() + Send>;
    type Kept = (Vec<u8>, u64);

    #[derive(Clone, Default)]
    struct Mem {
        state: std::sync::Arc<Mutex<Option<Kept>>>,
        before: std::sync::Arc<Mutex<Option<Hook>>>,
    }

    impl SealedStore for Mem {
        fn at(&self) -> String {
            "in memory".into()
        }
        fn load(&self) -> Result<Option<SealedState>, HsmError> {
            Ok(self.state.lock().unwrap().clone().map(|(b, v)| (Zeroizing::new(b), v)))
        }
        fn moved(&self, version: u64) -> Result<bool, HsmError> {
            Ok(self.state.lock().unwrap().as_ref().map(|s| s.1) != Some(version))
        }
        fn store(&self, sealed: &[u8], was: Option<u64>) -> Result<Option<u64>, HsmError> {
            let hook = self.before.lock().unwrap().take();
            if let Some(f) = hook {
                f();
            }
            let mut s = self.state.lock().unwrap();
            if s.as_ref().map(|s| s.1) != was {
                return Ok(None);
            }
            let v = was.unwrap_or(0) + 1;
            *s = Some((sealed.to_vec(), v));
            Ok(Some(v))
        }
    }

    /// A change whose write loses a race is decided again from what the
    /// winner stored: both changes are kept, neither is applied to a stale
    /// copy.
    #[test]
    fn a_change_that_loses_a_race_is_made_again_on_the_winners_state() {
        let mem = Mem::default();
        let b = std::sync::Arc::new(
            SoftHsm::create_in(Box::new(mem.clone()), &pass("a long test passphrase"), KdfParams::MINIMUM).unwrap(),
        );
        let a = SoftHsm::open_in(Box::new(mem.clone()), &pass("a long test passphrase")).unwrap();
        let first = a.registers().unwrap();
        let winner = b.clone();
        let loaded = std::sync::Arc::new(Mutex::new(None));
        let got = loaded.clone();
        *mem.before.lock().unwrap() =
            Some(Box::new(move || *got.lock().unwrap() = Some(winner.load_new(NewMasterKey::Generate, None).unwrap())));
        let anchor = AuditAnchor { seq: 7, head: [7; 32] };
        a.set_anchor(&anchor, false).unwrap();
        let new = loaded.lock().unwrap().expect("the other change ran first");
        let regs = b.registers().unwrap();
        assert_eq!(
            regs.iter().find(|r| r.register == Register::New).map(|r| r.mkvp),
            Some(new),
            "the winner's change stays"
        );
        assert_eq!(b.anchor().unwrap().map(|x| x.seq), Some(anchor.seq), "the loser's change was made on top");
        assert_eq!(a.registers().unwrap().len(), first.len() + 1, "the loser now holds what the store holds");
        assert_eq!(
            mem.state.lock().unwrap().as_ref().unwrap().1,
            3,
            "three writes: create, the winner, the loser again"
        );
    }

    /// The same file-backed suite on the in-memory store: the seam's
    /// contract, not the file's, is what the HSM relies on.
    #[test]
    fn conformance_suite_on_another_store() {
        let hsm =
            SoftHsm::create_in(Box::new(Mem::default()), &pass("a long test passphrase"), KdfParams::MINIMUM).unwrap();
        crate::conformance::run(&hsm);
        let held = Mem::default();
        *held.state.lock().unwrap() = Some((b"anything".to_vec(), 1));
        let e = SoftHsm::create_in(Box::new(held.clone()), &pass("another long one"), KdfParams::MINIMUM);
        assert!(matches!(e, Err(HsmError::AlreadyExists { .. })), "a store holding an HSM is never overwritten");
        assert_eq!(held.state.lock().unwrap().as_ref().unwrap().0, b"anything");
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
            Err(HsmError::Missing { .. })
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

/// The fuzz target's entry (`fuzz/`, and the corpus replay test): a sealed
/// state as a file could hold it. First byte even: the rest is the file,
/// checked and opened under a fixed key; odd: the rest is a body (the
/// second byte picks the version) that a holder of the passphrase sealed.
#[doc(hidden)]
pub fn fuzz_sealed_state(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let pk = PassphraseKey::from_bytes([0x3c; 32]);
    if mode % 2 == 0 {
        if header("fuzz", rest).is_ok() {
            let _ = decode("fuzz", &pk, Zeroizing::new(rest.to_vec()));
        }
        return;
    }
    let Some((&v, body)) = rest.split_first() else { return };
    let version = v % VERSION + 1;
    let mut out = Zeroizing::new(fuzz_header(version));
    let mut b = body.to_vec();
    b.resize(body_len(version), 0);
    out.extend_from_slice(&b);
    out.extend_from_slice(&[0u8; TAG_LEN]);
    let (h, body) = out.split_at_mut(HEADER_LEN);
    seal_with_passphrase_key(&pk, Nonce([9; 12]), h, body).expect("sealing never fails");
    assert!(header("fuzz", &out).is_ok(), "a well-formed file's header reads");
    let _ = decode("fuzz", &pk, out);
}

/// A valid header of `version` for the fuzz entry and its seeds.
#[doc(hidden)]
pub fn fuzz_header(version: u8) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.push(version);
    for v in [KdfParams::MINIMUM.memory_kib, KdfParams::MINIMUM.iterations, KdfParams::MINIMUM.parallelism] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&[7u8; 16]);
    out.extend_from_slice(&[9u8; 12]);
    out
}

/// Seeds for the fuzz target: a sealed file of each version under the
/// fixed key, with every register, anchor and catalog key filled.
#[doc(hidden)]
pub fn fuzz_seeds() -> Vec<(String, Vec<u8>)> {
    let pk = PassphraseKey::from_bytes([0x3c; 32]);
    let mut seeds = Vec::new();
    for version in 1..=VERSION {
        let mut body = Vec::new();
        for i in 0..3u8 {
            body.push(1);
            body.extend_from_slice(&[i + 1; 32]);
            body.extend_from_slice(&1_790_000_000i64.to_be_bytes());
        }
        body.resize(body_len(version), 1);
        let mut out = fuzz_header(version);
        out.extend_from_slice(&body);
        out.extend_from_slice(&[0u8; TAG_LEN]);
        let (h, b) = out.split_at_mut(HEADER_LEN);
        seal_with_passphrase_key(&pk, Nonce([9; 12]), h, b).expect("seal");
        let mut file = vec![0u8];
        file.extend_from_slice(&out);
        seeds.push((format!("file-v{version}"), file));
        let mut holder = vec![1u8, version - 1];
        holder.extend_from_slice(&body);
        seeds.push((format!("holder-v{version}"), holder));
    }
    seeds
}

#[cfg(test)]
mod fuzz_seed_tests {
    use super::*;

    /// The fuzz target's seeds are files that open, so the fuzzer starts
    /// from inputs that reach every field.
    #[test]
    fn seeds_open() {
        let pk = PassphraseKey::from_bytes([0x3c; 32]);
        for (name, bytes) in fuzz_seeds().into_iter().filter(|s| s.0.starts_with("file-")) {
            header("seed", &bytes[1..]).unwrap_or_else(|e| panic!("{name}: {e}"));
            decode("seed", &pk, Zeroizing::new(bytes[1..].to_vec())).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
