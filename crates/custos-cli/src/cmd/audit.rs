//! `custos audit`.

use custos_ops::Operation;

use super::{parse_time, Output, Plan};
use crate::args::AuditCmd;

pub fn plan(c: &AuditCmd) -> anyhow::Result<Plan> {
    Ok(match c {
        AuditCmd::Ls { since, principal, object } => Plan::new(Operation::AuditList {
            since: since.as_deref().map(parse_time).transpose()?,
            principal: principal.clone(),
            object: object.clone(),
        }),
        AuditCmd::Verify => Plan::new(Operation::AuditVerify),
        AuditCmd::AcceptRollback => Plan::new(Operation::AuditAcceptRollback),
        AuditCmd::Export { jsonl: _ } => Plan { output: Output::Stdout, ..Plan::new(Operation::AuditExport) },
    })
}
