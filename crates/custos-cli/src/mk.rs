//! `custos mk`: master key status and change.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use custos_core::{KeyPart, KeyPartFile, NewMasterKey};
use custos_crypto::Mkvp;

use crate::args::{Cli, MkCmd};
use crate::output::{json, when, Table};

fn read_part(path: &Path) -> anyhow::Result<KeyPart> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read key part file {}", path.display()))?,
    );
    Ok(KeyPartFile::decode(&text, &path.display().to_string())?.0)
}

pub fn run(cli: &Cli, cmd: &MkCmd) -> anyhow::Result<()> {
    match cmd {
        MkCmd::MakePart { custodian, output } => {
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
            println!("wrote a key part for {custodian} to {} (KCV {kcv}); keep it secret", output.display());
            Ok(())
        }
        MkCmd::Status => {
            let v = crate::open(cli)?;
            let st = v.mk_status()?;
            if cli.json {
                return json(&st);
            }
            let mut t = Table::new(&["REGISTER", "MKVP", "SINCE", "KEYS"]);
            for r in &st.registers {
                t.row(vec![r.register.clone(), r.mkvp.clone(), when(Some(r.since)), r.keys.to_string()]);
            }
            t.print();
            for (m, n) in &st.orphaned {
                println!("warning: {n} keys are wrapped under master key {m}, which no register holds: recover them from a keystore backup or escrow");
            }
            Ok(())
        }
        MkCmd::LoadNew { generate, part, expect_mkvp } => {
            let expect = expect_mkvp
                .as_deref()
                .map(|m| Mkvp::from_hex(m).map_err(|_| anyhow::anyhow!("--expect-mkvp takes 16 hex digits")))
                .transpose()?;
            let new = match (generate, part.is_empty()) {
                (true, true) => NewMasterKey::Generate,
                (false, false) => {
                    NewMasterKey::Parts(part.iter().map(|p| read_part(p)).collect::<anyhow::Result<_>>()?)
                }
                _ => bail!("give either --generate or --part FILE for each custodian"),
            };
            let v = crate::open(cli)?;
            let mkvp = v.mk_load_new(new, expect)?;
            if cli.json {
                json(&serde_json::json!({ "new_mkvp": mkvp.to_hex() }))
            } else {
                println!("loaded the NEW master key register: MKVP {mkvp}");
                println!("next: `custos mk activate`, then `custos mk reencipher`");
                Ok(())
            }
        }
        MkCmd::ClearNew => {
            crate::open(cli)?.mk_clear_new()?;
            println!("cleared the NEW master key register");
            Ok(())
        }
        MkCmd::Activate => {
            let st = crate::open(cli)?.mk_activate()?;
            if cli.json {
                return json(&st);
            }
            println!("activated: NEW is now CURRENT, the previous CURRENT is OLD");
            for r in &st.registers {
                println!("  {:<8} {}  {} keys", r.register, r.mkvp, r.keys);
            }
            if st.registers.iter().any(|r| r.register == "OLD" && r.keys > 0) {
                println!("next: `custos mk reencipher` moves the keys still under OLD to CURRENT");
            }
            Ok(())
        }
        MkCmd::Reencipher { batch } => {
            let v = crate::open(cli)?;
            let quiet = cli.json;
            let r = v.mk_reencipher(*batch, |n| {
                if !quiet && n > 0 && n % 10_000 < *batch as u64 {
                    eprintln!("  {n} keys re-enciphered");
                }
            })?;
            if cli.json {
                return json(&r);
            }
            match &r.from {
                Some(f) => println!("re-enciphered {} keys from master key {f} to {}", r.moved, r.to),
                None => println!("no OLD master key: nothing to re-encipher"),
            }
            Ok(())
        }
    }
}
