//! The paper's Table 2, computed from a real vault protected in its five
//! ways, and proven cell by cell by drills.

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

/// Five applications, one way each: logical to disk, logical to tape, raw to
/// disk, raw to tape (all copies offsite, at site B), and a synchronous
/// mirror to site B. No keystore backup and no escrow, as in the paper.
fn paper_vault(root: &Path) -> Vault<Open> {
    let v = Vault::init(
        &root.join("vault"),
        &pass(),
        &InitOptions { kdf: KdfParams::MINIMUM, site: "A".into(), ..Default::default() },
    )
    .unwrap();
    v.set_chunk_size(64 * 1024).unwrap();
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
    let r = report::report(&g, false, jiff::Timestamp::now());
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
    let by_app: BTreeMap<&str, &report::AppRisk> = r.apps.iter().map(|a| (a.app.as_str(), a)).collect();
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
    let scratch = dir.path().join("scratch");
    let opts = DrillOptions {
        pattern: None,
        sets: Threat::ALL.iter().map(|t| vec![*t]).collect(),
        scratch: scratch.clone(),
        passphrase: pass(),
        shares: Vec::new(),
    };
    let cells = drill(&v, &opts).unwrap();
    assert_eq!(cells.len(), 5 * Threat::ALL.len());
    let bad: Vec<_> = cells.iter().filter(|c| !c.agrees).collect();
    assert!(bad.is_empty(), "model and drill disagree: {bad:#?}");
    // Both outcomes occur: the drill proves losses as well as survivals.
    assert!(cells.iter().any(|c| c.proven) && cells.iter().any(|c| !c.proven));
}

/// Every pair of threats: the report covers all 28, and a drill of each
/// agrees with it.
#[test]
fn dual_events_are_modeled_and_proven() {
    let dir = tempfile::tempdir().unwrap();
    let v = paper_vault(dir.path());
    let g = build::graph(&v, None, v.held_mkvps().unwrap()).unwrap();
    let r = report::report(&g, true, jiff::Timestamp::now());
    assert!(r.datasets.iter().all(|d| d.dual.len() == 28));
    // A pair is never survived when either of its threats alone is not.
    for d in &r.datasets {
        for ((a, b), v) in &d.dual {
            let single = |t: &Threat| d.single.iter().find(|(x, _)| x == t).unwrap().1.survives();
            if v.survives() {
                assert!(single(a) && single(b), "{} survives {a:?}+{b:?} but not one of them alone", d.dataset);
            }
        }
    }
    // Disk failure plus key loss: the logical copy offsite still saves AMDISK.
    let amdisk = r.datasets.iter().find(|d| d.dataset == "AMDISK.DATA").unwrap();
    let (_, am) =
        amdisk.dual.iter().find(|((a, b), _)| (*a, *b) == (Threat::DiskFailure, Threat::DataKeyLoss)).unwrap();
    assert!(am.survives(), "{}", am.explain());
    // Site loss plus key loss: the mirror at B holds SYNC's data, but under the lost key.
    let sync = r.datasets.iter().find(|d| d.dataset == "SYNC.DATA").unwrap();
    let (_, sy) = sync.dual.iter().find(|((a, b), _)| (*a, *b) == (Threat::SiteLoss, Threat::DataKeyLoss)).unwrap();
    assert!(!sy.survives(), "{}", sy.explain());

    let opts = DrillOptions {
        pattern: None,
        sets: Threat::pairs().into_iter().map(|(a, b)| vec![a, b]).collect(),
        scratch: dir.path().join("scratch"),
        passphrase: pass(),
        shares: Vec::new(),
    };
    let cells = drill(&v, &opts).unwrap();
    assert_eq!(cells.len(), 5 * 28);
    let bad: Vec<_> = cells.iter().filter(|c| !c.agrees).collect();
    assert!(bad.is_empty(), "model and drill disagree: {bad:#?}");
}

/// A vault whose reality differs from what the catalog says (a backup's
/// chunks rotted on its disk, unknown to the catalog): the model still
/// counts on that copy, and the drill catches it.
#[test]
fn a_drill_catches_the_model_when_reality_differs() {
    let dir = tempfile::tempdir().unwrap();
    let v = paper_vault(dir.path());
    let mut rotted = 0;
    for sub in std::fs::read_dir(dir.path().join("disk-b").join("chunks")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let mut b = std::fs::read(&p).unwrap();
            let mid = b.len() / 2;
            b[mid] ^= 1;
            std::fs::write(&p, b).unwrap();
            rotted += 1;
        }
    }
    assert!(rotted > 0);
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
}
