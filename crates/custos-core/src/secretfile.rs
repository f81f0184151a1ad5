//! The small text files custodians hold: master key parts (`mk make-part`)
//! and escrow shares (`escrow init`). Layouts in docs/format.md. Both are
//! a header line then `name: value` lines in a fixed order.

use custos_crypto::shamir::Share;
use custos_crypto::{Kcv, MasterKey};
use custos_hsm::KeyPart;
use zeroize::Zeroizing;

use crate::{Error, Result};

/// Reads a header line, then `name: value` lines in order.
struct Fields<'a> {
    lines: std::str::Lines<'a>,
    what: &'a str,
    kind: &'static str,
}

impl<'a> Fields<'a> {
    fn new(text: &'a str, header: &str, what: &'a str, kind: &'static str) -> Result<Self> {
        let mut lines = text.lines();
        let f = Self { lines: lines.clone(), what, kind };
        if lines.next() != Some(header) {
            return Err(f.bad(&format!("the first line must be `{header}`")));
        }
        Ok(Self { lines, ..f })
    }

    fn bad(&self, why: &str) -> Error {
        Error::Invalid { what: self.kind, why: format!("{} is not a valid {} file: {why}", self.what, self.kind) }
    }

    fn next(&mut self, name: &str) -> Result<String> {
        let prefix = format!("{name}: ");
        match self.lines.next().and_then(|l| l.strip_prefix(&prefix)) {
            Some(v) => Ok(v.trim().to_string()),
            None => Err(self.bad(&format!("expected a line `{name}: …`"))),
        }
    }

    /// A 64-hex-digit secret.
    fn secret32(&mut self, name: &str) -> Result<Zeroizing<[u8; 32]>> {
        let hex_value = Zeroizing::new(self.next(name)?);
        let mut out = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(hex_value.as_bytes(), &mut out[..])
            .map_err(|_| self.bad(&format!("the {name} must be 64 hex digits")))?;
        Ok(out)
    }
}

const PART_HEADER: &str = "custos key part v1";

/// A custodian's master key part, with its check value.
pub struct KeyPartFile(pub KeyPart);

impl KeyPartFile {
    /// A fresh random part for `custodian`.
    pub fn generate(custodian: &str) -> Result<Self> {
        if custodian.trim().is_empty() {
            return Err(Error::Invalid { what: "custodian", why: "give the custodian's name".into() });
        }
        let part = MasterKey::generate().map_err(|e| Error::Invalid { what: "key part", why: e.to_string() })?;
        let kcv = Kcv::of_master(&part);
        Ok(Self(KeyPart { custodian: custodian.into(), part, kcv }))
    }

    pub fn encode(&self) -> Zeroizing<String> {
        let p = &self.0;
        Zeroizing::new(format!(
            "{PART_HEADER}\ncustodian: {}\npart: {}\nkcv: {}\n",
            p.custodian,
            hex::encode(p.part.expose_secret()),
            p.kcv
        ))
    }

    /// Parse a part file; `what` names it in errors. The KCV is checked
    /// when the part is combined, so that the error names the custodian.
    pub fn decode(text: &str, what: &str) -> Result<Self> {
        let mut f = Fields::new(text, PART_HEADER, what, "key part")?;
        let custodian = f.next("custodian")?;
        if custodian.is_empty() {
            return Err(f.bad("the custodian is empty"));
        }
        let part = MasterKey::from_bytes(*f.secret32("part")?);
        let kcv = Kcv::from_hex(&f.next("kcv")?).map_err(|_| f.bad("the kcv must be 10 hex digits"))?;
        Ok(Self(KeyPart { custodian, part, kcv }))
    }
}

const SHARE_HEADER: &str = "custos escrow share v1";

/// A custodian's share of a key-backup key.
pub struct ShareFile {
    pub kbk: String,
    pub custodian: String,
    pub threshold: u8,
    pub share: Share,
}

fn share_check(kbk: &str, share: &Share) -> String {
    use aws_lc_rs::digest;
    let mut d = digest::Context::new(&digest::SHA256);
    d.update(b"custos-share-v1");
    d.update(kbk.as_bytes());
    d.update(&[share.x]);
    d.update(&share.y);
    hex::encode(&d.finish().as_ref()[..8])
}

impl ShareFile {
    /// A copy (shares are secret and not `Clone` by accident).
    pub fn clone_share(&self) -> Self {
        Self {
            kbk: self.kbk.clone(),
            custodian: self.custodian.clone(),
            threshold: self.threshold,
            share: self.share.clone(),
        }
    }

    pub fn encode(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{SHARE_HEADER}\nkbk: {}\ncustodian: {}\nthreshold: {}\nx: {}\nshare: {}\ncheck: {}\n",
            self.kbk,
            self.custodian,
            self.threshold,
            self.share.x,
            hex::encode(self.share.y),
            share_check(&self.kbk, &self.share)
        ))
    }

    /// Parse a share file; `what` names it in errors.
    pub fn decode(text: &str, what: &str) -> Result<Self> {
        let mut f = Fields::new(text, SHARE_HEADER, what, "escrow share")?;
        let kbk = f.next("kbk")?;
        let custodian = f.next("custodian")?;
        let threshold = f.next("threshold")?.parse().map_err(|_| f.bad("bad threshold"))?;
        let x: u8 = f.next("x")?.parse().map_err(|_| f.bad("bad x"))?;
        let share = Share { x, y: *f.secret32("share")? };
        if share_check(&kbk, &share) != f.next("check")? {
            return Err(f.bad("its check value does not match: the share was mistyped or altered"));
        }
        Ok(Self { kbk, custodian, threshold, share })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_files_round_trip_and_reject_damage() {
        let p = KeyPartFile::generate("alice").unwrap();
        let text = p.encode();
        let back = KeyPartFile::decode(&text, "alice.part").unwrap();
        assert_eq!(back.0.part, p.0.part);
        assert_eq!((back.0.custodian.as_str(), back.0.kcv), ("alice", p.0.kcv));
        for bad in [
            text.replace("custos key part v1", "x"),
            text.replace("part: ", "parts: "),
            text.replacen(&text[text.find("part: ").unwrap() + 6..][..2], "zz", 1),
        ] {
            let e = KeyPartFile::decode(&bad, "alice.part").err().expect("damaged file refused");
            assert!(e.to_string().contains("alice.part is not a valid key part file"), "{e}");
        }
        assert!(KeyPartFile::generate(" ").is_err());
    }
}
