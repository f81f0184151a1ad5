//! `custos fsck` and `custos gc`: check the volumes against the catalog,
//! and delete what nothing needs.

use crate::args::Cli;
use crate::output::{bytes, json};
use crate::{open, sealed, Usage};

/// `fsck` found something the catalog needs missing or damaged: exit 4.
#[derive(Debug)]
pub struct Damaged(pub String);

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Damaged {}

pub fn fsck(cli: &Cli, read_data: bool) -> anyhow::Result<()> {
    let r = if read_data { open(cli)?.fsck_read_data()? } else { sealed(cli)?.fsck()? };
    if cli.json {
        json(&r)?;
    } else {
        for v in &r.volumes {
            match &v.unreachable {
                Some(why) => println!("volume {}: UNREACHABLE: {why}", v.volume),
                None => println!(
                    "volume {}: {} objects referenced, {} missing, {} damaged; {} unreferenced ({}, {} in the trash), {} temp files",
                    v.volume,
                    v.referenced,
                    v.missing.len(),
                    v.damaged.len(),
                    v.unreferenced,
                    bytes(v.unreferenced_bytes),
                    v.in_trash,
                    v.temp_files
                ),
            }
            for m in &v.missing {
                println!("  MISSING {m}");
            }
            for d in &v.damaged {
                println!("  DAMAGED {d}");
            }
        }
        for c in &r.catalog {
            println!("catalog: {c}");
        }
    }
    if !r.clean() {
        let bad: usize = r.volumes.iter().map(|v| v.missing.len() + v.damaged.len()).sum::<usize>()
            + r.catalog.len()
            + r.volumes.iter().filter(|v| v.unreachable.is_some()).count();
        return Err(Damaged(format!(
            "{bad} problem(s) found (listed above): restore the datasets and backups they name from another copy, or reach the unreachable volumes, then run `custos fsck` again"
        ))
        .into());
    }
    if !cli.json {
        let reclaim: u64 = r.volumes.iter().map(|v| v.unreferenced + v.temp_files).sum();
        if reclaim > 0 {
            println!("everything the catalog needs is there; {reclaim} objects are not needed: `custos gc` deletes them after the grace period");
        } else {
            println!(
                "everything the catalog needs is there{}",
                if r.read_data { ", and every chunk opened" } else { "" }
            );
        }
    }
    Ok(())
}

pub fn gc(cli: &Cli, dry_run: bool, grace: Option<&str>) -> anyhow::Result<()> {
    let v = sealed(cli)?;
    let grace = match grace {
        Some(g) => custos_core::parse_duration(g).map_err(|why| Usage(format!("--grace: {why}")))?,
        None => v.gc_grace()?,
    };
    let r = v.gc(grace, dry_run, true)?;
    if cli.json {
        json(&r)?;
    } else {
        let verb = if dry_run { "would delete" } else { "deleted" };
        println!(
            "{verb} {} released objects, {} unreferenced objects and {} temp files ({}); {} released objects are within the grace period of {grace:#}",
            r.released,
            r.orphans,
            r.temp_files,
            bytes(r.bytes),
            r.waiting
        );
        for f in &r.failed {
            println!("  NOT DELETED {f}");
        }
    }
    if !r.failed.is_empty() {
        anyhow::bail!(
            "{} object(s) could not be deleted (listed above); they stay in the trash: reach or repair the volume, then run `custos gc` again",
            r.failed.len()
        );
    }
    Ok(())
}
