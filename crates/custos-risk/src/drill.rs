//! Drills: prove the model. For each threat (or pair), clone the vault into
//! a scratch directory, apply the threat for real, try to get every dataset
//! back with the normal recovery operations (read it; recover its key from
//! a keystore backup or escrow; restore a snapshot or a backup), compare the
//! bytes with what the dataset held before, and set the outcome against the
//! model's verdict. A disagreement is an analyzer defect.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use custos_core::model::{DatasetName, KeyLabel, Pattern, PolicyTarget, VolumeName};
use custos_core::{NewPolicy, Open, Passphrase, ShareFile, Vault};
use serde::Serialize;

use crate::build;
use crate::model::{evaluate, Graph, KeyPath, Threat, Verdict};
use crate::{Result, RiskError};

/// What to drill.
pub struct DrillOptions {
    pub pattern: Option<Pattern>,
    /// Each entry is one drill: a single threat, or a pair striking together.
    pub sets: Vec<Vec<Threat>>,
    /// An empty or missing directory for the clones (removed afterwards).
    pub scratch: PathBuf,
    /// The vault's passphrase (each clone's HSM file is a copy).
    pub passphrase: Passphrase,
    /// Custodians' shares, for cells that depend on escrow.
    pub shares: Vec<ShareFile>,
}

/// One cell: modeled against proven.
#[derive(Clone, Debug, Serialize)]
pub struct DrillCell {
    pub dataset: String,
    pub threats: Vec<Threat>,
    pub modeled: Verdict,
    pub proven: bool,
    /// How the dataset came back, or why nothing worked.
    pub how: String,
    pub agrees: bool,
}

/// A checksum of a dataset's bytes, read in a scratch clone.
struct Hasher(blake3::Hasher);

impl Write for Hasher {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn content(v: &Vault<Open>, name: &DatasetName) -> Option<[u8; 32]> {
    let mut h = Hasher(blake3::Hasher::new());
    v.get(name, &mut h, None).ok().map(|_| *h.0.finalize().as_bytes())
}

fn open(dir: &Path, pass: &Passphrase) -> Result<Vault<Open>> {
    Ok(Vault::open(dir)?.unseal(pass)?)
}

/// Run the drills. Fails up front when a modeled cell needs escrow and no
/// shares were given (it could not be proven either way).
pub fn drill(v: &Vault<Open>, opts: &DrillOptions) -> Result<Vec<DrillCell>> {
    let held = v.held_mkvps()?;
    let g = build::graph(v, opts.pattern.as_ref(), held)?;
    let needs_escrow = g.datasets.iter().any(|d| {
        opts.sets.iter().any(|s| matches!(evaluate(&g, d, s), Verdict::SurvivesIf { path: KeyPath::Escrow, .. }))
    });
    if needs_escrow && opts.shares.is_empty() {
        return Err(RiskError::Drill(
            "the model counts on escrow for some cells: give the custodians' share files with --share so the drill can prove them".into(),
        ));
    }
    std::fs::create_dir_all(&opts.scratch).map_err(|e| {
        RiskError::Drill(format!("cannot create the scratch directory {}: {e}", opts.scratch.display()))
    })?;
    // What every dataset holds now, read in a clone so the live vault is not touched.
    let base = opts.scratch.join("baseline");
    v.clone_to(&base)?;
    let expected: BTreeMap<String, [u8; 32]> = {
        let c = open(&base, &opts.passphrase)?;
        g.datasets
            .iter()
            .filter_map(|d| {
                DatasetName::new(d.name.clone()).ok().and_then(|n| content(&c, &n)).map(|h| (d.name.clone(), h))
            })
            .collect()
    };
    let _ = std::fs::remove_dir_all(&base);
    let mut cells = Vec::new();
    let mut n = 0;
    for set in &opts.sets {
        // Datasets a threat hits in the same way share one clone.
        let mut groups: BTreeMap<Vec<String>, Vec<&crate::model::DatasetNode>> = BTreeMap::new();
        for d in &g.datasets {
            groups.entry(footprint(&g, d, set)).or_default().push(d);
        }
        for (_, ds) in groups {
            n += 1;
            let dir = opts.scratch.join(format!("drill-{n}"));
            v.clone_to(&dir)?;
            let res = run_one(&g, &dir, &ds, set, opts, &expected);
            let _ = std::fs::remove_dir_all(&dir);
            cells.extend(res?);
        }
    }
    Ok(cells)
}

fn footprint(g: &Graph, d: &crate::model::DatasetNode, set: &[Threat]) -> Vec<String> {
    set.iter()
        .map(|t| match t {
            Threat::DiskFailure => d.volume.clone(),
            Threat::SiteLoss => g.volumes.get(&d.volume).map(|v| v.site.clone()).unwrap_or_default(),
            Threat::DataKeyLoss => d.key.clone(),
            _ => String::new(),
        })
        .collect()
}

fn run_one(
    g: &Graph,
    dir: &Path,
    ds: &[&crate::model::DatasetNode],
    set: &[Threat],
    opts: &DrillOptions,
    expected: &BTreeMap<String, [u8; 32]>,
) -> Result<Vec<DrillCell>> {
    let pass = &opts.passphrase;
    let names: Vec<DatasetName> = ds
        .iter()
        .map(|d| DatasetName::new(d.name.clone()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| RiskError::Drill(e.to_string()))?;
    let first = ds[0];
    let mut lost_volumes: Vec<String> = Vec::new();
    {
        let c = open(dir, pass)?;
        // Content first (they write through keys and volumes the later threats take).
        if set.contains(&Threat::MaliciousCorruption) {
            for n in &names {
                for f in c.drill_chunk_files(n)? {
                    corrupt_file(&f)?;
                }
            }
        }
        if set.contains(&Threat::FileCorruption) {
            for n in &names {
                let junk: Vec<u8> = format!("{n} overwritten by a faulty batch job\n").into_bytes().repeat(97);
                c.put(n, &mut junk.as_slice(), &Default::default())?;
            }
        }
        if set.contains(&Threat::AccidentalDeletion) {
            for n in &names {
                c.remove_dataset(n)?;
            }
        }
        if set.contains(&Threat::DataKeyLoss) {
            c.drill_lose_key(&KeyLabel::new(first.key.clone()).map_err(|e| RiskError::Drill(e.to_string()))?)?;
        }
        if set.contains(&Threat::KeystoreLoss) {
            c.drill_lose_keystore()?;
        }
        if set.contains(&Threat::DiskFailure) {
            lost_volumes.push(first.volume.clone());
        }
        if set.contains(&Threat::SiteLoss) {
            let site = g.volumes.get(&first.volume).map(|v| v.site.clone()).unwrap_or_default();
            lost_volumes.extend(g.volumes.iter().filter(|(_, v)| v.site == site).map(|(n, _)| n.clone()));
        }
        for v in &lost_volumes {
            if let Some(d) = c.volume_dir(&VolumeName::new(v.clone()).map_err(|e| RiskError::Drill(e.to_string()))?)? {
                let _ = std::fs::remove_dir_all(d);
            }
        }
        // Restored copies go to a volume that survived.
        let survivor = g.volumes.keys().find(|v| !lost_volumes.contains(v)).cloned();
        if let Some(s) = survivor {
            c.add_policy(&NewPolicy {
                name: "drill-restore".into(),
                pattern: Pattern::new("DRILL.**").map_err(|e| RiskError::Drill(e.to_string()))?,
                volume: VolumeName::new(s).map_err(|e| RiskError::Drill(e.to_string()))?,
                target: PolicyTarget::Template { app: Some("DRILL".into()) },
            })?;
        }
    }
    if set.contains(&Threat::MasterKeyLoss) {
        Vault::open(dir)?.drill_lose_master_keys(pass)?;
    }
    let c = open(dir, pass)?;
    let mut out = Vec::new();
    for (i, (d, name)) in ds.iter().zip(&names).enumerate() {
        let modeled = evaluate(g, d, set);
        let (proven, how) = match expected.get(&d.name) {
            None => (false, "its content could not be read before the drill".to_string()),
            Some(want) => recover(&c, name, want, &opts.shares, i),
        };
        out.push(DrillCell {
            dataset: d.name.clone(),
            threats: set.to_vec(),
            agrees: proven == modeled.survives(),
            modeled,
            proven,
            how,
        });
    }
    Ok(out)
}

fn corrupt_file(f: &Path) -> Result<()> {
    let Ok(mut bytes) = std::fs::read(f) else { return Ok(()) };
    for b in bytes.iter_mut().skip(24).step_by(997) {
        *b ^= 0x5A;
    }
    std::fs::write(f, bytes).map_err(|e| RiskError::Drill(format!("cannot corrupt {}: {e}", f.display())))
}

/// Try to get `name`'s bytes back in the clone, the way an administrator
/// would; say how, or why nothing worked.
fn recover(c: &Vault<Open>, name: &DatasetName, want: &[u8; 32], shares: &[ShareFile], n: usize) -> (bool, String) {
    let ok = |v: &Vault<Open>, n: &DatasetName| content(v, n).as_ref() == Some(want);
    if ok(c, name) {
        return (true, "the dataset reads back intact".into());
    }
    let mut tried = Vec::new();
    // Its own key, if that is what is missing.
    if let Ok(d) = c.dataset(name) {
        if let Some(path) = recover_key(c, &d.current.key_label, shares) {
            if ok(c, name) {
                return (
                    true,
                    format!("the dataset reads back after recovering key {} from {path}", d.current.key_label),
                );
            }
        }
        tried.push("reading the dataset".to_string());
    } else {
        tried.push("the dataset is gone".to_string());
    }
    let exact = Pattern::new(name.as_str()).ok();
    // Every copy, as (what it is, its key, how to restore it as a new name).
    type Restore<'a> = Box<dyn Fn(&DatasetName) -> custos_core::Result<()> + 'a>;
    let mut copies: Vec<(String, KeyLabel, Restore<'_>)> = Vec::new();
    for s in c.snapshots(exact.as_ref()).unwrap_or_default().into_iter().rev() {
        let (what, key) = (format!("snapshot {}", s.id), s.key_label.clone());
        copies.push((what, key, Box::new(move |t| c.snapshot_restore(&s, Some(t)).map(|_| ()))));
    }
    let mut backups = c.backups(exact.as_ref()).unwrap_or_default();
    backups.sort_by_key(|b| (b.method != custos_core::model::CopyMethod::Logical, std::cmp::Reverse(b.id)));
    for b in backups {
        let (what, key) = (format!("backup {} ({} copy on {})", b.id, b.method, b.volume), b.key_label.clone());
        copies.push((what, key, Box::new(move |t| c.restore(&b, Some(t)).map(|_| ()))));
    }
    for (k, (what, key, restore)) in copies.iter().enumerate() {
        let t = DatasetName::new(format!("DRILL.R{n}.C{k}")).expect("a valid name");
        let mut r = restore(&t);
        let mut via = String::new();
        if r.is_err() {
            if let Some(p) = recover_key(c, key, shares) {
                via = format!(" after recovering key {key} from {p}");
                r = restore(&t);
            }
        }
        match r {
            Ok(()) if ok(c, &t) => return (true, format!("{what} restored{via}")),
            Ok(()) => tried.push(format!("{what} restored other bytes")),
            Err(e) => tried.push(format!("{what}: {e}")),
        }
    }
    (false, format!("nothing brought it back ({})", tried.join("; ")))
}

/// Bring a key back from a keystore backup (newest first) or from escrow;
/// the source on success.
fn recover_key(c: &Vault<Open>, label: &KeyLabel, shares: &[ShareFile]) -> Option<String> {
    let pat = Pattern::new(label.as_str()).ok()?;
    let mut ksbs = c.keystore_backups().ok()?;
    ksbs.sort_by_key(|b| std::cmp::Reverse(b.created_at));
    for b in ksbs {
        if let Ok(r) = c.recover_keys(&pat, &b.id) {
            if r.iter().any(|x| matches!(x, custos_core::Recovered::Restored { .. })) {
                return Some(format!("keystore backup {}", b.id));
            }
        }
    }
    if !shares.is_empty() && c.recover_from_escrow(label, shares).is_ok() {
        return Some("escrow".into());
    }
    None
}
