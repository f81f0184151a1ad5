//! The graph, read from a vault.

use std::collections::HashMap;

use custos_core::model::{CopyMethod, DatasetRecord, KeyRecord, KeyState, Medium, Pattern};
use custos_core::{KeystoreBackupContents, Open, Vault, VaultState};

use crate::model::{
    CopyKind, CopyNode, DatasetNode, EscrowNode, Graph, KeyNode, KeystoreBackupNode, VaultBackupNode, VolumeNode,
};
use crate::Result;

/// Build the graph of the datasets matching `pattern` (all when `None`).
/// `held` are the MKVPs the HSM holds (from an open vault, or as last seen).
pub fn graph<S: VaultState>(v: &Vault<S>, pattern: Option<&Pattern>, held: Vec<String>) -> Result<Graph> {
    build(v, pattern, held, |_| None)
}

/// Build the graph of an open vault, with every key the HSM can check
/// checked: its material must unwrap to the key its check value names. A
/// key that does not is counted damaged, not present.
pub fn checked_graph(v: &Vault<Open>, pattern: Option<&Pattern>) -> Result<Graph> {
    let held = v.held_mkvps()?;
    let hex = held.clone();
    let mut g = build(v, pattern, held, |k| {
        (k.wrapped.is_some() && hex.contains(&k.mkvp.to_hex())).then(|| v.check_key(k).err().map(|e| e.to_string()))?
    })?;
    g.keys_checked = true;
    Ok(g)
}

/// The graph; `damage` says why a key's record is damaged, when it is.
fn build<S: VaultState>(
    v: &Vault<S>,
    pattern: Option<&Pattern>,
    held: Vec<String>,
    damage: impl Fn(&custos_core::model::KeyRecord) -> Option<String> + Sync,
) -> Result<Graph> {
    // The copies (the most rows by far) are read on a thread of their own;
    // the keys are read here a page at a time and checked in the HSM on a
    // third as they come, so neither the whole keystore's records nor its
    // checks wait on each other.
    let schedule: HashMap<String, jiff::Timestamp> =
        v.destroy_schedule()?.into_iter().map(|(l, t)| (l.to_string(), t)).collect();
    std::thread::scope(|scope| {
        let copies = scope.spawn(|| copies(v, pattern));
        let (pages, inbox) = std::sync::mpsc::sync_channel::<Vec<KeyRecord>>(2);
        let (schedule, damage) = (&schedule, &damage);
        let checker = scope.spawn(move || {
            let mut keys = HashMap::new();
            let mut apps = HashMap::new();
            for k in inbox.into_iter().flatten() {
                let label = k.label.to_string();
                let node = KeyNode {
                    present: k.wrapped.is_some() && k.state != KeyState::Destroyed,
                    escrowed: k.escrow.is_some(),
                    mkvp: k.mkvp.to_hex(),
                    created_at: k.created_at,
                    destroyed_at: k.destroyed_at,
                    state: k.state.to_string(),
                    destroy_after: schedule.get(&label).copied(),
                    damaged: damage(&k),
                    expires_at: k.expires_at,
                };
                apps.insert(label.clone(), k.app);
                keys.insert(label, node);
            }
            (keys, apps)
        });
        // The checker stops only by panicking: its join says so.
        let read = paged(
            |after: &String| v.keys_page(None, Some(after), PAGE),
            |k| k.label.to_string(),
            |page| pages.send(page).is_ok(),
        );
        drop(pages);
        let (keys, apps) = checker.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        read?;
        let g = build_rest(v, Graph { held_mkvps: held, keys, ..Default::default() })?;
        let copies = copies.join().unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        with_datasets(v, pattern, g, &apps, copies)
    })
}

/// Rows read from the catalog at a time.
const PAGE: usize = 4096;

/// Read a listing a page of [`PAGE`] rows at a time: `fetch(cursor)` gives
/// the page after a cursor (the default cursor: from the start), `cursor`
/// the cursor a row leaves, and `take` each page, saying whether to go on.
/// A page shorter than [`PAGE`] is the last.
fn paged<T, C: Default, E>(
    fetch: impl Fn(&C) -> std::result::Result<Vec<T>, E>,
    cursor: impl Fn(&T) -> C,
    mut take: impl FnMut(Vec<T>) -> bool,
) -> Result<()>
where
    crate::RiskError: From<E>,
{
    let mut after = C::default();
    loop {
        let page = fetch(&after)?;
        let Some(last) = page.last() else { return Ok(()) };
        after = cursor(last);
        let full = page.len() == PAGE;
        if !take(page) || !full {
            return Ok(());
        }
    }
}

/// Volumes, escrow, vault and keystore backups, principals and settings.
fn build_rest<S: VaultState>(v: &Vault<S>, mut g: Graph) -> Result<Graph> {
    let mirrors: HashMap<String, String> =
        v.mirror_pairs()?.into_iter().map(|(p, s)| (p.to_string(), s.to_string())).collect();
    for vol in v.volumes()? {
        g.volumes.insert(
            vol.name.to_string(),
            VolumeNode {
                missing: v.volume_dir(&vol.name)?.is_some_and(|d| !d.join("CUSTOS-VOLUME").exists()),
                site: vol.site.clone(),
                tape: vol.medium == Medium::Tape,
                mirror: mirrors.get(vol.name.as_str()).cloned(),
            },
        );
    }
    // The key-backup keys and their shares (the keys' own escrow copies
    // are in the key nodes).
    let escrow = v.escrow_status_of(&[])?;
    g.principals = v.users()?;
    if let Some(k) = escrow.kbks.last() {
        let users: HashMap<&str, bool> = g.principals.iter().map(|u| (u.name.as_str(), u.disabled)).collect();
        g.escrow = Some(EscrowNode {
            kbk: k.id.clone(),
            threshold: k.threshold,
            custodians: k.custodians.clone(),
            confirmed: escrow
                .shares
                .iter()
                .filter(|s| s.kbk == k.id && s.confirmed_at.is_some())
                .map(|s| s.custodian.clone())
                .collect(),
            unavailable: k.custodians.iter().filter(|c| users.get(c.as_str()).is_none_or(|d| *d)).cloned().collect(),
        });
    }
    // Escrow saves a key only if a threshold of its custodians can still
    // act (the report's escrow-below-threshold says the same).
    g.escrow_ready = g.escrow.as_ref().is_some_and(|e| e.able() >= usize::from(e.threshold));
    g.vault_sites = v.vault_sites()?;
    g.dual_control = v.dual_control()?;
    g.destroy_min_wait = Some(v.destroy_min_wait()?);
    g.hsm_rules = v.hsm_rules()?;
    g.hsm_token = match v.hsm_kind()? {
        custos_core::HsmKind::Pkcs11 { token, .. } => Some(token),
        custos_core::HsmKind::Soft => None,
    };
    g.vault_backups = v
        .vault_backups()?
        .into_iter()
        .map(|b| VaultBackupNode { id: b.id, volume: b.volume.to_string(), created_at: b.created_at })
        .collect();
    g.keystore_backups = v
        .keystore_backups()?
        .into_iter()
        .map(|b| {
            // Read back and checked, not trusted from the record.
            let (keys, unusable) = match v.keystore_backup_contents(&b) {
                KeystoreBackupContents::Intact(k) => (Some(k.into_iter().collect()), None),
                KeystoreBackupContents::Unusable(why) => (None, Some(why)),
            };
            KeystoreBackupNode {
                id: b.id,
                volume: b.volume.to_string(),
                created_at: b.created_at,
                mkvps: b.mkvps,
                keys,
                unusable,
            }
        })
        .collect();
    g.keystore_backups.sort_by_key(|b| std::cmp::Reverse(b.created_at));
    Ok(g)
}

/// The datasets matching `pattern`, each with its copies in the order a
/// recovery prefers them.
fn with_datasets<S: VaultState>(
    v: &Vault<S>,
    pattern: Option<&Pattern>,
    mut g: Graph,
    apps: &HashMap<String, String>,
    mut copies: HashMap<[u8; 16], Vec<CopyNode>>,
) -> Result<Graph> {
    // A page at a time, from the pattern's literal prefix.
    paged(
        |after: &String| v.datasets_page(pattern, Some(after), PAGE),
        |d| d.name.to_string(),
        |page| {
            for d in page {
                let mut c = copies.remove(&d.id.0).unwrap_or_default();
                c.sort_by_key(|x| (x.kind, std::cmp::Reverse(x.created_at)));
                c.shrink_to_fit();
                g.datasets.push(dataset_node(d, apps, c));
            }
            true
        },
    )?;
    g.datasets.shrink_to_fit();
    Ok(g)
}

fn dataset_node(d: DatasetRecord, apps: &HashMap<String, String>, copies: Vec<CopyNode>) -> DatasetNode {
    DatasetNode {
        app: apps
            .get(d.current.key_label.as_str())
            .cloned()
            .unwrap_or_else(|| d.name.as_str().split('.').next().unwrap_or_default().to_string()),
        name: d.name.to_string(),
        volume: d.current.volume.to_string(),
        key: d.current.key_label.to_string(),
        generation: d.current.generation,
        current_at: d.current.created_at,
        migrated_from: d.migrated_from.as_ref().map(|m| m.to_string()),
        last_access: d.last_access,
        copies,
    }
}

/// Every backup and snapshot of the datasets matching `pattern`, by dataset id.
fn copies<S: VaultState>(v: &Vault<S>, pattern: Option<&Pattern>) -> Result<HashMap<[u8; 16], Vec<CopyNode>>> {
    let mut copies: HashMap<[u8; 16], Vec<CopyNode>> = HashMap::new();
    // A page at a time: the records are larger than the nodes.
    paged(
        |after: &u64| v.backups_page(pattern, Some(*after), PAGE),
        |b| b.id,
        |page| {
            for b in page {
                copies.entry(b.dataset_id.0).or_default().push(copy_node(b));
            }
            true
        },
    )?;
    for s in v.snapshots(pattern)? {
        let shares = v.snapshot_shares_current(&s)?;
        copies.entry(s.dataset_id.0).or_default().push(CopyNode {
            kind: CopyKind::Snapshot,
            id: format!("snapshot {}", s.id),
            volume: s.volume.to_string(),
            key: s.key_label.to_string(),
            created_at: s.created_at,
            generation: s.generation,
            shares_current: shares,
            checked: s.checked,
        });
    }
    Ok(copies)
}

/// A backup's node in the graph.
fn copy_node(b: custos_core::model::BackupRecord) -> CopyNode {
    CopyNode {
        kind: match b.method {
            CopyMethod::Raw => CopyKind::Raw,
            CopyMethod::Logical => CopyKind::Logical,
            CopyMethod::Plaintext => CopyKind::Plaintext,
        },
        id: format!("backup {}", b.id),
        volume: b.volume.to_string(),
        // A plaintext copy is under no key (its record names its source's).
        key: if b.method == CopyMethod::Plaintext { String::new() } else { b.key_label.to_string() },
        created_at: b.created_at,
        generation: b.source_generation,
        shares_current: false,
        checked: b.checked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listing of `n` rows by id, read through `paged` as the catalog's
    /// pages are: every row once, in order, across page boundaries; and a
    /// reader that stops ends the listing.
    #[test]
    fn paged_reads_every_row_once_and_stops_when_told() {
        for n in [0, 1, PAGE - 1, PAGE, PAGE + 1, 3 * PAGE + 17] {
            let rows: Vec<u64> = (1..=n as u64).collect();
            let fetch = |after: &u64| {
                Ok::<_, crate::RiskError>(rows.iter().copied().filter(|r| r > after).take(PAGE).collect::<Vec<_>>())
            };
            let mut seen = Vec::new();
            paged(
                fetch,
                |r| *r,
                |page| {
                    seen.extend(page);
                    true
                },
            )
            .unwrap();
            assert_eq!(seen, rows, "{n} rows");
            let mut pages = 0;
            paged(
                fetch,
                |r| *r,
                |_| {
                    pages += 1;
                    false
                },
            )
            .unwrap();
            assert_eq!(pages, usize::from(n > 0), "{n} rows");
        }
    }
}
