//! Running an operation that passed the boundary's checks: one arm per
//! operation, each a call into the engine and a typed result.

use custos_core::model::{CopyMethod, DatasetName, KeyAction, KeyState, PolicyTarget};
use custos_core::{NewKey, NewMasterKey, NewPolicy, NewVolume, PutOptions, ShareFile};
use jiff::Timestamp;
use serde_json::json;

use crate::engine::{Caller, Engine, Io};
use crate::error::{Error, Result};
use crate::operation::{GrantOn, Operation, PolicyKey, SecretText};
use crate::reply::{BulkLine, Destruction, Reply, Verified};
use crate::requests::RequestView;

fn shares(texts: &[SecretText]) -> Result<Vec<ShareFile>> {
    texts.iter().enumerate().map(|(i, t)| Ok(ShareFile::decode(t.expose(), &format!("share {}", i + 1))?)).collect()
}

fn duration(flag: &str, text: &str) -> Result<jiff::SignedDuration> {
    custos_core::parse_duration(text).map_err(|why| Error::Usage(format!("{flag}: {why}")))
}

pub(crate) fn run(e: &Engine, who: &Caller, op: Operation, io: &mut Io<'_>) -> Result<Reply> {
    let v = &e.vault;
    use Operation as O;
    Ok(match op {
        O::KeyCreate { count: Some(n), .. } if !(1..=custos_core::MAX_BULK_KEYS).contains(&n) => {
            return Err(Error::Usage(format!(
                "--count {n}: give 1 to {} (run it again for more)",
                custos_core::MAX_BULK_KEYS
            )));
        }
        O::KeyCreate { count: Some(_), ref attributes, .. } if !attributes.is_empty() => {
            return Err(Error::Usage("attributes name one key: create keys with attributes one at a time".into()));
        }
        O::KeyCreate { label, app, purpose, expires_at, activate, count, attributes } => {
            let new = NewKey { label, app, purpose, expires_at, activate };
            match count {
                Some(n) => Reply::KeysCreated(e.open()?.create_keys(&new, n)?),
                None => Reply::Key(e.open()?.create_key_with(&new, &attributes)?, "created"),
            }
        }
        O::KeyRevoke { label, reason, message, compromised_at } => {
            let rev = custos_core::model::Revocation { reason, message, at: jiff::Timestamp::now(), compromised_at };
            let rec = e.open()?.revoke_key(&label, rev)?;
            Reply::Key(rec, "revoked: now")
        }
        O::KeySetAttributes { label, attributes } => {
            Reply::Key(e.open()?.set_key_attributes(&label, attributes)?, "attributes set:")
        }
        O::KeyImport { app, material, attributes, activate } => {
            let bytes = zeroize::Zeroizing::new(
                crate::operation::base64_decode(material.expose())
                    .map_err(|why| Error::Usage(format!("material: {why}")))?,
            );
            let new = NewKey {
                label: None,
                app: Some(app),
                purpose: custos_core::model::Purpose::Prim,
                expires_at: None,
                activate,
            };
            Reply::Key(e.open()?.import_key(&new, &attributes, &bytes)?, "imported")
        }
        O::KeyGcmEncrypt { label, plaintext, iv, aad } => {
            let plain = zeroize::Zeroizing::new(b64("plaintext", plaintext.expose())?);
            let iv = iv.map(|v| iv12(&v)).transpose()?;
            let aad = aad.map(|a| b64("aad", &a)).transpose()?.unwrap_or_default();
            let (data, tag, iv) = e.open()?.gcm_encrypt(&label, iv, &aad, &plain)?;
            Reply::KeyGcm {
                key: label.to_string(),
                data: SecretText::new(crate::operation::base64_encode(&data)),
                iv: Some(crate::operation::base64_encode(&iv)),
                tag: Some(crate::operation::base64_encode(&tag)),
            }
        }
        O::KeyGcmDecrypt { label, ciphertext, iv, tag, aad } => {
            let data = b64("ciphertext", &ciphertext)?;
            let aad = aad.map(|a| b64("aad", &a)).transpose()?.unwrap_or_default();
            let plain = e.open()?.gcm_decrypt(&label, iv12(&iv)?, &aad, &data, &b64("tag", &tag)?)?;
            Reply::KeyGcm {
                key: label.to_string(),
                data: SecretText::new(crate::operation::base64_encode(&plain)),
                iv: None,
                tag: None,
            }
        }
        O::KeyExport { label } => {
            let (key, material) = e.open()?.export_key(&label)?;
            Reply::KeyExported { key, material: SecretText::new(crate::operation::base64_encode(&material)) }
        }
        O::KeyList { pattern, limit, after } => {
            let keys = match (&pattern, limit, after) {
                (None, None, None) => v.keys()?,
                // A pattern reads from its literal prefix, in label order,
                // as a page without a limit does.
                (_, limit, after) => {
                    v.keys_page(pattern.as_ref(), after.as_deref(), limit.map_or(usize::MAX, |n| n as usize))?
                }
            };
            let due = v.destroy_schedule()?.into_iter().map(|(l, t)| (l.to_string(), t)).collect();
            Reply::Keys(keys, due)
        }
        O::KeyShow { label } => {
            let key = v.key(&label)?;
            let datasets = v.datasets_using_key(&key.label)?;
            let destroy_after = v.destroy_scheduled_at(&key.label)?;
            Reply::KeyDetail { key, datasets, destroy_after }
        }
        O::KeyLifecycle { target, action, dry_run } => key_lifecycle(e, who, &target, action, dry_run)?,
        O::KeyDestroy { label, crypto_erase, wait } => {
            let wait = match wait {
                Some(w) => duration("--wait", &w)?,
                None => v.destroy_default_wait()?,
            };
            let (at, unreadable) = v.schedule_destroy(&label, wait, crypto_erase)?;
            let rec = v.key(&label)?;
            Reply::Destroy(Destruction {
                label: label.to_string(),
                destroy_at: at,
                state: rec.state,
                unreadable,
                wait: format!("{wait:#}"),
                escrowed: rec.escrow.is_some(),
            })
        }
        O::KeyCancelDestroy { label } => Reply::Key(v.cancel_destroy(&label)?, "cancelled"),
        O::KeyRecover { pattern, from } => Reply::Recovered(e.open()?.recover_keys(&pattern, &from)?),
        O::EscrowRecover { label, shares: s } => {
            Reply::Recovered(vec![e.open()?.recover_from_escrow(&label, &shares(&s)?)?])
        }
        O::KeyEncrypt { label, plaintext, context } => {
            let plain = zeroize::Zeroizing::new(
                crate::operation::base64_decode(plaintext.expose())
                    .map_err(|why| Error::Usage(format!("plaintext: {why}")))?,
            );
            let blob = e.open()?.ks_encrypt(&label, &plain, &context)?;
            Reply::KeyService {
                key: label.to_string(),
                plaintext: None,
                ciphertext: Some(crate::operation::base64_encode(&blob)),
            }
        }
        O::KeyDecrypt { ciphertext, context } => {
            let blob = crate::operation::base64_decode(&ciphertext)
                .map_err(|why| Error::Usage(format!("ciphertext: {why}")))?;
            let (label, plain) = e.open()?.ks_decrypt(&blob, &context)?;
            Reply::KeyService {
                key: label.to_string(),
                plaintext: Some(SecretText::new(crate::operation::base64_encode(&plain))),
                ciphertext: None,
            }
        }
        O::KeyDataKey { bytes, .. } if !(16..=64).contains(&bytes) => {
            return Err(Error::Usage(format!("a data key of {bytes} bytes: ask for 16 to 64")));
        }
        O::KeyDataKey { label, bytes, context } => {
            let (plain, blob) = e.open()?.ks_datakey(&label, bytes as usize, &context)?;
            Reply::KeyService {
                key: label.to_string(),
                plaintext: Some(SecretText::new(crate::operation::base64_encode(&plain))),
                ciphertext: Some(crate::operation::base64_encode(&blob)),
            }
        }
        O::VolumeAdd { name, location, site, medium } => {
            Reply::Volume(v.add_volume(&NewVolume { name, location, site, medium })?)
        }
        O::VolumeList => Reply::Volumes(v.volumes()?),
        O::VolumeRm { name } => Reply::VolumeRemoved(v.remove_volume(&name)?),
        O::PolicyAdd { name, pattern, volume, key } => {
            let target = match key {
                PolicyKey::Key(k) => PolicyTarget::Key(k),
                PolicyKey::Template { app } => PolicyTarget::Template { app },
            };
            Reply::Policy(v.add_policy(&NewPolicy { name, pattern, volume, target })?)
        }
        O::PolicyList => Reply::Policies(v.policies()?),
        O::PolicyRm { name } => {
            v.remove_policy(&name)?;
            done("policy-rm", json!({ "policy": name }), format!("removed policy {name}"))
        }
        O::DsPut { name, key, volume } => {
            let input = io.input.as_deref_mut().ok_or_else(|| Error::Usage("ds put needs the data to store".into()))?;
            Reply::Put(e.open()?.put(&name, input, &PutOptions { key, volume, fresh: false })?)
        }
        O::DsGet { name, range } => {
            let range = match range {
                None => None,
                Some(r) => {
                    let size = v.dataset(&name)?.current.size;
                    Some((r.start.unwrap_or(0), r.end.unwrap_or(size)))
                }
            };
            let out = io.output.as_deref_mut().ok_or_else(|| Error::Usage("ds get needs somewhere to write".into()))?;
            Reply::Got(e.open()?.get(&name, out, range)?)
        }
        O::DsList { pattern, limit: None, after: None } => Reply::Datasets(v.datasets_matching(pattern.as_ref())?),
        O::DsList { pattern, limit, after } => Reply::Datasets(v.datasets_page(
            pattern.as_ref(),
            after.as_deref(),
            limit.map_or(usize::MAX, |n| n as usize),
        )?),
        O::DsInfo { name } => Reply::DatasetInfo(Box::new(v.dataset_info(&name)?)),
        O::DsRm { name } => {
            let objects = v.remove_dataset(&name)?;
            Reply::DatasetRemoved { name, objects }
        }
        O::DsVerify { name } => Reply::DatasetVerified(e.open()?.verify(&name)?),
        O::DsImport { dir, prefix, replace, skip_other } => {
            let (reports, skipped) = e.open()?.import(&dir, &prefix, replace, skip_other, |_| {})?;
            Reply::Imported(reports, skipped)
        }
        O::DsExport { prefix, dir, replace } => {
            let reports = e.open()?.export(&prefix, &dir, replace, |_| {})?;
            Reply::Exported { dir, reports }
        }
        O::ConfigList => Reply::Settings(settings(e)?),
        O::ConfigGet { key } => {
            let all = settings(e)?;
            let names: Vec<String> = all.iter().map(|(k, _)| k.clone()).collect();
            let found = all.into_iter().find(|(k, _)| *k == key).ok_or_else(|| custos_core::Error::Invalid {
                what: "setting",
                why: format!("no setting {key:?}: the settings are {}", names.join(", ")),
            })?;
            Reply::Settings(vec![found])
        }
        O::ConfigSet { key, value } => {
            match key.as_str() {
                "key.naming" => {
                    v.set_naming(&value)?;
                }
                "chunk.size" => {
                    let n: u64 = value.trim().parse().map_err(|_| {
                        Error::Usage(format!("chunk.size takes a number of bytes (65536 to 67108864), not {value:?}"))
                    })?;
                    // Too large for the setting is out of its range, which
                    // the vault says in its own words.
                    v.set_chunk_size(u32::try_from(n).unwrap_or(u32::MAX))?;
                }
                "compression" => v.set_compression(&value)?,
                "s3.endpoint" | "s3.region" => v.set_s3_setting(&key, &value)?,
                "key.destroy.wait" => v.set_destroy_default_wait(&value)?,
                "key.destroy.min-wait" => v.set_destroy_min_wait(&value)?,
                "dual-control" => v.set_dual_control(&value)?,
                "request.ttl" => v.set_request_ttl(&value)?,
                "gc.grace" => v.set_gc_grace(&value)?,
                custos_core::SETTING_PLAINTEXT => v.set_plaintext_allowed(&value)?,
                _ => return Err(Error::Usage(format!("no setting {key:?}: the settings are key.naming, chunk.size, compression, s3.endpoint, s3.region, key.destroy.wait, key.destroy.min-wait, dual-control, request.ttl, gc.grace and backup.plaintext"))),
            }
            Reply::Settings(settings(e)?.into_iter().filter(|(k, _)| *k == key).collect())
        }
        O::MkStatus => Reply::MkStatus(e.open()?.mk_status()?),
        O::MkLoadNew { generate, parts, expect_mkvp } => {
            let expect = expect_mkvp
                .as_deref()
                .map(|m| {
                    custos_core::Mkvp::from_hex(m).map_err(|_| Error::Usage("--expect-mkvp takes 16 hex digits".into()))
                })
                .transpose()?;
            let new = match (generate, parts.is_empty()) {
                (true, true) => NewMasterKey::Generate,
                (false, false) => NewMasterKey::Parts(
                    parts
                        .iter()
                        .enumerate()
                        .map(|(i, p)| {
                            Ok(custos_core::KeyPartFile::decode(p.expose(), &format!("key part {}", i + 1))?.0)
                        })
                        .collect::<Result<_>>()?,
                ),
                _ => return Err(Error::Usage("give either --generate or --part FILE for each custodian".into())),
            };
            Reply::MkLoaded(e.open()?.mk_load_new(new, expect)?.to_hex())
        }
        O::MkClearNew => {
            e.open()?.mk_clear_new()?;
            done("mk-clear-new", json!({}), "cleared the NEW master key register".into())
        }
        O::MkActivate => Reply::MkActivated(e.open()?.mk_activate()?),
        O::MkReencipher { batch } => Reply::Reenciphered(e.open()?.mk_reencipher(batch, |_| {})?),
        O::KeystoreBackup { to } => Reply::KeystoreBackup(v.keystore_backup(&to)?),
        O::KeystoreBackups => Reply::KeystoreBackups(v.keystore_backups()?),
        O::VaultBackup { to } => Reply::VaultBackup(e.open()?.vault_backup(&to)?),
        O::VaultBackups => Reply::VaultBackups(v.vault_backups()?),
        O::VaultPrune { keep, dry_run } => {
            Reply::VaultPruned { decisions: e.open()?.vault_prune(&keep, dry_run)?, dry_run }
        }
        O::EscrowInit { custodians, threshold } => Reply::EscrowCreated(e.open()?.escrow_init(&custodians, threshold)?),
        O::EscrowRegister { recipient } => Reply::CustodianRegistered(v.custodian_register(me(who)?, &recipient)?),
        O::EscrowShare { kbk } => {
            let share = v.escrow_share(me(who)?, kbk.as_deref())?;
            Reply::SealedShare {
                kbk: share.kbk.clone(),
                custodian: share.custodian.clone(),
                text: custos_core::SealedShareFile(share).encode(),
            }
        }
        O::EscrowConfirm { kbk, confirm } => {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(confirm.trim(), &mut digest)
                .map_err(|_| Error::Usage("confirm: give the share's digest as 64 hex digits".into()))?;
            let s = v.escrow_confirm(me(who)?, &kbk, &digest)?;
            Reply::ShareConfirmed(custos_core::ShareStatus {
                kbk: s.kbk,
                custodian: s.custodian,
                confirmed_at: s.confirmed_at,
            })
        }
        O::EscrowStatus => Reply::EscrowStatus(v.escrow_status()?),
        O::EscrowPurge { label } => {
            v.escrow_purge(&label)?;
            done("escrow-purge", json!({ "key_label": label }), format!("erased the escrow copy of {label}"))
        }
        O::MirrorAdd { primary, secondary } => {
            Reply::Mirrors { list: vec![v.mirror_add(&primary, &secondary)?], check: false }
        }
        O::MirrorList => Reply::Mirrors { list: v.mirrors(false)?, check: false },
        O::MirrorStatus => Reply::Mirrors { list: v.mirrors(true)?, check: true },
        O::MirrorRm { primary } => {
            v.mirror_rm(&primary)?;
            done("mirror-rm", json!({ "volume": primary }), format!("volume {primary} is no longer mirrored"))
        }
        O::SnapshotCreate { dataset } => Reply::Snapshot(v.snapshot_create(&dataset)?),
        O::SnapshotList { pattern, limit: None, after: None } => Reply::Snapshots(v.snapshots(pattern.as_ref())?),
        O::SnapshotList { pattern, limit, after } => {
            Reply::Snapshots(v.snapshots_page(pattern.as_ref(), after, limit.map_or(usize::MAX, |n| n as usize))?)
        }
        O::SnapshotRm { id } => {
            v.snapshot_rm(id)?;
            done("snapshot-rm", json!({ "snapshot": id }), format!("removed snapshot {id}"))
        }
        O::SnapshotRestore { id, as_name } => {
            let ov = e.open()?;
            let sn = ov.snapshot_record(id)?;
            Reply::SnapshotRestored { id, report: ov.snapshot_restore(&sn, as_name.as_ref())? }
        }
        O::BackupRun { pattern, method, to, key } => {
            let names: Vec<DatasetName> = v.datasets_matching(pattern.as_ref())?.into_iter().map(|d| d.name).collect();
            if names.is_empty() {
                return Err(Error::Failed {
                    code: crate::Code::NotFound,
                    message: match &pattern {
                        Some(p) => format!("no dataset matches {p}: nothing to back up (`custos ds ls` lists them)"),
                        None => "the vault has no datasets: nothing to back up".into(),
                    },
                });
            }
            // A raw copy needs no key: it runs on the sealed vault.
            let made = match method {
                CopyMethod::Raw => v.backup_raw_many(&names, &to)?,
                CopyMethod::Logical => e.open()?.backup_logical_many(&names, &to, key.as_ref())?,
                CopyMethod::Plaintext if key.is_some() => {
                    return Err(Error::Usage(
                        "--key names a logical copy's BACK key; a plaintext copy is under no key".into(),
                    ))
                }
                CopyMethod::Plaintext => e.open()?.backup_plaintext_many(&names, &to)?,
            };
            Reply::BackupsMade { made, method, to: to.to_string() }
        }
        O::BackupList { pattern, limit: None, after: None } => Reply::Backups(v.backups(pattern.as_ref())?),
        O::BackupList { pattern, limit, after } => {
            Reply::Backups(v.backups_page(pattern.as_ref(), after, limit.map_or(usize::MAX, |n| n as usize))?)
        }
        O::BackupShow { id } => {
            let backup = v.backup_record(id)?;
            let volume = v.volume_record(&backup.volume)?;
            Reply::Backup { backup, volume }
        }
        O::BackupPrune { pattern, keep, dry_run } => {
            Reply::Pruned { decisions: v.prune_backups(pattern.as_ref(), &keep, dry_run)?, dry_run }
        }
        O::BackupVerify { pattern, read_data } => {
            let ov = e.open()?;
            let list = ov
                .backups(pattern.as_ref())?
                .iter()
                .map(|b| {
                    let r = ov.verify_backup(b, read_data);
                    let code = r.as_ref().err().map(crate::error::core_code);
                    Verified {
                        id: b.id,
                        ok: r.is_ok(),
                        error: r.err().map(|e| e.to_string()),
                        method: b.method,
                        dataset: b.dataset.to_string(),
                        code,
                    }
                })
                .collect();
            Reply::BackupsVerified { list, read_data }
        }
        O::Restore { dataset, backup, generation, at, as_name } => {
            restore(e, &dataset, backup, generation, at, as_name.as_ref())?
        }
        O::HsmRun { dry_run, without_keys } => {
            let needs_key = v.hsm_rules()?.iter().any(|r| r.backup_to.is_some() && r.method == CopyMethod::Logical);
            let now = Timestamp::now();
            let actions = if needs_key && !without_keys && !dry_run {
                e.open()?.hsm_run(now, false)?
            } else {
                v.hsm_run(now, dry_run)?
            };
            // The housekeeping run also empties the trash of what is past
            // its grace period (scanning volumes for strays is `custos gc`'s).
            let gc = if dry_run { None } else { Some(v.gc(v.gc_grace()?, false, false)?) };
            Reply::HsmRun { actions, gc }
        }
        O::HsmRuleAdd { migrate_after_days: Some(d), .. } if d > 36_600 => {
            return Err(Error::Usage("--migrate-after-days is at most 36600 (100 years)".into()));
        }
        O::HsmRuleAdd { name, pattern, method, backup_to, keep, migrate_after_days, migrate_to } => {
            Reply::HsmRule(v.hsm_rule_add(&custos_core::NewHsmRule {
                name,
                pattern,
                method,
                backup_to,
                retention: keep,
                migrate_after_days,
                migrate_to,
            })?)
        }
        O::HsmRuleList => Reply::HsmRules(v.hsm_rules()?),
        O::HsmRuleRm { name } => {
            v.hsm_rule_rm(&name)?;
            done("hsm-rule-rm", json!({ "rule": name }), format!("removed hsm rule {name}"))
        }
        O::HsmMigrate { dataset, to } => Reply::Moved(v.migrate(&dataset, &to)?),
        O::HsmRecall { dataset } => match v.recall(&dataset)? {
            Some(m) => Reply::Moved(m),
            None => Reply::NotMigrated(dataset),
        },
        O::RiskReport { pattern, dual, horizon, as_if_unencrypted } => {
            let horizon = horizon.as_deref().map(|h| duration("--horizon", h)).transpose()?;
            if horizon.is_some_and(|h| h.is_negative() || h.is_zero()) {
                return Err(Error::Usage("--horizon: give a time ahead, such as 90d".into()));
            }
            // The HSM checks every key the verdicts rely on. When it cannot
            // be opened here (no passphrase given), the report runs sealed on
            // the master keys the HSM held when last opened, and says so.
            let g = match e.open() {
                Ok(open) => custos_risk::build::checked_graph(open, pattern.as_ref())?,
                Err(why) => {
                    let held = v.held_mkvps_seen()?.unwrap_or_default();
                    let mut g = custos_risk::build::graph(v, pattern.as_ref(), held)?;
                    g.sealed_because = Some(why.to_string());
                    g
                }
            };
            if let (Some(p), true) = (&pattern, g.datasets.is_empty()) {
                return Err(Error::Failed {
                    code: crate::Code::NotFound,
                    message: format!("no dataset matches {p}: nothing to report on (`custos ds ls` lists them)"),
                });
            }
            let mut g = g;
            g.as_if_unencrypted = as_if_unencrypted;
            let mut r = custos_risk::report::report_ahead(g, dual, Timestamp::now(), horizon);
            r.attach_drills(v.drill_results()?);
            Reply::RiskReport(Box::new(r), dual)
        }
        O::RiskDrill { pattern, threats, dual, shares: s, scratch } => {
            drill(e, &who.name(), pattern, &threats, dual, &s, scratch)?
        }
        O::AuditList { since, principal, object, after, limit } => {
            Reply::Audit(v.audit_entries(&custos_core::AuditFilter { since, principal, object, after, limit })?)
        }
        O::AuditVerify { against } => {
            let v = e.open()?;
            let verdict = v.audit_verify()?;
            let compared = against.as_ref().map(|vol| v.audit_compare(vol)).transpose()?;
            Reply::AuditVerdict(verdict, compared)
        }
        O::AuditExportTo { volume } => Reply::AuditExported(v.audit_export_to(&volume)?),
        O::CatalogVerify => Reply::CatalogCheck(e.open()?.catalog_verify()?),
        O::CatalogRotateKey => {
            let n = e.open()?.catalog_rotate_key()?;
            done(
                "catalog-rotate-key",
                json!({ "row_count": n }),
                format!("catalog key rotated: {n} rows checked under the old key and sealed under the new one; the old key is destroyed"),
            )
        }
        O::AuditAcceptRollback => {
            let v = e.open_accepting(true)?;
            let head = v.audit_verify()?.entries;
            done(
                "audit-accept-rollback",
                json!({ "audit_seq": head }),
                format!("the HSM's anchor now follows this catalog, whose audit log ends at entry {head}; what it lacks (the newer commands) is lost to this vault"),
            )
        }
        O::AuditExport => {
            let rows = v.audit_entries(&Default::default())?;
            let out =
                io.output.as_deref_mut().ok_or_else(|| Error::Usage("audit export needs somewhere to write".into()))?;
            let io_err = |source| custos_core::Error::VaultIo { path: "audit export".into(), source };
            for r in &rows {
                serde_json::to_writer(&mut *out, r).map_err(|e| io_err(e.into()))?;
                out.write_all(b"\n").map_err(io_err)?;
            }
            out.flush().map_err(io_err)?;
            Reply::AuditExport(rows.len())
        }
        O::UserAdd { name, roles, credential } => {
            let (stored, token) = credential.prepare()?;
            let user = v.user_add_stored(&name, &roles, stored)?;
            Reply::UserAdded { user, token }
        }
        O::UserList => Reply::Users(v.users()?),
        O::UserDisable { name } => {
            v.user_disable(&name)?;
            done("user-disable", json!({ "user": name }), format!("user {name} is disabled"))
        }
        O::UserEnable { name } => {
            v.user_enable(&name)?;
            done("user-enable", json!({ "user": name }), format!("user {name} is enabled"))
        }
        O::UserRemove { name } => {
            v.user_remove(&name)?;
            done(
                "user-remove",
                json!({ "user": name }),
                format!("user {name} and its grants are removed; the audit log keeps its name"),
            )
        }
        O::UserCredential { name, credential } => {
            let (stored, token) = credential.prepare()?;
            v.user_set_credential(&name, stored)?;
            Reply::CredentialChanged { name, token }
        }
        O::UserRole { name, add, remove } => {
            if add.is_empty() && remove.is_empty() {
                return Err(Error::Usage("give --add ROLE or --remove ROLE (or both)".into()));
            }
            let p = v.user_roles(&name, &add, &remove)?;
            let roles: Vec<&str> = p.roles.iter().map(|r| r.as_str()).collect();
            done(
                "user-role",
                json!({ "user": name, "roles": roles }),
                format!("user {name} has the roles {}", roles.join(", ")),
            )
        }
        O::UserGrant { name, on, pattern } => {
            let kind = grant_kind(on);
            v.grant(&name, kind, &pattern)?;
            done(
                "user-grant",
                json!({ "user": name, "on": kind.as_str(), "pattern": pattern }),
                format!("granted {name} {} {pattern}", kind.as_str()),
            )
        }
        O::UserRevoke { name, on, pattern } => {
            let kind = grant_kind(on);
            v.revoke(&name, kind, &pattern)?;
            done(
                "user-revoke",
                json!({ "user": name, "on": kind.as_str(), "pattern": pattern }),
                format!("revoked {name}'s {} grant {pattern}", kind.as_str()),
            )
        }
        O::RequestList { limit, before } => Reply::Requests(
            v.requests_page(before, limit.map_or(usize::MAX, |n| n as usize))?.iter().map(RequestView::new).collect(),
        ),
        O::RequestShow { id } => Reply::Request(RequestView::new(&v.request(id)?)),
        O::RequestDeny { id } => {
            let me = match who {
                Caller::Principal(p) => p.name.clone(),
                Caller::Unverified(_) => {
                    return Err(Error::Usage("deciding a request needs an authenticated user: give --user".into()))
                }
            };
            Reply::Requests(vec![RequestView::new(&v.request_decide(id, &me, false)?)])
        }
        O::RequestWithdraw { id } => {
            let me = match who {
                Caller::Principal(p) => p.name.clone(),
                Caller::Unverified(_) => {
                    return Err(Error::Usage("withdrawing a request needs an authenticated user: give --user".into()))
                }
            };
            Reply::Requests(vec![RequestView::new(&v.request_withdraw(id, &me)?)])
        }
        O::RequestApprove { .. } => unreachable!("the engine approves before running"),
        O::Monitor { expiring_days, unused_days }
            if !(0..=custos_core::MAX_MONITOR_DAYS).contains(&expiring_days)
                || !(0..=custos_core::MAX_MONITOR_DAYS).contains(&unused_days) =>
        {
            return Err(Error::Usage(format!(
                "monitor looks 0 to {} days ahead and back",
                custos_core::MAX_MONITOR_DAYS
            )));
        }
        O::Monitor { expiring_days, unused_days } => Reply::Monitor(v.monitor(expiring_days, unused_days)?),
        O::Fsck { read_data } => Reply::Fsck(if read_data { e.open()?.fsck_read_data()? } else { v.fsck()? }),
        O::Gc { dry_run, grace } => {
            let grace = match grace {
                Some(g) => duration("--grace", &g)?,
                None => v.gc_grace()?,
            };
            Reply::Gc { report: v.gc(grace, dry_run, true)?, grace: format!("{grace:#}") }
        }
    })
}

/// The authenticated user an operation acts for (a custodian's own
/// recipient and share are theirs alone).
fn me(who: &Caller) -> Result<&str> {
    who.principal().map(|p| p.name.as_str()).ok_or_else(|| {
        Error::Usage("this acts for a custodian, who is a user: add users (`custos user add`) and give --user".into())
    })
}

fn grant_kind(on: GrantOn) -> custos_core::GrantKind {
    match on {
        GrantOn::Data => custos_core::GrantKind::Data,
        GrantOn::Key => custos_core::GrantKind::Key,
    }
}

fn settings(e: &Engine) -> Result<Vec<(String, String)>> {
    Ok(e.vault.settings()?.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// A lifecycle action on one key, or on every key matching a pattern: each
/// is checked, applied and audited on its own; with `dry_run` nothing
/// changes. Keys the action does not apply to are listed, not failed.
fn key_lifecycle(e: &Engine, who: &Caller, target: &str, a: KeyAction, dry_run: bool) -> Result<Reply> {
    let v = &e.vault;
    if !target.contains(['*', '%']) && !dry_run {
        let label = custos_core::model::KeyLabel::new(target)?;
        return Ok(Reply::Key(v.key_action(&label, a, false)?, "now"));
    }
    let p = custos_core::model::Pattern::new(target)?;
    let keys: Vec<_> = v.keys()?.into_iter().filter(|k| p.matches(k.label.as_str())).collect();
    if keys.is_empty() {
        return Err(custos_core::Error::Invalid {
            what: "key",
            why: format!("no key matches {target}: see `custos key ls`"),
        }
        .into());
    }
    let verb = format!("{a:?}").to_lowercase();
    let mut lines = Vec::new();
    for k in keys {
        let label = k.label.to_string();
        match k.state.apply(a) {
            Err(err) => lines.push(BulkLine { label, result: "skipped", detail: format!("skipped ({err})") }),
            Ok(next) if dry_run => lines.push(BulkLine {
                label,
                result: "would change",
                detail: format!("{} → {next} (dry run)", k.state),
            }),
            Ok(_) => {
                let r = v.key_action(&k.label, a, false);
                let outcome = match &r {
                    Ok(rec) => format!("ok: now {}", rec.state),
                    Err(err) => format!("failed: {err}"),
                };
                v.audit_append(&who.name(), &format!("key {verb} (bulk {target})"), k.label.as_str(), &outcome)?;
                lines.push(BulkLine { label, result: if r.is_ok() { "changed" } else { "failed" }, detail: outcome });
            }
        }
    }
    Ok(Reply::KeyBulk { lines, dry_run })
}

fn restore(
    e: &Engine,
    d: &str,
    backup: Option<u64>,
    generation: Option<u64>,
    at: Option<Timestamp>,
    as_name: Option<&DatasetName>,
) -> Result<Reply> {
    let v = e.open()?;
    let pat = custos_core::model::Pattern::new(d)?;
    let wildcard = d.contains(['*', '%']);
    if wildcard && (backup.is_some() || as_name.is_some()) {
        return Err(Error::Usage("--backup and --as restore one dataset: give a dataset name, not a pattern".into()));
    }
    let all = v.backups(Some(&pat))?;
    let mut names: Vec<DatasetName> = all.iter().map(|b| b.dataset.clone()).collect();
    names.sort();
    names.dedup();
    if !wildcard {
        names = vec![DatasetName::new(d)?];
    }
    if names.is_empty() {
        return Err(custos_core::Error::Invalid {
            what: "restore",
            why: format!("no backup of any dataset matching {d}: see `custos backup ls`"),
        }
        .into());
    }
    let mut out = Vec::new();
    for name in &names {
        let b = match backup {
            Some(id) => {
                let b = v.backup_record(id)?;
                // Restoring another dataset's copy over this one would roll
                // that other dataset back instead: only with --as.
                if b.dataset != *name && as_name.is_none() {
                    return Err(custos_core::Error::Invalid {
                        what: "restore",
                        why: format!(
                            "backup {id} is a copy of {}, not of {name}: run `custos restore {} --backup {id}`, or add `--as {name}` to write its content into {name}",
                            b.dataset, b.dataset
                        ),
                    }
                    .into());
                }
                b
            }
            None => {
                let fits = |b: &&custos_core::model::BackupRecord| {
                    b.dataset == *name
                        && generation.is_none_or(|g| b.source_generation == g)
                        && at.is_none_or(|t| b.created_at <= t)
                };
                let newest = |m: CopyMethod| all.iter().rev().filter(fits).find(|b| b.method == m).cloned();
                newest(CopyMethod::Logical).or_else(|| newest(CopyMethod::Raw)).ok_or_else(|| {
                    custos_core::Error::Invalid {
                        what: "restore",
                        why: format!(
                            "no backup of {name}{}{}: see `custos backup ls`",
                            generation.map(|g| format!(" generation {g}")).unwrap_or_default(),
                            at.map(|t| format!(" made at or before {t}")).unwrap_or_default()
                        ),
                    }
                })?
            }
        };
        let r = v.restore(&b, as_name)?;
        out.push((b.dataset.clone(), r));
    }
    Ok(Reply::Restored(out))
}

fn drill(
    e: &Engine,
    by: &str,
    pattern: Option<custos_core::model::Pattern>,
    threats: &[String],
    dual: bool,
    s: &[SecretText],
    scratch: Option<std::path::PathBuf>,
) -> Result<Reply> {
    use custos_risk::Threat;
    let singles: Vec<Threat> = if threats.is_empty() {
        Threat::ALL.to_vec()
    } else {
        threats
            .iter()
            .map(|t| {
                Threat::parse(t).ok_or_else(|| {
                    Error::Usage(format!(
                        "no threat {t:?}: choose one of {}",
                        Threat::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
                    ))
                })
            })
            .collect::<Result<_>>()?
    };
    let mut sets: Vec<Vec<Threat>> = singles.iter().map(|t| vec![*t]).collect();
    if dual {
        sets.extend(
            Threat::pairs()
                .into_iter()
                .filter(|(a, b)| singles.contains(a) || singles.contains(b))
                .map(|(a, b)| vec![a, b]),
        );
    }
    let v = e.open()?;
    let passphrase = e.passphrase().unwrap_or_else(|| custos_core::Passphrase::new(Vec::new()));
    let tmp;
    let scratch = match scratch {
        Some(d) => d,
        None => {
            tmp = tempfile::Builder::new()
                .prefix("custos-drill")
                .tempdir()
                .map_err(|source| custos_core::Error::VaultIo { path: std::env::temp_dir(), source })?;
            tmp.path().to_path_buf()
        }
    };
    let opts = custos_risk::drill::DrillOptions { pattern, sets, scratch, passphrase, shares: shares(s)? };
    let cells = custos_risk::drill::drill(v, &opts)?;
    // Every cell the drill carried out is kept, for the risk page's
    // "proven on"; one it could not drill says nothing and keeps the last.
    let at = Timestamp::now();
    let rows: Vec<custos_core::model::DrillRecord> = cells
        .iter()
        .filter(|c| c.not_drilled.is_none())
        .map(|c| custos_core::model::DrillRecord {
            dataset: c.dataset.clone(),
            threats: c.threats.iter().map(|t| t.name()).collect::<Vec<_>>().join("+"),
            at,
            survived: c.proven,
            agrees: c.agrees,
            how: c.how.clone(),
            by: by.to_string(),
        })
        .collect();
    v.record_drill_results(&rows)?;
    Ok(Reply::Drill(cells))
}

#[allow(dead_code)]
fn _state_is_used(_: KeyState) {}

/// A base64 field of an operation.
fn b64(what: &str, s: &str) -> Result<Vec<u8>> {
    crate::operation::base64_decode(s).map_err(|why| Error::Usage(format!("{what}: {why}")))
}

/// A 96-bit AES-GCM IV, base64.
fn iv12(s: &str) -> Result<[u8; 12]> {
    b64("iv", s)?.try_into().map_err(|_| Error::Usage("iv: an AES-GCM IV is 12 bytes (96 bits)".into()))
}

/// A change carried out, as [`Reply::Done`].
fn done(op: &'static str, fields: serde_json::Value, message: String) -> Reply {
    Reply::Done { op, fields, message }
}
