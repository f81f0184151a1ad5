//! The key service: applications protect their own data with Custos keys
//! without holding one (what AWS KMS `Encrypt`/`Decrypt`/`GenerateDataKey`
//! and Vault's transit engine give). Keys are unwrapped in the HSM's
//! boundary for each request, checked like a dataset's (state, expiry,
//! pending destruction, check value), and each use is counted.
//!
//! A ciphertext is a versioned blob that names its key, so decryption needs
//! no label (layout in docs/format.md, "Key service"):
//!
//! ```text
//! "CKS1" | label length (u8) | label | nonce (12) | AES-256-GCM ciphertext | tag (16)
//! ```
//!
//! The caller's encryption context (string pairs) is bound as associated
//! data: a ciphertext opens only with the same context.

use std::collections::BTreeMap;

use custos_crypto::{open_in_place, seal_in_place, Nonce, NONCE_LEN, TAG_LEN};
use custos_model::{KeyLabel, KeyRecord, KeyUse, Purpose};
use zeroize::Zeroizing;

use crate::vault::{Open, Vault};
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"CKS1";
const AAD_DOMAIN: &[u8] = b"custos-keyservice-v1";
/// The most a single encrypt takes (larger data belongs in a dataset, or
/// under a data key).
pub const MAX_PLAINTEXT: usize = 64 * 1024;

/// An encryption context: pairs bound to a ciphertext.
pub type Context = BTreeMap<String, String>;

fn aad(label: &KeyLabel, context: &Context) -> Vec<u8> {
    let mut a = Vec::with_capacity(64);
    a.extend_from_slice(AAD_DOMAIN);
    a.push(label.as_str().len() as u8);
    a.extend_from_slice(label.as_str().as_bytes());
    a.extend_from_slice(&(context.len() as u32).to_be_bytes());
    for (k, v) in context {
        a.extend_from_slice(&(k.len() as u32).to_be_bytes());
        a.extend_from_slice(k.as_bytes());
        a.extend_from_slice(&(v.len() as u32).to_be_bytes());
        a.extend_from_slice(v.as_bytes());
    }
    a
}

fn invalid(why: impl Into<String>) -> Error {
    Error::Invalid { what: "key service", why: why.into() }
}

/// The key a key-service ciphertext names, without opening it (a server
/// checks the caller's key grant with it first).
pub fn ciphertext_key(blob: &[u8]) -> Result<KeyLabel> {
    let bad = || invalid("not a Custos key-service ciphertext (it must start with CKS1 and name its key)");
    if blob.len() < 5 || &blob[..4] != MAGIC {
        return Err(bad());
    }
    let n = blob[4] as usize;
    let label = blob.get(5..5 + n).ok_or_else(bad)?;
    if blob.len() < 5 + n + NONCE_LEN + TAG_LEN {
        return Err(bad());
    }
    KeyLabel::new(String::from_utf8(label.to_vec()).map_err(|_| bad())?).map_err(|_| bad())
}

impl Vault<Open> {
    /// Check that `rec` may serve `usage` now, and unwrap it.
    fn service_key(&self, rec: &KeyRecord, usage: KeyUse) -> Result<custos_crypto::DataKey> {
        if rec.purpose != Purpose::Prim {
            return Err(Error::KeyPurpose {
                label: rec.label.clone(),
                state: rec.state,
                why: "the key service uses PRIM keys; BACK keys seal backups only",
            });
        }
        self.check_use(rec, usage, None)?;
        self.unwrap_checked(rec)
    }

    /// Seal `plaintext` under key `label`, bound to `context`.
    pub fn ks_encrypt(&self, label: &KeyLabel, plaintext: &[u8], context: &Context) -> Result<Vec<u8>> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(invalid(format!(
                "{} bytes is more than the {MAX_PLAINTEXT} one encrypt takes: encrypt a data key (datakey) and seal the data with it",
                plaintext.len()
            )));
        }
        let rec = self.key(label)?;
        let key = self.service_key(&rec, KeyUse::Encrypt)?;
        let nonce = Nonce::random().map_err(|e| invalid(e.to_string()))?;
        let n = label.as_str().len();
        let mut blob = Vec::with_capacity(5 + n + NONCE_LEN + plaintext.len() + TAG_LEN);
        blob.extend_from_slice(MAGIC);
        blob.push(n as u8);
        blob.extend_from_slice(label.as_str().as_bytes());
        blob.extend_from_slice(&nonce.0);
        let start = blob.len();
        blob.extend_from_slice(plaintext);
        blob.resize(blob.len() + TAG_LEN, 0);
        seal_in_place(&key, nonce, &aad(label, context), &mut blob[start..]).map_err(|e| invalid(e.to_string()))?;
        self.note_key_use(label)?;
        Ok(blob)
    }

    /// Open a key-service ciphertext with the context it was sealed with.
    pub fn ks_decrypt(&self, blob: &[u8], context: &Context) -> Result<(KeyLabel, Zeroizing<Vec<u8>>)> {
        let label = ciphertext_key(blob)?;
        let rec = self.key(&label)?;
        let key = self.service_key(&rec, KeyUse::Decrypt)?;
        let n = label.as_str().len();
        let nonce = Nonce(blob[5 + n..5 + n + NONCE_LEN].try_into().expect("length checked"));
        let mut buf = Zeroizing::new(blob[5 + n + NONCE_LEN..].to_vec());
        let plain = open_in_place(&key, nonce, &aad(&label, context), &mut buf[..])
            .map_err(|_| Error::Ciphertext { label: label.clone() })?;
        let out = Zeroizing::new(plain.to_vec());
        self.note_key_use(&label)?;
        Ok((label, out))
    }

    /// A new random data key of `len` bytes: in the clear (for the caller to
    /// use and forget) and sealed under `label` (to store beside its data).
    pub fn ks_datakey(&self, label: &KeyLabel, len: usize, context: &Context) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>)> {
        if !(16..=64).contains(&len) {
            return Err(invalid(format!("a data key of {len} bytes: ask for 16 to 64")));
        }
        let mut k = Zeroizing::new(vec![0u8; len]);
        aws_lc_rs::rand::fill(&mut k[..]).map_err(|_| invalid("the random source failed"))?;
        let sealed = self.ks_encrypt(label, &k, context)?;
        Ok((k, sealed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_ciphertexts_that_are_not_ours() {
        assert!(ciphertext_key(b"").is_err());
        assert!(ciphertext_key(b"CKS2\x01A").is_err());
        assert!(ciphertext_key(b"CKS1\xffshort").is_err());
        let mut ok = b"CKS1\x14DSET.PRIM.PAY.key001".to_vec();
        assert!(ciphertext_key(&ok).is_err(), "no room for nonce and tag");
        ok.extend_from_slice(&[0; NONCE_LEN + TAG_LEN]);
        assert_eq!(ciphertext_key(&ok).unwrap().as_str(), "DSET.PRIM.PAY.key001");
    }
}
