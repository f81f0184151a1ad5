//! The paper's Table 2, computed from a real vault protected in its five
//! ways, and proven cell by cell by drills.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use custos_core::model::{DatasetName, Medium, Pattern, PolicyTarget, VolumeName};
use custos_core::{InitOptions, KdfParams, NewPolicy, NewVolume, Open, Passphrase, Vault};
use custos_risk::drill::{drill, DrillOptions};
use custos_risk::model::Threat;
use custos_risk::{build, report};

fn pass() -> Passphrase {
    Passphrase::from("table two passphrase".to_string())
}

fn vol(v: &Vault<Open>, root: &Path, name: &str, site: &str, medium: Medium) -> VolumeName {
    let n = VolumeName::new(name).unwrap();
    v.add_volume(&NewVolume {
        name: n.clone(),
        location: root.join(name).display().to_string(),
        site: site.into(),
        medium,
    })
    .unwrap();
    n
}

/// Five applications at site A, one way each: logical to disk, logical to
/// tape, raw to disk, raw to tape (all copies offsite, at site B), and a
/// synchronous mirror to site B. No keystore backup and no escrow, as in
/// the paper. The paper takes for granted that the catalog and keystore
/// outlive a data-centre loss, so the vault directory is at a site of its
/// own (V), and there is no vault backup.
/// An empty vault whose directory (and default volume) is at site A.
fn vault_at_a(root: &Path) -> Vault<Open> {
    Vault::init(
        &root.join("vault"),
        &pass(),
        &InitOptions { kdf: KdfParams::MINIMUM, site: "A".into(), ..Default::default() },
    )
    .unwrap()
}

/// Drill every dataset of `v` with each of `sets`, scratch under `root`.
fn drill_all(
    v: &Vault<Open>,
    root: &Path,
    sets: Vec<Vec<Threat>>,
    shares: Vec<custos_core::ShareFile>,
) -> Vec<custos_risk::drill::DrillCell> {
    drill(v, &DrillOptions { pattern: None, sets, scratch: root.join("scratch"), passphrase: pass(), shares }).unwrap()
}

/// The report of `v` with every key checked.
fn checked_report(v: &Vault<Open>) -> report::Report {
    report::report(build::checked_graph(v, None).unwrap(), false, jiff::Timestamp::now())
}

/// The report's verdict on dataset `ds` under `t` alone.
fn single(r: &report::Report, ds: &str, t: Threat) -> custos_risk::Verdict {
    let d = r.rows().find(ds).unwrap();
    d.single.iter().find(|(x, _)| *x == t).unwrap().1.clone()
}

/// Every cell agrees with the model, and the drill brought back exactly
/// the datasets `proven` says.
fn assert_agree(cells: &[custos_risk::drill::DrillCell], proven: impl Fn(&str) -> bool) {
    for c in cells {
        assert!(c.agrees, "{c:#?}");
        assert_eq!(c.proven, proven(&c.dataset), "{c:#?}");
    }
}

fn paper_vault(root: &Path) -> Vault<Open> {
    paper_vault_at(root, "V")
}

/// The same, with the vault directory (and the default volume inside it)
/// at `vault_site`; at "A" the datasets live in the vault directory's
/// default volume, as in a vault made with the defaults.
fn paper_vault_at(root: &Path, vault_site: &str) -> Vault<Open> {
    let v = Vault::init(
        &root.join("vault"),
        &pass(),
        &InitOptions { kdf: KdfParams::MINIMUM, site: vault_site.into(), ..Default::default() },
    )
    .unwrap();
    v.set_chunk_size(64 * 1024).unwrap();
    if vault_site != "A" {
        let disk_a = vol(&v, root, "disk-a", "A", Medium::Disk);
        for app in ["AMDISK", "AMTAPE", "BLKDISK", "BLKTAPE"] {
            v.add_policy(&NewPolicy {
                name: app.to_lowercase(),
                pattern: Pattern::new(format!("{app}.**")).unwrap(),
                volume: disk_a.clone(),
                target: PolicyTarget::Template { app: None },
            })
            .unwrap();
        }
    }
    let disk_b = vol(&v, root, "disk-b", "B", Medium::Disk);
    let tape_b = vol(&v, root, "tape-b", "B", Medium::Tape);
    let sync_a = vol(&v, root, "sync-a", "A", Medium::Disk);
    let pprc = vol(&v, root, "pprc-b", "B", Medium::Disk);
    v.add_policy(&NewPolicy {
        name: "sync".into(),
        pattern: Pattern::new("SYNC.**").unwrap(),
        volume: sync_a.clone(),
        target: PolicyTarget::Template { app: None },
    })
    .unwrap();
    v.mirror_add(&sync_a, &pprc).unwrap();
    for (i, app) in ["AMDISK", "AMTAPE", "BLKDISK", "BLKTAPE", "SYNC"].iter().enumerate() {
        let name = DatasetName::new(format!("{app}.DATA")).unwrap();
        let bytes: Vec<u8> =
            (0..200_000u32).map(|j| (j.wrapping_mul(2654435761).wrapping_add(i as u32) >> 13) as u8).collect();
        v.put(&name, &mut bytes.as_slice(), &Default::default()).unwrap();
        match *app {
            "AMDISK" => drop(v.backup_logical(&name, &disk_b, None).unwrap()),
            "AMTAPE" => drop(v.backup_logical(&name, &tape_b, None).unwrap()),
            "BLKDISK" => drop(v.backup_raw(&name, &disk_b).unwrap()),
            "BLKTAPE" => drop(v.backup_raw(&name, &tape_b).unwrap()),
            _ => {}
        }
    }
    v
}

#[test]
fn report_reproduces_table_2_and_drills_prove_it() {
    let dir = tempfile::tempdir().unwrap();
    let v = paper_vault(dir.path());
    let g = build::graph(&v, None, v.held_mkvps().unwrap()).unwrap();
    let r = report::report(g.clone(), false, jiff::Timestamp::now());
    // The paper's Table 2 (rows) × our five applications (columns).
    let table2: [(Threat, [bool; 5]); 6] = [
        (Threat::FileCorruption, [true, true, true, true, false]),
        (Threat::MaliciousCorruption, [true, true, true, true, false]),
        (Threat::AccidentalDeletion, [true, true, true, true, false]),
        (Threat::DiskFailure, [true, true, true, true, true]),
        (Threat::SiteLoss, [true, true, true, true, true]),
        (Threat::DataKeyLoss, [true, true, false, false, false]),
    ];
    let apps = ["AMDISK", "AMTAPE", "BLKDISK", "BLKTAPE", "SYNC"];
    let by_app: BTreeMap<&str, &report::AppRisk> = r.apps().iter().map(|a| (a.app.as_str(), a)).collect();
    for (threat, row) in table2 {
        for (app, want) in apps.iter().zip(row) {
            let a = by_app[app];
            let (_, _, v) = a.single.iter().find(|(t, _, _)| *t == threat).unwrap();
            assert_eq!(v.survives(), want, "{app} / {}: {}", threat.name(), v.explain());
        }
    }
    // Where the paper says "yes, but not encrypted", Custos's tape copy is sealed.
    let (_, _, tape) = by_app["AMTAPE"].single.iter().find(|(t, _, _)| *t == Threat::DataKeyLoss).unwrap();
    assert!(
        tape.explain().contains("logical copy") && tape.explain().contains("DSET.BACK.AMTAPE"),
        "{}",
        tape.explain()
    );
    assert_eq!(r.unencrypted_copies, 0);
    // Example 2's warning is raised for every raw-only application.
    for app in ["BLKDISK", "BLKTAPE"] {
        assert!(r.findings.iter().any(|f| f.code == "shared-key" && f.subject.starts_with(app)), "{:?}", r.findings);
    }

    // Every single-threat cell, proven.
    let cells = drill_all(&v, dir.path(), Threat::ALL.iter().map(|t| vec![*t]).collect(), Vec::new());
    assert_eq!(cells.len(), 5 * Threat::ALL.len());
    let bad: Vec<_> = cells.iter().filter(|c| !c.agrees).collect();
    assert!(bad.is_empty(), "model and drill disagree: {bad:#?}");
    // Both outcomes occur: the drill proves losses as well as survivals.
    assert!(cells.iter().any(|c| c.proven) && cells.iter().any(|c| !c.proven));
}

/// Every pair of threats: the report covers all 45, and a drill of each
/// agrees with it.
#[test]
fn dual_events_are_modeled_and_proven() {
    let dir = tempfile::tempdir().unwrap();
    let v = paper_vault(dir.path());
    let g = build::graph(&v, None, v.held_mkvps().unwrap()).unwrap();
    let r = report::report(g.clone(), true, jiff::Timestamp::now());
    assert!(r.rows().iter().all(|d| d.dual.len() == Threat::pairs().len()));
    assert_eq!(Threat::pairs().len(), 45);
    // A pair is never survived when either of its threats alone is not.
    for d in &r.rows().all() {
        for ((a, b), v) in &d.dual {
            let single = |t: &Threat| d.single.iter().find(|(x, _)| x == t).unwrap().1.survives();
            if v.survives() {
                assert!(single(a) && single(b), "{} survives {a:?}+{b:?} but not one of them alone", d.dataset);
            }
        }
    }
    // Disk failure plus key loss: the logical copy offsite still saves AMDISK.
    let amdisk = r.rows().find("AMDISK.DATA").unwrap();
    let (_, am) =
        amdisk.dual.iter().find(|((a, b), _)| (*a, *b) == (Threat::DiskFailure, Threat::DataKeyLoss)).unwrap();
    assert!(am.survives(), "{}", am.explain());
    // Site loss plus key loss: the mirror at B holds SYNC's data, but under the lost key.
    let sync = r.rows().find("SYNC.DATA").unwrap();
    let (_, sy) = sync.dual.iter().find(|((a, b), _)| (*a, *b) == (Threat::SiteLoss, Threat::DataKeyLoss)).unwrap();
    assert!(!sy.survives(), "{}", sy.explain());

    let cells = drill_all(&v, dir.path(), Threat::pairs().into_iter().map(|(a, b)| vec![a, b]).collect(), Vec::new());
    assert_eq!(cells.len(), 5 * Threat::pairs().len());
    let bad: Vec<_> = cells.iter().filter(|c| !c.agrees).collect();
    assert!(bad.is_empty(), "model and drill disagree: {bad:#?}");
}

/// A vault whose reality differs from what the catalog says (a backup's
/// chunks rotted on its disk, unknown to the catalog): the model still
/// counts on that copy, and the drill catches it. Once `backup verify
/// --read-data` has found the rot (and recorded it), the model counts the
/// copy out and agrees; the report names the damaged copy.
#[test]
fn a_drill_catches_the_model_when_reality_differs() {
    let dir = tempfile::tempdir().unwrap();
    let v = paper_vault(dir.path());
    common::rot_chunks(&dir.path().join("disk-b"));
    let opts = DrillOptions {
        pattern: Some(Pattern::new("AMDISK.**").unwrap()),
        sets: vec![vec![Threat::DataKeyLoss]],
        scratch: dir.path().join("scratch"),
        passphrase: pass(),
        shares: Vec::new(),
    };
    let cells = drill(&v, &opts).unwrap();
    assert_eq!(cells.len(), 1);
    let c = &cells[0];
    assert!(c.modeled.survives() && !c.proven && !c.agrees, "{c:#?}");
    assert!(c.how.contains("backup"), "the drill says what it tried: {}", c.how);

    // A check that reached the copy's bytes is recorded on it…
    let b = v.backups(Some(&Pattern::new("AMDISK.**").unwrap())).unwrap().remove(0);
    assert_eq!(b.checked, None);
    assert!(v.verify_backup(&b, true).is_err());
    let b = v.backup_record(b.id).unwrap();
    let found = b.checked.as_ref().and_then(|c| c.problem.clone()).unwrap_or_default();
    assert!(b.checked.as_ref().is_some_and(|c| c.read_data) && found.contains("chunk"), "{:?}", b.checked);
    // A check of the manifest alone passes, and does not erase what the
    // full read found.
    v.verify_backup(&b, false).unwrap();
    assert_eq!(v.backup_record(b.id).unwrap().checked, b.checked);
    // … and the model no longer counts on it: it agrees with the drill.
    let cells = drill(&v, &opts).unwrap();
    let c = &cells[0];
    assert!(!c.modeled.survives() && !c.proven && c.agrees, "{c:#?}");
    assert!(
        c.modeled.explain().contains("which its last check found damaged, saves nothing"),
        "{}",
        c.modeled.explain()
    );
    let r = checked_report(&v);
    let f: Vec<_> = r.findings.iter().filter(|f| f.code == "damaged-copy").collect();
    assert_eq!(f.len(), 1, "{:?}", r.findings);
    assert!(f[0].subject == format!("AMDISK.DATA backup {}", b.id) && f[0].detail.contains(&found), "{f:?}");
    // An intact copy checked in full is recorded as such.
    let ok = v.backups(Some(&Pattern::new("AMTAPE.**").unwrap())).unwrap().remove(0);
    v.verify_backup(&ok, true).unwrap();
    let full = v.backup_record(ok.id).unwrap();
    let checked = full.checked.clone().unwrap();
    assert!(checked.read_data && checked.problem.is_none());
    // Nor does a later check of the manifest alone replace that full read.
    v.verify_backup(&full, false).unwrap();
    assert_eq!(v.backup_record(ok.id).unwrap().checked, Some(checked));
}

/// The vault directory at site A with the data, as `custos init` makes it.
/// Losing site A loses the catalog and the HSM with it: without a vault
/// backup elsewhere nothing comes back, and both model and drill say so.
/// With one at site B, the drill recovers the vault from it and then every
/// copy at B; and when the key record is damaged, the vault as it was at
/// that backup still holds the key, which the model counts too.
#[test]
fn losing_the_vault_site_is_survived_only_through_a_vault_backup() {
    let dir = tempfile::tempdir().unwrap();
    let v = paper_vault_at(dir.path(), "A");
    let sets = vec![vec![Threat::SiteLoss]];
    let opts = |sets: Vec<Vec<Threat>>, pattern: Option<&str>| DrillOptions {
        pattern: pattern.map(|p| Pattern::new(p).unwrap()),
        sets,
        scratch: dir.path().join("scratch"),
        passphrase: pass(),
        shares: Vec::new(),
    };
    let cells = drill(&v, &opts(sets.clone(), None)).unwrap();
    assert_eq!(cells.len(), 5);
    for c in &cells {
        assert!(c.agrees && !c.proven, "{c:#?}");
        assert!(c.modeled.explain().contains("no vault backup survives"), "{}", c.modeled.explain());
    }
    // Without a vault backup, losing the catalog or the HSM alone loses
    // everything too (no escrow here).
    let lone = vec![vec![Threat::CatalogLoss], vec![Threat::HsmLoss]];
    for c in drill(&v, &opts(lone.clone(), None)).unwrap() {
        assert!(c.agrees && !c.proven, "{c:#?}");
    }
    let disk_b = VolumeName::new("disk-b").unwrap();
    let vb = v.vault_backup(&disk_b).unwrap();
    let mut sets = sets;
    sets.extend(lone);
    let cells = drill(&v, &opts(sets, None)).unwrap();
    assert_eq!(cells.len(), 15);
    for c in &cells {
        assert!(c.agrees && c.proven, "{c:#?}");
        assert!(c.how.contains(&format!("recovered from vault backup {}", vb.id)), "{}", c.how);
        assert!(c.modeled.explain().contains(&vb.id), "{}", c.modeled.explain());
    }
    // A raw copy shares its dataset's key: alone it does not survive key
    // loss, but the vault backup holds the key record as it was.
    let cells = drill(&v, &opts(vec![vec![Threat::DataKeyLoss]], Some("BLKDISK.**"))).unwrap();
    assert_eq!(cells.len(), 1);
    let c = &cells[0];
    assert!(c.agrees && c.proven, "{c:#?}");
    assert!(c.how.contains("vault backup") && c.modeled.explain().contains("vault backup"), "{c:#?}");
    // A dataset written after the vault backup is not in it: site loss
    // loses it, and both say so.
    let late = DatasetName::new("LATE.DATA").unwrap();
    v.put(&late, &mut &b"written after the vault backup"[..], &Default::default()).unwrap();
    v.backup_logical(&late, &disk_b, None).unwrap();
    let cells = drill(&v, &opts(vec![vec![Threat::SiteLoss]], Some("LATE.**"))).unwrap();
    let c = &cells[0];
    assert!(c.agrees && !c.proven, "{c:#?}");
}

/// An attacker with write access to a volume corrupts every object on it,
/// not only the dataset's current chunks: a logical copy kept on the same
/// volume, and a keystore backup there, go too. A copy on another volume
/// of the same site survives it. Model and drill agree on both.
#[test]
fn malicious_corruption_takes_every_copy_on_the_attacked_volume() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault_at_a(dir.path());
    let default = VolumeName::new("default").unwrap();
    let other = vol(&v, dir.path(), "other-a", "A", Medium::Disk);
    let same = DatasetName::new("SAME.DATA").unwrap();
    let apart = DatasetName::new("APART.DATA").unwrap();
    v.put(&same, &mut &[7u8; 100_000][..], &Default::default()).unwrap();
    v.put(&apart, &mut &[9u8; 100_000][..], &Default::default()).unwrap();
    v.backup_logical(&same, &default, None).unwrap();
    v.backup_logical(&apart, &other, None).unwrap();
    v.keystore_backup(&default).unwrap();
    let r = checked_report(&v);
    for code in ["backup-with-data", "keystore-backups-at-vault-site"] {
        assert!(r.findings.iter().any(|f| f.code == code), "{code}: {:#?}", r.findings);
    }
    let cells = drill_all(&v, dir.path(), vec![vec![Threat::MaliciousCorruption]], Vec::new());
    assert_eq!(cells.len(), 2);
    assert_agree(&cells, |d| d == "APART.DATA");
}

/// The model checks what it relies on instead of trusting the records: a
/// BACK key shared by three datasets with a flipped bit in its record makes
/// their copies useless (the report names it; key-loss cells are lost, and
/// the drill agrees); an archived BACK key or one scheduled for destruction
/// saves its copy only after `key restore` or `key cancel-destroy`, which
/// the drill then runs; a master key change keeps the sealed report's idea
/// of the HSM's master keys true.
#[test]
fn the_model_checks_keys_and_their_states() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault_at_a(dir.path());
    let off = vol(&v, dir.path(), "off-b", "B", Medium::Disk);
    let mut back = BTreeMap::new();
    for app in ["SHARED", "ARCH", "SCHED"] {
        let n = if app == "SHARED" { 3 } else { 1 };
        for i in 0..n {
            let name = DatasetName::new(format!("{app}.D{i}")).unwrap();
            let body: Vec<u8> = (0..70_000u32).map(|j| (j ^ i).wrapping_mul(31) as u8).collect();
            v.put(&name, &mut body.as_slice(), &Default::default()).unwrap();
            let b = v.backup_logical(&name, &off, back.get(app)).unwrap().unwrap();
            back.insert(app, b.key_label);
        }
    }
    assert_eq!(v.backups(None).unwrap().iter().filter(|b| b.key_label == back["SHARED"]).count(), 3);
    v.drill_corrupt_key(&back["SHARED"]).unwrap();
    v.key_action(&back["ARCH"], custos_core::model::KeyAction::Deactivate, false).unwrap();
    v.key_action(&back["ARCH"], custos_core::model::KeyAction::Archive, false).unwrap();
    v.key_action(&back["SCHED"], custos_core::model::KeyAction::Deactivate, false).unwrap();
    v.schedule_destroy(&back["SCHED"], jiff::SignedDuration::from_hours(24 * 8), true).unwrap();

    let r = checked_report(&v);
    assert!(r.keys_checked);
    assert!(
        r.findings.iter().any(|f| f.code == "damaged-key" && f.subject == back["SHARED"].as_str()),
        "{:#?}",
        r.findings
    );
    let key_loss = |ds: &str| single(&r, ds, Threat::DataKeyLoss);
    for i in 0..3 {
        let v = key_loss(&format!("SHARED.D{i}"));
        assert!(!v.survives() && v.explain().contains("damaged"), "{}", v.explain());
    }
    assert!(
        r.findings.iter().any(|f| f.code == "shared-back-key"
            && f.subject == back["SHARED"].as_str()
            && f.detail.contains("3 datasets")),
        "{:#?}",
        r.findings
    );
    assert!(key_loss("ARCH.D0").explain().contains("key restore"), "{}", key_loss("ARCH.D0").explain());
    assert!(key_loss("SCHED.D0").explain().contains("cancel-destroy"), "{}", key_loss("SCHED.D0").explain());
    // The same vault, with nothing checked, is what the report trusted before.
    let trusting = build::graph(&v, None, v.held_mkvps().unwrap()).unwrap();
    let naive = report::report(trusting.clone(), false, jiff::Timestamp::now());
    assert!(!naive.keys_checked);
    let naive_cell = naive.rows().find("SHARED.D0").unwrap();
    assert!(naive_cell.single.iter().find(|(t, _)| *t == Threat::DataKeyLoss).unwrap().1.survives());

    let cells = drill_all(&v, dir.path(), vec![vec![Threat::DataKeyLoss]], Vec::new());
    assert_eq!(cells.len(), 5);
    assert_agree(&cells, |d| !d.starts_with("SHARED"));
    let arch = cells.iter().find(|c| c.dataset == "ARCH.D0").unwrap();
    assert!(arch.how.contains("key restore"), "{}", arch.how);
    let sched = cells.iter().find(|c| c.dataset == "SCHED.D0").unwrap();
    assert!(sched.how.contains("cancel-destroy"), "{}", sched.how);

    // A master key change: what a sealed reader believes the HSM holds
    // follows at once, not at the next report or drill.
    v.mk_load_new(custos_core::NewMasterKey::Generate, None).unwrap();
    v.mk_activate().unwrap();
    let seen = v.held_mkvps_seen().unwrap().unwrap();
    let mut now = v.held_mkvps().unwrap();
    let mut seen_sorted = seen.clone();
    seen_sorted.sort();
    now.sort();
    assert_eq!(seen_sorted, now);
}

/// A copy of an older generation is a recovery point, not today's data:
/// the model says which generation survives, and the drill, which restores
/// other bytes than the dataset holds, agrees that today's data is lost.
#[test]
fn a_copy_of_an_older_generation_is_not_todays_data() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault_at_a(dir.path());
    let off = vol(&v, dir.path(), "off-b", "B", Medium::Disk);
    let (old, fresh) = (DatasetName::new("OLD.DATA").unwrap(), DatasetName::new("FRESH.DATA").unwrap());
    for n in [&old, &fresh] {
        v.put(n, &mut &b"generation one"[..], &Default::default()).unwrap();
        v.backup_logical(n, &off, None).unwrap();
        v.put(n, &mut &b"generation two, written after the copy"[..], &Default::default()).unwrap();
    }
    v.backup_logical(&fresh, &off, None).unwrap();
    let r = checked_report(&v);
    let cell = |ds: &str| single(&r, ds, Threat::DiskFailure);
    let o = cell("OLD.DATA");
    assert!(matches!(o, custos_risk::Verdict::Stale { generation: 1, .. }) && !o.survives(), "{}", o.explain());
    assert!(o.cell().starts_with("old:") && o.explain().contains("generation 1"), "{}", o.explain());
    assert!(cell("FRESH.DATA").survives(), "{}", cell("FRESH.DATA").explain());
    let cells = drill_all(&v, dir.path(), vec![vec![Threat::DiskFailure]], Vec::new());
    assert_agree(&cells, |d| d == "FRESH.DATA");
}

/// The HSM lost whole, with no vault backup: with the custodians' shares,
/// `vault rebuild` gives the vault a new HSM and every escrowed key back,
/// which the model counts as survival through escrow; the drill does it.
#[test]
fn a_lost_hsm_comes_back_through_escrow_without_a_vault_backup() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault_at_a(dir.path());
    let custodians: Vec<String> = ["alice", "bob"].iter().map(|s| s.to_string()).collect();
    let mut ids = Vec::new();
    for c in &custodians {
        v.user_add(c, &[custos_core::model::Role::KeyCustodian], None).unwrap();
        let id = custos_core::CustodianIdentity::generate(c).unwrap();
        v.custodian_register(c, &id.recipient()).unwrap();
        ids.push(id);
    }
    v.escrow_init(&custodians, 2).unwrap();
    let shares: Vec<_> = ids
        .iter()
        .map(|id| {
            let sealed = custos_core::SealedShareFile(v.escrow_share(&id.custodian, None).unwrap());
            id.open_share(&sealed, "share").unwrap()
        })
        .collect();
    // Custody is reported: nobody confirmed, so escrow is unproven (and
    // below, with bob disabled, fewer than the threshold can act).
    let custody = |v: &Vault<Open>| {
        let r = checked_report(v);
        r.findings.into_iter().find(|f| f.subject == "escrow").map(|f| (f.code, f.detail)).unwrap()
    };
    let (code, detail) = custody(&v);
    assert_eq!(code, "escrow-unconfirmed", "{detail}");
    assert!(detail.contains("2 of 2 custodians (alice, bob)") && detail.contains("none"), "{detail}");
    let name = DatasetName::new("ESC.DATA").unwrap();
    v.put(&name, &mut &[5u8; 90_000][..], &Default::default()).unwrap();
    let g = build::checked_graph(&v, None).unwrap();
    let d = g.datasets.iter().find(|d| d.name == "ESC.DATA").unwrap();
    let modeled = custos_risk::model::evaluate(&g, d, &[Threat::HsmLoss]);
    assert!(
        matches!(modeled, custos_risk::Verdict::SurvivesIf { path: custos_risk::model::KeyPath::Escrow, .. }),
        "{}",
        modeled.explain()
    );
    let cells = drill_all(&v, dir.path(), vec![vec![Threat::HsmLoss]], shares);
    let c = &cells[0];
    assert!(c.agrees && c.proven && c.how.contains("rebuilt"), "{c:#?}");
    v.user_disable("bob").unwrap();
    let (code, detail) = custody(&v);
    assert_eq!(code, "escrow-below-threshold", "{detail}");
    assert!(detail.contains("disabled or removed: bob"), "{detail}");
}

/// A dataset migrated to tape whose home volume is gone: the report says a
/// recall would fail.
#[test]
fn a_migrated_dataset_whose_home_volume_is_gone_is_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault_at_a(dir.path());
    let home = vol(&v, dir.path(), "home-a", "A", Medium::Disk);
    let tape = vol(&v, dir.path(), "tape-a", "A", Medium::Tape);
    let name = DatasetName::new("MIG.DATA").unwrap();
    v.put(&name, &mut &[3u8; 50_000][..], &custos_core::PutOptions { volume: Some(home), ..Default::default() })
        .unwrap();
    v.migrate(&name, &tape).unwrap();
    let flagged = |v: &Vault<Open>| checked_report(v).findings.iter().any(|f| f.code == "home-volume-gone");
    assert!(!flagged(&v));
    std::fs::remove_dir_all(dir.path().join("home-a")).unwrap();
    assert!(flagged(&v));
}

/// A keystore backup taken between master key changes holds keys under two
/// master keys. The model takes each key's own wrapping from the backup
/// (it used to take the first master key the record lists, or the key's
/// re-enciphered one): once the master key a destroyed key was backed up
/// under is retired, that backup cannot restore it, as `key recover`
/// finds. A backup altered on its volume counts for nothing.
#[test]
fn a_keystore_backup_spanning_a_master_key_change_is_read_key_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let v = vault_at_a(dir.path());
    let default = VolumeName::new("default").unwrap();
    let put = |n: &str| v.put(&DatasetName::new(n).unwrap(), &mut &b"some data"[..], &Default::default()).unwrap();
    let a = put("OLDMK.DATA").key_label;
    v.mk_load_new(custos_core::NewMasterKey::Generate, None).unwrap();
    v.mk_activate().unwrap();
    put("NEWMK.DATA");
    // A under the first master key, B under the second.
    let ksb = v.keystore_backup(&default).unwrap();
    assert_eq!(ksb.mkvps.len(), 2);
    v.mk_reencipher(100, |_| {}).unwrap();
    v.mk_load_new(custos_core::NewMasterKey::Generate, None).unwrap();
    v.mk_activate().unwrap();
    v.key_action(&a, custos_core::model::KeyAction::Deactivate, false).unwrap();
    v.key_action(&a, custos_core::model::KeyAction::Destroy, true).unwrap();

    let g = build::checked_graph(&v, None).unwrap();
    let today = custos_risk::model::evaluate_key_today(&g, a.as_str());
    assert!(today.as_ref().is_err_and(|w| w.contains("master keys the HSM no longer holds")), "{today:?}");
    // Reality agrees: the backup cannot restore it.
    let e = v.recover_keys(&Pattern::new(a.as_str()).unwrap(), &ksb.id).unwrap_err();
    assert!(matches!(e, custos_core::Error::MasterKeyUnavailable { .. }), "{e}");

    // The backup altered on its volume: reported, and used for nothing.
    let f = dir.path().join("vault/volumes/default/keystore").join(format!("{}.ksb", ksb.id));
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&f, bytes).unwrap();
    let r = checked_report(&v);
    let found = r.findings.iter().find(|f| f.code == "unusable-keystore-backup").expect("an unusable backup");
    assert!(found.subject.contains(&ksb.id) && found.detail.contains("altered"), "{}", found.detail);
}

/// Who could destroy every copy of a dataset on their own: a principal
/// with the app and storage-admin roles over a dataset that has only a
/// snapshot (`ds rm`, `snapshot rm`), and a security administrator who can
/// destroy every key, are named; dual control stops them only where
/// another principal could approve (an approving role and the rights for
/// the operation itself), as the engine decides; a backup, which `backup
/// prune` never takes last, takes the dataset out of the first kind.
#[test]
fn a_principal_who_can_destroy_every_copy_alone_is_named() {
    use custos_core::model::Role;
    let dir = tempfile::tempdir().unwrap();
    let v = vault_at_a(dir.path());
    let off = vol(&v, dir.path(), "off-b", "B", Medium::Disk);
    for (n, roles) in [
        ("ops", vec![Role::App, Role::StorageAdmin]),
        ("sec", vec![Role::SecurityAdmin]),
        ("sec2", vec![Role::SecurityAdmin, Role::App]),
        ("old", vec![Role::SecurityAdmin, Role::App, Role::StorageAdmin]),
    ] {
        v.user_add(n, &roles, Some(&Passphrase::from(format!("{n} passphrase long enough")))).unwrap();
    }
    for n in ["ops", "sec2", "old"] {
        v.grant(n, custos_core::GrantKind::Data, &Pattern::new("PAY.**").unwrap()).unwrap();
        v.grant(n, custos_core::GrantKind::Key, &Pattern::new("**").unwrap()).unwrap();
    }
    v.user_disable("old").unwrap();
    for n in ["PAY.SNAP", "PAY.BACKED"] {
        v.put(&DatasetName::new(n).unwrap(), &mut &[1u8; 10_000][..], &Default::default()).unwrap();
    }
    v.snapshot_create(&DatasetName::new("PAY.SNAP").unwrap()).unwrap();
    v.backup_logical(&DatasetName::new("PAY.BACKED").unwrap(), &off, None).unwrap();
    v.set_dual_control("none").unwrap();
    let named = |v: &Vault<Open>| -> BTreeMap<String, String> {
        checked_report(v)
            .findings
            .into_iter()
            .filter(|f| f.code == "one-person-destruction")
            .map(|f| (f.subject, f.detail))
            .collect()
    };
    let f = named(&v);
    assert!(f["ops"].contains("remove 1 dataset") && f["ops"].contains("PAY.SNAP"), "{f:?}");
    assert!(!f["ops"].contains("PAY.BACKED") && !f["ops"].contains("every key"), "{f:?}");
    assert!(f["sec"].contains("every key") && !f["sec"].contains("remove"), "{f:?}");
    // sec2 may `ds rm` but not `snapshot rm` (no storage-admin role).
    assert!(f["sec2"].contains("every key") && !f["sec2"].contains("PAY.SNAP"), "{f:?}");
    assert!(!f.contains_key("old"), "disabled: {f:?}");
    // Under dual control: a second security administrator with the data
    // rights (sec2) approves what ops and sec would do, and sec what sec2
    // would.
    v.set_dual_control("data-removal,key-destroy").unwrap();
    assert!(named(&v).is_empty(), "{:?}", named(&v));
    // Only key destruction under dual control: ops removes alone again.
    v.set_dual_control("key-destroy").unwrap();
    assert_eq!(named(&v).keys().collect::<Vec<_>>(), ["ops"]);
}

/// Looking ahead (`--horizon`): a rule keeping only the last copy leaves
/// nothing good to restore when a bad write is noticed weeks later, and a
/// key due for destruction before then loses the copy that needs it;
/// dailies that reach past the horizon, or a snapshot, are not flagged.
#[test]
fn a_horizon_names_short_retention_and_keys_falling_due() {
    use custos_core::model::CopyMethod;
    let dir = tempfile::tempdir().unwrap();
    let v = vault_at_a(dir.path());
    let off = vol(&v, dir.path(), "off-b", "B", Medium::Disk);
    for n in ["SHORT.DATA", "SNAP.DATA", "LONG.DATA"] {
        v.put(&DatasetName::new(n).unwrap(), &mut &[2u8; 10_000][..], &Default::default()).unwrap();
    }
    v.snapshot_create(&DatasetName::new("SNAP.DATA").unwrap()).unwrap();
    let rule = |name: &str, pattern: &str, retention: custos_core::Retention| {
        v.hsm_rule_add(&custos_core::NewHsmRule {
            name: name.into(),
            pattern: Pattern::new(pattern).unwrap(),
            method: CopyMethod::Logical,
            backup_to: Some(off.clone()),
            retention,
            migrate_after_days: None,
            migrate_to: None,
        })
        .unwrap();
    };
    rule("short", "S*.**", custos_core::Retention { last: 1, ..Default::default() });
    rule("long", "LONG.**", custos_core::Retention { last: 1, daily: 120, ..Default::default() });
    v.hsm_run(jiff::Timestamp::now(), false).unwrap();
    let back = v.backups(Some(&Pattern::new("LONG.**").unwrap())).unwrap().remove(0).key_label;
    v.key_action(&back, custos_core::model::KeyAction::Deactivate, false).unwrap();
    v.schedule_destroy(&back, jiff::SignedDuration::from_hours(24 * 8), true).unwrap();
    // A primary key that stops encrypting in 30 days.
    let soon = v
        .create_key(&custos_core::NewKey {
            label: None,
            app: Some("EXP".into()),
            purpose: custos_core::model::Purpose::Prim,
            expires_at: Some(jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 30)),
            activate: true,
        })
        .unwrap();
    let exp = DatasetName::new("EXP.DATA").unwrap();
    let opts = custos_core::PutOptions { key: Some(soon.label.clone()), ..Default::default() };
    v.put(&exp, &mut &b"sealed under a key that expires"[..], &opts).unwrap();

    let g = build::checked_graph(&v, None).unwrap();
    let codes = |h: Option<i64>| -> Vec<(String, String, String)> {
        report::report_ahead(
            g.clone(),
            false,
            jiff::Timestamp::now(),
            h.map(|d| jiff::SignedDuration::from_hours(24 * d)),
        )
        .findings
        .into_iter()
        .filter(|f| f.code.contains("horizon"))
        .map(|f| (f.code.to_string(), f.subject, f.detail))
        .collect()
    };
    assert!(codes(None).is_empty());
    let f = codes(Some(90));
    assert_eq!(f.len(), 3, "{f:#?}");
    assert_eq!((f[0].0.as_str(), f[0].1.as_str()), ("retention-shorter-than-horizon", "hsm rule short"));
    assert!(
        f[0].2.contains("about 1 day ") && f[0].2.contains("1 dataset") && f[0].2.contains("SHORT.DATA"),
        "{}",
        f[0].2
    );
    assert!(!f[0].2.contains("SNAP.DATA"), "a snapshot pins a good state: {}", f[0].2);
    assert_eq!((f[1].0.as_str(), f[1].1.as_str()), ("destruction-within-horizon", back.as_str()));
    assert!(f[1].2.contains("LONG.DATA backup") && f[1].2.contains("cancel-destroy"), "{}", f[1].2);
    assert_eq!((f[2].0.as_str(), f[2].1.as_str()), ("expiry-within-horizon", soon.label.as_str()));
    assert!(f[2].2.contains("expires on") && f[2].2.contains("EXP.DATA) refuse new writes"), "{}", f[2].2);
    // A week ahead: the key is not due yet, and one kept copy reaches back a day.
    let f = codes(Some(7));
    assert_eq!(f.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), ["retention-shorter-than-horizon"]);
}

/// Every file below `dir`, read whole.
fn files_below(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

/// The paper's Table 2 as the paper wrote it: its "access method to tape"
/// column survives key loss as "Yes (but backups not secured i.e. not
/// encrypted)". A plaintext copy to tape is refused until the
/// `backup.plaintext` setting allows it, and to disk always; made, it holds
/// the data in the clear on the tape volume, survives every key threat
/// (proven by drills), and the report counts and names it as an exposure.
/// As if unencrypted, the report is the paper's Table 1.
#[test]
fn a_plaintext_tape_copy_is_table_2s_unsecured_yes_and_table_1_is_reproduced() {
    let dir = tempfile::tempdir().unwrap();
    let v = paper_vault(dir.path());
    let disk_a = VolumeName::new("disk-a").unwrap();
    let disk_b = VolumeName::new("disk-b").unwrap();
    let tape_b = VolumeName::new("tape-b").unwrap();
    v.add_policy(&NewPolicy {
        name: "amplain".into(),
        pattern: Pattern::new("AMPLAIN.**").unwrap(),
        volume: disk_a,
        target: PolicyTarget::Template { app: None },
    })
    .unwrap();
    let name = DatasetName::new("AMPLAIN.DATA").unwrap();
    // Three chunks and a bit, with a phrase to find on the tape.
    let mut body: Vec<u8> = (0..200_000u32).map(|j| (j.wrapping_mul(2246822519) >> 11) as u8).collect();
    let phrase = b"PAYROLL RECORD 0042: in the clear on tape";
    body[150_000..150_000 + phrase.len()].copy_from_slice(phrase);
    v.put(&name, &mut body.as_slice(), &Default::default()).unwrap();
    let names = std::slice::from_ref(&name);
    let tape_files = || files_below(&dir.path().join("tape-b"));
    let before = (tape_files().len(), v.backups(None).unwrap().len());

    // Refused by default, and to a disk volume even when allowed: nothing stored.
    let err = v.backup_plaintext_many(names, &tape_b).unwrap_err().to_string();
    assert!(err.contains("backup.plaintext") && err.contains("config set backup.plaintext allow"), "{err}");
    assert!(v.set_plaintext_allowed("yes please").unwrap_err().to_string().contains("allow"));
    v.set_plaintext_allowed("allow").unwrap();
    let err = v.backup_plaintext_many(names, &disk_b).unwrap_err().to_string();
    assert!(err.contains("disk volume") && err.contains("tape"), "{err}");
    assert_eq!((tape_files().len(), v.backups(None).unwrap().len()), before);

    let made = v.backup_plaintext_many(names, &tape_b).unwrap();
    let b = made[0].1.clone().expect("a copy was made");
    assert_eq!(b.method, custos_core::model::CopyMethod::Plaintext);
    // Once per generation: a second run makes nothing.
    assert!(v.backup_plaintext_many(names, &tape_b).unwrap()[0].1.is_none());
    // The phrase is on the tape as it is; no sealed copy would show it.
    let holding: Vec<_> =
        tape_files().into_iter().filter(|(_, bytes)| bytes.windows(phrase.len()).any(|w| w == phrase)).collect();
    assert_eq!(holding.len(), 1, "exactly one plaintext chunk holds the phrase");
    // Checked in full, and restored, with no key involved.
    v.verify_backup(&b, true).unwrap();
    let back = DatasetName::new("AMPLAIN.BACK").unwrap();
    v.restore(&b, Some(&back)).unwrap();
    let mut got = Vec::new();
    v.get(&back, &mut got, None).unwrap();
    assert!(got == body, "the restored bytes are the dataset's");
    v.remove_dataset(&back).unwrap();
    // The key that seals the dataset is not one its plaintext copy needs.
    let key = v.dataset(&name).unwrap().current.key_label;
    assert!(!v.needing_key(&key).unwrap().iter().any(|x| x.contains("plaintext")), "{:?}", v.needing_key(&key));

    // As if unencrypted: the paper's Table 1, five threats, the same
    // answers as Table 2's first five rows for its five columns (with no
    // vault backup yet, as in the paper).
    let mut g = build::checked_graph(&v, None).unwrap();
    g.as_if_unencrypted = true;
    let t1 = report::report(g.clone(), true, jiff::Timestamp::now());
    assert_eq!(t1.threats, Threat::UNENCRYPTED.to_vec());
    assert!(t1.as_if_unencrypted && t1.copies.is_empty());
    let table1: [(Threat, [bool; 5]); 5] = [
        (Threat::FileCorruption, [true, true, true, true, false]),
        (Threat::MaliciousCorruption, [true, true, true, true, false]),
        (Threat::AccidentalDeletion, [true, true, true, true, false]),
        (Threat::DiskFailure, [true, true, true, true, true]),
        (Threat::SiteLoss, [true, true, true, true, true]),
    ];
    let by_app: BTreeMap<&str, &report::AppRisk> = t1.apps().iter().map(|a| (a.app.as_str(), a)).collect();
    for (threat, row) in table1 {
        for (app, want) in ["AMDISK", "AMTAPE", "BLKDISK", "BLKTAPE", "SYNC"].iter().zip(row) {
            let (_, _, verdict) = by_app[app].single.iter().find(|(t, _, _)| *t == threat).unwrap();
            assert_eq!(verdict.survives(), want, "{app} / {}: {}", threat.name(), verdict.explain());
        }
    }
    // No key is named where none is needed (SYNC's mirror, as if unencrypted).
    let sync = t1.rows().find("SYNC.DATA").unwrap();
    let (_, disk) = sync.single.iter().find(|(t, _)| *t == Threat::DiskFailure).unwrap();
    assert!(disk.explain().ends_with("(reads fail over)"), "{}", disk.explain());
    // Pairs among the five only, and no key finding.
    assert!(t1.rows().iter().all(|d| d.dual.len() == 10));
    assert!(!t1.findings.iter().any(|f| f.code.contains("key")), "{:#?}", t1.findings);
    let text = report::render_table(&t1, false);
    assert!(text.contains("Table 1") && !text.contains("Key loss"), "{text}");

    // The catalog (and the HSM) are kept offsite too, so that the vault
    // itself outlives its own loss.
    v.vault_backup(&disk_b).unwrap();
    let r = checked_report(&v);
    assert_eq!(r.unencrypted_copies, 1);
    let f: Vec<_> = r.findings.iter().filter(|f| f.code == "plaintext-copy").collect();
    assert!(f.len() == 1 && f[0].subject == format!("AMPLAIN.DATA backup {}", b.id), "{:#?}", r.findings);
    // The paper's column: yes to every threat to data (the copy is offsite),
    // and to key loss — but not secured. Here that holds for the master
    // keys and the keystore as a whole too.
    for t in Threat::ALL {
        let verdict = single(&r, "AMPLAIN.DATA", t);
        assert!(verdict.survives(), "{}: {}", t.name(), verdict.explain());
    }
    for t in [Threat::DataKeyLoss, Threat::MasterKeyLoss, Threat::KeystoreLoss] {
        let verdict = single(&r, "AMPLAIN.DATA", t);
        assert!(
            verdict.cell().contains("not encrypted") && verdict.explain().contains("not secured"),
            "{}: {} / {}",
            t.name(),
            verdict.cell(),
            verdict.explain()
        );
    }
    // A logical copy under a BACK key is preferred where one exists: the
    // plaintext copy is the verdict only when nothing sealed saves it.
    let amtape = single(&r, "AMTAPE.DATA", Threat::DataKeyLoss);
    assert!(amtape.explain().contains("logical copy"), "{}", amtape.explain());
    let html = custos_risk::report::render_html(&r, false);
    assert!(html.contains("1 copy is not encrypted") && html.contains("NOT ENCRYPTED"), "{html}");

    // Drills destroy the keys for real and bring the data back from tape.
    let opts = DrillOptions {
        pattern: Some(Pattern::new("AMPLAIN.**").unwrap()),
        sets: Threat::ALL.iter().map(|t| vec![*t]).collect(),
        scratch: dir.path().join("scratch"),
        passphrase: pass(),
        shares: Vec::new(),
    };
    let cells = drill(&v, &opts).unwrap();
    assert_eq!(cells.len(), Threat::ALL.len());
    for c in &cells {
        assert!(c.agrees && c.proven, "{c:#?}");
    }
    let key_loss = cells.iter().find(|c| c.threats == [Threat::DataKeyLoss]).unwrap();
    assert!(key_loss.how.contains("plaintext copy"), "{}", key_loss.how);

    // A flipped bit on the tape is found by a full check, which the model
    // then counts: key loss is now survived only through the vault backup
    // (which holds the key as it was), never through the damaged copy.
    let (path, mut bytes) = holding.into_iter().next().unwrap();
    bytes[10] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let err = v.verify_backup(&b, true).unwrap_err().to_string();
    assert!(err.contains("SHA-256"), "{err}");
    let r = checked_report(&v);
    let after = single(&r, "AMPLAIN.DATA", Threat::DataKeyLoss);
    assert!(after.explain().contains("vault backup") && !after.explain().contains("plaintext"), "{}", after.explain());
    assert!(r.findings.iter().any(|f| f.code == "damaged-copy" && f.subject.contains(&format!("backup {}", b.id))));
    // Restoring a plaintext copy whose writing side fails (its volume is
    // gone) answers with that failure, not with the reading side finding
    // its pipe closed: the copy is larger than the pipe holds.
    let big = DatasetName::new("PLAINBIG.DATA").unwrap();
    let body: Vec<u8> = (0..12u32 << 20).map(|j| (j.wrapping_mul(2654435761) >> 9) as u8).collect();
    v.put(&big, &mut body.as_slice(), &Default::default()).unwrap();
    let copy = v.backup_plaintext_many(std::slice::from_ref(&big), &tape_b).unwrap()[0].1.clone().unwrap();
    let gone = vol(&v, dir.path(), "gone-a", "A", Medium::Disk);
    v.add_policy(&NewPolicy {
        name: "gone".into(),
        pattern: Pattern::new("GONE.**").unwrap(),
        volume: gone,
        target: PolicyTarget::Template { app: None },
    })
    .unwrap();
    std::fs::remove_dir_all(dir.path().join("gone-a")).unwrap();
    let err = v.restore(&copy, Some(&DatasetName::new("GONE.DATA").unwrap())).unwrap_err().to_string();
    assert!(err.contains("gone-a") && !err.contains("stopped"), "{err}");
}
