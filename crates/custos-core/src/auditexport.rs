//! The audit log exported to a volume (issue 13, item 2): segments of
//! entries written once (a tape volume refuses to replace one), so that a
//! catalog and HSM file rolled back together, or a log rewritten by whoever
//! holds the HSM, still disagree with what left the vault earlier.
//! Layout in docs/format.md, "Audit segment".

use custos_model::VolumeName;
use custos_repo::AuditRow;
use custos_store::audit_segment::{self, parse_id, segment_id, Line};
use custos_store::Kept;
use serde::Serialize;

use crate::{Error, Result, Vault, VaultState};

/// What `audit export --to` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct AuditExported {
    pub volume: String,
    /// The segment written (`None`: every entry was exported already).
    pub segment: Option<String>,
    #[serde(rename = "first_seq")]
    pub first: u64,
    #[serde(rename = "last_seq")]
    pub last: u64,
    #[serde(rename = "entry_count")]
    pub entries: u64,
}

/// What `audit verify --against` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditComparison {
    pub volume: String,
    #[serde(rename = "segment_count")]
    pub segments: u64,
    /// Entries on the volume, and the last of them.
    #[serde(rename = "exported_count")]
    pub exported: u64,
    #[serde(rename = "through_seq")]
    pub through: u64,
    /// Catalog entries after that: not exported yet.
    #[serde(rename = "not_exported_count")]
    pub not_exported: u64,
    /// Each entry that differs or is missing, by number.
    pub problems: Vec<String>,
}

/// An audit row as a segment line holds it.
fn line_of(r: &AuditRow) -> Line {
    Line {
        seq: r.seq,
        at: r.at,
        principal: r.principal.clone(),
        action: r.action.clone(),
        object: r.object.clone(),
        result: r.result.clone(),
        hash: hex::encode(r.hash),
        keyed: r.keyed,
    }
}

type VolumeHandle = std::sync::Arc<dyn custos_store::Volume>;
/// A segment on a volume: its first and last entry, and its id.
pub(crate) type Segment = (u64, u64, String);

impl<S: VaultState> Vault<S> {
    /// The volume, and its segments (first entry, last entry, id) in order.
    fn audit_segments(&self, volume: &VolumeName) -> Result<(VolumeHandle, Vec<Segment>)> {
        let vol = self.open_volume(volume)?;
        let mut segs: Vec<Segment> = vol
            .list_kept(Kept::AuditSegment)?
            .into_iter()
            .filter_map(|id| parse_id(&id).map(|(a, b)| (a, b, id)))
            .collect();
        segs.sort();
        Ok((vol, segs))
    }

    /// Write the entries not yet on `volume` as one new segment, read it
    /// back, and compare. Which entries are new is read from the volume,
    /// not from the catalog.
    pub fn audit_export_to(&self, volume: &VolumeName) -> Result<AuditExported> {
        let (vol, segs) = self.audit_segments(volume)?;
        let done = segs.iter().map(|s| s.1).max().unwrap_or(0);
        let rows = self.repo.audit_rows(done)?;
        let (Some(first), Some(last)) = (rows.first().map(|r| r.seq), rows.last().map(|r| r.seq)) else {
            return Ok(AuditExported { volume: volume.to_string(), segment: None, first: 0, last: done, entries: 0 });
        };
        let mut out = Vec::with_capacity(rows.len() * 200);
        for r in &rows {
            serde_json::to_writer(&mut out, &line_of(r)).expect("entries serialize");
            out.push(b'\n');
        }
        let id = segment_id(first, last);
        vol.put_kept(Kept::AuditSegment, &id, &out)?;
        if vol.read_kept(Kept::AuditSegment, &id)? != out {
            return Err(Error::Invalid {
                what: "audit export",
                why: format!("segment {id} on volume {volume} does not read back as written: check the volume"),
            });
        }
        Ok(AuditExported { volume: volume.to_string(), segment: Some(id), first, last, entries: rows.len() as u64 })
    }

    /// Compare the catalog's log with every segment on `volume`: each entry
    /// exported must still be in the catalog as it was.
    pub fn audit_compare(&self, volume: &VolumeName) -> Result<AuditComparison> {
        let (vol, segs) = self.audit_segments(volume)?;
        let catalog = self.repo.audit_rows(0)?;
        compare(volume.as_str(), &segs, &catalog, |id| Ok(vol.read_kept(Kept::AuditSegment, id)?))
    }
}

/// Compare the catalog's log with `segs`, each read by `read`: every entry
/// exported must still be in the catalog as it was. Segments come from a
/// volume, so nothing in them is trusted: a line that is not an entry, or
/// ids at the ends of the number range, are reported or borne, never a panic.
pub(crate) fn compare(
    volume: &str,
    segs: &[Segment],
    catalog: &[AuditRow],
    mut read: impl FnMut(&str) -> Result<Vec<u8>>,
) -> Result<AuditComparison> {
    let by_seq: std::collections::HashMap<u64, &AuditRow> = catalog.iter().map(|r| (r.seq, r)).collect();
    let mut c = AuditComparison { volume: volume.to_string(), segments: segs.len() as u64, ..Default::default() };
    let mut next = 1u64;
    for (first, last, id) in segs {
        if *first > next {
            c.problems
                .push(format!("entries {next} to {} are in no segment on {volume}: a segment was removed", first - 1));
        }
        let bytes = read(id)?;
        let mut held = 0u64;
        for (i, l) in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).enumerate() {
            let Some(line) = audit_segment::line(l) else {
                c.problems.push(format!("segment {id} line {} is not an audit entry: the segment was altered", i + 1));
                continue;
            };
            if line.seq < *first || line.seq > *last {
                c.problems.push(format!(
                    "segment {id} holds entry {}, outside the entries its name says: the segment was altered",
                    line.seq
                ));
            }
            held += 1;
            c.exported += 1;
            c.through = c.through.max(line.seq);
            match by_seq.get(&line.seq) {
                None => c.problems.push(format!(
                    "entry {} ({} {} by {}) was exported but is not in the catalog: it was deleted or cut",
                    line.seq, line.action, line.object, line.principal
                )),
                Some(r) if line_of(r) != line => c.problems.push(format!(
                    "entry {} differs from its exported copy (exported: {} {} by {}, {}): it was changed",
                    line.seq, line.action, line.object, line.principal, line.result
                )),
                Some(_) => {}
            }
        }
        // A segment holds every entry its name covers, once each.
        if Some(held) != (last - first).checked_add(1) {
            c.problems.push(format!(
                "segment {id} holds {held} entries where its name says {first} to {last}: the segment was altered or renamed"
            ));
        }
        next = next.max(last.saturating_add(1));
    }
    c.not_exported = catalog.iter().filter(|r| r.seq > c.through).count() as u64;
    Ok(c)
}
