//! The `custos` binary: parses arguments into engine types, calls the
//! engine, prints. No logic of its own beyond that.
#![forbid(unsafe_code)]

mod args;
mod demo;
mod housekeeping;
mod mk;
mod output;
mod progress;
mod rights;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use custos_core::model::{
    CopyMethod, DatasetName, KeyAction, KeyLabel, Medium, Pattern, PolicyTarget, Purpose, VolumeName,
};
use custos_core::{
    DirectWriter, Error, HsmChoice, HsmKind, InitOptions, KdfParams, NewKey, NewPolicy, NewVolume, Open, Passphrase,
    PutOptions, Sealed, Vault,
};

use args::{
    AuditCmd, BackupCmd, Cli, Command, ConfigCmd, DsCmd, EscrowCmd, HsmCmd, HsmRuleCmd, KeyCmd, KeystoreCmd, MediumArg,
    MethodArg, MirrorCmd, PolicyCmd, PurposeArg, ReportFormat, RequestCmd, RiskCmd, RoleArg, SnapshotCmd, UserCmd,
    VolumeCmd,
};
use output::{bytes, json, when, Table};

fn main() -> ExitCode {
    custos_crypto::prime_random();
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let (action, object) = describe(&matches);
    let principal = principal_name(&cli);
    let (vault, audited) = (cli.vault.clone(), !matches!(cli.command, Command::Demo { .. }));
    let result = run(cli);
    // Every command on a vault is appended to its audit log, whatever its
    // outcome. The text is the command's own error message, which never
    // holds a secret.
    let mut code = match &result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("custos: {e:#}");
            ExitCode::from(exit_code(e))
        }
    };
    // A catalog that is not one gets no audit entry: nothing is written to it.
    let not_a_catalog = matches!(
        result.as_ref().err().and_then(|e| e.downcast_ref::<Error>()),
        Some(Error::Repo(custos_core::RepoError::NotACatalog { .. }))
    );
    if audited && !not_a_catalog && vault.join("custos.db").exists() {
        let outcome = match &result {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("failed: {e:#}"),
        };
        if let Err(e) = Vault::open(&vault).and_then(|v| v.audit_append(&principal, &action, &object, &outcome)) {
            eprintln!("custos: the command ran, but its audit entry could not be written: {e}");
            code = ExitCode::from(1);
        }
    }
    code
}

/// The acting principal's name, for the audit log.
fn principal_name(cli: &Cli) -> String {
    cli.user
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// ("key destroy", "DSET.PRIM.PAY.key001"): the subcommand path and its
/// first positional argument, for the audit log.
fn describe(m: &clap::ArgMatches) -> (String, String) {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let mut names = Vec::new();
    let mut m = m;
    while let Some((name, sub)) = m.subcommand() {
        names.push(name.to_string());
        cmd = cmd.find_subcommand(name).cloned().unwrap_or(cmd);
        m = sub;
    }
    let object = cmd
        .get_positionals()
        .find_map(|a| {
            m.get_raw(a.get_id().as_str()).and_then(|mut v| v.next()).map(|v| v.to_string_lossy().to_string())
        })
        .unwrap_or_default();
    (names.join(" "), object)
}

/// A command line that asks for what cannot be done (a value out of
/// range): exit 2, like the argument parser's own errors.
#[derive(Debug)]
pub(crate) struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Exit codes by error kind (documented in `custos --help`).
fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<MonitorAlerts>().is_some() {
        return 10;
    }
    if e.downcast_ref::<Usage>().is_some() {
        return 2;
    }
    if e.downcast_ref::<housekeeping::Damaged>().is_some() {
        return 4;
    }
    let Some(e) = e.downcast_ref::<Error>() else { return 1 };
    match e {
        Error::NoVault { .. }
        | Error::DatasetNotFound { .. }
        | Error::KeyNotFound { .. }
        | Error::VolumeNotFound { .. }
        | Error::PolicyNotFound { .. }
        | Error::NoPolicy { .. } => 3,
        Error::Chunk { .. }
        | Error::Manifest { .. }
        | Error::KeyMismatch { .. }
        | Error::KeyNoMaterial { .. }
        | Error::AuditTampered { .. } => 4,
        Error::KeyDestroyed { .. }
        | Error::KeyUnusable { .. }
        | Error::KeyExpired { .. }
        | Error::Lifecycle { .. }
        | Error::KeyInUse { .. }
        | Error::KeyPurpose { .. } => 5,
        Error::Hsm(custos_core::HsmError::WrongPassphrase { .. }) | Error::AuthFailed { .. } => 6,
        Error::Forbidden { .. } => 8,
        Error::Hsm(custos_core::HsmError::Pkcs11Config(m)) if m.contains("wrong PIN") => 6,
        Error::Store(_) => 7,
        Error::Repo(custos_core::RepoError::NotACatalog { .. }) => 4,
        Error::LeftInTrash { .. } => 7,
        Error::WouldOrphanKeys { .. }
        | Error::MasterKeyUnavailable { .. }
        | Error::RawCopyKeyGone { .. }
        | Error::KeyPendingDestruction { .. } => 5,
        Error::ReencipherFailed { .. } => 4,
        _ => 1,
    }
}

fn passphrase(cli: &Cli, confirm: bool) -> anyhow::Result<Passphrase> {
    if let Some(f) = &cli.passphrase_file {
        let s =
            std::fs::read_to_string(f).with_context(|| format!("cannot read the passphrase file {}", f.display()))?;
        let line = s.lines().next().unwrap_or("").to_string();
        return Ok(Passphrase::from(line));
    }
    if let Ok(p) = std::env::var("CUSTOS_PASSPHRASE") {
        return Ok(Passphrase::from(p));
    }
    if !std::io::stdin().is_terminal() {
        bail!("the HSM passphrase is needed: set CUSTOS_PASSPHRASE, pass --passphrase-file, or run in a terminal to be asked");
    }
    let p = rpassword::prompt_password("HSM passphrase: ").context("cannot read the passphrase")?;
    if confirm {
        let again = rpassword::prompt_password("Again: ").context("cannot read the passphrase")?;
        if again != p {
            bail!("the two passphrases differ; nothing was created");
        }
    }
    Ok(Passphrase::from(p))
}

pub(crate) fn sealed(cli: &Cli) -> anyhow::Result<Vault<Sealed>> {
    let mut v = Vault::open(&cli.vault)?;
    // Keys whose waiting period is over are erased by the first command
    // after it. One that cannot be erased now is reported (and audited) and
    // tried again next time; it never stops the command.
    for (label, e) in v.destroy_due()?.failed {
        eprintln!("custos: warning: key {label} is due for destruction but could not be destroyed now ({e}); the next command tries again");
    }
    if let Some(n) = cli.threads {
        v.set_threads(n);
    }
    Ok(v)
}

pub(crate) fn open(cli: &Cli) -> anyhow::Result<Vault<Open>> {
    let v = sealed(cli)?;
    let v = match v.hsm_kind()? {
        HsmKind::Soft => v.unseal(&passphrase(cli, false)?)?,
        HsmKind::Pkcs11 { token, .. } => v.unseal_pkcs11(pin(cli, &token)?)?,
    };
    // Whoever opens the HSM signs the audit log's head first, so entries
    // cut from its end since then show up in `audit verify`. A failure here
    // must not lock the vault: it is reported, and `audit verify` names it.
    if let Err(e) = v.audit_checkpoint() {
        eprintln!("custos: warning: the audit log's checkpoint could not be signed: {e}");
    }
    Ok(v)
}

fn pin(cli: &Cli, token: &str) -> anyhow::Result<zeroize::Zeroizing<String>> {
    if let Some(f) = &cli.pin_file {
        let s = zeroize::Zeroizing::new(
            std::fs::read_to_string(f).with_context(|| format!("cannot read the PIN file {}", f.display()))?,
        );
        return Ok(zeroize::Zeroizing::new(s.lines().next().unwrap_or("").to_string()));
    }
    if let Ok(p) = std::env::var("CUSTOS_PKCS11_PIN") {
        return Ok(zeroize::Zeroizing::new(p));
    }
    if !std::io::stdin().is_terminal() {
        bail!("the PIN of PKCS#11 token {token:?} is needed: set CUSTOS_PKCS11_PIN, pass --pin-file, or run in a terminal to be asked");
    }
    Ok(zeroize::Zeroizing::new(
        rpassword::prompt_password(format!("PIN for token {token}: ")).context("cannot read the PIN")?,
    ))
}

fn label(s: &str) -> anyhow::Result<KeyLabel> {
    Ok(KeyLabel::new(s)?)
}

fn dataset(s: &str) -> anyhow::Result<DatasetName> {
    Ok(DatasetName::new(s)?)
}

fn volume_name(s: &str) -> anyhow::Result<VolumeName> {
    Ok(VolumeName::new(s)?)
}

fn pattern(s: Option<&str>) -> anyhow::Result<Option<Pattern>> {
    s.map(Pattern::new).transpose().map_err(Into::into)
}

/// A point in time: a timestamp (2026-11-24T12:00:00Z) or a date (the end of that day, UTC).
fn parse_time(s: &str) -> anyhow::Result<jiff::Timestamp> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>() {
        let next = d.tomorrow()?.to_zoned(jiff::tz::TimeZone::UTC)?.timestamp();
        return Ok(next - jiff::SignedDuration::from_micros(1));
    }
    bail!("invalid time {s:?}: give a timestamp (2026-11-24T12:00:00Z) or a date (2026-11-24)")
}

fn parse_expiry(s: &str) -> anyhow::Result<jiff::Timestamp> {
    if let Some(days) = s.strip_suffix('d').and_then(|d| d.parse::<i64>().ok()) {
        return days
            .checked_mul(86_400)
            .and_then(|secs| jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_secs(secs)).ok())
            .ok_or_else(|| {
                Usage(format!("--expires {s}: too far in the future; give fewer days, or a date before the year 9999"))
                    .into()
            });
    }
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>() {
        return Ok(d.to_zoned(jiff::tz::TimeZone::UTC)?.timestamp());
    }
    bail!("invalid expiry {s:?}: give a date (2027-01-31), a timestamp (2027-01-31T12:00:00Z) or days from now (90d)")
}

fn parse_range(s: &str) -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let (a, b) =
        s.split_once("..").ok_or_else(|| anyhow!("invalid range {s:?}: write START..END, START.. or ..END"))?;
    let num = |x: &str| -> anyhow::Result<Option<u64>> {
        if x.is_empty() {
            Ok(None)
        } else {
            x.parse().map(Some).map_err(|_| anyhow!("invalid range {s:?}: {x:?} is not a byte offset"))
        }
    };
    Ok((num(a)?, num(b)?))
}

/// `monitor` found something: exit 10, so cron and CI notice.
#[derive(Debug)]
struct MonitorAlerts(usize);

impl std::fmt::Display for MonitorAlerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} alert(s) raised; see above", self.0)
    }
}

impl std::error::Error for MonitorAlerts {}

/// The acting principal's credential: --credential-file, CUSTOS_CREDENTIAL,
/// or a prompt.
fn credential(cli: &Cli, name: &str, confirm: bool) -> anyhow::Result<Passphrase> {
    if let Some(f) = &cli.credential_file {
        let s = zeroize::Zeroizing::new(
            std::fs::read_to_string(f).with_context(|| format!("cannot read the credential file {}", f.display()))?,
        );
        return Ok(Passphrase::from(s.lines().next().unwrap_or("").to_string()));
    }
    if let Ok(c) = std::env::var("CUSTOS_CREDENTIAL") {
        return Ok(Passphrase::from(c));
    }
    if !std::io::stdin().is_terminal() {
        bail!("the credential of user {name} is needed: set CUSTOS_CREDENTIAL, pass --credential-file, or run in a terminal to be asked");
    }
    let p = rpassword::prompt_password(format!("Credential for {name}: ")).context("cannot read the credential")?;
    if confirm && rpassword::prompt_password("Again: ").context("cannot read the credential")? != p {
        bail!("the two credentials differ; nothing was created");
    }
    Ok(Passphrase::from(p))
}

/// Who is acting, checked against the vault's principals, and whether the
/// command is within their rights. Vaults made before principals existed
/// have none and skip this until the first is added.
fn gate(cli: &Cli) -> anyhow::Result<Option<custos_core::model::PrincipalRecord>> {
    if matches!(cli.command, Command::Init(_) | Command::Demo { .. }) {
        return Ok(None);
    }
    let v = Vault::open(&cli.vault)?;
    if !v.has_users()? {
        return Ok(None);
    }
    let name = cli.user.clone().ok_or_else(|| anyhow!("who is acting? give --user NAME (or set CUSTOS_USER)"))?;
    let me = v.authenticate(&name, &credential(cli, &name, false)?)?;
    permitted(cli, &v, &me)?;
    Ok(Some(me))
}

/// Whether `p` has every right the command needs.
fn permitted(cli: &Cli, v: &Vault<Sealed>, p: &custos_core::model::PrincipalRecord) -> anyhow::Result<()> {
    for n in rights::needs(cli, v)? {
        let key = n.dataset.as_ref().and_then(|d| v.dataset(d).ok()).map(|d| d.current.key_label);
        v.authorize(p, n.op, n.dataset.as_ref(), key.as_ref())?;
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let me = gate(&cli)?;
    if let (Some(me), Some(action)) = (&me, rights::controlled(&cli.command)) {
        let v = Vault::open(&cli.vault)?;
        // Dual control needs a second principal who could run it too; a
        // vault with only one (a fresh one) runs it, and the audit log shows who.
        let second =
            v.users()?.into_iter().any(|p| !p.disabled && p.name != me.name && permitted(&cli, &v, &p).is_ok());
        if v.dual_control()?.iter().any(|a| a == action) && second {
            let argv: Vec<String> = std::env::args().skip(1).collect();
            let r = v.request_create(action, &serde_json::to_string(&argv)?, &me.name)?;
            if cli.json {
                return json(&r);
            }
            println!(
                "request {}: {action} is under dual control; it runs when another authorized principal approves it with `custos request approve {}` (before {})",
                r.id,
                r.id,
                r.expires_at.strftime("%Y-%m-%d %H:%M:%S UTC")
            );
            return Ok(());
        }
    }
    if let (Some(me), Command::Request(RequestCmd::Approve { id })) = (&me, &cli.command) {
        return approve(&cli, me, *id);
    }
    dispatch(cli)
}

/// Approve request `id` as `me` and run its command now, as `me`.
fn approve(cli: &Cli, me: &custos_core::model::PrincipalRecord, id: u64) -> anyhow::Result<()> {
    let v = Vault::open(&cli.vault)?;
    let r = v.request(id)?;
    let argv: Vec<String> = serde_json::from_str(&r.args).context("the request's command is damaged")?;
    let mut held =
        <Cli as clap::Parser>::try_parse_from(std::iter::once("custos".to_string()).chain(argv.iter().cloned()))
            .map_err(|e| anyhow!("request {id} holds a command this Custos cannot read: {e}"))?;
    held.vault = cli.vault.clone();
    held.user = Some(me.name.clone());
    held.json = cli.json;
    // The approver must be allowed to run it too.
    permitted(&held, &v, me)?;
    v.request_decide(id, &me.name, true)?;
    println!("request {id} approved by {}; running: custos {}", me.name, argv.join(" "));
    let out = dispatch(held);
    v.request_finish(
        id,
        &me.name,
        &match &out {
            Ok(()) => "executed".to_string(),
            Err(e) => format!("failed: {e:#}"),
        },
    )?;
    out
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Init(a) => {
            let kdf = KdfParams {
                memory_kib: a.kdf_memory_mib.saturating_mul(1024),
                iterations: a.kdf_iterations,
                parallelism: 1,
            };
            let (p, hsm) = match a.hsm {
                args::HsmArg::Soft => (passphrase(&cli, true)?, HsmChoice::Soft),
                args::HsmArg::Pkcs11 => {
                    let token = a.pkcs11_token.clone().expect("clap requires --pkcs11-token with --hsm pkcs11");
                    let pin = pin(&cli, &token)?;
                    let cfg = custos_core::Pkcs11Config { module: a.pkcs11_module.clone(), token, pin };
                    (Passphrase::new(Vec::new()), HsmChoice::Pkcs11(cfg))
                }
            };
            // The creator is the first security-admin.
            let admin = cli.user.clone().unwrap_or_else(|| "admin".into());
            let cred = credential(&cli, &admin, true)?;
            if cred.expose_secret().len() < 8 {
                bail!("the credential of {admin} is shorter than 8 characters; nothing was created");
            }
            let v = Vault::init(&cli.vault, &p, &InitOptions { kdf, site: a.site.clone(), hsm })?;
            v.user_add(&admin, &[custos_core::model::Role::SecurityAdmin], Some(&cred))?;
            let regs = v.hsm().registers()?;
            if cli.json {
                json(&serde_json::json!({
                    "vault": v.dir(),
                    "master_key_mkvp": regs.iter().map(|r| r.mkvp.to_hex()).collect::<Vec<_>>(),
                }))?;
            } else {
                println!("Created vault {}", v.dir().display());
                for r in regs {
                    println!("  master key {} MKVP {}", r.register, r.mkvp);
                }
                println!("  volume default at {}", v.dir().join("volumes/default").display());
                println!("  policy default: ** → volume default, one new key per dataset");
                println!("  user {admin}: security-admin (add others with `custos user add`)");
            }
            Ok(())
        }
        Command::Demo { keep } => demo::run(keep.as_deref()),
        Command::Key(k) => key_cmd(&cli, k),
        Command::Volume(v) => volume_cmd(&cli, v),
        Command::Policy(p) => policy_cmd(&cli, p),
        Command::Ds(d) => ds_cmd(&cli, d),
        Command::Config(c) => config_cmd(&cli, c),
        Command::Mk(m) => mk::run(&cli, m),
        Command::Keystore(k) => keystore_cmd(&cli, k),
        Command::Escrow(e) => escrow_cmd(&cli, e),
        Command::Backup(b) => backup_cmd(&cli, b),
        Command::Snapshot(c) => snapshot_cmd(&cli, c),
        Command::Mirror(c) => mirror_cmd(&cli, c),
        Command::Hsm(c) => hsm_cmd(&cli, c),
        Command::Risk(c) => risk_cmd(&cli, c),
        Command::Audit(c) => audit_cmd(&cli, c),
        Command::User(c) => user_cmd(&cli, c),
        Command::Request(c) => request_cmd(&cli, c),
        Command::Fsck { read_data } => housekeeping::fsck(&cli, *read_data),
        Command::Gc { dry_run, grace } => housekeeping::gc(&cli, *dry_run, grace.as_deref()),
        Command::Monitor { expiring_days, unused_days, prometheus } => {
            let r = sealed(&cli)?.monitor(*expiring_days, *unused_days)?;
            if *prometheus {
                print!("{}", custos_core::prometheus_text(&r.metrics));
            } else if cli.json {
                json(&r)?;
            } else if r.alerts.is_empty() {
                println!("no alerts");
            } else {
                for a in &r.alerts {
                    println!("[{}] {}: {}", a.code, a.subject, a.detail);
                }
            }
            if r.alerts.is_empty() {
                Ok(())
            } else {
                Err(MonitorAlerts(r.alerts.len()).into())
            }
        }
        Command::Restore { dataset: d, backup, generation, at, as_name } => {
            let at = at.as_deref().map(parse_time).transpose()?;
            let v = open(&cli)?;
            let pat = Pattern::new(d.as_str())?;
            let wildcard = d.contains(['*', '%']);
            if wildcard && (backup.is_some() || as_name.is_some()) {
                bail!("--backup and --as restore one dataset: give a dataset name, not a pattern");
            }
            let all = v.backups(Some(&pat))?;
            let mut names: Vec<DatasetName> = all.iter().map(|b| b.dataset.clone()).collect();
            names.sort();
            names.dedup();
            if !wildcard {
                names = vec![dataset(d)?];
            }
            let mut reports = Vec::new();
            for name in &names {
                let b = match backup {
                    Some(id) => {
                        let b = v.backup_record(*id)?;
                        // Restoring another dataset's copy over this one would
                        // roll that other dataset back instead: only with --as.
                        if b.dataset != *name && as_name.is_none() {
                            return Err(Error::Invalid {
                                what: "restore",
                                why: format!(
                                    "backup {id} is a copy of {}, not of {name}: run `custos restore {} --backup {id}`, or add `--as {name}` to write its content into {name}",
                                    b.dataset, b.dataset
                                ),
                            }
                            .into());
                        }
                        b
                    }
                    None => {
                        let fits = |b: &&custos_core::model::BackupRecord| {
                            b.dataset == *name
                                && generation.is_none_or(|g| b.source_generation == g)
                                && at.is_none_or(|t| b.created_at <= t)
                        };
                        let newest = |m: CopyMethod| all.iter().rev().filter(fits).find(|b| b.method == m).cloned();
                        newest(CopyMethod::Logical).or_else(|| newest(CopyMethod::Raw)).ok_or_else(|| {
                            anyhow!(
                                "no backup of {name}{}{}: see `custos backup ls`",
                                generation.map(|g| format!(" generation {g}")).unwrap_or_default(),
                                at.map(|t| format!(" made at or before {t}")).unwrap_or_default()
                            )
                        })?
                    }
                };
                let bar = progress::start(&cli, &format!("restore {}", b.dataset), Some(b.size * 2));
                let r = v.restore(&b, as_name.as_deref().map(dataset).transpose()?.as_ref())?;
                drop(bar);
                if !cli.json {
                    println!(
                        "restored backup {} ({} copy of {}) as {} generation {}: {} under key {}{}; verified",
                        r.backup,
                        r.method,
                        b.dataset,
                        r.dataset,
                        r.generation,
                        bytes(r.size),
                        r.key_label,
                        if r.new_key { " (new: the dataset's own key can no longer encrypt)" } else { "" }
                    );
                }
                reports.push(r);
            }
            if names.is_empty() {
                bail!("no backup of any dataset matching {d}: see `custos backup ls`");
            }
            if cli.json {
                return json(&reports);
            }
            Ok(())
        }
    }
}

/// A lifecycle action on one key, or on every key matching a pattern: each
/// is checked, applied and audited on its own; with `dry_run` nothing
/// changes. Keys the action does not apply to are listed, not failed.
fn bulk(
    cli: &Cli,
    target: &str,
    a: KeyAction,
    dry_run: bool,
    one: &dyn Fn(&str, KeyAction, bool) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if !target.contains(['*', '%']) && !dry_run {
        return one(target, a, false);
    }
    let v = sealed(cli)?;
    let p = Pattern::new(target)?;
    let keys: Vec<_> = v.keys()?.into_iter().filter(|k| p.matches(k.label.as_str())).collect();
    if keys.is_empty() {
        bail!("no key matches {target}: see `custos key ls`");
    }
    let who = principal_name(cli);
    let verb = format!("{a:?}").to_lowercase();
    let (mut done, mut skipped) = (0, 0);
    for k in keys {
        match k.state.apply(a) {
            Err(e) => {
                skipped += 1;
                println!("{}: skipped ({e})", k.label);
            }
            Ok(next) if dry_run => println!("{}: {} → {next} (dry run)", k.label, k.state),
            Ok(_) => {
                let r = v.key_action(&k.label, a, false);
                let outcome = match &r {
                    Ok(rec) => format!("ok: now {}", rec.state),
                    Err(e) => format!("failed: {e}"),
                };
                v.audit_append(&who, &format!("key {verb} (bulk {target})"), k.label.as_str(), &outcome)?;
                println!("{}: {outcome}", k.label);
                done += r.is_ok() as usize;
            }
        }
    }
    if dry_run {
        println!("dry run: nothing changed ({skipped} would be skipped)");
    } else {
        println!("{done} keys changed, {skipped} skipped");
    }
    Ok(())
}

fn key_cmd(cli: &Cli, k: &KeyCmd) -> anyhow::Result<()> {
    let action = |label_s: &str, a: KeyAction, erase: bool| -> anyhow::Result<()> {
        let v = sealed(cli)?;
        let rec = v.key_action(&label(label_s)?, a, erase)?;
        if cli.json {
            json(&rec)
        } else {
            println!("key {} is now {}", rec.label, rec.state);
            if a == KeyAction::Destroy && rec.escrow.is_some() {
                println!(
                    "an escrow copy remains under key-backup key {}; `custos escrow purge {}` erases it too",
                    rec.escrow.as_ref().map(|e| e.kbk.as_str()).unwrap_or("?"),
                    rec.label
                );
            }
            Ok(())
        }
    };
    match k {
        KeyCmd::Create { label: l, app, purpose, expires, activate, count } => {
            let v = open(cli)?;
            let new = NewKey {
                label: l.as_deref().map(label).transpose()?,
                app: app.clone(),
                purpose: match purpose {
                    PurposeArg::Prim => Purpose::Prim,
                    PurposeArg::Back => Purpose::Back,
                },
                expires_at: expires.as_deref().map(parse_expiry).transpose()?,
                activate: *activate,
            };
            if let Some(n) = count {
                let recs = v.create_keys(&new, *n)?;
                if cli.json {
                    return json(&recs);
                }
                match (recs.first(), recs.last()) {
                    (Some(a), Some(b)) => println!("created {} keys, {} … {}", recs.len(), a.label, b.label),
                    _ => println!("created no keys"),
                }
                return Ok(());
            }
            let rec = v.create_key(&new)?;
            if cli.json {
                json(&rec)
            } else {
                println!("created key {} ({}, KCV {}, wrapped under MKVP {})", rec.label, rec.state, rec.kcv, rec.mkvp);
                Ok(())
            }
        }
        KeyCmd::Ls { pattern: p } => {
            let v = sealed(cli)?;
            let p = pattern(p.as_deref())?;
            let keys: Vec<_> =
                v.keys()?.into_iter().filter(|k| p.as_ref().is_none_or(|p| p.matches(k.label.as_str()))).collect();
            if cli.json {
                return json(&keys);
            }
            let mut t = Table::new(&["LABEL", "STATE", "PURPOSE", "APP", "KCV", "MKVP", "CREATED", "EXPIRES", "USES"]);
            for k in keys {
                t.row(vec![
                    k.label.to_string(),
                    k.state.to_string(),
                    k.purpose.to_string(),
                    k.app,
                    k.kcv.to_string(),
                    k.mkvp.to_string(),
                    when(Some(k.created_at)),
                    when(k.expires_at),
                    k.use_count.to_string(),
                ]);
            }
            t.print();
            Ok(())
        }
        KeyCmd::Show { label: l } => {
            let v = sealed(cli)?;
            let k = v.key(&label(l)?)?;
            let users = v.datasets_using_key(&k.label)?;
            if cli.json {
                let mut j = serde_json::to_value(&k)?;
                j["datasets"] = serde_json::to_value(&users)?;
                return json(&j);
            }
            println!("label        {}", k.label);
            println!("state        {}", k.state);
            println!("purpose      {}", k.purpose);
            println!("application  {}", k.app);
            println!("KCV          {}", k.kcv);
            println!("wrapped by   master key MKVP {}", k.mkvp);
            println!("material     {}", if k.wrapped.is_some() { "present (wrapped)" } else { "erased" });
            println!("created      {}", when(Some(k.created_at)));
            println!("activated    {}", when(k.activated_at));
            println!("deactivated  {}", when(k.deactivated_at));
            println!("destroyed    {}", when(k.destroyed_at));
            println!("expires      {}", when(k.expires_at));
            println!("last used    {}", when(k.last_used_at));
            println!("use count    {}", k.use_count);
            println!(
                "datasets     {}",
                if users.is_empty() {
                    "-".into()
                } else {
                    users.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
                }
            );
            Ok(())
        }
        KeyCmd::Recover { pattern: p, from, escrow: _, share } => {
            let v = open(cli)?;
            let out = match from {
                Some(from) => v.recover_keys(&Pattern::new(p.as_str())?, from)?,
                None => {
                    let shares = share
                        .iter()
                        .map(|f| {
                            let text = zeroize::Zeroizing::new(
                                std::fs::read_to_string(f)
                                    .with_context(|| format!("cannot read share file {}", f.display()))?,
                            );
                            Ok(custos_core::ShareFile::decode(&text, &f.display().to_string())?)
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    vec![v.recover_from_escrow(&label(p)?, &shares)?]
                }
            };
            if cli.json {
                return json(&out);
            }
            for r in out {
                match r {
                    custos_core::Recovered::Restored { label, state } => {
                        println!("recovered key {label} ({state}) under the CURRENT master key")
                    }
                    custos_core::Recovered::AlreadyPresent { label } => {
                        println!("key {label} is already in the keystore; left alone")
                    }
                }
            }
            Ok(())
        }
        KeyCmd::Activate { label, dry_run } => bulk(cli, label, KeyAction::Activate, *dry_run, &action),
        KeyCmd::Deactivate { label, dry_run } => bulk(cli, label, KeyAction::Deactivate, *dry_run, &action),
        KeyCmd::Archive { label, dry_run } => bulk(cli, label, KeyAction::Archive, *dry_run, &action),
        KeyCmd::Restore { label, dry_run } => bulk(cli, label, KeyAction::Restore, *dry_run, &action),
        KeyCmd::Destroy { label: l, crypto_erase, wait } => {
            let v = sealed(cli)?;
            let wait = match wait {
                Some(w) => custos_core::parse_duration(w).map_err(|why| Usage(format!("--wait: {why}")))?,
                None => v.destroy_default_wait()?,
            };
            let lab = label(l)?;
            let (at, users) = v.schedule_destroy(&lab, wait, *crypto_erase)?;
            let rec = v.key(&lab)?;
            if cli.json {
                return json(
                    &serde_json::json!({ "label": lab.to_string(), "destroy_at": at, "state": rec.state, "unreadable": users }),
                );
            }
            if rec.state == custos_core::model::KeyState::Destroyed {
                println!("key {lab} is now destroyed");
            } else {
                println!(
                    "key {lab} will be destroyed at {at} (in {wait:#}); until then it cannot be used, and `custos key cancel-destroy {lab}` brings it back"
                );
            }
            if !users.is_empty() {
                println!("then unreadable: {}", users.join(", "));
            }
            if rec.escrow.is_some() {
                println!("an escrow copy remains; `custos escrow purge {lab}` erases it too");
            }
            Ok(())
        }
        KeyCmd::CancelDestroy { label: l } => {
            let rec = sealed(cli)?.cancel_destroy(&label(l)?)?;
            if cli.json {
                return json(&rec);
            }
            println!("key {} will not be destroyed; it is {}", rec.label, rec.state);
            Ok(())
        }
    }
}

fn volume_cmd(cli: &Cli, c: &VolumeCmd) -> anyhow::Result<()> {
    let v = sealed(cli)?;
    match c {
        VolumeCmd::Add { name, path, url, site, medium } => {
            let medium = match (medium, url) {
                (Some(MediumArg::Disk), Some(_)) => {
                    bail!("--url places a volume on object storage, which is the tape tier: drop --medium disk or use --path")
                }
                (Some(MediumArg::Tape), _) | (None, Some(_)) => Medium::Tape,
                (Some(MediumArg::Disk) | None, None) => Medium::Disk,
            };
            let location = match (path, url) {
                (Some(p), None) => {
                    std::path::absolute(p).map_err(|e| anyhow!("{}: {e}", p.display()))?.display().to_string()
                }
                (None, Some(u)) => u.clone(),
                _ => bail!("give either --path DIR or --url s3://bucket/prefix"),
            };
            let rec = v.add_volume(&NewVolume { name: volume_name(name)?, location, site: site.clone(), medium })?;
            if cli.json {
                json(&rec)
            } else {
                println!("added volume {} at {} (site {}, {})", rec.name, rec.location, rec.site, rec.medium);
                Ok(())
            }
        }
        VolumeCmd::Ls => {
            let vols = v.volumes()?;
            if cli.json {
                return json(&vols);
            }
            let mut t = Table::new(&["NAME", "SITE", "MEDIUM", "LOCATION"]);
            for r in vols {
                t.row(vec![r.name.to_string(), r.site, r.medium.to_string(), r.location]);
            }
            t.print();
            Ok(())
        }
    }
}

fn policy_cmd(cli: &Cli, c: &PolicyCmd) -> anyhow::Result<()> {
    let v = sealed(cli)?;
    match c {
        PolicyCmd::Add { name, pattern: p, volume, key, template, app } => {
            let target = match (key, template) {
                (Some(k), false) => PolicyTarget::Key(label(k)?),
                (None, true) => PolicyTarget::Template { app: app.clone() },
                _ => bail!("give either --key LABEL or --template"),
            };
            let rec = v.add_policy(&NewPolicy {
                name: name.clone(),
                pattern: Pattern::new(p.as_str())?,
                volume: volume_name(volume)?,
                target,
            })?;
            if cli.json {
                json(&rec)
            } else {
                println!(
                    "added policy {}: {} → volume {}, {}",
                    rec.name,
                    rec.pattern,
                    rec.volume,
                    target_text(&rec.target)
                );
                Ok(())
            }
        }
        PolicyCmd::Ls => {
            let ps = v.policies()?;
            if cli.json {
                return json(&ps);
            }
            let mut t = Table::new(&["NAME", "PATTERN", "VOLUME", "KEY"]);
            for p in ps {
                t.row(vec![p.name.clone(), p.pattern.to_string(), p.volume.to_string(), target_text(&p.target)]);
            }
            t.print();
            Ok(())
        }
        PolicyCmd::Rm { name } => {
            v.remove_policy(name)?;
            if !cli.json {
                println!("removed policy {name}");
            }
            Ok(())
        }
    }
}

fn target_text(t: &PolicyTarget) -> String {
    match t {
        PolicyTarget::Key(k) => format!("key {k}"),
        PolicyTarget::Template { app: Some(a) } => format!("new key per dataset for application {a}"),
        PolicyTarget::Template { app: None } => "new key per dataset, application = first qualifier".into(),
    }
}

/// Write to `path` through a temporary file in the same directory, renamed
/// into place only when everything was written. Like `cp`, it does not
/// fsync the output; ext4 and XFS order the data before a replacing rename.
/// Write `path` through `f`. A regular file (or a new one) is replaced
/// atomically: a temp file beside it, fsynced, renamed over it, and the
/// directory fsynced, so a failure or a kill leaves the old file whole. A
/// path that is something else (a device such as /dev/null, a FIFO) is
/// written to directly, never replaced.
fn write_atomically(path: &Path, f: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>) -> anyhow::Result<()> {
    if let Ok(m) = std::fs::metadata(path) {
        if !m.is_file() && !m.is_dir() {
            let out = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .with_context(|| format!("cannot open {} for writing", path.display()))?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
            f(&mut w)?;
            w.flush().with_context(|| format!("cannot write {}", path.display()))?;
            return Ok(());
        }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".custos-get-")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    let (file, tmp_path) = tmp.into_parts();
    let mut w = DirectWriter::new(file);
    f(&mut w)?;
    let file = w.finish().with_context(|| format!("cannot write {}", path.display()))?;
    file.sync_all().with_context(|| format!("cannot write {}", path.display()))?;
    tmp_path.persist(path).with_context(|| format!("cannot move the output into place at {}", path.display()))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot make {} durable", path.display()))?;
    Ok(())
}

fn ds_cmd(cli: &Cli, c: &DsCmd) -> anyhow::Result<()> {
    match c {
        DsCmd::Put { name, file, key, volume } => {
            let v = open(cli)?;
            let opts = PutOptions {
                key: key.as_deref().map(label).transpose()?,
                volume: volume.as_deref().map(volume_name).transpose()?,
                fresh: false,
            };
            let name = dataset(name)?;
            let r = if file.as_os_str() == "-" {
                let mut stdin = std::io::stdin().lock();
                let _bar = progress::start(cli, "put", None);
                v.put(&name, &mut stdin, &opts)?
            } else {
                let mut f = std::fs::File::open(file)
                    .with_context(|| format!("cannot open {} to store as dataset {name}", file.display()))?;
                let _bar = progress::start(cli, "put", f.metadata().ok().map(|m| m.len()));
                v.put(&name, &mut f, &opts)?
            };
            if cli.json {
                json(&r)
            } else if r.unchanged {
                println!(
                    "{} is unchanged: generation {} already holds these {}",
                    r.dataset,
                    r.generation,
                    bytes(r.size)
                );
                Ok(())
            } else {
                println!(
                    "stored {} generation {}: {} in {} chunks ({} new, {} on the volume) under key {}{} on volume {}",
                    r.dataset,
                    r.generation,
                    bytes(r.size),
                    r.chunks,
                    r.new_chunks,
                    bytes(r.stored),
                    r.key_label,
                    if r.created_key { " (created)" } else { "" },
                    r.volume
                );
                Ok(())
            }
        }
        DsCmd::Get { name, output, range } => {
            let v = open(cli)?;
            let name = dataset(name)?;
            let range = match range {
                None => None,
                Some(r) => {
                    let (a, b) = parse_range(r)?;
                    let size = v.dataset(&name)?.current.size;
                    Some((a.unwrap_or(0), b.unwrap_or(size)))
                }
            };
            match output {
                Some(path) => {
                    let mut report = None;
                    let size = v.dataset(&name)?.current.size;
                    let _bar = progress::start(cli, "get", Some(range.map_or(size, |(a, b)| b.saturating_sub(a))));
                    write_atomically(path, |w| {
                        report = Some(v.get(&name, w, range)?);
                        Ok(())
                    })?;
                    let r = report.expect("written");
                    if cli.json {
                        json(&r)?;
                    } else {
                        eprintln!(
                            "wrote {} of {} generation {} to {}",
                            bytes(r.bytes),
                            r.dataset,
                            r.generation,
                            path.display()
                        );
                    }
                }
                None => {
                    let stdout = std::io::stdout();
                    let mut w = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
                    v.get(&name, &mut w, range)?;
                    w.flush()?;
                }
            }
            Ok(())
        }
        DsCmd::Ls { pattern: p } => {
            let v = sealed(cli)?;
            let p = pattern(p.as_deref())?;
            let ds: Vec<_> =
                v.datasets()?.into_iter().filter(|d| p.as_ref().is_none_or(|p| p.matches(d.name.as_str()))).collect();
            if cli.json {
                return json(&ds);
            }
            let mut t = Table::new(&["NAME", "SIZE", "GEN", "KEY", "VOLUME", "UPDATED"]);
            for d in ds {
                t.row(vec![
                    d.name.to_string(),
                    bytes(d.current.size),
                    d.current.generation.to_string(),
                    d.current.key_label.to_string(),
                    match &d.migrated_from {
                        Some(_) => format!("{} (migrated)", d.current.volume),
                        None => d.current.volume.to_string(),
                    },
                    when(Some(d.current.created_at)),
                ]);
            }
            t.print();
            Ok(())
        }
        DsCmd::Info { name } => {
            let v = sealed(cli)?;
            let i = v.dataset_info(&dataset(name)?)?;
            if cli.json {
                return json(&i);
            }
            let (d, g) = (&i.record, &i.record.current);
            println!("name         {}", d.name);
            println!("id           {}", d.id);
            println!("size         {} ({} bytes)", bytes(g.size), g.size);
            println!("generation   {} (written {})", g.generation, when(Some(g.created_at)));
            println!("chunks       {} of {}", g.chunk_count, bytes(g.chunk_size as u64));
            println!("key          {} ({})", g.key_label, i.key_state);
            println!(
                "volume       {} (site {}, {}, {})",
                i.volume.name, i.volume.site, i.volume.medium, i.volume.location
            );
            if let Some(home) = &d.migrated_from {
                println!("migrated     from volume {home}; the next read recalls it there");
            }
            println!("last used    {}", when(Some(d.last_access)));
            println!("manifest     sha256 {}", hex::encode(g.manifest_hash));
            println!("created      {}", when(Some(d.created_at)));
            Ok(())
        }
        DsCmd::Rm { name } => {
            let v = sealed(cli)?;
            let name = dataset(name)?;
            let n = v.remove_dataset(&name)?;
            if !cli.json {
                println!("removed dataset {name} ({n} objects deleted)");
            }
            Ok(())
        }
        DsCmd::Verify { name } => {
            let v = open(cli)?;
            let name = dataset(name)?;
            let bar = progress::start(cli, "verify", Some(v.dataset(&name)?.current.size));
            let r = v.verify(&name)?;
            drop(bar);
            if cli.json {
                json(&r)
            } else {
                println!(
                    "dataset {} generation {}: every chunk opened and checked ({})",
                    r.dataset,
                    r.generation,
                    bytes(r.bytes)
                );
                Ok(())
            }
        }
        DsCmd::Import { dir, prefix, replace } => {
            let v = open(cli)?;
            let quiet = cli.json;
            let bar = progress::start(cli, "import", Some(dir_size(dir)));
            let reports = v.import(dir, &dataset(prefix)?, *replace, |r| {
                if !quiet {
                    progress::say(&bar, format!("stored {} ({}) under key {}", r.dataset, bytes(r.size), r.key_label));
                }
            })?;
            drop(bar);
            if cli.json {
                json(&reports)
            } else {
                let total: u64 = reports.iter().map(|r| r.size).sum();
                let stored: u64 = reports.iter().map(|r| r.stored).sum();
                println!("imported {} files, {} ({} new on the volume)", reports.len(), bytes(total), bytes(stored));
                Ok(())
            }
        }
    }
}

fn request_cmd(cli: &Cli, c: &RequestCmd) -> anyhow::Result<()> {
    let v = sealed(cli)?;
    let show = |r: &custos_core::RequestRow| -> String {
        let argv: Vec<String> = serde_json::from_str(&r.args).unwrap_or_default();
        format!(
            "request {} [{}] {} by {} at {}: custos {}{}",
            r.id,
            r.state,
            r.action,
            r.requested_by,
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            argv.join(" "),
            r.decided_by.as_ref().map(|d| format!(" (decided by {d})")).unwrap_or_default()
        )
    };
    match c {
        RequestCmd::Ls => {
            let rs = v.requests()?;
            if cli.json {
                return json(&rs);
            }
            for r in &rs {
                println!("{}", show(r));
            }
            Ok(())
        }
        RequestCmd::Show { id } => {
            let r = v.request(*id)?;
            if cli.json {
                return json(&r);
            }
            println!("{}", show(&r));
            Ok(())
        }
        RequestCmd::Deny { id } => {
            let me = cli.user.clone().unwrap_or_default();
            let r = v.request_decide(*id, &me, false)?;
            println!("{}", show(&r));
            Ok(())
        }
        RequestCmd::Approve { .. } => bail!("approving needs an authenticated user: give --user"),
    }
}

fn user_cmd(cli: &Cli, c: &UserCmd) -> anyhow::Result<()> {
    use custos_core::model::Role;
    use custos_core::GrantKind;
    let v = sealed(cli)?;
    let grant_of = |data: &Option<String>, key: &Option<String>| -> anyhow::Result<(GrantKind, Pattern)> {
        Ok(match (data, key) {
            (Some(d), None) => (GrantKind::Data, Pattern::new(d.as_str())?),
            (None, Some(k)) => (GrantKind::Key, Pattern::new(k.as_str())?),
            _ => bail!("give --data PATTERN or --key PATTERN"),
        })
    };
    match c {
        UserCmd::Add { name, roles, token } => {
            let roles: Vec<Role> = roles
                .iter()
                .map(|r| match r {
                    RoleArg::SecurityAdmin => Role::SecurityAdmin,
                    RoleArg::KeyCustodian => Role::KeyCustodian,
                    RoleArg::StorageAdmin => Role::StorageAdmin,
                    RoleArg::App => Role::App,
                    RoleArg::Auditor => Role::Auditor,
                })
                .collect();
            let secret = if *token {
                None
            } else if let Ok(c) = std::env::var("CUSTOS_NEW_CREDENTIAL") {
                Some(Passphrase::from(c))
            } else if std::io::stdin().is_terminal() {
                let p = rpassword::prompt_password(format!("New credential for {name}: "))?;
                if rpassword::prompt_password("Again: ")? != p {
                    bail!("the two credentials differ; nothing was created");
                }
                Some(Passphrase::from(p))
            } else {
                bail!(
                    "the new user's passphrase is needed: set CUSTOS_NEW_CREDENTIAL, run in a terminal, or use --token"
                );
            };
            let (rec, tok) = v.user_add(name, &roles, secret.as_ref())?;
            if cli.json {
                return json(&serde_json::json!({ "user": rec, "token": tok }));
            }
            println!(
                "added user {} ({})",
                rec.name,
                rec.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
            );
            if let Some(t) = tok {
                println!("token (shown once; store it where the script reads CUSTOS_CREDENTIAL): {t}");
            }
            Ok(())
        }
        UserCmd::Ls => {
            let us = v.users()?;
            if cli.json {
                return json(&us);
            }
            let mut t = Table::new(&["USER", "ROLES", "DATA GRANTS", "KEY GRANTS", "STATE"]);
            for u in us {
                let list = |ps: &[Pattern]| ps.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" ");
                t.row(vec![
                    u.name.clone(),
                    u.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(","),
                    list(&u.data_grants),
                    list(&u.key_grants),
                    if u.disabled { "disabled".into() } else { "enabled".into() },
                ]);
            }
            t.print();
            Ok(())
        }
        UserCmd::Disable { name } => {
            v.user_disable(name)?;
            println!("user {name} is disabled");
            Ok(())
        }
        UserCmd::Grant(g) => {
            let (kind, p) = grant_of(&g.data, &g.key)?;
            v.grant(&g.name, kind, &p)?;
            println!("granted {} {} {p}", g.name, kind.as_str());
            Ok(())
        }
        UserCmd::Revoke(g) => {
            let (kind, p) = grant_of(&g.data, &g.key)?;
            v.revoke(&g.name, kind, &p)?;
            println!("revoked {}'s {} grant {p}", g.name, kind.as_str());
            Ok(())
        }
    }
}

fn audit_cmd(cli: &Cli, c: &AuditCmd) -> anyhow::Result<()> {
    match c {
        AuditCmd::Ls { since, principal, object } => {
            let f = custos_core::AuditFilter {
                since: since.as_deref().map(parse_time).transpose()?,
                principal: principal.clone(),
                object: object.clone(),
            };
            let rows = sealed(cli)?.audit_entries(&f)?;
            if cli.json {
                return json(&rows);
            }
            let mut t = Table::new(&["SEQ", "TIME", "PRINCIPAL", "ACTION", "OBJECT", "RESULT"]);
            for r in rows {
                t.row(vec![r.seq.to_string(), when(Some(r.at)), r.principal, r.action, r.object, r.result]);
            }
            t.print();
            Ok(())
        }
        AuditCmd::Verify => {
            let v = open(cli)?.audit_verify()?;
            if cli.json {
                json(&v)?;
            }
            match v.problem {
                None => {
                    if !cli.json {
                        println!("audit log intact: {} entries, {} signed checkpoints", v.entries, v.checkpoints);
                    }
                    Ok(())
                }
                Some(p) => Err(custos_core::Error::AuditTampered { problem: p }.into()),
            }
        }
        AuditCmd::Export { jsonl: _ } => {
            let rows = sealed(cli)?.audit_entries(&Default::default())?;
            let mut out = std::io::stdout().lock();
            for r in rows {
                serde_json::to_writer(&mut out, &r)?;
                out.write_all(b"\n")?;
            }
            Ok(())
        }
    }
}

fn read_shares(files: &[PathBuf]) -> anyhow::Result<Vec<custos_core::ShareFile>> {
    files
        .iter()
        .map(|f| {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(f).with_context(|| format!("cannot read share file {}", f.display()))?,
            );
            Ok(custos_core::ShareFile::decode(&text, &f.display().to_string())?)
        })
        .collect()
}

fn risk_cmd(cli: &Cli, c: &RiskCmd) -> anyhow::Result<()> {
    match c {
        RiskCmd::Report { pattern: p, dual, format, output } => {
            let p = pattern(p.as_deref())?;
            let v = sealed(cli)?;
            // A sealed vault knows the master keys the HSM held when last
            // unsealed; the first report on a vault opens it once.
            let held = match v.held_mkvps_seen()? {
                Some(h) => h,
                None => open(cli)?.held_mkvps()?,
            };
            let g = custos_risk::build::graph(&v, p.as_ref(), held)?;
            let r = custos_risk::report::report(&g, *dual, jiff::Timestamp::now());
            let text = match (format, cli.json) {
                (ReportFormat::Json, _) | (_, true) => serde_json::to_string_pretty(&r)? + "\n",
                (ReportFormat::Table, false) => custos_risk::report::render_table(&r, *dual),
                (ReportFormat::Markdown, false) => custos_risk::report::render_markdown(&r, *dual),
                (ReportFormat::Html, false) => custos_risk::report::render_html(&r, *dual),
            };
            match output {
                Some(path) => {
                    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("wrote the risk report to {}", path.display());
                }
                None => print!("{text}"),
            }
            Ok(())
        }
        RiskCmd::Drill { pattern: p, threat, all, dual, share, scratch } => {
            use custos_risk::Threat;
            let singles: Vec<Threat> = match (threat, all) {
                (Some(t), _) => vec![Threat::parse(t).ok_or_else(|| {
                    anyhow!(
                        "no threat {t:?}: choose one of {}",
                        Threat::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
                    )
                })?],
                (None, true) => Threat::ALL.to_vec(),
                (None, false) => bail!("say which threat to drill: --threat NAME, or --all"),
            };
            let mut sets: Vec<Vec<Threat>> = singles.iter().map(|t| vec![*t]).collect();
            if *dual {
                sets.extend(
                    Threat::pairs()
                        .into_iter()
                        .filter(|(a, b)| singles.contains(a) || singles.contains(b))
                        .map(|(a, b)| vec![a, b]),
                );
            }
            let tmp;
            let scratch = match scratch {
                Some(d) => d.clone(),
                None => {
                    tmp = tempfile::Builder::new()
                        .prefix("custos-drill")
                        .tempdir()
                        .context("cannot create a scratch directory")?;
                    tmp.path().to_path_buf()
                }
            };
            let pass = passphrase(cli, false)?;
            let v = sealed(cli)?.unseal(&pass)?;
            let opts = custos_risk::drill::DrillOptions {
                pattern: pattern(p.as_deref())?,
                sets,
                scratch,
                passphrase: pass,
                shares: read_shares(share)?,
            };
            let bar = progress::start(cli, "drill", None);
            let cells = custos_risk::drill::drill(&v, &opts)?;
            drop(bar);
            let bad = cells.iter().filter(|c| !c.agrees).count();
            if cli.json {
                json(&cells)?;
            } else {
                let mut t = Table::new(&["DATASET", "THREATS", "MODELED", "PROVEN", "HOW"]);
                for c in &cells {
                    t.row(vec![
                        c.dataset.clone(),
                        c.threats.iter().map(|t| t.name()).collect::<Vec<_>>().join(" + "),
                        c.modeled.cell(),
                        format!(
                            "{}{}",
                            if c.proven { "survives" } else { "lost" },
                            if c.agrees { "" } else { "  <- DISAGREES" }
                        ),
                        c.how.clone(),
                    ]);
                }
                t.print();
                println!(
                    "\n{} cells drilled: {} agree with the model, {} disagree",
                    cells.len(),
                    cells.len() - bad,
                    bad
                );
            }
            if bad > 0 {
                bail!("{bad} drilled cells disagree with the model: the analyzer is wrong about them (see the rows marked DISAGREES)");
            }
            Ok(())
        }
    }
}

fn hsm_cmd(cli: &Cli, c: &HsmCmd) -> anyhow::Result<()> {
    let moved = |m: custos_core::MoveReport| -> anyhow::Result<()> {
        if cli.json {
            return json(&m);
        }
        if m.from == m.to {
            println!("{}: generation {} is on {} already; nothing moved", m.dataset, m.generation, m.to);
        } else {
            println!(
                "{}: generation {} ({} chunks) moved from {} to {}",
                m.dataset, m.generation, m.chunks, m.from, m.to
            );
        }
        Ok(())
    };
    match c {
        HsmCmd::Run { dry_run, without_keys } => {
            let v = sealed(cli)?;
            let needs_key = v.hsm_rules()?.iter().any(|r| r.backup_to.is_some() && r.method == CopyMethod::Logical);
            let now = jiff::Timestamp::now();
            let bar = progress::start(cli, "hsm run", None);
            let actions = if needs_key && !without_keys && !dry_run {
                open(cli)?.hsm_run(now, false)?
            } else {
                v.hsm_run(now, *dry_run)?
            };
            drop(bar);
            let mut failed = actions.iter().filter(|a| a.action == "failed").count();
            // The housekeeping run also empties the trash of what is past
            // its grace period (scanning volumes for strays is `custos gc`'s).
            if !dry_run {
                let g = v.gc(v.gc_grace()?, false, false)?;
                failed += g.failed.len();
                if !cli.json && g.released + g.orphans + g.temp_files > 0 {
                    println!(
                        "gc: deleted {} released and {} unreferenced objects and {} temp files ({})",
                        g.released,
                        g.orphans,
                        g.temp_files,
                        bytes(g.bytes)
                    );
                }
                for f in g.failed.iter().filter(|_| !cli.json) {
                    println!("gc: NOT DELETED {f}");
                }
            }
            if cli.json {
                json(&actions)?;
            } else {
                if actions.is_empty() {
                    println!(
                        "nothing to do: every dataset is backed up as its rule says, and none is due for migration"
                    );
                }
                for a in &actions {
                    println!("{} [{}] {}: {}", a.dataset, a.rule, a.action, a.detail);
                }
            }
            if failed > 0 {
                bail!("{failed} dataset(s) or object(s) failed (listed above); the others were processed: mend what the messages say and run `custos hsm run` again");
            }
            Ok(())
        }
        HsmCmd::Rule(HsmRuleCmd::Add { name, pattern, backup_to, method, keep, migrate_after_days, migrate_to }) => {
            let rule = sealed(cli)?.hsm_rule_add(&custos_core::NewHsmRule {
                name: name.clone(),
                pattern: Pattern::new(pattern)?,
                method: match method {
                    MethodArg::Logical => CopyMethod::Logical,
                    MethodArg::Raw => CopyMethod::Raw,
                },
                backup_to: backup_to.as_deref().map(volume_name).transpose()?,
                retention: (*keep).into(),
                migrate_after_days: *migrate_after_days,
                migrate_to: migrate_to.as_deref().map(volume_name).transpose()?,
            })?;
            if cli.json {
                return json(&rule);
            }
            println!("added hsm rule {} for {}", rule.name, rule.pattern);
            Ok(())
        }
        HsmCmd::Rule(HsmRuleCmd::Ls) => {
            let rules = sealed(cli)?.hsm_rules()?;
            if cli.json {
                return json(&rules);
            }
            let mut t = Table::new(&["NAME", "PATTERN", "BACKUP", "KEEP (last/daily/monthly/yearly)", "MIGRATE"]);
            for r in rules {
                t.row(vec![
                    r.name,
                    r.pattern.to_string(),
                    r.backup_to.map(|v| format!("{} to {v}", r.method.as_str())).unwrap_or_else(|| "-".into()),
                    format!("{}/{}/{}/{}", r.keep_last, r.keep_daily, r.keep_monthly, r.keep_yearly),
                    match (r.migrate_after_days, r.migrate_to) {
                        (Some(d), Some(v)) => format!("to {v} after {d} days unused"),
                        _ => "-".into(),
                    },
                ]);
            }
            t.print();
            Ok(())
        }
        HsmCmd::Rule(HsmRuleCmd::Rm { name }) => {
            sealed(cli)?.hsm_rule_rm(name)?;
            println!("removed hsm rule {name}");
            Ok(())
        }
        HsmCmd::Migrate { dataset: d, to } => moved(sealed(cli)?.migrate(&dataset(d)?, &volume_name(to)?)?),
        HsmCmd::Recall { dataset: d } => match sealed(cli)?.recall(&dataset(d)?)? {
            Some(m) => moved(m),
            None => {
                println!("{d} is not migrated");
                Ok(())
            }
        },
    }
}

fn mirror_cmd(cli: &Cli, c: &MirrorCmd) -> anyhow::Result<()> {
    let v = sealed(cli)?;
    let show = |ms: Vec<custos_core::MirrorStatus>| -> anyhow::Result<()> {
        if cli.json {
            return json(&ms);
        }
        let mut t = Table::new(&["PRIMARY", "SECONDARY", "SINCE", "OBJECTS", "STATE"]);
        for m in ms {
            let state = match m.missing {
                None => "-".to_string(),
                Some(0) => "in sync".to_string(),
                Some(n) => format!("{n} missing on the secondary"),
            };
            t.row(vec![
                m.primary.to_string(),
                m.secondary.to_string(),
                when(Some(m.since)),
                m.objects.to_string(),
                state,
            ]);
        }
        t.print();
        Ok(())
    };
    match c {
        MirrorCmd::Add { primary, secondary } => {
            let bar = progress::start(cli, "mirror sync", None);
            let m = v.mirror_add(&volume_name(primary)?, &volume_name(secondary)?)?;
            drop(bar);
            show(vec![m])
        }
        MirrorCmd::Ls => show(v.mirrors(false)?),
        MirrorCmd::Status => {
            let ms = v.mirrors(true)?;
            let out = ms.iter().filter(|m| m.missing.unwrap_or(0) > 0).count();
            show(ms)?;
            if out > 0 {
                bail!("{out} mirrors are out of sync: remove and add them again to resynchronise");
            }
            Ok(())
        }
        MirrorCmd::Rm { primary } => {
            v.mirror_rm(&volume_name(primary)?)?;
            if !cli.json {
                println!("volume {primary} is no longer mirrored");
            }
            Ok(())
        }
    }
}

fn snapshot_cmd(cli: &Cli, c: &SnapshotCmd) -> anyhow::Result<()> {
    match c {
        SnapshotCmd::Create { dataset: d } => {
            let sn = sealed(cli)?.snapshot_create(&dataset(d)?)?;
            if cli.json {
                return json(&sn);
            }
            println!("snapshot {}: {} generation {} ({})", sn.id, sn.dataset, sn.generation, bytes(sn.size));
            Ok(())
        }
        SnapshotCmd::Ls { pattern: p } => {
            let sns = sealed(cli)?.snapshots(pattern(p.as_deref())?.as_ref())?;
            if cli.json {
                return json(&sns);
            }
            let mut t = Table::new(&["ID", "DATASET", "GEN", "VOLUME", "KEY", "SIZE", "CREATED"]);
            for s in sns {
                t.row(vec![
                    s.id.to_string(),
                    s.dataset.to_string(),
                    s.generation.to_string(),
                    s.volume.to_string(),
                    s.key_label.to_string(),
                    bytes(s.size),
                    when(Some(s.created_at)),
                ]);
            }
            t.print();
            Ok(())
        }
        SnapshotCmd::Rm { id } => {
            sealed(cli)?.snapshot_rm(*id)?;
            if !cli.json {
                println!("removed snapshot {id}");
            }
            Ok(())
        }
        SnapshotCmd::Restore { id, as_name } => {
            let v = open(cli)?;
            let sn = v.snapshot_record(*id)?;
            let r = v.snapshot_restore(&sn, as_name.as_deref().map(dataset).transpose()?.as_ref())?;
            if cli.json {
                return json(&r);
            }
            println!(
                "restored snapshot {} as {} generation {} ({}); verified",
                sn.id,
                r.dataset,
                r.generation,
                bytes(r.size)
            );
            Ok(())
        }
    }
}

fn backup_cmd(cli: &Cli, c: &BackupCmd) -> anyhow::Result<()> {
    match c {
        BackupCmd::Run { pattern: p, method, to, key } => {
            let to = volume_name(to)?;
            let p = pattern(p.as_deref())?;
            // A raw copy needs no key: it runs on the sealed vault, without the passphrase.
            let chosen: Vec<_> = sealed(cli)?
                .datasets()?
                .into_iter()
                .filter(|d| p.as_ref().is_none_or(|p| p.matches(d.name.as_str())))
                .collect();
            let bar = progress::start(cli, "backup", Some(chosen.iter().map(|d| d.current.size).sum()));
            let names: Vec<DatasetName> = chosen.into_iter().map(|d| d.name).collect();
            let made = match method {
                MethodArg::Raw => sealed(cli)?.backup_raw_many(&names, &to)?,
                MethodArg::Logical => {
                    let key = key.as_deref().map(label).transpose()?;
                    open(cli)?.backup_logical_many(&names, &to, key.as_ref())?
                }
            };
            drop(bar);
            if cli.json {
                return json(&made.iter().filter_map(|(_, b)| b.clone()).collect::<Vec<_>>());
            }
            for (n, b) in made {
                match b {
                    Some(b) => println!(
                        "backup {}: {} copy of {} generation {} ({}) on volume {} under key {}",
                        b.id,
                        b.method,
                        n,
                        b.source_generation,
                        bytes(b.size),
                        b.volume,
                        b.key_label
                    ),
                    None => println!("{n}: its current generation already has a {} copy on {to}", method_text(*method)),
                }
            }
            Ok(())
        }
        BackupCmd::Ls { pattern: p } => {
            let bs = sealed(cli)?.backups(pattern(p.as_deref())?.as_ref())?;
            if cli.json {
                return json(&bs);
            }
            let mut t = Table::new(&["ID", "DATASET", "GEN", "METHOD", "VOLUME", "KEY", "SIZE", "CREATED"]);
            for b in bs {
                t.row(vec![
                    b.id.to_string(),
                    b.dataset.to_string(),
                    b.source_generation.to_string(),
                    b.method.to_string(),
                    b.volume.to_string(),
                    b.key_label.to_string(),
                    bytes(b.size),
                    when(Some(b.created_at)),
                ]);
            }
            t.print();
            Ok(())
        }
        BackupCmd::Prune { pattern: p, keep, dry_run } => {
            let r: custos_core::Retention = (*keep).into();
            let decisions = sealed(cli)?.prune_backups(pattern(p.as_deref())?.as_ref(), &r, *dry_run)?;
            if cli.json {
                return json(&decisions);
            }
            let gone = decisions.iter().filter(|d| !d.keep).count();
            for d in decisions.iter().filter(|d| !d.keep) {
                let b = &d.backup;
                println!(
                    "{} backup {} ({} of {} generation {}, {})",
                    if *dry_run { "would delete" } else { "deleted" },
                    b.id,
                    b.method,
                    b.dataset,
                    b.source_generation,
                    when(Some(b.created_at))
                );
            }
            println!(
                "{} of {} backups kept{}",
                decisions.len() - gone,
                decisions.len(),
                if *dry_run { " (dry run)" } else { "" }
            );
            Ok(())
        }
        BackupCmd::Verify { pattern: p, read_data } => {
            let v = open(cli)?;
            let bs = v.backups(pattern(p.as_deref())?.as_ref())?;
            let mut bad = 0;
            let mut report = Vec::new();
            let bar =
                read_data.then(|| progress::start(cli, "verify", Some(bs.iter().map(|b| b.size).sum()))).flatten();
            for b in &bs {
                let r = v.verify_backup(b, *read_data);
                if !cli.json {
                    match &r {
                        Ok(()) => progress::say(&bar, format!("backup {} ({} of {}): ok", b.id, b.method, b.dataset)),
                        Err(e) => progress::say(
                            &bar,
                            format!("backup {} ({} of {}): DAMAGED: {e}", b.id, b.method, b.dataset),
                        ),
                    }
                }
                bad += r.is_err() as usize;
                report
                    .push(serde_json::json!({ "id": b.id, "ok": r.is_ok(), "error": r.err().map(|e| e.to_string()) }));
            }
            if cli.json {
                json(&report)?;
            }
            if bad > 0 {
                bail!(
                    "{bad} of {} backups failed verification; restore from another copy, then make a new backup",
                    bs.len()
                );
            }
            if !cli.json {
                println!("{} backups verified{}", bs.len(), if *read_data { ", every chunk read" } else { "" });
            }
            Ok(())
        }
        BackupCmd::Show { id } => {
            let v = sealed(cli)?;
            let b = v.backup_record(*id)?;
            if cli.json {
                return json(&b);
            }
            let vol = v.volume_record(&b.volume)?;
            println!("backup       {}", b.id);
            println!("dataset      {} generation {}", b.dataset, b.source_generation);
            println!(
                "method       {}",
                match b.method {
                    CopyMethod::Raw => "raw (sealed bytes copied as they are; shares the primary's key)",
                    CopyMethod::Logical => "logical (re-sealed under a separate backup key)",
                }
            );
            println!("volume       {} (site {}, {})", vol.name, vol.site, vol.medium);
            println!("key          {}", b.key_label);
            println!("size         {} in {} chunks", bytes(b.size), b.chunk_count);
            println!("created      {}", when(Some(b.created_at)));
            Ok(())
        }
    }
}

fn method_text(m: MethodArg) -> &'static str {
    match m {
        MethodArg::Raw => "raw",
        MethodArg::Logical => "logical",
    }
}

fn escrow_cmd(cli: &Cli, c: &EscrowCmd) -> anyhow::Result<()> {
    match c {
        EscrowCmd::Init { custodians, threshold, out_dir } => {
            std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
            // Refuse before anything is generated if a share file would be overwritten.
            for c in custodians {
                let p = out_dir.join(format!("{c}.share"));
                if p.exists() {
                    bail!("{} exists already; choose another --out-dir", p.display());
                }
            }
            let v = open(cli)?;
            // Every share is written and made durable before the catalog
            // switches to the new key-backup key.
            let (kbk, _) = v.escrow_init(custodians, *threshold, |files| {
                let io = |p: &Path| {
                    let path = p.to_path_buf();
                    move |source| custos_core::Error::VaultIo { path, source }
                };
                for f in files {
                    use std::os::unix::fs::OpenOptionsExt;
                    let p = out_dir.join(format!("{}.share", f.custodian));
                    let mut out = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&p)
                        .map_err(io(&p))?;
                    out.write_all(f.encode().as_bytes()).map_err(io(&p))?;
                    out.sync_all().map_err(io(&p))?;
                }
                std::fs::File::open(out_dir).and_then(|d| d.sync_all()).map_err(io(out_dir))
            })?;
            if cli.json {
                return json(&kbk);
            }
            println!(
                "created key-backup key {}: any {} of {} custodians can recover escrowed keys",
                kbk.id,
                kbk.threshold,
                kbk.custodians.len()
            );
            println!("share files written to {}; give each custodian theirs and delete it here", out_dir.display());
            Ok(())
        }
        EscrowCmd::Status => {
            let st = sealed(cli)?.escrow_status()?;
            if cli.json {
                return json(&st);
            }
            for k in &st.kbks {
                println!(
                    "{}  {} of {}  created {}",
                    k.id,
                    k.threshold,
                    k.custodians.join(", "),
                    when(Some(k.created_at))
                );
            }
            println!("{} keys escrowed, {} keys without an escrow copy", st.keys_escrowed, st.keys_not_escrowed.len());
            for l in &st.keys_not_escrowed {
                println!("  not escrowed: {l}");
            }
            Ok(())
        }
        EscrowCmd::Purge { label: l } => {
            sealed(cli)?.escrow_purge(&label(l)?)?;
            println!("erased the escrow copy of {l}");
            Ok(())
        }
    }
}

fn keystore_cmd(cli: &Cli, c: &KeystoreCmd) -> anyhow::Result<()> {
    let v = sealed(cli)?;
    match c {
        KeystoreCmd::Backup { to } => {
            let b = v.keystore_backup(&volume_name(to)?)?;
            if cli.json {
                return json(&b);
            }
            println!(
                "keystore backup {} on volume {}: {} keys, under master keys {}",
                b.id,
                b.volume,
                b.key_count,
                b.mkvps.join(", ")
            );
            Ok(())
        }
        KeystoreCmd::Backups => {
            let bs = v.keystore_backups()?;
            if cli.json {
                return json(&bs);
            }
            let mut t = Table::new(&["ID", "VOLUME", "CREATED", "KEYS", "MASTER KEYS (MKVP)"]);
            for b in bs {
                t.row(vec![
                    b.id,
                    b.volume.to_string(),
                    when(Some(b.created_at)),
                    b.key_count.to_string(),
                    b.mkvps.join(", "),
                ]);
            }
            t.print();
            Ok(())
        }
    }
}

fn config_cmd(cli: &Cli, c: &ConfigCmd) -> anyhow::Result<()> {
    let v = sealed(cli)?;
    let show = |pairs: Vec<(&'static str, String)>| -> anyhow::Result<()> {
        if cli.json {
            let m: serde_json::Map<String, serde_json::Value> =
                pairs.into_iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v))).collect();
            return json(&m);
        }
        for (k, v) in pairs {
            println!("{k} = {v}");
        }
        Ok(())
    };
    match c {
        ConfigCmd::Ls => show(v.settings()?),
        ConfigCmd::Get { key } => {
            let all = v.settings()?;
            let (k, val) = all.into_iter().find(|(k, _)| k == key).ok_or_else(|| {
                let names: Vec<&str> = v.settings().map(|s| s.iter().map(|(k, _)| *k).collect()).unwrap_or_default();
                anyhow!("no setting {key:?}: the settings are {}", names.join(", "))
            })?;
            show(vec![(k, val)])
        }
        ConfigCmd::Set { key, value } => {
            match key.as_str() {
                "key.naming" => {
                    v.set_naming(value)?;
                }
                "chunk.size" => {
                    let n: u32 =
                        value.parse().map_err(|_| anyhow!("chunk.size takes a number of bytes, not {value:?}"))?;
                    v.set_chunk_size(n)?;
                }
                "compression" => v.set_compression(value)?,
                "s3.endpoint" | "s3.region" => v.set_s3_setting(key, value)?,
                "key.destroy.wait" => v.set_destroy_default_wait(value)?,
                "key.destroy.min-wait" => v.set_destroy_min_wait(value)?,
                "dual-control" => v.set_dual_control(value)?,
                "request.ttl" => v.set_request_ttl(value)?,
                "gc.grace" => v.set_gc_grace(value)?,
                _ => bail!("no setting {key:?}: the settings are key.naming, chunk.size, compression, s3.endpoint, s3.region, key.destroy.wait, key.destroy.min-wait, dual-control, request.ttl and gc.grace"),
            }
            show(v.settings()?.into_iter().filter(|(k, _)| k == key).collect())
        }
    }
}

/// Total size of the regular files under `dir` (for a progress bar; 0 when unreadable).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}
