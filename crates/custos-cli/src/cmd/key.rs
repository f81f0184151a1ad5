//! `custos key`.

use custos_core::model::{KeyAction, Pattern, Purpose};
use std::io::Read;

use custos_ops::{Operation, SecretText};

use super::{label, pattern, Plan};
use crate::args::{KeyCmd, PurposeArg};
use crate::Usage;

fn parse_expiry(s: &str) -> anyhow::Result<jiff::Timestamp> {
    if let Some(days) = s.strip_suffix('d').and_then(|d| d.parse::<i64>().ok()) {
        return days
            .checked_mul(86_400)
            .and_then(|secs| jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_secs(secs)).ok())
            .ok_or_else(|| {
                Usage(format!("--expires {s}: too far in the future; give fewer days, or a date before the year 9999"))
                    .into()
            });
    }
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>() {
        return Ok(d.to_zoned(jiff::tz::TimeZone::UTC)?.timestamp());
    }
    anyhow::bail!(
        "invalid expiry {s:?}: give a date (2027-01-31), a timestamp (2027-01-31T12:00:00Z) or days from now (90d)"
    )
}

/// `KEY=VALUE` pairs of an encryption context.
fn pairs(list: &[String]) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    list.iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| Usage(format!("--context {p:?}: write KEY=VALUE")).into())
        })
        .collect()
}

pub fn plan(c: &KeyCmd) -> anyhow::Result<Plan> {
    let lifecycle = |target: &str, action, dry_run| {
        Ok(Plan::new(Operation::KeyLifecycle { target: target.to_string(), action, dry_run }))
    };
    Ok(match c {
        KeyCmd::Create { label: l, app, purpose, expires, activate, count } => Plan::new(Operation::KeyCreate {
            label: l.as_deref().map(label).transpose()?,
            app: app.clone(),
            purpose: match purpose {
                PurposeArg::Prim => Purpose::Prim,
                PurposeArg::Back => Purpose::Back,
            },
            expires_at: expires.as_deref().map(parse_expiry).transpose()?,
            activate: *activate,
            count: *count,
            attributes: Default::default(),
        }),
        KeyCmd::Ls { pattern: p, limit, after } => {
            Plan::new(Operation::KeyList { pattern: pattern(p.as_deref())?, limit: *limit, after: after.clone() })
        }
        KeyCmd::Show { label: l } => Plan::new(Operation::KeyShow { label: label(l)? }),
        KeyCmd::Activate { label, dry_run } => return lifecycle(label, KeyAction::Activate, *dry_run),
        KeyCmd::Deactivate { label, dry_run } => return lifecycle(label, KeyAction::Deactivate, *dry_run),
        KeyCmd::Archive { label, dry_run } => return lifecycle(label, KeyAction::Archive, *dry_run),
        KeyCmd::Restore { label, dry_run } => return lifecycle(label, KeyAction::Restore, *dry_run),
        KeyCmd::Recover { pattern: p, from: Some(from), .. } => {
            Plan::new(Operation::KeyRecover { pattern: Pattern::new(p.as_str())?, from: from.clone() })
        }
        KeyCmd::Recover { pattern: p, from: None, share, key, .. } => {
            Plan::new(Operation::EscrowRecover { label: label(p)?, shares: super::escrow::open_shares(share, key)? })
        }
        KeyCmd::Destroy { label: l, crypto_erase, wait } => {
            if let Some(w) = wait {
                custos_core::parse_duration(w).map_err(|why| Usage(format!("--wait: {why}")))?;
            }
            Plan::new(Operation::KeyDestroy { label: label(l)?, crypto_erase: *crypto_erase, wait: wait.clone() })
        }
        KeyCmd::CancelDestroy { label: l } => Plan::new(Operation::KeyCancelDestroy { label: label(l)? }),
        KeyCmd::Revoke { label: l, reason, message } => Plan::new(Operation::KeyRevoke {
            label: label(l)?,
            reason: reason.clone(),
            message: message.clone(),
            compromised_at: None,
        }),
        KeyCmd::Encrypt { label: l, context } => {
            let mut plain = zeroize::Zeroizing::new(Vec::new());
            std::io::Read::take(std::io::stdin().lock(), custos_core::MAX_PLAINTEXT as u64 + 1)
                .read_to_end(&mut plain)?;
            Plan::new(Operation::KeyEncrypt {
                label: label(l)?,
                plaintext: SecretText::new(custos_ops::base64_encode(&plain)),
                context: pairs(context)?,
            })
        }
        KeyCmd::Decrypt { context } => {
            let mut text = String::new();
            std::io::Read::take(std::io::stdin().lock(), 1 << 20).read_to_string(&mut text)?;
            Plan::new(Operation::KeyDecrypt { ciphertext: text.trim().to_string(), context: pairs(context)? })
        }
        KeyCmd::Datakey { label: l, bytes, context } => {
            Plan::new(Operation::KeyDataKey { label: label(l)?, bytes: *bytes, context: pairs(context)? })
        }
    })
}
