//! Drills: prove the model, or show it wrong. For each threat (or pair),
//! clone the vault into a scratch directory, destroy in the clone what the
//! threat destroys, then try to get every dataset back using only what
//! survived, the way an administrator would, compare the bytes with what
//! the dataset held before, and set the outcome against the model's
//! verdict. A disagreement is an analyzer defect.
//!
//! The damage is defined here, on its own: what each threat physically
//! takes is read from the vault's catalog (volumes, sites, mirrors, where
//! the vault directory is), never from the model in [`crate::model`],
//! which shares only the threat's name with it. So a model that has the
//! wrong idea of a threat is caught rather than confirmed.
//!
//! | threat | what the drill destroys in the clone |
//! |---|---|
//! | file-corruption | the dataset is overwritten with junk through the access method (mirrors replicate it) |
//! | malicious-corruption | every object on the dataset's volume and on that volume's mirror |
//! | accidental-deletion | `ds rm` of the dataset |
//! | disk-failure | the dataset's volume, whole |
//! | site-loss | every volume at the dataset's site, and the vault directory (catalog, HSM file) when it is there |
//! | data-key-loss | one bit of the key's wrapped material in its keystore record |
//! | master-key-loss | the HSM's master keys (a new HSM file with a fresh one) |
//! | keystore-loss | every key record in the catalog (escrow copies kept with them included) |
//! | catalog-loss | the catalog (its file and journal) |
//! | hsm-loss | the software HSM whole (its file, or its row in the catalog) |
//!
//! Recovery: open the vault, or when it will not open, recover it from the
//! newest vault backup on a volume that survived (`vault recover`), or,
//! with no vault backup and the custodians' shares given, give it a new
//! HSM with the escrowed keys (`vault rebuild`); then,
//! per dataset, read it; fix its key (`key cancel-destroy`, `key restore`,
//! `key recover` from each keystore backup newest first, escrow); restore
//! each surviving snapshot and backup in turn. Each cell gets its own
//! verdict: one that cannot be drilled says why and stops nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use custos_core::model::{DatasetName, KeyAction, KeyLabel, KeyState, Pattern, PolicyTarget, Purpose};
use custos_core::{HsmKind, NewKey, NewPolicy, Open, Passphrase, RecoverWith, ShareFile, TokenGuard, Vault};
use serde::Serialize;

use crate::build;
use crate::model::{evaluate, KeyPath, Threat, Verdict};
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
    /// Why this cell could not be drilled; `proven` and `agrees` are then
    /// false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_drilled: Option<String>,
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

fn content(v: &Vault<Open>, name: &DatasetName) -> std::result::Result<[u8; 32], String> {
    let mut h = Hasher(blake3::Hasher::new());
    v.get(name, &mut h, None).map(|_| *h.0.finalize().as_bytes()).map_err(|e| e.to_string())
}

/// How the drill opens its clones: a software HSM file in each, with the
/// passphrase; or, for a vault on a PKCS#11 token, the live vault's token
/// through a guard that keeps it unchanged. `token_lost`: the cell's
/// threats took the token, so no clone of it opens, and nothing recovered
/// from a vault backup does either (the token is not in one).
#[derive(Clone)]
struct Opener<'a> {
    pass: &'a Passphrase,
    guard: Option<TokenGuard>,
    token_lost: bool,
}

impl Opener<'_> {
    fn open(&self, dir: &Path) -> Result<Vault<Open>> {
        let v = Vault::open(dir)?;
        if v.hsm_kind()? == HsmKind::Soft {
            return Ok(v.unseal(self.pass)?);
        }
        match &self.guard {
            Some(_) if self.token_lost => {
                Err(RiskError::Drill("the PKCS#11 token is lost, and its master keys with it".into()))
            }
            Some(g) => Ok(v.open_guarded(g)?),
            None => {
                Err(RiskError::Drill("this clone's master keys are on a PKCS#11 token the drill was not given".into()))
            }
        }
    }

    /// How `vault recover` opens a vault backup in this drill.
    fn recover_with(&self) -> std::result::Result<RecoverWith<'_>, String> {
        match &self.guard {
            None => Ok(RecoverWith::Passphrase(self.pass)),
            Some(_) if self.token_lost => {
                Err("the PKCS#11 token is lost: a vault backup does not hold its master keys".into())
            }
            Some(g) => Ok(RecoverWith::Guarded(g)),
        }
    }
}

fn drill_err(e: impl std::fmt::Display) -> RiskError {
    RiskError::Drill(e.to_string())
}

/// Where things are, read from the vault's catalog: what the threats act on.
struct Layout {
    /// Dataset → (its current volume, its current key).
    datasets: BTreeMap<String, (String, String)>,
    /// Volume → (site, location as the catalog holds it).
    volumes: BTreeMap<String, (String, String)>,
    /// Primary volume → its mirror.
    mirrors: BTreeMap<String, String>,
    /// The sites of the vault directory.
    vault_sites: Vec<String>,
}

impl Layout {
    fn read(v: &Vault<Open>) -> Result<Self> {
        Ok(Layout {
            datasets: v
                .datasets()?
                .into_iter()
                .map(|d| (d.name.to_string(), (d.current.volume.to_string(), d.current.key_label.to_string())))
                .collect(),
            volumes: v.volumes()?.into_iter().map(|r| (r.name.to_string(), (r.site, r.location))).collect(),
            mirrors: v.mirror_pairs()?.into_iter().map(|(p, s)| (p.to_string(), s.to_string())).collect(),
            vault_sites: v.vault_sites()?,
        })
    }

    /// Where volume `name` is in a clone rooted at `root` (see
    /// [`Vault::clone_to`]).
    fn volume_dir(&self, root: &Path, name: &str) -> PathBuf {
        match self.volumes.get(name) {
            Some((_, loc)) if Path::new(loc).is_relative() => root.join("vault").join(loc),
            _ => root.join("volumes").join(name),
        }
    }

    fn site(&self, volume: &str) -> Option<&str> {
        self.volumes.get(volume).map(|(s, _)| s.as_str())
    }

    /// Which datasets a set of threats strikes in the same way (same
    /// volume, site or key): they can share one clone.
    fn footprint(&self, dataset: &str, set: &[Threat]) -> Vec<String> {
        let (vol, key) = self.datasets.get(dataset).cloned().unwrap_or_default();
        set.iter()
            .map(|t| match t {
                Threat::DiskFailure | Threat::MaliciousCorruption => vol.clone(),
                Threat::SiteLoss => self.site(&vol).unwrap_or_default().to_string(),
                Threat::DataKeyLoss => key.clone(),
                _ => String::new(),
            })
            .collect()
    }
}

/// Run the drills. Only a vault that cannot be cloned at all fails the
/// whole run; anything that goes wrong with one clone or one dataset is
/// that cell's verdict.
pub fn drill(v: &Vault<Open>, opts: &DrillOptions) -> Result<Vec<DrillCell>> {
    let g = build::checked_graph(v, opts.pattern.as_ref())?;
    let layout = Layout::read(v)?;
    let opener = Opener { pass: &opts.passphrase, guard: v.drill_token_guard()?, token_lost: false };
    std::fs::create_dir_all(&opts.scratch).map_err(|e| {
        RiskError::Drill(format!("cannot create the scratch directory {}: {e}", opts.scratch.display()))
    })?;
    // What every dataset holds now, read in a clone so the live vault is not touched.
    let base = opts.scratch.join("baseline");
    v.clone_to(&base)?;
    // A dataset that needs key recovery today (the paper's Example 1) is
    // recovered in this clone first: what it holds once its key is back is
    // what the drill must get back (its chunks' tags vouch for the bytes).
    let expected: BTreeMap<String, std::result::Result<[u8; 32], String>> = {
        let c = opener.open(&base.join("vault"))?;
        g.datasets
            .iter()
            .map(|d| {
                let h = DatasetName::new(d.name.clone()).map_err(|e| e.to_string()).and_then(|n| {
                    content(&c, &n).or_else(|e| {
                        let key = c.dataset(&n).map_err(|e| e.to_string())?.current.key_label;
                        for _ in fix_key(&c, &key, &opts.shares) {
                            if let Ok(h) = content(&c, &n) {
                                return Ok(h);
                            }
                        }
                        Err(e)
                    })
                });
                (d.name.clone(), h)
            })
            .collect()
    };
    let _ = std::fs::remove_dir_all(&base);
    let mut cells = Vec::new();
    let mut n = 0;
    for set in &opts.sets {
        let mut groups: BTreeMap<Vec<String>, Vec<&crate::model::DatasetNode>> = BTreeMap::new();
        for d in &g.datasets {
            groups.entry(layout.footprint(&d.name, set)).or_default().push(d);
        }
        for (_, ds) in groups {
            // Cells that cannot be drilled are set aside first.
            let mut todo = Vec::new();
            for d in ds {
                let modeled = evaluate(&g, d, set);
                let why = match expected.get(&d.name) {
                    Some(Err(e)) => Some(format!("its content could not be read before the drill: {e}")),
                    None => Some("it was not found before the drill".to_string()),
                    Some(Ok(_))
                        if opts.shares.is_empty()
                            && matches!(modeled, Verdict::SurvivesIf { path: KeyPath::Escrow, .. }) =>
                    {
                        Some(
                            "the model counts on escrow here: give the custodians' share files (--share) to drill it"
                                .into(),
                        )
                    }
                    Some(Ok(_)) => None,
                };
                match why {
                    Some(why) => cells.push(not_drilled(&d.name, set, modeled, why)),
                    None => todo.push((d, modeled)),
                }
            }
            if todo.is_empty() {
                continue;
            }
            n += 1;
            let root = opts.scratch.join(format!("drill-{n}"));
            let res = v.clone_to(&root).map_err(RiskError::from).and_then(|_| {
                let names: Vec<&str> = todo.iter().map(|(d, _)| d.name.as_str()).collect();
                run_one(&layout, &root, &names, set, opts, &opener, &expected)
            });
            let _ = std::fs::remove_dir_all(&root);
            match res {
                Ok(outcomes) => {
                    for ((d, modeled), (proven, how)) in todo.into_iter().zip(outcomes) {
                        cells.push(DrillCell {
                            dataset: d.name.clone(),
                            threats: set.to_vec(),
                            agrees: proven == modeled.survives(),
                            modeled,
                            proven,
                            not_drilled: None,
                            how,
                        });
                    }
                }
                Err(e) => {
                    for (d, modeled) in todo {
                        cells.push(not_drilled(&d.name, set, modeled, format!("the drill failed: {e}")));
                    }
                }
            }
        }
    }
    Ok(cells)
}

fn not_drilled(dataset: &str, set: &[Threat], modeled: Verdict, why: String) -> DrillCell {
    DrillCell {
        dataset: dataset.to_string(),
        threats: set.to_vec(),
        modeled,
        proven: false,
        how: String::new(),
        not_drilled: Some(why),
        agrees: false,
    }
}

/// Restored copies go to a volume that survived.
fn restore_policy(c: &Vault<Open>) -> Result<()> {
    let survivor = c
        .volumes()?
        .into_iter()
        .find(|r| c.volume_dir(&r.name).ok().flatten().is_some_and(|d| d.join("CUSTOS-VOLUME").exists()));
    if let Some(s) = survivor {
        c.add_policy(&NewPolicy {
            name: "drill-restore".into(),
            pattern: Pattern::new("DRILL.**").map_err(drill_err)?,
            volume: s.name,
            target: PolicyTarget::Template { app: Some("DRILL".into()) },
        })?;
    }
    Ok(())
}

/// Strike the clone at `root` with `set` for `names`, recover, and say for
/// each dataset (in order) whether it came back whole and how.
fn run_one(
    layout: &Layout,
    root: &Path,
    names: &[&str],
    set: &[Threat],
    opts: &DrillOptions,
    opener: &Opener<'_>,
    expected: &BTreeMap<String, std::result::Result<[u8; 32], String>>,
) -> Result<Vec<(bool, String)>> {
    let names: Vec<DatasetName> =
        names.iter().map(|n| DatasetName::new(*n)).collect::<std::result::Result<_, _>>().map_err(drill_err)?;
    let opener = &strike(layout, root, &names, set, opener)?;
    let (c, opened) = match reopen(layout, root, opener, &opts.shares) {
        Ok(x) => x,
        Err(why) => return Ok(names.iter().map(|_| (false, why.clone())).collect()),
    };
    if opened.is_none() {
        restore_policy(&c)?;
    }
    // Where nothing in the vault as it stands brings a dataset back, an
    // administrator can still recover the vault as it was at its newest
    // backup, beside this one, and try there (made once, when needed).
    let mut side: Option<std::result::Result<(Vault<Open>, String), String>> = None;
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let Some(Ok(want)) = expected.get(name.as_str()) else {
            out.push((false, "its content could not be read before the drill".to_string()));
            continue;
        };
        let (mut proven, mut how) = recover(&c, name, want, &opts.shares, i);
        if let Some(o) = &opened {
            how = format!("{o}; {how}");
        } else if !proven {
            let s = side.get_or_insert_with(|| {
                recover_vault(layout, root, &root.join("vault-from-backup"), &root.join("vault"), opener)
            });
            match s {
                Ok((sv, via)) => {
                    let (p, h) = recover(sv, name, want, &opts.shares, i + names.len());
                    how = if p { format!("{via}; {h}") } else { format!("{how}; then {via}: {h}") };
                    proven = p;
                }
                Err(e) => how = format!("{how}; {e}"),
            }
        }
        out.push((proven, how));
    }
    Ok(out)
}

/// Destroy what `set` destroys for the datasets `names`; how the clone
/// opens afterwards (a lost token opens nothing).
fn strike<'a>(
    layout: &Layout,
    root: &Path,
    names: &[DatasetName],
    set: &[Threat],
    opener: &Opener<'a>,
) -> Result<Opener<'a>> {
    let pass = opener.pass;
    let mut after = opener.clone();
    let vault_dir = root.join("vault");
    let volumes: BTreeSet<&str> =
        names.iter().filter_map(|n| layout.datasets.get(n.as_str()).map(|(v, _)| v.as_str())).collect();
    {
        let c = opener.open(&vault_dir)?;
        // Through the access method first, while the vault is whole.
        if set.contains(&Threat::FileCorruption) {
            for n in names {
                let junk: Vec<u8> = format!("{n} overwritten by a faulty batch job\n").into_bytes().repeat(97);
                if let Err(e) = c.put(n, &mut junk.as_slice(), &Default::default()) {
                    // The dataset's key no longer seals (expired, damaged):
                    // the faulty job writes under a new key, as a job told
                    // so by the error would.
                    let app = n.as_str().split('.').next().unwrap_or("DRILL").to_string();
                    let new = NewKey {
                        label: None,
                        app: Some(app),
                        purpose: Purpose::Prim,
                        expires_at: None,
                        activate: true,
                    };
                    let k = c.create_key(&new).map_err(|_| e)?;
                    let opts = custos_core::PutOptions { key: Some(k.label), ..Default::default() };
                    c.put(n, &mut junk.as_slice(), &opts)?;
                }
            }
        }
        if set.contains(&Threat::AccidentalDeletion) {
            for n in names {
                c.remove_dataset(n)?;
            }
        }
        if set.contains(&Threat::DataKeyLoss) {
            let keys: BTreeSet<&str> =
                names.iter().filter_map(|n| layout.datasets.get(n.as_str()).map(|(_, k)| k.as_str())).collect();
            for k in keys {
                c.drill_corrupt_key(&KeyLabel::new(k).map_err(drill_err)?)?;
            }
        }
    }
    if set.contains(&Threat::MaliciousCorruption) {
        // Every object on the volume, and on its mirror, which receives
        // every write made to it.
        for v in &volumes {
            corrupt_tree(&layout.volume_dir(root, v))?;
            if let Some(m) = layout.mirrors.get(*v) {
                corrupt_tree(&layout.volume_dir(root, m))?;
            }
        }
    }
    if set.contains(&Threat::KeystoreLoss) {
        Vault::open(&vault_dir)?.drill_erase_keystore()?;
    }
    // On a token, both take it (the live token is never touched: the
    // clone just cannot have it).
    if set.contains(&Threat::MasterKeyLoss) || set.contains(&Threat::HsmLoss) {
        if opener.guard.is_some() {
            after.token_lost = true;
        } else if set.contains(&Threat::HsmLoss) {
            Vault::open(&vault_dir)?.drill_lose_hsm()?;
        } else {
            Vault::open(&vault_dir)?.drill_lose_master_keys(pass)?;
        }
    }
    if set.contains(&Threat::CatalogLoss) {
        Vault::open(&vault_dir)?.drill_lose_catalog()?;
    }
    let mut gone: Vec<PathBuf> = Vec::new();
    if set.contains(&Threat::DiskFailure) {
        gone.extend(volumes.iter().map(|v| layout.volume_dir(root, v)));
    }
    if set.contains(&Threat::SiteLoss) {
        let sites: BTreeSet<&str> = volumes.iter().filter_map(|v| layout.site(v)).collect();
        for (name, (site, _)) in &layout.volumes {
            if sites.contains(site.as_str()) {
                gone.push(layout.volume_dir(root, name));
            }
        }
        if layout.vault_sites.iter().any(|s| sites.contains(s.as_str())) {
            gone.push(vault_dir.clone());
        }
    }
    for d in gone {
        match std::fs::remove_dir_all(&d) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(RiskError::Drill(format!("cannot remove {}: {e}", d.display())))
            }
            _ => {}
        }
    }
    Ok(after)
}

/// Flip bytes in every object file under a volume's directory (its label
/// stays, so the volume is still recognised: what is on it is bad).
fn corrupt_tree(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in entries {
        let e = e.map_err(drill_err)?;
        let p = e.path();
        if e.file_type().map_err(drill_err)?.is_dir() {
            corrupt_tree(&p)?;
        } else if e.file_name() != "CUSTOS-VOLUME" {
            let mut bytes = std::fs::read(&p).map_err(drill_err)?;
            for b in bytes.iter_mut().step_by(997) {
                *b ^= 0x5A;
            }
            std::fs::write(&p, bytes).map_err(|e| RiskError::Drill(format!("cannot corrupt {}: {e}", p.display())))?;
        }
    }
    Ok(())
}

/// Open the struck vault, or, when it will not open, bring it back from the
/// newest vault backup on a volume that survived; say how when it was
/// recovered. Err: why there is no vault to recover in.
fn reopen(
    layout: &Layout,
    root: &Path,
    opener: &Opener<'_>,
    shares: &[ShareFile],
) -> std::result::Result<(Vault<Open>, Option<String>), String> {
    let pass = opener.pass;
    let vault_dir = root.join("vault");
    let first = match opener.open(&vault_dir) {
        Ok(v) => return Ok((v, None)),
        Err(e) => e.to_string(),
    };
    if newest_vault_backup(layout, root).is_none() && !shares.is_empty() {
        // The HSM alone lost: a new one, with every escrowed key.
        return custos_core::rebuild(&vault_dir, pass, custos_core::KdfParams::MINIMUM, shares, "drill")
            .map_err(|e| format!("the vault would not open ({first}), no vault backup survives, and `vault rebuild` with the shares failed: {e}"))
            .and_then(|r| {
                let v = opener.open(&vault_dir).map_err(|e| format!("the rebuilt vault would not open: {e}"))?;
                Ok((v, Some(format!("the vault rebuilt with a new HSM ({} keys back from escrow)", r.recovered.len()))))
            });
    }
    if vault_dir.exists() {
        std::fs::rename(&vault_dir, root.join("vault.lost"))
            .map_err(|e| format!("cannot move the damaged vault aside: {e}"))?;
    }
    let (v, how) = recover_vault(layout, root, &vault_dir, &root.join("vault.lost"), opener)
        .map_err(|e| format!("the vault would not open ({first}), and {e}"))?;
    Ok((v, Some(how)))
}

/// The newest vault backup on a volume that survived: (id, volume, its
/// directory).
fn newest_vault_backup(layout: &Layout, root: &Path) -> Option<(String, String, PathBuf)> {
    let mut best: Option<(String, String, PathBuf)> = None;
    for name in layout.volumes.keys() {
        let dir = layout.volume_dir(root, name);
        if !dir.join("CUSTOS-VOLUME").exists() {
            continue;
        }
        let newest = custos_core::vault_backups_at(&dir.display().to_string()).ok().and_then(|ids| ids.last().cloned());
        if let Some(id) = newest {
            if best.as_ref().is_none_or(|(b, _, _)| id > *b) {
                best = Some((id, name.clone(), dir));
            }
        }
    }
    best
}

/// Recover the vault into `into` from the newest vault backup on a volume
/// that survived, its volumes pointed at the clone's copies (the backup's
/// catalog names the live vault's; volumes kept inside the vault directory
/// are looked for under `inner_home`, where the struck directory is, if it
/// still is). Returns it and a phrase saying how.
fn recover_vault(
    layout: &Layout,
    root: &Path,
    into: &Path,
    inner_home: &Path,
    opener: &Opener<'_>,
) -> std::result::Result<(Vault<Open>, String), String> {
    let Some((id, vol, dir)) = newest_vault_backup(layout, root) else {
        return Err("no vault backup survives on any volume".into());
    };
    let failed =
        |e: &dyn std::fmt::Display| format!("recovering the vault from vault backup {id} on {vol} failed: {e}");
    custos_core::recover(into, &dir.display().to_string(), opener.recover_with().map_err(|e| failed(&e))?, "drill")
        .map_err(|e| failed(&e))?;
    let v = opener.open(into).map_err(|e| failed(&e))?;
    for r in v.volumes().map_err(|e| failed(&e))? {
        let inner = Path::new(&r.location).is_relative();
        let to = if inner { inner_home.join(&r.location) } else { root.join("volumes").join(r.name.as_str()) };
        // A volume kept inside a vault directory that still exists is
        // read there; one that went with it stays as recovered (empty).
        if !inner || to.join("CUSTOS-VOLUME").exists() {
            v.drill_relocate_volume(&r.name, &to).map_err(|e| failed(&e))?;
        }
    }
    restore_policy(&v).map_err(|e| failed(&e))?;
    Ok((v, format!("the vault recovered from vault backup {id} on {vol}")))
}

/// Try to get `name`'s bytes back in the clone, the way an administrator
/// would; say how, or why nothing worked.
fn recover(c: &Vault<Open>, name: &DatasetName, want: &[u8; 32], shares: &[ShareFile], n: usize) -> (bool, String) {
    let ok = |v: &Vault<Open>, n: &DatasetName| content(v, n).as_ref() == Ok(want);
    if ok(c, name) {
        return (true, "the dataset reads back intact".into());
    }
    let mut tried = Vec::new();
    // Its own key, if that is what is missing.
    match c.dataset(name) {
        Ok(d) => {
            for step in fix_key(c, &d.current.key_label, shares) {
                if ok(c, name) {
                    return (true, format!("the dataset reads back after {step}"));
                }
                tried.push(step);
            }
            tried.push(format!("reading the dataset: {}", content(c, name).err().unwrap_or_default()));
        }
        Err(_) => tried.push("the dataset is gone".to_string()),
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
    // As the model prefers them: logical copies, raw copies, then plaintext ones.
    backups.sort_by_key(|b| {
        use custos_core::model::CopyMethod as M;
        (
            match b.method {
                M::Logical => 0,
                M::Raw => 1,
                M::Plaintext => 2,
            },
            std::cmp::Reverse(b.id),
        )
    });
    for b in backups {
        let (what, key) = (format!("backup {} ({} copy on {})", b.id, b.method, b.volume), b.key_label.clone());
        copies.push((what, key, Box::new(move |t| c.restore(&b, Some(t)).map(|_| ()))));
    }
    for (k, (what, key, restore)) in copies.iter().enumerate() {
        let t = DatasetName::new(format!("DRILL.R{n}.C{k}")).expect("a valid name");
        let mut r = restore(&t);
        let mut via = String::new();
        if r.is_err() {
            for step in fix_key(c, key, shares) {
                r = restore(&t);
                if r.is_ok() {
                    via = format!(" after {step}");
                    break;
                }
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

/// The things an administrator tries on a key that does not serve: take it
/// off the destruction schedule and bring it back from the archive (both
/// at once, when they apply: they lose nothing), then, one at a time as
/// the caller asks, recover it from each keystore backup (newest first; a
/// damaged record is repaired) and from escrow. Each item names a step
/// that changed something.
fn fix_key<'a>(c: &'a Vault<Open>, label: &'a KeyLabel, shares: &'a [ShareFile]) -> impl Iterator<Item = String> + 'a {
    let rec = c.key(label).ok();
    let cancel = rec
        .as_ref()
        .filter(|_| c.destroy_scheduled_at(label).ok().flatten().is_some())
        .and_then(|_| c.cancel_destroy(label).ok())
        .map(|_| format!("taking key {label} off the destruction schedule (key cancel-destroy)"));
    let unarchive = rec
        .as_ref()
        .filter(|k| k.state == KeyState::Archived)
        .and_then(|_| c.key_action(label, KeyAction::Restore, false).ok())
        .map(|_| format!("bringing key {label} back from the archive (key restore)"));
    let mut ksbs = c.keystore_backups().unwrap_or_default();
    ksbs.sort_by_key(|b| std::cmp::Reverse(b.created_at));
    let from_backups = ksbs.into_iter().filter_map(move |b| {
        let pat = Pattern::new(label.as_str()).ok()?;
        let r = c.recover_keys(&pat, &b.id).ok()?;
        r.iter()
            .any(|x| matches!(x, custos_core::Recovered::Restored { .. } | custos_core::Recovered::Repaired { .. }))
            .then(|| format!("recovering key {label} from keystore backup {}", b.id))
    });
    let escrow = std::iter::once(())
        .filter(move |_| !shares.is_empty() && c.recover_from_escrow(label, shares).is_ok())
        .map(move |_| format!("recovering key {label} from escrow"));
    cancel.into_iter().chain(unarchive).chain(from_backups).chain(escrow)
}
