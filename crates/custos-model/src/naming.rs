//! The key naming standard: a template such as `DSET.{purpose}.{app}.key{NNN}`
//! that every new key label must follow, and that yields an application's
//! next label.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{KeyLabel, Purpose};

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NamingError {
    #[error("invalid key naming template {template:?}: {why}")]
    Template { template: String, why: &'static str },
    #[error("key label {label:?} does not follow the naming standard {template:?}: {why}")]
    Label { label: String, template: String, why: String },
}

/// A key naming template. Placeholders: `{purpose}` (PRIM or BACK), `{app}`
/// (the owning application, one qualifier) and `{NNN}` (a sequence number of
/// at least as many digits as there are N's). Each must appear exactly once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamingStandard {
    template: String,
}

#[derive(Debug)]
enum Part<'a> {
    Lit(&'a str),
    Purpose,
    App,
    Seq(usize),
}

/// What a label that follows the standard says about its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelParts {
    pub purpose: Purpose,
    pub app: String,
    pub seq: u32,
}

impl NamingStandard {
    pub const DEFAULT: &'static str = "DSET.{purpose}.{app}.key{NNN}";

    pub fn new(template: &str) -> Result<Self, NamingError> {
        let ns = Self { template: template.to_string() };
        let parts = ns.parts()?;
        let count = |f: fn(&Part) -> bool| parts.iter().filter(|p| f(p)).count();
        if count(|p| matches!(p, Part::Purpose)) != 1
            || count(|p| matches!(p, Part::App)) != 1
            || count(|p| matches!(p, Part::Seq(_))) != 1
        {
            return Err(NamingError::Template {
                template: template.into(),
                why: "use each of {purpose}, {app} and {NNN} exactly once",
            });
        }
        // Two placeholders side by side cannot be split apart again.
        for w in parts.windows(2) {
            if !matches!(w[0], Part::Lit(_)) && !matches!(w[1], Part::Lit(_)) {
                return Err(NamingError::Template {
                    template: template.into(),
                    why: "put literal text between placeholders",
                });
            }
        }
        let sample = ns.label(Purpose::Prim, "APP", 1);
        KeyLabel::new(sample).map_err(|_| NamingError::Template {
            template: template.into(),
            why: "it does not produce a valid key label",
        })?;
        Ok(ns)
    }

    pub fn template(&self) -> &str {
        &self.template
    }

    fn parts(&self) -> Result<Vec<Part<'_>>, NamingError> {
        let t = self.template.as_str();
        let mut out = Vec::new();
        let mut rest = t;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                out.push(Part::Lit(&rest[..open]));
            }
            let close = rest[open..]
                .find('}')
                .ok_or(NamingError::Template { template: t.into(), why: "a `{` has no matching `}`" })?
                + open;
            let name = &rest[open + 1..close];
            out.push(match name {
                "purpose" => Part::Purpose,
                "app" => Part::App,
                n if !n.is_empty() && n.chars().all(|c| c == 'N') => Part::Seq(n.len()),
                _ => {
                    return Err(NamingError::Template {
                        template: t.into(),
                        why: "placeholders are {purpose}, {app} and {NNN}",
                    })
                }
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            out.push(Part::Lit(rest));
        }
        Ok(out)
    }

    /// The label for a given purpose, application and sequence number.
    pub fn label(&self, purpose: Purpose, app: &str, seq: u32) -> String {
        let mut s = String::new();
        for p in self.parts().expect("validated at construction") {
            match p {
                Part::Lit(l) => s.push_str(l),
                Part::Purpose => s.push_str(purpose.as_str()),
                Part::App => s.push_str(app),
                Part::Seq(w) => s.push_str(&format!("{seq:0w$}")),
            }
        }
        s
    }

    /// Check a label against the standard and take it apart.
    pub fn parse(&self, label: &str) -> Result<LabelParts, NamingError> {
        let err = |why: String| NamingError::Label { label: label.into(), template: self.template.clone(), why };
        let parts = self.parts()?;
        let mut rest = label;
        let (mut purpose, mut app, mut seq) = (None, None, None);
        for (i, p) in parts.iter().enumerate() {
            // The literal after a placeholder says where the placeholder ends.
            let next_lit = match parts.get(i + 1) {
                Some(Part::Lit(l)) => Some(*l),
                _ => None,
            };
            let take = |rest: &str| -> Option<usize> {
                match next_lit {
                    Some(l) => rest.find(l),
                    None => Some(rest.len()),
                }
            };
            match p {
                Part::Lit(l) => {
                    rest = rest.strip_prefix(l).ok_or_else(|| err(format!("expected {l:?}")))?;
                }
                Part::Purpose => {
                    let n = take(rest).ok_or_else(|| err("missing purpose".into()))?;
                    purpose =
                        Some(Purpose::parse(&rest[..n]).ok_or_else(|| err("the purpose must be PRIM or BACK".into()))?);
                    rest = &rest[n..];
                }
                Part::App => {
                    let n = take(rest).ok_or_else(|| err("missing application".into()))?;
                    let a = &rest[..n];
                    if a.is_empty() || a.contains('.') || KeyLabel::new(a).is_err() {
                        return Err(err("the application must be one qualifier".into()));
                    }
                    app = Some(a.to_string());
                    rest = &rest[n..];
                }
                Part::Seq(w) => {
                    let n = take(rest).ok_or_else(|| err("missing sequence number".into()))?;
                    let d = &rest[..n];
                    if d.len() < *w || !d.chars().all(|c| c.is_ascii_digit()) {
                        return Err(err(format!("the sequence number must be at least {w} digits")));
                    }
                    seq = Some(d.parse().map_err(|_| err("sequence number too large".into()))?);
                    rest = &rest[n..];
                }
            }
        }
        if !rest.is_empty() {
            return Err(err(format!("unexpected trailing {rest:?}")));
        }
        Ok(LabelParts {
            purpose: purpose.expect("validated template"),
            app: app.expect("validated template"),
            seq: seq.expect("validated template"),
        })
    }
}

impl Default for NamingStandard {
    fn default() -> Self {
        Self::new(Self::DEFAULT).expect("default template is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_standard() {
        let ns = NamingStandard::default();
        assert_eq!(ns.label(Purpose::Prim, "PAYROLL", 7), "DSET.PRIM.PAYROLL.key007");
        assert_eq!(ns.label(Purpose::Back, "HR", 1234), "DSET.BACK.HR.key1234");
        let p = ns.parse("DSET.BACK.PAYROLL.key042").unwrap();
        assert_eq!(p, LabelParts { purpose: Purpose::Back, app: "PAYROLL".into(), seq: 42 });
        for bad in [
            "DSET.PRIM.PAYROLL.key07",
            "DSET.XXXX.PAYROLL.key001",
            "DSET.PRIM.A.B.key001",
            "KEY.PRIM.A.key001",
            "DSET.PRIM.A.key001x",
            "DSET.PRIM..key001",
        ] {
            let e = ns.parse(bad).unwrap_err();
            assert!(e.to_string().contains("naming standard"), "{bad}: {e}");
        }
    }

    #[test]
    fn custom_templates() {
        let ns = NamingStandard::new("{app}.{purpose}.K{NNNN}").unwrap();
        assert_eq!(ns.label(Purpose::Prim, "HR", 3), "HR.PRIM.K0003");
        assert_eq!(ns.parse("HR.PRIM.K0003").unwrap().seq, 3);
        for bad in [
            "{app}.{purpose}",
            "{app}{purpose}.{NNN}",
            "{app}.{purpose}.{NNN}.{NNN}",
            "{app}.{x}.{NNN}",
            "{app}.{purpose}.{NNN",
            "{app}/{purpose}/{NNN}",
        ] {
            assert!(NamingStandard::new(bad).is_err(), "{bad}");
        }
    }
}
