//! Vault backup objects (ADR 0018; docs/format.md, "Vault backup"): magic,
//! version, a JSON header, the software HSM's file as it is, then the
//! catalog sealed in 1 MiB AES-256-GCM segments. What the engine writes and
//! reads back; nothing in an object is trusted until it parses here.

use aws_lc_rs::digest;
use custos_crypto::{DataKey, Nonce, TAG_LEN};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"CUSTOSVB";
pub const VERSION: u8 = 1;
pub const SEGMENT: usize = 1 << 20;

/// What a vault backup's header says (in clear: nothing secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub id: String,
    pub vault_id: String,
    pub created_at: Timestamp,
    /// The last audit entry the copied catalog holds.
    pub audit_seq: u64,
    /// "soft" (the HSM file follows) or "pkcs11" (the token holds the keys).
    pub hsm: String,
    pub hsm_len: u64,
    /// SHA-256 of the HSM file's bytes, hex.
    pub hsm_sha256: String,
    /// The catalog's key, wrapped under this master key.
    pub mkvp: String,
    pub kcv: String,
    pub wrapped: String,
    pub catalog_len: u64,
    /// On a PKCS#11 vault, the module and token its keys are on (the token
    /// outlives the vault directory; recovery opens it with the PIN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs11_module: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs11_token: Option<String>,
    /// The token's master keys when the backup was taken ("CURRENT <MKVP>"…).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registers: Vec<String>,
}

fn nonce(i: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&i.to_be_bytes());
    Nonce(n)
}

fn aad(header_digest: &[u8], i: u64, last: bool) -> Vec<u8> {
    let mut a = b"custos-vault-backup-v1".to_vec();
    a.extend_from_slice(header_digest);
    a.extend_from_slice(&i.to_be_bytes());
    a.push(last as u8);
    a
}

pub fn sha256(b: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, b).as_ref().to_vec()
}

/// Seal `catalog` after `prefix` (magic, version, header) under `key`.
fn seal_catalog(prefix: &[u8], key: &DataKey, catalog: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let hd = sha256(prefix);
    let n = catalog.len().div_ceil(SEGMENT).max(1);
    for i in 0..n {
        let part = &catalog[(i * SEGMENT).min(catalog.len())..((i + 1) * SEGMENT).min(catalog.len())];
        let start = out.len();
        out.extend_from_slice(part);
        out.extend_from_slice(&[0u8; TAG_LEN]);
        custos_crypto::seal_in_place(key, nonce(i as u64), &aad(&hd, i as u64, i + 1 == n), &mut out[start..])
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A backup object: magic, version, header length and header, the HSM
/// file, then the catalog sealed under `key` in segments.
pub fn encode(header: &Header, hsm_bytes: &[u8], key: &DataKey, catalog: &[u8]) -> Result<Vec<u8>, String> {
    let hjson = serde_json::to_vec(header).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(13 + hjson.len() + hsm_bytes.len() + catalog.len() + TAG_LEN * 2);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(hjson.len() as u32).to_be_bytes());
    out.extend_from_slice(&hjson);
    let prefix_len = out.len();
    out.extend_from_slice(hsm_bytes);
    let prefix = out[..prefix_len].to_vec();
    seal_catalog(&prefix, key, catalog, &mut out)?;
    Ok(out)
}

/// A backup's parts, parsed and checked for shape (not yet opened).
pub struct Parsed<'a> {
    pub header: Header,
    pub prefix: &'a [u8],
    pub hsm: &'a [u8],
    pub sealed: &'a [u8],
}

pub fn parse(bytes: &[u8]) -> Result<Parsed<'_>, String> {
    let not = || "it is not a Custos vault backup, or it is damaged: use another one".to_string();
    if bytes.len() < 13 || &bytes[..8] != MAGIC {
        return Err(not());
    }
    if bytes[8] != VERSION {
        return Err(format!("it has format version {}, which this Custos does not read: upgrade Custos", bytes[8]));
    }
    let hlen = u32::from_be_bytes(bytes[9..13].try_into().expect("4 bytes")) as usize;
    let hend = 13usize.checked_add(hlen).filter(|e| *e <= bytes.len()).ok_or_else(not)?;
    let header: Header = serde_json::from_slice(&bytes[13..hend]).map_err(|_| not())?;
    let hsm_end = usize::try_from(header.hsm_len)
        .ok()
        .and_then(|l| hend.checked_add(l))
        .filter(|e| *e <= bytes.len())
        .ok_or_else(not)?;
    let hsm = &bytes[hend..hsm_end];
    if hex::encode(sha256(hsm)) != header.hsm_sha256 {
        return Err("its HSM file does not match its header: the backup was altered or damaged; use another one".into());
    }
    // Checked arithmetic: the header is input like any other.
    let catalog_len = usize::try_from(header.catalog_len).map_err(|_| not())?;
    let sealed_len = catalog_len
        .div_ceil(SEGMENT)
        .max(1)
        .checked_mul(TAG_LEN)
        .and_then(|t| t.checked_add(catalog_len))
        .ok_or_else(not)?;
    if bytes.len() - hsm_end != sealed_len {
        return Err(not());
    }
    Ok(Parsed { header, prefix: &bytes[..hend], hsm, sealed: &bytes[hsm_end..] })
}

/// Open the sealed catalog of a parsed backup under `key`.
pub fn open_catalog(p: &Parsed<'_>, key: &DataKey) -> Result<Vec<u8>, String> {
    let hd = sha256(p.prefix);
    let mut out = Vec::with_capacity(p.header.catalog_len as usize);
    let mut rest = p.sealed.to_vec();
    let n = (p.header.catalog_len as usize).div_ceil(SEGMENT).max(1);
    let mut at = 0;
    for i in 0..n {
        let len = (p.header.catalog_len as usize - i * SEGMENT).min(SEGMENT) + TAG_LEN;
        let seg = &mut rest[at..at + len];
        let plain =
            custos_crypto::open_in_place(key, nonce(i as u64), &aad(&hd, i as u64, i + 1 == n), seg).map_err(|_| {
                "its catalog does not open under its key: the backup was altered or damaged; use another one"
                    .to_string()
            })?;
        out.extend_from_slice(plain);
        at += len;
    }
    Ok(out)
}
