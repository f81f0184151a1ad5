//! `custos backup` and `custos snapshot`.

use custos_ops::Operation;

use super::{dataset, label, method, pattern, volume_name, Plan};
use crate::args::{BackupCmd, SnapshotCmd};

pub fn plan(c: &BackupCmd) -> anyhow::Result<Plan> {
    Ok(match c {
        BackupCmd::Run { pattern: p, method: m, to, key, plaintext } => Plan::new(Operation::BackupRun {
            pattern: pattern(p.as_deref())?,
            method: match (m, plaintext) {
                (_, false) => method(*m),
                (crate::args::MethodArg::Logical, true) => custos_core::model::CopyMethod::Plaintext,
                (crate::args::MethodArg::Raw, true) => return Err(crate::Usage(
                    "--plaintext makes a logical copy without encryption; a raw copy is the sealed bytes, so it cannot be plaintext".into(),
                )
                .into()),
            },
            to: volume_name(to)?,
            key: key.as_deref().map(label).transpose()?,
        })
        .progress(format!("backup {} to {to}", p.as_deref().unwrap_or("all")), None),
        BackupCmd::Ls { pattern: p, page } => {
            Plan::new(Operation::BackupList { pattern: pattern(p.as_deref())?, limit: page.limit, after: page.after })
        }
        BackupCmd::Show { id } => Plan::new(Operation::BackupShow { id: *id }),
        BackupCmd::Prune { pattern: p, keep, dry_run } => Plan::new(Operation::BackupPrune {
            pattern: pattern(p.as_deref())?,
            keep: (*keep).into(),
            dry_run: *dry_run,
        }),
        BackupCmd::Verify { pattern: p, read_data } => {
            let plan = Plan::new(Operation::BackupVerify { pattern: pattern(p.as_deref())?, read_data: *read_data });
            if *read_data {
                plan.progress(format!("verify {}", p.as_deref().unwrap_or("all")), None)
            } else {
                plan
            }
        }
    })
}

pub fn snapshot(c: &SnapshotCmd) -> anyhow::Result<Plan> {
    Ok(Plan::new(match c {
        SnapshotCmd::Create { dataset: d } => Operation::SnapshotCreate { dataset: dataset(d)? },
        SnapshotCmd::Ls { pattern: p, page } => {
            Operation::SnapshotList { pattern: pattern(p.as_deref())?, limit: page.limit, after: page.after }
        }
        SnapshotCmd::Rm { id } => Operation::SnapshotRm { id: *id },
        SnapshotCmd::Restore { id, as_name } => {
            Operation::SnapshotRestore { id: *id, as_name: as_name.as_deref().map(dataset).transpose()? }
        }
    }))
}
