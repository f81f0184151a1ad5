//! What each command needs, in one table: the operation it is checked
//! against, and for data operations the datasets it touches. The decision
//! itself is the engine's (`Vault::authorize`).

use custos_core::model::{DatasetName, Op, Pattern};
use custos_core::{Sealed, Vault};

use crate::args::{
    AuditCmd, BackupCmd, Cli, Command, ConfigCmd, DsCmd, EscrowCmd, HsmCmd, HsmRuleCmd, KeyCmd, KeystoreCmd, MethodArg,
    MirrorCmd, PolicyCmd, RequestCmd, RiskCmd, SnapshotCmd, UserCmd, VolumeCmd,
};

/// One right a command needs: an operation, on a dataset when it touches one.
pub struct Need {
    pub op: Op,
    pub dataset: Option<DatasetName>,
}

fn op(op: Op) -> Vec<Need> {
    vec![Need { op, dataset: None }]
}

fn on(op: Op, name: &str) -> anyhow::Result<Vec<Need>> {
    Ok(vec![Need { op, dataset: Some(DatasetName::new(name)?) }])
}

/// Every existing dataset matching `pattern` (all when `None`).
fn matching(v: &Vault<Sealed>, op: Op, pattern: Option<&str>) -> anyhow::Result<Vec<Need>> {
    let p = pattern.map(Pattern::new).transpose()?;
    Ok(v.datasets()?
        .into_iter()
        .filter(|d| p.as_ref().is_none_or(|p| p.matches(d.name.as_str())))
        .map(|d| Need { op, dataset: Some(d.name) })
        .collect())
}

pub fn needs(cli: &Cli, v: &Vault<Sealed>) -> anyhow::Result<Vec<Need>> {
    use Op::*;
    Ok(match &cli.command {
        Command::Init(_) | Command::Demo { .. } => Vec::new(),
        Command::Key(k) => match k {
            KeyCmd::Ls { .. } | KeyCmd::Show { .. } => op(Inspect),
            KeyCmd::Destroy { .. } | KeyCmd::CancelDestroy { .. } => op(KeyDestroy),
            KeyCmd::Recover { from: None, .. } => op(Escrow),
            _ => op(KeyAdmin),
        },
        Command::Volume(c) => match c {
            VolumeCmd::Add { .. } => op(StorageAdmin),
            VolumeCmd::Ls => op(Inspect),
        },
        Command::Policy(c) => match c {
            PolicyCmd::Ls => op(Inspect),
            _ => op(PolicyAdmin),
        },
        Command::Ds(c) => match c {
            DsCmd::Put { name, .. } | DsCmd::Rm { name } => on(DataWrite, name)?,
            DsCmd::Get { name, .. } | DsCmd::Verify { name } => on(DataRead, name)?,
            DsCmd::Ls { .. } | DsCmd::Info { .. } => op(Inspect),
            DsCmd::Import { prefix, .. } => {
                // Every dataset it may create lies under the prefix.
                let mut n = matching(v, DataWrite, Some(&format!("{prefix}.**")))?;
                n.push(Need { op: DataWrite, dataset: Some(DatasetName::new(format!("{prefix}.X"))?) });
                n
            }
        },
        Command::Config(c) => match c {
            ConfigCmd::Set { .. } => op(PolicyAdmin),
            _ => op(Inspect),
        },
        Command::Mk(_) => op(MasterKey),
        Command::Keystore(c) => match c {
            KeystoreCmd::Backup { .. } => op(KeystoreBackup),
            _ => op(Inspect),
        },
        Command::Escrow(c) => match c {
            EscrowCmd::Status => op(Inspect),
            _ => op(Escrow),
        },
        Command::Mirror(c) => match c {
            MirrorCmd::Ls | MirrorCmd::Status => op(Inspect),
            _ => op(StorageAdmin),
        },
        Command::Snapshot(c) => match c {
            SnapshotCmd::Create { .. } | SnapshotCmd::Rm { .. } => op(StorageCopy),
            SnapshotCmd::Ls { .. } => op(Inspect),
            SnapshotCmd::Restore { id, as_name } => {
                let s = v.snapshot_record(*id)?;
                on(DataWrite, as_name.as_deref().unwrap_or(s.dataset.as_str()))?
            }
        },
        Command::Backup(c) => match c {
            BackupCmd::Run { pattern, method: MethodArg::Raw, .. } => {
                let _ = pattern;
                op(StorageCopy)
            }
            BackupCmd::Run { pattern, method: MethodArg::Logical, .. } => matching(v, DataRead, pattern.as_deref())?,
            BackupCmd::Ls { .. } | BackupCmd::Show { .. } => op(Inspect),
            BackupCmd::Prune { .. } | BackupCmd::Verify { read_data: false, .. } => op(BackupAdmin),
            BackupCmd::Verify { pattern, read_data: true } => matching(v, DataRead, pattern.as_deref())?,
        },
        Command::Restore { dataset, as_name, .. } => match as_name {
            Some(n) => on(DataWrite, n)?,
            None if dataset.contains(['*', '%']) => {
                let p = Pattern::new(dataset.as_str())?;
                let mut names: Vec<DatasetName> = v.backups(Some(&p))?.into_iter().map(|b| b.dataset).collect();
                names.sort();
                names.dedup();
                names.into_iter().map(|d| Need { op: DataWrite, dataset: Some(d) }).collect()
            }
            None => on(DataWrite, dataset)?,
        },
        Command::Hsm(c) => match c {
            HsmCmd::Rule(HsmRuleCmd::Ls) => op(Inspect),
            HsmCmd::Rule(_) => op(StorageAdmin),
            HsmCmd::Migrate { .. } | HsmCmd::Recall { .. } => op(StorageCopy),
            HsmCmd::Run { without_keys, dry_run } => {
                let mut n = op(StorageCopy);
                if !without_keys && !dry_run {
                    // Logical copies read data: the datasets their rules cover.
                    let rules = v.hsm_rules()?;
                    for d in v.datasets()? {
                        let logical = v.hsm_rule_for(&rules, &d.name).is_some_and(|r| {
                            r.backup_to.is_some() && r.method == custos_core::model::CopyMethod::Logical
                        });
                        if logical {
                            n.push(Need { op: DataRead, dataset: Some(d.name) });
                        }
                    }
                }
                n
            }
        },
        Command::Risk(c) => match c {
            RiskCmd::Report { .. } => op(RiskReport),
            RiskCmd::Drill { .. } => op(RiskDrill),
        },
        Command::Audit(c) => match c {
            AuditCmd::Ls { .. } | AuditCmd::Verify | AuditCmd::Export { .. } => op(AuditRead),
        },
        Command::User(c) => match c {
            UserCmd::Ls => op(Inspect),
            _ => op(UserAdmin),
        },
        Command::Monitor { .. } => op(Inspect),
        Command::Fsck { read_data: false } | Command::Gc { .. } => op(BackupAdmin),
        Command::Fsck { read_data: true } => {
            let mut n = op(BackupAdmin);
            n.extend(matching(v, DataRead, None)?);
            n
        }
        Command::Request(c) => match c {
            RequestCmd::Ls | RequestCmd::Show { .. } => op(Inspect),
            RequestCmd::Approve { .. } | RequestCmd::Deny { .. } => op(Approve),
        },
    })
}

/// The dual-control action a command is, if any.
pub fn controlled(cmd: &Command) -> Option<&'static str> {
    Some(match cmd {
        Command::Key(KeyCmd::Destroy { .. }) => "key-destroy",
        Command::Key(KeyCmd::Recover { from: Some(_), .. }) => "key-recover",
        Command::Key(KeyCmd::Recover { from: None, .. }) => "escrow-recover",
        Command::Mk(crate::args::MkCmd::Activate) => "mk-activate",
        Command::Policy(PolicyCmd::Add { .. } | PolicyCmd::Rm { .. }) | Command::Config(ConfigCmd::Set { .. }) => {
            "policy-change"
        }
        Command::User(UserCmd::Add { .. } | UserCmd::Grant(_) | UserCmd::Revoke(_) | UserCmd::Disable { .. }) => {
            "role-change"
        }
        _ => return None,
    })
}
