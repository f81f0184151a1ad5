//! The HTTP API: thin handlers that authenticate, hand an operation to the
//! engine on a blocking thread, and turn its outcome into JSON or a
//! stream. Statuses come from the error's kind ([`custos_ops::Code`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use bytes::Bytes;
use custos_core::model::{DatasetName, KeyLabel, VolumeName};
use custos_ops::{Caller, Code, Engine, Io, Operation, Outcome};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{AuthError, Authenticator};
use crate::metrics::Metrics;

/// What every handler shares.
pub struct Shared {
    pub engine: Arc<Engine>,
    pub auth: Authenticator,
    pub metrics: Metrics,
    pub draining: AtomicBool,
    pub console: crate::console::Sessions,
}

/// What the connection says about the caller: the principal its client
/// certificate maps to, if any.
#[derive(Clone, Default)]
pub struct Peer {
    pub cert_principal: Option<String>,
    /// The connection is TLS (the console is served only then).
    pub tls: bool,
}

type St = State<Arc<Shared>>;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(|| async { axum::Json(crate::openapi::document()) }))
        .route("/metrics", get(metrics))
        .route("/v1/metrics", get(metrics))
        .route("/v1/ops", post(ops))
        .route("/v1/datasets/{name}", get(get_dataset).put(put_dataset))
        .route("/v1/audit/export", get(audit_export))
        .route("/v1/keys/{label}/{action}", post(key_service))
        .merge(crate::console::router())
        .fallback(|| async { problem(StatusCode::NOT_FOUND, Code::NotFound, "no such endpoint: see /v1/openapi.json") })
        .with_state(shared)
}

/// A problem document (RFC 9457) carrying the CLI's exit code.
fn problem(status: StatusCode, code: Code, detail: &str) -> Response {
    let body = json!({
        "type": format!("https://custos.invalid/problems/{}", serde_json::to_value(code).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()),
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "detail": detail,
        "code": code,
        "exit": code.exit(),
    });
    (status, [(header::CONTENT_TYPE, "application/problem+json")], body.to_string()).into_response()
}

fn error(e: &custos_ops::Error) -> Response {
    let code = e.code();
    problem(
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        code,
        &format!("{e}"),
    )
}

/// The exit code a problem document carries (for clients).
pub fn problem_exit(body: &serde_json::Value) -> u8 {
    body["exit"].as_u64().and_then(|c| u8::try_from(c).ok()).unwrap_or(1)
}

async fn health(State(s): St) -> Response {
    let status = if s.draining.load(Ordering::Relaxed) { "draining" } else { "ok" };
    axum::Json(json!({ "status": status, "version": env!("CARGO_PKG_VERSION") })).into_response()
}

async fn metrics(State(s): St) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.text()).into_response()
}

/// Authenticate on a blocking thread (Argon2id is slow on purpose).
async fn caller(s: &Arc<Shared>, headers: &HeaderMap, peer: &Peer) -> Result<Caller, Response> {
    if s.draining.load(Ordering::Relaxed) {
        return Err(problem(
            StatusCode::SERVICE_UNAVAILABLE,
            Code::Unavailable,
            "the server is shutting down: retry against a running one",
        ));
    }
    let authz = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    // A credential verified in the last minutes (or a pinned certificate)
    // needs one catalog read, done here; anything else pays Argon2id on a
    // blocking thread.
    if let Some(who) = inline(s, || s.auth.remembered(&s.engine, authz.as_deref(), peer.cert_principal.as_deref())) {
        return Ok(who);
    }
    let (s2, cert) = (s.clone(), peer.cert_principal.clone());
    let r = tokio::task::spawn_blocking(move || s2.auth.caller(&s2.engine, authz.as_deref(), cert.as_deref()))
        .await
        .map_err(|e| problem(StatusCode::INTERNAL_SERVER_ERROR, Code::Other, &e.to_string()))?;
    r.map_err(|e| {
        let unauthorized = |detail: &str| {
            let mut r = problem(StatusCode::UNAUTHORIZED, Code::Authentication, detail);
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Basic realm=\"custos\""));
            r
        };
        match e {
            AuthError::Missing => unauthorized("who is calling? send Authorization: Basic with a principal's name and credential, or a client certificate"),
            AuthError::Malformed => unauthorized("the Authorization header is not Basic base64(name:credential)"),
            AuthError::Refused(e) => {
                s.metrics.login_failed();
                let mut r = error(&e);
                if e.code() == Code::Authentication {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Basic realm=\"custos\""));
                }
                r
            }
        }
    })
}

fn envelope(o: &Outcome) -> serde_json::Value {
    json!({
        "result": o.reply.json(),
        "text": o.reply.text(),
        "warnings": o.warnings,
        "failure": o.reply.failure(),
        "renderings": o.reply.renderings().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
    })
}

async fn ops(State(s): St, Extension(peer): Extension<Peer>, headers: HeaderMap, body: Bytes) -> Response {
    let op = match Operation::from_json(&body) {
        Ok(op) => op,
        Err(e) => return problem(StatusCode::BAD_REQUEST, Code::Usage, &format!("the body is not an operation: {e}")),
    };
    match op {
        Operation::DsPut { .. } | Operation::DsGet { .. } | Operation::AuditExport => {
            return problem(
                StatusCode::BAD_REQUEST,
                Code::Usage,
                "dataset data and the audit export stream: use PUT or GET /v1/datasets/{name}, or GET /v1/audit/export",
            )
        }
        _ => {}
    }
    let who = match caller(&s, &headers, &peer).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let key = match idempotency_key(&headers) {
        Ok(k) => k.filter(|_| !op.only_reads()),
        Err(r) => return *r,
    };
    let Some(key) = key else {
        return run_blocking(&s, who, op, |o| axum::Json(envelope(o)).into_response()).await;
    };
    if let Some(answer) = take_up(&s, &key, &who, &[b"POST /v1/ops\0", &body[..]]).await {
        return answer;
    }
    let keep = Arc::new(AtomicBool::new(false));
    let k2 = keep.clone();
    let resp = run_blocking_with(&s, who, op, move |o| {
        k2.store(!o.reply.holds_secret(), Ordering::Relaxed);
        axum::Json(envelope(o)).into_response()
    })
    .await;
    let keep = keep.load(Ordering::Relaxed) || !resp.status().is_success();
    remember(&s, key, resp, keep).await
}

/// The request's `Idempotency-Key` header, if any: up to 64 letters,
/// digits, `-` and `_`.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Box<Response>> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    match v.to_str() {
        Ok(k)
            if !k.is_empty()
                && k.len() <= 64
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Ok(Some(k.to_string()))
        }
        _ => Err(Box::new(problem(
            StatusCode::BAD_REQUEST,
            Code::Usage,
            "the Idempotency-Key header takes 1 to 64 letters, digits, '-' and '_'",
        ))),
    }
}

/// Take up an idempotency key before a write (ADR 0020): `None` when this
/// request is the first with it (carry it out, then [`remember`]), else the
/// answer to give: the first attempt's answer replayed, or why there is none.
async fn take_up(s: &Arc<Shared>, key: &str, who: &Caller, request: &[&[u8]]) -> Option<Response> {
    let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in request {
        h.update(part);
    }
    let fingerprint: [u8; 32] = h.finish().as_ref().try_into().expect("SHA-256 is 32 bytes");
    let (s2, key2, name) = (s.clone(), key.to_string(), who.name());
    let r = tokio::task::spawn_blocking(move || s2.engine.vault().idempotency_begin(&key2, &name, &fingerprint)).await;
    let state = match r {
        Ok(Ok(state)) => state,
        Ok(Err(e)) => return Some(error(&custos_ops::Error::from(e))),
        Err(e) => {
            return Some(problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::Other,
                &format!("the operation stopped: {e}"),
            ))
        }
    };
    let marked = |mut r: Response, how: &'static str| {
        r.headers_mut().insert("x-custos-idempotency", header::HeaderValue::from_static(how));
        r
    };
    use custos_core::Idempotency::*;
    Some(match state {
        New => return None,
        Done { status, reply: Some(body) } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let kind = if status.is_success() { "application/json" } else { "application/problem+json" };
            marked((status, [(header::CONTENT_TYPE, kind)], body).into_response(), "replayed")
        }
        Done { reply: None, .. } => marked(
            axum::Json(json!({
                "result": null,
                "text": "carried out already, by an earlier attempt of this request; its answer held a secret and was not kept\n",
                "warnings": [],
                "failure": null,
                "renderings": {},
            }))
            .into_response(),
            "replayed",
        ),
        Running => marked(
            problem(
                StatusCode::CONFLICT,
                Code::Busy,
                "an earlier attempt of this request is still being carried out (on this server or another): wait, then send it again with the same Idempotency-Key",
            ),
            "running",
        ),
        Orphaned => marked(
            problem(
                StatusCode::CONFLICT,
                Code::Conflict,
                "an earlier attempt of this request was cut off when the server carrying it out stopped, so whether it took effect is unknown: look (for example with `ds info` or `key show`) before running it again",
            ),
            "orphaned",
        ),
        Mismatch => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            Code::Usage,
            "this Idempotency-Key came with another request or from another principal: use a new key for each request",
        ),
    })
}

/// Record a write's answer under its idempotency key (its body only when
/// `keep`: never one holding a secret), and send it.
async fn remember(s: &Arc<Shared>, key: String, resp: Response, keep: bool) -> Response {
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return problem(StatusCode::INTERNAL_SERVER_ERROR, Code::Other, "the answer was too large to keep");
    };
    let (s2, status, kept) = (s.clone(), parts.status.as_u16(), keep.then(|| bytes.to_vec()));
    let r =
        tokio::task::spawn_blocking(move || s2.engine.vault().idempotency_finish(&key, status, kept.as_deref())).await;
    if let Ok(Err(e)) = r {
        eprintln!("custos serve: a request's answer was not recorded under its idempotency key: {e}");
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// Run an operation without streams on the blocking pool, count it, and
/// answer with `respond` (or its error as a problem).
async fn run_blocking(s: &Arc<Shared>, who: Caller, op: Operation, respond: fn(&Outcome) -> Response) -> Response {
    run_blocking_with(s, who, op, respond).await
}

async fn run_blocking_with(
    s: &Arc<Shared>,
    who: Caller,
    op: Operation,
    respond: impl FnOnce(&Outcome) -> Response,
) -> Response {
    let (action, _) = op.audit_name();
    let started = Instant::now();
    let s2 = s.clone();
    let r = tokio::task::spawn_blocking(move || s2.engine.execute(&who, op, Io::default())).await;
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            return problem(StatusCode::INTERNAL_SERVER_ERROR, Code::Other, &format!("the operation stopped: {e}"))
        }
    };
    s.metrics.record(action, started.elapsed(), r.as_ref().is_ok_and(|o| o.reply.failure().is_none()));
    match r {
        Ok(o) => respond(&o),
        Err(e) => error(&e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutQuery {
    key: Option<KeyLabel>,
    volume: Option<VolumeName>,
}

async fn put_dataset(
    State(s): St,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
    query: Result<Query<PutQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(Query(q)) = query else {
        return problem(StatusCode::BAD_REQUEST, Code::Usage, "the query takes key=LABEL and volume=NAME only");
    };
    let name = match DatasetName::new(name) {
        Ok(n) => n,
        Err(e) => return problem(StatusCode::BAD_REQUEST, Code::Usage, &e.to_string()),
    };
    let who = match caller(&s, &headers, &peer).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let idem = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    if let Some(key) = &idem {
        let what = format!("PUT {name} key={:?} volume={:?}", q.key, q.volume);
        if let Some(answer) = take_up(&s, key, &who, &[what.as_bytes()]).await {
            return answer;
        }
    }
    let op = Operation::DsPut { name, key: q.key, volume: q.volume };
    let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c2 = counted.clone();
    // The body is drained by a task of its own into a bounded queue, so the
    // connection keeps reading and decrypting while the engine seals what
    // came before (hyper reads a request body only while it is polled).
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(QUEUED_FRAMES);
    tokio::spawn(async move {
        let mut frames = body.into_data_stream();
        while let Some(f) = futures_util::StreamExt::next(&mut frames).await {
            let f = f.inspect(|b| {
                c2.fetch_add(b.len() as u64, Ordering::Relaxed);
            });
            let stop = f.is_err();
            if tx.send(f.map_err(std::io::Error::other)).await.is_err() || stop {
                break;
            }
        }
    });
    let mut reader = QueueReader { rx, current: Bytes::new() };
    let started = Instant::now();
    let s2 = s.clone();
    let r =
        tokio::task::spawn_blocking(move || s2.engine.execute(&who, op, Io { input: Some(&mut reader), output: None }))
            .await;
    s.metrics.bytes(counted.load(Ordering::Relaxed), 0);
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            return problem(StatusCode::INTERNAL_SERVER_ERROR, Code::Other, &format!("the operation stopped: {e}"))
        }
    };
    s.metrics.record("ds put", started.elapsed(), r.is_ok());
    let resp = match r {
        Ok(o) => axum::Json(envelope(&o)).into_response(),
        Err(e) => error(&e),
    };
    match idem {
        Some(key) => remember(&s, key, resp, true).await,
        None => resp,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetQuery {
    start: Option<u64>,
    end: Option<u64>,
}

/// Run a streaming operation: checked before the first byte (so a refusal
/// is a status, not a cut stream), then its output streamed as the engine
/// writes it. A failure after the first byte ends the stream abnormally.
async fn stream_out(
    s: Arc<Shared>,
    who: Caller,
    op: Operation,
    content_type: &'static str,
    headers_out: Vec<(&'static str, String)>,
) -> Response {
    let (action, _) = op.audit_name();
    let (s2, who2, op2) = (s.clone(), who.clone(), op.clone());
    let pre = tokio::task::spawn_blocking(move || s2.engine.preflight(&who2, &op2)).await;
    if !matches!(pre, Ok(Ok(()))) {
        // Run it anyway, with nowhere to write: the engine refuses it again
        // and audits the refusal.
        let s2 = s.clone();
        let r = tokio::task::spawn_blocking(move || {
            s2.engine.execute(&who, op, Io { input: None, output: Some(&mut std::io::sink()) })
        })
        .await;
        return match r {
            Ok(Err(e)) => error(&e),
            Ok(Ok(_)) | Err(_) => {
                problem(StatusCode::CONFLICT, Code::Other, "the operation changed its mind: retry it")
            }
        };
    }
    let (w, mut r) = tokio::sync::mpsc::channel::<Bytes>(QUEUED_FRAMES);
    let started = Instant::now();
    let s2 = s.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    tokio::task::spawn_blocking(move || {
        let mut writer = QueueWriter { tx: w, buf: bytes::BytesMut::new() };
        let r = s2.engine.execute(&who, op, Io { input: None, output: Some(&mut writer) });
        let ok = r.is_ok();
        s2.metrics.record(action, started.elapsed(), ok);
        let flushed = std::io::Write::flush(&mut writer);
        drop(writer);
        let r = r.map(|_| ()).map_err(|e| e.to_string());
        let _ = tx.send(r.and_then(|()| flushed.map_err(|e| e.to_string())));
    });
    let m = s.clone();
    let bytes = futures_util::stream::poll_fn(move |cx| r.poll_recv(cx)).map(move |b| {
        m.metrics.bytes(0, b.len() as u64);
        Ok::<Bytes, std::io::Error>(b)
    });
    // After the last byte, the engine's verdict: an error ends the body
    // abnormally, so a client never mistakes a cut stream for the whole.
    let verdict = futures_util::stream::once(async move {
        match rx.await {
            Ok(Ok(())) => Ok(Bytes::new()),
            Ok(Err(e)) => Err(std::io::Error::other(e)),
            Err(_) => Err(std::io::Error::other("the operation stopped")),
        }
    });
    let body = Body::from_stream(futures_util::StreamExt::chain(bytes, verdict));
    let mut resp = Response::new(body);
    resp.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    for (k, v) in headers_out {
        if let Ok(v) = header::HeaderValue::from_str(&v) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

async fn get_dataset(
    State(s): St,
    Extension(peer): Extension<Peer>,
    Path(name): Path<String>,
    query: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Ok(Query(q)) = query else {
        return problem(StatusCode::BAD_REQUEST, Code::Usage, "the query takes start=OFFSET and end=OFFSET only");
    };
    let name = match DatasetName::new(name) {
        Ok(n) => n,
        Err(e) => return problem(StatusCode::BAD_REQUEST, Code::Usage, &e.to_string()),
    };
    let who = match caller(&s, &headers, &peer).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let range = (q.start.is_some() || q.end.is_some()).then_some(custos_ops::Range { start: q.start, end: q.end });
    // What will come, for the client to check it arrived whole (a catalog
    // read: on the blocking pool, like every other).
    let (s2, n2) = (s.clone(), name.clone());
    let current = tokio::task::spawn_blocking(move || s2.engine.vault().dataset(&n2).ok()).await.ok().flatten();
    let mut out = Vec::new();
    if let Some(d) = current {
        let size = d.current.size;
        let (a, b) = range.map_or((0, size), |r| (r.start.unwrap_or(0), r.end.unwrap_or(size)));
        out.push(("x-custos-size", b.saturating_sub(a).to_string()));
        out.push(("x-custos-generation", d.current.generation.to_string()));
    }
    stream_out(s, who, Operation::DsGet { name, range }, "application/octet-stream", out).await
}

async fn audit_export(State(s): St, Extension(peer): Extension<Peer>, headers: HeaderMap) -> Response {
    let who = match caller(&s, &headers, &peer).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    stream_out(s, who, Operation::AuditExport, "application/x-ndjson", Vec::new()).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyServiceBody {
    plaintext: Option<String>,
    ciphertext: Option<String>,
    bytes: Option<u8>,
    #[serde(default)]
    context: std::collections::BTreeMap<String, String>,
}

/// `POST /v1/keys/{label}/encrypt|decrypt|datakey`: the key service. The
/// answer is the result itself (`{"key", "ciphertext"}`, `{"key",
/// "plaintext"}`, or both), bytes in standard base64.
async fn key_service(
    State(s): St,
    Extension(peer): Extension<Peer>,
    Path((label, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let usage = |m: String| problem(StatusCode::BAD_REQUEST, Code::Usage, &m);
    let label = match KeyLabel::new(label) {
        Ok(l) => l,
        Err(e) => return usage(e.to_string()),
    };
    let b: KeyServiceBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return usage(format!("the body is not a key-service request: {e}")),
    };
    let op = match (action.as_str(), b) {
        ("encrypt", KeyServiceBody { plaintext: Some(p), ciphertext: None, bytes: None, context }) => {
            Operation::KeyEncrypt { label, plaintext: custos_ops::SecretText::new(p), context }
        }
        ("decrypt", KeyServiceBody { ciphertext: Some(c), plaintext: None, bytes: None, context }) => {
            let names = custos_ops::base64_decode(&c).ok().and_then(|b| custos_core::ciphertext_key(&b).ok());
            if names.as_ref() != Some(&label) {
                return usage(format!("the ciphertext is not one sealed under {label}"));
            }
            Operation::KeyDecrypt { ciphertext: c, context }
        }
        ("datakey", KeyServiceBody { bytes, plaintext: None, ciphertext: None, context }) => {
            Operation::KeyDataKey { label, bytes: bytes.unwrap_or(32), context }
        }
        ("encrypt" | "decrypt" | "datakey", _) => {
            return usage(
                "encrypt takes plaintext, decrypt takes ciphertext, datakey takes bytes; each may take context".into(),
            )
        }
        _ => return problem(StatusCode::NOT_FOUND, Code::NotFound, "the key service has encrypt, decrypt and datakey"),
    };
    let who = match caller(&s, &headers, &peer).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    // The work is a catalog read, an unwrap and one AEAD call, done here;
    // the audit entry joins the next group commit, and the answer leaves
    // once it is durable, with no thread parked per request.
    let (action, _) = op.audit_name();
    let started = Instant::now();
    let (tx, rx) = tokio::sync::oneshot::channel();
    inline(&s, || {
        s.engine.execute_then(&who, op, move |r| {
            let _ = tx.send(r);
        })
    });
    let r = match rx.await {
        Ok(r) => r,
        Err(_) => return problem(StatusCode::INTERNAL_SERVER_ERROR, Code::Other, "the operation stopped unanswered"),
    };
    s.metrics.record(action, started.elapsed(), r.as_ref().is_ok_and(|o| o.reply.failure().is_none()));
    match r {
        Ok(o) => axum::Json(o.reply.json()).into_response(),
        Err(e) => error(&e),
    }
}

/// Run short engine work on this async thread: directly when the catalog
/// is local (an embedded read is cheaper than a hop to a blocking thread),
/// and with the runtime told this thread blocks when the catalog is on
/// PostgreSQL (its client waits on the network).
fn inline<T>(s: &Shared, f: impl FnOnce() -> T) -> T {
    if s.engine.vault().catalog_is_remote() {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// Frames queued between a connection and the engine, each direction.
const QUEUED_FRAMES: usize = 16;
/// The most bytes an engine write gathers before it is queued.
const FRAME_BYTES: usize = 1 << 20;

/// The engine's input: request body frames from the queue.
struct QueueReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl std::io::Read for QueueReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(frame) => self.current = frame?,
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// The engine's output: gathered into frames of up to [`FRAME_BYTES`] and
/// queued for the response body; a client that went away is a broken pipe.
struct QueueWriter {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    buf: bytes::BytesMut,
}

impl QueueWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let frame = self.buf.split().freeze();
        self.tx
            .blocking_send(frame)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client stopped reading"))
    }
}

impl std::io::Write for QueueWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < data.len() && !self.buf.is_empty() {
            self.send()?;
        }
        if self.buf.is_empty() {
            self.buf.reserve(FRAME_BYTES.max(data.len()));
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= FRAME_BYTES {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}
