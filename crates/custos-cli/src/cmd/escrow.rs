//! `custos escrow`. A custodian's key pair is made and opened here, on the
//! custodian's own machine (`keygen`, `confirm`, and opening shares for a
//! recovery); the vault or server only ever sees recipients, sealed shares
//! and, for a recovery, one custodian's own share.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use custos_core::{CustodianIdentity, KdfParams, Passphrase, SealedShareFile, ShareFile};
use custos_ops::{Operation, SecretText};

use super::{label, Plan, Show};
use crate::args::EscrowCmd;

pub fn plan(c: &EscrowCmd) -> anyhow::Result<Plan> {
    Ok(match c {
        EscrowCmd::Keygen { .. } => bail!("escrow keygen runs without a vault"),
        EscrowCmd::Register { recipient } => {
            // A key file names its recipient; read it without its passphrase.
            let text = match std::fs::read_to_string(recipient) {
                Ok(file) => {
                    let (_, public) = CustodianIdentity::recipient_of(&file, recipient)?;
                    custos_core::recipient_to_text(&public)
                }
                Err(_) if recipient.starts_with("custos-recipient-") => recipient.clone(),
                Err(e) => bail!("cannot read the key file {recipient}: {e} (give a key file or a recipient)"),
            };
            Plan::new(Operation::EscrowRegister { recipient: text })
        }
        EscrowCmd::Init { custodians, threshold } => {
            Plan::new(Operation::EscrowInit { custodians: custodians.clone(), threshold: *threshold })
        }
        EscrowCmd::Share { kbk, out } => {
            if let Some(p) = out {
                if p.exists() {
                    bail!("{} exists already; choose another --out", p.display());
                }
            }
            Plan {
                show: out.clone().map(Show::Save).unwrap_or(Show::Plain),
                ..Plan::new(Operation::EscrowShare { kbk: kbk.clone() })
            }
        }
        EscrowCmd::Confirm { share, key } => {
            let id = open_key(key)?;
            let sealed = read_sealed(share)?;
            let opened = id.open_share(&sealed, &share.display().to_string())?;
            Plan::new(Operation::EscrowConfirm {
                kbk: opened.kbk.clone(),
                confirm: hex::encode(custos_core::share_confirmation(&opened)),
            })
        }
        EscrowCmd::Status => Plan::new(Operation::EscrowStatus),
        EscrowCmd::Purge { label: l } => Plan::new(Operation::EscrowPurge { label: label(l)? }),
    })
}

/// `custos escrow keygen`: a new key pair, the private half sealed under a
/// passphrase in a new file.
pub fn keygen(custodian: &str, out: &Path, memory_mib: u32, iterations: u32, json: bool) -> anyhow::Result<()> {
    let params = KdfParams { memory_kib: memory_mib.saturating_mul(1024), iterations, parallelism: 1 };
    params.validate_new()?;
    if out.exists() {
        bail!("{} exists already; choose another --out", out.display());
    }
    let id = CustodianIdentity::generate(custodian)?;
    let pass = custodian_passphrase(&out.display().to_string(), true)?;
    let text = id.encode(&pass, params)?;
    write_new(out, text.as_bytes())?;
    if json {
        let j = serde_json::json!({
            "op": "escrow-keygen",
            "custodian": custodian,
            "path": out,
            "recipient": id.recipient().to_string(),
            "message": format!("wrote {custodian}'s custodian key to {}", out.display()),
        });
        let _ = writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    let _ = writeln!(
        std::io::stdout(),
        "wrote {custodian}'s custodian key to {}; keep it (and its passphrase) where only you can reach it.\nrecipient: {}\nregister it: custos escrow register {}",
        out.display(),
        id.recipient(),
        out.display()
    );
    Ok(())
}

/// The passphrase of a custodian key file: CUSTOS_CUSTODIAN_PASSPHRASE, or asked for.
fn custodian_passphrase(file: &str, confirm: bool) -> anyhow::Result<Passphrase> {
    crate::secret_from_env_or_prompt(
        "CUSTOS_CUSTODIAN_PASSPHRASE",
        &format!("Passphrase for {file}: "),
        &format!("the passphrase of the custodian key {file} is needed: set CUSTOS_CUSTODIAN_PASSPHRASE or run in a terminal to be asked"),
        confirm,
    )
}

fn open_key(path: &Path) -> anyhow::Result<CustodianIdentity> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the key file {}", path.display()))?;
    let what = path.display().to_string();
    Ok(CustodianIdentity::decode(&text, &what, &custodian_passphrase(&what, false)?)?)
}

fn read_sealed(path: &Path) -> anyhow::Result<SealedShareFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the share file {}", path.display()))?;
    Ok(SealedShareFile::decode(&text, &path.display().to_string())?)
}

/// Open sealed share files with the custodian keys given, here; what is
/// sent is the opened shares (each custodian's own, on a server).
pub fn open_shares(shares: &[PathBuf], keys: &[PathBuf]) -> anyhow::Result<Vec<SecretText>> {
    if shares.is_empty() {
        return Ok(Vec::new());
    }
    let ids = keys.iter().map(|k| open_key(k)).collect::<anyhow::Result<Vec<_>>>()?;
    shares
        .iter()
        .map(|p| {
            let sealed = read_sealed(p)?;
            let what = p.display().to_string();
            let id = ids.iter().find(|id| id.public == sealed.0.recipient).ok_or_else(|| {
                anyhow::anyhow!(
                    "no --key given opens {what}: it is sealed to {}'s recipient; give that custodian's key file",
                    sealed.0.custodian
                )
            })?;
            let share: ShareFile = id.open_share(&sealed, &what)?;
            Ok(SecretText::new(share.encode().to_string()))
        })
        .collect()
}

/// Create `path` (it must not exist), write `bytes`, and make it durable.
pub fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("cannot write {}", path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).ok();
    }
    Ok(())
}
