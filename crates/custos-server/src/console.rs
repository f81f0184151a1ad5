//! The console's HTTP glue (ADR 0025): sessions, CSRF, security headers,
//! and forms turned into `Operation`s that the engine runs as the
//! session's principal. Pages are rendered by `custos-console`; every
//! decision (rights, dual control, audit) is the engine's.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use base64::Engine as _;
use custos_console::{self as ui, Frame, Nav, Notice};
use custos_core::model::{CopyMethod, DatasetName, KeyAction, KeyLabel, Pattern};
use custos_core::Passphrase;
use custos_ops::{Caller, Code, Engine, Io, Operation, Reply};
use maud::Markup;
use serde::Deserialize;

use crate::auth::constant_eq;
use crate::http::{Peer, Shared};

type St = State<Arc<Shared>>;

/// The session cookie: `__Host-` binds it to this origin, path `/`, Secure.
const COOKIE: &str = "__Host-custos";
/// A session unused this long ends.
const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after login, however busy.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// At most this many sessions (the oldest go first).
const MAX_SESSIONS: usize = 10_000;
/// The audit page shows at most this many entries at a time.
const AUDIT_PAGE: u32 = 500;
/// The keys and datasets pages show at most this many at a time.
const PAGE: u32 = 500;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

struct Session {
    principal: String,
    /// The principal's stored credential (hash) at sign-in: a new one
    /// ends the session.
    credential: String,
    csrf: String,
    created: Instant,
    last: Instant,
    notice: Option<Notice>,
}

/// Sessions by the SHA-256 of their cookie (the cookie itself is never kept).
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
}

fn digest(token: &str) -> [u8; 32] {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref().try_into().expect("32 bytes")
}

fn random_token() -> String {
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(&mut raw[..]).expect("the system's random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[..])
}

impl Sessions {
    fn start(&self, principal: String, credential: String) -> String {
        let token = random_token();
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| now.duration_since(s.last) < IDLE && now.duration_since(s.created) < LIFETIME);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(
            digest(&token),
            Session { principal, credential, csrf: random_token(), created: now, last: now, notice: None },
        );
        token
    }

    /// The live session a cookie names: its principal, CSRF token and the
    /// notice waiting for it (taken).
    fn get(&self, token: &str) -> Option<(String, String, Option<Notice>)> {
        self.get_at(token, Instant::now()).map(|(p, _, c, n)| (p, c, n))
    }

    /// (principal, its credential at sign-in, CSRF token, notice).
    fn get_at(&self, token: &str, now: Instant) -> Option<(String, String, String, Option<Notice>)> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let key = digest(token);
        let live = map
            .get(&key)
            .is_some_and(|s| now.duration_since(s.last) < IDLE && now.duration_since(s.created) < LIFETIME);
        if !live {
            map.remove(&key);
            return None;
        }
        let s = map.get_mut(&key)?;
        s.last = now;
        Some((s.principal.clone(), s.credential.clone(), s.csrf.clone(), s.notice.take()))
    }

    fn notice(&self, token: &str, n: Notice) {
        if let Some(s) = self.map.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&digest(token)) {
            s.notice = Some(n);
        }
    }

    fn end(&self, token: &str) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(&digest(token));
    }
}

pub fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/risk") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/risk") }))
        .route("/ui/assets/{file}", get(asset))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/risk", get(risk))
        .route("/ui/datasets", get(datasets))
        .route("/ui/datasets/{name}", get(dataset))
        .route("/ui/datasets/{name}/{action}", post(dataset_action))
        .route("/ui/keys", get(keys))
        .route("/ui/keys/{label}", get(key))
        .route("/ui/keys/{label}/{action}", post(key_action))
        .route("/ui/requests", get(requests))
        .route("/ui/requests/{id}/{action}", post(request_action))
        .route("/ui/audit", get(audit))
        .route("/ui/audit/verify", post(audit_verify))
        .route("/ui/health", get(health))
        .route("/ui/{*rest}", get(|| async { html(StatusCode::NOT_FOUND, ui::not_found()) }))
        .layer(axum::middleware::map_response(headers))
}

/// Every console response: a strict policy, no sniffing, no referrer to
/// other sites (a browser then names the page's origin on a POST, which
/// `no-referrer` would hide as `null`), and no caching of pages.
async fn headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

async fn asset(Path(file): Path<String>) -> Response {
    let (kind, body) = match file.as_str() {
        "console.css" => ("text/css; charset=utf-8", ui::CONSOLE_CSS),
        "risk.css" => ("text/css; charset=utf-8", ui::RISK_CSS),
        "console.js" => ("text/javascript; charset=utf-8", ui::CONSOLE_JS),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "private, max-age=300")], body).into_response()
}

fn html(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Whether a POST comes from a page of this console: a browser names the
/// page's origin (`Origin`) or says `Sec-Fetch-Site`; one that says another
/// site is refused. A client that says neither is not a browser a forged
/// page could drive, and still needs the session's CSRF token.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" {
            return false;
        }
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => {
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
            origin == format!("https://{host}")
        }
    }
}

/// Who the session is, read afresh (a disabled principal has no session).
struct Who {
    token: String,
    caller: Caller,
    name: String,
    roles: Vec<String>,
    csrf: String,
    notice: Option<Notice>,
}

fn to_login(next: &str) -> Response {
    let next = if next.starts_with("/ui/") && !next.starts_with("/ui//") { next } else { "/ui/risk" };
    let mut r = Redirect::to(&format!("/ui/login?next={}", percent(next, b""))).into_response();
    *r.status_mut() = StatusCode::SEE_OTHER;
    r
}

/// `s` with every byte outside the unreserved set, `/` and `keep`
/// percent-encoded.
fn percent(s: &str, keep: &[u8]) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) || keep.contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn session(s: &Shared, headers: &HeaderMap) -> Option<Who> {
    let token = cookie_value(headers)?;
    let (name, credential, csrf, notice) = s.console.get_at(&token, Instant::now())?;
    let p = s.engine.vault().user(&name).ok().filter(|p| !p.disabled && constant_eq(&p.credential, &credential));
    let Some(p) = p else {
        s.console.end(&token);
        return None;
    };
    let roles = p.roles.iter().map(ui::word).collect();
    Some(Who { token, name, roles, csrf, notice, caller: Caller::Principal(p) })
}

/// Render a page on a blocking thread (pages read the catalog) for the
/// session's principal, or send an unauthenticated request to login.
async fn page(
    s: Arc<Shared>,
    headers: HeaderMap,
    path: String,
    nav: Nav,
    title: impl Into<String> + Send + 'static,
    body: impl FnOnce(&Engine, &Caller, &str) -> Result<Markup, custos_ops::Error> + Send + 'static,
) -> Response {
    let r = tokio::task::spawn_blocking(move || {
        let Some(who) = session(&s, &headers) else { return to_login(&path) };
        let title = title.into();
        let (status, markup) = match body(&s.engine, &who.caller, &who.csrf) {
            Ok(m) => (StatusCode::OK, m),
            Err(e) => (status_of(e.code()), ui::failure(&e.to_string())),
        };
        let frame =
            Frame { title: &title, nav, principal: &who.name, roles: &who.roles, csrf: &who.csrf, notice: who.notice };
        html(status, ui::page(&frame, markup))
    })
    .await;
    r.unwrap_or_else(|e| html(StatusCode::INTERNAL_SERVER_ERROR, format!("the page could not be made: {e}")))
}

fn status_of(c: Code) -> StatusCode {
    StatusCode::from_u16(c.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn run(e: &Engine, who: &Caller, op: Operation) -> Result<Reply, custos_ops::Error> {
    Ok(e.execute(who, op, Io::default())?.reply)
}

fn may(e: &Engine, who: &Caller, op: &Operation) -> bool {
    e.preflight(who, op).is_ok()
}

// ---- login ----------------------------------------------------------------------

#[derive(Deserialize)]
struct Next {
    next: Option<String>,
}

async fn login_form(State(s): St, headers: HeaderMap, Query(q): Query<Next>) -> Response {
    let next = q.next.unwrap_or_else(|| "/ui/risk".into());
    let signed_in = tokio::task::spawn_blocking(move || session(&s, &headers).is_some()).await.unwrap_or(false);
    if signed_in {
        return Redirect::to("/ui/risk").into_response();
    }
    html(StatusCode::OK, ui::login_page(None, &next))
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    credential: String,
    next: Option<String>,
}

impl Drop for LoginForm {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        self.credential.zeroize();
    }
}

async fn login(
    State(s): St,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if !peer.tls {
        return html(
            StatusCode::FORBIDDEN,
            ui::login_page(
                Some("the console is served over TLS only (its cookie is Secure): use the server's https address"),
                "/ui/risk",
            ),
        );
    }
    if !same_origin(&headers) {
        return html(
            StatusCode::FORBIDDEN,
            ui::login_page(Some("this sign-in came from another site's page and was refused"), "/ui/risk"),
        );
    }
    let next = f
        .next
        .clone()
        .filter(|n| n.starts_with("/ui/") && !n.starts_with("/ui//") && !n.starts_with("/ui/login"))
        .unwrap_or_else(|| "/ui/risk".into());
    let s2 = s.clone();
    let r = tokio::task::spawn_blocking(move || {
        let secret = Passphrase::new(f.credential.as_bytes().to_vec());
        s2.auth
            .password(&s2.engine, &f.name, &secret)
            .map(|c| (f.name.clone(), c.principal().map(|p| p.credential.clone()).unwrap_or_default()))
    })
    .await;
    match r {
        Ok(Ok((name, credential))) => {
            let token = s.console.start(name, credential);
            let mut r = see_other(&next);
            *r.status_mut() = StatusCode::SEE_OTHER;
            let cookie = format!("{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict");
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Ok(Err(e)) => {
            s.metrics.login_failed();
            html(StatusCode::UNAUTHORIZED, ui::login_page(Some(&format!("{e}")), &next))
        }
        Err(e) => html(StatusCode::INTERNAL_SERVER_ERROR, ui::login_page(Some(&e.to_string()), &next)),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

fn cleared() -> HeaderValue {
    HeaderValue::from_static("__Host-custos=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

async fn logout(State(s): St, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    if let Some(token) = cookie_value(&headers) {
        if let Some((_, csrf, _)) = s.console.get(&token) {
            if same_origin(&headers) && constant_eq(&csrf, &f.csrf) {
                s.console.end(&token);
            } else {
                return html(
                    StatusCode::FORBIDDEN,
                    "the logout form's token does not match this session: reload the page and log out again".into(),
                );
            }
        }
    }
    let mut r = Redirect::to("/ui/login").into_response();
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut().insert(header::SET_COOKIE, cleared());
    r
}

/// Carry out a form's operation for the session's principal, after the
/// origin and CSRF checks; then back to `back` with what happened.
async fn act(
    s: Arc<Shared>,
    headers: HeaderMap,
    csrf: String,
    back: String,
    op: impl FnOnce(&Engine) -> Result<Operation, String> + Send + 'static,
) -> Response {
    if !same_origin(&headers) {
        return html(StatusCode::FORBIDDEN, "this form came from another site's page and was refused".into());
    }
    let r = tokio::task::spawn_blocking(move || {
        let Some(who) = session(&s, &headers) else { return to_login(&back) };
        if !constant_eq(&who.csrf, &csrf) {
            return html(
                StatusCode::FORBIDDEN,
                "the form's token does not match this session: reload the page and try again".into(),
            );
        }
        let op = match op(&s.engine) {
            Ok(op) => op,
            Err(why) => {
                s.console.notice(&who.token, Notice { ok: false, text: why });
                return see_other(&back);
            }
        };
        let (action, _) = op.audit_name();
        let started = Instant::now();
        let r = s.engine.execute(&who.caller, op, Io::default());
        s.metrics.record(action, started.elapsed(), r.as_ref().is_ok_and(|o| o.reply.failure().is_none()));
        match r {
            Ok(o) => {
                let mut text = o.reply.text();
                for w in &o.warnings {
                    text.push_str(&format!("\nwarning: {w}"));
                }
                let ok = o.reply.failure().is_none();
                s.console.notice(&who.token, Notice { ok, text: text.trim_end().to_string() });
                see_other(&back)
            }
            // Refused for want of a right: say so with the status, so a
            // forged form learns nothing else and nothing changes.
            Err(e) if matches!(e.code(), Code::Forbidden | Code::Authentication) => html(
                status_of(e.code()),
                ui::page(
                    &Frame {
                        title: "Refused",
                        nav: Nav::Risk,
                        principal: &who.name,
                        roles: &who.roles,
                        csrf: &who.csrf,
                        notice: None,
                    },
                    ui::failure(&e.to_string()),
                ),
            ),
            Err(e) => {
                s.console.notice(&who.token, Notice { ok: false, text: e.to_string() });
                see_other(&back)
            }
        }
    })
    .await;
    r.unwrap_or_else(|e| html(StatusCode::INTERNAL_SERVER_ERROR, format!("the action stopped: {e}")))
}

fn see_other(to: &str) -> Response {
    let mut r = Redirect::to(&location(to)).into_response();
    *r.status_mut() = StatusCode::SEE_OTHER;
    r
}

/// A console path as a `Location`: each byte a header may not carry, or
/// that is not plainly a path's, percent-encoded; anything not under
/// `/ui/` (or starting `//`) is the Risk page. A name decoded from the URL
/// (`/ui/datasets/A%0AB`) never reaches a header raw.
fn location(to: &str) -> String {
    if !to.starts_with("/ui/") || to.starts_with("//") || to.starts_with("/ui//") {
        return "/ui/risk".into();
    }
    percent(to, b"?=&%")
}

// ---- pages ----------------------------------------------------------------------

#[derive(Deserialize)]
struct RiskQuery {
    dual: Option<String>,
    pattern: Option<String>,
}

async fn risk(State(s): St, headers: HeaderMap, Query(q): Query<RiskQuery>) -> Response {
    let dual = q.dual.as_deref().is_some_and(|d| d == "1" || d == "true");
    let shown = q.pattern.clone().map(|p| p.trim().to_string()).filter(|p| !p.is_empty());
    let path = if dual { "/ui/risk?dual=1" } else { "/ui/risk" }.to_string();
    page(s, headers, path, Nav::Risk, "Risk", move |e, who, _| {
        let pattern = shown
            .as_deref()
            .map(Pattern::new)
            .transpose()
            .map_err(|e| custos_ops::Error::Usage(format!("the datasets to show: {e}")))?;
        let Reply::RiskReport(r, dual) =
            run(e, who, Operation::RiskReport { pattern, dual, horizon: None, as_if_unencrypted: false })?
        else {
            return Err(unexpected());
        };
        // Findings link to the datasets and keys they name: a dataset of
        // the report, or a key label (`APP.PURPOSE…`, dotted).
        let names: std::collections::HashSet<String> = r.rows().names().map(str::to_string).collect();
        let is_key = |s: &str| s.contains('.') && KeyLabel::new(s).is_ok();
        let link = |subject: &str| {
            if names.contains(subject) {
                Some(format!("/ui/datasets/{subject}"))
            } else if is_key(subject) {
                Some(format!("/ui/keys/{subject}"))
            } else {
                None
            }
        };
        Ok(ui::risk(&r, dual, shown.as_deref(), &link))
    })
    .await
}

fn unexpected() -> custos_ops::Error {
    custos_ops::Error::Usage("the engine answered with something this page does not show".into())
}

/// A listing page's position: the last name of the page before.
#[derive(Deserialize, Default)]
struct After {
    after: Option<String>,
}

async fn datasets(State(s): St, headers: HeaderMap, Query(q): Query<After>) -> Response {
    page(s, headers, "/ui/datasets".into(), Nav::Datasets, "Datasets", move |e, who, _| {
        let op = Operation::DsList { pattern: None, limit: Some(PAGE), after: q.after.clone() };
        let Reply::Datasets(list) = run(e, who, op)? else {
            return Err(unexpected());
        };
        let next = (list.len() == PAGE as usize).then(|| list.last().map(|d| d.name.as_str().to_string())).flatten();
        Ok(ui::datasets(&list, q.after.as_deref(), next.as_deref()))
    })
    .await
}

async fn dataset(State(s): St, headers: HeaderMap, Path(name): Path<String>) -> Response {
    let path = format!("/ui/datasets/{name}");
    page(s, headers, path, Nav::Datasets, format!("Dataset {name}"), move |e, who, csrf| {
        let name = DatasetName::new(&name).map_err(|e| custos_ops::Error::Usage(e.to_string()))?;
        let Reply::DatasetInfo(info) = run(e, who, Operation::DsInfo { name: name.clone() })? else {
            return Err(unexpected());
        };
        let exact = Pattern::new(name.as_str()).ok();
        let backups = match run(e, who, Operation::BackupList { pattern: exact.clone(), limit: None, after: None }) {
            Ok(Reply::Backups(b)) => b.into_iter().filter(|b| b.dataset == name).collect(),
            _ => Vec::new(),
        };
        let snapshots = match run(e, who, Operation::SnapshotList { pattern: exact.clone(), limit: None, after: None })
        {
            Ok(Reply::Snapshots(v)) => v.into_iter().filter(|v| v.dataset == name).collect(),
            _ => Vec::new(),
        };
        let volumes = match run(e, who, Operation::VolumeList) {
            Ok(Reply::Volumes(v)) => v,
            _ => Vec::new(),
        };
        let mut rights = ui::DatasetRights {
            verify: may(e, who, &Operation::DsVerify { name: name.clone() }),
            ..Default::default()
        };
        for (m, method) in [("logical", CopyMethod::Logical), ("raw", CopyMethod::Raw)] {
            let probe = volumes.iter().find(|v| v.name != info.volume.name).map(|v| v.name.clone());
            if let Some(to) = probe {
                if may(e, who, &Operation::BackupRun { pattern: exact.clone(), method, to, key: None }) {
                    rights.backup.push(m);
                }
            }
        }
        rights.volumes =
            volumes.iter().filter(|v| v.name != info.volume.name).map(|v| v.name.as_str().to_string()).collect();
        Ok(ui::dataset(&info, &volumes, &backups, &snapshots, &rights, csrf))
    })
    .await
}

#[derive(Deserialize)]
struct ActionForm {
    csrf: String,
    method: Option<String>,
    to: Option<String>,
    wait: Option<String>,
    action: Option<String>,
}

async fn dataset_action(
    State(s): St,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Response {
    let back = format!("/ui/datasets/{name}");
    act(s, headers, f.csrf.clone(), back, move |_| {
        let name = DatasetName::new(&name).map_err(|e| e.to_string())?;
        match action.as_str() {
            "verify" => Ok(Operation::DsVerify { name }),
            "backup" => {
                let method = match f.method.as_deref() {
                    Some("raw") => CopyMethod::Raw,
                    Some("logical") | None => CopyMethod::Logical,
                    Some(m) => return Err(format!("unknown backup method {m:?}: logical or raw")),
                };
                let to = f.to.as_deref().unwrap_or("").parse().map_err(|e| format!("the volume: {e}"))?;
                let pattern = Some(Pattern::new(name.as_str()).map_err(|e| e.to_string())?);
                Ok(Operation::BackupRun { pattern, method, to, key: None })
            }
            a => Err(format!("no dataset action {a:?}")),
        }
    })
    .await
}

async fn keys(State(s): St, headers: HeaderMap, Query(q): Query<After>) -> Response {
    page(s, headers, "/ui/keys".into(), Nav::Keys, "Keys", move |e, who, _| {
        let op = Operation::KeyList { pattern: None, limit: Some(PAGE), after: q.after.clone() };
        let Reply::Keys(list, due) = run(e, who, op)? else {
            return Err(unexpected());
        };
        let next = (list.len() == PAGE as usize).then(|| list.last().map(|k| k.label.as_str().to_string())).flatten();
        Ok(ui::keys(&list, &due, q.after.as_deref(), next.as_deref()))
    })
    .await
}

async fn key(State(s): St, headers: HeaderMap, Path(label): Path<String>) -> Response {
    let path = format!("/ui/keys/{label}");
    page(s, headers, path, Nav::Keys, format!("Key {label}"), move |e, who, csrf| {
        let label = KeyLabel::new(&label).map_err(|e| custos_ops::Error::Usage(e.to_string()))?;
        let Reply::KeyDetail { key, destroy_after, .. } = run(e, who, Operation::KeyShow { label: label.clone() })?
        else {
            return Err(unexpected());
        };
        let coverage = match run(e, who, Operation::KeystoreBackups) {
            Ok(Reply::KeystoreBackups(list)) => list
                .into_iter()
                .filter(|b| b.created_at >= key.created_at)
                .map(|b| format!("{} ({})", b.id, b.created_at.strftime("%Y-%m-%d")))
                .collect(),
            _ => Vec::new(),
        };
        let target = label.as_str().to_string();
        let mut rights = ui::KeyRights {
            destroy: destroy_after.is_none()
                && !matches!(key.state, custos_core::model::KeyState::Destroyed)
                && may(e, who, &Operation::KeyDestroy { label: label.clone(), crypto_erase: false, wait: None }),
            cancel_destroy: destroy_after.is_some()
                && may(e, who, &Operation::KeyCancelDestroy { label: label.clone() }),
            lifecycle: Vec::new(),
        };
        for (word, action) in [
            ("activate", KeyAction::Activate),
            ("deactivate", KeyAction::Deactivate),
            ("archive", KeyAction::Archive),
            ("restore", KeyAction::Restore),
        ] {
            if destroy_after.is_none()
                && key.state.apply(action).is_ok()
                && may(e, who, &Operation::KeyLifecycle { target: target.clone(), action, dry_run: false })
            {
                rights.lifecycle.push(word);
            }
        }
        Ok(ui::key(&key, destroy_after.as_ref(), &coverage, &rights, csrf))
    })
    .await
}

async fn key_action(
    State(s): St,
    headers: HeaderMap,
    Path((label, action)): Path<(String, String)>,
    Form(f): Form<ActionForm>,
) -> Response {
    let back = format!("/ui/keys/{label}");
    act(s, headers, f.csrf.clone(), back, move |_| {
        let label = KeyLabel::new(&label).map_err(|e| e.to_string())?;
        match action.as_str() {
            "destroy" => Ok(Operation::KeyDestroy {
                label,
                crypto_erase: false,
                wait: f.wait.clone().map(|w| w.trim().to_string()).filter(|w| !w.is_empty()),
            }),
            "cancel-destroy" => Ok(Operation::KeyCancelDestroy { label }),
            "lifecycle" => {
                let action = match f.action.as_deref() {
                    Some("activate") => KeyAction::Activate,
                    Some("deactivate") => KeyAction::Deactivate,
                    Some("archive") => KeyAction::Archive,
                    Some("restore") => KeyAction::Restore,
                    a => return Err(format!("no key action {a:?}: activate, deactivate, archive or restore")),
                };
                Ok(Operation::KeyLifecycle { target: label.as_str().to_string(), action, dry_run: false })
            }
            a => Err(format!("no key action {a:?}")),
        }
    })
    .await
}

async fn requests(State(s): St, headers: HeaderMap) -> Response {
    page(s, headers, "/ui/requests".into(), Nav::Requests, "Requests", |e, who, csrf| {
        let Reply::Requests(list) = run(e, who, Operation::RequestList { limit: Some(200), before: None })? else {
            return Err(unexpected());
        };
        let list: Vec<_> = list
            .into_iter()
            .map(|r| {
                let pending = r.state == "pending";
                let mine = r.requested_by == who.name();
                let rights = ui::RequestRights {
                    approve: pending
                        && !mine
                        && may(e, who, &Operation::RequestApprove { id: r.id, shares: Vec::new() }),
                    deny: pending && !mine && may(e, who, &Operation::RequestDeny { id: r.id }),
                    withdraw: pending && mine && may(e, who, &Operation::RequestWithdraw { id: r.id }),
                };
                (r, rights)
            })
            .collect();
        Ok(ui::requests(&list, csrf))
    })
    .await
}

async fn request_action(
    State(s): St,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Response {
    act(s, headers, f.csrf.clone(), "/ui/requests".into(), move |_| {
        let id: u64 = id.parse().map_err(|_| format!("no request {id:?}: requests are numbered"))?;
        match action.as_str() {
            "approve" => Ok(Operation::RequestApprove { id, shares: Vec::new() }),
            "deny" => Ok(Operation::RequestDeny { id }),
            "withdraw" => Ok(Operation::RequestWithdraw { id }),
            a => Err(format!("no request action {a:?}: approve, deny or withdraw")),
        }
    })
    .await
}

#[derive(Deserialize, Default)]
struct AuditQuery {
    since: Option<String>,
    principal: Option<String>,
    object: Option<String>,
    outcome: Option<String>,
    after: Option<u64>,
}

async fn audit(State(s): St, headers: HeaderMap, Query(q): Query<AuditQuery>) -> Response {
    page(s, headers, "/ui/audit".into(), Nav::Audit, "Audit log", move |e, who, csrf| {
        let filters = ui::AuditFilters {
            since: q.since.clone().unwrap_or_default(),
            principal: q.principal.clone().unwrap_or_default(),
            object: q.object.clone().unwrap_or_default(),
            outcome: q.outcome.clone().unwrap_or_default(),
        };
        let since = match filters.since.trim() {
            "" => None,
            d => Some(
                d.parse::<jiff::civil::Date>()
                    .ok()
                    .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
                    .map(|z| z.timestamp())
                    .ok_or_else(|| custos_ops::Error::Usage(format!("since {d:?} is not a date (YYYY-MM-DD)")))?,
            ),
        };
        let nonempty = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        let op = Operation::AuditList {
            since,
            principal: nonempty(&filters.principal),
            object: nonempty(&filters.object),
            after: q.after,
            limit: Some(AUDIT_PAGE),
        };
        let Reply::Audit(rows) = run(e, who, op)? else { return Err(unexpected()) };
        let more = (rows.len() as u32 == AUDIT_PAGE).then(|| rows.last().map(|r| r.seq)).flatten();
        let mut rows: Vec<_> = rows
            .into_iter()
            .filter(|r| match filters.outcome.as_str() {
                "ok" => ui::outcome(&r.result) == ui::Outcome::Ok,
                "refused" => ui::outcome(&r.result) == ui::Outcome::Refused,
                "intent" => ui::outcome(&r.result) == ui::Outcome::Intent,
                _ => true,
            })
            .collect();
        rows.reverse();
        let can_verify = may(e, who, &Operation::AuditVerify { against: None });
        Ok(ui::audit(&rows, &filters, more, can_verify, csrf))
    })
    .await
}

async fn audit_verify(State(s): St, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    act(s, headers, f.csrf.clone(), "/ui/audit".into(), |_| Ok(Operation::AuditVerify { against: None })).await
}

async fn health(State(s): St, headers: HeaderMap) -> Response {
    page(s, headers, "/ui/health".into(), Nav::Health, "Health", |e, who, _| {
        let alerts = match run(e, who, Operation::Monitor { expiring_days: 30, unused_days: 365 }) {
            Ok(Reply::Monitor(m)) => Some(m.alerts),
            _ => None,
        };
        let volumes = match run(e, who, Operation::VolumeList) {
            Ok(Reply::Volumes(v)) => Some(v),
            _ => None,
        };
        let mk = match run(e, who, Operation::MkStatus) {
            Ok(Reply::MkStatus(m)) => Some(m),
            _ => None,
        };
        let v = e.vault();
        let mut server: Vec<(&str, String)> = vec![
            ("Version", env!("CARGO_PKG_VERSION").to_string()),
            ("Catalog", if v.catalog_is_remote() { "PostgreSQL".into() } else { "SQLite (embedded)".to_string() }),
        ];
        let settings: BTreeMap<String, String> = match run(e, who, Operation::ConfigList) {
            Ok(Reply::Settings(list)) => list.into_iter().collect(),
            _ => BTreeMap::new(),
        };
        for (k, label) in [("dual-control", "Dual control"), ("destroy-wait", "Destruction wait")] {
            if let Some(val) = settings.get(k) {
                server.push((label, val.clone()));
            }
        }
        Ok(ui::health(alerts.as_deref(), volumes.as_deref(), mk.as_ref(), &server))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_only_and_ends_when_idle_or_old() {
        let s = Sessions::default();
        let token = s.start("alice".into(), "hash".into());
        assert_eq!(token.len(), 43, "32 random bytes, base64url");
        let (who, csrf, notice) = s.get(&token).unwrap();
        assert_eq!(who, "alice");
        assert!(csrf.len() == 43 && csrf != token && notice.is_none());
        // The map keeps a digest, never the cookie.
        assert!(!s.map.lock().unwrap().keys().any(|k| k[..] == token.as_bytes()[..32]));
        assert!(s.get("not a session").is_none());
        let mut other = token.clone();
        other.replace_range(0..1, if token.starts_with('A') { "B" } else { "A" });
        assert!(s.get(&other).is_none(), "a cookie one character off");
        // Idle too long: gone, and stays gone.
        let later = Instant::now() + IDLE + Duration::from_secs(1);
        assert!(s.get_at(&token, later).is_none());
        assert!(s.get(&token).is_none());
        // Busy every 15 minutes, but 12 hours old: gone.
        let t0 = Instant::now();
        let t2 = s.start("bob".into(), "hash".into());
        let mut last = t0;
        for k in 1..48u32 {
            last = t0 + IDLE / 2 * k;
            assert!(s.get_at(&t2, last).is_some(), "busy session ended after {k} steps");
        }
        let end = Instant::now() + LIFETIME + Duration::from_secs(1);
        assert!(end.duration_since(last) < IDLE, "the test asks about age, not idleness");
        assert!(s.get_at(&t2, end).is_none());
    }

    #[test]
    fn a_notice_is_shown_once_and_logout_forgets_the_session() {
        let s = Sessions::default();
        let token = s.start("alice".into(), "hash".into());
        s.notice(&token, Notice { ok: true, text: "done".into() });
        assert_eq!(s.get(&token).unwrap().2.unwrap().text, "done");
        assert!(s.get(&token).unwrap().2.is_none());
        s.end(&token);
        assert!(s.get(&token).is_none());
    }

    #[test]
    fn only_same_origin_posts_pass() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        assert!(same_origin(&h(&[("host", "c.example:8443"), ("origin", "https://c.example:8443")])));
        assert!(same_origin(&h(&[
            ("host", "c.example:8443"),
            ("sec-fetch-site", "same-origin"),
            ("origin", "https://c.example:8443")
        ])));
        assert!(!same_origin(&h(&[("host", "c.example:8443"), ("origin", "https://evil.example")])));
        assert!(!same_origin(&h(&[("host", "c.example:8443"), ("origin", "http://c.example:8443")])), "plain http");
        assert!(!same_origin(&h(&[("host", "c.example:8443"), ("origin", "null")])));
        assert!(!same_origin(&h(&[("host", "c.example:8443"), ("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&h(&[("host", "c.example:8443"), ("sec-fetch-site", "same-site")])));
        // Not a browser: the CSRF token alone decides.
        assert!(same_origin(&h(&[("host", "c.example:8443")])));
    }

    #[test]
    fn the_cookie_is_read_among_others_and_compared_in_full() {
        let mut m = HeaderMap::new();
        m.insert(header::COOKIE, HeaderValue::from_static("a=1; __Host-custos=abc; b=2"));
        assert_eq!(cookie_value(&m).as_deref(), Some("abc"));
        m.insert(header::COOKIE, HeaderValue::from_static("x__Host-custos=abc"));
        assert_eq!(cookie_value(&m), None);
        assert!(constant_eq("abc", "abc") && !constant_eq("abc", "abd") && !constant_eq("abc", "ab"));
    }

    #[test]
    fn a_location_never_carries_what_a_header_cannot() {
        assert_eq!(location("/ui/datasets/PAY.MASTER"), "/ui/datasets/PAY.MASTER");
        assert_eq!(location("/ui/datasets/A\nB"), "/ui/datasets/A%0AB");
        assert_eq!(location("/ui/keys/x y\r"), "/ui/keys/x%20y%0D");
        assert_eq!(location("/ui/\\evil.example"), "/ui/%5Cevil.example");
        assert_eq!(location("https://evil.example/"), "/ui/risk");
        assert_eq!(location("//evil.example/"), "/ui/risk");
        assert_eq!(location("/ui/risk?dual=1"), "/ui/risk?dual=1");
        // Every byte, and no panic making the answer.
        let all: String = (1u8..=127).map(char::from).collect();
        let r = see_other(&format!("/ui/{all}"));
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
    }

    #[test]
    fn login_sends_back_only_to_console_pages() {
        let at = |r: Response| r.headers()[header::LOCATION].to_str().unwrap().to_string();
        assert_eq!(at(to_login("/ui/keys")), "/ui/login?next=/ui/keys");
        assert_eq!(at(to_login("https://evil.example/")), "/ui/login?next=/ui/risk");
        assert_eq!(at(to_login("/ui//evil.example")), "/ui/login?next=/ui/risk");
        assert_eq!(at(to_login("/ui/risk?dual=1")), "/ui/login?next=/ui/risk%3Fdual%3D1");
    }
}
