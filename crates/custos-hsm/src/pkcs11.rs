//! An HSM behind PKCS#11 (tested against SoftHSM2).
//!
//! * Master keys are token AES-256 keys: sensitive, not extractable, label
//!   `custos-mk`, `CKA_ID` = their MKVP. They never leave the token.
//! * Which master key sits in which register is one token data object
//!   (label `custos-registers`), so activation is a single object update.
//! * Data keys are generated, wrapped and unwrapped inside the token with
//!   RFC 5649 key wrap, byte-compatible with the software HSM: through
//!   `CKM_AES_KEY_WRAP_KWP` (0x210B) where the token offers it, else
//!   `CKM_AES_KEY_WRAP_PAD` (0x210A) where its output is RFC 5649 (not so
//!   on every token: NSS's is RFC 3394 with PKCS#7 padding). Which one is
//!   decided when the token is opened, by a known-answer test with
//!   throwaway session keys, before anything is made on it; a token with
//!   neither is refused. MKVPs and KCVs are `CKM_AES_CMAC` on the token.
//! * The only data key leaving the token in clear is the one `unwrap_key`
//!   returns for use (ADR 0004).
//! * The catalog key is a token generic secret key (label
//!   `custos-catalog-key`, sensitive, not extractable): catalog rows are
//!   MACed with `CKM_SHA256_HMAC` inside the token (ADR 0019). A rotation
//!   makes a second such key labelled `custos-catalog-key-next`; finishing
//!   it destroys the old key and relabels the next one, and a finish cut
//!   short between the two is completed by whoever looks for the key.

use std::path::PathBuf;
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use custos_crypto::check::MKVP_BLOCK;
use custos_crypto::{DataKey, Kcv, Mkvp, KCV_LEN};
use jiff::Timestamp;

use crate::{
    combine_parts, AuditAnchor, CatalogKeyState, Hsm, HsmError, NewMasterKey, Register, RegisterInfo, WrappedKey,
};

const MK_LABEL: &[u8] = b"custos-mk";
const REGS_LABEL: &[u8] = b"custos-registers";
/// The label of the data object that holds the audit anchor.
const ANCHOR_LABEL: &[u8] = b"custos-audit-anchor";
/// The label of the catalog key: a generic secret (HMAC) key on the token.
const CATALOG_LABEL: &[u8] = b"custos-catalog-key";
/// The label of the NEXT catalog key while a rotation is under way.
const NEXT_LABEL: &[u8] = b"custos-catalog-key-next";
/// A data object present once every catalog row was sealed under that key.
const SEALED_LABEL: &[u8] = b"custos-catalog-sealed";
/// The HMAC key that authenticates the records kept beside a token that
/// stores no data objects (see [`Keep::Beside`]).
const RECORDS_KEY_LABEL: &[u8] = b"custos-records-key";

/// Where the token's records (registers, audit anchor, the catalog's
/// sealed mark) are kept.
pub enum Keep {
    /// As private data objects on the token.
    OnToken,
    /// In `store` (the vault's catalog), as one text authenticated by an
    /// HMAC computed inside the token under its own key: for tokens that
    /// refuse data objects (NSS's softoken). The records are then only as
    /// fresh as the store: a store rolled back with its MAC is not noticed
    /// (the audit anchor there cannot catch a rollback of the catalog).
    Beside(Box<dyn crate::SealedStore>),
    /// On the token where it accepts a data object (tried with a throwaway
    /// one), else beside in `store`: what `init` asks for.
    OnTokenElseBeside(Box<dyn crate::SealedStore>),
}

/// Where the records are, once decided.
enum Records {
    Token,
    Beside {
        store: Box<dyn crate::SealedStore>,
        key: ObjectHandle,
        /// The records as last read or written, checked, at the store's
        /// version: reused while the store says it has not moved (every
        /// unwrap reads the registers).
        cache: Mutex<Option<(u64, Vec<Entry>)>>,
    },
}

/// One record: a token data object, or an entry of the records beside.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Rec {
    Object(ObjectHandle),
    Entry(u64),
}

/// The records beside the token: `custos-pkcs11-records v1`, one line per
/// record (`ID LABEL HEX-VALUE`), then `mac HEX`, the HMAC-SHA-256 inside
/// the token of everything before that line.
const RECORDS_HEADER: &str = "custos-pkcs11-records v1\n";

#[derive(Clone)]
struct Entry {
    id: u64,
    label: Vec<u8>,
    value: Vec<u8>,
}

/// Where the token is and how to log in.
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (for SoftHSM2: /usr/lib/softhsm/libsofthsm2.so).
    pub module: PathBuf,
    /// Label of the token to use.
    pub token: String,
    /// The user PIN.
    pub pin: zeroize::Zeroizing<String>,
    /// The module's own initialisation string, passed to `C_Initialize`
    /// as `pReserved` (NSS's softoken: `configdir='sql:/path' …`); most
    /// modules take none.
    pub init_args: Option<String>,
}

impl std::fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token", &self.token)
            .field("init_args", &self.init_args)
            .finish_non_exhaustive()
    }
}

pub struct Pkcs11Hsm {
    token: String,
    /// How data keys are wrapped (decided at open).
    wrap: Wrap,
    // Dropped before the context: declared first.
    session: Mutex<Session>,
    /// The catalog key's handle, once found (rows are MACed often).
    catalog: Mutex<Option<ObjectHandle>>,
    /// The NEXT catalog key's handle while a rotation is pending.
    next: Mutex<Option<ObjectHandle>>,
    /// Where the registers, anchor and sealed mark are kept.
    records: Records,
    _ctx: Pkcs11,
}

/// The token's RFC 5649 key wrap.
enum Wrap {
    /// `CKM_AES_KEY_WRAP_PAD`, through cryptoki.
    Pad,
    /// `CKM_AES_KEY_WRAP_KWP`, through the module's own functions.
    Kwp(Box<crate::kwp::Kwp>),
}

impl Wrap {
    fn name(&self) -> &'static str {
        match self {
            Wrap::Pad => "CKM_AES_KEY_WRAP_PAD",
            Wrap::Kwp(_) => "CKM_AES_KEY_WRAP_KWP",
        }
    }

    /// Decide, by a known-answer test on throwaway session keys, which
    /// mechanism gives RFC 5649 on this token: KWP where offered, else PAD.
    fn choose(s: &Session, module: &std::path::Path, slot: u64, token: &str) -> Result<Wrap, HsmError> {
        let (kek, key) = ([0x5c_u8; 32], [0xa3_u8; 32]);
        let want = custos_crypto::wrap_key(
            &custos_crypto::MasterKey::from_bytes(kek),
            &custos_crypto::DataKey::from_bytes(key),
        )
        .map_err(HsmError::Crypto)?;
        let secret = |value: &[u8], wrap: bool| {
            let mut t = vec![
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
                Attribute::Value(value.to_vec()),
            ];
            t.extend(if wrap {
                [Attribute::Wrap(true), Attribute::Unwrap(true)]
            } else {
                [Attribute::Extractable(true), Attribute::Sensitive(true)]
            });
            t
        };
        let k = s.create_object(&secret(&kek, true)).map_err(p11("make a known-answer wrapping key"))?;
        let d = match s.create_object(&secret(&key, false)) {
            Ok(d) => d,
            Err(e) => {
                let _ = s.destroy_object(k);
                return Err(p11("make a known-answer key")(e));
            }
        };
        let mut tried = Vec::new();
        let mut chosen = None;
        match crate::kwp::Kwp::load(module) {
            Ok(kwp) if kwp.offered(slot) => match kwp.wrap(s, k, d) {
                Ok(w) if w == want => chosen = Some(Wrap::Kwp(Box::new(kwp))),
                Ok(_) => tried.push("CKM_AES_KEY_WRAP_KWP gives other bytes than RFC 5649".to_string()),
                Err(e) => tried.push(format!("CKM_AES_KEY_WRAP_KWP failed: {e}")),
            },
            Ok(_) => tried.push("CKM_AES_KEY_WRAP_KWP is not offered".into()),
            Err(e) => tried.push(format!("CKM_AES_KEY_WRAP_KWP cannot be called: {e}")),
        }
        if chosen.is_none() {
            match s.wrap_key(&Mechanism::AesKeyWrapPad, k, d) {
                Ok(w) if w == want => chosen = Some(Wrap::Pad),
                Ok(_) => tried.push("CKM_AES_KEY_WRAP_PAD gives other bytes than RFC 5649".into()),
                Err(e) => tried.push(format!("CKM_AES_KEY_WRAP_PAD failed: {e}")),
            }
        }
        let _ = s.destroy_object(d);
        let _ = s.destroy_object(k);
        chosen.ok_or_else(|| {
            HsmError::Pkcs11Config(format!(
                "token {token:?} offers no RFC 5649 key wrap ({}); Custos needs CKM_AES_KEY_WRAP_KWP, or a CKM_AES_KEY_WRAP_PAD that gives RFC 5649, to keep keys readable by any HSM",
                tried.join("; ")
            ))
        })
    }
}

#[derive(Clone, Copy)]
struct Reg {
    mkvp: Mkvp,
    since: Timestamp,
}

#[derive(Clone, Copy, Default)]
struct Regs {
    /// Bumped on every change; the highest wins if an update was interrupted.
    seq: u64,
    new: Option<Reg>,
    current: Option<Reg>,
    old: Option<Reg>,
}

fn p11(op: &'static str) -> impl Fn(cryptoki::error::Error) -> HsmError {
    move |e| HsmError::Pkcs11 { op, detail: e.to_string() }
}

impl Regs {
    fn encode(&self) -> Vec<u8> {
        let mut s = format!("custos-registers v1 {}\n", self.seq);
        for (name, r) in [("NEW", self.new), ("CURRENT", self.current), ("OLD", self.old)] {
            if let Some(r) = r {
                s.push_str(&format!("{name} {} {}\n", r.mkvp.to_hex(), r.since.as_second()));
            }
        }
        s.into_bytes()
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(b).ok()?;
        let mut lines = s.lines();
        let seq = lines.next()?.strip_prefix("custos-registers v1 ")?.parse().ok()?;
        let mut regs = Regs { seq, ..Regs::default() };
        for l in lines {
            let mut f = l.split(' ');
            let (name, mkvp, since) = (f.next()?, f.next()?, f.next()?);
            let r = Reg { mkvp: Mkvp::from_hex(mkvp).ok()?, since: Timestamp::from_second(since.parse().ok()?).ok()? };
            match name {
                "NEW" => regs.new = Some(r),
                "CURRENT" => regs.current = Some(r),
                "OLD" => regs.old = Some(r),
                _ => return None,
            }
        }
        Some(regs)
    }

    fn held(&self) -> String {
        let l: Vec<String> = [("NEW", self.new), ("CURRENT", self.current), ("OLD", self.old)]
            .into_iter()
            .filter_map(|(n, r)| r.map(|r| format!("{n}={}", r.mkvp)))
            .collect();
        if l.is_empty() {
            "none".into()
        } else {
            l.join(", ")
        }
    }
}

/// A private token data object of Custos's, labelled `label`.
fn data_object_template(label: &[u8], value: Vec<u8>) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Label(label.to_vec()),
        Attribute::Application(b"custos".to_vec()),
        Attribute::Value(value),
    ]
}

fn master_key_template(extra: &[Attribute]) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Sign(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Label(MK_LABEL.to_vec()),
    ];
    t.extend_from_slice(extra);
    t
}

/// A session key that can be wrapped, and CMAC'ed for its KCV.
fn data_key_template(extra: &[Attribute]) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Extractable(true),
        Attribute::Sign(true),
    ];
    t.extend_from_slice(extra);
    t
}

impl Pkcs11Hsm {
    /// Open the token a vault already uses. A token without Custos master
    /// keys is refused: it is not the vault's (a wrong label, or a token
    /// initialised again), and a new master key there would read nothing.
    pub fn open(cfg: &Pkcs11Config, keep: Keep) -> Result<Self, HsmError> {
        let mut hsm = Self::connect(cfg)?;
        hsm.keep(keep, false)?;
        if hsm.read_regs(&hsm.session())?.is_none() {
            return Err(HsmError::Pkcs11Config(format!(
                "token {:?} holds no Custos master keys, so it is not this vault's token (a wrong label, or a token initialised again): give the vault's token, or recover the vault from a vault backup onto a new one",
                cfg.token
            )));
        }
        Ok(hsm)
    }

    /// Start using a token for a new vault: generate its first CURRENT
    /// master key. A token that holds Custos master keys already (another
    /// vault's) is refused, unless `adopt`: then this vault takes those
    /// master keys over (so that keystore backups wrapped under them can be
    /// read again) and the previous vault's audit anchor and catalog key,
    /// which only its lost catalog could use, are destroyed. Returns
    /// whether the token was new to Custos (see [`Self::discard`]).
    pub fn create(cfg: &Pkcs11Config, adopt: bool, keep: Keep) -> Result<(Self, bool), HsmError> {
        let mut hsm = Self::connect(cfg)?;
        let made_key = hsm.keep(keep, true)?;
        // A refusal leaves the token as it found it.
        let refuse = |hsm: &Self, s: &Session, e: HsmError| {
            if let (true, Records::Beside { key, .. }) = (made_key, &hsm.records) {
                let _ = s.destroy_object(*key);
            }
            Err(e)
        };
        let fresh = {
            let s = hsm.session();
            // Master keys without registers the token shows: another vault's
            // whose records were kept in its catalog, or what a crashed init
            // made. Refused as a token in use; adopted, they are left alone
            // (never discarded) and this vault makes its own.
            let orphans = s
                .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Label(MK_LABEL.to_vec())])
                .map_err(p11("list master keys"))?
                .len();
            match (hsm.read_regs(&s)?, adopt) {
                (None, false) if orphans > 0 => {
                    return refuse(&hsm, &s, HsmError::Pkcs11Config(format!(
                        "token {:?} already holds {orphans} Custos master key(s) whose registers it does not show (another vault's, whose records were in its catalog, or an interrupted init's): nothing was created. Give this vault a token of its own, or recover that vault onto it (`custos vault recover --pkcs11`); only if that vault is gone for good, pass --pkcs11-adopt",
                        cfg.token
                    )));
                }
                (None, _) => {
                    let h = s
                        .generate_key(&Mechanism::AesKeyGen, &master_key_template(&[Attribute::ValueLen(32.into())]))
                        .map_err(p11("generate a master key"))?;
                    let regs = hsm.name_master_key(&s, h).and_then(|mkvp| {
                        hsm.write_regs(
                            &s,
                            &Regs { current: Some(Reg { mkvp, since: Timestamp::now() }), ..Default::default() },
                        )
                    });
                    // Another init on this token at the same moment made one
                    // too (neither saw the other's registers): both stop.
                    let raced = || -> Result<(), HsmError> {
                        let now = s
                            .find_objects(&[
                                Attribute::Class(ObjectClass::SECRET_KEY),
                                Attribute::Label(MK_LABEL.to_vec()),
                            ])
                            .map_err(p11("list master keys"))?
                            .len();
                        if now > orphans + 1 {
                            return Err(HsmError::Pkcs11Config(format!(
                                "another init on token {:?} made a master key at the same moment: nothing was created here; run init for one vault only",
                                cfg.token
                            )));
                        }
                        Ok(())
                    };
                    let regs = regs.and_then(|_| raced());
                    if let Err(e) = regs {
                        // Nothing half-made stays on the token.
                        let _ = s.destroy_object(h);
                        hsm.drop_labelled(&s, &[REGS_LABEL]);
                        return refuse(&hsm, &s, match e {
                            HsmError::Pkcs11 { op: "write the registers", detail } => HsmError::Pkcs11Config(format!(
                                "token {:?} refuses the data objects (CKO_DATA) in which Custos keeps its master-key registers and audit anchor ({detail}); nothing was left on it. Keep them beside the token (`custos init` does, in the catalog)",
                                cfg.token
                            )),
                            e => e,
                        });
                    }
                    orphans == 0
                }
                (Some(regs), false) => {
                    return refuse(&hsm, &s, HsmError::Pkcs11Config(format!(
                        "token {:?} already holds Custos master keys ({}), another vault's: nothing was created. Give this vault a token of its own, or recover that vault onto it (`custos vault recover --pkcs11`); only if that vault is gone for good, pass --pkcs11-adopt to take its master keys over",
                        cfg.token,
                        regs.held()
                    )));
                }
                (Some(_), true) => {
                    hsm.drop_labelled(&s, &[ANCHOR_LABEL, SEALED_LABEL]);
                    hsm.destroy_labelled(&s, &[CATALOG_LABEL, NEXT_LABEL], ObjectClass::SECRET_KEY);
                    false
                }
            }
        };
        Ok((hsm, fresh))
    }

    /// Destroy everything Custos keeps on the token: master keys,
    /// registers, audit anchor, catalog keys. For a vault whose `init`
    /// failed on a token that was new to it (`create` said so), so that
    /// the next `init` finds the token as it was. Best effort.
    pub fn discard(&self) {
        let s = self.session();
        self.drop_labelled(&s, &[REGS_LABEL, ANCHOR_LABEL, SEALED_LABEL]);
        self.destroy_labelled(&s, &[MK_LABEL, CATALOG_LABEL, NEXT_LABEL, RECORDS_KEY_LABEL], ObjectClass::SECRET_KEY);
    }

    /// Open a lost vault's token to read its vault backup. Where the token
    /// keeps its records, as [`Self::open`]. Where they were kept in the
    /// (lost) catalog, the backup's header says which master key was in
    /// which register (`registers`: "CURRENT <MKVP>" …): held in memory,
    /// enough to unwrap the backup's key; reopen the token with the
    /// recovered catalog's records afterwards. Says which it was (`true`:
    /// beside).
    pub fn open_for_recovery(cfg: &Pkcs11Config, registers: &[String]) -> Result<(Self, bool), HsmError> {
        let mut hsm = Self::connect(cfg)?;
        if hsm.read_regs(&hsm.session())?.is_some() {
            return Ok((hsm, false));
        }
        if hsm.lowest(&hsm.session(), RECORDS_KEY_LABEL)?.is_none() {
            return Err(HsmError::Pkcs11Config(format!(
                "token {:?} holds no Custos master keys, so it is not the lost vault's token: give that one",
                cfg.token
            )));
        }
        hsm.keep(Keep::Beside(Box::new(crate::MemoryStore::default())), false)?;
        let mut regs = Regs::default();
        let since = Timestamp::now();
        for r in registers {
            let bad = || HsmError::Pkcs11Config(format!("the backup's header names a register as {r:?}"));
            let (name, mkvp) = r.split_once(' ').ok_or_else(bad)?;
            let reg = Some(Reg { mkvp: Mkvp::from_hex(&mkvp.to_lowercase()).map_err(|_| bad())?, since });
            match name {
                "CURRENT" => regs.current = reg,
                "OLD" => regs.old = reg,
                "NEW" => regs.new = reg,
                _ => return Err(bad()),
            }
        }
        let s = hsm.session();
        hsm.write_regs(&s, &regs)?;
        drop(s);
        Ok((hsm, true))
    }

    /// Whether the records are kept beside the token (in the store given).
    pub fn records_beside(&self) -> bool {
        matches!(self.records, Records::Beside { .. })
    }

    /// Move the records kept beside into `to` (which must hold none yet),
    /// and keep them there from now on: for `init`, which sets the token
    /// up before the catalog they belong in exists.
    pub fn move_records(&mut self, to: Box<dyn crate::SealedStore>) -> Result<(), HsmError> {
        let Records::Beside { store, key, .. } = &self.records else { return Ok(()) };
        if let Some((bytes, _)) = store.load()? {
            if to.store(&bytes, None)?.is_none() {
                return Err(HsmError::Pkcs11Config(format!(
                    "the token's records cannot go {}: something is there already",
                    to.at()
                )));
            }
        }
        let key = *key;
        self.records = Records::Beside { store: to, key, cache: Mutex::new(None) };
        Ok(())
    }

    /// Decide where the records are (`new`: the token is being set up, so
    /// the records key may be made). Says whether it made that key.
    fn keep(&mut self, keep: Keep, new: bool) -> Result<bool, HsmError> {
        let store = match keep {
            Keep::OnToken => return Ok(false),
            Keep::Beside(store) => store,
            Keep::OnTokenElseBeside(store) => {
                use cryptoki::error::{Error as P11, RvError as Rv};
                let s = self.session();
                match s.create_object(&data_object_template(b"custos-probe", b"probe".to_vec())) {
                    Ok(h) => {
                        let _ = s.destroy_object(h);
                        return Ok(false);
                    }
                    // The token does not keep such objects (NSS: a private
                    // data object's attributes are refused); anything else
                    // is a failure to report, not a reason to keep them elsewhere.
                    Err(P11::Pkcs11(
                        Rv::AttributeValueInvalid
                        | Rv::AttributeTypeInvalid
                        | Rv::AttributeReadOnly
                        | Rv::TemplateInconsistent
                        | Rv::TemplateIncomplete
                        | Rv::FunctionNotSupported,
                        _,
                    )) => store,
                    Err(e) => return Err(p11("store a data object")(e)),
                }
            }
        };
        let (key, made) = {
            let s = self.session();
            match self.lowest(&s, RECORDS_KEY_LABEL)? {
                Some(k) => (k, false),
                None if new => (self.generate_hmac_key(&s, RECORDS_KEY_LABEL, "make the records key")?, true),
                None => {
                    return Err(HsmError::Pkcs11Config(format!(
                        "token {:?} has no key for the records kept {}: it is not this vault's token",
                        self.token,
                        store.at()
                    )))
                }
            }
        };
        self.records = Records::Beside { store, key, cache: Mutex::new(None) };
        Ok(made)
    }

    /// The records labelled `label`, with their values.
    fn records(&self, s: &Session, label: &[u8], op: &'static str) -> Result<Vec<(Rec, Vec<u8>)>, HsmError> {
        match &self.records {
            Records::Token => {
                let found = s
                    .find_objects(&[Attribute::Class(ObjectClass::DATA), Attribute::Label(label.to_vec())])
                    .map_err(p11(op))?;
                let mut out = Vec::with_capacity(found.len());
                for h in found {
                    let attrs = s.get_attributes(h, &[AttributeType::Value]).map_err(p11(op))?;
                    let value = attrs.into_iter().find_map(|a| match a {
                        Attribute::Value(v) => Some(v),
                        _ => None,
                    });
                    out.push((Rec::Object(h), value.unwrap_or_default()));
                }
                Ok(out)
            }
            Records::Beside { .. } => Ok(self
                .beside_load(s, op, false)?
                .0
                .into_iter()
                .filter(|e| e.label == label)
                .map(|e| (Rec::Entry(e.id), e.value))
                .collect()),
        }
    }

    /// Add a record.
    fn add_record(&self, s: &Session, label: &[u8], value: Vec<u8>, op: &'static str) -> Result<(), HsmError> {
        match &self.records {
            Records::Token => self.create_data_object(s, label, value, op),
            Records::Beside { .. } => self.beside_update(s, op, |entries| {
                let id = entries.iter().map(|e| e.id).max().unwrap_or(0) + 1;
                entries.push(Entry { id, label: label.to_vec(), value: value.clone() });
            }),
        }
    }

    /// Remove records (best effort, as destroying token objects is).
    fn drop_records(&self, s: &Session, recs: &[Rec]) {
        match &self.records {
            Records::Token => {
                for r in recs {
                    if let Rec::Object(h) = r {
                        let _ = s.destroy_object(*h);
                    }
                }
            }
            Records::Beside { .. } => {
                let _ = self.beside_update(s, "remove a record", |entries| {
                    entries.retain(|e| !recs.contains(&Rec::Entry(e.id)));
                });
            }
        }
    }

    /// Remove every record labelled with one of `labels`.
    fn drop_labelled(&self, s: &Session, labels: &[&[u8]]) {
        match &self.records {
            Records::Token => self.destroy_labelled(s, labels, ObjectClass::DATA),
            Records::Beside { .. } => {
                let _ = self.beside_update(s, "remove records", |entries| {
                    entries.retain(|e| !labels.contains(&e.label.as_slice()));
                });
            }
        }
    }

    /// The records beside, checked against their MAC, and the store's version.
    /// `fresh`: read the store even when the cache looks current (an
    /// update's compare-and-swap needs the store's own version).
    fn beside_load(&self, s: &Session, op: &'static str, fresh: bool) -> Result<(Vec<Entry>, Option<u64>), HsmError> {
        let Records::Beside { store, key, cache } = &self.records else { return Ok((Vec::new(), None)) };
        if !fresh {
            let held = cache.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some((v, entries)) = held {
                if !store.moved(v)? {
                    return Ok((entries, Some(v)));
                }
            }
        }
        let Some((bytes, version)) = store.load()? else { return Ok((Vec::new(), None)) };
        let damaged = |why: &str| {
            HsmError::Pkcs11 {
            op,
            detail: format!("the records of token {:?} kept {} are damaged or were altered ({why}); restore the catalog from a vault backup", self.token, store.at()),
        }
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| damaged("not text"))?;
        let cut = text.rfind("\nmac ").ok_or_else(|| damaged("no MAC"))? + 1;
        let (body, mac) = (&text[..cut], text[cut + 4..].trim_end());
        let want = hmac(s, *key, body.as_bytes())?;
        let got = hex::decode(mac).map_err(|_| damaged("a MAC that is not hex"))?;
        if aws_lc_rs::constant_time::verify_slices_are_equal(&want, &got).is_err() {
            return Err(damaged("its MAC does not match"));
        }
        let rest = body.strip_prefix(RECORDS_HEADER).ok_or_else(|| damaged("not records"))?;
        let mut entries = Vec::new();
        for line in rest.lines() {
            let mut f = line.split(' ');
            let (Some(id), Some(label), Some(value), None) = (f.next(), f.next(), f.next(), f.next()) else {
                return Err(damaged("a line is not ID LABEL VALUE"));
            };
            entries.push(Entry {
                id: id.parse().map_err(|_| damaged("an id is not a number"))?,
                label: label.as_bytes().to_vec(),
                value: hex::decode(value).map_err(|_| damaged("a value is not hex"))?,
            });
        }
        *cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((version, entries.clone()));
        Ok((entries, Some(version)))
    }

    /// Change the records beside: read, change, write back if nobody wrote
    /// in between (else again).
    fn beside_update(&self, s: &Session, op: &'static str, change: impl Fn(&mut Vec<Entry>)) -> Result<(), HsmError> {
        let Records::Beside { store, key, cache } = &self.records else { return Ok(()) };
        for _ in 0..32 {
            let (mut entries, version) = self.beside_load(s, op, true)?;
            change(&mut entries);
            let mut text = RECORDS_HEADER.to_string();
            for e in &entries {
                text.push_str(&format!("{} {} {}\n", e.id, String::from_utf8_lossy(&e.label), hex::encode(&e.value)));
            }
            let mac = hmac(s, *key, text.as_bytes())?;
            text.push_str(&format!("mac {}\n", hex::encode(mac)));
            if let Some(v) = store.store(text.as_bytes(), version)? {
                *cache.lock().unwrap_or_else(|p| p.into_inner()) = Some((v, entries));
                return Ok(());
            }
        }
        Err(HsmError::Pkcs11 {
            op,
            detail: format!("the records kept {} kept changing under it; try again", store.at()),
        })
    }

    /// [`Self::discard`] on the token `cfg` names, for a caller whose handle
    /// is gone (dropped with the vault that failed to be made).
    pub fn discard_on(cfg: &Pkcs11Config, keep: Keep) {
        if let Ok(mut hsm) = Self::connect(cfg) {
            if hsm.keep(keep, false).is_ok() {
                hsm.discard();
            }
        }
    }

    fn destroy_labelled(&self, s: &Session, labels: &[&[u8]], class: ObjectClass) {
        for label in labels {
            let found =
                s.find_objects(&[Attribute::Class(class), Attribute::Label(label.to_vec())]).unwrap_or_default();
            for h in found {
                let _ = s.destroy_object(h);
            }
        }
    }

    /// Load the module, find the token by label, log in, and choose how
    /// data keys are wrapped.
    fn connect(cfg: &Pkcs11Config) -> Result<Self, HsmError> {
        let ctx = Pkcs11::new(&cfg.module).map_err(|e| {
            HsmError::Pkcs11Config(format!(
                "cannot load the PKCS#11 module {}: {e}; check the module path",
                cfg.module.display()
            ))
        })?;
        // A module that stays loaded after its last context is dropped (a
        // Rust library is not unloaded) is still initialised: use it as it is.
        let init = match &cfg.init_args {
            None => match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
                Ok(())
                | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::CryptokiAlreadyInitialized, _)) => {
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            },
            Some(args) => crate::initargs::initialize_with(&ctx, args),
        };
        if let Err(e) = init {
            return Err(HsmError::Pkcs11Config(format!(
                "cannot initialise the PKCS#11 module {} ({e}): {}",
                cfg.module.display(),
                match cfg.init_args {
                    None => "a module that needs initialisation arguments (NSS's softoken: configdir='sql:DIR') takes them from --pkcs11-init-args",
                    Some(_) => "check --pkcs11-init-args against the module's documentation",
                }
            )));
        }
        let mut labels = Vec::new();
        let mut slot = None;
        for s in ctx.get_slots_with_token().map_err(p11("list slots"))? {
            let info = ctx.get_token_info(s).map_err(p11("read token info"))?;
            let l = info.label().trim().to_string();
            if l == cfg.token {
                slot = Some(s);
            }
            labels.push(l);
        }
        let slot = slot.ok_or_else(|| {
            HsmError::Pkcs11Config(format!(
                "no token labelled {:?} (tokens: {}); check the token label",
                cfg.token,
                if labels.is_empty() { "none".into() } else { labels.join(", ") }
            ))
        })?;
        let session = ctx.open_rw_session(slot).map_err(p11("open a session"))?;
        session.login(UserType::User, Some(&AuthPin::from(cfg.pin.to_string()))).map_err(|e| match e {
            cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::PinIncorrect, _) => {
                HsmError::Pkcs11Config(format!("wrong PIN for token {:?}: check the PIN source", cfg.token))
            }
            e => HsmError::Pkcs11 { op: "log in", detail: e.to_string() },
        })?;
        let wrap = Wrap::choose(&session, &cfg.module, slot.id(), &cfg.token)?;
        Ok(Self {
            token: cfg.token.clone(),
            wrap,
            session: Mutex::new(session),
            catalog: Mutex::new(None),
            next: Mutex::new(None),
            records: Records::Token,
            _ctx: ctx,
        })
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Compute a new master key's MKVP on the token and store it as its CKA_ID.
    fn name_master_key(&self, s: &Session, h: ObjectHandle) -> Result<Mkvp, HsmError> {
        let tag = s.sign(&Mechanism::AesCMac, h, &MKVP_BLOCK).map_err(p11("compute an MKVP"))?;
        let tag: [u8; 16] =
            tag.try_into().map_err(|_| HsmError::Pkcs11 { op: "compute an MKVP", detail: "short CMAC".into() })?;
        let mkvp = Mkvp::from_cmac(&tag);
        s.update_attributes(h, &[Attribute::Id(mkvp.0.to_vec())]).map_err(p11("name a master key"))?;
        Ok(mkvp)
    }

    /// Every register object on the token with what it says (normally one;
    /// two if an update was interrupted between create and destroy).
    fn regs_objects(&self, s: &Session) -> Result<Vec<(Rec, Regs)>, HsmError> {
        self.data_objects(s, REGS_LABEL, "read the registers", "register", Regs::decode)
    }

    /// Every private data object labelled `label`, decoded; one that does
    /// not decode is reported damaged (`op` names the step, `what` the object).
    fn data_objects<T>(
        &self,
        s: &Session,
        label: &[u8],
        op: &'static str,
        what: &str,
        decode: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<Vec<(Rec, T)>, HsmError> {
        let mut out = Vec::new();
        for (r, value) in self.records(s, label, op)? {
            let t = decode(&value).ok_or_else(|| HsmError::Pkcs11 {
                op,
                detail: format!("a {what} object on token {:?} is damaged", self.token),
            })?;
            out.push((r, t));
        }
        Ok(out)
    }

    /// Store a new private data object labelled `label` on the token.
    fn create_data_object(&self, s: &Session, label: &[u8], value: Vec<u8>, op: &'static str) -> Result<(), HsmError> {
        s.create_object(&data_object_template(label, value)).map_err(p11(op))?;
        Ok(())
    }

    fn read_regs(&self, s: &Session) -> Result<Option<Regs>, HsmError> {
        Ok(self.regs_objects(s)?.into_iter().map(|(_, r)| r).max_by_key(|r| r.seq))
    }

    fn regs(&self, s: &Session) -> Result<Regs, HsmError> {
        self.read_regs(s)?.ok_or(HsmError::NoCurrentMasterKey)
    }

    /// Data objects' values cannot be changed on every token, so an update
    /// writes a new object with the next sequence number, then removes the
    /// older ones. Interrupted in between, the newer one wins on read.
    fn write_regs(&self, s: &Session, regs: &Regs) -> Result<(), HsmError> {
        let old = self.regs_objects(s)?;
        let next = Regs { seq: old.iter().map(|(_, r)| r.seq).max().unwrap_or(0) + 1, ..*regs };
        self.add_record(s, REGS_LABEL, next.encode(), "write the registers")?;
        self.drop_records(s, &old.iter().map(|(r, _)| *r).collect::<Vec<_>>());
        Ok(())
    }

    /// Every anchor object on the token with what it says (one, or more
    /// when processes wrote at once or a write was interrupted).
    fn anchor_objects(&self, s: &Session) -> Result<Vec<(Rec, AuditAnchor)>, HsmError> {
        self.data_objects(s, ANCHOR_LABEL, "read the audit anchor", "audit anchor", AuditAnchor::decode)
    }

    /// The catalog key: of several (two processes made one at once), the one
    /// with the lowest `CKA_ID`, so that every process signs with the same.
    /// With none but a NEXT key, a rotation's finish was cut short after
    /// the old key went: the NEXT key is relabelled and is the key.
    fn catalog_key(&self, s: &Session) -> Result<Option<ObjectHandle>, HsmError> {
        if let Some(h) = self.lowest(s, CATALOG_LABEL)? {
            return Ok(Some(h));
        }
        let Some(next) = self.lowest(s, NEXT_LABEL)? else { return Ok(None) };
        s.update_attributes(next, &[Attribute::Label(CATALOG_LABEL.to_vec())])
            .map_err(p11("finish the catalog key's rotation"))?;
        self.lowest(s, CATALOG_LABEL)
    }

    /// Of the secret keys labelled `label`, the one with the lowest `CKA_ID`.
    fn lowest(&self, s: &Session, label: &[u8]) -> Result<Option<ObjectHandle>, HsmError> {
        let op = "find the catalog key";
        let found = s
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Label(label.to_vec())])
            .map_err(p11(op))?;
        let mut best: Option<(Vec<u8>, ObjectHandle)> = None;
        for h in found {
            let id = s
                .get_attributes(h, &[AttributeType::Id])
                .map_err(p11(op))?
                .into_iter()
                .find_map(|a| match a {
                    Attribute::Id(v) => Some(v),
                    _ => None,
                })
                .unwrap_or_default();
            if best.as_ref().is_none_or(|(b, _)| id < *b) {
                best = Some((id, h));
            }
        }
        Ok(best.map(|(_, h)| h))
    }

    fn master_key(&self, s: &Session, mkvp: &Mkvp) -> Result<ObjectHandle, HsmError> {
        let found = s
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(MK_LABEL.to_vec()),
                Attribute::Id(mkvp.0.to_vec()),
            ])
            .map_err(p11("find a master key"))?;
        found.first().copied().ok_or_else(|| HsmError::Pkcs11 {
            op: "find a master key",
            detail: format!("the register names MKVP {mkvp} but token {:?} has no such key", self.token),
        })
    }

    /// Which register holds `mkvp` (CURRENT, OLD or NEW), if any.
    fn held(&self, s: &Session, mkvp: &Mkvp) -> Result<Regs, HsmError> {
        let regs = self.regs(s)?;
        if [regs.current, regs.old, regs.new].iter().flatten().any(|r| r.mkvp == *mkvp) {
            Ok(regs)
        } else {
            Err(HsmError::UnknownMkvp { mkvp: *mkvp, held: regs.held() })
        }
    }

    fn kcv_of(s: &Session, h: ObjectHandle) -> Result<Kcv, HsmError> {
        let tag = s.sign(&Mechanism::AesCMac, h, &[0u8; 16]).map_err(p11("compute a KCV"))?;
        Kcv::from_slice(&tag[..KCV_LEN]).map_err(HsmError::Crypto)
    }

    /// Wrap a session key under CURRENT, compute its KCV, destroy it.
    fn wrap_session_key(&self, s: &Session, h: ObjectHandle) -> Result<WrappedKey, HsmError> {
        let result = (|| {
            let cur = self.regs(s)?.current.ok_or(HsmError::NoCurrentMasterKey)?;
            let mk = self.master_key(s, &cur.mkvp)?;
            let bytes = match &self.wrap {
                Wrap::Pad => s.wrap_key(&Mechanism::AesKeyWrapPad, mk, h).map_err(p11("wrap a key"))?,
                Wrap::Kwp(k) => k.wrap(s, mk, h).map_err(|detail| HsmError::Pkcs11 { op: "wrap a key", detail })?,
            };
            Ok(WrappedKey { mkvp: cur.mkvp, kcv: Self::kcv_of(s, h)?, bytes })
        })();
        let _ = s.destroy_object(h);
        result
    }

    fn unwrap_session_key(
        &self,
        s: &Session,
        mkvp: &Mkvp,
        wrapped: &[u8],
        sensitive: bool,
    ) -> Result<ObjectHandle, HsmError> {
        self.held(s, mkvp)?;
        let mk = self.master_key(s, mkvp)?;
        match &self.wrap {
            Wrap::Pad => s
                .unwrap_key(
                    &Mechanism::AesKeyWrapPad,
                    mk,
                    wrapped,
                    &data_key_template(&[Attribute::Sensitive(sensitive)]),
                )
                .map_err(|_| HsmError::Unwrap { mkvp: *mkvp }),
            Wrap::Kwp(k) => {
                // Marked so that cryptoki can find the new object by it.
                let tag: [u8; 16] = custos_crypto::random_array().map_err(HsmError::Crypto)?;
                let template = data_key_template(&[Attribute::Sensitive(sensitive), Attribute::Id(tag.to_vec())]);
                k.unwrap(s, mk, wrapped, &template).map_err(|_| HsmError::Unwrap { mkvp: *mkvp })?;
                let found = s
                    .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Id(tag.to_vec())])
                    .map_err(p11("find an unwrapped key"))?;
                match found.as_slice() {
                    [h] => Ok(*h),
                    _ => {
                        for h in found {
                            let _ = s.destroy_object(h);
                        }
                        Err(HsmError::Unwrap { mkvp: *mkvp })
                    }
                }
            }
        }
    }

    fn destroy_master_key(&self, s: &Session, mkvp: &Mkvp) {
        if let Ok(h) = self.master_key(s, mkvp) {
            let _ = s.destroy_object(h);
        }
    }
}

impl Hsm for Pkcs11Hsm {
    fn describe(&self) -> String {
        format!("PKCS#11 token {:?} (key wrap {})", self.token, self.wrap.name())
    }

    fn registers(&self) -> Result<Vec<RegisterInfo>, HsmError> {
        let r = self.regs(&self.session())?;
        Ok([(Register::New, r.new), (Register::Current, r.current), (Register::Old, r.old)]
            .into_iter()
            .filter_map(|(register, x)| x.map(|x| RegisterInfo { register, mkvp: x.mkvp, since: x.since }))
            .collect())
    }

    fn generate_key(&self) -> Result<WrappedKey, HsmError> {
        let s = self.session();
        let h = s
            .generate_key(
                &Mechanism::AesKeyGen,
                &data_key_template(&[Attribute::Sensitive(true), Attribute::ValueLen(32.into())]),
            )
            .map_err(p11("generate a data key"))?;
        self.wrap_session_key(&s, h)
    }

    fn wrap_key(&self, key: &DataKey) -> Result<WrappedKey, HsmError> {
        let s = self.session();
        let h = s
            .create_object(&data_key_template(&[
                Attribute::Sensitive(true),
                Attribute::Value(key.expose_secret().to_vec()),
            ]))
            .map_err(p11("import a data key"))?;
        self.wrap_session_key(&s, h)
    }

    fn unwrap_key(&self, mkvp: &Mkvp, wrapped: &[u8]) -> Result<DataKey, HsmError> {
        let s = self.session();
        let h = self.unwrap_session_key(&s, mkvp, wrapped, false)?;
        let value = s.get_attributes(h, &[AttributeType::Value]);
        let _ = s.destroy_object(h);
        let mut value = value.map_err(p11("read an unwrapped key"))?;
        let key = value.iter().find_map(|a| match a {
            Attribute::Value(v) => Some(DataKey::from_slice(v)),
            _ => None,
        });
        for a in value.iter_mut() {
            if let Attribute::Value(v) = a {
                zeroize::Zeroize::zeroize(v);
            }
        }
        key.ok_or(HsmError::Unwrap { mkvp: *mkvp })?.map_err(|_| HsmError::Unwrap { mkvp: *mkvp })
    }

    fn rewrap_key(&self, mkvp: &Mkvp, wrapped: &[u8]) -> Result<WrappedKey, HsmError> {
        let s = self.session();
        let h = self.unwrap_session_key(&s, mkvp, wrapped, true)?;
        self.wrap_session_key(&s, h)
    }

    fn load_new(&self, new: NewMasterKey, expect: Option<Mkvp>) -> Result<Mkvp, HsmError> {
        let s = self.session();
        let mut regs = self.regs(&s)?;
        if let Some(n) = regs.new {
            return Err(HsmError::NewLoaded { mkvp: n.mkvp });
        }
        let h = match new {
            NewMasterKey::Generate => s
                .generate_key(&Mechanism::AesKeyGen, &master_key_template(&[Attribute::ValueLen(32.into())]))
                .map_err(p11("generate a master key"))?,
            NewMasterKey::Parts(parts) => {
                let key = combine_parts(&parts)?;
                s.create_object(&master_key_template(&[Attribute::Value(key.expose_secret().to_vec())]))
                    .map_err(p11("import a master key"))?
            }
        };
        let mkvp = match self.name_master_key(&s, h) {
            Ok(m) if expect.is_none_or(|w| w == m) => m,
            Ok(m) => {
                let _ = s.destroy_object(h);
                return Err(HsmError::MkvpMismatch { got: m, want: expect.expect("checked") });
            }
            Err(e) => {
                let _ = s.destroy_object(h);
                return Err(e);
            }
        };
        regs.new = Some(Reg { mkvp, since: Timestamp::now() });
        self.write_regs(&s, &regs)?;
        Ok(mkvp)
    }

    fn clear_new(&self) -> Result<(), HsmError> {
        let s = self.session();
        let mut regs = self.regs(&s)?;
        if let Some(n) = regs.new.take() {
            self.write_regs(&s, &regs)?;
            self.destroy_master_key(&s, &n.mkvp);
        }
        Ok(())
    }

    fn activate(&self) -> Result<(), HsmError> {
        let s = self.session();
        let regs = self.regs(&s)?;
        let mut new = regs.new.ok_or(HsmError::NoNewMasterKey)?;
        let now = Timestamp::now();
        new.since = now;
        let old = regs.current.map(|mut c| {
            c.since = now;
            c
        });
        self.write_regs(&s, &Regs { seq: regs.seq, new: None, current: Some(new), old })?;
        // The register object no longer names it: now the key can go.
        if let Some(discarded) = regs.old {
            self.destroy_master_key(&s, &discarded.mkvp);
        }
        Ok(())
    }

    fn anchor(&self) -> Result<Option<AuditAnchor>, HsmError> {
        let s = self.session();
        Ok(self.anchor_objects(&s)?.into_iter().map(|(_, a)| a).max_by_key(|a| a.seq))
    }

    /// Like the registers: a new private token object, then the older ones
    /// go; interrupted in between, the furthest one wins on read.
    fn set_anchor(&self, anchor: &AuditAnchor, force: bool) -> Result<(), HsmError> {
        let s = self.session();
        let old = self.anchor_objects(&s)?;
        if !force && old.iter().any(|(_, a)| a.seq >= anchor.seq) {
            return Ok(());
        }
        self.add_record(&s, ANCHOR_LABEL, anchor.encode().to_vec(), "write the audit anchor")?;
        self.drop_records(&s, &old.iter().map(|(r, _)| *r).collect::<Vec<_>>());
        Ok(())
    }

    fn catalog_key_state(&self) -> Result<CatalogKeyState, HsmError> {
        let s = self.session();
        if self.catalog_key(&s)?.is_none() {
            return Ok(CatalogKeyState::None);
        }
        let sealed = self.records(&s, SEALED_LABEL, "read the catalog key's state")?;
        Ok(if sealed.is_empty() { CatalogKeyState::Made } else { CatalogKeyState::Sealed })
    }

    fn catalog_key_sealed(&self) -> Result<(), HsmError> {
        if self.catalog_key_state()? == CatalogKeyState::Sealed {
            return Ok(());
        }
        let s = self.session();
        self.catalog_key(&s)?.ok_or(HsmError::NoCatalogKey)?;
        self.add_record(&s, SEALED_LABEL, b"sealed".to_vec(), "record the catalog sealed")
    }

    fn make_catalog_key(&self) -> Result<(), HsmError> {
        let s = self.session();
        if self.catalog_key(&s)?.is_some() {
            return Ok(());
        }
        let made = self.generate_hmac_key(&s, CATALOG_LABEL, "make the catalog key")?;
        // Another process may have made one at the same moment: the lowest
        // id wins, and a losing key of this process's goes.
        let chosen = self.catalog_key(&s)?;
        if chosen != Some(made) {
            let _ = s.destroy_object(made);
        }
        Ok(())
    }

    fn catalog_mac(&self, msg: &[u8]) -> Result<[u8; 32], HsmError> {
        let s = self.session();
        let mut cached = self.catalog.lock().unwrap_or_else(|p| p.into_inner());
        let key = match *cached {
            Some(h) => h,
            None => {
                let h = self.catalog_key(&s)?.ok_or(HsmError::NoCatalogKey)?;
                *cached = Some(h);
                h
            }
        };
        hmac(&s, key, msg).inspect_err(|_| *cached = None)
    }

    fn begin_catalog_rotation(&self) -> Result<(), HsmError> {
        let s = self.session();
        self.catalog_key(&s)?.ok_or(HsmError::NoCatalogKey)?;
        if self.lowest(&s, NEXT_LABEL)?.is_none() {
            let made = self.generate_hmac_key(&s, NEXT_LABEL, "make the next catalog key")?;
            if self.lowest(&s, NEXT_LABEL)? != Some(made) {
                let _ = s.destroy_object(made);
            }
        }
        *self.next.lock().unwrap_or_else(|p| p.into_inner()) = self.lowest(&s, NEXT_LABEL)?;
        Ok(())
    }

    fn catalog_rotation_pending(&self) -> Result<bool, HsmError> {
        let s = self.session();
        // A cut-short finish is completed here, and then nothing is pending.
        self.catalog_key(&s)?;
        Ok(self.lowest(&s, NEXT_LABEL)?.is_some())
    }

    fn catalog_mac_next(&self, msg: &[u8]) -> Result<Option<[u8; 32]>, HsmError> {
        let s = self.session();
        let mut cached = self.next.lock().unwrap_or_else(|p| p.into_inner());
        match *cached {
            Some(h) => hmac(&s, h, msg).inspect_err(|_| *cached = None).map(Some),
            None => Ok(None),
        }
    }

    fn finish_catalog_rotation(&self) -> Result<(), HsmError> {
        let s = self.session();
        if self.lowest(&s, NEXT_LABEL)?.is_some() {
            let op = "finish the catalog key's rotation";
            let old = s
                .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Label(CATALOG_LABEL.to_vec())])
                .map_err(p11(op))?;
            for h in old {
                s.destroy_object(h).map_err(p11(op))?;
            }
            // Relabels the NEXT key (see `catalog_key`).
            self.catalog_key(&s)?.ok_or(HsmError::NoCatalogKey)?;
        }
        *self.catalog.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *self.next.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    fn refresh_catalog_keys(&self) -> Result<(), HsmError> {
        let s = self.session();
        let current = self.catalog_key(&s)?;
        let next = self.lowest(&s, NEXT_LABEL)?;
        *self.catalog.lock().unwrap_or_else(|p| p.into_inner()) = current;
        *self.next.lock().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }
}

/// HMAC-SHA-256 of `msg` inside the token under `key`.
fn hmac(s: &Session, key: ObjectHandle, msg: &[u8]) -> Result<[u8; 32], HsmError> {
    let tag = s.sign(&Mechanism::Sha256Hmac, key, msg).map_err(p11("MAC a catalog row"))?;
    tag.try_into().map_err(|_| HsmError::Pkcs11 { op: "MAC a catalog row", detail: "not 32 bytes".into() })
}

impl Pkcs11Hsm {
    /// Generate a token HMAC key labelled `label`: sensitive, never
    /// extractable, for signing and verifying only.
    fn generate_hmac_key(&self, s: &Session, label: &[u8], op: &'static str) -> Result<ObjectHandle, HsmError> {
        let id = custos_crypto::random_array::<16>()?;
        s.generate_key(
            &Mechanism::GenericSecretKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Verify(true),
                Attribute::Encrypt(false),
                Attribute::Decrypt(false),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
                Attribute::Derive(false),
                Attribute::Label(label.to_vec()),
                Attribute::Id(id.to_vec()),
            ],
        )
        .map_err(p11(op))
    }
}
