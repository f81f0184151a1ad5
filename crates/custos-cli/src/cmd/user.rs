//! `custos user`.

use std::io::IsTerminal;

use anyhow::bail;
use custos_core::model::{Pattern, Role};
use custos_ops::{GrantOn, NewCredential, Operation, SecretText};

use super::Plan;
use crate::args::{GrantArgs, RoleArg, UserCmd};

fn grant(g: &GrantArgs) -> anyhow::Result<(GrantOn, Pattern)> {
    Ok(match (&g.data, &g.key) {
        (Some(d), None) => (GrantOn::Data, Pattern::new(d.as_str())?),
        (None, Some(k)) => (GrantOn::Key, Pattern::new(k.as_str())?),
        _ => return Err(crate::Usage("give --data PATTERN or --key PATTERN".into()).into()),
    })
}

fn new_credential(name: &str, token: bool) -> anyhow::Result<NewCredential> {
    Ok(if token {
        NewCredential::Token
    } else if let Ok(c) = std::env::var("CUSTOS_NEW_CREDENTIAL") {
        NewCredential::Passphrase(SecretText::new(c))
    } else if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password(format!("New credential for {name}: "))?;
        if rpassword::prompt_password("Again: ")? != p {
            bail!("the two credentials differ; nothing was changed");
        }
        NewCredential::Passphrase(SecretText::new(p))
    } else {
        bail!("a new passphrase for {name} is needed: set CUSTOS_NEW_CREDENTIAL, run in a terminal, or use --token");
    })
}

fn role_list(roles: &[RoleArg]) -> Vec<Role> {
    roles
        .iter()
        .map(|r| match r {
            RoleArg::SecurityAdmin => Role::SecurityAdmin,
            RoleArg::KeyCustodian => Role::KeyCustodian,
            RoleArg::StorageAdmin => Role::StorageAdmin,
            RoleArg::App => Role::App,
            RoleArg::Auditor => Role::Auditor,
        })
        .collect()
}

pub fn plan(c: &UserCmd) -> anyhow::Result<Plan> {
    Ok(Plan::new(match c {
        UserCmd::Add { name, roles, token } => {
            let roles = role_list(roles);
            let credential = new_credential(name, *token)?;
            Operation::UserAdd { name: name.clone(), roles, credential }
        }
        UserCmd::Ls => Operation::UserList,
        UserCmd::Disable { name } => Operation::UserDisable { name: name.clone() },
        UserCmd::Enable { name } => Operation::UserEnable { name: name.clone() },
        UserCmd::Rm { name } => Operation::UserRemove { name: name.clone() },
        UserCmd::Credential { name, token } => {
            Operation::UserCredential { name: name.clone(), credential: new_credential(name, *token)? }
        }
        UserCmd::Role { name, add, remove } => {
            if add.is_empty() && remove.is_empty() {
                return Err(crate::Usage("give --add ROLE or --remove ROLE (or both): the roles are security-admin, key-custodian, storage-admin, app and auditor".into()).into());
            }
            Operation::UserRole { name: name.clone(), add: role_list(add), remove: role_list(remove) }
        }
        UserCmd::Grant(g) => {
            let (on, pattern) = grant(g)?;
            Operation::UserGrant { name: g.name.clone(), on, pattern }
        }
        UserCmd::Revoke(g) => {
            let (on, pattern) = grant(g)?;
            Operation::UserRevoke { name: g.name.clone(), on, pattern }
        }
    }))
}
