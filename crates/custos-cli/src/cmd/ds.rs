//! `custos ds`.

use custos_ops::{Operation, Range};

use super::{dataset, label, pattern, volume_name, Input, Output, Plan};
use crate::args::DsCmd;

fn parse_range(s: &str) -> anyhow::Result<Range> {
    let (a, b) = s.split_once("..").ok_or_else(|| {
        anyhow::Error::from(crate::Usage(format!("invalid range {s:?}: write START..END, START.. or ..END")))
    })?;
    let num = |x: &str| -> anyhow::Result<Option<u64>> {
        if x.is_empty() {
            Ok(None)
        } else {
            x.parse().map(Some).map_err(|_| {
                anyhow::Error::from(crate::Usage(format!("invalid range {s:?}: {x:?} is not a byte offset")))
            })
        }
    };
    Ok(Range { start: num(a)?, end: num(b)? })
}

pub fn plan(c: &DsCmd) -> anyhow::Result<Plan> {
    Ok(match c {
        DsCmd::Put { name, file, key, volume } => {
            let op = Operation::DsPut {
                name: dataset(name)?,
                key: key.as_deref().map(label).transpose()?,
                volume: volume.as_deref().map(volume_name).transpose()?,
            };
            let (input, size) = if file.as_os_str() == "-" {
                (Input::Stdin, None)
            } else {
                (Input::File(file.clone()), std::fs::metadata(file).ok().map(|m| m.len()))
            };
            Plan { input, ..Plan::new(op).progress(format!("put {name}"), size) }
        }
        DsCmd::Get { name, output, range } => {
            let op = Operation::DsGet { name: dataset(name)?, range: range.as_deref().map(parse_range).transpose()? };
            match output {
                Some(path) => {
                    Plan { output: Output::File(path.clone()), ..Plan::new(op).progress(format!("get {name}"), None) }
                }
                None => Plan { output: Output::Stdout, ..Plan::new(op) },
            }
        }
        DsCmd::Ls { pattern: p, limit, after } => {
            Plan::new(Operation::DsList { pattern: pattern(p.as_deref())?, limit: *limit, after: after.clone() })
        }
        DsCmd::Info { name } => Plan::new(Operation::DsInfo { name: dataset(name)? }),
        DsCmd::Rm { name } => Plan::new(Operation::DsRm { name: dataset(name)? }),
        DsCmd::Verify { name } => {
            Plan::new(Operation::DsVerify { name: dataset(name)? }).progress(format!("verify {name}"), None)
        }
        DsCmd::Import { dir, prefix, replace, skip_other } => Plan::new(Operation::DsImport {
            dir: dir.clone(),
            prefix: dataset(prefix)?,
            replace: *replace,
            skip_other: *skip_other,
        })
        .progress(format!("import {}", dir.display()), None),
        DsCmd::Export { prefix, dir, replace } => {
            Plan::new(Operation::DsExport { prefix: dataset(prefix)?, dir: dir.clone(), replace: *replace })
                .progress(format!("export {prefix}"), None)
        }
    })
}
