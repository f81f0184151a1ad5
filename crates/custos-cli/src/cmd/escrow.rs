//! `custos escrow`.

use std::io::Write;
use std::path::Path;

use anyhow::bail;
use custos_ops::{Operation, ShareOut};

use super::{label, Plan, Show};
use crate::args::EscrowCmd;

pub fn plan(c: &EscrowCmd) -> anyhow::Result<Plan> {
    Ok(match c {
        EscrowCmd::Init { custodians, threshold, out_dir } => {
            // Refuse before anything is generated if a share file would be overwritten.
            for c in custodians {
                let p = out_dir.join(format!("{c}.share"));
                if p.exists() {
                    bail!("{} exists already; choose another --out-dir", p.display());
                }
            }
            Plan {
                show: Show::Shares(out_dir.clone()),
                ..Plan::new(Operation::EscrowInit { custodians: custodians.clone(), threshold: *threshold })
            }
        }
        EscrowCmd::Status => Plan::new(Operation::EscrowStatus),
        EscrowCmd::Purge { label: l } => Plan::new(Operation::EscrowPurge { label: label(l)? }),
    })
}

/// Write each custodian's share file (0600, new) and make them durable.
pub fn write_shares(out_dir: &Path, shares: &[ShareOut]) -> std::io::Result<()> {
    let ctx = |p: &Path| {
        let p = p.display().to_string();
        move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{p}: {e}"))
    };
    std::fs::create_dir_all(out_dir).map_err(ctx(out_dir))?;
    for s in shares {
        use std::os::unix::fs::OpenOptionsExt;
        let p = out_dir.join(format!("{}.share", s.custodian));
        let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&p).map_err(ctx(&p))?;
        out.write_all(s.text.expose().as_bytes()).map_err(ctx(&p))?;
        out.sync_all().map_err(ctx(&p))?;
    }
    std::fs::File::open(out_dir).and_then(|d| d.sync_all()).map_err(ctx(out_dir))?;
    Ok(())
}
