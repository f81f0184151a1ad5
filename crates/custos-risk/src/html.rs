//! The risk page: one template for the console's Risk page and for
//! `custos risk report --format html`, so both read the same. Every cell
//! carries its verdict as a word (colour only repeats it) and a numbered
//! reason printed beneath its table, never only a tooltip.

use std::collections::HashMap;

use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::model::{KeyPath, Threat, Verdict};
use crate::report::{CopyAudit, DatasetRisk, Report};

/// The page's stylesheet (the console serves it as a file; the standalone
/// report inlines it).
pub const STYLESHEET: &str = include_str!("../assets/risk.css");

/// Where a finding's subject (a dataset, key, volume…) can be looked at, if
/// anywhere: the console links to its pages, a static report to nothing.
pub type Linker<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The last drill of one cell, shown beside the model's verdict.
type Proof = custos_core::model::DrillRecord;

/// Drill results by (dataset, threats in [`Threat::name`] form, joined with
/// `+` for a pair).
type Proofs = HashMap<(String, String), Proof>;

fn proofs(r: &Report) -> Proofs {
    r.drills.iter().map(|d| ((d.dataset.clone(), d.threats.clone()), d.clone())).collect()
}

/// The verdict's class (for colour) and its word (which carries the
/// meaning on its own).
pub fn verdict_class(v: &Verdict) -> (&'static str, &'static str) {
    match v {
        Verdict::Unaffected => ("v-un", "unaffected"),
        Verdict::Survives { .. } => ("v-yes", "survives"),
        Verdict::SurvivesIf { .. } => ("v-if", "survives if"),
        Verdict::Stale { .. } => ("v-old", "older state only"),
        Verdict::Lost { .. } => ("v-no", "lost"),
    }
}

/// Numbered reasons for one table: each distinct sentence once.
struct Notes {
    prefix: &'static str,
    list: Vec<String>,
    index: HashMap<String, usize>,
}

impl Notes {
    fn new(prefix: &'static str) -> Self {
        Self { prefix, list: Vec::new(), index: HashMap::new() }
    }

    fn number(&mut self, why: String) -> usize {
        if let Some(n) = self.index.get(&why) {
            return *n;
        }
        self.list.push(why.clone());
        let n = self.list.len();
        self.index.insert(why, n);
        n
    }

    fn cell(&mut self, v: &Verdict, text: &str, threat: &str, subject: (&str, &str), extra: Option<&Proof>) -> Markup {
        let (class, word) = verdict_class(v);
        let n = self.number(v.explain());
        let prefix = self.prefix;
        html! {
            td class=(class) data-threat=(threat) data-subject=(subject.1) data-kind=(subject.0) data-verdict=(kind_name(v)) {
                span.cell-text { (text) }
                @if text != word && !matches!(v, Verdict::Lost { .. }) { span.sr-only { " (" (word) ")" } }
                " " a.note href={ "#" (prefix) "-" (n) } aria-label={ "reason " (n) } { (n) }
                @if let Some(p) = extra {
                    span class={ "proof " @if p.agrees { "proof-ok" } @else { "proof-bad" } } data-proof=(if p.agrees { "agrees" } else { "disagrees" }) {
                        @if p.agrees { "proven " } @else { "drill disagrees (" @if p.survived { "survived" } @else { "lost" } ") " }
                        "on " time datetime=(p.at.to_string()) { (p.at.strftime("%Y-%m-%d")) }
                    }
                }
            }
        }
    }

    fn render(&self, title: &str) -> Markup {
        html! {
            @if !self.list.is_empty() {
                details.notes open {
                    summary { "Reasons: " (title) }
                    ol.notes {
                        @for (i, why) in self.list.iter().enumerate() {
                            li id={ (self.prefix) "-" (i + 1) } { (why) }
                        }
                    }
                }
            }
        }
    }
}

/// The verdict's serialized name, as `--format json` has it.
fn kind_name(v: &Verdict) -> &'static str {
    match v {
        Verdict::Unaffected => "unaffected",
        Verdict::Survives { .. } => "survives",
        Verdict::SurvivesIf { .. } => "survives-if",
        Verdict::Stale { .. } => "stale",
        Verdict::Lost { .. } => "lost",
    }
}

fn legend() -> Markup {
    let sample = [
        ("v-yes", "survives", "a copy saves today's data with no key recovery"),
        ("v-if", "survives if", "a copy saves it once its key is recovered (keystore backup, escrow, restore)"),
        ("v-old", "older state only", "only an earlier generation survives (a recovery point)"),
        ("v-no", "lost", "nothing saves it"),
        ("v-un", "unaffected", "the threat does not touch the dataset"),
    ];
    html! {
        section.legend aria-label="Legend" {
            h3 { "How to read the tables" }
            ul {
                @for (class, word, meaning) in sample {
                    li { span class={ "swatch " (class) } { (word) } " " (meaning) }
                }
            }
            p {
                "An application's cell is its worst dataset; " strong { "lost (1 of 3 survive)" }
                " counts the datasets that survive. The small number in a cell points to its reason, listed under the table."
            }
        }
    }
}

/// The risk page's content (everything inside `<main>`): the summary, the
/// paper's Table 2 by application, pair matrices, the per-dataset table and
/// pair matrices, the recoverability audit and the findings.
pub fn risk_body(r: &Report, dual: bool, link: Linker<'_>) -> Markup {
    let sealed = !r.keys_checked;
    let proofs = &proofs(r);
    let rows = r.rows().all();
    html! {
        section.summary {
            p {
                "Generated " time datetime=(r.generated_at.to_string()) { (r.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC")) }
                ". " (r.rows().len()) " datasets in " (r.apps().len()) " applications; "
                (r.copies.len()) " backups and snapshots; " (r.unencrypted_copies) " unencrypted copies."
            }
            @if sealed {
                p.warning role="note" {
                    strong { "Not checked in the HSM. " }
                    "The HSM was not opened"
                    @if let Some(w) = &r.sealed_because { " (" (w) ")" }
                    ": key records are trusted, not checked, so a damaged one counts as usable."
                }
            } @else {
                p { "Every key the verdicts rely on was checked in the HSM (it unwraps to its check value)." }
            }
            @if r.as_if_unencrypted {
                p.warning role="note" {
                    strong { "As if unencrypted (the paper's Table 1). " }
                    "No copy needs a key, so only the threats to data are judged; the report without this option adds the key threats (Table 2)."
                }
            }
            @if r.unencrypted_copies > 0 && !r.as_if_unencrypted {
                p.warning role="note" {
                    strong { (r.unencrypted_copies) @if r.unencrypted_copies == 1 { " copy is" } @else { " copies are" } " not encrypted. " }
                    "They survive the loss of every key, but whoever holds their medium reads the data: see the findings."
                }
            }
            @if let Some(d) = r.horizon_days { p { "Looked " (d) " days ahead: retention rules and keys falling due were weighed against it." } }
            @if r.drills.is_empty() {
                p { "No drill has been run on these datasets: the verdicts are the model's. " code { "custos risk drill" } " proves them on scratch clones." }
            } @else {
                @let disagree = r.drills.iter().filter(|d| !d.agrees).count();
                @let last = r.drills.iter().map(|d| d.at).max();
                p {
                    (r.drills.len()) @if r.drills.len() == 1 { " cell was drilled" } @else { " cells were drilled" }
                    @if let Some(t) = last { " (last on " (t.strftime("%Y-%m-%d")) ")" }
                    "; " @if disagree == 0 { "every drill agrees with the model." } @else { strong { (disagree) " drills disagree with the model" } ": see the cells marked so." }
                    " A cell shows its last drill under its verdict."
                }
            }
        }
        (legend())
        (app_table(r))
        @if dual { (app_pairs(r)) }
        (dataset_table(r, &rows, proofs))
        @if dual { (dataset_pairs(r, &rows, proofs)) }
        (copies(r))
        (findings(r, link))
    }
}

fn app_table(r: &Report) -> Markup {
    let mut notes = Notes::new("app");
    let body = html! {
        table.risk id=(if r.as_if_unencrypted { "table-1" } else { "table-2" }) {
            caption { "By application: which threats each application's data survives (its worst dataset)" }
            thead { tr {
                th scope="col" { "Threat" }
                @for a in r.apps() {
                    th scope="col" data-app=(a.app) { (a.app) br; span.count { (a.datasets) " " (plural(a.datasets, "dataset")) } }
                }
            } }
            tbody {
                @for (i, t) in r.threats.iter().enumerate() {
                    tr {
                        th scope="row" data-threat=(t.name()) { (t.title()) }
                        @for a in r.apps() {
                            @let (_, ok, v) = &a.single[i];
                            (notes.cell(v, &app_text(*ok, a.datasets, v), t.name(), ("app", &a.app), None))
                        }
                    }
                }
            }
        }
    };
    html! {
        section.table-block {
            h2 id="by-application" { "By application" }
            div.scroll { (body) }
            (notes.render("by application"))
        }
    }
}

/// The application cell's words: its worst verdict, and how many of its
/// datasets survive when not all do.
fn app_text(ok: usize, n: usize, worst: &Verdict) -> String {
    match worst {
        Verdict::Lost { .. } if ok == 0 => "lost".into(),
        Verdict::Lost { .. } => format!("lost ({ok} of {n} survive)"),
        v => cell_words(v),
    }
}

/// A verdict in a few words (the terminal table's cell, spelled out).
fn cell_words(v: &Verdict) -> String {
    match v {
        Verdict::Lost { .. } => "lost".into(),
        v => v.cell(),
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        what.to_string()
    } else {
        format!("{what}s")
    }
}

fn pair_matrix(
    caption: &str,
    notes: &mut Notes,
    subject: (&str, &str),
    threats: &[Threat],
    find: &dyn Fn(Threat, Threat) -> Option<(String, Verdict)>,
    proofs: &dyn Fn(Threat, Threat) -> Option<Proof>,
) -> Markup {
    html! {
        table.risk.pairs {
            caption { (caption) }
            thead { tr {
                th scope="col" { "First threat \\ second" }
                @for t in threats { th scope="col" data-threat=(t.name()) { (t.title()) } }
            } }
            tbody {
                @for (i, x) in threats.iter().enumerate() {
                    tr {
                        th scope="row" data-threat=(x.name()) { (x.title()) }
                        @for (j, y) in threats.iter().enumerate() {
                            @if j <= i {
                                td.blank { @if j == i { span.sr-only { "same threat" } } }
                            } @else {
                                @match find(*x, *y) {
                                    Some((text, v)) => {
                                        @let p = proofs(*x, *y);
                                        (notes.cell(&v, &text, &format!("{}+{}", x.name(), y.name()), subject, p.as_ref()))
                                    }
                                    None => td.blank {}
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn app_pairs(r: &Report) -> Markup {
    let mut notes = Notes::new("apppair");
    let tables: Vec<Markup> = r
        .apps()
        .iter()
        .map(|a| {
            let find = |x: Threat, y: Threat| {
                a.dual
                    .iter()
                    .find(|((p, q), _, _)| (*p == x && *q == y) || (*p == y && *q == x))
                    .map(|(_, ok, v)| (app_text(*ok, a.datasets, v), v.clone()))
            };
            pair_matrix(
                &format!("{}: two threats at once (worst of {} {})", a.app, a.datasets, plural(a.datasets, "dataset")),
                &mut notes,
                ("app", &a.app),
                &r.threats,
                &find,
                &|_, _| None,
            )
        })
        .collect();
    html! {
        section.table-block {
            h2 id="pairs-by-application" { "Two threats at once, by application" }
            @for t in &tables { div.scroll { (t) } }
            (notes.render("two threats, by application"))
        }
    }
}

fn dataset_table(r: &Report, rows: &[DatasetRisk], proofs: &Proofs) -> Markup {
    let mut notes = Notes::new("ds");
    let body = html! {
        table.risk id="by-dataset-table" {
            caption { "By dataset: one row per dataset, one column per threat" }
            thead { tr {
                th scope="col" { "Dataset" }
                @for t in &r.threats { th scope="col" data-threat=(t.name()) { (t.title()) } }
            } }
            tbody {
                @for d in rows {
                    tr {
                        th scope="row" { (d.dataset) br; span.count { (d.app) } }
                        @for (t, v) in &d.single {
                            @let p = proofs.get(&(d.dataset.clone(), t.name().to_string()));
                            (notes.cell(v, &cell_words(v), t.name(), ("dataset", &d.dataset), p))
                        }
                    }
                }
            }
        }
    };
    html! {
        section.table-block {
            h2 id="by-dataset" { "By dataset" }
            div.scroll { (body) }
            (notes.render("by dataset"))
        }
    }
}

fn dataset_pairs(r: &Report, rows: &[DatasetRisk], proofs: &Proofs) -> Markup {
    let mut notes = Notes::new("dspair");
    let tables: Vec<Markup> = rows
        .iter()
        .map(|d| {
            let find = |x: Threat, y: Threat| {
                d.dual
                    .iter()
                    .find(|((p, q), _)| (*p == x && *q == y) || (*p == y && *q == x))
                    .map(|(_, v)| (cell_words(v), v.clone()))
            };
            let proof = |x: Threat, y: Threat| {
                proofs
                    .get(&(d.dataset.clone(), format!("{}+{}", x.name(), y.name())))
                    .or_else(|| proofs.get(&(d.dataset.clone(), format!("{}+{}", y.name(), x.name()))))
                    .cloned()
            };
            pair_matrix(
                &format!("{}: two threats at once", d.dataset),
                &mut notes,
                ("dataset", &d.dataset),
                &r.threats,
                &find,
                &proof,
            )
        })
        .collect();
    html! {
        section.table-block {
            h2 id="pairs-by-dataset" { "Two threats at once, by dataset" }
            @for t in &tables { div.scroll { (t) } }
            (notes.render("two threats, by dataset"))
        }
    }
}

fn decryptable(c: &CopyAudit) -> (&'static str, String) {
    match &c.path {
        Some(KeyPath::Live) => ("v-yes", "yes".into()),
        Some(KeyPath::NoKey) => ("v-if", "needs no key: NOT ENCRYPTED, whoever holds the medium reads it".into()),
        Some(KeyPath::KeystoreBackup { id }) => ("v-if", format!("only through keystore backup {id}")),
        Some(KeyPath::Escrow) => ("v-if", "only through escrow".into()),
        Some(KeyPath::Archived) => ("v-if", "after `custos key restore` (its key is archived)".into()),
        Some(KeyPath::PendingDestruction { due }) => {
            ("v-if", format!("only until {due}, when its key is destroyed, unless `custos key cancel-destroy`"))
        }
        None => ("v-no", format!("no: {}", c.why.clone().unwrap_or_default())),
    }
}

fn copies(r: &Report) -> Markup {
    let damaged = |c: &&CopyAudit| c.checked.as_ref().is_some_and(|k| k.problem.is_some());
    let ok = r.copies.iter().filter(|c| c.path.is_some() && !damaged(c)).count();
    html! {
        section.table-block {
            h2 id="recoverability" { "Recoverability audit" }
            p { (ok) " of " (r.copies.len()) " backups and snapshots can be decrypted today and were not found damaged." }
            @if !r.copies.is_empty() {
                div.scroll { table.plain {
                    caption { "Every backup and snapshot: can it be decrypted today, and what its last check found" }
                    thead { tr { th scope="col" { "Dataset" } th scope="col" { "Copy" } th scope="col" { "Kind" } th scope="col" { "Key" } th scope="col" { "Made" } th scope="col" { "Decryptable" } th scope="col" { "Last check" } } }
                    tbody {
                        @for c in &r.copies {
                            @let (class, how) = decryptable(c);
                            tr {
                                td { (c.dataset) } td { code { (c.copy) } } td { (c.kind.as_str()) } td { code { (c.key) } }
                                td { (c.created_at.strftime("%Y-%m-%d %H:%M")) }
                                td class=(class) { (how) }
                                td {
                                    @match &c.checked {
                                        None => "never read back",
                                        Some(k) => {
                                            (k.at.strftime("%Y-%m-%d")) ", " @if k.read_data { "every chunk" } @else { "manifest only" } ": "
                                            @match &k.problem { None => "sound", Some(p) => strong { "damaged: " (p) } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                } }
            }
        }
    }
}

fn findings(r: &Report, link: Linker<'_>) -> Markup {
    html! {
        section.table-block {
            h2 id="findings" { "Findings (" (r.findings.len()) ")" }
            @if r.findings.is_empty() {
                p { "None: nothing the paper warns about was found." }
            } @else {
                ul.findings {
                    @for f in &r.findings {
                        li data-code=(f.code) {
                            code.finding-code { (f.code) } " "
                            @match link(&f.subject) {
                                Some(href) => a href=(href) { (f.subject) },
                                None => strong { (f.subject) },
                            }
                            ": " (f.detail)
                        }
                    }
                }
            }
        }
    }
}

/// `custos risk report --format html`: the same page, standalone, with the
/// stylesheet inlined and nothing fetched.
pub fn render_document(r: &Report, dual: bool) -> String {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Custos risk report" }
                style { (PreEscaped(STYLESHEET)) }
            }
            body {
                main.risk-page {
                    h1 { "Custos risk report" }
                    (risk_body(r, dual, &|_| None))
                }
            }
        }
    };
    page.into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_numbered_once_however_many_cells_share_it() {
        let mut n = Notes::new("t");
        let lost = Verdict::Lost { why: "gone".into() };
        let a = n.cell(&lost, "lost", "disk-failure", ("dataset", "A"), None).into_string();
        let b = n.cell(&lost, "lost", "site-loss", ("dataset", "B"), None).into_string();
        assert!(a.contains("href=\"#t-1\"") && b.contains("href=\"#t-1\""), "{a} {b}");
        assert_eq!(n.list.len(), 1);
        let notes = n.render("x").into_string();
        assert!(notes.contains("id=\"t-1\""), "{notes}");
    }

    #[test]
    fn names_are_escaped() {
        let mut n = Notes::new("t");
        let v = Verdict::Lost { why: "<script>".into() };
        let cell = n.cell(&v, "<b>", "x", ("dataset", "\"q\""), None).into_string();
        assert!(!cell.contains("<b>") && cell.contains("&lt;b&gt;"), "{cell}");
        assert!(n.render("x").into_string().contains("&lt;script&gt;"));
    }
}
