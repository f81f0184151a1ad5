//! Keys as key-management clients (KMIP) see them: attributes they set,
//! revocation, and the export of a key's material to a device that must
//! hold it. Each is checked here, whichever front end asked.

use custos_model::{KeyAction, KeyAttributes, KeyLabel, KeyRecord, KeyState, KeyUse, Purpose, Revocation};
use zeroize::Zeroizing;

use crate::{Error, Open, Result, Vault};

/// At most this many names or custom attributes on one key.
pub const MAX_ATTRIBUTE_VALUES: usize = 64;
/// The longest name, contact or custom attribute value.
pub const MAX_ATTRIBUTE_LEN: usize = 1024;

/// KMIP's revocation reasons, as the words Custos keeps, in KMIP's order
/// (reason code 1 first).
pub const REVOCATION_REASONS: [&str; 7] = [
    "unspecified",
    "key-compromise",
    "ca-compromise",
    "affiliation-changed",
    "superseded",
    "cessation-of-operation",
    "privilege-withdrawn",
];

fn invalid(why: String) -> Error {
    Error::Invalid { what: "key attributes", why }
}

impl Vault<Open> {
    /// Whether `a` may be set on key `label` (`None`: a key not made yet).
    pub(crate) fn check_attributes(&self, label: Option<&KeyLabel>, a: &KeyAttributes) -> Result<()> {
        if a.names.len() > MAX_ATTRIBUTE_VALUES || a.custom.len() > MAX_ATTRIBUTE_VALUES {
            return Err(invalid(format!(
                "a key takes at most {MAX_ATTRIBUTE_VALUES} names and {MAX_ATTRIBUTE_VALUES} custom attributes"
            )));
        }
        let too_long = |s: &str| s.is_empty() || s.len() > MAX_ATTRIBUTE_LEN;
        if let Some(n) = a.names.iter().find(|n| too_long(n)) {
            return Err(invalid(format!("name {n:?} must be 1 to {MAX_ATTRIBUTE_LEN} bytes")));
        }
        if let Some(c) = a.contact.as_deref().filter(|c| too_long(c)) {
            return Err(invalid(format!("contact information {c:?} must be 1 to {MAX_ATTRIBUTE_LEN} bytes")));
        }
        for (k, v) in &a.custom {
            if !(k.starts_with("x-") || k.starts_with("y-")) || k.len() > 255 || too_long(v) {
                return Err(invalid(format!(
                    "custom attribute {k:?}: its name starts with x- (or y-), at most 255 bytes, and its value is 1 to {MAX_ATTRIBUTE_LEN} bytes"
                )));
            }
        }
        match (a.secret, a.bits) {
            (None, Some(b)) if ![128, 192, 256].contains(&b) => {
                return Err(invalid(format!("a key of {b} bits: AES keys are 128, 192 or 256 bits")));
            }
            (Some(_), Some(b)) if b == 0 || b % 8 != 0 || b > 256 => {
                return Err(invalid(format!("secret data of {b} bits: give 1 to 32 whole bytes")));
            }
            _ => {}
        }
        let mut names = a.names.clone();
        names.sort();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("a name is given twice".into()));
        }
        if !a.names.is_empty() {
            for k in self.repo.keys()? {
                if Some(&k.label) == label {
                    continue;
                }
                if let Some(n) = a.names.iter().find(|n| k.attributes.names.contains(n)) {
                    return Err(Error::Invalid {
                        what: "key name",
                        why: format!("{n:?} already names key {}: a name belongs to one key", k.label),
                    });
                }
            }
        }
        Ok(())
    }

    /// Replace a key's attributes (what KMIP's Add, Modify and Delete
    /// Attribute come to). Revocation and length are the key's history,
    /// not the client's to change: they are kept as they were.
    pub fn set_key_attributes(&self, label: &KeyLabel, mut attributes: KeyAttributes) -> Result<KeyRecord> {
        self.change_key(label, |rec| {
            if rec.state == KeyState::Destroyed {
                return Err(Error::KeyNoMaterial { label: label.clone() });
            }
            attributes.revocation = rec.attributes.revocation.clone();
            attributes.bits = rec.attributes.bits;
            attributes.secret = rec.attributes.secret;
            self.check_attributes(Some(label), &attributes)?;
            rec.attributes = attributes.clone();
            Ok(())
        })
    }

    /// Revoke a key (KMIP Revoke). For a compromise it becomes
    /// compromised (it decrypts, never encrypts, and can only be
    /// destroyed); for any other reason it is deactivated. The reason is
    /// kept with the key.
    pub fn revoke_key(&self, label: &KeyLabel, revocation: Revocation) -> Result<KeyRecord> {
        if !REVOCATION_REASONS.contains(&revocation.reason.as_str()) {
            return Err(Error::Invalid {
                what: "revocation reason",
                why: format!("{:?}: give one of {}", revocation.reason, REVOCATION_REASONS.join(", ")),
            });
        }
        if revocation.message.as_ref().is_some_and(|m| m.is_empty() || m.len() > MAX_ATTRIBUTE_LEN) {
            return Err(invalid(format!("a revocation message is 1 to {MAX_ATTRIBUTE_LEN} bytes")));
        }
        let compromise = revocation.reason == "key-compromise" || revocation.reason == "ca-compromise";
        self.change_key(label, |rec| {
            let now = jiff::Timestamp::now();
            let next = if compromise {
                rec.state
                    .apply(KeyAction::Compromise)
                    .map_err(|source| Error::Lifecycle { label: label.clone(), source })?
            } else {
                match rec.state {
                    KeyState::PreActive | KeyState::Active | KeyState::Inactive => KeyState::Inactive,
                    _ => {
                        return Err(Error::Lifecycle {
                            label: label.clone(),
                            source: custos_model::LifecycleError::Transition {
                                from: rec.state,
                                action: KeyAction::Deactivate,
                            },
                        })
                    }
                }
            };
            if next == KeyState::Inactive && rec.state != KeyState::Inactive {
                rec.deactivated_at = Some(now);
            }
            rec.state = next;
            rec.attributes.revocation = Some(Revocation { at: now, ..revocation.clone() });
            Ok(())
        })
    }

    /// A key's material in the clear, for a client that must hold it (KMIP
    /// Get): checked against its check value, cut to its length, counted
    /// as a use. Refused for BACK keys (Custos's own), and for keys that
    /// are archived, destroyed or pending destruction.
    pub fn export_key(&self, label: &KeyLabel) -> Result<(KeyRecord, Zeroizing<Vec<u8>>)> {
        let rec = self.key(label)?;
        if rec.purpose != Purpose::Prim {
            return Err(Error::KeyPurpose {
                label: rec.label.clone(),
                state: rec.state,
                why: "BACK keys seal Custos's own backups and never leave it",
            });
        }
        if let Some(at) = self.destroy_scheduled_at(label)? {
            return Err(Error::KeyPendingDestruction { label: label.clone(), at });
        }
        match rec.state {
            KeyState::PreActive | KeyState::Active | KeyState::Inactive | KeyState::Compromised => {}
            KeyState::Destroyed => return Err(Error::KeyNoMaterial { label: label.clone() }),
            KeyState::Archived => {
                return Err(Error::KeyPurpose {
                    label: rec.label.clone(),
                    state: rec.state,
                    why: "an archived key is offline: restore it first (`custos key restore`)",
                })
            }
        }
        let key = self.unwrap_checked(&rec)?;
        let n = usize::from(rec.attributes.length_bits() / 8);
        let out = Zeroizing::new(key.expose_secret()[..n].to_vec());
        self.note_key_use(label)?;
        Ok((rec, out))
    }

    /// The AES key `label` holds, checked for `usage` (a client's own
    /// AES-GCM, KMIP Encrypt and Decrypt).
    fn cipher_key(&self, label: &KeyLabel, usage: KeyUse) -> Result<Zeroizing<Vec<u8>>> {
        let rec = self.key(label)?;
        if rec.purpose != Purpose::Prim || rec.attributes.secret.is_some() {
            return Err(Error::KeyPurpose {
                label: rec.label.clone(),
                state: rec.state,
                why: "only PRIM keys encrypt for clients (BACK keys seal backups; secret data is not a key)",
            });
        }
        self.check_use(&rec, usage, None)?;
        let key = self.unwrap_checked(&rec)?;
        let n = usize::from(rec.attributes.length_bits() / 8);
        Ok(Zeroizing::new(key.expose_secret()[..n].to_vec()))
    }

    /// AES-GCM under key `label` (KMIP Encrypt): the ciphertext, its tag
    /// and the IV (a fresh random one unless given).
    pub fn gcm_encrypt(
        &self,
        label: &KeyLabel,
        iv: Option<[u8; 12]>,
        aad: &[u8],
        data: &[u8],
    ) -> Result<(Vec<u8>, [u8; 16], [u8; 12])> {
        check_size(data)?;
        let key = self.cipher_key(label, KeyUse::Encrypt)?;
        let iv = match iv {
            Some(iv) => iv,
            None => custos_crypto::random_array().map_err(|e| gcm(e.to_string()))?,
        };
        let mut buf = data.to_vec();
        let tag = custos_crypto::gcm_seal_any(&key, custos_crypto::Nonce(iv), aad, &mut buf)
            .map_err(|e| gcm(e.to_string()))?;
        self.note_key_use(label)?;
        Ok((buf, tag, iv))
    }

    /// The reverse of [`Vault::gcm_encrypt`] (KMIP Decrypt).
    pub fn gcm_decrypt(
        &self,
        label: &KeyLabel,
        iv: [u8; 12],
        aad: &[u8],
        data: &[u8],
        tag: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        check_size(data)?;
        let key = self.cipher_key(label, KeyUse::Decrypt)?;
        let mut buf = Zeroizing::new(data.to_vec());
        custos_crypto::gcm_open_any(&key, custos_crypto::Nonce(iv), aad, &mut buf, tag).map_err(|e| {
            Error::Invalid {
                what: "ciphertext",
                why: format!("{e} (the IV, tag, additional data and key must be those it was sealed with)"),
            }
        })?;
        self.note_key_use(label)?;
        Ok(buf)
    }
}

/// The most one client Encrypt or Decrypt takes.
pub const MAX_CIPHER_DATA: usize = 1 << 20;

fn check_size(data: &[u8]) -> Result<()> {
    if data.len() > MAX_CIPHER_DATA {
        return Err(gcm(format!("{} bytes is more than the {MAX_CIPHER_DATA} one request takes", data.len())));
    }
    Ok(())
}

fn gcm(why: String) -> Error {
    Error::Invalid { what: "AES-GCM", why }
}
