//! `custos audit`.

use custos_ops::Operation;

use super::{parse_time, volume_name, Output, Plan};
use crate::args::AuditCmd;

pub fn plan(c: &AuditCmd) -> anyhow::Result<Plan> {
    Ok(match c {
        AuditCmd::Ls { since, principal, object, limit, after } => Plan::new(Operation::AuditList {
            since: since.as_deref().map(parse_time).transpose()?,
            principal: principal.clone(),
            object: object.clone(),
            after: *after,
            limit: *limit,
        }),
        AuditCmd::Verify { against } => {
            Plan::new(Operation::AuditVerify { against: against.as_deref().map(volume_name).transpose()? })
        }
        AuditCmd::AcceptRollback => Plan::new(Operation::AuditAcceptRollback),
        AuditCmd::Export { jsonl: _, to: Some(volume) } => {
            Plan::new(Operation::AuditExportTo { volume: volume_name(volume)? })
        }
        AuditCmd::Export { jsonl: _, to: None } => Plan { output: Output::Stdout, ..Plan::new(Operation::AuditExport) },
    })
}
