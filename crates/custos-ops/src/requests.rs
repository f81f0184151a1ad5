//! Dual-control requests as approvers see them: the stored operation,
//! field by field, every value escaped.

use custos_core::RequestRow;
use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use crate::operation::{Operation, Stored, STORED_VERSION};
use crate::render::escape;

/// A request, with its operation decoded for display.
#[derive(Clone, Debug, Serialize)]
pub struct RequestView {
    pub id: u64,
    pub action: String,
    pub requested_by: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub state: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<Timestamp>,
    /// The stored operation as JSON (or the command line of a request an
    /// older Custos made).
    pub operation: Value,
    /// One line: the command it runs, escaped.
    #[serde(skip)]
    pub summary: String,
}

/// The stored operation of a request, or why it cannot run.
pub fn decode(row: &RequestRow) -> Result<Operation, String> {
    let s: Stored = serde_json::from_str(&row.args).map_err(|_| {
        format!(
            "request {} was made by an older Custos (it holds a command line, not an operation); deny it and ask {} to request it again",
            row.id,
            escape(&row.requested_by)
        )
    })?;
    if s.v != STORED_VERSION {
        return Err(format!(
            "request {} holds an operation of version {}; this Custos reads version {STORED_VERSION}",
            row.id, s.v
        ));
    }
    Ok(s.operation)
}

/// The stored form of an operation.
pub fn encode(op: &Operation) -> String {
    serde_json::to_string(&Stored { v: STORED_VERSION, operation: op.clone() }).expect("operations serialize")
}

/// Every field of `v` as `path: value` lines, in order, escaped.
fn fields(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                fields(&p, v, out);
            }
        }
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            out.push((prefix.into(), a.iter().map(scalar).collect::<Vec<_>>().join(", ")));
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                fields(&format!("{prefix}[{i}]"), v, out);
            }
        }
        other => out.push((prefix.into(), scalar(other))),
    }
}

/// What approvers are shown of a new credential in place of its hash: an
/// Argon2id hash is not the credential, but anyone who may list requests
/// could try guesses against it offline, so it is never shown.
pub const CREDENTIAL_SHOWN: &str = "(a new credential; its hash is not shown)";

/// Hide every stored credential in an operation's JSON.
fn redact(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                if k == "credential" && v.get("stored").is_some() {
                    *v = Value::String(CREDENTIAL_SHOWN.into());
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => escape(s),
        Value::Null => "-".into(),
        other => escape(&other.to_string()),
    }
}

impl RequestView {
    pub fn new(row: &RequestRow) -> Self {
        let (operation, summary) = match decode(row) {
            Ok(op) => {
                let mut v = serde_json::to_value(&op).unwrap_or(Value::Null);
                redact(&mut v);
                let mut f = Vec::new();
                fields("", &v, &mut f);
                let summary = f.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
                (v, summary)
            }
            Err(why) => match serde_json::from_str::<Vec<String>>(&row.args) {
                Ok(argv) => {
                    let summary = format!("custos {}", argv.iter().map(|a| escape(a)).collect::<Vec<_>>().join(" "));
                    (Value::Array(argv.into_iter().map(Value::String).collect()), summary)
                }
                Err(_) => (Value::String(row.args.clone()), format!("(unreadable: {})", escape(&why))),
            },
        };
        Self {
            id: row.id,
            action: row.action.clone(),
            requested_by: row.requested_by.clone(),
            created_at: row.created_at,
            expires_at: row.expires_at,
            state: row.state.clone(),
            decided_by: row.decided_by.clone(),
            decided_at: row.decided_at,
            operation,
            summary,
        }
    }

    /// `request ls`: one line per request.
    pub fn line(&self) -> String {
        format!(
            "request {} [{}] {} by {} at {}: {}{}",
            self.id,
            escape(&self.state),
            self.action,
            escape(&self.requested_by),
            self.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            self.summary,
            self.decided_by.as_ref().map(|d| format!(" (decided by {})", escape(d))).unwrap_or_default()
        )
    }

    /// `request show`: the request, then its operation field by field.
    pub fn detail(&self) -> String {
        let mut o = format!(
            "request      {}\nstate        {}\naction       {}\nrequested by {}\nat           {}\nexpires      {}\n",
            self.id,
            escape(&self.state),
            self.action,
            escape(&self.requested_by),
            self.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
            self.expires_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        );
        if let Some(d) = &self.decided_by {
            o.push_str(&format!("decided by   {}\n", escape(d)));
        }
        o.push_str("operation\n");
        let mut f = Vec::new();
        fields("", &self.operation, &mut f);
        for (k, v) in f {
            o.push_str(&format!("  {k:<12} {v}\n"));
        }
        o
    }
}
