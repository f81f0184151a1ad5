//! `custos request`: dual control.

use custos_ops::Operation;

use super::Plan;
use crate::args::RequestCmd;

pub fn plan(c: &RequestCmd) -> anyhow::Result<Plan> {
    Ok(Plan::new(match c {
        RequestCmd::Ls { limit, before } => Operation::RequestList { limit: *limit, before: *before },
        RequestCmd::Show { id } => Operation::RequestShow { id: *id },
        RequestCmd::Approve { id, share, key } => {
            Operation::RequestApprove { id: *id, shares: super::escrow::open_shares(share, key)? }
        }
        RequestCmd::Deny { id } => Operation::RequestDeny { id: *id },
        RequestCmd::Withdraw { id } => Operation::RequestWithdraw { id: *id },
    }))
}
