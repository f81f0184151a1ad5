//! The `custos` binary: parses arguments into an operation, hands it to
//! the engine's operation boundary, prints the result. Rights, audit and
//! dual control are the engine's (custos-ops), never this binary's.
#![deny(unsafe_code)]

mod args;
mod client;
mod cmd;
mod demo;
mod progress;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use custos_core::{DirectWriter, HsmChoice, HsmKind, InitOptions, KdfParams, Passphrase, Sealed, Vault};
use custos_ops::{Caller, Engine, Io, Reply, Unlocked};

use args::{Cli, Command, EscrowCmd, MkCmd, ReportFormat};
use cmd::{Input, Output, Plan, Show};

/// mimalloc rather than the C library's allocator: its per-thread heaps
/// free what another thread allocated without a shared lock (ADR 0032).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its `mimalloc.h`; the crate names
/// no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Give freed memory back to the system at once rather than a second
/// later (mimalloc's default): the risk report of 300,000 copies peaked at
/// 282-367 MiB with the delay and 220 MiB without, no slower, and the
/// copies of big datasets ran no slower either (ADR 0032). An operator's
/// `MIMALLOC_PURGE_DELAY` is left to rule.
fn allocator_setup() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // The only unsafe code of this binary: a call into the allocator with
    // two integers, no pointers.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0)
    }
}

/// A line on standard error. A closed or full stderr loses the line, never
/// the command (`eprintln!` would panic).
macro_rules! note {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stderr().lock(), $($t)*);
    }};
}

fn main() -> ExitCode {
    allocator_setup();
    let seeding = custos_crypto::prime_random();
    let cli = match <Cli as clap::Parser>::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = seeding.join();
            e.exit()
        }
    };
    let json = cli.json;
    let code = match run(cli) {
        Ok(code) => code,
        // The reader of standard output went away (`custos ds ls | head`):
        // nothing to say to anyone; exit as a process SIGPIPE ended would.
        Err(e) if reader_gone(&e) => ExitCode::from(141),
        Err(e) => {
            let code = error_code(&e);
            say_error(json, code, &said(&e));
            ExitCode::from(code.exit())
        }
    };
    // Never exit while the seeding thread is inside aws-lc.
    let _ = seeding.join();
    code
}

/// Whether `e` is standard output's pipe closed by its reader.
fn reader_gone(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == BrokenPipe)
            || c.downcast_ref::<serde_json::Error>().and_then(|j| j.io_error_kind()) == Some(BrokenPipe)
    })
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

/// Exit codes by error kind (documented in `custos --help`), decided by
/// the operation boundary's [`Code`].
/// An error and its causes as one line, each said once: a cause whose
/// words the message already holds (a wrapper that prints its source, or
/// an OS error quoted by two layers) adds nothing.
pub(crate) fn said(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !c.is_empty() && !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

/// The kind of a failed command's error, which decides its exit code.
fn error_code(e: &anyhow::Error) -> custos_ops::Code {
    use custos_ops::Code;
    if e.downcast_ref::<Usage>().is_some() {
        return Code::Usage;
    }
    if let Some(e) = e.downcast_ref::<client::Remote>() {
        return Code::from_exit(e.exit);
    }
    if let Some(e) = e.downcast_ref::<custos_ops::Error>() {
        return e.code();
    }
    if let Some(e) = e.downcast_ref::<custos_core::Error>() {
        return custos_ops::core_code(e);
    }
    // A custodian's file that does not parse is invalid input, as the
    // engine reports it.
    if let Some(e) = e.downcast_ref::<custos_core::FileError>() {
        return custos_ops::core_code(&custos_core::Error::from(e.clone()));
    }
    Code::Other
}

/// Say why a command failed, on standard error: one line of text, or with
/// `--json` one JSON object, `{"error": {"code", "kind", "message",
/// "hint"}}` (docs/json.md): the exit code, its kind, the whole message,
/// and the part of it that names a command to run, when one does.
pub(crate) fn say_error(json: bool, code: custos_ops::Code, message: &str) {
    if !json {
        note!("custos: {message}");
        return;
    }
    let hint = message
        .split("; ")
        .flat_map(|part| part.split(": "))
        .find(|part| part.contains("`custos "))
        .map(str::to_string);
    let body = serde_json::json!({
        "error": {
            "code": code.exit(),
            "kind": serde_json::to_value(code).unwrap_or(serde_json::Value::Null),
            "message": message,
            "hint": hint,
        }
    });
    note!("{body}");
}

fn passphrase(file: Option<&Path>, confirm: bool) -> anyhow::Result<Passphrase> {
    if let Some(f) = file {
        let s = zeroize::Zeroizing::new(
            std::fs::read_to_string(f).with_context(|| format!("cannot read the passphrase file {}", f.display()))?,
        );
        let line = s.lines().next().unwrap_or("").to_string();
        return Ok(Passphrase::from(line));
    }
    secret_from_env_or_prompt(
        "CUSTOS_PASSPHRASE",
        "HSM passphrase: ",
        "the HSM passphrase is needed: set CUSTOS_PASSPHRASE, pass --passphrase-file, or run in a terminal to be asked",
        confirm,
    )
}

/// A secret from the environment variable `var`, or asked for in a
/// terminal (twice with `confirm`); `missing` says what to do otherwise.
pub(crate) fn secret_from_env_or_prompt(
    var: &str,
    prompt: &str,
    missing: &str,
    confirm: bool,
) -> anyhow::Result<Passphrase> {
    if let Ok(p) = std::env::var(var) {
        return Ok(Passphrase::from(p));
    }
    if !std::io::stdin().is_terminal() {
        bail!("{missing}");
    }
    let p = zeroize::Zeroizing::new(rpassword::prompt_password(prompt).context("cannot read the passphrase")?);
    if confirm {
        let again =
            zeroize::Zeroizing::new(rpassword::prompt_password("Again: ").context("cannot read the passphrase")?);
        if again != p {
            bail!("the two passphrases differ; nothing was created");
        }
    }
    Ok(Passphrase::from(p.to_string()))
}

fn pin(file: Option<&Path>, token: &str) -> anyhow::Result<zeroize::Zeroizing<String>> {
    if let Some(f) = file {
        let s = zeroize::Zeroizing::new(
            std::fs::read_to_string(f).with_context(|| format!("cannot read the PIN file {}", f.display()))?,
        );
        return Ok(zeroize::Zeroizing::new(s.lines().next().unwrap_or("").to_string()));
    }
    if let Ok(p) = std::env::var("CUSTOS_PKCS11_PIN") {
        return Ok(zeroize::Zeroizing::new(p));
    }
    if !std::io::stdin().is_terminal() {
        bail!("the PIN of the PKCS#11 token {token} is needed: set CUSTOS_PKCS11_PIN, pass --pin-file, or run in a terminal to be asked");
    }
    Ok(zeroize::Zeroizing::new(
        rpassword::prompt_password(format!("PIN of the token {token}: ")).context("cannot read the PIN")?,
    ))
}

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

/// Open the HSM of an embedded vault: the passphrase (software HSM) or
/// the token's PIN, from a file, the environment or a prompt.
fn unlocker(cli: &Cli) -> impl Fn(&Vault<Sealed>) -> custos_core::Result<Unlocked> + Send + Sync + 'static {
    let (passphrase_file, pin_file) = (cli.passphrase_file.clone(), cli.pin_file.clone());
    move |v: &Vault<Sealed>| {
        let asked = |what: String| custos_core::Error::Invalid { what: "HSM", why: what };
        match v.hsm_kind()? {
            HsmKind::Soft => {
                let p = passphrase(passphrase_file.as_deref(), false).map_err(|e| asked(said(&e)))?;
                let keep = Passphrase::new(p.expose_secret().to_vec());
                Ok(Unlocked { vault: v.sealed_view().unseal(&p)?, passphrase: Some(keep) })
            }
            HsmKind::Pkcs11 { token, .. } => {
                let pin = pin(pin_file.as_deref(), &format!("{token:?}")).map_err(|e| asked(said(&e)))?;
                Ok(Unlocked { vault: v.sealed_view().unseal_pkcs11(pin)?, passphrase: None })
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Init(_) => return init(&cli).map(|_| ExitCode::SUCCESS),
        Command::Vault(args::VaultCmd::Recover { from, pkcs11, pkcs11_module, pkcs11_init_args })
            if cli.server.is_none() =>
        {
            return recover(&cli, from, *pkcs11, pkcs11_module.clone(), pkcs11_init_args.clone())
                .map(|_| ExitCode::SUCCESS)
        }
        Command::Vault(args::VaultCmd::Rebuild { share, key, part, kdf_memory_mib, kdf_iterations })
            if cli.server.is_none() =>
        {
            let kdf = KdfParams {
                memory_kib: kdf_memory_mib.saturating_mul(1024),
                iterations: *kdf_iterations,
                parallelism: 1,
            };
            return rebuild(&cli, share, key, part, kdf).map(|_| ExitCode::SUCCESS);
        }
        Command::Repo(args::RepoCmd::Migrate { to }) => return repo_migrate(&cli, to).map(|_| ExitCode::SUCCESS),
        Command::Demo { keep } => return demo::run(keep.as_deref()).map(|_| ExitCode::SUCCESS),
        Command::Mk(MkCmd::MakePart { custodian, output }) => {
            return cmd::mk::make_part(custodian, output, cli.json).map(|_| ExitCode::SUCCESS)
        }
        Command::Escrow(EscrowCmd::Keygen { out, custodian, kdf_memory_mib, kdf_iterations }) => {
            let name = custodian.clone().or_else(|| cli.user.clone()).ok_or_else(|| {
                anyhow::anyhow!("whose key is it? give --custodian NAME (or --user NAME): your user name")
            })?;
            return cmd::escrow::keygen(&name, out, *kdf_memory_mib, *kdf_iterations, cli.json)
                .map(|_| ExitCode::SUCCESS);
        }
        _ => {}
    }
    if let Command::Serve { config } = &cli.command {
        return serve(config).map(|_| ExitCode::SUCCESS);
    }
    let plan = cmd::plan(&cli)?;
    if let Some(url) = &cli.server {
        let authorization = match &cli.user {
            Some(name) => {
                let secret = credential(&cli, name, false)?;
                Some(custos_server::basic(name, secret.expose_secret()))
            }
            None => None,
        };
        return client::Client::new(&cli, url, authorization)?.run(&cli, plan);
    }
    let mut vault = Vault::open(&cli.vault)?;
    if let Some(n) = cli.threads {
        vault.set_threads(n);
    }
    let engine = Engine::embedded(vault, unlocker(&cli));
    let who = if engine.needs_login()? {
        let name = cli
            .user
            .clone()
            .ok_or_else(|| anyhow::Error::from(Usage("who is acting? give --user NAME (or set CUSTOS_USER)".into())))?;
        engine.login(&name, &credential(&cli, &name, false)?)?
    } else {
        Caller::Unverified(local_user(&cli))
    };
    execute(&cli, &engine, &who, plan)
}

/// Run a plan on the engine, with its local input and output, and show
/// the result.
fn execute(cli: &Cli, engine: &Engine, who: &Caller, plan: Plan) -> anyhow::Result<ExitCode> {
    let Plan { op, input, output, show, progress: bar } = plan;
    let mut bar = bar.and_then(|(label, total)| progress::start(cli, &label, total));
    let mut stdin;
    let mut file;
    let mut input: Option<&mut (dyn std::io::Read + 'static)> = match input {
        Input::None => None,
        Input::Stdin => {
            stdin = std::io::stdin().lock();
            Some(&mut stdin)
        }
        Input::File(path) => {
            file = std::fs::File::open(&path).with_context(|| format!("cannot open {} to store", path.display()))?;
            Some(&mut file)
        }
    };
    let data_on_stdout = matches!(output, Output::Stdout);
    let outcome = match output {
        Output::None => engine.execute(who, op, Io { input: input.as_deref_mut().map(|r| r as _), output: None })?,
        Output::Stdout => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            let o =
                engine.execute(who, op, Io { input: input.as_deref_mut().map(|r| r as _), output: Some(&mut w) })?;
            w.flush()?;
            o
        }
        Output::File(path) => {
            let mut outcome = None;
            write_atomically(&path, |w| {
                outcome = Some(engine.execute(who, op, Io { input: input.map(|r| r as _), output: Some(w) })?);
                Ok(())
            })?;
            let o = outcome.expect("written");
            // The bar's line is cleared before anything is said.
            drop(bar.take());
            if let (Reply::Got(r), false) = (&o.reply, cli.json) {
                note!(
                    "wrote {} of {} generation {} to {}",
                    custos_ops::render::bytes(r.bytes),
                    r.dataset,
                    r.generation,
                    path.display()
                );
            }
            o
        }
    };
    drop(bar);
    for w in &outcome.warnings {
        note!("custos: warning: {w}");
    }
    show_reply(cli, &outcome.reply, &show, data_on_stdout)?;
    if let Some(f) = outcome.reply.failure() {
        say_error(cli.json, f.code, &f.message);
        return Ok(ExitCode::from(f.code.exit()));
    }
    Ok(ExitCode::SUCCESS)
}

fn show_reply(cli: &Cli, reply: &Reply, show: &Show, data_on_stdout: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match (reply, show) {
        (Reply::Monitor(r), Show::Prometheus) => {
            write!(out, "{}", custos_core::prometheus_text(&r.metrics))?;
            return Ok(());
        }
        (Reply::RiskReport(r, dual), Show::Report { format, output }) => {
            if matches!(format, ReportFormat::Json) || cli.json {
                // Streamed: the JSON of a large vault is as big again as the
                // report itself (100 MiB at 300,000 copies).
                match output {
                    Some(path) => {
                        let f =
                            std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
                        let mut w = std::io::BufWriter::new(f);
                        serde_json::to_writer_pretty(&mut w, r)?;
                        writeln!(w)?;
                        // Flushed, not synced, as the other formats' files
                        // are: a report is made again, never the only copy
                        // of anything (an fsync of the 300 MB of a 100,000
                        // dataset vault took 0.4-0.8 s).
                        w.into_inner()
                            .map_err(|e| e.into_error())
                            .with_context(|| format!("cannot write {}", path.display()))?;
                        note!("wrote the risk report to {}", path.display());
                    }
                    None => {
                        let mut w = std::io::BufWriter::new(&mut out);
                        serde_json::to_writer_pretty(&mut w, r)?;
                        writeln!(w)?;
                        w.flush()?;
                    }
                }
                return Ok(());
            }
            // Table and Markdown are written as they are made; the HTML
            // page is made whole.
            let write = |w: &mut dyn Write| -> std::io::Result<()> {
                match format {
                    ReportFormat::Table => custos_risk::report::write_table(r, *dual, w),
                    ReportFormat::Markdown => custos_risk::report::write_markdown(r, *dual, w),
                    ReportFormat::Html => w.write_all(custos_risk::report::render_html(r, *dual).as_bytes()),
                    // Written above.
                    ReportFormat::Json => Ok(()),
                }
            };
            match output {
                Some(path) => {
                    let f = std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
                    let mut w = std::io::BufWriter::new(f);
                    write(&mut w)
                        .and_then(|()| w.into_inner().map_err(|e| e.into_error()).map(drop))
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    note!("wrote the risk report to {}", path.display());
                }
                None => {
                    let mut w = std::io::BufWriter::new(&mut out);
                    write(&mut w)?;
                    w.flush()?;
                }
            }
            return Ok(());
        }
        // The data went to standard output already, and is all it carries
        // (with --json too: one document, the data).
        (Reply::Got(_), _) if data_on_stdout => return Ok(()),
        (Reply::AuditExport(_), _) => return Ok(()),
        (Reply::Got(_), _) if !cli.json => return Ok(()),
        _ => {}
    }
    match (show, cli.json) {
        // The file is written with --json too; the JSON says where.
        (Show::Save(path), json) => {
            cmd::escrow::write_new(path, reply.text().as_bytes())?;
            if json {
                serde_json::to_writer_pretty(&mut out, &cmd::saved_json(reply.json(), path))?;
                writeln!(out)?;
            } else {
                note!("wrote {}", path.display());
            }
        }
        (_, true) => {
            let mut w = std::io::BufWriter::new(&mut out);
            reply.write_json(&mut w)?;
            writeln!(w)?;
            w.flush()?;
        }
        (_, false) => write!(out, "{}", reply.text())?,
    }
    Ok(())
}

/// `custos serve`: open the configured vault and its HSM once, then serve.
fn serve(config: &Path) -> anyhow::Result<()> {
    let config = custos_server::Config::load(config)?;
    let engine = custos_server::open_engine(&config)?;
    let (unix, tcp) = (config.listen.unix.clone(), config.listen.tcp.clone());
    custos_server::run(config, engine, move || {
        let mut at: Vec<String> = unix.iter().map(|p| format!("unix:{}", p.display())).collect();
        at.extend(tcp.iter().map(|a| format!("https://{a}")));
        note!("custos serve: listening on {}", at.join(" and "));
    })?;
    Ok(())
}

/// Who runs a command that authenticates nobody (embedded mode without
/// principals, a recovery): --user, else the OS account, as the audit log
/// records it (unverified).
fn local_user(cli: &Cli) -> String {
    cli.user
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// `custos repo migrate`: the catalog to PostgreSQL or back, on the vault's
/// own machine (never through a server, which holds the catalog open), by
/// a security-admin with the HSM open.
fn repo_migrate(cli: &Cli, to: &str) -> anyhow::Result<()> {
    if cli.server.is_some() {
        bail!("repo migrate runs on the vault's machine with its servers stopped, not through a server: drop --server (CUSTOS_SERVER)");
    }
    let target = custos_core::MigrateTarget::parse(to)?;
    let sealed = Vault::open(&cli.vault)?;
    let who = if sealed.has_users()? {
        let name = cli
            .user
            .clone()
            .ok_or_else(|| anyhow::Error::from(Usage("who is acting? give --user NAME (or set CUSTOS_USER)".into())))?;
        let p = sealed.authenticate(&name, &credential(cli, &name, false)?)?;
        if !p.roles.contains(&custos_core::model::Role::SecurityAdmin) {
            return Err(custos_core::Error::Forbidden {
                principal: name,
                why: "moving the catalog (repo migrate) needs the security-admin role".into(),
            }
            .into());
        }
        name
    } else {
        local_user(cli)
    };
    let open = unlocker(cli)(&sealed)?.vault;
    let r = open.migrate_catalog(&target, &who)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "moved the catalog from {} to {}: {} rows in {} tables, every MAC ({}) and the audit chain ({} entries) verified in the copy; the old catalog is kept at {}",
            r.from,
            r.to,
            r.rows,
            r.tables.len(),
            r.macs_checked,
            r.audit_entries,
            r.kept
        );
        if let Some(k) = &r.hsm_kept {
            println!("the software HSM moved into the catalog, where every server reads it; its file is kept at {k}");
        }
    }
    Ok(())
}

/// `custos vault recover`: a new vault directory from a vault backup.
fn recover(
    cli: &Cli,
    from: &str,
    pkcs11: bool,
    module: Option<PathBuf>,
    init_args: Option<String>,
) -> anyhow::Result<()> {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let who = local_user(cli);
    let r = if pkcs11 {
        let pin = pin(cli.pin_file.as_deref(), "the vault backup names")?;
        custos_core::recover(&cli.vault, from, custos_core::RecoverWith::Pkcs11 { pin, module, init_args }, &who)?
    } else {
        let p = passphrase(cli.passphrase_file.as_deref(), false)?;
        custos_core::recover(&cli.vault, from, custos_core::RecoverWith::Passphrase(&p), &who)?
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "recovered vault {} from backup {} (taken {}, up to audit entry {}): {} datasets",
            cli.vault.display(),
            r.id,
            r.created_at,
            r.audit_seq,
            r.datasets
        );
        for v in &r.emptied {
            println!("volume {v} lived inside the lost vault directory and is empty again: restore its datasets from backups (`custos restore`)");
        }
        if let Some(p) = &r.server_config {
            println!("the server's configuration when the backup was taken is in {}: review its paths (vault, secret_file, TLS, volumes) before `custos serve --config`", p.display());
        }
        if let Some(m) = r.anchor_was {
            println!("the token had recorded audit entry {m}: what the vault did after this backup is not in it (recorded in the audit log)");
        }
    }
    Ok(())
}

/// `custos vault rebuild`: a new HSM for a vault whose software HSM is lost.
fn rebuild(cli: &Cli, share: &[PathBuf], key: &[PathBuf], part: &[PathBuf], kdf: KdfParams) -> anyhow::Result<()> {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let who = local_user(cli);
    let (r, how) = if part.is_empty() {
        let opened = cmd::escrow::open_shares(share, key)?;
        let shares = opened
            .iter()
            .enumerate()
            .map(|(i, t)| custos_core::ShareFile::decode(t.expose(), &format!("share {}", i + 1)))
            .collect::<Result<Vec<_>, custos_core::FileError>>()?;
        let p = passphrase(cli.passphrase_file.as_deref(), true)?;
        (custos_core::rebuild(&cli.vault, &p, kdf, &shares, &who)?, "recovered from escrow")
    } else {
        let parts = cmd::secret_files(part, "key part")?
            .iter()
            .enumerate()
            .map(|(i, t)| custos_core::KeyPartFile::decode(t.expose(), &format!("part {}", i + 1)))
            .collect::<Result<Vec<_>, custos_core::FileError>>()?;
        let p = passphrase(cli.passphrase_file.as_deref(), true)?;
        (custos_core::rebuild_from_parts(&cli.vault, &p, kdf, parts, &who)?, "under the re-entered master key")
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("new HSM for {} under master key {}: {} keys {how}", cli.vault.display(), r.mkvp, r.recovered.len());
        if !r.lost_keys.is_empty() {
            println!("lost with the old HSM (no escrow copy): {}", r.lost_keys.join(", "));
        }
        if !r.lost_datasets.is_empty() {
            println!("datasets whose current key is lost: {}", r.lost_datasets.join(", "));
        }
        if r.unverifiable_audit_entries > 0 {
            println!(
                "{} audit entries were keyed under the lost audit key: `audit verify` takes their links as they are",
                r.unverifiable_audit_entries
            );
        }
    }
    Ok(())
}

fn init(cli: &Cli) -> anyhow::Result<()> {
    let Command::Init(a) = &cli.command else { unreachable!("init") };
    let kdf =
        KdfParams { memory_kib: a.kdf_memory_mib.saturating_mul(1024), iterations: a.kdf_iterations, parallelism: 1 };
    let (p, hsm) = match a.hsm {
        args::HsmArg::Soft => (passphrase(cli.passphrase_file.as_deref(), true)?, HsmChoice::Soft),
        args::HsmArg::Pkcs11 => {
            let token = a.pkcs11_token.clone().expect("clap requires --pkcs11-token with --hsm pkcs11");
            let pin = pin(cli.pin_file.as_deref(), &format!("{token:?}"))?;
            let config = custos_core::Pkcs11Config {
                module: a.pkcs11_module.clone(),
                token,
                pin,
                init_args: a.pkcs11_init_args.clone(),
            };
            (Passphrase::new(Vec::new()), HsmChoice::Pkcs11 { config, adopt: a.pkcs11_adopt })
        }
    };
    // The creator is the first security-admin.
    let admin = cli.user.clone().unwrap_or_else(|| "admin".into());
    let cred = credential(cli, &admin, true)?;
    if cred.expose_secret().len() < 8 {
        bail!("the credential of {admin} is shorter than 8 characters; nothing was created");
    }
    // A vault is private to the account that made it: 0700 directories,
    // 0600 files (a server refuses any other).
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let v = Vault::init(
        &cli.vault,
        &p,
        &InitOptions { kdf, site: a.site.clone(), hsm, volume: a.volume.clone(), repository: a.repository.clone() },
    )?;
    v.user_add(&admin, &[custos_core::model::Role::SecurityAdmin], Some(&cred))?;
    v.audit_append(&admin, "init", &cli.vault.display().to_string(), "ok")?;
    let regs = v.hsm().registers()?;
    let mut text = String::new();
    if cli.json {
        let j = serde_json::json!({
            "vault": v.dir(),
            "master_key_mkvp": regs.iter().map(|r| r.mkvp.to_hex()).collect::<Vec<_>>(),
        });
        text = serde_json::to_string_pretty(&j)? + "\n";
    } else {
        use std::fmt::Write as _;
        let _ = writeln!(text, "Created vault {}", v.dir().display());
        for r in regs {
            let _ = writeln!(text, "  master key {} MKVP {}", r.register, r.mkvp);
        }
        let _ = writeln!(
            text,
            "  volume default at {}",
            v.volume_record(&custos_core::model::VolumeName::new("default")?)?.location
        );
        let _ = writeln!(text, "  policy default: ** → volume default, one new key per dataset");
        let _ = writeln!(text, "  user {admin}: security-admin (add others with `custos user add`)");
    }
    // The vault exists whatever happens to standard output now.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    if a.repository.is_some() && a.volume.is_none() {
        note!(
            "custos: warning: the default volume is inside this vault directory, which servers on other machines do not reach: add a volume on storage they share and a policy that uses it (`custos volume add`, `custos policy add`), or make the vault with `--volume PATH`"
        );
    }
    Ok(())
}

/// Write `path` through `f`. A regular file (or a new one) is replaced
/// atomically: a temp file beside it, fsynced, renamed over it, and the
/// directory fsynced, so a failure or a kill leaves the old file whole. A
/// path that is something else (a device such as /dev/null, a FIFO) is
/// written to directly, never replaced.
pub(crate) fn write_atomically(
    path: &Path,
    f: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
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

#[cfg(test)]
mod allocator_tests {
    /// The option number names the purge delay: its default (1,000 ms in
    /// the mimalloc the lock file pins) tells it from the options beside it.
    #[test]
    #[allow(unsafe_code)]
    fn the_option_set_is_the_purge_delay() {
        // SAFETY: reads and sets an integer option; no pointers.
        let get = || unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // the operator's value rules, and the default is unknown
        }
        assert_eq!(get(), 1000);
        super::allocator_setup();
        assert_eq!(get(), 0);
    }
}
