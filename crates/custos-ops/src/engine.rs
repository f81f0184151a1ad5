//! The boundary every front end goes through: [`Engine::execute`]
//! authenticates nothing itself (a [`Caller`] comes from [`Engine::login`]),
//! then, in this order and in this one place: refuses what the deployment
//! may not take (a path, in server mode), opens the HSM in embedded mode
//! when the operation may change a row its catalog key seals (re-reading
//! the caller's principal, checked), checks the rights table, turns a
//! controlled operation into a dual-control request, appends the audit
//! intent, runs the operation, and appends its outcome.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Mutex, OnceLock};

use custos_core::model::{KeyLabel, Op, PrincipalRecord};
use custos_core::{Open, Passphrase, Sealed, ShareFile, Vault};

use crate::error::{Error, Result};
use crate::operation::{NewCredential, Operation};
use crate::reply::Reply;
use crate::requests::{self, RequestView};
use crate::rights;
use crate::SecretText;

/// How long after a key's destruction a server's catalog may still hold
/// its wrapped material in the write-ahead log (the answer does not wait
/// for the checkpoint; destructions within it share one). A command run
/// on its own checkpoints before it answers.
pub const ERASE_LAG: std::time::Duration = std::time::Duration::from_millis(100);

/// How long a server may go on using a principal (its roles, grants,
/// credential, disabled or not) or a setting it read, when the change was
/// made by another process on the same catalog (a command run with the
/// vault open, not through this server). A change made through the server
/// applies to the next request whatever this is (ADR 0038).
pub const READ_CACHE_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// How the engine is deployed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// In the caller's own process (`--vault DIR`): whoever holds the
    /// passphrase is every role.
    Embedded,
    /// In `custos serve`: principals reach it over a socket and never hold
    /// the passphrase; paths from clients are refused.
    Server,
}

/// Who is acting.
#[derive(Clone)]
pub enum Caller {
    /// An authenticated principal.
    Principal(PrincipalRecord),
    /// A vault made before principals existed: the name is a claim, and
    /// the audit log says so.
    Unverified(String),
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Caller({})", self.name())
    }
}

impl Caller {
    /// The name the audit log records.
    pub fn name(&self) -> String {
        match self {
            Caller::Principal(p) => p.name.clone(),
            Caller::Unverified(n) => format!("{n} (unverified)"),
        }
    }

    pub fn principal(&self) -> Option<&PrincipalRecord> {
        match self {
            Caller::Principal(p) => Some(p),
            Caller::Unverified(_) => None,
        }
    }
}

/// An opened HSM, and the passphrase that opened it when a drill will need
/// it again (a drill opens a clone of the software HSM file).
pub struct Unlocked {
    pub vault: Vault<Open>,
    pub passphrase: Option<Passphrase>,
}

type Unlocker = Box<dyn Fn(&Vault<Sealed>) -> custos_core::Result<Unlocked> + Send + Sync>;

/// The data an operation streams.
#[derive(Default)]
pub struct Io<'a> {
    pub input: Option<&'a mut dyn Read>,
    pub output: Option<&'a mut dyn Write>,
}

/// What `execute` returns: the result, and warnings for standard error.
#[derive(Debug)]
pub struct Outcome {
    pub reply: Reply,
    pub warnings: Vec<String>,
}

pub struct Engine {
    pub(crate) vault: Vault<Sealed>,
    open: OnceLock<Vault<Open>>,
    passphrase: Mutex<Option<Passphrase>>,
    unlock: Option<Unlocker>,
    pub(crate) mode: Mode,
    /// Where volumes may live (server mode): directories and URL prefixes.
    volume_roots: Option<Vec<String>>,
    /// When due destructions were last carried out.
    due_checked: Mutex<Option<std::time::Instant>>,
    /// Shares custodians have given towards pending escrow recoveries (server
    /// mode), by request: kept in memory only, never stored, so a restart
    /// asks the custodians again.
    contributions: Mutex<HashMap<u64, Vec<ShareFile>>>,
}

impl Engine {
    /// An engine in the caller's process. `unlock` opens the HSM the first
    /// time an operation needs a key (it may ask for the passphrase).
    pub fn embedded(
        vault: Vault<Sealed>,
        unlock: impl Fn(&Vault<Sealed>) -> custos_core::Result<Unlocked> + Send + Sync + 'static,
    ) -> Self {
        Self {
            vault,
            open: OnceLock::new(),
            passphrase: Mutex::new(None),
            unlock: Some(Box::new(unlock)),
            mode: Mode::Embedded,
            volume_roots: None,
            due_checked: Mutex::new(None),
            contributions: Mutex::new(HashMap::new()),
        }
    }

    /// An engine that owns an opened vault (the server). Its catalog takes
    /// destroyed keys' wrapped material out of the write-ahead log within
    /// [`ERASE_LAG`] of each destruction, one checkpoint for all of them.
    pub fn server(open: Vault<Open>, passphrase: Option<Passphrase>) -> Self {
        open.set_erase_lag(ERASE_LAG);
        open.set_read_cache(READ_CACHE_AGE);
        let vault = open.sealed_view();
        let cell = OnceLock::new();
        let _ = cell.set(open);
        Self {
            vault,
            open: cell,
            passphrase: Mutex::new(passphrase),
            unlock: None,
            mode: Mode::Server,
            volume_roots: Some(Vec::new()),
            due_checked: Mutex::new(None),
            contributions: Mutex::new(HashMap::new()),
        }
    }

    /// Let volumes live under these directories and URL prefixes too (the
    /// vault directory is always allowed). A server refuses every other
    /// location: a client never chooses where the server writes.
    pub fn allow_volume_roots(&mut self, roots: Vec<String>) {
        self.volume_roots = Some(roots);
    }

    fn volume_allowed(&self, location: &str) -> bool {
        let Some(roots) = &self.volume_roots else { return true };
        let path = std::path::Path::new(location);
        let under = |root: &str| {
            if root.contains("://") {
                location.starts_with(root)
            } else {
                path.starts_with(root)
            }
        };
        !path.components().any(|c| c == std::path::Component::ParentDir)
            && (path.starts_with(self.vault.dir()) || roots.iter().any(|r| under(r)))
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The vault, sealed view (catalog and volumes).
    pub fn vault(&self) -> &Vault<Sealed> {
        &self.vault
    }

    /// The vault with its HSM open, opening it first if need be.
    pub(crate) fn open(&self) -> Result<&Vault<Open>> {
        self.open_accepting(false)
    }

    /// [`Engine::open`]; with `accept`, a catalog older than the HSM's
    /// anchor is accepted (`audit accept-rollback`) rather than refused.
    pub(crate) fn open_accepting(&self, accept: bool) -> Result<&Vault<Open>> {
        if let Some(v) = self.open.get() {
            if accept {
                v.audit_arm(true)?;
            }
            return Ok(v);
        }
        let unlock = self.unlock.as_ref().ok_or_else(|| {
            Error::Usage("the HSM of this vault is not open here, and this operation needs it".into())
        })?;
        let u = unlock(&self.vault)?;
        // Whoever opens the HSM checks the catalog against the HSM's anchor
        // (a rolled-back catalog is refused), keys the audit log from then
        // on, and signs its head.
        u.vault.audit_arm(accept)?;
        if u.passphrase.is_some() {
            *self.passphrase.lock().unwrap_or_else(|e| e.into_inner()) = u.passphrase;
        }
        Ok(self.open.get_or_init(|| u.vault))
    }

    /// The passphrase the software HSM was opened with (for drills).
    pub(crate) fn passphrase(&self) -> Option<Passphrase> {
        self.passphrase
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|p| Passphrase::new(p.expose_secret().to_vec()))
    }

    /// Authenticate `name`. A failure is audited (the name marked
    /// unverified) and says nothing about why.
    pub fn login(&self, name: &str, secret: &Passphrase) -> Result<Caller> {
        match self.vault.authenticate(name, secret) {
            Ok(p) => Ok(Caller::Principal(p)),
            Err(e) => {
                let _ = self.vault.audit_append(&format!("{name} (unverified)"), "login", "", &format!("failed: {e}"));
                Err(e.into())
            }
        }
    }

    /// Whether the vault has principals (a vault made before governance
    /// has none, and runs without logins until the first is added).
    pub fn needs_login(&self) -> Result<bool> {
        Ok(self.vault.has_users()?)
    }

    /// Whether `execute` would refuse `op` for `who` before doing anything
    /// (rights, a path or volume location the deployment does not take, a
    /// dataset that does not exist to be read). Changes and audits nothing:
    /// a server calls it before it commits to streaming a response, and on
    /// a refusal runs `execute`, which audits it.
    pub fn preflight(&self, who: &Caller, op: &Operation) -> Result<()> {
        if self.mode == Mode::Server && op.names_a_local_path() {
            return Err(Error::Usage("a path on the server's machine".into()));
        }
        if let Some(p) = who.principal() {
            rights::check(self, p, op)?;
        }
        if let Operation::DsGet { name, range } = op {
            self.vault.check_readable(name)?;
            let size = self.vault.dataset(name)?.current.size;
            if let Some(r) = range {
                let (start, end) = (r.start.unwrap_or(0), r.end.unwrap_or(size));
                if start > end || end > size {
                    return Err(custos_core::Error::Range { dataset: name.clone(), start, end, size }.into());
                }
            }
        }
        Ok(())
    }

    /// Run an operation that one audit entry records completely
    /// ([`Operation::audited_once`]: the key service) without a thread
    /// waiting for that entry: the checks and the work happen now, the
    /// entry joins the next group commit, and `done` gets the outcome once
    /// the entry is durable (an outcome whose entry could not be written
    /// is an error: nothing of the result may leave). Any other operation
    /// runs as [`Engine::execute`] does before `done` is called.
    pub fn execute_then(&self, who: &Caller, op: Operation, done: impl FnOnce(Result<Outcome>) + Send + 'static) {
        if !op.audited_once() {
            done(self.execute(who, op, Io::default()));
            return;
        }
        let warnings = match self.carry_out_due() {
            Ok(w) => w,
            Err(e) => return done(Err(e)),
        };
        let (action, object) = op.audit_name();
        let (result, entry) = match who.principal().map(|p| rights::check(self, p, &op)).unwrap_or(Ok(())) {
            Err(e) => {
                let entry = format!("refused: {e}");
                (Err(e), entry)
            }
            Ok(()) => {
                let r = crate::run::run(self, who, op, &mut Io::default());
                let entry = match &r {
                    Ok(reply) => match reply.failure() {
                        Some(f) => format!("failed: {}", f.message),
                        None => "ok".to_string(),
                    },
                    Err(e) => format!("failed: {e}"),
                };
                (r, entry)
            }
        };
        let name = who.name();
        self.vault.audit_append_then(
            &name,
            action,
            &object,
            &entry,
            Box::new(move |written| {
                done(match written {
                    Ok(_) => result.map(|reply| Outcome { reply, warnings }),
                    Err(e) => Err(custos_core::Error::Invalid {
                        what: "audit log",
                        why: format!("its entry for {action} could not be written: {e}; the result was withheld"),
                    }
                    .into()),
                })
            }),
        );
    }

    /// Carry out destructions whose waiting period is over, on this
    /// process's clock (the server's, in server mode): at most once a
    /// second, since a key pending destruction is refused on every use
    /// anyway. Returns warnings for those that could not be done.
    fn carry_out_due(&self) -> Result<Vec<String>> {
        let mut warnings = Vec::new();
        let due = {
            let mut last = self.due_checked.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1));
            if due {
                *last = Some(std::time::Instant::now());
            }
            due
        };
        if due {
            for (label, e) in self.vault.destroy_due()?.failed {
                warnings.push(format!(
                    "key {label} is due for destruction but could not be destroyed now ({e}); the next command tries again"
                ));
            }
        }
        Ok(warnings)
    }

    /// Run `op` for `who`: see the module docs for the order of checks.
    pub fn execute(&self, who: &Caller, op: Operation, mut io: Io<'_>) -> Result<Outcome> {
        let (action, object) = op.audit_name();
        let who_name = who.name();
        let audit = |result: &str| -> Result<()> {
            self.vault.audit_append(&who_name, action, &object, result).map(|_| ()).map_err(|e| {
                Error::from(custos_core::Error::Invalid {
                    what: "audit log",
                    why: format!(
                        "its entry for {action} ({}) could not be written: {e}{}",
                        result.split(':').next().unwrap_or(result),
                        if result.starts_with("intent") { "; nothing was done" } else { "" }
                    ),
                })
            })
        };
        let refuse = |e: Error| -> Result<Outcome> {
            let _ = audit(&format!("refused: {e}"));
            Err(e)
        };
        if self.mode == Mode::Server && op.names_a_local_path() {
            return refuse(Error::Usage(format!(
                "{action} names a path on the server's machine, which a server never takes from a client: run it in embedded mode (--vault DIR) on that machine"
            )));
        }
        if let (Mode::Server, Operation::RiskDrill { shares, .. }) = (self.mode, &op) {
            if !shares.is_empty() {
                return refuse(Error::Usage(
                    "a drill on a server takes no escrow shares (one principal would hold a threshold of them): drill escrow in embedded mode on a copy of the vault".into(),
                ));
            }
        }
        // In embedded mode, an operation that may change a row the catalog
        // key seals opens the HSM first: its rights are then checked
        // against authenticated rows, and what it writes is sealed.
        // (`audit accept-rollback` opens it itself, accepting the catalog.)
        if self.mode == Mode::Embedded && !op.needs_no_key() && !matches!(op, Operation::AuditAcceptRollback) {
            if let Err(e) = self.open() {
                return refuse(e);
            }
            // The caller logged in before the HSM was open, on a row
            // nothing checked then: it is read again, checked.
            if let Some(p) = who.principal() {
                if let Err(e) = self.vault.user(&p.name) {
                    return refuse(e.into());
                }
            }
        }
        let warnings = self.carry_out_due()?;
        if let Operation::VolumeAdd { location, .. } = &op {
            if !self.volume_allowed(location) {
                return refuse(Error::Usage(format!(
                    "volumes may not live at {location}: this server allows them inside its vault and under the directories its configuration lists (volumes = [...])"
                )));
            }
        }
        if let Some(p) = who.principal() {
            if let Err(e) = rights::check(self, p, &op) {
                return refuse(e);
            }
            // On a server an escrow recovery gathers one share per custodian,
            // each given by that custodian: it is always a request.
            if let (Mode::Server, Operation::EscrowRecover { label, shares }) = (self.mode, &op) {
                self.forget_stale_contributions();
                let given = match self.own_shares(p, label, shares) {
                    Ok(g) => g,
                    Err(e) => return refuse(e),
                };
                let (stored, _) = self.prepare_for_storage(op.clone())?;
                audit("intent: request")?;
                let r = match self.vault.request_create("escrow-recover", &requests::encode(&stored), &p.name) {
                    Ok(r) => r,
                    Err(e) => {
                        audit(&format!("failed: {e}"))?;
                        return Err(e.into());
                    }
                };
                let names: Vec<String> = given.iter().map(|s| s.custodian.clone()).collect();
                let need = self.vault.escrow_kbk_of(label)?.threshold;
                self.contributions.lock().unwrap_or_else(|e| e.into_inner()).insert(r.id, given);
                audit(&format!("ok: request {} made; shares given by {}", r.id, names.join(", ")))?;
                return Ok(Outcome {
                    reply: Reply::Contributed { request: RequestView::new(&r), given: names, need },
                    warnings,
                });
            }
            // Changing one's own credential is nobody else's to approve.
            let own = matches!(&op, Operation::UserCredential { name, .. } if who.principal().is_some_and(|p| &p.name == name));
            if let Some(controlled) = op.controlled().filter(|_| !own) {
                // What would fail now is refused now, not made a request.
                if let Operation::KeyDestroy { label, crypto_erase, .. } = &op {
                    if let Err(e) = self.vault.check_destroy(label, *crypto_erase) {
                        return refuse(e.into());
                    }
                }
                if !matches!(op, Operation::RequestApprove { .. }) && self.dual_controlled(controlled, p, &op)? {
                    let (stored, token) = self.prepare_for_storage(op)?;
                    audit("intent: request")?;
                    let r = self.vault.request_create(controlled, &requests::encode(&stored), &p.name);
                    let r = match r {
                        Ok(r) => r,
                        Err(e) => {
                            audit(&format!("failed: {e}"))?;
                            return Err(e.into());
                        }
                    };
                    audit(&format!("ok: request {} made", r.id))?;
                    return Ok(Outcome {
                        reply: Reply::RequestCreated { request: RequestView::new(&r), token },
                        warnings,
                    });
                }
            }
        }
        // The intent is durable before anything is done, so a process that
        // dies or a pipe that closes never loses the record of an attempt
        // (unless the outcome alone records it completely: see
        // `Operation::audited_once`).
        // Where everything the operation does is a catalog write, the
        // intent and those writes need not each wait for the disk: the
        // durable outcome below covers them (`Operation::effects_in_catalog`).
        let in_catalog = op.effects_in_catalog();
        if in_catalog {
            self.vault.audit_append_written(&who_name, action, &object, "intent").map_err(|e| {
                Error::from(custos_core::Error::Invalid {
                    what: "audit log",
                    why: format!("its entry for {action} (intent) could not be written: {e}; nothing was done"),
                })
            })?;
        } else if !op.audited_once() {
            audit("intent")?;
        }
        let decides = matches!(
            op,
            Operation::RequestApprove { .. } | Operation::RequestDeny { .. } | Operation::RequestWithdraw { .. }
        );
        let result = custos_core::with_sync(!in_catalog, || match op {
            Operation::RequestApprove { id, shares } => self.approve(who, id, shares, &mut io),
            op => crate::run::run(self, who, op, &mut io),
        });
        if decides {
            self.forget_stale_contributions();
        }
        match &result {
            Ok(reply) => match reply.failure() {
                Some(f) => audit(&format!("failed: {}", f.message))?,
                None => audit("ok")?,
            },
            Err(e) => audit(&format!("failed: {e}"))?,
        }
        result.map(|reply| Outcome { reply, warnings })
    }

    /// Whether `op` (the action `controlled`) waits for a second principal:
    /// the action is under dual control and another enabled principal could
    /// approve it (a fresh vault with one principal runs it, and the audit
    /// log shows who).
    fn dual_controlled(&self, controlled: &str, me: &PrincipalRecord, op: &Operation) -> Result<bool> {
        if !self.vault.dual_control()?.iter().any(|a| a == controlled) {
            return Ok(false);
        }
        Ok(self.vault.users()?.into_iter().any(|p| {
            !p.disabled
                && p.name != me.name
                && p.roles.iter().any(|r| custos_core::model::role_permits(*r, Op::Approve))
                && rights::check(self, &p, op).is_ok()
        }))
    }

    /// The operation as a request keeps it: a new principal's passphrase
    /// hashed (and a token made now, for the requester), shares left out.
    fn prepare_for_storage(&self, op: Operation) -> Result<(Operation, Option<SecretText>)> {
        let (op, token) = match op {
            Operation::UserCredential { name, credential } => {
                let (stored, token) = credential.prepare()?;
                (Operation::UserCredential { name, credential: NewCredential::Stored(stored) }, token)
            }
            Operation::UserAdd { name, roles, credential } => {
                let (stored, token) = credential.prepare()?;
                (Operation::UserAdd { name, roles, credential: NewCredential::Stored(stored) }, token)
            }
            op => (op, None),
        };
        let stored = op.without_secrets().ok_or_else(|| {
            Error::Usage(
                "this operation carries a secret and cannot wait for approval; run it without dual control".into(),
            )
        })?;
        Ok((stored, token))
    }

    /// Forget shares given towards requests that are no longer pending
    /// (denied, withdrawn, expired), so no clear share outlives its request
    /// by more than the next escrow recovery or decision.
    fn forget_stale_contributions(&self) {
        let mut all = self.contributions.lock().unwrap_or_else(|e| e.into_inner());
        if all.is_empty() {
            return;
        }
        all.retain(|id, _| self.vault.request(*id).is_ok_and(|r| r.state == "pending"));
    }

    /// The shares `me` gives towards recovering `label`, which must all be
    /// `me`'s own and belong to the key-backup key that key is escrowed to.
    fn own_shares(&self, me: &PrincipalRecord, label: &KeyLabel, texts: &[SecretText]) -> Result<Vec<ShareFile>> {
        let kbk = self.vault.escrow_kbk_of(label)?;
        let mut out: Vec<ShareFile> = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            let f = ShareFile::decode(t.expose(), &format!("share {}", i + 1))?;
            if f.custodian != me.name {
                return Err(custos_core::Error::Invalid {
                    what: "escrow recovery",
                    why: format!(
                        "share {} is {}'s: on a server each custodian gives only their own share, by approving the request themselves",
                        i + 1,
                        f.custodian
                    ),
                }
                .into());
            }
            if f.kbk != kbk.id {
                return Err(custos_core::Error::Invalid {
                    what: "escrow recovery",
                    why: format!("share {} belongs to {}, but {label} is escrowed under {}", i + 1, f.kbk, kbk.id),
                }
                .into());
            }
            if out.iter().any(|o| o.custodian == f.custodian) {
                return Err(Error::Usage(format!("share {} is given twice", i + 1)));
            }
            self.vault.escrow_share_check(&f)?;
            out.push(f);
        }
        Ok(out)
    }

    /// Approve request `id` as `who` and run exactly its stored operation.
    fn approve(&self, who: &Caller, id: u64, shares: Vec<SecretText>, io: &mut Io<'_>) -> Result<Reply> {
        let me =
            who.principal().ok_or_else(|| Error::Usage("approving needs an authenticated user: give --user".into()))?;
        let row = self.vault.request(id)?;
        let mut op = requests::decode(&row).map_err(|why| custos_core::Error::Invalid { what: "request", why })?;
        // The approver must be allowed to run it too.
        rights::check(self, me, &op)?;
        if let Operation::EscrowRecover { label, shares: s } = &mut op {
            if self.mode == Mode::Server {
                // Each custodian gives their own share; the recovery runs
                // once a threshold of custodians has.
                let mine = self.own_shares(me, label, &shares)?;
                let need = self.vault.escrow_kbk_of(label)?.threshold;
                let refuse = |why: String| Error::from(custos_core::Error::Invalid { what: "escrow recovery", why });
                if row.state != "pending" {
                    return Err(refuse(format!("request {id} is {}, not pending", row.state)));
                }
                if mine.is_empty() {
                    return Err(refuse(format!(
                        "request {id} recovers a key from escrow: approve it with your own share (--share FILE --key FILE)"
                    )));
                }
                let mut all = self.contributions.lock().unwrap_or_else(|e| e.into_inner());
                let given = all.entry(id).or_default();
                for sh in mine {
                    if given.iter().any(|g| g.custodian == sh.custodian) {
                        return Err(custos_core::Error::Invalid {
                            what: "escrow recovery",
                            why: format!("{} has already given a share towards request {id}", sh.custodian),
                        }
                        .into());
                    }
                    given.push(sh);
                }
                if given.len() < need as usize {
                    let names: Vec<String> = given.iter().map(|s| s.custodian.clone()).collect();
                    return Ok(Reply::Contributed { request: RequestView::new(&row), given: names, need });
                }
                *s = given.iter().map(|f| SecretText::new(f.encode().to_string())).collect();
            } else {
                *s = shares;
            }
        }
        let decided = self.vault.request_decide(id, &me.name, true)?;
        // Decided: the shares given towards it leave the server's memory
        // once this run ends (a refused decision keeps them for the next
        // approver).
        self.contributions.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        let out = crate::run::run(self, who, op, io);
        self.vault.request_finish(
            id,
            &me.name,
            &match &out {
                Ok(r) => match r.failure() {
                    Some(f) => format!("failed: {}", f.message),
                    None => "executed".to_string(),
                },
                Err(e) => format!("failed: {e}"),
            },
        )?;
        let result = out?;
        let mut request = RequestView::new(&decided);
        request.decided_by = Some(me.name.clone());
        Ok(Reply::Approved { request, result: Box::new(result) })
    }
}
