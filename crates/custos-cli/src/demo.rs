//! `custos demo`: the paper's story in a throwaway vault. Five applications
//! protected in the five ways of its Table 2; the table computed from the
//! vault and proven by drills; Example 2 (a maliciously corrupted key) and
//! Example 1 (a key lost long ago, across master key changes) played out,
//! with recovery wherever the design allows.

use std::path::{Path, PathBuf};

use anyhow::Context;
use custos_core::model::{DatasetName, KeyAction, Medium, Pattern, PolicyTarget, VolumeName};
use custos_core::{
    InitOptions, KdfParams, NewMasterKey, NewPolicy, NewVolume, Open, Passphrase, PutOptions, Recovered, Vault,
};
use custos_risk::{build, drill, report, Threat};

use custos_ops::render::bytes;

fn sample(name: &str, rows: usize) -> Vec<u8> {
    let mut out = String::from("employee_id,name,department,salary\n");
    let mut x: u64 = name.bytes().fold(1469598103934665603, |h, b| (h ^ b as u64).wrapping_mul(1099511628211));
    for i in 0..rows {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!(
            "{i:07},EMPLOYEE-{:06},{},{}\n",
            x % 1_000_000,
            ["FIN", "HR", "OPS", "IT"][(x % 4) as usize],
            30_000 + x % 90_000
        ));
    }
    out.into_bytes()
}

fn step(n: u32, s: &str) {
    println!("\n{n}. {s}");
}

pub fn run(keep: Option<&Path>) -> anyhow::Result<()> {
    let tmp;
    let root: PathBuf = match keep {
        Some(k) => {
            std::fs::create_dir_all(k).with_context(|| format!("cannot create {}", k.display()))?;
            k.to_path_buf()
        }
        None => {
            tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
            tmp.path().to_path_buf()
        }
    };
    let vault_dir = root.join("vault");
    let secret: [u8; 16] = custos_crypto::random_array()?;
    let pass = Passphrase::from(hex::encode(secret));

    println!("Custos demo: encrypted data, its backups, and what key loss means.");
    println!("The story of \"Data Backups and Pervasive Encryption\" (RSM Partners), played out in a throwaway vault");
    println!("in {}.", vault_dir.display());

    step(1, "Create a vault (SQLite catalog, software HSM with a master key) and five volumes on two sites.");
    let vault = Vault::init(
        &vault_dir,
        &pass,
        &InitOptions { kdf: KdfParams::MINIMUM, site: "A".into(), ..Default::default() },
    )?;
    let vol = |name: &str, site: &str, medium: Medium| -> anyhow::Result<VolumeName> {
        let n = VolumeName::new(name)?;
        vault.add_volume(&NewVolume {
            name: n.clone(),
            location: root.join(name).display().to_string(),
            site: site.into(),
            medium,
        })?;
        Ok(n)
    };
    let disk_b = vol("disk-b", "B", Medium::Disk)?;
    let tape_b = vol("tape-b", "B", Medium::Tape)?;
    let sync_a = vol("sync-a", "A", Medium::Disk)?;
    let pprc_b = vol("pprc-b", "B", Medium::Disk)?;
    vault.mirror_add(&sync_a, &pprc_b)?;
    vault.add_policy(&NewPolicy {
        name: "orders".into(),
        pattern: Pattern::new("ORD.**")?,
        volume: sync_a.clone(),
        target: PolicyTarget::Template { app: None },
    })?;
    println!("   site A: default (disk), sync-a (disk, mirrored synchronously to pprc-b)");
    println!("   site B: disk-b (disk), tape-b (tape tier), pprc-b (the mirror's secondary)");
    println!("   (a light passphrase KDF: this vault is thrown away at the end)");

    step(2, "Five applications, each protected one way of the paper's Table 2. Each dataset has its own key.");
    let apps = [
        ("PAY.MASTER", "logical copy to disk at site B (access method: re-sealed under a BACK key)"),
        ("GL.LEDGER", "logical copy to tape at site B"),
        ("HR.STAFF", "raw copy to disk at site B (block copy: same key, no key access needed)"),
        ("CRM.CUSTOMERS", "raw copy to tape at site B"),
        ("ORD.ORDERS", "synchronous mirror to site B (PPRC)"),
    ];
    let mut originals = Vec::new();
    for (i, (name, how)) in apps.iter().enumerate() {
        let ds = DatasetName::new(*name)?;
        let data = sample(name, 20_000 + 5_000 * i);
        let r = vault.put(&ds, &mut &data[..], &PutOptions::default())?;
        match i {
            0 => drop(vault.backup_logical(&ds, &disk_b, None)?),
            1 => drop(vault.backup_logical(&ds, &tape_b, None)?),
            2 => drop(vault.backup_raw(&ds, &disk_b)?),
            3 => drop(vault.backup_raw(&ds, &tape_b)?),
            _ => {}
        }
        println!("   {:<14} {:>9} key {:<22} {how}", name, bytes(r.size), r.key_label.to_string());
        originals.push((ds, data));
    }
    let needle = b"EMPLOYEE-";
    let (mut files, mut hits) = (0, 0);
    for v in ["vault/volumes/default", "disk-b", "tape-b", "sync-a", "pprc-b"] {
        for entry in walk(&root.join(v))? {
            files += 1;
            hits += std::fs::read(&entry)?.windows(needle.len()).any(|w| w == needle) as usize;
        }
    }
    println!("   {files} files on the volumes, tape included; {hits} contain the text \"EMPLOYEE-\" that fills every dataset.");

    step(3, "The paper's Table 2, computed from this vault (rows: threats; columns: applications).");
    let table = |v: &Vault<Open>| -> anyhow::Result<report::Report> {
        let g = build::graph(v, None, v.held_mkvps()?)?;
        Ok(report::report(g.clone(), false, jiff::Timestamp::now()))
    };
    let r = table(&vault)?;
    print!("{}", indent(&report::render_threat_rows(&r)));
    println!(
        "   The paper: block copies and mirrors do not survive key loss; access-method copies under another key do."
    );
    println!(
        "   Where the paper says \"yes, but not encrypted\" for tape, Custos's tape copy is sealed under its BACK key."
    );
    println!(
        "   (The paper's unencrypted tape copy exists too, refused until `custos config set backup.plaintext allow`:"
    );
    println!(
        "   `backup run --plaintext` makes it, and the report names it as an exposure. `risk report --as-if-unencrypted`"
    );
    println!("   gives the paper's Table 1.)");
    println!(
        "   Data centre loss is NO everywhere: the vault directory (catalog, HSM file) is at site A, and the paper"
    );
    println!(
        "   takes for granted what nothing here provides yet, a keystore and catalog that outlive site A (step 5)."
    );

    step(4, "Prove every cell: clone the vault, apply each threat for real, recover with the normal operations.");
    let scratch = root.join("drills");
    let cells = drill::drill(
        &vault,
        &drill::DrillOptions {
            pattern: None,
            sets: Threat::ALL.iter().map(|t| vec![*t]).collect(),
            scratch: scratch.clone(),
            passphrase: Passphrase::from(hex::encode(secret)),
            shares: Vec::new(),
        },
    )?;
    let _ = std::fs::remove_dir_all(&scratch);
    let agree = cells.iter().filter(|c| c.agrees).count();
    for c in cells.iter().filter(|c| !c.agrees) {
        let threats: Vec<&str> = c.threats.iter().map(|t| t.name()).collect();
        println!(
            "   DISAGREES: {} / {}: modeled {}; drilled: {}",
            c.dataset,
            threats.join(" + "),
            c.modeled.explain(),
            c.not_drilled.as_deref().unwrap_or(&c.how)
        );
    }
    anyhow::ensure!(agree == cells.len(), "{} drilled cells disagree with the model", cells.len() - agree);
    println!(
        "   {} cells drilled ({} datasets x {} threats): all {agree} agree with the model ({} survived, {} were lost, as modeled).",
        cells.len(),
        apps.len(),
        Threat::ALL.len(),
        cells.iter().filter(|c| c.proven).count(),
        cells.iter().filter(|c| !c.proven).count()
    );

    step(5, "Custos keeps keys recoverable too: a vault backup and a keystore backup at site B, and escrow to 2 of 3 custodians.");
    let vb = vault.vault_backup(&disk_b)?;
    let ksb = vault.keystore_backup(&disk_b)?;
    let custodians: Vec<String> = ["alice", "bob", "carol"].iter().map(|s| s.to_string()).collect();
    // Each custodian is a user with a key pair of their own (`custos escrow
    // keygen` makes one on their machine); only the recipient is registered,
    // and each share is sealed to it. The demo holds the key pairs in memory.
    let mut ids = Vec::new();
    for c in &custodians {
        vault.user_add(c, &[custos_core::model::Role::KeyCustodian], None)?;
        let id = custos_core::CustodianIdentity::generate(c)?;
        vault.custodian_register(c, &id.recipient())?;
        ids.push(id);
    }
    let kbk = vault.escrow_init(&custodians, 2)?;
    let mut shares = Vec::new();
    for id in &ids {
        let sealed = custos_core::SealedShareFile(vault.escrow_share(&id.custodian, None)?);
        shares.push(id.open_share(&sealed, &format!("{}'s share", id.custodian))?);
    }
    println!(
        "   keystore backup {} ({} keys); key-backup key {} split among alice, bob, carol, each share sealed to its custodian's own key",
        ksb.id, ksb.key_count, kbk.id
    );
    let r = table(&vault)?;
    let cell = |app: &str, t: Threat| {
        r.apps()
            .iter()
            .find(|a| a.app == app)
            .and_then(|a| a.single.iter().find(|(x, _, _)| *x == t))
            .map(|(_, _, v)| v.explain())
    };
    println!("   vault backup {}: the catalog and the HSM file, sealed, at site B.", vb.id);
    println!("   HR's data centre loss is now: {}", cell("HR", Threat::SiteLoss).unwrap_or_default());
    println!("   HR's key loss is now: {}", cell("HR", Threat::DataKeyLoss).unwrap_or_default());

    step(
        6,
        "Example 2: someone flips a bit in the key records of HR.STAFF (raw copies) and PAY.MASTER (logical copy).",
    );
    let (pay, hr) = (&originals[0].0, &originals[2].0);
    let pay_key = vault.dataset(pay)?.current.key_label;
    let hr_key = vault.dataset(hr)?.current.key_label;
    vault.drill_corrupt_key(&pay_key)?;
    vault.drill_corrupt_key(&hr_key)?;
    match vault.get(hr, &mut std::io::sink(), None) {
        Err(e) => println!("   reading HR.STAFF: {e}"),
        Ok(_) => anyhow::bail!("data under a corrupted key was readable"),
    }
    let hr_raw = vault.backups(Some(&Pattern::new("HR.STAFF")?))?.pop().context("HR's raw copy")?;
    match vault.restore(&hr_raw, None) {
        Err(e) => println!("   restoring HR's raw copy: {e}"),
        Ok(_) => anyhow::bail!("a raw copy restored without its key"),
    }
    let pay_copy = vault.backups(Some(&Pattern::new("PAY.MASTER")?))?.pop().context("PAY's logical copy")?;
    let rr = vault.restore(&pay_copy, None)?;
    println!(
        "   PAY.MASTER restored from its logical copy under {} as generation {} under key {}{}; verified.",
        pay_copy.key_label,
        rr.generation,
        rr.key_label,
        if rr.new_key { " (new)" } else { "" }
    );
    check(&vault, pay, &originals[0].1)?;
    let got = vault.recover_keys(&Pattern::new(hr_key.as_str())?, &ksb.id)?;
    let Some(Recovered::Repaired { damage, .. }) = got.into_iter().find(|x| matches!(x, Recovered::Repaired { .. }))
    else {
        anyhow::bail!("HR's damaged key was not repaired");
    };
    check(&vault, hr, &originals[2].1)?;
    println!("   HR.STAFF: `key recover` found the record damaged ({damage}),");
    println!("   took its material from keystore backup {}; the dataset reads back identical.", ksb.id);
    let got = vault.recover_keys(&Pattern::new(pay_key.as_str())?, &ksb.id)?;
    anyhow::ensure!(got.iter().any(|x| matches!(x, Recovered::Repaired { .. })), "PAY's damaged key was not repaired");
    println!("   PAY.MASTER's old key {pay_key} is repaired the same way, so its older generations read again.");

    step(7, "Example 1: a dataset used once a year; its key is deleted by mistake, and nobody notices for years.");
    let arc = DatasetName::new("ARC.Y2019")?;
    let arc_data = sample("ARC.Y2019", 8_000);
    let arc_key = vault.put(&arc, &mut &arc_data[..], &PutOptions::default())?.key_label;
    let old_ksb = vault.keystore_backup(&disk_b)?;
    println!("   ARC.Y2019 stored under {arc_key} (escrowed at creation); keystore backup {} taken.", old_ksb.id);
    vault.key_action(&arc_key, KeyAction::Deactivate, false)?;
    vault.key_action(&arc_key, KeyAction::Destroy, true)?;
    println!("   The key is deleted. Then the master key is changed each year, twice:");
    for year in [2021, 2022] {
        vault.mk_load_new(NewMasterKey::Generate, None)?;
        vault.mk_activate()?;
        let re = vault.mk_reencipher(1000, |_| {})?;
        println!("     {year}: new master key {}, {} keys re-enciphered", re.to, re.moved);
    }
    let r = table(&vault)?;
    for f in r.findings.iter().filter(|f| f.subject.starts_with("ARC.") || f.subject == arc_key.as_str()) {
        println!("   finding [{}] {}: {}", f.code, f.subject, f.detail);
    }
    let opts = drill::DrillOptions {
        pattern: Some(Pattern::new("ARC.Y2019")?),
        sets: vec![vec![Threat::DataKeyLoss]],
        scratch: root.join("drills"),
        passphrase: Passphrase::from(hex::encode(secret)),
        shares: shares.drain(..2).collect(),
    };
    let proof = drill::drill(&vault, &opts)?;
    let _ = std::fs::remove_dir_all(root.join("drills"));
    let shares = opts.shares;
    let c = proof.first().context("a drill cell for ARC.Y2019")?;
    anyhow::ensure!(c.agrees && c.proven, "the drill of Example 1 did not prove it: {}", c.how);
    println!("   A drill on a clone proves it first, with alice's and bob's shares: {}.", c.how);
    match vault.recover_keys(&Pattern::new(arc_key.as_str())?, &old_ksb.id) {
        Err(e) => println!("   recovering from the old keystore backup: {e}"),
        Ok(_) => anyhow::bail!("a backup under a retired master key was usable"),
    }
    vault.recover_from_escrow(&arc_key, &shares[..2])?;
    check(&vault, &arc, &arc_data)?;
    println!("   Escrow does not depend on master keys: alice and bob's shares recover {arc_key}; ARC.Y2019 reads back identical.");

    step(8, "The report for the whole vault, as HTML for a browser.");
    let r = table(&vault)?;
    let html = root.join("risk-report.html");
    std::fs::write(&html, report::render_html(&r, false))?;
    println!(
        "   {} findings; {} of {} backups and snapshots decryptable today.",
        r.findings.len(),
        r.copies.iter().filter(|c| c.path.is_some()).count(),
        r.copies.len()
    );
    println!(
        "   `custos risk report --dual` adds every pair of threats; `custos risk drill --all --dual` proves them."
    );

    println!(
        "\nKey loss is data loss: every copy that shares a key shares its fate. Copies under separate keys, keystore"
    );
    println!("backups under master keys still held, and escrow are how Custos keeps data recoverable.");
    match keep {
        Some(_) => {
            let pf = root.join("passphrase.txt");
            std::fs::write(&pf, format!("{}\n", hex::encode(secret)))?;
            println!("The vault is kept, with the HTML report at {}. Explore it with:", html.display());
            println!("  custos --vault {} --passphrase-file {} risk report", vault_dir.display(), pf.display());
        }
        None => println!(
            "The throwaway vault is removed. `custos demo --keep DIR` keeps it, and the HTML report, to explore."
        ),
    }
    Ok(())
}

fn check(v: &Vault<Open>, name: &DatasetName, want: &[u8]) -> anyhow::Result<()> {
    let mut out = Vec::new();
    v.get(name, &mut out, None)?;
    anyhow::ensure!(out == want, "{name} did not read back byte for byte");
    Ok(())
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("   {l}\n")).collect()
}

fn walk(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    Ok(out)
}
