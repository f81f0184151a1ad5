//! `custos volume`, `policy`, `config`, `keystore` and `mirror`.

use anyhow::anyhow;
use custos_core::model::{Medium, Pattern};
use custos_ops::{Operation, PolicyKey};

use super::{label, volume_name, Plan};
use crate::args::{ConfigCmd, KeystoreCmd, MediumArg, MirrorCmd, PolicyCmd, VolumeCmd};

pub fn volume(c: &VolumeCmd) -> anyhow::Result<Plan> {
    Ok(Plan::new(match c {
        VolumeCmd::Add { name, path, url, site, medium } => {
            let medium = match (medium, url) {
                (Some(MediumArg::Disk), Some(_)) => return Err(crate::Usage(
                    "--url places a volume on object storage, which is the tape tier: drop --medium disk or use --path"
                        .into(),
                )
                .into()),
                (Some(MediumArg::Tape), _) | (None, Some(_)) => Medium::Tape,
                (Some(MediumArg::Disk) | None, None) => Medium::Disk,
            };
            let location = match (path, url) {
                // A URL given as a path is said so, not made a local
                // directory named `s3:`.
                (Some(p), None) if p.to_string_lossy().contains("://") => {
                    return Err(crate::Usage(format!(
                        "--path takes a directory; {} is a URL: give it with --url (object storage is the tape tier)",
                        p.display()
                    ))
                    .into())
                }
                (Some(p), None) => {
                    std::path::absolute(p).map_err(|e| anyhow!("{}: {e}", p.display()))?.display().to_string()
                }
                (None, Some(u)) => u.clone(),
                _ => return Err(crate::Usage("give either --path DIR or --url s3://bucket/prefix".into()).into()),
            };
            Operation::VolumeAdd { name: volume_name(name)?, location, site: site.clone(), medium }
        }
        VolumeCmd::Ls => Operation::VolumeList,
        VolumeCmd::Rm { name } => Operation::VolumeRm { name: volume_name(name)? },
    }))
}

pub fn policy(c: &PolicyCmd) -> anyhow::Result<Plan> {
    Ok(Plan::new(match c {
        PolicyCmd::Add { name, pattern, volume, key, template, app } => Operation::PolicyAdd {
            name: name.clone(),
            pattern: Pattern::new(pattern.as_str())?,
            volume: volume_name(volume)?,
            key: match (key, template) {
                (Some(k), false) => PolicyKey::Key(label(k)?),
                (None, true) => PolicyKey::Template { app: app.clone() },
                _ => return Err(crate::Usage("give either --key LABEL or --template".into()).into()),
            },
        },
        PolicyCmd::Ls => Operation::PolicyList,
        PolicyCmd::Rm { name } => Operation::PolicyRm { name: name.clone() },
    }))
}

pub fn config(c: &ConfigCmd) -> anyhow::Result<Plan> {
    Ok(Plan::new(match c {
        ConfigCmd::Ls => Operation::ConfigList,
        ConfigCmd::Get { key } => Operation::ConfigGet { key: key.clone() },
        ConfigCmd::Set { key, value } => Operation::ConfigSet { key: key.clone(), value: value.clone() },
    }))
}

pub fn vault(c: &crate::args::VaultCmd) -> anyhow::Result<Plan> {
    match c {
        crate::args::VaultCmd::Backup { to } => Ok(Plan::new(Operation::VaultBackup { to: volume_name(to)? })),
        crate::args::VaultCmd::Backups => Ok(Plan::new(Operation::VaultBackups)),
        crate::args::VaultCmd::Prune { keep, dry_run } => {
            Ok(Plan::new(Operation::VaultPrune { keep: (*keep).into(), dry_run: *dry_run }))
        }
        crate::args::VaultCmd::Recover { .. } | crate::args::VaultCmd::Rebuild { .. } => {
            anyhow::bail!("`custos vault recover` and `rebuild` run on this machine only, never through --server")
        }
    }
}

pub fn keystore(c: &KeystoreCmd) -> anyhow::Result<Plan> {
    Ok(Plan::new(match c {
        KeystoreCmd::Backup { to } => Operation::KeystoreBackup { to: volume_name(to)? },
        KeystoreCmd::Backups => Operation::KeystoreBackups,
    }))
}

pub fn mirror(c: &MirrorCmd) -> anyhow::Result<Plan> {
    Ok(match c {
        MirrorCmd::Add { primary, secondary } => {
            Plan::new(Operation::MirrorAdd { primary: volume_name(primary)?, secondary: volume_name(secondary)? })
                .progress("mirror sync", None)
        }
        MirrorCmd::Ls => Plan::new(Operation::MirrorList),
        MirrorCmd::Status => Plan::new(Operation::MirrorStatus),
        MirrorCmd::Rm { primary } => Plan::new(Operation::MirrorRm { primary: volume_name(primary)? }),
    })
}
