//! Monitoring: the alerts an operator must see, and metrics for Prometheus.

use jiff::{Timestamp, ToSpan};
use serde::Serialize;

use custos_model::KeyState;

use crate::vault::{Vault, VaultState};
use crate::{Error, Result};

#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// key-expiring, key-unused, key-unprotected, dataset-key-inactive.
    pub code: &'static str,
    pub subject: String,
    pub detail: String,
}

/// One Prometheus sample: name, labels, value.
#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MonitorReport {
    pub alerts: Vec<Alert>,
    pub metrics: Vec<Metric>,
}

/// The longest window monitor looks ahead or back: 100 years.
pub const MAX_DAYS: i64 = 36_600;

impl<S: VaultState> Vault<S> {
    /// Keys expiring within `expiring_days`, active keys unused for
    /// `unused_days`, keys with neither an escrow copy nor a keystore backup
    /// taken since they were made, and datasets whose key is not active.
    pub fn monitor(&self, expiring_days: i64, unused_days: i64) -> Result<MonitorReport> {
        for (what, d) in [("--expiring-days", expiring_days), ("--unused-days", unused_days)] {
            if !(0..=MAX_DAYS).contains(&d) {
                return Err(Error::Invalid { what: "monitor", why: format!("{what} {d}: give 0 to {MAX_DAYS} days") });
            }
        }
        let now = Timestamp::now();
        let keys = self.repo.keys()?;
        let ksbs = self.repo.keystore_backups()?;
        let mut alerts = Vec::new();
        let soon = now + (expiring_days * 24).hours();
        let idle = now - (unused_days * 24).hours();
        for k in keys.iter().filter(|k| k.wrapped.is_some() && k.state != KeyState::Destroyed) {
            if let Some(exp) = k.expires_at.filter(|e| *e <= soon) {
                alerts.push(Alert {
                    code: "key-expiring",
                    subject: k.label.to_string(),
                    detail: format!("expires {}", exp.strftime("%Y-%m-%d %H:%M UTC")),
                });
            }
            if k.state == KeyState::Active && k.last_used_at.unwrap_or(k.created_at) < idle {
                alerts.push(Alert {
                    code: "key-unused",
                    subject: k.label.to_string(),
                    detail: format!("not used since {}", k.last_used_at.unwrap_or(k.created_at).strftime("%Y-%m-%d")),
                });
            }
            if k.state == KeyState::Compromised {
                alerts.push(Alert {
                    code: "key-compromised",
                    subject: k.label.to_string(),
                    detail: "revoked as compromised: write what it seals under a new key, then destroy it".into(),
                });
            }
            if k.escrow.is_none() && !ksbs.iter().any(|b| b.created_at >= k.created_at) {
                alerts.push(Alert {
                    code: "key-unprotected",
                    subject: k.label.to_string(),
                    detail: "no escrow copy and no keystore backup since it was made: its loss would be final".into(),
                });
            }
        }
        let datasets = self.repo.datasets()?;
        let mut on_inactive = 0u64;
        for d in &datasets {
            if let Some(k) = keys.iter().find(|k| k.label == d.current.key_label) {
                if k.state != KeyState::Active {
                    on_inactive += 1;
                    alerts.push(Alert {
                        code: "dataset-key-inactive",
                        subject: d.name.to_string(),
                        detail: format!("its key {} is {}", k.label, k.state),
                    });
                }
            }
        }
        let count = |code: &str| alerts.iter().filter(|a| a.code == code).count() as f64;
        let mut metrics = Vec::new();
        for st in KeyState::ALL {
            metrics.push(Metric {
                name: "custos_keys",
                help: "Keys in the keystore, by state.",
                labels: vec![("state", st.to_string())],
                value: keys.iter().filter(|k| k.state == st).count() as f64,
            });
        }
        let simple = |name, help, value| Metric { name, help, labels: Vec::new(), value };
        metrics.push(simple("custos_keys_expiring", "Keys expiring within the window.", count("key-expiring")));
        metrics.push(simple("custos_keys_unused", "Active keys unused for the window.", count("key-unused")));
        metrics.push(simple(
            "custos_keys_unprotected",
            "Keys with no escrow copy and no keystore backup.",
            count("key-unprotected"),
        ));
        metrics.push(simple("custos_datasets", "Datasets.", datasets.len() as f64));
        metrics.push(simple(
            "custos_datasets_on_inactive_keys",
            "Datasets whose key is not active.",
            on_inactive as f64,
        ));
        metrics.push(simple("custos_backups", "Backup copies in the catalog.", self.repo.backups()?.len() as f64));
        metrics.push(simple(
            "custos_keys_pending_destruction",
            "Keys scheduled for destruction.",
            self.repo.destroy_schedule()?.len() as f64,
        ));
        metrics.push(simple(
            "custos_audit_entries",
            "Entries in the audit log.",
            self.repo.audit_head()?.map_or(0, |h| h.seq) as f64,
        ));
        metrics.push(simple("custos_alerts", "Alerts raised by this check.", alerts.len() as f64));
        Ok(MonitorReport { alerts, metrics })
    }
}

/// The Prometheus text exposition format (version 0.0.4).
pub fn prometheus_text(metrics: &[Metric]) -> String {
    let mut out = String::new();
    let mut last = "";
    for m in metrics {
        if m.name != last {
            out += &format!("# HELP {} {}\n# TYPE {} gauge\n", m.name, m.help, m.name);
            last = m.name;
        }
        let labels = if m.labels.is_empty() {
            String::new()
        } else {
            let l: Vec<String> = m
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            format!("{{{}}}", l.join(","))
        };
        out += &format!("{}{labels} {}\n", m.name, m.value);
    }
    out
}
