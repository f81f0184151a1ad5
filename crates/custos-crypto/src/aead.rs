use aws_lc_rs::aead::{self, Aad, LessSafeKey, UnboundKey, AES_256_GCM};

use crate::{secret::random_array, CryptoError, DataKey};

/// AES-GCM nonce length (96 bits).
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length (128 bits).
pub const TAG_LEN: usize = 16;

/// A 96-bit GCM nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nonce(pub [u8; NONCE_LEN]);

impl Nonce {
    /// A fresh random nonce. With random nonces a key may seal at most 2^32
    /// messages (NIST SP 800-38D §8.3); at 1 MiB a chunk that is 4 PiB per key.
    pub fn random() -> Result<Self, CryptoError> {
        Ok(Self(random_array()?))
    }
}

fn less_safe_key(key: &[u8]) -> LessSafeKey {
    let unbound = UnboundKey::new(&AES_256_GCM, key).expect("AES-256 key is 32 bytes");
    LessSafeKey::new(unbound)
}

/// Seal `buf[..len - TAG_LEN]` in place with AES-256-GCM and write the tag into
/// the last [`TAG_LEN`] bytes of `buf`.
pub fn seal_in_place(key: &DataKey, nonce: Nonce, aad: &[u8], buf: &mut [u8]) -> Result<(), CryptoError> {
    seal_with_raw_key(key.expose_secret(), nonce, aad, buf)
}

/// [`seal_in_place`] under a passphrase-derived key.
pub fn seal_with_passphrase_key(
    key: &crate::PassphraseKey,
    nonce: Nonce,
    aad: &[u8],
    buf: &mut [u8],
) -> Result<(), CryptoError> {
    seal_with_raw_key(key.expose_secret(), nonce, aad, buf)
}

/// [`open_in_place`] under a passphrase-derived key.
pub fn open_with_passphrase_key<'a>(
    key: &crate::PassphraseKey,
    nonce: Nonce,
    aad: &[u8],
    buf: &'a mut [u8],
) -> Result<&'a mut [u8], CryptoError> {
    open_with_raw_key(key.expose_secret(), nonce, aad, buf)
}

fn seal_with_raw_key(key: &[u8], nonce: Nonce, aad: &[u8], buf: &mut [u8]) -> Result<(), CryptoError> {
    let split = buf.len().checked_sub(TAG_LEN).ok_or(CryptoError::Length("buffer shorter than the tag"))?;
    let (data, tag_out) = buf.split_at_mut(split);
    let tag = less_safe_key(key)
        .seal_in_place_separate_tag(aead::Nonce::assume_unique_for_key(nonce.0), Aad::from(aad), data)
        .map_err(|_| CryptoError::Length("message too long for AES-GCM"))?;
    tag_out.copy_from_slice(tag.as_ref());
    Ok(())
}

/// Open a buffer produced by [`seal_in_place`]. On success returns the
/// plaintext prefix of `buf`; on failure the buffer contents are unspecified.
pub fn open_in_place<'a>(
    key: &DataKey,
    nonce: Nonce,
    aad: &[u8],
    buf: &'a mut [u8],
) -> Result<&'a mut [u8], CryptoError> {
    open_with_raw_key(key.expose_secret(), nonce, aad, buf)
}

fn open_with_raw_key<'a>(key: &[u8], nonce: Nonce, aad: &[u8], buf: &'a mut [u8]) -> Result<&'a mut [u8], CryptoError> {
    if buf.len() < TAG_LEN {
        return Err(CryptoError::Authentication);
    }
    less_safe_key(key)
        .open_in_place(aead::Nonce::assume_unique_for_key(nonce.0), Aad::from(aad), buf)
        .map_err(|_| CryptoError::Authentication)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    struct Vector {
        key: &'static str,
        iv: &'static str,
        aad: &'static str,
        pt: &'static str,
        ct: &'static str,
        tag: &'static str,
    }

    /// AES-256 test cases 13 to 16 from McGrew & Viega, "The Galois/Counter
    /// Mode of Operation (GCM)", the vectors NIST publishes with SP 800-38D.
    const NIST: &[Vector] = &[
        Vector {
            key: "0000000000000000000000000000000000000000000000000000000000000000",
            iv: "000000000000000000000000",
            aad: "",
            pt: "",
            ct: "",
            tag: "530f8afbc74536b9a963b4f1c4cb738b",
        },
        Vector {
            key: "0000000000000000000000000000000000000000000000000000000000000000",
            iv: "000000000000000000000000",
            aad: "",
            pt: "00000000000000000000000000000000",
            ct: "cea7403d4d606b6e074ec5d3baf39d18",
            tag: "d0d1c8a799996bf0265b98b5d48ab919",
        },
        Vector {
            key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            iv: "cafebabefacedbaddecaf888",
            aad: "",
            pt: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
            ct: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
            tag: "b094dac5d93471bdec1a502270e3cc6c",
        },
        Vector {
            key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            iv: "cafebabefacedbaddecaf888",
            aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            pt: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
            ct: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            tag: "76fc6ece0f4e1768cddf8853bb2d551b",
        },
    ];

    #[test]
    fn nist_gcm_vectors_seal_and_open() {
        for (i, v) in NIST.iter().enumerate() {
            let key = DataKey::from_slice(&h(v.key)).unwrap();
            let nonce = Nonce(h(v.iv).try_into().unwrap());
            let aad = h(v.aad);
            let mut buf = h(v.pt);
            buf.extend_from_slice(&[0; TAG_LEN]);
            seal_in_place(&key, nonce, &aad, &mut buf).unwrap();
            let mut expect = h(v.ct);
            expect.extend_from_slice(&h(v.tag));
            assert_eq!(hex::encode(&buf), hex::encode(&expect), "vector {i}");
            let pt = open_in_place(&key, nonce, &aad, &mut buf).unwrap();
            assert_eq!(pt, &h(v.pt)[..], "vector {i}");
        }
    }

    #[test]
    fn fail_any_flipped_bit_or_wrong_aad_is_rejected() {
        let key = DataKey::generate().unwrap();
        let nonce = Nonce::random().unwrap();
        let mut sealed = b"chunk plaintext".to_vec();
        sealed.extend_from_slice(&[0; TAG_LEN]);
        seal_in_place(&key, nonce, b"aad", &mut sealed).unwrap();
        for bit in 0..sealed.len() * 8 {
            let mut b = sealed.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(open_in_place(&key, nonce, b"aad", &mut b).unwrap_err(), CryptoError::Authentication);
        }
        let mut b = sealed.clone();
        assert!(open_in_place(&key, nonce, b"aae", &mut b).is_err());
        let mut b = sealed.clone();
        assert!(open_in_place(&DataKey::generate().unwrap(), nonce, b"aad", &mut b).is_err());
        let mut b = sealed[..sealed.len() - 1].to_vec();
        assert!(open_in_place(&key, nonce, b"aad", &mut b).is_err());
        assert!(open_in_place(&key, nonce, b"aad", &mut [0u8; 3]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(proptest::num::u8::ANY, 0..4096), aad in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let key = DataKey::generate().unwrap();
            let nonce = Nonce::random().unwrap();
            let mut buf = data.clone();
            buf.extend_from_slice(&[0; TAG_LEN]);
            seal_in_place(&key, nonce, &aad, &mut buf).unwrap();
            let pt = open_in_place(&key, nonce, &aad, &mut buf).unwrap();
            proptest::prop_assert_eq!(&pt[..], &data[..]);
        }
    }
}

/// AES-GCM under a key of 16, 24 or 32 bytes (a client's key of any AES
/// length, KMIP Encrypt): `data` sealed in place, the tag returned.
pub fn gcm_seal_any(key: &[u8], nonce: Nonce, aad: &[u8], data: &mut [u8]) -> Result<[u8; TAG_LEN], CryptoError> {
    let tag = any_key(key)?
        .seal_in_place_separate_tag(aead::Nonce::assume_unique_for_key(nonce.0), Aad::from(aad), data)
        .map_err(|_| CryptoError::Length("the data is too long for one AES-GCM message"))?;
    tag.as_ref().try_into().map_err(|_| CryptoError::Length("a tag is 16 bytes"))
}

/// The reverse of [`gcm_seal_any`]: `data` opened in place when `tag`
/// authenticates it.
pub fn gcm_open_any(key: &[u8], nonce: Nonce, aad: &[u8], data: &mut Vec<u8>, tag: &[u8]) -> Result<(), CryptoError> {
    if tag.len() != TAG_LEN {
        return Err(CryptoError::Length("an AES-GCM tag is 16 bytes"));
    }
    let n = data.len();
    data.extend_from_slice(tag);
    let r = any_key(key)?
        .open_in_place(aead::Nonce::assume_unique_for_key(nonce.0), Aad::from(aad), data)
        .map(|p| p.len())
        .map_err(|_| CryptoError::Authentication);
    match r {
        Ok(len) => {
            data.truncate(len);
            Ok(())
        }
        Err(e) => {
            data.truncate(n);
            Err(e)
        }
    }
}

fn any_key(key: &[u8]) -> Result<LessSafeKey, CryptoError> {
    let alg = match key.len() {
        16 => &aead::AES_128_GCM,
        24 => &aead::AES_192_GCM,
        32 => &AES_256_GCM,
        _ => return Err(CryptoError::Length("an AES key is 16, 24 or 32 bytes")),
    };
    Ok(LessSafeKey::new(UnboundKey::new(alg, key).map_err(|_| CryptoError::Length("an AES key"))?))
}

#[cfg(test)]
mod any_key_tests {
    use super::*;

    /// NIST's GCM test case 3 (AES-128, 96-bit IV), and its 256-bit twin
    /// (case 15): the bytes a device computing GCM itself would get.
    #[test]
    fn known_answers_and_tampering() {
        let h = |s: &str| hex::decode(s).unwrap();
        let cases = [
            ("feffe9928665731c6d6a8f9467308308", "4d5c2af327cd64a62cf35abd2ba6fab4"),
            ("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308", "b094dac5d93471bdec1a502270e3cc6c"),
        ];
        let plain = h("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255");
        for (key, want_tag) in cases {
            let nonce = Nonce(h("cafebabefacedbaddecaf888").try_into().unwrap());
            let mut data = plain.clone();
            let tag = gcm_seal_any(&h(key), nonce, b"", &mut data).unwrap();
            assert_eq!(hex::encode(tag), want_tag);
            let sealed = data.clone();
            gcm_open_any(&h(key), nonce, b"", &mut data, &tag).unwrap();
            assert_eq!(data, plain);
            let mut bad = sealed.clone();
            bad[0] ^= 1;
            assert!(matches!(gcm_open_any(&h(key), nonce, b"", &mut bad, &tag), Err(CryptoError::Authentication)));
            assert_eq!(bad.len(), sealed.len(), "a refused open leaves the data as it was");
            assert!(gcm_open_any(&h(key), nonce, b"other", &mut sealed.clone(), &tag).is_err(), "aad is bound");
        }
        assert!(gcm_seal_any(&[0; 20], Nonce([0; 12]), b"", &mut []).is_err());
    }
}
