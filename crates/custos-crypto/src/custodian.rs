//! Sealing to a custodian's own X25519 key pair.
//!
//! A custodian makes a key pair on their own machine (`custos escrow
//! keygen`) and registers only the public half, the *recipient*. Escrow
//! shares are sealed to recipients when a key-backup key is made, so the
//! server never hands anyone a share in the clear and no principal ever
//! holds someone else's share.
//!
//! Sealing (ECIES, as for escrow copies but with its own HKDF info): an
//! ephemeral X25519 key agrees with the recipient; HKDF-SHA256 (salt =
//! ephemeral public ‖ recipient, info `custos/v1/sealed-to-custodian`)
//! gives an AES-256-GCM key; the caller's associated data binds the blob
//! to what it is for. Blob: ephemeral public (32) ‖ nonce (12) ‖
//! ciphertext ‖ tag (16).
//!
//! A recipient is written `custos-recipient-v1:` + 64 hex digits + `:` + 8
//! hex digits of check (SHA-256 of the key), so a mistyped or truncated
//! recipient is refused rather than sealed to.

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use aws_lc_rs::{digest, hkdf};
use zeroize::Zeroizing;

use crate::{open_in_place, random_array, seal_in_place, CryptoError, DataKey, Nonce, TAG_LEN};

const PREFIX: &str = "custos-recipient-v1:";
const INFO: &[u8] = b"custos/v1/sealed-to-custodian";
/// Bytes a sealed blob adds to its plaintext.
pub const SEALED_OVERHEAD: usize = 32 + 12 + TAG_LEN;

/// A new custodian key pair: the recipient (public) and the private scalar.
pub fn custodian_keypair() -> Result<([u8; 32], Zeroizing<[u8; 32]>), CryptoError> {
    let secret = Zeroizing::new(random_array::<32>()?);
    let public = crate::kbk_public(&secret)?;
    Ok((public, secret))
}

fn check(public: &[u8; 32]) -> String {
    let d = digest::digest(&digest::SHA256, public);
    hex::encode(&d.as_ref()[..4])
}

/// A recipient as text.
pub fn recipient_to_text(public: &[u8; 32]) -> String {
    format!("{PREFIX}{}:{}", hex::encode(public), check(public))
}

/// Parse a recipient written by [`recipient_to_text`].
pub fn recipient_from_text(text: &str) -> Result<[u8; 32], CryptoError> {
    let bad = CryptoError::Recipient;
    let rest = text.trim().strip_prefix(PREFIX).ok_or(bad)?;
    let (key, sum) = rest.split_once(':').ok_or(CryptoError::Recipient)?;
    let mut public = [0u8; 32];
    hex::decode_to_slice(key, &mut public).map_err(|_| CryptoError::Recipient)?;
    if !constant_time_eq(sum.as_bytes(), check(&public).as_bytes()) || public == [0u8; 32] {
        return Err(CryptoError::Recipient);
    }
    Ok(public)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn derive(shared: &[u8], eph_pub: &[u8], recipient: &[u8]) -> DataKey {
    let salt = [eph_pub, recipient].concat();
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt).extract(shared);
    let mut k = Zeroizing::new([0u8; 32]);
    prk.expand(&[INFO], hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut k[..]))
        .expect("HKDF-SHA256 can always produce 32 bytes");
    DataKey::from_bytes(*k)
}

/// Seal `plaintext` to `recipient`, bound to `aad`.
pub fn seal_to(recipient: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let eph = PrivateKey::generate(&X25519).map_err(|_| CryptoError::Random)?;
    let eph_pub = eph.compute_public_key().map_err(|_| CryptoError::Random)?;
    let key = agreement::agree(&eph, UnparsedPublicKey::new(&X25519, recipient), CryptoError::Recipient, |shared| {
        Ok(derive(shared, eph_pub.as_ref(), recipient))
    })?;
    let nonce = Nonce::random()?;
    let mut out = Vec::with_capacity(plaintext.len() + SEALED_OVERHEAD);
    out.extend_from_slice(eph_pub.as_ref());
    out.extend_from_slice(&nonce.0);
    out.extend_from_slice(plaintext);
    out.extend_from_slice(&[0u8; TAG_LEN]);
    seal_in_place(&key, nonce, aad, &mut out[44..])?;
    Ok(out)
}

/// Open a blob sealed by [`seal_to`] with the recipient's private scalar.
pub fn open_sealed(secret: &[u8; 32], aad: &[u8], blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if blob.len() < SEALED_OVERHEAD {
        return Err(CryptoError::Authentication);
    }
    let sk = PrivateKey::from_private_key(&X25519, secret).map_err(|_| CryptoError::Length("X25519 key"))?;
    let recipient = crate::kbk_public(secret)?;
    let key = agreement::agree(&sk, UnparsedPublicKey::new(&X25519, &blob[..32]), CryptoError::Authentication, |s| {
        Ok(derive(s, &blob[..32], &recipient))
    })?;
    let nonce = Nonce(blob[32..44].try_into().expect("12 bytes"));
    let mut body = Zeroizing::new(blob[44..].to_vec());
    let n = open_in_place(&key, nonce, aad, &mut body)?.len();
    body.truncate(n);
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_to_one_recipient_opens_only_with_its_key_and_context() {
        let (alice, alice_sk) = custodian_keypair().unwrap();
        let (_, bob_sk) = custodian_keypair().unwrap();
        let blob = seal_to(&alice, b"kbk-1/alice", b"a share").unwrap();
        assert_eq!(blob.len(), 7 + SEALED_OVERHEAD);
        assert_eq!(&open_sealed(&alice_sk, b"kbk-1/alice", &blob).unwrap()[..], b"a share");
        assert!(open_sealed(&bob_sk, b"kbk-1/alice", &blob).is_err(), "another custodian's key");
        assert!(open_sealed(&alice_sk, b"kbk-1/bob", &blob).is_err(), "another context");
        for i in [0, 40, blob.len() - 1] {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            assert!(open_sealed(&alice_sk, b"kbk-1/alice", &bad).is_err(), "byte {i} altered");
        }
        assert!(open_sealed(&alice_sk, b"kbk-1/alice", &blob[..20]).is_err());
    }

    #[test]
    fn recipients_round_trip_and_refuse_typos() {
        let (public, _) = custodian_keypair().unwrap();
        let text = recipient_to_text(&public);
        assert_eq!(recipient_from_text(&format!(" {text}\n")).unwrap(), public);
        let flip = |i: usize| {
            let mut t = text.clone().into_bytes();
            t[i] = if t[i] == b'0' { b'1' } else { b'0' };
            String::from_utf8(t).unwrap()
        };
        for bad in
            [flip(PREFIX.len()), flip(text.len() - 1), text[..text.len() - 2].to_string(), text.replace("v1", "v2")]
        {
            assert!(recipient_from_text(&bad).is_err(), "{bad}");
        }
        let zero = recipient_to_text(&[0u8; 32]);
        assert!(recipient_from_text(&zero).is_err(), "the all-zero point is refused");
    }
}
