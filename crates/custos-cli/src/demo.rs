//! `custos demo`: a guided tour in a throwaway vault. Stores datasets, reads
//! them back, shows that volumes hold only ciphertext and that tampering is
//! caught, then destroys a key and shows its data erased.

use std::path::{Path, PathBuf};

use anyhow::Context;
use aws_lc_rs::digest;
use custos_core::model::{DatasetName, KeyAction, Medium, VolumeName};
use custos_core::{InitOptions, KdfParams, NewVolume, Passphrase, PutOptions, Vault};

use crate::output::bytes;

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

fn sha(b: &[u8]) -> String {
    hex::encode(&digest::digest(&digest::SHA256, b).as_ref()[..8])
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

    println!("Custos demo: encrypted datasets, their keys, and what key loss means.");
    println!("A throwaway vault in {}", vault_dir.display());

    step(1, "Create a vault: a SQLite repository, a software HSM holding a new master key, a default volume.");
    let vault = Vault::init(
        &vault_dir,
        &pass,
        &InitOptions { kdf: KdfParams::DEFAULT, site: "primary".into(), ..Default::default() },
    )?;
    for r in vault.hsm().registers()? {
        println!(
            "   master key register {}: MKVP {} (a check value that names the key without revealing it)",
            r.register, r.mkvp
        );
    }
    vault.add_volume(&NewVolume {
        name: VolumeName::new("offsite")?,
        location: root.join("offsite-tape").display().to_string(),
        site: "B".into(),
        medium: Medium::Tape,
    })?;
    println!("   volumes: default (site primary, disk) and offsite (site B, tape)");

    step(2, "Store three datasets. The default policy seals each under its own new key, named by the standard DSET.PRIM.<app>.key<NNN>.");
    let sets = [("PAYROLL.MASTER", 120_000), ("PAYROLL.HISTORY", 60_000), ("HR.STAFF", 20_000)];
    let mut originals = Vec::new();
    for (name, rows) in sets {
        let data = sample(name, rows);
        let r = vault.put(&DatasetName::new(name)?, &mut &data[..], &PutOptions::default())?;
        println!(
            "   {:<16} {:>9}  {:>2} chunk{}  key {}",
            name,
            bytes(r.size),
            r.chunks,
            if r.chunks == 1 { " " } else { "s" },
            r.key_label
        );
        originals.push((name, data));
    }

    step(3, "Read every dataset back through the access method and compare.");
    for (name, data) in &originals {
        let mut out = Vec::new();
        vault.get(&DatasetName::new(*name)?, &mut out, None)?;
        anyhow::ensure!(out == *data, "{name} did not read back byte for byte");
        println!("   {:<16} sha256 {}…  identical", name, sha(&out));
    }

    step(4, "Look at the volume as a thief would: only ciphertext.");
    let needle = b"EMPLOYEE-";
    let mut files = 0;
    let mut hits = 0;
    for entry in walk(&vault_dir.join("volumes/default"))? {
        files += 1;
        if std::fs::read(&entry)?.windows(needle.len()).any(|w| w == needle) {
            hits += 1;
        }
    }
    println!("   {files} files on the volume; {hits} contain the text \"EMPLOYEE-\" that fills every dataset.");

    step(5, "Flip one bit in a stored chunk of PAYROLL.HISTORY and read it again.");
    let hist = vault.dataset(&DatasetName::new("PAYROLL.HISTORY")?)?;
    let chunk = vault.repository().generation_chunks(&hist.id, hist.current.generation)?[1];
    let h = chunk.to_hex();
    let path = vault_dir.join("volumes/default/chunks").join(&h[..2]).join(&h);
    let good = std::fs::read(&path)?;
    let mut bad = good.clone();
    bad[1000] ^= 0x04;
    std::fs::write(&path, &bad)?;
    match vault.get(&hist.name, &mut std::io::sink(), None) {
        Err(e) => println!("   refused: {e}"),
        Ok(_) => anyhow::bail!("a tampered chunk was accepted"),
    }
    std::fs::write(&path, &good)?;
    vault.verify(&hist.name)?;
    println!("   (bit restored; the dataset verifies again)");

    step(6, "Key loss is data loss: deactivate and destroy the key of HR.STAFF.");
    let hr = DatasetName::new("HR.STAFF")?;
    let label = vault.dataset(&hr)?.current.key_label;
    vault.key_action(&label, KeyAction::Deactivate, false)?;
    match vault.key_action(&label, KeyAction::Destroy, false) {
        Err(e) => println!("   without --crypto-erase Custos refuses: {e}"),
        Ok(_) => anyhow::bail!("destroying a key in use was not refused"),
    }
    vault.key_action(&label, KeyAction::Destroy, true)?;
    println!("   key {label} destroyed: its material is erased from the keystore.");
    match vault.get(&hr, &mut std::io::sink(), None) {
        Err(e) => println!("   reading HR.STAFF: {e}"),
        Ok(_) => anyhow::bail!("data under a destroyed key was readable"),
    }
    for (name, _) in &originals[..2] {
        vault.verify(&DatasetName::new(*name)?)?;
    }
    println!("   PAYROLL.MASTER and PAYROLL.HISTORY, under their own keys, still read back.");

    println!("\nEvery copy that shares a key shares its fate; backups under separate keys are how Custos keeps data recoverable.");
    match keep {
        Some(_) => {
            let pf = root.join("passphrase.txt");
            std::fs::write(&pf, format!("{}\n", hex::encode(secret)))?;
            println!(
                "The vault is kept. Explore it with:\n  custos --vault {} --passphrase-file {} ds ls",
                vault_dir.display(),
                pf.display()
            );
        }
        None => println!("The throwaway vault is removed. `custos demo --keep DIR` keeps one to explore."),
    }
    Ok(())
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
