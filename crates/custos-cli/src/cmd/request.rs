//! `custos request`: dual control.

use custos_ops::Operation;

use super::{secret_files, Plan};
use crate::args::RequestCmd;

pub fn plan(c: &RequestCmd) -> anyhow::Result<Plan> {
    Ok(Plan::new(match c {
        RequestCmd::Ls => Operation::RequestList,
        RequestCmd::Show { id } => Operation::RequestShow { id: *id },
        RequestCmd::Approve { id, share } => {
            Operation::RequestApprove { id: *id, shares: secret_files(share, "share")? }
        }
        RequestCmd::Deny { id } => Operation::RequestDeny { id: *id },
        RequestCmd::Withdraw { id } => Operation::RequestWithdraw { id: *id },
    }))
}
