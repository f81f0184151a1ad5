//! The HSM seam.
//!
//! An [`Hsm`] holds master keys in three registers (NEW, CURRENT, OLD), each
//! named by its MKVP, and wraps and unwraps data keys inside itself: a master
//! key never crosses this trait. A data key leaves it only unwrapped for use
//! (as the access method needs it to seal and open chunks), as a zeroizing
//! [`DataKey`]. Implementations: [`SoftHsm`] (registers sealed in a file under
//! a passphrase, the embedded default) and, later, PKCS#11.
// cryptoki holds the FFI; the one exception is `kwp`, two calls cryptoki
// has no mechanism for (CKM_AES_KEY_WRAP_KWP).
#![deny(unsafe_code)]

pub mod files;
mod initargs;
mod kwp;
mod pkcs11;
mod soft;

use std::fmt;

use custos_crypto::{DataKey, Kcv, MasterKey, Mkvp};
use jiff::Timestamp;
use thiserror::Error;

pub use pkcs11::{Keep, Pkcs11Config, Pkcs11Hsm};
pub use soft::{FileStore, MemoryStore, SealedState, SealedStore, SoftHsm};

/// Entry points for the fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::files::{fuzz_custodian_file as custodian_file, fuzz_custodian_seeds as custodian_seeds};
    pub use crate::soft::{fuzz_sealed_state as sealed_state, fuzz_seeds as sealed_state_seeds};

    /// Run `f` on the seeds and on every file kept for `target` under the
    /// repository's `fuzz/corpus/`, writing the seeds there first when
    /// `CUSTOS_WRITE_FUZZ_SEEDS` is set; how many inputs ran.
    pub fn replay(target: &str, seeds: &[(String, Vec<u8>)], f: fn(&[u8])) -> usize {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
        if std::env::var_os("CUSTOS_WRITE_FUZZ_SEEDS").is_some() {
            std::fs::create_dir_all(&dir).expect("the corpus directory");
            for (name, bytes) in seeds {
                std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("a seed");
            }
        }
        let mut n = 0;
        for (_, bytes) in seeds {
            f(bytes);
            n += 1;
        }
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if let Ok(bytes) = std::fs::read(e.path()) {
                f(&bytes);
                n += 1;
            }
        }
        n
    }

    #[cfg(test)]
    mod tests {
        /// The corpus kept in the repository, and the seeds, run through
        /// both targets without a panic (the fuzzers' regression test, on
        /// stable); the seeds are real files that parse.
        #[test]
        fn the_kept_corpus_runs_clean() {
            let soft = super::sealed_state_seeds();
            assert!(super::replay("soft_hsm", &soft, super::sealed_state) >= soft.len());
            let files = super::custodian_seeds();
            for (name, bytes) in &files {
                let text = std::str::from_utf8(&bytes[1..]).unwrap();
                let ok = match bytes[0] {
                    0 => crate::files::KeyPartFile::decode(text, name).is_ok(),
                    1 => crate::files::ShareFile::decode(text, name).is_ok(),
                    2 => crate::files::SealedShareFile::decode(text, name).is_ok(),
                    _ => crate::files::CustodianIdentity::recipient_of(text, name).is_ok(),
                };
                assert!(ok, "{name}");
            }
            assert!(super::replay("custodian_file", &files, super::custodian_file) >= files.len());
        }
    }
}

/// The three master key registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Register {
    New,
    Current,
    Old,
}

impl fmt::Display for Register {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::New => "NEW",
            Self::Current => "CURRENT",
            Self::Old => "OLD",
        })
    }
}

/// What can be known about a loaded register without its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterInfo {
    pub register: Register,
    pub mkvp: Mkvp,
    /// When the key entered this register.
    pub since: Timestamp,
}

/// A data key wrapped under a master key (AES-256 KWP), with the MKVP of
/// that master key and the KCV of the data key.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub mkvp: Mkvp,
    pub kcv: Kcv,
    pub bytes: Vec<u8>,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedKey")
            .field("mkvp", &self.mkvp)
            .field("kcv", &self.kcv)
            .field("bytes", &format_args!("{} bytes", self.bytes.len()))
            .finish()
    }
}

/// Why an HSM operation failed. Every message names the HSM and says what to do.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HsmError {
    #[error("wrong passphrase for the software HSM ({at}), or its state was altered: try again, or restore it from a backup")]
    WrongPassphrase { at: String },
    #[error("the software HSM ({at}) is damaged ({why}): restore it from a backup")]
    Corrupt { at: String, why: &'static str },
    #[error("a software HSM already exists ({at}): choose another vault directory or remove the old vault")]
    AlreadyExists { at: String },
    #[error("cannot reach the software HSM ({at}): {source}; check that the vault directory is right (--vault or CUSTOS_VAULT)")]
    Io { at: String, source: std::io::Error },
    #[error("there is no software HSM ({at}): check that the vault directory is right (--vault or CUSTOS_VAULT); a lost one comes back with `custos vault rebuild` or `custos vault recover`")]
    Missing { at: String },
    #[error("cannot reach the software HSM ({at}): {why}")]
    Unreachable { at: String, why: String },
    #[error("the software HSM ({at}) kept changing under this command (other servers are changing it): nothing was changed; run the command again")]
    Busy { at: String },
    #[error("the HSM has no CURRENT master key: load and activate one first")]
    NoCurrentMasterKey,
    #[error("no master key register holds MKVP {mkvp} (registers hold: {held}): the key was wrapped under a master key this HSM no longer has; recover it from a keystore backup or escrow")]
    UnknownMkvp { mkvp: Mkvp, held: String },
    #[error("the wrapped key does not unwrap under the master key with MKVP {mkvp}: the keystore record was altered")]
    Unwrap { mkvp: Mkvp },
    #[error("the NEW master key register is already loaded (MKVP {mkvp}): activate it with `custos mk activate`, or clear it with `custos mk clear-new`")]
    NewLoaded { mkvp: Mkvp },
    #[error("the NEW master key register is empty: load a key with `custos mk load-new` first")]
    NoNewMasterKey,
    #[error("key part of custodian {custodian} does not match its check value (got {got}, recorded {want}): re-enter the part")]
    PartMismatch { custodian: String, got: Kcv, want: Kcv },
    #[error("a master key needs parts from at least two distinct custodians ({0})")]
    TooFewCustodians(String),
    #[error("the combined master key has MKVP {got}, not the expected {want}: a part is wrong; nothing was loaded")]
    MkvpMismatch { got: Mkvp, want: Mkvp },
    #[error("PKCS#11: {0}")]
    Pkcs11Config(String),
    #[error("the PKCS#11 token failed to {op}: {detail}")]
    Pkcs11 { op: &'static str, detail: String },
    #[error("cryptographic failure in the HSM: {0}")]
    Crypto(#[from] custos_crypto::CryptoError),
    #[error("the passphrase is shorter than {min} characters: choose a longer one; nothing was created")]
    WeakPassphrase { min: usize },
    #[error("the HSM holds no catalog key: open the vault with its passphrase (or PIN) once, which makes it")]
    NoCatalogKey,
}

/// One custodian's part of a master key. Parts are combined by XOR inside
/// the HSM; each is checked against the KCV its custodian recorded.
pub struct KeyPart {
    pub custodian: String,
    pub part: MasterKey,
    pub kcv: Kcv,
}

impl fmt::Debug for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPart").field("custodian", &self.custodian).field("kcv", &self.kcv).finish_non_exhaustive()
    }
}

/// Where a NEW master key comes from.
#[derive(Debug)]
pub enum NewMasterKey {
    /// Generated inside the HSM.
    Generate,
    /// Combined from the parts of at least two distinct custodians.
    Parts(Vec<KeyPart>),
}

/// The newest audit entry an HSM has seen committed: its sequence number
/// and chain hash. Kept where a rollback of the catalog cannot reach it
/// (inside the sealed file, or as a private token object), so that a
/// catalog older than it is noticed when the HSM is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditAnchor {
    pub seq: u64,
    pub head: [u8; 32],
}

impl AuditAnchor {
    const LEN: usize = 8 + 32;

    fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..].copy_from_slice(&self.head);
        out
    }

    fn decode(b: &[u8]) -> Option<Self> {
        (b.len() == Self::LEN).then(|| AuditAnchor {
            seq: u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
            head: b[8..].try_into().expect("32 bytes"),
        })
    }
}

/// Where an HSM's catalog key stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatalogKeyState {
    /// None made yet (a new HSM, or one from before catalog keys).
    None,
    /// Made, but the catalog's rows may not all be sealed under it yet (a
    /// process died while sealing them): whoever opens the HSM seals them.
    Made,
    /// Every row was sealed under it.
    Sealed,
}

/// The HSM seam. Implementations keep master keys inside; callers see MKVPs.
pub trait Hsm: Send + Sync {
    /// A short description for messages, such as "software HSM at /v/hsm.sealed".
    fn describe(&self) -> String;

    /// The loaded registers.
    fn registers(&self) -> Result<Vec<RegisterInfo>, HsmError>;

    /// Generate a new data key inside the HSM and return it wrapped under the
    /// CURRENT master key.
    fn generate_key(&self) -> Result<WrappedKey, HsmError>;

    /// Wrap a clear data key under the CURRENT master key (key import).
    fn wrap_key(&self, key: &DataKey) -> Result<WrappedKey, HsmError>;

    /// Unwrap a data key wrapped under the master key named by `mkvp`
    /// (CURRENT or OLD).
    fn unwrap_key(&self, mkvp: &Mkvp, wrapped: &[u8]) -> Result<DataKey, HsmError>;

    /// Re-wrap a data key from the register named by `mkvp` to CURRENT,
    /// without the clear key leaving the HSM.
    fn rewrap_key(&self, mkvp: &Mkvp, wrapped: &[u8]) -> Result<WrappedKey, HsmError>;

    /// Load the NEW register. Refused while NEW is loaded. With parts: each
    /// part must match its KCV, at least two distinct custodians must
    /// contribute, and, when `expect` is given, the combined key must have
    /// that MKVP. Returns the new key's MKVP.
    fn load_new(&self, new: NewMasterKey, expect: Option<Mkvp>) -> Result<Mkvp, HsmError>;

    /// Empty the NEW register.
    fn clear_new(&self) -> Result<(), HsmError>;

    /// NEW → CURRENT → OLD; the previous OLD is discarded. The caller checks
    /// first that nothing is still wrapped under the OLD key.
    fn activate(&self) -> Result<(), HsmError>;

    /// The audit anchor as stored now (another process may have moved it
    /// since this one opened the HSM); `None` before the first.
    fn anchor(&self) -> Result<Option<AuditAnchor>, HsmError>;

    /// Store `anchor` if it is further along than the one stored (processes
    /// sharing the HSM each move it forward; none moves it back), or
    /// whatever is stored when `force` (an administrator accepted an older
    /// catalog). Atomic: a crash leaves the old anchor or the new one.
    fn set_anchor(&self, anchor: &AuditAnchor, force: bool) -> Result<(), HsmError>;

    /// Where the catalog key stands (as stored now: another process may
    /// have moved it since this one opened the HSM).
    fn catalog_key_state(&self) -> Result<CatalogKeyState, HsmError>;

    /// Make the catalog key if the HSM holds none: an HMAC-SHA-256 key that
    /// authenticates the catalog's rows and never leaves the HSM (a
    /// non-extractable token key; in the software HSM, sealed in its file
    /// beside the master keys). It starts [`CatalogKeyState::Made`]; two
    /// processes asking at once get one key.
    fn make_catalog_key(&self) -> Result<(), HsmError>;

    /// Record that every catalog row carries a MAC under the catalog key
    /// ([`CatalogKeyState::Sealed`]): from then on a row without one is a
    /// forgery, never a row still to be sealed.
    fn catalog_key_sealed(&self) -> Result<(), HsmError>;

    /// HMAC-SHA-256 of `msg` under the catalog key ([`HsmError::NoCatalogKey`]
    /// before one is made).
    fn catalog_mac(&self, msg: &[u8]) -> Result<[u8; 32], HsmError>;

    /// Start a catalog key rotation: make the NEXT catalog key beside the
    /// current one, unless one is pending already (a rotation that was
    /// interrupted goes on with the key it made). [`HsmError::NoCatalogKey`]
    /// before a catalog key exists.
    fn begin_catalog_rotation(&self) -> Result<(), HsmError>;

    /// Whether a NEXT catalog key is pending (as stored now).
    fn catalog_rotation_pending(&self) -> Result<bool, HsmError>;

    /// HMAC-SHA-256 of `msg` under the pending NEXT catalog key, or `None`
    /// while no rotation is pending.
    fn catalog_mac_next(&self, msg: &[u8]) -> Result<Option<[u8; 32]>, HsmError>;

    /// End a rotation: the NEXT key becomes the catalog key and the old one
    /// is destroyed. Atomic, or (on a token) finished by whoever looks for
    /// the key next; nothing to do when no rotation is pending. The caller
    /// re-seals every row under the NEXT key first.
    fn finish_catalog_rotation(&self) -> Result<(), HsmError>;

    /// Forget what this process holds of the catalog keys and read them
    /// again (another process may have rotated them since).
    fn refresh_catalog_keys(&self) -> Result<(), HsmError>;
}

/// Combine key parts: verify each against its KCV, require two distinct
/// custodians, XOR. For HSM implementations that combine in software.
pub fn combine_parts(parts: &[KeyPart]) -> Result<MasterKey, HsmError> {
    let mut custodians: Vec<&str> = parts.iter().map(|p| p.custodian.as_str()).collect();
    custodians.sort();
    custodians.dedup();
    if custodians.len() < 2 {
        return Err(HsmError::TooFewCustodians(if custodians.is_empty() {
            "none given".into()
        } else {
            format!("only {}", custodians.join(", "))
        }));
    }
    let mut acc = zeroize::Zeroizing::new([0u8; 32]);
    for p in parts {
        let got = Kcv::of_master(&p.part);
        if got != p.kcv {
            return Err(HsmError::PartMismatch { custodian: p.custodian.clone(), got, want: p.kcv });
        }
        for (a, b) in acc.iter_mut().zip(p.part.expose_secret()) {
            *a ^= b;
        }
    }
    Ok(MasterKey::from_bytes(*acc))
}

/// Conformance checks every [`Hsm`] implementation must pass. Each backend's
/// test suite calls [`conformance::run`] on a fresh instance.
pub mod conformance {
    use super::*;

    /// Panics with a description of the first rule the HSM breaks.
    pub fn run(hsm: &dyn Hsm) {
        let regs = hsm.registers().expect("registers");
        let current =
            regs.iter().find(|r| r.register == Register::Current).expect("a fresh HSM has a CURRENT master key");

        // Generated keys are wrapped under CURRENT and unwrap to a key whose
        // KCV matches.
        let w = hsm.generate_key().expect("generate");
        assert_eq!(w.mkvp, current.mkvp, "generated keys are wrapped under CURRENT");
        let k = hsm.unwrap_key(&w.mkvp, &w.bytes).expect("unwrap");
        assert_eq!(Kcv::of(&k), w.kcv, "KCV names the unwrapped key");
        let w2 = hsm.generate_key().expect("generate");
        assert_ne!(w2.kcv, w.kcv, "two generated keys differ");

        // Import: wrap a known key and get it back.
        let clear = DataKey::from_bytes([0x5A; 32]);
        let wi = hsm.wrap_key(&clear).expect("wrap");
        assert_eq!(wi.kcv, Kcv::of(&clear));
        assert_eq!(hsm.unwrap_key(&wi.mkvp, &wi.bytes).expect("unwrap"), clear);
        assert!(!wi.bytes.windows(32).any(|win| win == clear.expose_secret()), "wrapped bytes hide the key");

        // Rewrap under CURRENT keeps the key.
        let rw = hsm.rewrap_key(&w.mkvp, &w.bytes).expect("rewrap");
        assert_eq!(rw.kcv, w.kcv);
        assert_eq!(Kcv::of(&hsm.unwrap_key(&rw.mkvp, &rw.bytes).unwrap()), w.kcv);

        // Tampered wrapped bytes and unknown MKVPs are refused, by name.
        let mut bad = w.bytes.clone();
        bad[3] ^= 0x80;
        assert!(matches!(hsm.unwrap_key(&w.mkvp, &bad), Err(HsmError::Unwrap { .. })));
        let unknown = Mkvp([0xEE; 8]);
        match hsm.unwrap_key(&unknown, &w.bytes) {
            Err(e @ HsmError::UnknownMkvp { .. }) => assert!(e.to_string().contains("EEEEEEEEEEEEEEEE")),
            other => panic!("unknown MKVP must be refused by name, got {other:?}"),
        }

        // Master key change: NEW from parts, activation moves the registers,
        // keys wrapped under the old CURRENT keep unwrapping (now OLD).
        let p1 = MasterKey::from_bytes([0x11; 32]);
        let p2 = MasterKey::from_bytes([0x22; 32]);
        let part = |c: &str, k: &MasterKey| KeyPart {
            custodian: c.into(),
            part: MasterKey::from_bytes(*k.expose_secret()),
            kcv: Kcv::of_master(k),
        };
        let combined = Mkvp::of(&MasterKey::from_bytes([0x33; 32]));
        assert!(matches!(
            hsm.load_new(NewMasterKey::Parts(vec![part("alice", &p1), part("alice", &p2)]), None),
            Err(HsmError::TooFewCustodians(_))
        ));
        let mut bad = part("bob", &p2);
        bad.kcv = Kcv([0; 5]);
        assert!(matches!(
            hsm.load_new(NewMasterKey::Parts(vec![part("alice", &p1), bad]), None),
            Err(HsmError::PartMismatch { .. })
        ));
        assert!(matches!(
            hsm.load_new(NewMasterKey::Parts(vec![part("alice", &p1), part("bob", &p2)]), Some(Mkvp([0; 8]))),
            Err(HsmError::MkvpMismatch { .. })
        ));
        assert!(matches!(hsm.activate(), Err(HsmError::NoNewMasterKey)), "nothing loaded by the refusals");
        let got =
            hsm.load_new(NewMasterKey::Parts(vec![part("alice", &p1), part("bob", &p2)]), Some(combined)).unwrap();
        assert_eq!(got, combined, "parts combine by XOR");
        assert!(matches!(hsm.load_new(NewMasterKey::Generate, None), Err(HsmError::NewLoaded { .. })));
        hsm.activate().expect("activate");
        let regs = hsm.registers().unwrap();
        let mkvp_of = |r: Register| regs.iter().find(|x| x.register == r).map(|x| x.mkvp);
        assert_eq!(mkvp_of(Register::Current), Some(combined));
        assert_eq!(mkvp_of(Register::Old), Some(current.mkvp));
        assert_eq!(mkvp_of(Register::New), None);
        assert_eq!(Kcv::of(&hsm.unwrap_key(&w.mkvp, &w.bytes).unwrap()), w.kcv, "OLD still unwraps");
        let moved = hsm.rewrap_key(&w.mkvp, &w.bytes).unwrap();
        assert_eq!(moved.mkvp, combined);
        // A second change discards the first master key.
        let gen = hsm.load_new(NewMasterKey::Generate, None).unwrap();
        hsm.activate().unwrap();
        assert!(matches!(hsm.unwrap_key(&w.mkvp, &w.bytes), Err(HsmError::UnknownMkvp { .. })));
        assert_eq!(Kcv::of(&hsm.unwrap_key(&moved.mkvp, &moved.bytes).unwrap()), w.kcv);
        assert_eq!(hsm.generate_key().unwrap().mkvp, gen);
        hsm.load_new(NewMasterKey::Generate, None).unwrap();
        hsm.clear_new().unwrap();
        assert!(matches!(hsm.activate(), Err(HsmError::NoNewMasterKey)));

        // The audit anchor moves forward only, unless forced, and survives
        // register changes.
        let a = |seq: u64, b: u8| AuditAnchor { seq, head: [b; 32] };
        let start = hsm.anchor().expect("anchor");
        let base = start.map_or(0, |x| x.seq);
        hsm.set_anchor(&a(base + 10, 1), false).unwrap();
        assert_eq!(hsm.anchor().unwrap(), Some(a(base + 10, 1)));
        hsm.set_anchor(&a(base + 9, 2), false).unwrap();
        assert_eq!(hsm.anchor().unwrap(), Some(a(base + 10, 1)), "an older anchor does not replace a newer one");
        hsm.load_new(NewMasterKey::Generate, None).unwrap();
        hsm.activate().unwrap();
        assert_eq!(hsm.anchor().unwrap(), Some(a(base + 10, 1)), "kept across a master key change");
        hsm.set_anchor(&a(base + 3, 3), true).unwrap();
        assert_eq!(hsm.anchor().unwrap(), Some(a(base + 3, 3)), "forced back");
        hsm.set_anchor(&a(base + 4, 4), false).unwrap();
        assert_eq!(hsm.anchor().unwrap(), Some(a(base + 4, 4)));

        // The catalog key: made once, kept across master key changes, and
        // a MAC that depends on every byte of the message.
        let had = hsm.catalog_key_state().expect("catalog_key_state");
        if had == CatalogKeyState::None {
            assert!(matches!(hsm.catalog_mac(b"row"), Err(HsmError::NoCatalogKey)));
        }
        hsm.make_catalog_key().expect("make");
        assert_ne!(hsm.catalog_key_state().unwrap(), CatalogKeyState::None);
        let m0 = hsm.catalog_mac(b"keys\0label=A").unwrap();
        hsm.make_catalog_key().expect("a second call keeps the first key");
        assert_eq!(hsm.catalog_mac(b"keys\0label=A").unwrap(), m0, "one key");
        hsm.catalog_key_sealed().unwrap();
        assert_eq!(hsm.catalog_key_state().unwrap(), CatalogKeyState::Sealed);
        hsm.make_catalog_key().unwrap();
        assert_eq!(hsm.catalog_key_state().unwrap(), CatalogKeyState::Sealed, "making again unseals nothing");
        let m1 = hsm.catalog_mac(b"keys\0label=A").unwrap();
        assert_eq!(hsm.catalog_mac(b"keys\0label=A").unwrap(), m1, "deterministic");
        assert_ne!(hsm.catalog_mac(b"keys\0label=B").unwrap(), m1);
        hsm.load_new(NewMasterKey::Generate, None).unwrap();
        hsm.activate().unwrap();
        assert_eq!(hsm.catalog_mac(b"keys\0label=A").unwrap(), m1, "kept across a master key change");

        // Rotation: a NEXT key beside the current one until finished.
        let msg = b"keys\0label=A";
        assert!(!hsm.catalog_rotation_pending().unwrap());
        assert_eq!(hsm.catalog_mac_next(msg).unwrap(), None, "nothing pending");
        hsm.finish_catalog_rotation().expect("finishing with nothing pending does nothing");
        assert_eq!(hsm.catalog_mac(msg).unwrap(), m1);
        hsm.begin_catalog_rotation().expect("begin");
        assert!(hsm.catalog_rotation_pending().unwrap());
        let n1 = hsm.catalog_mac_next(msg).unwrap().expect("a NEXT key");
        assert_ne!(n1, m1, "a new key");
        assert_eq!(hsm.catalog_mac(msg).unwrap(), m1, "the catalog key stays until the rotation ends");
        hsm.begin_catalog_rotation().expect("begin again");
        assert_eq!(hsm.catalog_mac_next(msg).unwrap(), Some(n1), "an interrupted rotation goes on with its key");
        hsm.refresh_catalog_keys().unwrap();
        assert_eq!((hsm.catalog_mac(msg).unwrap(), hsm.catalog_mac_next(msg).unwrap()), (m1, Some(n1)));
        hsm.finish_catalog_rotation().expect("finish");
        assert!(!hsm.catalog_rotation_pending().unwrap());
        assert_eq!(hsm.catalog_mac(msg).unwrap(), n1, "the NEXT key is the catalog key");
        assert_eq!(hsm.catalog_mac_next(msg).unwrap(), None);
        hsm.refresh_catalog_keys().unwrap();
        assert_eq!(hsm.catalog_mac(msg).unwrap(), n1, "and stays so when read again");
        assert_eq!(hsm.catalog_key_state().unwrap(), CatalogKeyState::Sealed, "a rotation keeps the catalog sealed");

        // Nothing the HSM prints shows key material.
        let shown = format!("{w:?} {regs:?} {}", hsm.describe());
        assert!(!shown.contains(&custos_crypto_hex(&w.bytes)), "Debug must not print wrapped bytes");
    }

    fn custos_crypto_hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
