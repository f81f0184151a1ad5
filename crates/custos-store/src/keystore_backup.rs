//! Keystore backup objects (docs/format.md, "Keystore backup"): a JSON
//! header line, then one JSON line per key, each key wrapped as the
//! keystore holds it. Written by `keystore backup`, read by recovery and
//! by the risk model, which trusts nothing in it until it parses here.

use custos_model::{KeyAttributes, KeyState, Purpose};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "custos-keystore-backup";

/// First line of a backup object.
#[derive(Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub id: String,
    pub created_at: Timestamp,
    pub keys: u64,
}

/// One key in a backup object (JSON Lines after the header).
#[derive(Serialize, Deserialize)]
pub struct BackedUpKey {
    pub label: String,
    pub state: KeyState,
    pub purpose: Purpose,
    pub app: String,
    pub mkvp: String,
    pub kcv: String,
    pub wrapped: String,
    pub created_at: Timestamp,
    pub activated_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    /// The key's escrow copy, so that losing the keystore does not lose it
    /// too: the key-backup key's id, and the sealed copy (hex). Absent in
    /// backups written before, and for keys without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escrow_kbk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escrow: Option<String>,
    /// What KMIP clients recorded (names, a shorter key's length): absent
    /// when none, and in backups written before.
    #[serde(default, skip_serializing_if = "KeyAttributes::is_empty")]
    pub attributes: KeyAttributes,
}

/// A keystore backup object's keys; the error says what is wrong with it.
pub fn parse(bytes: &[u8]) -> std::result::Result<Vec<BackedUpKey>, String> {
    let mut lines = bytes.split(|c| *c == b'\n').filter(|l| !l.is_empty());
    let header: Header =
        lines.next().and_then(|l| serde_json::from_slice(l).ok()).ok_or_else(|| "has no valid header".to_string())?;
    if header.format != FORMAT || header.version != 1 {
        return Err(format!("is format {} version {}, which this Custos cannot read", header.format, header.version));
    }
    let keys: Vec<BackedUpKey> = lines
        .map(|l| serde_json::from_slice(l).map_err(|e| format!("has a bad key line ({e})")))
        .collect::<std::result::Result<_, _>>()?;
    if keys.len() as u64 != header.keys {
        return Err(format!("holds {} keys where its header says {}: it was cut", keys.len(), header.keys));
    }
    Ok(keys)
}

/// A keystore backup object as written: its header line, then a line per key.
pub fn encode(id: &str, created_at: Timestamp, keys: &[BackedUpKey]) -> Vec<u8> {
    let h = Header { format: FORMAT.into(), version: 1, id: id.into(), created_at, keys: keys.len() as u64 };
    let mut out = Vec::with_capacity(keys.len() * 300 + 200);
    json_line(&mut out, &h);
    for k in keys {
        json_line(&mut out, k);
    }
    out
}

fn json_line<T: Serialize>(out: &mut Vec<u8>, v: &T) {
    serde_json::to_writer(&mut *out, v).expect("backup records serialize");
    out.push(b'\n');
}
