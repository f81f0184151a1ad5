//! Populate a vault for the risk-report benchmark (bench/risk-report.sh):
//! DATASETS datasets in 100 applications, each with one generation and
//! GENERATIONS backups (alternately logical under its BACK key to a disk at
//! site B and raw to a tape at site B), real keys made by the HSM, two
//! keystore backups, and every tenth application on a mirrored volume.
//! Datasets and backups are written straight into the catalog in one
//! transaction (the report reads the catalog, never the chunks).
//!
//! Usage: cargo run --release -p custos-risk --example populate -- DIR DATASETS GENERATIONS

use std::path::PathBuf;

use custos_core::model::{Medium, Pattern, PolicyTarget, Purpose, VolumeName};
use custos_core::{InitOptions, KdfParams, NewKey, NewPolicy, NewVolume, Passphrase, Vault};
use rusqlite::params;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).expect("DIR"));
    let n: usize = args.get(2).map(|s| s.parse().expect("DATASETS")).unwrap_or(10_000);
    let gens: usize = args.get(3).map(|s| s.parse().expect("GENERATIONS")).unwrap_or(30);
    let pass = Passphrase::from(std::env::var("CUSTOS_PASSPHRASE").unwrap_or_else(|_| "bench-not-secret".into()));
    let v = Vault::init(
        &dir.join("vault"),
        &pass,
        &InitOptions { kdf: KdfParams::MINIMUM, site: "A".into(), ..Default::default() },
    )
    .expect("init");
    let vol = |name: &str, site: &str, medium: Medium| {
        let nm = VolumeName::new(name).unwrap();
        v.add_volume(&NewVolume {
            name: nm.clone(),
            location: dir.join(name).display().to_string(),
            site: site.into(),
            medium,
        })
        .expect("volume");
        nm
    };
    let offsite = vol("offsite", "B", Medium::Disk);
    let tape = vol("tape", "B", Medium::Tape);
    let sync = vol("sync", "A", Medium::Disk);
    let pprc = vol("pprc", "B", Medium::Disk);
    v.mirror_add(&sync, &pprc).expect("mirror");
    let apps = 100;
    let per_app = n.div_ceil(apps);
    let mut prim = Vec::new();
    let mut back = Vec::new();
    for a in 0..apps {
        let app = format!("APP{a:03}");
        let mk = |purpose| NewKey { label: None, app: Some(app.clone()), purpose, expires_at: None, activate: true };
        prim.push(v.create_keys(&mk(Purpose::Prim), per_app as u32).expect("keys"));
        back.push(v.create_keys(&mk(Purpose::Back), per_app as u32).expect("keys"));
        if a % 10 == 0 {
            v.add_policy(&NewPolicy {
                name: format!("sync{a}"),
                pattern: Pattern::new(format!("{app}.**")).unwrap(),
                volume: sync.clone(),
                target: PolicyTarget::Template { app: None },
            })
            .expect("policy");
        }
    }
    v.keystore_backup(&offsite).expect("keystore backup");
    v.keystore_backup(&tape).expect("keystore backup");
    let mut db = rusqlite::Connection::open(dir.join("vault").join("custos.db")).expect("catalog");
    let tx = db.transaction().unwrap();
    let now = jiff::Timestamp::now().as_microsecond();
    let mut id = [0u8; 16];
    let mut backup_id = 0i64;
    for i in 0..n {
        let (a, k) = (i / per_app, i % per_app);
        let name = format!("APP{a:03}.DATA.D{k:05}");
        id[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let volume = if a % 10 == 0 { "sync" } else { "default" };
        let key = prim[a][k].label.to_string();
        tx.execute(
            "INSERT INTO datasets (id, name, created_at, current_generation, last_access) VALUES (?1, ?2, ?3, 1, ?3)",
            params![&id[..], name, now],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO generations (dataset_id, generation, volume, key_label, size, chunk_size, chunk_count, manifest_hash, created_at)
             VALUES (?1, 1, ?2, ?3, 1048576, 1048576, 1, ?4, ?5)",
            params![&id[..], volume, key, &[0u8; 32][..], now],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO generation_chunks (dataset_id, generation, idx, chunk_id) VALUES (?1, 1, 0, ?1)",
            params![&id[..]],
        )
        .unwrap();
        for g in 0..gens {
            backup_id += 1;
            let (method, to, label) = if g % 2 == 0 {
                ("logical", &offsite, back[a][k].label.to_string())
            } else {
                ("raw", &tape, key.clone())
            };
            tx.execute(
                "INSERT INTO backups (id, dataset, dataset_id, source_generation, method, volume, key_label, copy_id, generation,
                     size, chunk_size, chunk_count, manifest_hash, created_at)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?3, ?7, 1048576, 1048576, 1, ?8, ?9)",
                params![backup_id, name, &id[..], method, to.as_str(), label, g as i64 + 1, &[0u8; 32][..], now - (gens - g) as i64 * 86_400_000_000],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO backup_chunks (backup_id, idx, chunk_id) VALUES (?1, 0, ?2)",
                params![backup_id, &id[..]],
            )
            .unwrap();
        }
    }
    tx.commit().unwrap();
    println!("populated {} datasets in {apps} applications with {gens} backups each ({} backups)", n, backup_id);
}
