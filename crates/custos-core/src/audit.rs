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
use custos_model::KeyLabel;
use custos_repo::{AuditCheckpoint, AuditRow};
use jiff::Timestamp;
use serde::Serialize;

use crate::vault::{Open, Vault, VaultState};
use crate::{Error, Result};

/// The name of the audit key in messages.
pub const AUDIT_KEY: &str = "CUSTOS.AUDIT.HMAC";
const SETTING_AUDIT_KEY: &str = "audit.key";

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

/// The chain link: SHA-256 over the previous hash and every field,
/// length-prefixed so no two entries encode alike.
fn link(prev: &[u8; 32], e: &AuditRow) -> [u8; 32] {
    let mut c = digest::Context::new(&digest::SHA256);
    c.update(b"custos-audit-v1");
    c.update(prev);
    c.update(&e.seq.to_be_bytes());
    c.update(&e.at.as_microsecond().to_be_bytes());
    for f in [&e.principal, &e.action, &e.object, &e.result] {
        c.update(&(f.len() as u32).to_be_bytes());
        c.update(f.as_bytes());
    }
    c.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
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
}

/// The outcome of `audit verify`.
#[derive(Debug, Clone, Serialize)]
pub struct AuditVerdict {
    pub entries: u64,
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
        self.journal_write(Some(row), None).map(|r| r.expect("an entry was appended"))
    }

    /// Count one use of a key in the next group commit, without waiting
    /// for it: the audit entry that follows the use carries it to disk (a
    /// count cut off by a crash is a statistic lost, never a key).
    pub(crate) fn note_key_use(&self, label: &KeyLabel) -> Result<()> {
        let mut st = self.journal.state.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = st.next;
        st.next += 1;
        st.pending.push(Pending { ticket, row: None, key_use: Some(label.clone()), waits: false, then: None });
        Ok(())
    }

    /// Queue an entry or a key use and wait until it is durable. The first
    /// waiter with nobody writing becomes the writer: it takes everything
    /// queued so far, writes it in one transaction, and wakes the others.
    fn journal_write(&self, row: Option<AuditRow>, key_use: Option<KeyLabel>) -> Result<Option<AuditRow>> {
        let j = &self.journal;
        let mut st = j.state.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = st.next;
        st.next += 1;
        st.pending.push(Pending { ticket, row, key_use, waits: true, then: None });
        loop {
            if let Some(r) = st.done.remove(&ticket) {
                return r.map_err(|why| Error::Invalid { what: "audit log", why });
            }
            if st.writing {
                st = j.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st = j.flush(&*self.repo, st);
        }
    }

    /// Queue an audit entry and return at once; `then` is called with the
    /// entry once it is durable (or with why it could not be written), on
    /// the journal's writer thread, in a group commit with whatever else is
    /// queued. For a front end that answers asynchronously (the server's
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
        st.pending.push(Pending { ticket, row: Some(row), key_use: None, waits: false, then: Some(then) });
        drop(st);
        j.writer_wake.notify_one();
    }

    pub fn audit_entries(&self, f: &AuditFilter) -> Result<Vec<AuditRow>> {
        Ok(self
            .repo
            .audit_rows(0)?
            .into_iter()
            .filter(|e| f.since.is_none_or(|t| e.at >= t))
            .filter(|e| f.principal.as_ref().is_none_or(|p| e.principal == *p))
            .filter(|e| f.object.as_ref().is_none_or(|o| e.object.contains(o.as_str())))
            .collect())
    }

    /// Check the chain (no key needed). Returns the first problem, and the
    /// rows so that checkpoints can be checked against them.
    fn verify_chain(&self) -> Result<(Vec<AuditRow>, Option<String>)> {
        let rows = self.repo.audit_rows(0)?;
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
            if link(&prev, r) != r.hash {
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

    /// Verify the chain and every checkpoint; name the first problem.
    pub fn audit_verify(&self) -> Result<AuditVerdict> {
        let (rows, problem) = self.verify_chain()?;
        let cps = self.repo.audit_checkpoints()?;
        let verdict = |problem| AuditVerdict { entries: rows.len() as u64, checkpoints: cps.len() as u64, problem };
        if problem.is_some() {
            return Ok(verdict(problem));
        }
        let key = self.audit_key()?;
        for c in &cps {
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
    }
}

/// Audit entries and key uses waiting for their group commit.
#[derive(Default)]
pub(crate) struct Journal {
    state: std::sync::Mutex<JournalState>,
    /// Wakes synchronous waiters when a batch is written.
    wake: std::sync::Condvar,
    /// Wakes the writer thread when an entry with a callback is queued.
    writer_wake: std::sync::Condvar,
    /// Whether the writer thread was started.
    writer: std::sync::OnceLock<()>,
}

#[derive(Default)]
struct JournalState {
    next: u64,
    writing: bool,
    pending: Vec<Pending>,
    done: std::collections::HashMap<u64, std::result::Result<Option<AuditRow>, String>>,
}

type Then = Box<dyn FnOnce(std::result::Result<AuditRow, String>) + Send>;

struct Pending {
    ticket: u64,
    row: Option<AuditRow>,
    key_use: Option<KeyLabel>,
    /// Whether someone waits for this one's result.
    waits: bool,
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
        mut st: std::sync::MutexGuard<'a, JournalState>,
    ) -> std::sync::MutexGuard<'a, JournalState> {
        st.writing = true;
        let batch = std::mem::take(&mut st.pending);
        drop(st);
        let rows: Vec<AuditRow> = batch.iter().filter_map(|p| p.row.clone()).collect();
        let uses: Vec<KeyLabel> = batch.iter().filter_map(|p| p.key_use.clone()).collect();
        let written = repo.append_audit_batch(&rows, &link, &uses);
        let mut thens = Vec::new();
        st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match written {
            Ok(out) => {
                let mut out = out.into_iter();
                for p in batch {
                    let r = if p.row.is_some() { out.next() } else { None };
                    if let Some(t) = p.then {
                        thens.push((t, r.clone().ok_or_else(|| "no entry was written".to_string())));
                    }
                    if p.waits {
                        st.done.insert(p.ticket, Ok(r));
                    }
                }
            }
            Err(e) => {
                for p in batch {
                    if let Some(t) = p.then {
                        thens.push((t, Err(e.to_string())));
                    }
                    if p.waits {
                        st.done.insert(p.ticket, Err(e.to_string()));
                    }
                }
            }
        }
        st.writing = false;
        self.wake.notify_all();
        self.writer_wake.notify_one();
        drop(st);
        for (t, r) in thens {
            t(r);
        }
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start the thread that writes entries queued with a callback (once
    /// per journal). It holds only weak references, and ends within a
    /// second of the vault's last handle going away.
    fn start_writer(j: &std::sync::Arc<Journal>, repo: &std::sync::Arc<dyn custos_repo::Repository>) {
        j.writer.get_or_init(|| {
            let (jw, rw) = (std::sync::Arc::downgrade(j), std::sync::Arc::downgrade(repo));
            let _ = std::thread::Builder::new().name("custos-audit".into()).spawn(move || loop {
                let (Some(j), Some(repo)) = (jw.upgrade(), rw.upgrade()) else { return };
                let st = j.state.lock().unwrap_or_else(|e| e.into_inner());
                if st.writing || !st.pending.iter().any(|p| p.then.is_some()) {
                    let _ = j.writer_wake.wait_timeout(st, std::time::Duration::from_secs(1));
                    continue;
                }
                drop(j.flush(&*repo, st));
            });
        });
    }
}
