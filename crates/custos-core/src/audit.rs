//! The audit log: every operation (principal, action, object, result,
//! time; never key material) appended to a hash chain in the catalog, with
//! checkpoints that authenticate the chain's head under an audit key kept
//! in the keystore, wrapped by the HSM's master key.
//!
//! What it detects (`audit verify`): an entry edited, deleted or moved (the
//! chain breaks at it); the chain rewritten from some entry on (the head no
//! longer matches a checkpoint); a forged or altered checkpoint (its MAC);
//! entries cut from the end (a checkpoint covers more than is left). What
//! it cannot: entries cut after the last checkpoint. Every command that
//! opens the HSM writes a checkpoint first, so that window is short.

use aws_lc_rs::{digest, hmac};
use custos_crypto::{Kcv, Mkvp};
use custos_hsm::AuditAnchor;
use custos_model::KeyLabel;
use custos_repo::{AuditCheckpoint, AuditRow};
use jiff::Timestamp;
use serde::Serialize;

use crate::vault::{Open, Vault, VaultState};
use crate::{Error, Result};

/// The name of the audit key in messages.
pub const AUDIT_KEY: &str = "CUSTOS.AUDIT.HMAC";
const SETTING_AUDIT_KEY: &str = "audit.key";
/// The last entry keyed under an audit key lost with its HSM.
const SETTING_AUDIT_LOST: &str = "audit.key.lost-through";

fn format_wrapped(mkvp: &Mkvp, kcv: &Kcv, wrapped: &[u8]) -> String {
    format!("{}:{}:{}", mkvp.to_hex(), kcv.to_hex(), hex::encode(wrapped))
}

fn parse_wrapped(s: &str) -> Result<(Mkvp, Kcv, Vec<u8>)> {
    let bad = || Error::Invalid {
        what: "audit.key setting",
        why: "it is damaged: audit checkpoints cannot be made or checked".into(),
    };
    let mut it = s.split(':');
    let (Some(m), Some(k), Some(w), None) = (it.next(), it.next(), it.next(), it.next()) else { return Err(bad()) };
    Ok((
        Mkvp::from_hex(m).map_err(|_| bad())?,
        Kcv::from_hex(k).map_err(|_| bad())?,
        hex::decode(w).map_err(|_| bad())?,
    ))
}

/// The chain link over the previous hash and every field, length-prefixed
/// so no two entries encode alike: an HMAC-SHA-256 under the audit key for
/// an entry written while the HSM was open (`keyed`), else SHA-256 (an
/// entry a command without the HSM wrote, in embedded mode). Without the
/// key a keyed link cannot be recomputed.
fn link(key: Option<&hmac::Key>, prev: &[u8; 32], e: &AuditRow) -> [u8; 32] {
    let fields = |update: &mut dyn FnMut(&[u8])| {
        update(prev);
        update(&e.seq.to_be_bytes());
        update(&e.at.as_microsecond().to_be_bytes());
        for f in [&e.principal, &e.action, &e.object, &e.result] {
            update(&(f.len() as u32).to_be_bytes());
            update(f.as_bytes());
        }
    };
    match (e.keyed, key) {
        (true, Some(k)) => {
            let mut c = hmac::Context::with_key(k);
            c.update(b"custos-audit-v2");
            fields(&mut |b| c.update(b));
            c.sign().as_ref().try_into().expect("HMAC-SHA-256 is 32 bytes")
        }
        // A keyed entry checked without the key cannot match.
        (true, None) => [0; 32],
        (false, _) => {
            let mut c = digest::Context::new(&digest::SHA256);
            c.update(b"custos-audit-v1");
            fields(&mut |b| c.update(b));
            c.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
        }
    }
}

fn checkpoint_message(seq: u64, head: &[u8; 32], at: Timestamp) -> Vec<u8> {
    let mut m = b"custos-audit-checkpoint-v1".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(head);
    m.extend_from_slice(&at.as_microsecond().to_be_bytes());
    m
}

/// Which entries `audit ls` shows.
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub since: Option<Timestamp>,
    pub principal: Option<String>,
    /// A substring of the object.
    pub object: Option<String>,
    /// Only entries after this one (the last of the previous page).
    pub after: Option<u64>,
    /// At most this many (a page).
    pub limit: Option<u32>,
}

/// The outcome of `audit verify`.
#[derive(Debug, Clone, Serialize)]
pub struct AuditVerdict {
    #[serde(rename = "entry_count")]
    pub entries: u64,
    /// Of those, entries chained under the audit key (the others were
    /// written by commands that ran without the HSM, in embedded mode).
    #[serde(rename = "keyed_count")]
    pub keyed: u64,
    /// Keyed entries written under an audit key lost with its HSM (`vault
    /// rebuild`): their links can no longer be checked.
    #[serde(rename = "unverifiable_count")]
    pub unverifiable: u64,
    /// The last entry the HSM recorded as written (see [`AuditAnchor`]).
    #[serde(rename = "anchored_seq")]
    pub anchored: Option<u64>,
    #[serde(rename = "checkpoint_count")]
    pub checkpoints: u64,
    /// The first problem found, naming the entry; `None` when intact.
    pub problem: Option<String>,
}

impl<S: VaultState> Vault<S> {
    /// Append one entry. Results and objects are plain text the caller
    /// chooses; no secret ever reaches this function. Durable when it
    /// returns; appends from other threads at the same moment share its
    /// transaction (group commit).
    pub fn audit_append(&self, principal: &str, action: &str, object: &str, result: &str) -> Result<AuditRow> {
        let row = new_row(principal, action, object, result);
        self.journal_write(Some(row), None, true).map(|r| r.expect("an entry was appended"))
    }

    /// Append one entry to the catalog's log, in order, without waiting
    /// for the disk: the caller's next durable write (an [`audit_append`]
    /// of the outcome) makes it durable, and a crash before that loses it
    /// only with everything written after it. For an operation's intent
    /// when everything the operation does is a catalog write
    /// (`custos_repo::with_sync`).
    ///
    /// [`audit_append`]: Vault::audit_append
    pub fn audit_append_written(&self, principal: &str, action: &str, object: &str, result: &str) -> Result<AuditRow> {
        let row = new_row(principal, action, object, result);
        self.journal_write(Some(row), None, false).map(|r| r.expect("an entry was appended"))
    }

    /// Count one use of a key in the next group commit, without waiting
    /// for it: the audit entry that follows the use carries it to disk (a
    /// count cut off by a crash is a statistic lost, never a key).
    pub(crate) fn note_key_use(&self, label: &KeyLabel) -> Result<()> {
        let mut st = self.journal.state.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = st.next;
        st.next += 1;
        st.pending.push(Pending {
            ticket,
            row: None,
            key_use: Some(label.clone()),
            waiter: None,
            durable: false,
            then: None,
        });
        Ok(())
    }

    /// Queue an entry or a key use and wait until it is written (and
    /// durable, when `durable`). A thread that finds nobody writing and
    /// nothing handed to the writer thread becomes the writer: it takes
    /// everything queued so far, writes it in one transaction, and wakes
    /// the others. A thread that has to wait starts the writer thread,
    /// which from then on writes the batches that queue up behind a write
    /// ([`Journal::start_writer`]).
    fn journal_write(
        &self,
        row: Option<AuditRow>,
        key_use: Option<KeyLabel>,
        durable: bool,
    ) -> Result<Option<AuditRow>> {
        // Whoever writes this entry, this thread waits: its snapshot of the
        // catalog (if it holds one) must not keep the log from checkpoints
        // meanwhile, and its next read sees what was written.
        custos_repo::end_snapshot();
        let j = &self.journal;
        let mut st = j.state.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = st.next;
        st.next += 1;
        let waiter = Some(std::thread::current());
        st.pending.push(Pending { ticket, row, key_use, waiter, durable, then: None });
        loop {
            if let Some(r) = st.done.remove(&ticket) {
                return r.map_err(|why| Error::Invalid { what: "audit log", why });
            }
            if st.writing || st.handed {
                // Woken (unparked) by the writer when this entry is written,
                // or when it is this thread's turn to write: never for
                // another thread's batch. Unparking before the park is
                // kept, and a spurious wake only looks again.
                drop(st);
                // Threads contend: from now on the journal's own thread
                // writes the batches that queue up behind a write.
                Journal::start_writer(&self.journal, &self.repo);
                std::thread::park();
                st = j.state.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st = j.flush(&*self.repo, st);
        }
    }

    /// Queue an audit entry and return at once; `then` is called with the
    /// entry once it is durable (or with why it could not be written), in
    /// a group commit with whatever else is queued, by the thread that
    /// writes that batch: the journal's writer thread, or one waiting for
    /// its own entry (so `then` must be short, and a panic in it is caught
    /// there). For a front end that answers asynchronously (the server's
    /// key service): no thread waits per request.
    pub fn audit_append_then(
        &self,
        principal: &str,
        action: &str,
        object: &str,
        result: &str,
        then: Box<dyn FnOnce(std::result::Result<AuditRow, String>) + Send>,
    ) {
        let row = new_row(principal, action, object, result);
        Journal::start_writer(&self.journal, &self.repo);
        let j = &self.journal;
        let mut st = j.state.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = st.next;
        st.next += 1;
        st.pending.push(Pending {
            ticket,
            row: Some(row),
            key_use: None,
            waiter: None,
            durable: true,
            then: Some(then),
        });
        j.bell.ring();
    }

    pub fn audit_entries(&self, f: &AuditFilter) -> Result<Vec<AuditRow>> {
        let keep = |e: &AuditRow| {
            f.since.is_none_or(|t| e.at >= t)
                && f.principal.as_ref().is_none_or(|p| e.principal == *p)
                && f.object.as_ref().is_none_or(|o| e.object.contains(o.as_str()))
        };
        let Some(limit) = f.limit else {
            return Ok(self.repo.audit_rows(f.after.unwrap_or(0))?.into_iter().filter(|e| keep(e)).collect());
        };
        // A page: read a batch at a time from the cursor, holding only the page.
        const BATCH: u32 = 512;
        let mut out = Vec::new();
        let mut cursor = f.after.unwrap_or(0);
        while out.len() < limit as usize {
            let batch = self.repo.audit_rows_page(cursor, BATCH)?;
            let full = batch.len() == BATCH as usize;
            for e in batch {
                cursor = e.seq;
                if keep(&e) {
                    out.push(e);
                    if out.len() == limit as usize {
                        break;
                    }
                }
            }
            if !full {
                break;
            }
        }
        Ok(out)
    }

    /// The last entry keyed under a lost audit key (0: none was lost).
    fn audit_lost_through(&self) -> Result<u64> {
        Ok(self.repo.setting(SETTING_AUDIT_LOST)?.and_then(|s| s.parse().ok()).unwrap_or(0))
    }

    /// Check the chain under the audit key. Returns the first problem, and
    /// the rows so that checkpoints can be checked against them.
    fn verify_chain(&self, key: &hmac::Key) -> Result<(Vec<AuditRow>, Option<String>)> {
        let rows = self.repo.audit_rows(0)?;
        let lost = self.audit_lost_through()?;
        let mut prev = [0u8; 32];
        for (i, r) in rows.iter().enumerate() {
            let want = i as u64 + 1;
            if r.seq != want {
                let problem = if r.seq > want {
                    format!("entry {want} was deleted: the log jumps from entry {} to entry {}", want - 1, r.seq)
                } else {
                    format!("entry {} appears out of place", r.seq)
                };
                return Ok((rows, Some(problem)));
            }
            // A link keyed under the audit key lost with its HSM cannot be
            // recomputed: it is taken as it is (and counted by the verdict).
            let unverifiable = r.keyed && r.seq <= lost;
            if !unverifiable && link(Some(key), &prev, r) != r.hash {
                return Ok((
                    rows.clone(),
                    Some(format!(
                        "entry {} ({} {} by {}) was modified or moved: it does not chain from entry {}",
                        r.seq,
                        r.action,
                        r.object,
                        r.principal,
                        r.seq - 1
                    )),
                ));
            }
            prev = r.hash;
        }
        Ok((rows, None))
    }
}

impl Vault<Open> {
    /// The audit key, made on first use: 256 bits from the HSM, kept in the
    /// catalog's settings wrapped under the master key (never in clear),
    /// and re-wrapped by `mk reencipher` with the keystore. It is not a
    /// data key, so it stays out of key listings, policies and reports.
    fn audit_key(&self) -> Result<hmac::Key> {
        let (mkvp, kcv, wrapped) = match self.repo.setting(SETTING_AUDIT_KEY)? {
            Some(s) => parse_wrapped(&s)?,
            None => {
                // Two commands may open a new vault's HSM at once: the first
                // key stored wins, and both sign with it.
                let w = self.state.hsm.generate_key()?;
                parse_wrapped(
                    &self.repo.set_setting_once(SETTING_AUDIT_KEY, &format_wrapped(&w.mkvp, &w.kcv, &w.bytes))?,
                )?
            }
        };
        let key = self.state.hsm.unwrap_key(&mkvp, &wrapped)?;
        if Kcv::of(&key) != kcv {
            return Err(Error::KeyMismatch {
                label: KeyLabel::new(AUDIT_KEY)?,
                got: Kcv::of(&key).to_hex(),
                want: kcv.to_hex(),
            });
        }
        Ok(hmac::Key::new(hmac::HMAC_SHA256, key.expose_secret()))
    }

    /// Check the catalog against the HSM's anchor, then key every entry
    /// this vault's journal writes from now on and let the anchor follow
    /// them; sign the head (a checkpoint). A catalog older than the anchor
    /// (a rollback, or lost transactions) or one whose entry there differs
    /// (a rewritten log) is refused, and nothing is written. The first time
    /// (a new or upgraded vault) the current head becomes the anchor.
    ///
    /// With `accept`, a security administrator's decision to carry on with
    /// this catalog anyway: the anchor is moved to its head, whatever the
    /// HSM held. Returns the anchor the HSM held before.
    pub fn audit_arm(&self, accept: bool) -> Result<Option<AuditAnchor>> {
        // The anchor first: it is written only after its entries commit, so
        // a head read after it is never behind it, whoever appends meanwhile.
        let anchored = self.state.hsm.anchor()?;
        let head = self.repo.audit_head()?;
        match (anchored, &head) {
            _ if accept => {
                if let Some(h) = &head {
                    self.state.hsm.set_anchor(&AuditAnchor { seq: h.seq, head: h.hash }, true)?;
                }
            }
            (Some(a), _) => {
                let catalog = head.as_ref().map_or(0, |h| h.seq);
                if catalog < a.seq {
                    return Err(Error::CatalogRollback { catalog, anchored: a.seq });
                }
                let at = self.repo.audit_rows(a.seq.saturating_sub(1))?.into_iter().next();
                if !at.is_some_and(|r| r.seq == a.seq && r.hash == a.head) {
                    return Err(Error::CatalogForked { seq: a.seq });
                }
            }
            (None, Some(h)) => self.state.hsm.set_anchor(&AuditAnchor { seq: h.seq, head: h.hash }, false)?,
            (None, None) => {}
        }
        // A catalog that is not older than the HSM's record: authenticate
        // its rows from here on (sealing them all the first time).
        self.arm_catalog()?;
        let key = self.audit_key()?;
        // Counted from now: a short command anchors once, when it closes,
        // rather than also at its first group commit.
        let anchor = AnchorState { written_at: Some(std::time::Instant::now()), ..Default::default() };
        let signer = Signer { key, hsm: self.state.hsm.clone(), anchor: std::sync::Mutex::new(anchor) };
        *self.journal.signer.write().unwrap_or_else(|e| e.into_inner()) = Some(std::sync::Arc::new(signer));
        let _ = self.audit_checkpoint();
        Ok(anchored)
    }

    /// Write the anchor now if entries wait for it (it is otherwise written
    /// at most once a second, and when the vault closes). Returns why the
    /// last attempt failed, if it did.
    pub fn audit_anchor_now(&self) -> Option<String> {
        let signer = self.journal.signer.read().unwrap_or_else(|e| e.into_inner()).clone()?;
        signer.advanced(None, true);
        let st = signer.anchor.lock().unwrap_or_else(|e| e.into_inner());
        st.failed.clone()
    }

    /// After the HSM (and with it the audit key) was lost: a new audit key,
    /// and the number of the last entry keyed under the lost one (setting
    /// `audit.key.lost-through`), whose links `audit verify` can no longer
    /// check and counts instead. Returns how many keyed entries that leaves
    /// unverifiable.
    pub(crate) fn audit_rekey_after_hsm_loss(&self) -> Result<u64> {
        let rows = self.repo.audit_rows(0)?;
        let through = rows.last().map_or(0, |r| r.seq);
        let keyed = rows.iter().filter(|r| r.keyed).count() as u64;
        let w = self.state.hsm.generate_key()?;
        self.repo.set_setting(SETTING_AUDIT_LOST, &through.to_string())?;
        self.repo.set_setting(SETTING_AUDIT_KEY, &format_wrapped(&w.mkvp, &w.kcv, &w.bytes))?;
        Ok(keyed)
    }

    /// Move the audit key from master key `from` to CURRENT (part of a
    /// master key change).
    pub(crate) fn rewrap_audit_key(&self, from: &Mkvp) -> Result<()> {
        let Some(s) = self.repo.setting(SETTING_AUDIT_KEY)? else { return Ok(()) };
        let (mkvp, kcv, wrapped) = parse_wrapped(&s)?;
        if mkvp != *from {
            return Ok(());
        }
        let w = self.state.hsm.rewrap_key(from, &wrapped)?;
        if w.kcv != kcv {
            return Err(Error::KeyMismatch {
                label: KeyLabel::new(AUDIT_KEY)?,
                got: w.kcv.to_hex(),
                want: kcv.to_hex(),
            });
        }
        self.repo.set_setting(SETTING_AUDIT_KEY, &format_wrapped(&w.mkvp, &w.kcv, &w.bytes))?;
        Ok(())
    }

    /// Sign the chain's current head. Does nothing on an empty log.
    pub fn audit_checkpoint(&self) -> Result<Option<AuditCheckpoint>> {
        // Re-signing a head that is already signed renews that checkpoint;
        // one over a different head at the same entry is kept (evidence).
        let Some(last) = self.repo.audit_head()? else { return Ok(None) };
        let at = Timestamp::now();
        let mac = hmac::sign(&self.audit_key()?, &checkpoint_message(last.seq, &last.hash, at));
        let c = AuditCheckpoint { seq: last.seq, head: last.hash, at, mac: mac.as_ref().to_vec() };
        self.repo.insert_audit_checkpoint(&c)?;
        Ok(Some(c))
    }

    /// Verify the chain, the HSM's anchor and every checkpoint; name the
    /// first problem.
    pub fn audit_verify(&self) -> Result<AuditVerdict> {
        let key = self.audit_key()?;
        // What this process wrote is anchored first; then the anchor is read
        // before the rows: entries appended meanwhile only put the log
        // further ahead of it.
        let anchor_failed = self.audit_anchor_now();
        let anchor = self.state.hsm.anchor()?;
        let (rows, problem) = self.verify_chain(&key)?;
        let cps = self.repo.audit_checkpoints()?;
        let lost = self.audit_lost_through()?;
        let keyed = rows.iter().filter(|r| r.keyed).count() as u64;
        let unverifiable = rows.iter().filter(|r| r.keyed && r.seq <= lost).count() as u64;
        let verdict = |problem| AuditVerdict {
            entries: rows.len() as u64,
            keyed,
            unverifiable,
            anchored: anchor.map(|a| a.seq),
            checkpoints: cps.len() as u64,
            problem,
        };
        if problem.is_some() {
            return Ok(verdict(problem));
        }
        if let Some(why) = anchor_failed {
            return Ok(verdict(Some(format!(
                "the HSM's record of the log's end could not be updated ({why}), so a rollback of the catalog past it would go unnoticed"
            ))));
        }
        if let Some(a) = anchor {
            match rows.get(a.seq.saturating_sub(1) as usize) {
                None => {
                    return Ok(verdict(Some(format!(
                        "the log ends at entry {}, but the HSM recorded entry {} as written: entries were cut from its end, or custos.db was replaced by an older copy",
                        rows.len(),
                        a.seq
                    ))))
                }
                Some(r) if r.hash != a.head => {
                    return Ok(verdict(Some(format!(
                        "entry {} is not the one the HSM recorded: the log was rewritten up to there",
                        a.seq
                    ))))
                }
                Some(_) => {}
            }
        }
        for c in cps.iter().filter(|c| c.seq > lost) {
            let when = c.at.strftime("%Y-%m-%d %H:%M:%S");
            if hmac::verify(&key, &checkpoint_message(c.seq, &c.head, c.at), &c.mac).is_err() {
                return Ok(verdict(Some(format!(
                    "the checkpoint of entry {} (signed {when}) was forged or altered",
                    c.seq
                ))));
            }
            match rows.get(c.seq as usize - 1) {
                None => {
                    return Ok(verdict(Some(format!(
                        "the log was truncated: entries {} to {} are missing, though the checkpoint signed {when} covers them",
                        rows.len() + 1,
                        c.seq
                    ))))
                }
                Some(r) if r.hash != c.head => {
                    return Ok(verdict(Some(format!(
                        "the log up to entry {} does not match the checkpoint signed {when}: an entry at or before {} was altered and the chain recomputed, or entries were cut and others written in their place",
                        c.seq, c.seq
                    ))))
                }
                Some(_) => {}
            }
        }
        Ok(verdict(None))
    }
}

/// An entry as it is queued: the journal gives it its place and hash.
fn new_row(principal: &str, action: &str, object: &str, result: &str) -> AuditRow {
    AuditRow {
        seq: 0,
        at: Timestamp::now(),
        principal: principal.into(),
        action: action.into(),
        object: object.into(),
        result: result.into(),
        hash: [0; 32],
        keyed: false,
    }
}

/// Audit entries and key uses waiting for their group commit.
#[derive(Default)]
pub(crate) struct Journal {
    state: std::sync::Mutex<JournalState>,
    /// Wakes the writer thread when an entry with a callback is queued,
    /// and when a batch ends with entries queued behind it. Shared with
    /// the thread, which holds nothing else of the vault while it waits.
    bell: std::sync::Arc<Bell>,
    /// Whether the writer thread was started (and whether it runs).
    writer: std::sync::OnceLock<bool>,
    /// The audit key and the HSM that anchors the log, once the vault that
    /// shares this journal was armed (`Vault::audit_arm`): from then on
    /// entries are keyed and the anchor follows them.
    signer: std::sync::RwLock<Option<std::sync::Arc<Signer>>>,
}

/// What keys the chain and keeps its anchor.
pub(crate) struct Signer {
    key: hmac::Key,
    hsm: std::sync::Arc<dyn custos_hsm::Hsm>,
    anchor: std::sync::Mutex<AnchorState>,
}

#[derive(Default)]
struct AnchorState {
    /// The newest entry written and not yet anchored.
    due: Option<AuditAnchor>,
    /// When the anchor was last written.
    written_at: Option<std::time::Instant>,
    /// Why the last attempt failed (reported by `audit verify`).
    failed: Option<String>,
}

/// While entries flow, the anchor is written at most this often; the last
/// one when the journal closes. A crash may leave the anchor this far
/// behind the log: entries cut from that tail go unnoticed on the next open.
const ANCHOR_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Signer {
    /// Note the newest entry written; anchor it when the last anchor is
    /// older than [`ANCHOR_EVERY`] (or `now`).
    fn advanced(&self, last: Option<&AuditRow>, now: bool) {
        let mut st = self.anchor.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = last {
            st.due = Some(AuditAnchor { seq: r.seq, head: r.hash });
        }
        let Some(due) = st.due else { return };
        if !now && st.written_at.is_some_and(|t| t.elapsed() < ANCHOR_EVERY) {
            return;
        }
        match self.hsm.set_anchor(&due, false) {
            Ok(()) => {
                st.due = None;
                st.failed = None;
                st.written_at = Some(std::time::Instant::now());
            }
            Err(e) => st.failed = Some(e.to_string()),
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let signer = self.signer.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(s) = signer {
            s.advanced(None, true);
        }
    }
}

/// What the journal's writer thread waits on: rung while there is
/// something for it to write. It is rung and unrung only under the
/// journal's lock (taken first), as the work it stands for is queued and
/// taken, so the thread looks at the journal only when work is queued: it
/// holds the vault only then, that is while some thread waits for an
/// entry (or, in a server, a callback is queued).
#[derive(Default)]
struct Bell {
    rung: std::sync::Mutex<bool>,
    wake: std::sync::Condvar,
}

impl Bell {
    fn ring(&self) {
        *self.rung.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_one();
    }

    fn unring(&self) {
        *self.rung.lock().unwrap_or_else(|e| e.into_inner()) = false;
    }

    /// Wait until rung, or for `most`; whether it was rung.
    fn wait(&self, most: std::time::Duration) -> bool {
        let rung = self.rung.lock().unwrap_or_else(|e| e.into_inner());
        let (rung, _) = self.wake.wait_timeout_while(rung, most, |r| !*r).unwrap_or_else(|e| e.into_inner());
        *rung
    }
}

#[derive(Default)]
struct JournalState {
    next: u64,
    writing: bool,
    /// The next batch is the writer thread's to write (it was woken for
    /// it): a thread that queues an entry meanwhile waits for it.
    handed: bool,
    pending: Vec<Pending>,
    done: std::collections::HashMap<u64, std::result::Result<Option<AuditRow>, String>>,
}

type Then = Box<dyn FnOnce(std::result::Result<AuditRow, String>) + Send>;

/// What a written batch leaves to do: wake the threads it wrote for (and
/// the next batch's writer), then call the callbacks.
struct Handout {
    woken: Vec<std::thread::Thread>,
    thens: Vec<(Then, std::result::Result<AuditRow, String>)>,
}

impl Handout {
    fn deliver(self) {
        for w in self.woken {
            w.unpark();
        }
        for (t, r) in self.thens {
            // A callback's panic (a front end's bug) stays with it: the
            // thread that wrote the batch goes on, and so do the others.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t(r)));
        }
    }
}

struct Pending {
    ticket: u64,
    row: Option<AuditRow>,
    key_use: Option<KeyLabel>,
    /// The thread waiting for this one's result, if any: unparked when it
    /// is written, or to write the next batch.
    waiter: Option<std::thread::Thread>,
    /// Whether its result may be handed out only once it is durable (an
    /// intent written ahead of its operation's catalog writes need not
    /// be: the durable outcome after them covers it).
    durable: bool,
    /// Called with the result once written (outside the lock).
    then: Option<Then>,
}

impl Journal {
    /// Write everything queued as one transaction and hand out the results;
    /// the caller holds the lock and nobody is writing. Callbacks run after
    /// the lock is released; the lock is taken again to return.
    fn flush<'a>(
        &'a self,
        repo: &dyn custos_repo::Repository,
        st: std::sync::MutexGuard<'a, JournalState>,
    ) -> std::sync::MutexGuard<'a, JournalState> {
        self.write_batch(repo, st).deliver();
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`flush`](Journal::flush) up to waking the threads it wrote for:
    /// the results are in `done` and the writer's place is given up. What
    /// is left to do needs neither the journal nor the catalog, so the
    /// writer thread lets go of them first.
    fn write_batch<'a>(
        &'a self,
        repo: &dyn custos_repo::Repository,
        mut st: std::sync::MutexGuard<'a, JournalState>,
    ) -> Handout {
        st.writing = true;
        st.handed = false;
        self.bell.unring();
        let batch = std::mem::take(&mut st.pending);
        drop(st);
        let signer = self.signer.read().unwrap_or_else(|e| e.into_inner()).clone();
        let keyed = signer.is_some();
        let rows: Vec<AuditRow> = batch.iter().filter_map(|p| p.row.clone()).map(|r| AuditRow { keyed, ..r }).collect();
        let uses: Vec<KeyLabel> = batch.iter().filter_map(|p| p.key_use.clone()).collect();
        let key = signer.as_ref().map(|s| &s.key);
        // The batch waits for the disk when anything in it must be durable,
        // whatever the thread that happens to write it was doing. Where the
        // catalog can sync apart from a commit, entries that need only be
        // written (intents ahead of their operations' catalog writes) are
        // handed out between the commit and the sync: their threads go on
        // with their operations while the disk works.
        let durable = batch.iter().any(|p| p.durable);
        let split = durable && repo.syncs_apart() && batch.iter().any(|p| !p.durable && p.waiter.is_some());
        let written = custos_repo::with_sync(durable && !split, || {
            repo.append_audit_batch(&rows, &|prev, r| link(key, prev, r), &uses)
        });
        let (results, failed) = match written {
            Ok(out) => (out, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let mut out = results.into_iter();
        let mut results: Vec<_> = batch
            .into_iter()
            .map(|p| {
                let r = match &failed {
                    None => Ok(if p.row.is_some() { out.next() } else { None }),
                    Some(e) => Err(e.clone()),
                };
                (p, r)
            })
            .collect();
        if split && failed.is_none() {
            let mut woken = Vec::new();
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            for (p, r) in results.iter_mut().filter(|(p, _)| !p.durable) {
                if let Some(w) = p.waiter.take() {
                    st.done.insert(p.ticket, r.clone());
                    woken.push(w);
                }
            }
            drop(st);
            for w in woken {
                w.unpark();
            }
            // Stops the process if the log cannot be made durable, so
            // nothing durable is handed out unsynced.
            if let Err(e) = repo.sync_written() {
                for (_, r) in results.iter_mut() {
                    *r = Err(e.to_string());
                }
            }
        }
        // The anchor follows durable entries only: one a crash could still
        // take from the log would make the next open see a rollback.
        let last = results.iter().rev().find(|(p, _)| p.row.is_some());
        if let (Some(s), true, Some((_, Ok(Some(last))))) = (&signer, durable, last) {
            s.advanced(Some(last), false);
        }
        let mut thens = Vec::new();
        let mut woken = Vec::new();
        st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (p, r) in results {
            if let Some(t) = p.then {
                thens.push((t, r.clone().and_then(|r| r.ok_or_else(|| "no entry was written".to_string()))));
            }
            if let Some(w) = p.waiter {
                st.done.insert(p.ticket, r);
                woken.push(w);
            }
        }
        st.writing = false;
        // The next batch's writer: the journal's own thread where it runs
        // (it goes on from batch to batch while entries keep coming, with
        // no thread to wake in between), else the first thread waiting in
        // the batch.
        if st.pending.iter().any(|p| p.waiter.is_some() || p.then.is_some()) {
            if self.writer.get().is_some_and(|running| *running) {
                st.handed = true;
                self.bell.ring();
            } else if let Some(next) = st.pending.iter().find_map(|p| p.waiter.clone()) {
                woken.push(next);
            }
        }
        drop(st);
        Handout { woken, thens }
    }

    /// Start the journal's own writer thread (once per journal). It writes
    /// entries queued with a callback, and every batch that queued up
    /// while another was written: under load it goes on from batch to
    /// batch, where handing the writer's place to a waiting thread would
    /// leave the disk idle while that thread is woken. A thread that
    /// finds nobody writing still writes its own entry (no thread to wake
    /// when there is no contention). It holds the vault's journal and
    /// catalog only while it writes, so that they close (the log's anchor
    /// written, the catalog's log checkpointed and erased) when the
    /// vault's last handle goes away, and it ends within a second of that.
    fn start_writer(j: &std::sync::Arc<Journal>, repo: &std::sync::Arc<dyn custos_repo::Repository>) {
        j.writer.get_or_init(|| {
            let (jw, rw, bell) = (std::sync::Arc::downgrade(j), std::sync::Arc::downgrade(repo), j.bell.clone());
            std::thread::Builder::new()
                .name("custos-audit".into())
                .spawn(move || loop {
                    if !bell.wait(std::time::Duration::from_secs(1)) {
                        if jw.strong_count() == 0 || rw.strong_count() == 0 {
                            return;
                        }
                        continue;
                    }
                    let handout = {
                        let (Some(j), Some(repo)) = (jw.upgrade(), rw.upgrade()) else { return };
                        let st = j.state.lock().unwrap_or_else(|e| e.into_inner());
                        if st.writing || !(st.handed || st.pending.iter().any(|p| p.then.is_some())) {
                            // Taken by a thread writing now, which rings
                            // again if it leaves work behind.
                            j.bell.unring();
                            continue;
                        }
                        j.write_batch(&*repo, st)
                    };
                    // Woken threads may drop the vault's last handle: this
                    // thread holds none of it by now.
                    handout.deliver();
                })
                .is_ok()
        });
    }
}
