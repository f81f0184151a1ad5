//! `custos hsm`: storage management (DFSMShsm).

use custos_core::model::Pattern;
use custos_ops::Operation;

use super::{dataset, method, volume_name, Plan};
use crate::args::{HsmCmd, HsmRuleCmd};

pub fn plan(c: &HsmCmd) -> anyhow::Result<Plan> {
    Ok(match c {
        HsmCmd::Run { dry_run, without_keys } => {
            Plan::new(Operation::HsmRun { dry_run: *dry_run, without_keys: *without_keys }).progress("hsm run", None)
        }
        HsmCmd::Rule(HsmRuleCmd::Add { name, pattern, backup_to, method: m, keep, migrate_after_days, migrate_to }) => {
            Plan::new(Operation::HsmRuleAdd {
                name: name.clone(),
                pattern: Pattern::new(pattern.as_str())?,
                method: method(*m),
                backup_to: backup_to.as_deref().map(volume_name).transpose()?,
                keep: (*keep).into(),
                migrate_after_days: *migrate_after_days,
                migrate_to: migrate_to.as_deref().map(volume_name).transpose()?,
            })
        }
        HsmCmd::Rule(HsmRuleCmd::Ls) => Plan::new(Operation::HsmRuleList),
        HsmCmd::Rule(HsmRuleCmd::Rm { name }) => Plan::new(Operation::HsmRuleRm { name: name.clone() }),
        HsmCmd::Migrate { dataset: d, to } => {
            Plan::new(Operation::HsmMigrate { dataset: dataset(d)?, to: volume_name(to)? })
        }
        HsmCmd::Recall { dataset: d } => Plan::new(Operation::HsmRecall { dataset: dataset(d)? }),
    })
}
