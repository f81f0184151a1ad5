//! `custos mk`: master key status and change. `make-part` needs no vault
//! and runs here; the rest are operations.

use std::io::Write;

use anyhow::Context;
use custos_core::KeyPartFile;
use custos_ops::Operation;

use super::{secret_files, Plan};
use crate::args::MkCmd;

pub fn plan(c: &MkCmd) -> anyhow::Result<Plan> {
    Ok(Plan::new(match c {
        MkCmd::Status => Operation::MkStatus,
        MkCmd::MakePart { .. } => anyhow::bail!("mk make-part runs without a vault"),
        MkCmd::LoadNew { generate, part, expect_mkvp } => Operation::MkLoadNew {
            generate: *generate,
            parts: secret_files(part, "key part")?,
            expect_mkvp: expect_mkvp.clone(),
        },
        MkCmd::ClearNew => Operation::MkClearNew,
        MkCmd::Activate => Operation::MkActivate,
        MkCmd::Reencipher { batch } => Operation::MkReencipher { batch: *batch },
    }))
}

/// `custos mk make-part`: a custodian's key part, written to a new file.
pub fn make_part(custodian: &str, output: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let part = KeyPartFile::generate(custodian)?;
    let kcv = part.0.kcv;
    let text = part.encode();
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(output)
            .with_context(|| format!("cannot create {} (it must not exist yet)", output.display()))?
    };
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    if json {
        let j = serde_json::json!({
            "op": "mk-make-part",
            "custodian": custodian,
            "path": output,
            "kcv": kcv.to_string(),
            "message": format!("wrote a key part for {custodian} to {} (KCV {kcv})", output.display()),
        });
        let _ = writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    let _ = writeln!(
        std::io::stdout(),
        "wrote a key part for {custodian} to {} (KCV {kcv}); keep it secret",
        output.display()
    );
    Ok(())
}
