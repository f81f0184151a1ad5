//! From parsed arguments to an [`Operation`] and what the CLI does around
//! it locally (files to read or write, how to show the result): one module
//! per command group. No rights logic lives here: the engine decides.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use custos_core::model::{DatasetName, KeyLabel, Pattern, VolumeName};
use custos_ops::{Operation, SecretText};

use crate::args::{Cli, Command, MethodArg, ReportFormat};

pub mod audit;
pub mod backup;
pub mod ds;
pub mod escrow;
pub mod hsm;
pub mod key;
pub mod misc;
pub mod mk;
pub mod request;
pub mod risk;
pub mod user;

/// Where an operation's input comes from.
pub enum Input {
    None,
    Stdin,
    File(PathBuf),
}

/// Where an operation's streamed output goes.
pub enum Output {
    None,
    Stdout,
    /// Replaced atomically (or written to directly when not a regular file).
    File(PathBuf),
}

/// How the result is shown beyond its text or JSON.
pub enum Show {
    Plain,
    /// Write the result's text to this new file (a sealed share).
    Save(PathBuf),
    /// A risk report in a format, to a file or standard output.
    Report {
        format: ReportFormat,
        output: Option<PathBuf>,
    },
    /// Monitor metrics in the Prometheus text format.
    Prometheus,
}

/// The JSON of a result written to a file (`escrow share --out`): what
/// it is, and where, without the file's content.
pub fn saved_json(mut j: serde_json::Value, path: &std::path::Path) -> serde_json::Value {
    if let serde_json::Value::Object(m) = &mut j {
        m.remove("sealed_share");
        m.insert("path".into(), serde_json::json!(path));
    }
    j
}

/// One command, ready to run.
pub struct Plan {
    pub op: Operation,
    pub input: Input,
    pub output: Output,
    pub show: Show,
    /// A progress bar: its label (what it works on), and the total bytes
    /// when known.
    pub progress: Option<(String, Option<u64>)>,
}

impl Plan {
    pub fn new(op: Operation) -> Self {
        Self { op, input: Input::None, output: Output::None, show: Show::Plain, progress: None }
    }

    pub fn progress(mut self, label: impl Into<String>, total: Option<u64>) -> Self {
        self.progress = Some((label.into(), total));
        self
    }
}

pub fn label(s: &str) -> anyhow::Result<KeyLabel> {
    Ok(KeyLabel::new(s)?)
}

pub fn dataset(s: &str) -> anyhow::Result<DatasetName> {
    Ok(DatasetName::new(s)?)
}

pub fn volume_name(s: &str) -> anyhow::Result<VolumeName> {
    Ok(VolumeName::new(s)?)
}

pub fn pattern(s: Option<&str>) -> anyhow::Result<Option<Pattern>> {
    s.map(Pattern::new).transpose().map_err(Into::into)
}

pub fn method(m: MethodArg) -> custos_core::model::CopyMethod {
    match m {
        MethodArg::Logical => custos_core::model::CopyMethod::Logical,
        MethodArg::Raw => custos_core::model::CopyMethod::Raw,
    }
}

/// Secret files (shares, key parts), read whole.
pub fn secret_files(files: &[PathBuf], what: &str) -> anyhow::Result<Vec<SecretText>> {
    files
        .iter()
        .map(|f| {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(f).with_context(|| format!("cannot read {what} file {}", f.display()))?,
            );
            Ok(SecretText::new(text.to_string()))
        })
        .collect()
}

/// A point in time: a timestamp (2026-11-24T12:00:00Z) or a date (the end of that day, UTC).
pub fn parse_time(s: &str) -> anyhow::Result<jiff::Timestamp> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>() {
        let next = d.tomorrow()?.to_zoned(jiff::tz::TimeZone::UTC)?.timestamp();
        return Ok(next - jiff::SignedDuration::from_micros(1));
    }
    Err(crate::Usage(format!("invalid time {s:?}: give a timestamp (2026-11-24T12:00:00Z) or a date (2026-11-24)"))
        .into())
}

/// The operation a command line asks for. `Init`, `Demo` and `mk
/// make-part` need no vault and are handled before this.
pub fn plan(cli: &Cli) -> anyhow::Result<Plan> {
    match &cli.command {
        Command::Init(_) | Command::Demo { .. } | Command::Serve { .. } | Command::Repo(_) => {
            Err(anyhow!("init, demo and serve run without an operation"))
        }
        Command::Key(c) => key::plan(c),
        Command::Volume(c) => misc::volume(c),
        Command::Policy(c) => misc::policy(c),
        Command::Ds(c) => ds::plan(c),
        Command::Config(c) => misc::config(c),
        Command::Mk(c) => mk::plan(c),
        Command::Keystore(c) => misc::keystore(c),
        Command::Vault(c) => misc::vault(c),
        Command::Escrow(c) => escrow::plan(c),
        Command::Mirror(c) => misc::mirror(c),
        Command::Snapshot(c) => backup::snapshot(c),
        Command::Backup(c) => backup::plan(c),
        Command::Restore { dataset: d, backup, generation, at, as_name } => Ok(Plan::new(Operation::Restore {
            dataset: d.clone(),
            backup: *backup,
            generation: *generation,
            at: at.as_deref().map(parse_time).transpose()?,
            as_name: as_name.as_deref().map(dataset).transpose()?,
        })
        .progress("restore", None)),
        Command::Hsm(c) => hsm::plan(c),
        Command::Risk(c) => risk::plan(c),
        Command::Audit(c) => audit::plan(c),
        Command::Catalog(crate::args::CatalogCmd::Verify) => Ok(Plan::new(custos_ops::Operation::CatalogVerify)),
        Command::Catalog(crate::args::CatalogCmd::RotateKey) => Ok(Plan::new(custos_ops::Operation::CatalogRotateKey)),
        Command::User(c) => user::plan(c),
        Command::Request(c) => request::plan(c),
        Command::Monitor { expiring_days, unused_days, prometheus } => {
            let mut p = Plan::new(Operation::Monitor { expiring_days: *expiring_days, unused_days: *unused_days });
            if *prometheus {
                p.show = Show::Prometheus;
            }
            Ok(p)
        }
        Command::Fsck { read_data } => Ok(Plan::new(Operation::Fsck { read_data: *read_data }).progress("fsck", None)),
        Command::Gc { dry_run, grace } => {
            if let Some(g) = grace {
                custos_core::parse_duration(g).map_err(|why| crate::Usage(format!("--grace: {why}")))?;
            }
            Ok(Plan::new(Operation::Gc { dry_run: *dry_run, grace: grace.clone() }))
        }
    }
}
