//! Escrow of data keys to a key-backup key (KBK): an X25519 key pair whose
//! public half is stored and whose private half exists only as Shamir
//! shares held by custodians. Sealing needs only the public key, so nothing
//! secret is kept for escrow, and master key changes do not touch it.
//!
//! Sealing (ECIES): an ephemeral X25519 key agrees with the KBK public key;
//! HKDF-SHA256 (salt = ephemeral public ‖ KBK public, info
//! `custos/v1/escrow`) gives an AES-256-GCM key that seals the data key with
//! AAD `custos-escrow-v1` ‖ label. Blob: ephemeral public (32) ‖ nonce (12)
//! ‖ ciphertext (32) ‖ tag (16) = 92 bytes.

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use aws_lc_rs::hkdf;
use zeroize::Zeroizing;

use crate::{open_in_place, random_array, seal_in_place, CryptoError, DataKey, Nonce, TAG_LEN};

pub const ESCROW_BLOB_LEN: usize = 32 + 12 + 32 + TAG_LEN;

/// A new KBK: its public key, and its private scalar to be split at once.
pub fn kbk_generate() -> Result<([u8; 32], Zeroizing<[u8; 32]>), CryptoError> {
    let secret = Zeroizing::new(random_array::<32>()?);
    let public = kbk_public(&secret)?;
    Ok((public, secret))
}

/// The public key of a KBK private scalar.
pub fn kbk_public(secret: &[u8; 32]) -> Result<[u8; 32], CryptoError> {
    let sk = PrivateKey::from_private_key(&X25519, secret).map_err(|_| CryptoError::Length("X25519 key"))?;
    let pk = sk.compute_public_key().map_err(|_| CryptoError::Length("X25519 key"))?;
    pk.as_ref().try_into().map_err(|_| CryptoError::Length("X25519 public key"))
}

fn derive(shared: &[u8], eph_pub: &[u8], kbk_pub: &[u8]) -> DataKey {
    let mut salt = Vec::with_capacity(64);
    salt.extend_from_slice(eph_pub);
    salt.extend_from_slice(kbk_pub);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt).extract(shared);
    let mut k = Zeroizing::new([0u8; 32]);
    prk.expand(&[b"custos/v1/escrow"], hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut k[..]))
        .expect("HKDF-SHA256 can always produce 32 bytes");
    DataKey::from_bytes(*k)
}

fn aad(label: &str) -> Vec<u8> {
    [b"custos-escrow-v1".as_slice(), label.as_bytes()].concat()
}

/// Seal `key` (labelled `label`) to the KBK public key.
pub fn escrow_seal(kbk_pub: &[u8; 32], label: &str, key: &DataKey) -> Result<Vec<u8>, CryptoError> {
    let eph = PrivateKey::generate(&X25519).map_err(|_| CryptoError::Random)?;
    let eph_pub = eph.compute_public_key().map_err(|_| CryptoError::Random)?;
    let ek = agreement::agree(
        &eph,
        UnparsedPublicKey::new(&X25519, kbk_pub),
        CryptoError::Length("KBK public key"),
        |shared| Ok(derive(shared, eph_pub.as_ref(), kbk_pub)),
    )?;
    let nonce = Nonce::random()?;
    let mut out = Vec::with_capacity(ESCROW_BLOB_LEN);
    out.extend_from_slice(eph_pub.as_ref());
    out.extend_from_slice(&nonce.0);
    out.extend_from_slice(key.expose_secret());
    out.extend_from_slice(&[0u8; TAG_LEN]);
    seal_in_place(&ek, nonce, &aad(label), &mut out[44..])?;
    Ok(out)
}

/// Open an escrow blob with the reassembled KBK private scalar.
pub fn escrow_open(kbk_secret: &[u8; 32], label: &str, blob: &[u8]) -> Result<DataKey, CryptoError> {
    if blob.len() != ESCROW_BLOB_LEN {
        return Err(CryptoError::Authentication);
    }
    let sk = PrivateKey::from_private_key(&X25519, kbk_secret).map_err(|_| CryptoError::Length("X25519 key"))?;
    let kbk_pub = kbk_public(kbk_secret)?;
    let ek =
        agreement::agree(&sk, UnparsedPublicKey::new(&X25519, &blob[..32]), CryptoError::Authentication, |shared| {
            Ok(derive(shared, &blob[..32], &kbk_pub))
        })?;
    let nonce = Nonce(blob[32..44].try_into().expect("12 bytes"));
    let mut body = Zeroizing::new(blob[44..].to_vec());
    let plain = open_in_place(&ek, nonce, &aad(label), &mut body)?;
    DataKey::from_slice(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shamir;

    #[test]
    fn escrow_round_trip_through_shares() {
        let (public, secret) = kbk_generate().unwrap();
        let shares = shamir::split(&secret, 2, 3).unwrap();
        drop(secret);
        let key = DataKey::generate().unwrap();
        let blob = escrow_seal(&public, "DSET.PRIM.A.key001", &key).unwrap();
        assert_eq!(blob.len(), ESCROW_BLOB_LEN);
        let back = shamir::combine(&[shares[2].clone(), shares[0].clone()]).unwrap();
        assert_eq!(kbk_public(&back).unwrap(), public, "reassembled KBK matches its public key");
        assert_eq!(escrow_open(&back, "DSET.PRIM.A.key001", &blob).unwrap(), key);
        // Bound to its label, and tamper-evident.
        assert!(escrow_open(&back, "DSET.PRIM.A.key002", &blob).is_err());
        let mut bad = blob.clone();
        bad[60] ^= 1;
        assert!(escrow_open(&back, "DSET.PRIM.A.key001", &bad).is_err());
        let (_, other) = kbk_generate().unwrap();
        assert!(escrow_open(&other, "DSET.PRIM.A.key001", &blob).is_err());
    }
}
