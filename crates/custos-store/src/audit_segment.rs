//! Audit segments (`audit export --to`, docs/format.md): JSON Lines, one
//! exported audit entry per line, named by the first and last entry they
//! hold. Read back by `audit verify --against`, which trusts nothing in
//! them.

use serde::{Deserialize, Serialize};

/// One exported entry: every field the chain covers, and the link.
#[derive(Serialize, Deserialize, PartialEq, Eq)]
pub struct Line {
    pub seq: u64,
    pub at: jiff::Timestamp,
    pub principal: String,
    pub action: String,
    pub object: String,
    pub result: String,
    pub hash: String,
    pub keyed: bool,
}

/// A segment's id: its first and last entry, zero-padded so ids sort.
pub fn segment_id(first: u64, last: u64) -> String {
    format!("{first:020}-{last:020}")
}

/// A segment id's first and last entry; `None` for a name that is not one
/// (including a range that runs backwards).
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (a, b) = id.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) {
        return None;
    }
    let (first, last) = (a.parse().ok()?, b.parse().ok()?);
    (first <= last).then_some((first, last))
}

/// One line of a segment as an entry, or `None` when it is not one.
pub fn line(bytes: &[u8]) -> Option<Line> {
    serde_json::from_slice(bytes).ok()
}
