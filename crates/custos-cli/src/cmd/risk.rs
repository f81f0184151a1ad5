//! `custos risk`.

use custos_ops::Operation;

use super::{pattern, Plan, Show};
use crate::args::RiskCmd;

pub fn plan(c: &RiskCmd) -> anyhow::Result<Plan> {
    Ok(match c {
        RiskCmd::Report { pattern: p, dual, horizon, as_if_unencrypted, format, output } => Plan {
            show: Show::Report { format: *format, output: output.clone() },
            ..Plan::new(Operation::RiskReport {
                pattern: pattern(p.as_deref())?,
                dual: *dual,
                horizon: horizon.clone(),
                as_if_unencrypted: *as_if_unencrypted,
            })
        },
        RiskCmd::Drill { pattern: p, threat, all, dual, share, key, scratch } => {
            let threats = match (threat, all) {
                (Some(t), _) => vec![t.clone()],
                (None, true) => Vec::new(),
                (None, false) => {
                    return Err(crate::Usage("say which threat to drill: --threat NAME, or --all".into()).into())
                }
            };
            Plan::new(Operation::RiskDrill {
                pattern: pattern(p.as_deref())?,
                threats,
                dual: *dual,
                shares: super::escrow::open_shares(share, key)?,
                scratch: scratch.clone(),
            })
            .progress("drill", None)
        }
    })
}
