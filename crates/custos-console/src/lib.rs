//! The console's pages (ADR 0025): HTML rendered on the server from the
//! engine's replies, in one layout, with the risk page shared with `custos
//! risk report --format html` ([`custos_risk::html`]). This crate decides
//! nothing: which buttons to draw comes from the caller (the engine's
//! `preflight`), and every action is a form the server turns into an
//! `Operation`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use custos_core::model::{BackupRecord, DatasetRecord, KeyRecord, KeyState, SnapshotRecord, VolumeRecord};
use custos_core::{Alert, AuditRow, DatasetInfo, MkStatus};
use custos_ops::RequestView;
use jiff::Timestamp;
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

/// The console's stylesheet, the risk page's, and its one script.
pub const CONSOLE_CSS: &str = include_str!("../assets/console.css");
pub const RISK_CSS: &str = custos_risk::html::STYLESHEET;
pub const CONSOLE_JS: &str = include_str!("../assets/console.js");

/// The pages in the navigation bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nav {
    Risk,
    Datasets,
    Keys,
    Requests,
    Audit,
    Health,
}

impl Nav {
    pub const ALL: [Nav; 6] = [Nav::Risk, Nav::Datasets, Nav::Keys, Nav::Requests, Nav::Audit, Nav::Health];

    pub fn title(self) -> &'static str {
        match self {
            Nav::Risk => "Risk",
            Nav::Datasets => "Datasets",
            Nav::Keys => "Keys",
            Nav::Requests => "Requests",
            Nav::Audit => "Audit",
            Nav::Health => "Health",
        }
    }

    pub fn href(self) -> &'static str {
        match self {
            Nav::Risk => "/ui/risk",
            Nav::Datasets => "/ui/datasets",
            Nav::Keys => "/ui/keys",
            Nav::Requests => "/ui/requests",
            Nav::Audit => "/ui/audit",
            Nav::Health => "/ui/health",
        }
    }
}

/// A one-shot message after an action.
#[derive(Clone, Debug)]
pub struct Notice {
    pub ok: bool,
    pub text: String,
}

/// What every page's frame shows.
pub struct Frame<'a> {
    pub title: &'a str,
    pub nav: Nav,
    pub principal: &'a str,
    pub roles: &'a [String],
    pub csrf: &'a str,
    pub notice: Option<Notice>,
}

/// Every page's head: its title, the two stylesheets, and the script
/// where a page has actions.
fn head(title: &str, script: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Custos" }
            link rel="stylesheet" href="/ui/assets/risk.css";
            link rel="stylesheet" href="/ui/assets/console.css";
            @if script { script src="/ui/assets/console.js" defer {} }
        }
    }
}

/// A whole page: the frame around `body`.
pub fn page(f: &Frame<'_>, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(f.title, true))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "Custos" }
                    nav aria-label="Pages" {
                        ul {
                            @for n in Nav::ALL {
                                li {
                                    @if n == f.nav { a href=(n.href()) aria-current="page" { (n.title()) } }
                                    @else { a href=(n.href()) { (n.title()) } }
                                }
                            }
                        }
                    }
                    div.who {
                        span { "Signed in as " strong data-principal=(f.principal) { (f.principal) } }
                        @if !f.roles.is_empty() { span.roles { " (" (f.roles.join(", ")) ")" } }
                        form method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(f.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main id="main" class="risk-page" tabindex="-1" {
                    h1 { (f.title) }
                    @if let Some(n) = &f.notice {
                        @if n.ok { div.notice.ok role="status" { pre { (n.text) } } }
                        @else { div.notice.bad role="alert" { strong { "Refused or failed: " } pre { (n.text) } } }
                    }
                    (body)
                }
            }
        }
    }
    .into_string()
}

/// A page without the navigation (no session, or no such page).
fn bare(title: &str, content: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, false))
            body.login { main id="main" { (content) } }
        }
    }
    .into_string()
}

/// The login page (no session yet).
pub fn login_page(error: Option<&str>, next: &str) -> String {
    bare(
        "Sign in",
        html! {
            h1 { "Custos" }
            p { "Sign in with a principal's name and its passphrase or token. Everything you do here is checked and audited as from the command line." }
            @if let Some(e) = error { div.notice.bad role="alert" { (e) } }
            form.login method="post" action="/ui/login" {
                input type="hidden" name="next" value=(next);
                label for="name" { "Principal" }
                input id="name" name="name" type="text" autocomplete="username" required autofocus;
                label for="credential" { "Passphrase or token" }
                input id="credential" name="credential" type="password" autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// A path the console does not have.
pub fn not_found() -> String {
    bare(
        "Not found",
        html! {
            h1 { "No such page" }
            p { "The console has no page here. " a href="/ui/risk" { "Go to the Risk page" } "." }
        },
    )
}

/// An action button: a POST form carrying the CSRF token and `fields`;
/// `confirm` asks first (with the script), `danger` marks it destructive.
pub fn action(
    csrf: &str,
    to: &str,
    label: &str,
    fields: &[(&str, &str)],
    confirm: Option<&str>,
    danger: bool,
) -> Markup {
    html! {
        form.action method="post" action=(to) data-confirm=[confirm] {
            input type="hidden" name="csrf" value=(csrf);
            @for (k, v) in fields { input type="hidden" name=(k) value=(v); }
            button type="submit" class=[danger.then_some("danger")] { (label) }
        }
    }
}

fn ts(t: &Timestamp) -> Markup {
    html! { time datetime=(t.to_string()) { (t.strftime("%Y-%m-%d %H:%M UTC")) } }
}

fn opt_ts(t: &Option<Timestamp>) -> Markup {
    match t {
        Some(t) => ts(t),
        None => html! { span.muted { "never" } },
    }
}

/// A serde value's own name (`"pre-active"`, `"PRIM"`, `"logical"`).
pub fn word<T: serde::Serialize>(t: &T) -> String {
    match serde_json::to_value(t) {
        Ok(Value::String(s)) => s,
        Ok(v) => v.to_string(),
        Err(_) => String::new(),
    }
}

fn size(bytes: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn state_badge(s: KeyState) -> Markup {
    let class = match s {
        KeyState::Active => "v-yes",
        KeyState::PreActive | KeyState::Inactive => "v-un",
        KeyState::Archived => "v-if",
        KeyState::Compromised | KeyState::Destroyed => "v-no",
    };
    html! { span class={ "badge " (class) } data-state=(word(&s)) { (word(&s)) } }
}

/// A JSON value as nested lists: the fallback for replies without a page
/// of their own, and the fields of a request's stored operation.
pub fn value(v: &Value) -> Markup {
    match v {
        Value::Object(m) if m.is_empty() => html! { span.muted { "(none)" } },
        Value::Object(m) => html! {
            dl.fields { @for (k, v) in m { dt { (k.replace('_', " ")) } dd { (value(v)) } } }
        },
        Value::Array(a) if a.is_empty() => html! { span.muted { "(none)" } },
        Value::Array(a) => html! { ul.values { @for v in a { li { (value(v)) } } } },
        Value::String(s) => html! { code { (s) } },
        Value::Null => html! { span.muted { "(not given)" } },
        v => html! { code { (v.to_string()) } },
    }
}

// ---- Risk ---------------------------------------------------------------------

/// The risk page: which datasets and whether pairs, a print button, and
/// the shared template.
pub fn risk(
    r: &custos_risk::report::Report,
    dual: bool,
    pattern: Option<&str>,
    link: custos_risk::html::Linker<'_>,
) -> Markup {
    html! {
        form.filters.toolbar method="get" action="/ui/risk" role="search" {
            label { "Datasets " input name="pattern" type="text" placeholder="all, or e.g. PAY.**" value=[pattern]; }
            label.inline {
                @if dual { input type="checkbox" name="dual" value="1" checked; } @else { input type="checkbox" name="dual" value="1"; }
                " two threats at once"
            }
            button type="submit" { "Show" }
            button type="button" data-print { "Print" }
        }
        (custos_risk::html::risk_body(r, dual, link))
    }
}

// ---- Keys ---------------------------------------------------------------------

/// What the principal may do to a key, as the engine's preflight said.
#[derive(Clone, Debug, Default)]
pub struct KeyRights {
    pub destroy: bool,
    pub cancel_destroy: bool,
    pub lifecycle: Vec<&'static str>,
}

/// "Next page" and "first page" links for a listing paged by name.
fn pager(base: &str, after: Option<&str>, next: Option<&str>) -> Markup {
    html! {
        @if after.is_some() || next.is_some() {
            nav.pager aria-label="Pages of this list" {
                @if after.is_some() { a href=(base) { "First page" } " " }
                @if let Some(n) = next { a href={ (base) "?after=" (n) } rel="next" { "Next page" } }
            }
        }
    }
}

pub fn keys(list: &[KeyRecord], due: &BTreeMap<String, Timestamp>, after: Option<&str>, next: Option<&str>) -> Markup {
    html! {
        p {
            (list.len()) " keys" @if let Some(a) = after { " after " code { (a) } } @if next.is_some() { " (more on the next page)" }
            ". A key scheduled for destruction shows its deadline; it can be cancelled until then."
        }
        div.scroll { table.plain id="keys" {
            caption { "Keys in the keystore" }
            thead { tr {
                th scope="col" { "Label" } th scope="col" { "State" } th scope="col" { "Purpose" } th scope="col" { "Application" }
                th scope="col" { "Expires" } th scope="col" { "Destruction" } th scope="col" { "Escrow" } th scope="col" { "Last use" }
            } }
            tbody {
                @for k in list {
                    tr data-key=(k.label.as_str()) {
                        th scope="row" { a href={ "/ui/keys/" (k.label.as_str()) } { code { (k.label.as_str()) } } }
                        td { (state_badge(k.state)) }
                        td { (word(&k.purpose)) }
                        td { (k.app) }
                        td { (opt_ts(&k.expires_at)) }
                        td.deadline {
                            @match due.get(k.label.as_str()) {
                                Some(t) => span.v-no { "scheduled for " (ts(t)) },
                                None => span.muted { "none" },
                            }
                        }
                        td { @if k.escrow.is_some() { "escrowed" } @else { span.muted { "no" } } }
                        td { (opt_ts(&k.last_used_at)) " (" (k.use_count) ")" }
                    }
                }
            }
        } }
        (pager("/ui/keys", after, next))
    }
}

pub fn key(k: &KeyRecord, due: Option<&Timestamp>, coverage: &[String], rights: &KeyRights, csrf: &str) -> Markup {
    let label = k.label.as_str();
    let base = format!("/ui/keys/{label}");
    html! {
        dl.fields id="key" {
            dt { "State" } dd { (state_badge(k.state)) @if due.is_some() { " " span.badge.v-no { "scheduled for destruction" } } }
            dt { "Purpose" } dd { (word(&k.purpose)) }
            dt { "Application" } dd { (k.app) }
            dt { "Created" } dd { (ts(&k.created_at)) }
            dt { "Activated" } dd { (opt_ts(&k.activated_at)) }
            dt { "Deactivated" } dd { (opt_ts(&k.deactivated_at)) }
            dt { "Expires" } dd { (opt_ts(&k.expires_at)) }
            dt { "Scheduled destruction" } dd.deadline data-deadline=[due.map(|t| t.to_string())] {
                @match due { Some(t) => strong { (ts(t)) }, None => span.muted { "none" } }
            }
            dt { "Destroyed" } dd { (opt_ts(&k.destroyed_at)) }
            dt { "Last use" } dd { (opt_ts(&k.last_used_at)) " (" (k.use_count) " uses)" }
            dt { "Master key (MKVP)" } dd { code { (k.mkvp.to_string()) } }
            dt { "Escrow" } dd { @if k.escrow.is_some() { "an escrow copy is kept" } @else { "none" } }
            dt { "Keystore backups" } dd {
                @if coverage.is_empty() { span.v-no { "in no keystore backup" } }
                @else { "in " (coverage.len()) ": " (coverage.join(", ")) }
            }
            @if !k.attributes.names.is_empty() { dt { "KMIP names" } dd { (k.attributes.names.join(", ")) } }
        }
        @let any = rights.destroy || rights.cancel_destroy || !rights.lifecycle.is_empty();
        @if any {
            section.actions aria-label="Actions" {
                h2 { "Actions" }
                p.muted { "Under dual control these become requests another principal approves in Requests." }
                div.buttons {
                    @for a in &rights.lifecycle {
                        (action(csrf, &format!("{base}/lifecycle"), &capital(a), &[("action", a)], None, false))
                    }
                    @if rights.cancel_destroy {
                        (action(csrf, &format!("{base}/cancel-destroy"), "Cancel the destruction", &[], None, false))
                    }
                }
                @if rights.destroy {
                    form.action.destroy method="post" action={ (base) "/destroy" } data-confirm={ "Destroy " (label) "? Everything sealed only under it becomes unreadable." } {
                        input type="hidden" name="csrf" value=(csrf);
                        label for="wait" { "Wait before destroying (e.g. 7d; empty: the vault's default)" }
                        input id="wait" name="wait" type="text" inputmode="text" size="8";
                        button.danger type="submit" { "Request destruction" }
                    }
                }
            }
        }
    }
}

fn capital(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

// ---- Requests -----------------------------------------------------------------

/// What the principal may do to one request.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestRights {
    pub approve: bool,
    pub deny: bool,
    pub withdraw: bool,
}

pub fn requests(list: &[(RequestView, RequestRights)], csrf: &str) -> Markup {
    let (pending, done): (Vec<_>, Vec<_>) = list.iter().partition(|(r, _)| r.state == "pending");
    html! {
        h2 { "Waiting for a decision (" (pending.len()) ")" }
        @if pending.is_empty() { p { "Nothing is waiting." } }
        @for (r, can) in &pending { (request(r, *can, csrf)) }
        h2 { "Decided (" (done.len()) ")" }
        @if !done.is_empty() {
            div.scroll { table.plain id="decided" {
                caption { "Requests decided, withdrawn or expired" }
                thead { tr { th scope="col" { "#" } th scope="col" { "What" } th scope="col" { "By" } th scope="col" { "State" } th scope="col" { "Decided by" } th scope="col" { "When" } } }
                tbody { @for (r, _) in &done {
                    tr data-request=(r.id) {
                        td { (r.id) } td { (r.action) @if let Some(o) = object(&r.operation) { " " (o) } } td { (r.requested_by) } td { (r.state) }
                        td { (r.decided_by.clone().unwrap_or_default()) } td { (opt_ts(&r.decided_at)) }
                    }
                } }
            } }
        }
    }
}

fn request(r: &RequestView, can: RequestRights, csrf: &str) -> Markup {
    let base = format!("/ui/requests/{}", r.id);
    html! {
        article.request data-request=(r.id) aria-labelledby={ "req-" (r.id) } {
            h3 id={ "req-" (r.id) } { "#" (r.id) " " (r.action) @if let Some(o) = object(&r.operation) { ": " (o) } }
            dl.fields {
                dt { "Action" } dd { code { (r.action) } }
                dt { "Requested by" } dd { (r.requested_by) " at " (ts(&r.created_at)) }
                dt { "Expires" } dd { (ts(&r.expires_at)) }
                dt { "What it would do" } dd { (value(&r.operation)) }
            }
            div.buttons {
                @if can.approve { (action(csrf, &format!("{base}/approve"), "Approve", &[], Some("Approve this request? It runs at once."), false)) }
                @if can.deny { (action(csrf, &format!("{base}/deny"), "Deny", &[], None, true)) }
                @if can.withdraw { (action(csrf, &format!("{base}/withdraw"), "Withdraw", &[], None, false)) }
                @if !(can.approve || can.deny || can.withdraw) { p.muted { "You cannot decide this request." } }
            }
        }
    }
}

/// The object a stored operation is about (its key, dataset, pattern…).
fn object(op: &Value) -> Option<String> {
    ["label", "name", "target", "pattern", "id", "volume", "dataset"].iter().find_map(|k| match op.get(*k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

// ---- Audit --------------------------------------------------------------------

/// What an audit entry's result says: done, an attempt recorded before
/// acting (its outcome is a later entry), or refused or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Intent,
    Refused,
}

pub fn outcome(result: &str) -> Outcome {
    if result == "ok" || result.starts_with("ok:") {
        Outcome::Ok
    } else if result == "intent" || result.starts_with("intent:") {
        Outcome::Intent
    } else {
        Outcome::Refused
    }
}

/// The audit page's filters, as given.
#[derive(Clone, Debug, Default)]
pub struct AuditFilters {
    pub since: String,
    pub principal: String,
    pub object: String,
    pub outcome: String,
}

pub fn audit(rows: &[AuditRow], f: &AuditFilters, more: Option<u64>, can_verify: bool, csrf: &str) -> Markup {
    html! {
        form.filters method="get" action="/ui/audit" role="search" {
            label { "Since " input name="since" type="date" value=(f.since); }
            label { "Principal " input name="principal" type="text" value=(f.principal); }
            label { "Object " input name="object" type="text" value=(f.object); }
            label { "Outcome "
                select name="outcome" {
                    @for (v, t) in [("", "any"), ("ok", "succeeded"), ("refused", "refused or failed"), ("intent", "attempts (intent)")] {
                        @if f.outcome == v { option value=(v) selected { (t) } } @else { option value=(v) { (t) } }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        @if can_verify {
            (action(csrf, "/ui/audit/verify", "Verify the audit chain", &[], None, false))
        }
        p { (rows.len()) " entries, newest first." }
        div.scroll { table.plain id="audit" {
            caption { "Audit log" }
            thead { tr { th scope="col" { "#" } th scope="col" { "When" } th scope="col" { "Principal" } th scope="col" { "Action" } th scope="col" { "Object" } th scope="col" { "Outcome" } } }
            tbody { @for r in rows {
                tr {
                    td { (r.seq) } td { (ts(&r.at)) } td { (r.principal) } td { (r.action) } td { code { (r.object) } }
                    @let (class, word) = match outcome(&r.result) {
                        Outcome::Ok => ("v-yes", "succeeded"),
                        Outcome::Intent => ("v-un", "attempt"),
                        Outcome::Refused => ("v-no", "refused or failed"),
                    };
                    td class=(class) data-outcome=(word) { (r.result) }
                }
            } }
        } }
        @if let Some(after) = more {
            p { a href={ "/ui/audit?after=" (after) } { "Older entries" } }
        }
    }
}

// ---- Datasets -----------------------------------------------------------------

pub fn datasets(list: &[DatasetRecord], after: Option<&str>, next: Option<&str>) -> Markup {
    html! {
        p { (list.len()) " datasets" @if let Some(a) = after { " after " (a) } @if next.is_some() { " (more on the next page)" } "." }
        div.scroll { table.plain id="datasets" {
            caption { "Datasets" }
            thead { tr { th scope="col" { "Name" } th scope="col" { "Generation" } th scope="col" { "Size" } th scope="col" { "Volume" } th scope="col" { "Key" } th scope="col" { "Written" } th scope="col" { "Migrated from" } } }
            tbody { @for d in list {
                tr {
                    th scope="row" { a href={ "/ui/datasets/" (d.name.as_str()) } { (d.name.as_str()) } }
                    td { (d.current.generation) } td { (size(d.current.size)) } td { (d.current.volume.as_str()) }
                    td { code { (d.current.key_label.as_str()) } } td { (ts(&d.current.created_at)) }
                    td { @match &d.migrated_from { Some(v) => (v.as_str()), None => span.muted { "—" } } }
                }
            } }
        } }
        (pager("/ui/datasets", after, next))
    }
}

/// What the principal may do to a dataset, and where a backup can go.
#[derive(Clone, Debug, Default)]
pub struct DatasetRights {
    pub verify: bool,
    /// Backup methods the principal may start, and the volumes to offer.
    pub backup: Vec<&'static str>,
    pub volumes: Vec<String>,
}

fn check_text(c: &Option<custos_core::model::CopyCheck>) -> Markup {
    match c {
        None => html! { span.muted { "never read back" } },
        Some(k) => html! {
            (ts(&k.at)) ", " @if k.read_data { "every chunk" } @else { "manifest only" } ": "
            @match &k.problem { None => "sound", Some(p) => strong.v-no { "damaged: " (p) } }
        },
    }
}

pub fn dataset(
    info: &DatasetInfo,
    volumes: &[VolumeRecord],
    backups: &[BackupRecord],
    snapshots: &[SnapshotRecord],
    rights: &DatasetRights,
    csrf: &str,
) -> Markup {
    let d = &info.record;
    let site = |v: &str| volumes.iter().find(|x| x.name.as_str() == v).map(|x| x.site.clone()).unwrap_or_default();
    let now = Timestamp::now();
    let age = |t: &Timestamp| {
        let days = now.duration_since(*t).as_secs() / 86_400;
        if days == 0 {
            "today".to_string()
        } else {
            format!("{days} days")
        }
    };
    let base = format!("/ui/datasets/{}", d.name.as_str());
    html! {
        dl.fields {
            dt { "Generation" } dd { (d.current.generation) " (" (size(d.current.size)) ", " (d.current.chunk_count) " chunks)" }
            dt { "Volume" } dd { (info.volume.name.as_str()) " at site " (info.volume.site) " (" (word(&info.volume.medium)) ")" }
            dt { "Key" } dd { a href={ "/ui/keys/" (d.current.key_label.as_str()) } { code { (d.current.key_label.as_str()) } } " " (state_badge(info.key_state)) }
            dt { "Written" } dd { (ts(&d.current.created_at)) }
            dt { "Last read or written" } dd { (ts(&d.last_access)) }
            dt { "Migration" } dd { @match &d.migrated_from { Some(v) => { "migrated from " (v.as_str()) }, None => "not migrated" } }
        }
        h2 { "Copies (" (backups.len()) ")" }
        @if backups.is_empty() { p.v-no { "No backup: one failure of its volume loses it." } } @else {
            div.scroll { table.plain id="copies" {
                caption { "Backups of this dataset" }
                thead { tr { th scope="col" { "#" } th scope="col" { "Method" } th scope="col" { "Volume" } th scope="col" { "Site" } th scope="col" { "Key" } th scope="col" { "Of generation" } th scope="col" { "Age" } th scope="col" { "Last verified" } } }
                tbody { @for b in backups {
                    tr {
                        td { (b.id) } td { (word(&b.method)) } td { (b.volume.as_str()) } td { (site(b.volume.as_str())) }
                        td { code { (b.key_label.as_str()) } } td { (b.source_generation) } td { (age(&b.created_at)) }
                        td { (check_text(&b.checked)) }
                    }
                } }
            } }
        }
        h2 { "Snapshots (" (snapshots.len()) ")" }
        @if !snapshots.is_empty() {
            div.scroll { table.plain {
                caption { "Snapshots of this dataset" }
                thead { tr { th scope="col" { "#" } th scope="col" { "Generation" } th scope="col" { "Volume" } th scope="col" { "Age" } th scope="col" { "Last verified" } } }
                tbody { @for s in snapshots {
                    tr { td { (s.id) } td { (s.generation) } td { (s.volume.as_str()) } td { (age(&s.created_at)) } td { (check_text(&s.checked)) } }
                } }
            } }
        }
        @if rights.verify || !rights.backup.is_empty() {
            section.actions aria-label="Actions" {
                h2 { "Actions" }
                @if rights.verify {
                    (action(csrf, &format!("{base}/verify"), "Verify (read every chunk)", &[], None, false))
                }
                @if !rights.backup.is_empty() && !rights.volumes.is_empty() {
                    form.action method="post" action={ (base) "/backup" } {
                        input type="hidden" name="csrf" value=(csrf);
                        label for="method" { "Method" }
                        select id="method" name="method" { @for m in &rights.backup { option value=(m) { (m) } } }
                        label for="to" { "To volume" }
                        select id="to" name="to" { @for v in &rights.volumes { option value=(v) { (v) } } }
                        button type="submit" { "Back up now" }
                    }
                }
            }
        }
    }
}

// ---- Health -------------------------------------------------------------------

pub fn health(
    alerts: Option<&[Alert]>,
    volumes: Option<&[VolumeRecord]>,
    mk: Option<&MkStatus>,
    server: &[(&str, String)],
) -> Markup {
    html! {
        h2 { "Alerts" }
        @match alerts {
            None => p.muted { "You may not run the monitor." },
            Some([]) => p.v-yes { "No alerts." },
            Some(list) => ul.findings id="alerts" { @for a in list {
                li data-code=(a.code) { code.finding-code { (a.code) } " " strong { (a.subject) } ": " (a.detail) }
            } },
        }
        h2 { "Volumes and sites" }
        @match volumes {
            None => p.muted { "You may not list volumes." },
            Some(list) => div.scroll { table.plain id="volumes" {
                caption { "Volumes" }
                thead { tr { th scope="col" { "Name" } th scope="col" { "Site" } th scope="col" { "Medium" } th scope="col" { "Location" } th scope="col" { "Added" } } }
                tbody { @for v in list { tr { th scope="row" { (v.name.as_str()) } td { (v.site) } td { (word(&v.medium)) } td { code { (v.location) } } td { (ts(&v.created_at)) } } } }
            } },
        }
        h2 { "Master keys" }
        @match mk {
            None => p.muted { "You may not see the master key registers." },
            Some(s) => {
                div.scroll { table.plain id="registers" {
                    caption { "Master key registers" }
                    thead { tr { th scope="col" { "Register" } th scope="col" { "MKVP" } th scope="col" { "Since" } th scope="col" { "Keys under it" } } }
                    tbody { @for r in &s.registers { tr { th scope="row" { (r.register) } td { code { (r.mkvp) } } td { (ts(&r.since)) } td { (r.keys) } } } }
                } }
                @if !s.orphaned.is_empty() {
                    p.v-no { "Keys under a master key no register holds: " @for (m, n) in &s.orphaned { code { (m) } " (" (n) ") " } }
                }
            }
        }
        h2 { "Server and repository" }
        dl.fields id="server" { @for (k, v) in server { dt { (k) } dd { (v) } } }
    }
}

/// A page for an error (not found, refused): what failed and what to do.
pub fn failure(text: &str) -> Markup {
    html! { div.notice.bad role="alert" { pre { (text) } } }
}
