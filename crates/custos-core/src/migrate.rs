//! Moving a vault's catalog between backends (`custos repo migrate`, ADR
//! 0020): from `custos.db` to an empty PostgreSQL database, or back. The
//! source must verify first (every row's MAC, the audit chain), the copy
//! must verify the same way under the same HSM and hold as many rows in
//! every table, and only then does the vault switch over; the old catalog
//! is kept beside it, never deleted.

use std::path::Path;
use std::sync::Arc;

use custos_repo::{copy, PgRepository, RepoError, Repository, SqliteRepository};
use serde::Serialize;

use crate::softhome::SoftHome;
use crate::vault::{Open, Vault, DB_FILE, HSM_FILE, REPOSITORY_FILE};
use crate::{Error, Result};

/// Where `repo migrate` moves the catalog.
#[derive(Clone)]
pub enum MigrateTarget {
    /// An empty PostgreSQL database at this address.
    Postgres(String),
    /// `custos.db` in the vault directory.
    Sqlite,
}

impl std::fmt::Debug for MigrateTarget {
    /// Never the address: it may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Postgres(_) => "Postgres(<address>)",
            Self::Sqlite => "Sqlite",
        })
    }
}

impl MigrateTarget {
    /// `sqlite` (or `custos.db`), or a PostgreSQL address.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "sqlite" | "custos.db" => Ok(Self::Sqlite),
            s if s.starts_with("postgres://") || s.starts_with("postgresql://") || s.contains("dbname=") => {
                Ok(Self::Postgres(s.to_string()))
            }
            _ => Err(Error::Invalid {
                what: "--to",
                why: format!(
                    "{s:?} is neither `sqlite` nor a PostgreSQL address (postgres://user@host/database): name where the catalog should go"
                ),
            }),
        }
    }
}

/// What a migration did.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateReport {
    /// "custos.db" or "PostgreSQL" (never an address: it may hold a password).
    pub from: String,
    pub to: String,
    /// Rows copied, per table.
    pub tables: Vec<(String, u64)>,
    pub rows: u64,
    /// Rows whose MAC was checked in the copy.
    pub macs_checked: u64,
    /// Audit entries verified in the copy.
    pub audit_entries: u64,
    /// Where the previous catalog was kept.
    pub kept: String,
    /// Where the software HSM's file was kept when its state moved into
    /// the catalog on PostgreSQL (the servers sharing it read it there).
    pub hsm_kept: Option<String>,
}

/// The first fault of a check, as the error that names it.
fn refuse_faults(check: &custos_repo::CatalogCheck, whose: &str) -> Result<()> {
    if let Some(f) = check.faults.first() {
        return Err(Error::Repo(RepoError::Tampered {
            table: f.table.clone(),
            row: f.row.clone(),
            why: format!("{} (in {whose}; {} faults in all)", f.why, check.faults.len()),
        }));
    }
    Ok(())
}

impl Vault<Open> {
    /// The same vault, HSM and row authentication over another catalog.
    fn over(&self, repo: Arc<dyn Repository>) -> Vault<Open> {
        repo.set_row_auth(self.repo.row_auth());
        Vault {
            dir: self.dir.clone(),
            repo,
            state: Open { hsm: self.state.hsm.clone() },
            threads: self.threads,
            journal: Default::default(),
            labels: Default::default(),
            memo: Default::default(),
        }
    }

    /// Check a copy against the source's row counts: every MAC, the audit
    /// chain, the same rows in every table.
    fn check_copy(&self, copy: &Vault<Open>, want: &copy::RowCounts, whose: &str) -> Result<(u64, u64)> {
        let got = copy.repo.row_counts()?;
        if &got != want {
            let differ: Vec<String> = want
                .iter()
                .zip(&got)
                .filter(|(a, b)| a != b)
                .map(|((t, a), (_, b))| format!("{t}: {a} in the source, {b} in the copy"))
                .collect();
            return Err(Error::Invalid {
                what: "migration",
                why: format!(
                    "the copy does not hold the source's rows ({}): the catalog changed while it was copied. Stop every server and command on this vault and run it again",
                    differ.join(", ")
                ),
            });
        }
        let check = copy.catalog_verify()?;
        refuse_faults(&check, whose)?;
        let audit = copy.audit_verify()?;
        if let Some(problem) = audit.problem {
            return Err(Error::AuditTampered { problem: format!("{problem} (in {whose})") });
        }
        Ok((check.rows, audit.entries))
    }

    /// Move the catalog to `to`, as `who` (audited in the moved catalog).
    pub fn migrate_catalog(&self, to: &MigrateTarget, who: &str) -> Result<MigrateReport> {
        // A forged row or a broken chain never travels: the source verifies
        // first.
        refuse_faults(&self.catalog_verify()?, "the source catalog")?;
        if let Some(problem) = self.audit_verify()?.problem {
            return Err(Error::AuditTampered { problem });
        }
        let report = match (self.repo.remote(), to) {
            (false, MigrateTarget::Postgres(url)) => self.to_postgres(url)?,
            (true, MigrateTarget::Sqlite) => self.to_sqlite()?,
            (false, MigrateTarget::Sqlite) => {
                return Err(Error::Invalid { what: "--to", why: "the catalog is custos.db already: nothing to do".into() })
            }
            (true, MigrateTarget::Postgres(_)) => {
                return Err(Error::Invalid {
                    what: "--to",
                    why: "the catalog is on PostgreSQL already: move it between PostgreSQL servers with PostgreSQL's own tools (pg_dump and pg_restore, or replication), then point the vault's `repository` at the new one".into(),
                })
            }
        };
        // The vault opens the new catalog from now on; its log says so.
        let now = self.over(Vault::open(&self.dir)?.repo);
        now.audit_append(who, "repo-migrate", &format!("{} to {}", report.from, report.to), "ok")?;
        Ok(report)
    }

    fn to_postgres(&self, url: &str) -> Result<MigrateReport> {
        let kept = self.dir.join(format!("{DB_FILE}.migrated"));
        if kept.exists() {
            return Err(Error::Invalid {
                what: "migration",
                why: format!("{} from an earlier migration is in the way: move it elsewhere first", kept.display()),
            });
        }
        let target = Arc::new(PgRepository::open(url)?);
        let hsm_at = self.dir.join(HSM_FILE);
        let hsm_file = match self.soft_home()? {
            SoftHome::File(p) if p.exists() => {
                Some(std::fs::read(&p).map_err(|source| Error::VaultIo { path: p.clone(), source })?)
            }
            _ => None,
        };
        let hsm_kept = self.dir.join(format!("{HSM_FILE}.migrated"));
        if hsm_file.is_some() && hsm_kept.exists() {
            return Err(Error::Invalid {
                what: "migration",
                why: format!("{} from an earlier migration is in the way: move it elsewhere first", hsm_kept.display()),
            });
        }
        let want = self.repo.row_counts()?;
        let mut checked = (0, 0);
        let src = self.dir.join(DB_FILE);
        let tables = copy::sqlite_to_postgres(&src, &target, |counts| {
            // The source is still held against writers here.
            if counts != &want {
                return Err(RepoError::Raced {
                    what: "the catalog".into(),
                    why: "it changed between counting and copying its rows".into(),
                });
            }
            let copy = self.over(target.clone());
            checked = self.check_copy(&copy, &want, "the copy in PostgreSQL").map_err(|e| RepoError::Raced {
                what: "the copy in PostgreSQL".into(),
                why: format!("{e}; it is left in that database: drop its tables (or the database) before trying again"),
            })?;
            let io = |source| RepoError::Io { what: format!("the vault directory {}", self.dir.display()), source };
            // The software HSM moves into the catalog, where every server
            // sharing it sees a master key change at once.
            if let Some(sealed) = &hsm_file {
                if target.put_hsm_state(sealed, None)?.is_none() {
                    return Err(RepoError::Raced {
                        what: "the copy in PostgreSQL".into(),
                        why: "that database already keeps a software HSM; it is left there: drop its tables (or the database) before trying again".into(),
                    });
                }
            }
            // Switch: the old catalog kept as one file, the address
            // recorded, and custos.db gone so the vault opens PostgreSQL.
            self.repo.copy_to(&kept)?;
            write_private(&self.dir.join(REPOSITORY_FILE), &format!("{url}\n")).map_err(io)?;
            for f in [DB_FILE.to_string(), format!("{DB_FILE}-wal"), format!("{DB_FILE}-shm")] {
                match std::fs::remove_file(self.dir.join(&f)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
                    _ => {}
                }
            }
            Ok(())
        })?;
        let mut report = self.report("custos.db", "PostgreSQL", tables, checked, &kept);
        if hsm_file.is_some() {
            std::fs::rename(&hsm_at, &hsm_kept).map_err(|source| Error::VaultIo { path: hsm_at.clone(), source })?;
            report.hsm_kept = Some(hsm_kept.display().to_string());
        }
        Ok(report)
    }

    fn to_sqlite(&self) -> Result<MigrateReport> {
        let new = self.dir.join(format!("{DB_FILE}.new"));
        let kept = self.dir.join(format!("{REPOSITORY_FILE}.migrated"));
        for p in [&new, &kept] {
            if p.exists() {
                return Err(Error::Invalid {
                    what: "migration",
                    why: format!("{} from an earlier migration is in the way: move it elsewhere first", p.display()),
                });
            }
        }
        self.repo.copy_to(&new)?;
        let result = (|| {
            let copy = self.over(Arc::new(SqliteRepository::open_existing(&new)?));
            let want = self.repo.row_counts()?;
            let checked = self.check_copy(&copy, &want, "the copy in custos.db")?;
            drop(copy);
            Ok((want, checked))
        })();
        let (tables, checked) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_file(&new);
                return Err(e);
            }
        };
        let io = |source| Error::VaultIo { path: self.dir.clone(), source };
        std::fs::rename(&new, self.dir.join(DB_FILE)).map_err(io)?;
        std::fs::rename(self.dir.join(REPOSITORY_FILE), &kept).map_err(io)?;
        Ok(self.report("PostgreSQL", "custos.db", tables, checked, &kept))
    }

    fn report(&self, from: &str, to: &str, tables: copy::RowCounts, checked: (u64, u64), kept: &Path) -> MigrateReport {
        MigrateReport {
            from: from.into(),
            to: to.into(),
            rows: tables.iter().map(|(_, n)| n).sum(),
            tables,
            macs_checked: checked.0,
            audit_entries: checked.1,
            kept: kept.display().to_string(),
            hsm_kept: None,
        }
    }
}

/// Write a new owner-only file in place of `path` (atomically).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
