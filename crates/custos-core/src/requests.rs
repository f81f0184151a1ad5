//! Dual control: a configurable set of actions does not run on one
//! principal's word. It becomes a pending request that a second, distinct
//! principal, authorized for the same action, approves (and so runs) or
//! denies. Requests expire.

use custos_repo::RequestRow;
use jiff::Timestamp;

use crate::vault::{Vault, VaultState};
use crate::{Error, Result};

const SETTING_DUAL: &str = "dual-control";
const SETTING_TTL: &str = "request.ttl";

/// The actions that can be put under dual control.
pub const CONTROLLABLE: [&str; 10] = [
    "key-destroy",
    "key-recover",
    "mk-activate",
    "policy-change",
    "escrow-recover",
    "role-change",
    "escrow-change",
    "data-removal",
    "key-archive",
    "volume-change",
];

/// The actions under dual control until the `dual-control` setting says
/// otherwise: everything that hands out or takes away keys and rights.
pub const DEFAULT_DUAL_CONTROL: [&str; 7] =
    ["key-destroy", "key-recover", "mk-activate", "policy-change", "escrow-recover", "role-change", "escrow-change"];

impl<S: VaultState> Vault<S> {
    /// The actions under dual control ([`DEFAULT_DUAL_CONTROL`] until set; "none" for none).
    pub fn dual_control(&self) -> Result<Vec<String>> {
        Ok(match self.repo.setting(SETTING_DUAL)?.as_deref() {
            None => DEFAULT_DUAL_CONTROL.iter().map(|s| s.to_string()).collect(),
            Some("none") | Some("") => Vec::new(),
            Some(s) => s.split(',').map(|x| x.trim().to_string()).collect(),
        })
    }

    /// Set the actions under dual control: a comma-separated list, or "none".
    pub fn set_dual_control(&self, list: &str) -> Result<()> {
        if list != "none" {
            for a in list.split(',').map(str::trim) {
                if !CONTROLLABLE.contains(&a) {
                    return Err(Error::Invalid {
                        what: "dual-control",
                        why: format!("{a:?} is not one of {} (or \"none\")", CONTROLLABLE.join(", ")),
                    });
                }
            }
        }
        Ok(self.repo.set_setting(SETTING_DUAL, list)?)
    }

    /// How long a request waits for a decision (default 24h).
    pub fn request_ttl(&self) -> Result<jiff::SignedDuration> {
        match self.repo.setting(SETTING_TTL)? {
            None => Ok(jiff::SignedDuration::from_hours(24)),
            Some(s) => crate::parse_duration(&s).map_err(|why| Error::Invalid { what: "request.ttl", why }),
        }
    }

    pub fn set_request_ttl(&self, text: &str) -> Result<()> {
        crate::parse_duration(text).map_err(|why| Error::Invalid { what: "request.ttl", why })?;
        Ok(self.repo.set_setting(SETTING_TTL, text)?)
    }

    pub fn request_create(&self, action: &str, args: &str, by: &str) -> Result<RequestRow> {
        let now = Timestamp::now();
        let mut r = RequestRow {
            id: 0,
            action: action.into(),
            args: args.into(),
            requested_by: by.into(),
            created_at: now,
            expires_at: now + self.request_ttl()?,
            state: "pending".into(),
            decided_by: None,
            decided_at: None,
        };
        r.id = self.repo.insert_request(&r)?;
        Ok(r)
    }

    /// All requests, newest first; pending ones past their time read "expired".
    pub fn requests(&self) -> Result<Vec<RequestRow>> {
        self.requests_page(None, usize::MAX)
    }

    /// Up to `limit` requests, newest first, older than `before` (the last
    /// id of the previous page) when given.
    pub fn requests_page(&self, before: Option<u64>, limit: usize) -> Result<Vec<RequestRow>> {
        let now = Timestamp::now();
        Ok(self
            .repo
            .requests_before(before.unwrap_or(u64::MAX), u32::try_from(limit).unwrap_or(u32::MAX))?
            .into_iter()
            .map(|mut r| {
                if r.state == "pending" && r.expires_at <= now {
                    r.state = "expired".into();
                }
                r
            })
            .collect())
    }

    pub fn request(&self, id: u64) -> Result<RequestRow> {
        self.requests_page(id.checked_add(1), 1)?.into_iter().find(|r| r.id == id).ok_or_else(|| Error::NotFound {
            what: "request",
            name: id.to_string(),
            see: "custos request ls",
        })
    }

    /// Check that `by` may decide request `id`, and mark it decided
    /// (`approved` or `denied`). Nobody decides their own request, and an
    /// expired or decided one cannot be.
    pub fn request_decide(&self, id: u64, by: &str, approve: bool) -> Result<RequestRow> {
        let r = self.request(id)?;
        if r.state != "pending" {
            return Err(Error::Invalid { what: "request", why: format!("request {id} is {}, not pending", r.state) });
        }
        if r.requested_by == by {
            return Err(Error::Forbidden {
                principal: by.into(),
                why: format!("request {id} is its own; a second principal must decide it"),
            });
        }
        let state = if approve { "approved" } else { "denied" };
        if !self.repo.decide_request(id, state, by)? {
            return Err(Error::Invalid { what: "request", why: format!("request {id} was decided meanwhile") });
        }
        self.request(id)
    }

    /// Record how an approved request's command ended.
    pub fn request_finish(&self, id: u64, by: &str, outcome: &str) -> Result<()> {
        self.repo.decide_request(id, outcome, by)?;
        Ok(())
    }

    /// The requester takes back a pending request of their own.
    pub fn request_withdraw(&self, id: u64, by: &str) -> Result<RequestRow> {
        let r = self.request(id)?;
        if r.requested_by != by {
            return Err(Error::Forbidden {
                principal: by.into(),
                why: format!("request {id} is {}'s; only its requester withdraws it (others deny it)", r.requested_by),
            });
        }
        if r.state != "pending" {
            return Err(Error::Invalid { what: "request", why: format!("request {id} is {}, not pending", r.state) });
        }
        if !self.repo.decide_request(id, "withdrawn", by)? {
            return Err(Error::Invalid { what: "request", why: format!("request {id} was decided meanwhile") });
        }
        self.request(id)
    }
}
