//! Command-line arguments, as clap parses them. Validation into engine
//! types happens in `main.rs`, in one place per command.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "custos",
    version,
    about = "Keeps encrypted datasets and their backups recoverable.",
    long_about = "Custos stores datasets sealed with AES-256-GCM, each under its own key; keeps the keys in a keystore wrapped under an HSM master key; and shows what every copy survives.\n\nExit codes: 0 ok, 1 other error, 2 usage, 3 not found, 4 integrity failure (tampered or damaged data), 5 key state forbids it, 6 wrong passphrase or credential, 7 volume unreachable or full, 8 not allowed (roles, grants), 10 `monitor` raised an alert."
)]
pub struct Cli {
    /// The vault directory.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "CUSTOS_VAULT",
        default_value = "./custos-vault"
    )]
    pub vault: PathBuf,
    /// Read the HSM passphrase from this file (first line). Otherwise
    /// CUSTOS_PASSPHRASE, otherwise a prompt.
    #[arg(long, global = true, help_heading = "Global options", value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,
    /// Read a PKCS#11 token's user PIN from this file (first line).
    /// Otherwise CUSTOS_PKCS11_PIN, otherwise a prompt.
    #[arg(long, global = true, help_heading = "Global options", value_name = "FILE")]
    pub pin_file: Option<PathBuf>,
    /// Worker threads for sealing and opening chunks (default: all cores,
    /// at least 4; at most 4 per core and 256 in all).
    #[arg(long, global = true, help_heading = "Global options", value_name = "N", value_parser = threads)]
    pub threads: Option<usize>,
    /// Who is acting (a principal of the vault; `init` names the first).
    #[arg(long, global = true, help_heading = "Global options", env = "CUSTOS_USER", value_name = "NAME")]
    pub user: Option<String>,
    /// Read the user's credential (passphrase or token) from this file
    /// (first line). Otherwise CUSTOS_CREDENTIAL, otherwise a prompt.
    #[arg(long, global = true, help_heading = "Global options", value_name = "FILE")]
    pub credential_file: Option<PathBuf>,
    /// Run the command on a Custos server instead of opening a vault here:
    /// unix:/run/custos/custos.sock or https://host:port. The client needs
    /// no access to the vault and never the HSM passphrase. Without it the
    /// vault is opened in this process (embedded mode), where whoever holds
    /// the passphrase is every role. Several servers of one deployment,
    /// comma-separated: a command one cannot carry out (down, or cut off)
    /// goes to the next, a write with the same idempotency key, so it is
    /// never carried out twice.
    #[arg(long, global = true, help_heading = "Global options", env = "CUSTOS_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// The CA certificate (PEM) that signed an https server's certificate.
    #[arg(long, global = true, help_heading = "Global options", env = "CUSTOS_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM) to present to an https server, and its key.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "CUSTOS_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM) of --client-cert.
    #[arg(long, global = true, help_heading = "Global options", env = "CUSTOS_CLIENT_KEY", value_name = "FILE")]
    pub client_key: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a vault: repository, software HSM with a new master key, default volume and policy.
    Init(InitArgs),
    /// Serve the vault: this process alone opens catalog, HSM and volumes;
    /// principals connect with `--server`. See docs/server.md.
    Serve {
        /// The server configuration (TOML; docs/custos-server.sample.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the guided demonstration in a throwaway vault.
    Demo {
        /// Keep the demo vault in this directory instead of a temporary one.
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
    /// Data keys: create, list, show, and move through their lifecycle.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Volumes: places that store chunks and manifests.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Policies: dataset-name patterns → volume and key.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Datasets: write, read, list, inspect, verify, remove, import.
    #[command(subcommand)]
    Ds(DsCmd),
    /// Vault settings (key.naming, chunk.size).
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Master keys: status, load NEW, activate, re-encipher the keystore.
    #[command(subcommand)]
    Mk(MkCmd),
    /// Keystore backups.
    #[command(subcommand)]
    Keystore(KeystoreCmd),
    /// The vault itself: a sealed backup of its catalog and HSM state, and
    /// recovery from one on a fresh machine.
    #[command(subcommand)]
    Vault(VaultCmd),
    /// The catalog's backend: move it between custos.db and PostgreSQL.
    #[command(subcommand)]
    Repo(RepoCmd),
    /// Escrow: a key-backup key split among custodians; every key is sealed to it.
    #[command(subcommand)]
    Escrow(EscrowCmd),
    /// Mirrors: a volume replicated synchronously to another (PPRC).
    #[command(subcommand)]
    Mirror(MirrorCmd),
    /// Snapshots: a dataset's current generation pinned, at metadata cost only.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Risk: which threats each dataset survives (the paper's Table 2 for
    /// this vault), and drills that prove it on a scratch clone.
    #[command(subcommand)]
    Risk(RiskCmd),
    /// Dual-control requests: list, approve (which runs the command) or deny.
    #[command(subcommand)]
    Request(RequestCmd),
    /// Check for what needs attention: keys expiring or unused, keys with no
    /// escrow or keystore backup, datasets on inactive keys. Exits 10 when
    /// it raises an alert.
    Monitor {
        /// Warn of keys expiring within this many days.
        #[arg(long, default_value_t = 30)]
        expiring_days: i64,
        /// Warn of active keys unused for this many days.
        #[arg(long, default_value_t = 90)]
        unused_days: i64,
        /// Print metrics in the Prometheus text format instead.
        #[arg(long)]
        prometheus: bool,
    },
    /// Check every volume against the catalog, changing nothing: objects
    /// the catalog needs that are missing or truncated (with --read-data,
    /// damaged), objects nothing needs (for `gc`), catalog records that
    /// disagree. Exits 4 when something needed is missing or damaged.
    Fsck {
        /// Also read and authenticate every chunk of every generation,
        /// backup and snapshot (needs the passphrase).
        #[arg(long)]
        read_data: bool,
    },
    /// Delete what nothing needs: objects released by replaced generations,
    /// pruned backups and removed snapshots, and what interrupted commands
    /// left, once older than the grace period.
    Gc {
        /// Only say what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// How long released or stray objects are kept first, so commands
        /// still running can finish (default: the setting gc.grace, 24h).
        #[arg(long, value_name = "DURATION")]
        grace: Option<String>,
    },
    /// Principals: who may run commands, with which roles and grants.
    #[command(subcommand)]
    User(UserCmd),
    /// The audit log: every command, chained and signed.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// The catalog's authenticated rows (principals, grants, keys, requests,
    /// settings, volumes, policies, backups…), each MACed under the HSM's
    /// catalog key.
    #[command(subcommand)]
    Catalog(CatalogCmd),
    /// Storage management (DFSMShsm): rules, and `hsm run` to apply them
    /// (backups when data changed, migration of unused datasets to tape).
    #[command(subcommand)]
    Hsm(HsmCmd),
    /// Backup copies: raw (no key, shares the primary's), logical (under a
    /// separate BACK key), or plaintext to tape (`--plaintext`, when the
    /// vault allows it).
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Write a backup back as a new generation of its dataset (or of --as
    /// NAME). A pattern restores every matching dataset that has a backup.
    Restore {
        /// The dataset to restore, or a pattern of datasets.
        dataset: String,
        /// The backup to restore (default: the newest of the dataset, preferring logical copies).
        #[arg(long, conflicts_with_all = ["generation", "at"])]
        backup: Option<u64>,
        /// The newest copy of this generation of the dataset.
        #[arg(long, conflicts_with = "at")]
        generation: Option<u64>,
        /// The newest copy made at or before this time (2026-11-24T12:00:00Z or 2026-11-24).
        #[arg(long)]
        at: Option<String>,
        /// Restore under this name instead.
        #[arg(long = "as", value_name = "NAME")]
        as_name: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum RequestCmd {
    /// List requests, newest first; --limit and --before page through many.
    Ls {
        /// At most N (a page).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        /// Only ids before this one (the last of the previous page).
        #[arg(long, value_name = "ID")]
        before: Option<u64>,
    },
    /// Show one request and the operation it holds, field by field.
    Show {
        /// The id (see the matching `ls`).
        id: u64,
    },
    /// Approve a request made by someone else, and run its operation now.
    Approve {
        /// The request (see `request ls`).
        id: u64,
        /// For an escrow recovery: your sealed share file. Shares come with
        /// the approval, never with the request; on a server each custodian
        /// approves with their own.
        #[arg(long, value_name = "FILE", requires = "key")]
        share: Vec<PathBuf>,
        /// Your custodian key file, to open --share here.
        #[arg(long, value_name = "FILE")]
        key: Vec<PathBuf>,
    },
    /// Deny a request.
    Deny {
        /// The id (see the matching `ls`).
        id: u64,
    },
    /// Take back a pending request of your own.
    Withdraw {
        /// The id (see the matching `ls`).
        id: u64,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum RoleArg {
    SecurityAdmin,
    KeyCustodian,
    StorageAdmin,
    App,
    Auditor,
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Add a principal with one or more roles. Its passphrase comes from
    /// CUSTOS_NEW_CREDENTIAL or a prompt; with --token a random token is
    /// made and printed once, for scripts.
    Add {
        /// The new principal's name.
        name: String,
        /// A role to give it (repeat for more): security-admin, key-custodian, storage-admin, app, auditor.
        #[arg(long = "role", value_enum, required = true)]
        roles: Vec<RoleArg>,
        /// Make a random token for scripts (printed once) instead of asking for a passphrase.
        #[arg(long)]
        token: bool,
    },
    /// List principals, their roles and grants.
    Ls,
    /// Disable a principal (it can no longer run commands).
    Disable {
        /// The principal.
        name: String,
    },
    /// Enable a disabled principal again, with its roles and grants.
    Enable {
        /// The principal.
        name: String,
    },
    /// Remove a principal and its grants (the audit log keeps its name).
    /// The last enabled security-admin and escrow custodians cannot be
    /// removed (disable a custodian instead).
    Rm {
        /// The principal.
        name: String,
    },
    /// Give a principal a new credential: a passphrase from
    /// CUSTOS_NEW_CREDENTIAL or a prompt, or with --token a random token
    /// printed once. Any principal may change its own; a security-admin
    /// anyone's. The old one stops working at once, on every server.
    Credential {
        /// The principal.
        name: String,
        /// Make a random token for scripts instead of a passphrase.
        #[arg(long)]
        token: bool,
    },
    /// Add or remove roles of a principal (`--add app --remove auditor`).
    /// A role change is under dual control when `role-change` is.
    Role {
        /// The principal.
        name: String,
        /// A role to give it (repeat for more).
        #[arg(long = "add", value_enum)]
        add: Vec<RoleArg>,
        /// A role to take away (repeat for more).
        #[arg(long = "remove", value_enum)]
        remove: Vec<RoleArg>,
    },
    /// Grant access to datasets (--data PATTERN) or keys (--key PATTERN).
    Grant(GrantArgs),
    /// Take a grant away.
    Revoke(GrantArgs),
}

/// How many backups of a series to keep: the newest N, and the newest of
/// each of the last N days, months and years.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct RetentionArgs {
    /// Keep the newest N of each series.
    #[arg(long, default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest of each of the last N days.
    #[arg(long, default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep the newest of each of the last N months.
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: u32,
    /// Keep the newest of each of the last N years.
    #[arg(long, default_value_t = 0)]
    pub keep_yearly: u32,
}

impl From<RetentionArgs> for custos_core::Retention {
    fn from(a: RetentionArgs) -> Self {
        Self { last: a.keep_last, daily: a.keep_daily, monthly: a.keep_monthly, yearly: a.keep_yearly }
    }
}

#[derive(clap::Args, Debug)]
pub struct GrantArgs {
    /// The principal.
    pub name: String,
    /// A pattern of dataset names it may read and write (its application's data).
    #[arg(long, required_unless_present = "key", conflicts_with = "key")]
    pub data: Option<String>,
    /// A pattern of key labels it may use.
    #[arg(long)]
    pub key: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum CatalogCmd {
    /// Check every authenticated row against its MAC and list each one
    /// that was written or changed outside Custos. Exits 4 when any was.
    Verify,
    /// Rotate the HSM's catalog key: every row is checked under the old
    /// key and sealed under a new one in one transaction, then the old key
    /// is destroyed. A rotation cut short (a kill) is finished by the next
    /// command that opens the HSM; the catalog verifies throughout.
    RotateKey,
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// List entries (oldest first).
    Ls {
        /// Only entries at or after this time (2026-11-24 or 2026-11-24T12:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only entries of this principal.
        #[arg(long)]
        principal: Option<String>,
        /// Only entries whose object contains this text.
        #[arg(long)]
        object: Option<String>,
        /// At most N entries (a page).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        /// Only entries after this sequence number (the last of the previous page).
        #[arg(long, value_name = "SEQ")]
        after: Option<u64>,
    },
    /// Check the hash chain and every signed checkpoint; name the first
    /// entry that was modified, deleted or moved, or a truncated tail.
    /// Exits 4 when the log was tampered with. With --against, also
    /// compare it with the segments `audit export --to` wrote to a volume:
    /// an entry deleted, cut or changed since is named.
    Verify {
        /// Also compare with the segments exported to this volume.
        #[arg(long, value_name = "VOLUME")]
        against: Option<String>,
    },
    /// Carry on with a catalog older than what the HSM recorded (one
    /// restored from a backup on purpose): opening the HSM refuses such a
    /// catalog until a security-admin accepts it. The commands it lacks are
    /// lost to the vault; the acceptance is audited.
    AcceptRollback,
    /// Write every entry as one JSON object per line, for a SIEM; with
    /// --to, write the entries not yet on that volume there as one segment,
    /// written once (on a tape volume nobody can rewrite it).
    Export {
        /// One JSON object per line on standard output (the default form; kept for scripts that name it).
        #[arg(long)]
        jsonl: bool,
        /// Write the entries not yet on this volume there as one segment.
        #[arg(long, value_name = "VOLUME")]
        to: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ReportFormat {
    Table,
    Json,
    Markdown,
    Html,
}

#[derive(Subcommand, Debug)]
pub enum RiskCmd {
    /// Per dataset and per application: each threat's verdict (survives,
    /// lost, survives if a key is recovered), the copy that saves it or the
    /// reason nothing does; then the recoverability audit and findings.
    Report {
        /// Only datasets whose names match this pattern (`*` within a qualifier, `%` one character, `**` any qualifiers); default: all
        pattern: Option<String>,
        /// Every pair of threats striking together, too.
        #[arg(long)]
        dual: bool,
        /// Look this far ahead (e.g. 90d): name retention rules whose copies
        /// would not reach back that far when a bad write is noticed late,
        /// and keys due for destruction before then that copies still need.
        #[arg(long, value_name = "DURATION")]
        horizon: Option<String>,
        /// Judge the vault as if nothing were encrypted (the paper's Table 1):
        /// no copy needs a key, and only the threats to data are judged.
        #[arg(long)]
        as_if_unencrypted: bool,
        /// table (terminal), json, markdown, or html (one page, as the console shows it).
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
        /// Write the report to this file instead of standard output.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// Clone the vault into a scratch directory, apply each threat for real,
    /// recover with the normal operations, and compare with the model.
    /// Exits 1 when the model and reality disagree (an analyzer defect).
    Drill {
        /// Only datasets whose names match this pattern (`*` within a qualifier, `%` one character, `**` any qualifiers); default: all
        pattern: Option<String>,
        /// One threat (file-corruption, malicious-corruption,
        /// accidental-deletion, disk-failure, site-loss, data-key-loss,
        /// master-key-loss, keystore-loss, catalog-loss, hsm-loss).
        #[arg(long, conflicts_with = "all")]
        threat: Option<String>,
        /// Every threat.
        #[arg(long)]
        all: bool,
        /// Every pair of threats as well.
        #[arg(long)]
        dual: bool,
        /// Custodians' sealed share files, for cells that rely on escrow
        /// (embedded mode).
        #[arg(long, requires = "key")]
        share: Vec<PathBuf>,
        /// Custodian key files that open --share.
        #[arg(long)]
        key: Vec<PathBuf>,
        /// Where the clones go (default: a temporary directory).
        #[arg(long)]
        scratch: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum HsmCmd {
    /// Apply every rule once; idempotent, for cron. Backs up each dataset
    /// whose current generation has no copy yet, prunes by the rule's
    /// retention, and migrates datasets unused for the rule's days to tape.
    /// Logical copies need the passphrase; --without-keys skips them.
    Run {
        /// Show what would be done, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Run without the passphrase: raw copies, pruning and migration only.
        #[arg(long)]
        without_keys: bool,
    },
    /// Rules: which datasets are backed up where, kept how long, migrated when.
    #[command(subcommand)]
    Rule(HsmRuleCmd),
    /// Migrate one dataset to a tape volume now (no key needed).
    Migrate {
        /// The dataset to migrate.
        dataset: String,
        /// The tape volume to migrate it to.
        #[arg(long)]
        to: String,
    },
    /// Recall a migrated dataset to its volume now (a read recalls it too).
    Recall {
        /// The migrated dataset.
        dataset: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum HsmRuleCmd {
    /// Add a rule for the datasets matching --pattern (the most specific rule wins).
    Add {
        /// The rule's name.
        name: String,
        /// The datasets it covers: a pattern of names (the most specific rule wins).
        #[arg(long)]
        pattern: String,
        /// Back up each change to this volume.
        #[arg(long)]
        backup_to: Option<String>,
        /// How backups are made: logical (re-sealed under a BACK key) or raw (ciphertext, the primary's key).
        #[arg(long, value_enum, default_value = "logical")]
        method: MethodArg,
        #[command(flatten)]
        keep: RetentionArgs,
        /// Migrate datasets unused for this many days (0: at every run)...
        #[arg(long)]
        migrate_after_days: Option<u32>,
        /// ...to this tape volume.
        #[arg(long)]
        migrate_to: Option<String>,
    },
    /// List rules.
    Ls,
    /// Remove a rule.
    Rm {
        /// The principal.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum MirrorCmd {
    /// Mirror PRIMARY to SECONDARY: copy what PRIMARY holds, then every
    /// write goes to both. Deletions replicate too. Needs no passphrase.
    Add {
        /// The volume to mirror.
        primary: String,
        /// The volume that receives every write too.
        secondary: String,
    },
    /// List mirrors.
    Ls,
    /// Check each secondary against what the catalog records on its primary.
    Status,
    /// Stop mirroring a volume (the secondary keeps what it has).
    Rm {
        /// The mirrored volume.
        primary: String,
    },
}

/// A page of a listing by id: `--limit N --after ID`.
#[derive(Args, Debug, Clone, Copy)]
pub struct IdPage {
    /// At most N (a page).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// Only ids after this one (the last of the previous page).
    #[arg(long, value_name = "ID")]
    pub after: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Pin the current generation of a dataset. Needs no passphrase.
    Create {
        /// The dataset to pin.
        dataset: String,
    },
    /// List snapshots, optionally of datasets matching a pattern, by id;
    /// --limit and --after page through many.
    Ls {
        /// Only datasets whose names match this pattern (`*` within a qualifier, `%` one character, `**` any qualifiers); default: all
        pattern: Option<String>,
        #[command(flatten)]
        page: IdPage,
    },
    /// Remove a snapshot (and the chunks only it kept).
    Rm {
        /// The snapshot (see `snapshot ls`).
        id: u64,
    },
    /// Write a snapshot back as the dataset's newest generation (or as --as NAME).
    Restore {
        /// The snapshot (see `snapshot ls`).
        id: u64,
        /// Restore under this dataset name instead.
        #[arg(long = "as", value_name = "NAME")]
        as_name: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum MethodArg {
    Logical,
    Raw,
}

#[derive(Subcommand, Debug)]
pub enum BackupCmd {
    /// Copy the current generation of every dataset matching PATTERN (default: all).
    Run {
        /// Only datasets whose names match this pattern (`*` within a qualifier, `%` one character, `**` any qualifiers); default: all
        pattern: Option<String>,
        /// logical (re-sealed under a separate BACK key; survives loss of the data key) or raw (the sealed bytes as they are; needs no key, shares the primary's).
        #[arg(long, value_enum, default_value = "logical")]
        method: MethodArg,
        /// The volume to copy to (another site's, for site loss).
        #[arg(long)]
        to: String,
        /// The BACK key for logical copies (default: by the naming standard).
        #[arg(long, conflicts_with = "plaintext")]
        key: Option<String>,
        /// Write the logical copy unencrypted, to a tape volume: it survives
        /// the loss of every key, and whoever holds the tape reads it.
        /// Refused unless `custos config set backup.plaintext allow`.
        #[arg(long)]
        plaintext: bool,
    },
    /// List backups, optionally of datasets matching a pattern, by id;
    /// --limit and --after page through many.
    Ls {
        /// Only datasets whose names match this pattern (`*` within a qualifier, `%` one character, `**` any qualifiers); default: all
        pattern: Option<String>,
        #[command(flatten)]
        page: IdPage,
    },
    /// Show one backup.
    Show {
        /// The backup (see `backup ls`).
        id: u64,
    },
    /// Apply a retention policy to each series (dataset, method, volume) and
    /// delete the backups it does not keep, with the chunks only they used.
    /// The newest backup of a series is always kept. Needs no passphrase.
    Prune {
        /// Only datasets whose names match this pattern (`*` within a qualifier, `%` one character, `**` any qualifiers); default: all
        pattern: Option<String>,
        #[command(flatten)]
        keep: RetentionArgs,
        /// Show what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check backups: each manifest is the one recorded and opens; with
    /// --read-data every chunk opens too. Exits non-zero if any is damaged.
    Verify {
        /// Only datasets whose names match this pattern (`*` within a qualifier, `%` one character, `**` any qualifiers); default: all
        pattern: Option<String>,
        /// Open and check every chunk too, not only each manifest.
        #[arg(long)]
        read_data: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum EscrowCmd {
    /// Make your own custodian key pair, on your own machine: the private
    /// half goes to --out sealed under a passphrase (CUSTOS_CUSTODIAN_PASSPHRASE,
    /// or asked for); the recipient printed is what you register. Needs no vault.
    Keygen {
        /// The key file to create (it must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Your user name (default: --user).
        #[arg(long)]
        custodian: Option<String>,
        /// Argon2id memory for the passphrase, in MiB (at least 19).
        #[arg(long, default_value_t = 64)]
        kdf_memory_mib: u32,
        /// Argon2id passes (at least 2).
        #[arg(long, default_value_t = 3)]
        kdf_iterations: u32,
    },
    /// Register your recipient (from `escrow keygen`): shares are sealed to it.
    Register {
        /// The recipient text, or the key file that names it.
        recipient: String,
    },
    /// Create a key-backup key split THRESHOLD-of-n among the custodians
    /// (users who registered a recipient), seal each share to its
    /// custodian, and escrow every existing key. The key-backup key itself
    /// is never stored and no share is ever in the clear outside its
    /// custodian's machine.
    Init {
        /// A custodian's user name; give one per custodian (at least two).
        #[arg(long = "custodian", required = true)]
        custodians: Vec<String>,
        /// How many custodians' shares recover a key (at least 2, at most the custodians).
        #[arg(long)]
        threshold: u8,
    },
    /// Fetch your share, sealed to your recipient (safe to store anywhere).
    Share {
        /// Which key-backup key (default: the one in use).
        #[arg(long)]
        kbk: Option<String>,
        /// Write it to this new file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Open your sealed share with your key, here, and show the server it
    /// opens (nothing secret is sent).
    Confirm {
        /// Your sealed share file (from `escrow share`).
        #[arg(long)]
        share: PathBuf,
        /// Your key file (from `escrow keygen`).
        #[arg(long)]
        key: PathBuf,
    },
    /// Key-backup keys, and which keys have no escrow copy.
    Status,
    /// Erase a key's escrow copy (after `key destroy --crypto-erase`, to erase it everywhere).
    Purge {
        /// The key whose escrow copy to erase.
        label: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeystoreCmd {
    /// Copy every key (wrapped, with the MKVP of its master key) to a volume.
    Backup {
        /// The volume to write the keystore backup to.
        #[arg(long)]
        to: String,
    },
    /// List keystore backups and the master keys each depends on.
    Backups,
}

#[derive(Subcommand, Debug)]
pub enum VaultCmd {
    /// Write the catalog (a consistent copy) and the HSM's state, sealed,
    /// to a volume at another site: what brings the vault back after the
    /// loss of its directory.
    Backup {
        /// The volume to write the vault backup to (at another site than the vault).
        #[arg(long)]
        to: String,
    },
    /// List the vault backups this catalog records.
    Backups,
    /// Retention for vault backups: on each volume keep the newest N (and
    /// the newest of each of the last N days, months, years) and delete the
    /// rest. The newest on each volume is always kept.
    Prune {
        #[command(flatten)]
        keep: RetentionArgs,
        /// Show what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Bring the vault back into the new directory --vault from the newest
    /// vault backup at LOCATION (a volume's directory, or s3://bucket/prefix),
    /// with the HSM's passphrase, or, for a vault whose keys are on a
    /// PKCS#11 token, with --pkcs11 and the token's PIN. Volumes that lived
    /// inside the lost vault directory come back empty: restore what they
    /// held from backups.
    Recover {
        /// Where the vault backups are: a volume's directory or s3://bucket/prefix.
        #[arg(long)]
        from: String,
        /// The vault's keys are on a PKCS#11 token (named in the backup):
        /// open it with its PIN (CUSTOS_PKCS11_PIN or --pin-file).
        #[arg(long)]
        pkcs11: bool,
        /// The PKCS#11 module on this machine, if not where the lost vault
        /// had it.
        #[arg(long, value_name = "PATH", requires = "pkcs11")]
        pkcs11_module: Option<PathBuf>,
        /// The PKCS#11 module's initialisation string, if it needs one
        /// (NSS's softoken: "configdir='sql:/path'").
        #[arg(long, value_name = "TEXT", requires = "pkcs11")]
        pkcs11_init_args: Option<String>,
    },
    /// The software HSM is lost (its file, or its row in the catalog) and
    /// no vault backup holds it: make a new HSM (a new master key, under
    /// the passphrase given) and recover every escrowed key into it with a
    /// threshold of custodians' shares. Says which keys had no escrow copy
    /// and which datasets that costs.
    Rebuild {
        /// A sealed share file (as many as the threshold).
        #[arg(long, required_unless_present = "part", conflicts_with = "part")]
        share: Vec<PathBuf>,
        /// Custodian key files that open --share.
        #[arg(long, required_unless_present = "part", conflicts_with = "part")]
        key: Vec<PathBuf>,
        /// Instead of escrow: a custodian's part of the lost master key
        /// (from `mk make-part`), one per custodian; the same master key
        /// comes back, and every key under it.
        #[arg(long)]
        part: Vec<PathBuf>,
        /// Argon2id memory for the new HSM's passphrase, in MiB (at least 19).
        #[arg(long, default_value_t = 64)]
        kdf_memory_mib: u32,
        /// Argon2id passes for it (at least 2).
        #[arg(long, default_value_t = 3)]
        kdf_iterations: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum MkCmd {
    /// The registers, their MKVPs, when each was set, and the keys under each.
    Status,
    /// Write a random key part for one custodian, with its check value, to a new file.
    MakePart {
        /// The custodian the part is for.
        #[arg(long)]
        custodian: String,
        /// The file to write the part to (it must not exist).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Load the NEW register: generated in the HSM, or combined from the
    /// parts of at least two custodians.
    LoadNew {
        /// Generate the new master key inside the HSM.
        #[arg(long, conflicts_with = "part")]
        generate: bool,
        /// A custodian's part file (from `mk make-part`); give one per custodian.
        #[arg(long, value_name = "FILE")]
        part: Vec<PathBuf>,
        /// Refuse unless the combined key has this MKVP.
        #[arg(long, value_name = "MKVP")]
        expect_mkvp: Option<String>,
    },
    /// Empty the NEW register.
    ClearNew,
    /// NEW → CURRENT → OLD (the previous OLD is discarded). Refused while
    /// keys are still wrapped under that OLD key.
    Activate,
    /// Re-wrap every key under OLD to CURRENT. Safe to interrupt and re-run.
    Reencipher {
        /// Keys per transaction.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Site of the default volume.
    #[arg(long, default_value = "primary")]
    pub site: String,
    /// Put the default volume here (an absolute path) rather than inside
    /// the vault directory: on another disk, or with --site at another
    /// site, the data outlives the loss of the vault directory.
    #[arg(long, value_name = "PATH")]
    pub volume: Option<PathBuf>,
    /// Argon2id memory for the HSM passphrase, in MiB (8..4096).
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub kdf_memory_mib: u32,
    /// Argon2id passes for the HSM passphrase.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub kdf_iterations: u32,
    /// The HSM that holds the master keys.
    #[arg(long, value_enum, default_value = "soft")]
    pub hsm: HsmArg,
    /// PKCS#11 module (with --hsm pkcs11).
    #[arg(long, default_value = "/usr/lib/softhsm/libsofthsm2.so", value_name = "PATH")]
    pub pkcs11_module: PathBuf,
    /// Label of the PKCS#11 token (with --hsm pkcs11).
    #[arg(long, value_name = "LABEL", required_if_eq("hsm", "pkcs11"))]
    pub pkcs11_token: Option<String>,
    /// The PKCS#11 module's initialisation string, passed to C_Initialize
    /// (NSS's softoken: "configdir='sql:/path'"); recorded with the vault
    /// for every later opening.
    #[arg(long, value_name = "TEXT")]
    pub pkcs11_init_args: Option<String>,
    /// The token holds another vault's master keys, and that vault is gone
    /// for good: take its master keys over (keystore backups wrapped under
    /// them can then be read with `key recover --from`), destroying its
    /// audit anchor and catalog key. Without it such a token is refused.
    #[arg(long)]
    pub pkcs11_adopt: bool,
    /// Keep the catalog on PostgreSQL (an empty database at this address,
    /// `postgres://user@host/db`) rather than in custos.db; the vault
    /// directory records the address in its owner-only file `repository`.
    #[arg(long, value_name = "URL")]
    pub repository: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum RepoCmd {
    /// Move the catalog to an empty PostgreSQL database (--to
    /// postgres://user@host/database) or back into custos.db (--to sqlite).
    /// The catalog verifies first (every row's MAC, the audit chain); the
    /// copy must verify the same way and hold the same rows before the vault
    /// switches; the old catalog is kept beside it. Stop every server and
    /// command on the vault first; run it on the vault's machine, as a
    /// security-admin, with the HSM's passphrase or PIN.
    Migrate {
        /// postgres://user@host/database, or sqlite for custos.db.
        #[arg(long, value_name = "URL|sqlite")]
        to: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum HsmArg {
    /// The software HSM in the vault, sealed under a passphrase.
    Soft,
    /// A PKCS#11 token (SoftHSM2 in tests, a real HSM in production).
    Pkcs11,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PurposeArg {
    #[value(name = "PRIM", alias = "prim")]
    Prim,
    #[value(name = "BACK", alias = "back")]
    Back,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum MediumArg {
    Disk,
    Tape,
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Generate a key in the HSM. Give a LABEL that follows the naming
    /// standard, or --app to take the application's next label.
    Create {
        /// The new key's label (by the naming standard, e.g. DSET.PRIM.PAY.key001).
        label: Option<String>,
        /// Take the application's next label by the naming standard instead of giving one.
        #[arg(long)]
        app: Option<String>,
        /// PRIM (seals datasets) or BACK (seals logical backups).
        #[arg(long, value_enum, default_value = "PRIM")]
        purpose: PurposeArg,
        /// Expiry: a date (2027-01-31), a timestamp (2027-01-31T12:00:00Z) or days from now (90d).
        #[arg(long)]
        expires: Option<String>,
        /// Activate at once (otherwise the key starts pre-active).
        #[arg(long)]
        activate: bool,
        /// Create this many keys for --app in one transaction (all or none).
        #[arg(long, requires = "app", conflicts_with = "label")]
        count: Option<u32>,
    },
    /// List keys, optionally those whose label matches a pattern, in label
    /// order; --limit and --after page through a large keystore.
    Ls {
        /// Only keys whose labels match this pattern; default: all.
        pattern: Option<String>,
        /// At most N keys (a page).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        /// Only keys after this label (the last one of the previous page).
        #[arg(long, value_name = "LABEL")]
        after: Option<String>,
    },
    /// Show one key (never its material).
    Show {
        /// The key's label.
        label: String,
    },
    /// pre-active or inactive → active. LABEL may be a pattern (`'DSET.PRIM.app1.*'`): every
    /// matching key, each audited; --dry-run shows what would change.
    Activate {
        /// A key's label, or a pattern of labels.
        label: String,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// active → inactive (decrypt only). LABEL may be a pattern (`'DSET.PRIM.app1.*'`): every
    /// matching key, each audited; --dry-run shows what would change.
    Deactivate {
        /// A key's label, or a pattern of labels.
        label: String,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// inactive → archived (unusable until restored). LABEL may be a pattern (`'DSET.PRIM.app1.*'`): every
    /// matching key, each audited; --dry-run shows what would change.
    Archive {
        /// A key's label, or a pattern of labels.
        label: String,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// archived → inactive. LABEL may be a pattern (`'DSET.PRIM.app1.*'`): every
    /// matching key, each audited; --dry-run shows what would change.
    Restore {
        /// A key's label, or a pattern of labels.
        label: String,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Revoke a key, with KMIP's reasons: `key-compromise` (or
    /// `ca-compromise`) makes it compromised (it decrypts what exists,
    /// never encrypts, and can only be destroyed); any other reason
    /// deactivates it. The reason is kept with the key.
    Revoke {
        /// The key's label.
        label: String,
        /// Why (KMIP's revocation reasons).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(custos_core::REVOCATION_REASONS))]
        reason: String,
        /// A sentence kept with the reason.
        #[arg(long)]
        message: Option<String>,
    },
    /// Restore keys (a label or pattern) from a keystore backup into the
    /// live keystore, re-wrapped under the CURRENT master key.
    Recover {
        /// A label, or with --from a pattern.
        pattern: String,
        /// The backup id (see `custos keystore backups`).
        #[arg(long, required_unless_present = "escrow", conflicts_with = "escrow")]
        from: Option<String>,
        /// Recover from the key's escrow copy with custodians' shares.
        #[arg(long)]
        escrow: bool,
        /// A sealed share file. In embedded mode give as many as the
        /// threshold needs; on a server give your own, and the other
        /// custodians approve the request with theirs.
        #[arg(long, value_name = "FILE", requires = "key")]
        share: Vec<PathBuf>,
        /// Custodian key files that open --share.
        #[arg(long, value_name = "FILE")]
        key: Vec<PathBuf>,
    },
    /// Erase the key's material for good. Refused while datasets need it,
    /// unless --crypto-erase says to make them unreadable on purpose.
    Destroy {
        /// The key to destroy.
        label: String,
        /// Destroy it although datasets still need it, making them unreadable on purpose (crypto-erase).
        #[arg(long)]
        crypto_erase: bool,
        /// How long to wait before erasing (default: setting
        /// key.destroy.wait, 7d), at least key.destroy.min-wait. Until then
        /// the key cannot be used and `key cancel-destroy` brings it back.
        #[arg(long, value_name = "DURATION")]
        wait: Option<String>,
    },
    /// Take a key off the destruction schedule.
    CancelDestroy {
        /// The key to take off the schedule.
        label: String,
    },
    /// Key service: seal standard input (at most 64 KiB) under a key; prints
    /// the ciphertext in base64. The context pairs must be given again to decrypt.
    Encrypt {
        /// The key to seal under.
        label: String,
        /// An encryption context pair, bound to the ciphertext (repeat).
        #[arg(long = "context", value_name = "KEY=VALUE")]
        context: Vec<String>,
    },
    /// Key service: open a ciphertext (base64, on standard input); prints
    /// the plaintext in base64.
    Decrypt {
        /// The encryption context pairs given when it was sealed (repeat).
        #[arg(long = "context", value_name = "KEY=VALUE")]
        context: Vec<String>,
    },
    /// Key service: a new data key, in the clear and sealed under LABEL.
    Datakey {
        /// The key that seals the data key.
        label: String,
        /// The data key's length in bytes.
        #[arg(long, default_value_t = 32)]
        bytes: u8,
        /// An encryption context pair, bound to the sealed data key (repeat).
        #[arg(long = "context", value_name = "KEY=VALUE")]
        context: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum VolumeCmd {
    /// Add a volume: a directory (created if missing), or for the tape
    /// tier an S3 bucket and prefix (`--url s3://bucket/prefix`; endpoint
    /// and region from `config set s3.*` or AWS_ENDPOINT_URL / AWS_REGION,
    /// credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY). Tape
    /// volumes live on object storage and are written once.
    Add {
        /// The new volume's name.
        name: String,
        /// Its directory (created if missing).
        #[arg(long, required_unless_present = "url", conflicts_with = "url")]
        path: Option<PathBuf>,
        /// `s3://bucket/prefix` (implies --medium tape).
        #[arg(long)]
        url: Option<String>,
        /// The site it is at (a data centre or building): the risk model counts copies per site.
        #[arg(long)]
        site: String,
        /// disk, or tape (written once; what object storage holds).
        #[arg(long, value_enum)]
        medium: Option<MediumArg>,
    },
    /// List volumes.
    Ls,
    /// Forget a volume that nothing refers to (no dataset, copy, policy,
    /// mirror, rule, keystore or vault backup, nor trash); refused with a
    /// list of what does. Its directory or bucket is left as it is.
    Rm {
        /// The volume (see `volume ls`).
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Map a dataset-name pattern to a volume and a key (or a key template).
    Add {
        /// The new policy's name.
        name: String,
        /// Dataset-name pattern: `*` within a qualifier, `%` one character, `**` any qualifiers.
        #[arg(long)]
        pattern: String,
        /// The volume matching datasets are stored on.
        #[arg(long)]
        volume: String,
        /// Seal matching datasets under this existing key.
        #[arg(long, conflicts_with = "template")]
        key: Option<String>,
        /// Create a new key per dataset by the naming standard.
        #[arg(long)]
        template: bool,
        /// Application for template keys (default: the dataset's first qualifier).
        #[arg(long, requires = "template")]
        app: Option<String>,
    },
    /// List policies.
    Ls,
    /// Remove a policy.
    Rm {
        /// The policy to remove.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DsCmd {
    /// Write a new generation of a dataset from FILE (or standard input).
    Put {
        /// The dataset (qualifiers separated by dots, e.g. PAYROLL.MASTER).
        name: String,
        /// The file to store; - (the default) for standard input.
        #[arg(default_value = "-")]
        file: PathBuf,
        /// Seal under this key instead of the policy's.
        #[arg(long)]
        key: Option<String>,
        /// Store on this volume instead of the policy's.
        #[arg(long)]
        volume: Option<String>,
    },
    /// Read a dataset to standard output or a file.
    Get {
        /// The dataset.
        name: String,
        /// Write here (atomically: a temporary file renamed into place).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Only bytes START..END (END exclusive; either may be left out).
        #[arg(long, value_name = "START..END")]
        range: Option<String>,
    },
    /// List datasets, optionally those matching a pattern, in name order;
    /// --limit and --after page through many.
    Ls {
        /// Only datasets whose names match this pattern (`*` within a qualifier, `%` one character, `**` any qualifiers); default: all
        pattern: Option<String>,
        /// At most N datasets (a page).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        /// Only datasets after this name (the last one of the previous page).
        #[arg(long, value_name = "NAME")]
        after: Option<String>,
    },
    /// Show a dataset, its key and volume.
    Info {
        /// The dataset.
        name: String,
    },
    /// Remove a dataset and the chunks only it used.
    Rm {
        /// The dataset to remove.
        name: String,
    },
    /// Read every chunk of a dataset and check it, writing nothing.
    Verify {
        /// The dataset to check.
        name: String,
    },
    /// Import a directory tree: each file becomes PREFIX.<path qualifiers>.
    Import {
        /// The directory whose files to import.
        dir: PathBuf,
        /// The qualifiers every imported name starts with (PREFIX.<path qualifiers>).
        #[arg(long)]
        prefix: String,
        /// Write new generations of datasets that already exist.
        #[arg(long)]
        replace: bool,
        /// Skip (and list) entries that are not regular files: symbolic
        /// links (never followed), FIFOs, sockets, devices. Without it
        /// such an entry refuses the import.
        #[arg(long)]
        skip_other: bool,
    },
    /// Write every dataset PREFIX or PREFIX.<qualifiers> below DIR as a
    /// file DIR/<qualifiers as a path>, as `ds import` named them; many at
    /// once, checked before anything is written.
    Export {
        /// The datasets to write: PREFIX and every PREFIX.<qualifiers>.
        prefix: String,
        /// The directory to write them under.
        dir: PathBuf,
        /// Overwrite files that exist already.
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// List settings.
    Ls,
    /// Show one setting.
    Get {
        /// The setting (`custos config set --help` lists them).
        key: String,
    },
    /// Change a setting. The settings:
    ///   key.naming TEMPLATE          labels of new keys (default DSET.{purpose}.{app}.key{NNN});
    ///   chunk.size BYTES             65536 to 67108864 (default 1048576);
    ///   compression lz4|none         compress chunks before sealing (default lz4);
    ///   s3.endpoint URL, s3.region NAME   the tape tier's object store;
    ///   key.destroy.wait DURATION    the default wait before a destruction (7d);
    ///   key.destroy.min-wait DURATION  the shortest wait anyone may give;
    ///   dual-control LIST|all|none   actions that need a second principal (key-destroy,
    ///     key-recover, mk-activate, policy-change, escrow-recover, role-change,
    ///     escrow-change, data-removal, key-archive, volume-change);
    ///   request.ttl DURATION         how long a request waits for approval (24h);
    ///   gc.grace DURATION            how long released objects are kept before gc (24h);
    ///   backup.plaintext allow|refuse  whether unencrypted copies to tape may be made
    ///     (`backup run --plaintext`; default refuse).
    #[command(verbatim_doc_comment)]
    Set {
        /// The setting.
        key: String,
        /// Its new value.
        value: String,
    },
}

/// `--threads`: 1 to 4 per core (at least 16, at most 256): each worker
/// holds chunk buffers, so an absurd count would exhaust memory.
fn threads(s: &str) -> Result<usize, String> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let max = (4 * cores).clamp(16, 256);
    match s.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("give a whole number from 1 to {max} (4 per core, at most 256)")),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command says what it does, and every argument and flag of
    /// every command says what it is: `--help` never shows a bare name.
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let p = format!("{path} {}", sub.get_name());
                if sub.get_name() != "help" && sub.get_about().is_none() && sub.get_long_about().is_none() {
                    missing.push(format!("{p} (the command)"));
                }
                walk(sub, &p, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "custos", &mut missing);
        assert!(missing.is_empty(), "no help for: {}", missing.join(", "));
    }
}
