//! What each operation needs, in one table: the right it is checked
//! against and, for data operations, the datasets and keys it touches.
//! The decision itself is the engine's (`Vault::authorize`).

use custos_core::model::{DatasetName, KeyLabel, Op, Pattern, PolicyTarget, PrincipalRecord, Purpose};

use crate::engine::Engine;
use crate::error::Result;
use crate::operation::Operation;

/// One right an operation needs: an operation, on a dataset (sealed under
/// a key) when it touches one.
struct Need {
    op: Op,
    dataset: Option<DatasetName>,
    /// The key, when it is not the dataset's current one (a first write).
    key: Option<KeyLabel>,
}

fn op(op: Op) -> Vec<Need> {
    vec![Need { op, dataset: None, key: None }]
}

fn on(op: Op, d: &DatasetName) -> Need {
    Need { op, dataset: Some(d.clone()), key: None }
}

/// Every existing dataset matching `pattern` (all when `None`), under the
/// key of its current generation.
fn matching(e: &Engine, op: Op, pattern: Option<&Pattern>) -> Result<Vec<Need>> {
    Ok(e.vault
        .datasets_matching(pattern)?
        .into_iter()
        .map(|d| Need { op, dataset: Some(d.name), key: Some(d.current.key_label) })
        .collect())
}

/// Whether `p` may run `op`.
pub(crate) fn check(e: &Engine, p: &PrincipalRecord, op: &Operation) -> Result<()> {
    // Anyone enabled (as every caller is) may change its own credential.
    if matches!(op, Operation::UserCredential { name, .. } if *name == p.name) {
        return Ok(());
    }
    for n in needs(e, op)? {
        let key = match n.key {
            Some(k) => Some(k),
            None => n.dataset.as_ref().and_then(|d| e.vault.dataset(d).ok()).map(|d| d.current.key_label),
        };
        // A data operation needs the data grant and the key grant (for a
        // first write, on the key it will create or use).
        e.vault.authorize(p, n.op, n.dataset.as_ref(), key.as_ref())?;
    }
    Ok(())
}

/// The key a first write of `name` would use: the one named, the policy's,
/// or the label its template would create next.
fn first_write_key(e: &Engine, name: &DatasetName, named: Option<&KeyLabel>) -> Result<Option<KeyLabel>> {
    if let Some(k) = named {
        return Ok(Some(k.clone()));
    }
    if e.vault.dataset(name).is_ok() {
        return Ok(None);
    }
    Ok(match e.vault.policy_for(name)?.map(|p| p.target) {
        Some(PolicyTarget::Key(k)) => Some(k),
        Some(PolicyTarget::Template { app }) => {
            let app = app.unwrap_or_else(|| name.as_str().split('.').next().unwrap_or_default().to_string());
            Some(e.vault.next_label(&app, Purpose::Prim)?)
        }
        None => None,
    })
}

fn needs(e: &Engine, operation: &Operation) -> Result<Vec<Need>> {
    use Op::*;
    use Operation as O;
    Ok(match operation {
        O::KeyList { .. } | O::KeyShow { .. } => op(Inspect),
        O::KeyDestroy { .. } | O::KeyCancelDestroy { .. } => op(KeyDestroy),
        O::EscrowRecover { .. } => op(Escrow),
        O::KeyCreate { .. } | O::KeyLifecycle { .. } | O::KeyRecover { .. } => op(KeyAdmin),
        O::KeyRevoke { .. } | O::KeySetAttributes { .. } | O::KeyImport { .. } => op(KeyAdmin),
        O::KeyEncrypt { label, .. }
        | O::KeyDataKey { label, .. }
        | O::KeyExport { label }
        | O::KeyGcmEncrypt { label, .. }
        | O::KeyGcmDecrypt { label, .. } => {
            vec![Need { op: KeyUse, dataset: None, key: Some(label.clone()) }]
        }
        O::KeyDecrypt { ciphertext, .. } => {
            let blob = crate::operation::base64_decode(ciphertext).map_err(crate::Error::Usage)?;
            vec![Need { op: KeyUse, dataset: None, key: Some(custos_core::ciphertext_key(&blob)?) }]
        }
        O::VolumeAdd { .. } | O::VolumeRm { .. } => op(StorageAdmin),
        O::VolumeList => op(Inspect),
        O::PolicyList => op(Inspect),
        O::PolicyAdd { .. } | O::PolicyRm { .. } => op(PolicyAdmin),
        O::DsPut { name, key, .. } => {
            vec![Need { op: DataWrite, dataset: Some(name.clone()), key: first_write_key(e, name, key.as_ref())? }]
        }
        O::DsRm { name } => vec![on(DataWrite, name)],
        O::DsGet { name, .. } | O::DsVerify { name } => vec![on(DataRead, name)],
        O::DsList { .. } | O::DsInfo { .. } => op(Inspect),
        // Every dataset it reads lies under the prefix.
        O::DsExport { prefix, .. } => matching(e, DataRead, Some(&Pattern::new(format!("{prefix}.**"))?))?,
        O::DsImport { prefix, .. } => {
            // Every dataset it may create lies under the prefix.
            let mut n = matching(e, DataWrite, Some(&Pattern::new(format!("{prefix}.**"))?))?;
            n.push(on(DataWrite, &DatasetName::new(format!("{prefix}.X"))?));
            n
        }
        O::ConfigSet { .. } => op(PolicyAdmin),
        O::ConfigList | O::ConfigGet { .. } => op(Inspect),
        O::MkStatus | O::MkLoadNew { .. } | O::MkClearNew | O::MkActivate | O::MkReencipher { .. } => op(MasterKey),
        O::CatalogRotateKey => op(MasterKey),
        O::KeystoreBackup { .. } | O::VaultBackup { .. } | O::VaultPrune { .. } => op(KeystoreBackup),
        O::KeystoreBackups | O::VaultBackups => op(Inspect),
        O::EscrowStatus => op(Inspect),
        O::EscrowInit { .. } | O::EscrowPurge { .. } => op(Escrow),
        O::EscrowRegister { .. } | O::EscrowShare { .. } | O::EscrowConfirm { .. } => op(Escrow),
        O::MirrorList | O::MirrorStatus => op(Inspect),
        O::MirrorAdd { .. } | O::MirrorRm { .. } => op(StorageAdmin),
        O::SnapshotCreate { .. } | O::SnapshotRm { .. } => op(StorageCopy),
        O::SnapshotList { .. } => op(Inspect),
        O::SnapshotRestore { id, as_name } => {
            // Reading the snapshot's content, and writing it where it goes.
            let s = e.vault.snapshot_record(*id)?;
            vec![on(DataRead, &s.dataset), on(DataWrite, as_name.as_ref().unwrap_or(&s.dataset))]
        }
        O::BackupRun { method: custos_core::model::CopyMethod::Raw, .. } => op(StorageCopy),
        O::BackupRun { pattern, .. } => matching(e, DataRead, pattern.as_ref())?,
        O::BackupList { .. } | O::BackupShow { .. } => op(Inspect),
        O::BackupPrune { .. } | O::BackupVerify { read_data: false, .. } => op(BackupAdmin),
        O::BackupVerify { pattern, read_data: true } => matching(e, DataRead, pattern.as_ref())?,
        O::Restore { dataset, backup, as_name, .. } => {
            // The content read (every dataset whose backups it may restore)
            // and the datasets written.
            let sources: Vec<DatasetName> = match backup {
                Some(id) => vec![e.vault.backup_record(*id)?.dataset],
                None => {
                    let p = Pattern::new(dataset.as_str())?;
                    let mut names: Vec<DatasetName> =
                        e.vault.backups(Some(&p))?.into_iter().map(|b| b.dataset).collect();
                    names.sort();
                    names.dedup();
                    if names.is_empty() && !dataset.contains(['*', '%']) {
                        names.push(DatasetName::new(dataset.as_str())?);
                    }
                    names
                }
            };
            let mut n: Vec<Need> = sources.iter().map(|d| on(DataRead, d)).collect();
            match as_name {
                Some(t) => n.push(on(DataWrite, t)),
                None => n.extend(sources.iter().map(|d| on(DataWrite, d))),
            }
            if n.is_empty() {
                n = op(DataWrite);
            }
            n
        }
        O::HsmRuleList => op(Inspect),
        O::HsmRuleAdd { .. } | O::HsmRuleRm { .. } => op(StorageAdmin),
        O::HsmMigrate { .. } | O::HsmRecall { .. } => op(StorageCopy),
        O::HsmRun { without_keys, dry_run } => {
            let mut n = op(StorageCopy);
            if !without_keys && !dry_run {
                // Logical copies read data: the datasets this run will copy
                // (found as the run finds them), each under its key's grant.
                for d in e.vault.hsm_logical_todo()? {
                    n.push(Need { op: DataRead, dataset: Some(d.name), key: Some(d.current.key_label) });
                }
            }
            n
        }
        O::RiskReport { .. } => op(RiskReport),
        O::RiskDrill { .. } => op(RiskDrill),
        O::AuditList { .. } | O::AuditVerify { .. } | O::AuditExport | O::CatalogVerify => op(AuditRead),
        // Writing to a volume: an auditor alone does not choose where things go.
        O::AuditExportTo { .. } => {
            vec![Need { op: AuditRead, dataset: None, key: None }, Need { op: StorageCopy, dataset: None, key: None }]
        }
        O::AuditAcceptRollback => op(PolicyAdmin),
        O::UserList => op(Inspect),
        O::UserAdd { .. }
        | O::UserCredential { .. }
        | O::UserRemove { .. }
        | O::UserDisable { .. }
        | O::UserEnable { .. }
        | O::UserRole { .. }
        | O::UserGrant { .. }
        | O::UserRevoke { .. } => op(UserAdmin),
        O::Monitor { .. } => op(Inspect),
        O::Fsck { read_data: false } | O::Gc { .. } => op(BackupAdmin),
        O::Fsck { read_data: true } => {
            let mut n = op(BackupAdmin);
            n.extend(matching(e, DataRead, None)?);
            n
        }
        O::RequestList { .. } | O::RequestShow { .. } | O::RequestWithdraw { .. } => op(Inspect),
        O::RequestApprove { .. } | O::RequestDeny { .. } => op(Approve),
    })
}
