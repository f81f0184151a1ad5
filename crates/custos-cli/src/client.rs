//! Client mode (`--server URL`): the same commands, run by a Custos server.
//! Operations go as JSON to `/v1/ops`; dataset data streams to and from
//! `/v1/datasets/{name}`. The result is printed exactly as embedded mode
//! prints it (the server renders the same text), and the exit code comes
//! from the server's problem document or failure.
//!
//! Given several servers (`--server A,B`), a command goes to the first that
//! answers. Every write carries an `Idempotency-Key` made for the command,
//! so when a server is cut off mid-request the same request sent to the
//! next one is carried out at most once (ADR 0020).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::args::{Cli, ReportFormat};
use crate::cmd::{Input, Output, Plan, Show};
use custos_ops::Operation;

/// An error the server reported, with the exit code it carries.
#[derive(Debug)]
pub struct Remote {
    pub exit: u8,
    pub message: String,
}

/// A writer that counts what it passed on.
struct Counted<W>(W, u64);

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(b)?;
        self.1 += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// A body the server stopped sending part way.
#[derive(Debug)]
struct Cut(String);

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Cut {}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Remote {}

enum Target {
    Unix(PathBuf),
    Tls { addr: String, name: rustls_pki_types::ServerName<'static>, connector: tokio_rustls::TlsConnector },
}

type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

pub struct Client {
    rt: tokio::runtime::Runtime,
    /// Each server, with the host name requests name, and its URL.
    targets: Vec<(Target, String, String)>,
    authorization: Option<zeroize::Zeroizing<String>>,
    /// This command's idempotency key (writes carry it).
    idempotency: String,
}

/// A request could not be carried out by one server: whether any of it
/// was sent (a retry elsewhere then relies on the idempotency key).
struct Failed {
    sent: bool,
    error: anyhow::Error,
}

/// What a request's body is made from on each attempt.
enum Payload {
    Empty,
    Bytes(Bytes),
    /// A file to read again for each attempt.
    File(PathBuf),
    /// A stream that can be sent once (stdin past what is kept for replay).
    Once(std::sync::Mutex<Option<BoxBody>>),
}

/// Stdin up to this size is kept, so a put can be sent to another server.
const REPLAYABLE_STDIN: usize = 64 << 20;

fn pem_certs(path: &std::path::Path) -> anyhow::Result<Vec<rustls_pki_types::CertificateDer<'static>>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("cannot read certificates from {}", path.display()))
}

/// `unix:/path` or `https://host:port`, and `--ca` for the latter.
fn target(cli: &Cli, url: &str) -> anyhow::Result<(Target, String)> {
    if let Some(path) = url.strip_prefix("unix:") {
        return Ok((Target::Unix(PathBuf::from(path)), "localhost".into()));
    }
    let Some(rest) = url.strip_prefix("https://") else {
        bail!("--server {url:?}: give unix:/path/to/custos.sock or https://host:port");
    };
    let hostport = rest.trim_end_matches('/');
    let host = match hostport.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h.trim_start_matches('[').trim_end_matches(']').to_string(),
        _ => bail!("--server {url:?}: give the port too (https://host:8443)"),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca = cli.ca.as_ref().ok_or_else(|| {
        anyhow!("--server {url}: give the CA that signed its certificate with --ca FILE (or CUSTOS_CA)")
    })?;
    for c in pem_certs(ca)? {
        roots.add(c).with_context(|| format!("the CA certificate in {}", ca.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut cfg = match (&cli.client_cert, &cli.client_key) {
        (Some(cert), Some(key)) => {
            use rustls_pki_types::pem::PemObject;
            let k = rustls_pki_types::PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("cannot read the client key {}", key.display()))?;
            builder.with_client_auth_cert(pem_certs(cert)?, k).context("the client certificate and key")?
        }
        _ => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls_pki_types::ServerName::try_from(host.clone())
        .map_err(|_| anyhow!("--server {url:?}: {host:?} is not a host name"))?;
    Ok((
        Target::Tls { addr: hostport.to_string(), name, connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)) },
        host,
    ))
}

/// Percent-encode a path segment.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Client {
    pub fn new(cli: &Cli, url: &str, authorization: Option<zeroize::Zeroizing<String>>) -> anyhow::Result<Client> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let targets = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| target(cli, u).map(|(t, host)| (t, host, u.to_string())))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if targets.is_empty() {
            bail!("--server {url:?}: give at least one server, unix:/path/to/custos.sock or https://host:port");
        }
        let idempotency = hex::encode(custos_crypto::random_array::<16>()?);
        Ok(Client { rt, targets, authorization, idempotency })
    }

    /// Send one attempt to one server.
    /// Send one attempt to one server; the request is made (`make`) only
    /// once the connection stands, so a body that can be sent once is not
    /// spent on a server that cannot be reached.
    async fn send_to(
        &self,
        target: &Target,
        make: impl FnOnce() -> anyhow::Result<Request<BoxBody>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Failed> {
        let unreachable = |e: std::io::Error| Failed {
            sent: false,
            error: Remote {
                exit: 7,
                message: format!("the server cannot be reached: {e}; is `custos serve` running?"),
            }
            .into(),
        };
        macro_rules! handshake {
            ($io:expr) => {{
                let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new($io))
                    .await
                    .map_err(|e| Failed { sent: false, error: e.into() })?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                let req = make().map_err(|e| Failed { sent: false, error: e })?;
                sender.send_request(req).await.map_err(|e| Failed {
                    sent: true,
                    error: Remote {
                        exit: 7,
                        message: format!("the server ended the request: {e}; run the command again"),
                    }
                    .into(),
                })?
            }};
        }
        Ok(match target {
            Target::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path).await.map_err(unreachable)?;
                handshake!(s)
            }
            Target::Tls { addr, name, connector } => {
                let tcp = tokio::net::TcpStream::connect(addr).await.map_err(unreachable)?;
                let _ = tcp.set_nodelay(true);
                let tls = connector.connect(name.clone(), tcp).await.map_err(|e| Failed {
                    sent: false,
                    error: Remote { exit: 7, message: format!("TLS with the server failed: {e}") }.into(),
                })?;
                handshake!(tls)
            }
        })
    }

    /// Send a request to the first server that carries it out: one that
    /// cannot be reached, or cuts the request off, hands it to the next
    /// (twice round the list, a second apart); one still carrying out an
    /// earlier attempt of the same write is asked again shortly.
    async fn send(
        &self,
        method: &str,
        path: &str,
        payload: Payload,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        if let Payload::File(p) = &payload {
            // A file that cannot be read is the caller's to fix, not a
            // reason to try another server.
            std::fs::File::open(p).with_context(|| format!("cannot open {} to store", p.display()))?;
        }
        let n = self.targets.len();
        let mut last = None;
        let mut sent = false;
        let mut attempt = 0;
        let mut waited = 0;
        while attempt < 2 * n {
            if attempt == n {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            let (target, host, _) = &self.targets[attempt % n];
            let make = || -> anyhow::Result<Request<BoxBody>> {
                let body = match &payload {
                    Payload::Empty => Self::full(Vec::new()),
                    Payload::Bytes(b) => Full::new(b.clone()).map_err(|never| match never {}).boxed_unsync(),
                    Payload::File(p) => {
                        let f = std::fs::File::open(p).with_context(|| format!("cannot open {} to store", p.display()))?;
                        let f = tokio::fs::File::from_std(f);
                        StreamBody::new(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20).map_ok(Frame::data))
                            .boxed_unsync()
                    }
                    Payload::Once(b) => b.lock().unwrap_or_else(|p| p.into_inner()).take().ok_or_else(|| {
                        anyhow!(
                            "the request was cut off, and its input (stdin, over {} MiB) cannot be sent a second time; run the command again",
                            REPLAYABLE_STDIN >> 20
                        )
                    })?,
                };
                self.request(method, path, host, body)
            };
            match self.send_to(target, make).await {
                // A server shutting down refuses before it runs anything:
                // the next one may take it.
                Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE && n > 1 => {
                    attempt += 1;
                    last = Some(Self::problem(resp).await);
                    continue;
                }
                Ok(resp) => {
                    let running = resp.status() == StatusCode::CONFLICT
                        && resp.headers().get("x-custos-idempotency").is_some_and(|v| v == "running");
                    if running && waited < 60 {
                        // The attempt another server (or this one) is still at.
                        waited += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        continue;
                    }
                    return Ok(resp);
                }
                Err(Failed { sent: s, error }) => {
                    sent |= s;
                    attempt += 1;
                    if attempt < 2 * n {
                        let (_, _, next) = &self.targets[attempt % n];
                        let this = &self.targets[(attempt - 1) % n].2;
                        // With one server the cause is said once, if the
                        // second try fails too.
                        let _ = if n > 1 {
                            writeln!(
                                std::io::stderr(),
                                "custos: warning: {this} did not carry it out ({}); sending it to {next}",
                                crate::said(&error)
                            )
                        } else {
                            writeln!(
                                std::io::stderr(),
                                "custos: warning: {this} did not carry it out; sending it again in a second"
                            )
                        };
                    }
                    last = Some(error);
                }
            }
        }
        let e = last.unwrap_or_else(|| anyhow!("no server could be reached"));
        Err(if sent && n > 1 { e.context("no server carried it out") } else { e })
    }

    fn request(&self, method: &str, path: &str, host: &str, body: BoxBody) -> anyhow::Result<Request<BoxBody>> {
        let mut b = Request::builder().method(method).uri(path).header("host", host);
        if let Some(a) = &self.authorization {
            b = b.header("authorization", a.as_str());
        }
        if method != "GET" {
            b = b.header("idempotency-key", &self.idempotency);
        }
        Ok(b.body(body)?)
    }

    /// A non-success answer as the error it reports.
    async fn problem(resp: hyper::Response<hyper::body::Incoming>) -> anyhow::Error {
        let status = resp.status();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => Remote {
                exit: custos_server::problem_exit(&v),
                message: v["detail"].as_str().unwrap_or("the server refused the request").to_string(),
            }
            .into(),
            Err(_) => Remote { exit: 1, message: format!("the server answered {status}") }.into(),
        }
    }

    fn full(bytes: Vec<u8>) -> BoxBody {
        Full::new(Bytes::from(bytes)).map_err(|never| match never {}).boxed_unsync()
    }

    pub fn run(&self, cli: &Cli, plan: Plan) -> anyhow::Result<ExitCode> {
        match &plan.op {
            Operation::DsGet { name, range } => {
                let mut q = Vec::new();
                if let Some(r) = range {
                    q.extend(r.start.map(|s| format!("start={s}")));
                    q.extend(r.end.map(|e| format!("end={e}")));
                }
                let path = format!(
                    "/v1/datasets/{}{}{}",
                    segment(name.as_str()),
                    if q.is_empty() { "" } else { "?" },
                    q.join("&")
                );
                self.stream_to(cli, &path, plan.output, Some(name.to_string()))
            }
            Operation::AuditExport => self.stream_to(cli, "/v1/audit/export", plan.output, None),
            _ => self.rt.block_on(self.run_async(cli, plan)),
        }
    }

    /// GET `path` and write its body where `output` says, checking it
    /// arrived whole. A server that stops sending before anything reached
    /// the output (or while the output is still a temporary file that is
    /// thrown away) hands the read to the next server, as `send` does for
    /// a server that cannot be reached: a read changes nothing, so asking
    /// again is always safe.
    fn stream_to(&self, cli: &Cli, path: &str, output: Output, dataset: Option<String>) -> anyhow::Result<ExitCode> {
        // Whether a cut-off copy can be taken back: only a regular file
        // written through a temporary one can.
        let atomic = match &output {
            Output::File(p) => std::fs::metadata(p).map_or(true, |m| m.is_file()),
            _ => false,
        };
        let tries = 2 * self.targets.len();
        let mut tried = 0;
        loop {
            tried += 1;
            let mut passed_on = 0u64;
            let r = match &output {
                Output::File(p) => {
                    let mut got = (0, String::new());
                    crate::write_atomically(p, |w| {
                        got = self.fetch(path, w, &mut passed_on)?;
                        Ok(())
                    })
                    .map(|()| got)
                }
                _ => {
                    // Counted below the buffer: what left the process, not
                    // what waits in the buffer (a cut-off read discards
                    // that, so a small dataset can always be asked again).
                    let stdout = std::io::stdout();
                    let mut w = std::io::BufWriter::with_capacity(1 << 20, Counted(stdout.lock(), 0));
                    let mut buffered = 0;
                    match self.fetch(path, &mut w, &mut buffered) {
                        Ok(g) => w.flush().map(|()| g).map_err(Into::into),
                        Err(e) => {
                            passed_on = w.get_ref().1;
                            drop(w.into_parts());
                            Err(e)
                        }
                    }
                }
            };
            let (n, generation) = match r {
                Ok(g) => g,
                Err(e) if tried < tries && (atomic || passed_on == 0) && e.downcast_ref::<Cut>().is_some() => {
                    let _ =
                        writeln!(std::io::stderr(), "custos: warning: {}; asking the servers again", crate::said(&e));
                    continue;
                }
                Err(e) => {
                    return Err(match e.downcast::<Cut>() {
                        Ok(c) if atomic => {
                            Remote { exit: 1, message: format!("{c}; nothing was written in place") }.into()
                        }
                        Ok(c) => Remote {
                            exit: 1,
                            message: format!(
                                "{c}; only the first {passed_on} bytes were written, run the command again"
                            ),
                        }
                        .into(),
                        Err(e) => e,
                    });
                }
            };
            match (&output, &dataset, cli.json) {
                (Output::File(p), Some(d), false) => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "wrote {} of {d} generation {generation} to {}",
                        custos_ops::render::bytes(n),
                        p.display()
                    );
                }
                // As the embedded command prints it (`ds get -o`, `ds verify`).
                (Output::File(_), Some(d), true) => {
                    let j = serde_json::json!({
                        "dataset": d,
                        "generation": generation.parse::<u64>().ok(),
                        "size": n,
                    });
                    let _ = writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&j)?);
                }
                _ => {}
            }
            return Ok(ExitCode::SUCCESS);
        }
    }

    /// One GET of `path` into `w`: the bytes written (also counted in
    /// `passed_on` as they go, for a caller deciding whether to ask again)
    /// and the generation the server named. A body that ends abnormally
    /// is a [`Cut`].
    fn fetch(&self, path: &str, w: &mut dyn Write, passed_on: &mut u64) -> anyhow::Result<(u64, String)> {
        let resp = self.rt.block_on(self.send("GET", path, Payload::Empty))?;
        if resp.status() != StatusCode::OK {
            return Err(self.rt.block_on(Self::problem(resp)));
        }
        let header = |k: &str| resp.headers().get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        let want: Option<u64> = header("x-custos-size").and_then(|v| v.parse().ok());
        let generation = header("x-custos-generation").unwrap_or_else(|| "?".into());
        let mut body = resp.into_body();
        let mut n = 0u64;
        while let Some(frame) = self.rt.block_on(body.frame()) {
            let frame = frame.map_err(|e| Cut(format!("the server stopped sending after {n} bytes: {e}")))?;
            if let Ok(b) = frame.into_data() {
                w.write_all(&b)?;
                n += b.len() as u64;
                *passed_on = n;
            }
        }
        if let Some(want) = want.filter(|w| *w != n) {
            return Err(Remote {
                exit: 1,
                message: format!("the server sent {n} of {want} bytes; run the command again"),
            }
            .into());
        }
        Ok((n, generation))
    }

    async fn run_async(&self, cli: &Cli, plan: Plan) -> anyhow::Result<ExitCode> {
        let Plan { op, input, output, show, .. } = plan;
        match op {
            Operation::DsPut { name, key, volume } => {
                let mut q = Vec::new();
                if let Some(k) = key {
                    q.push(format!("key={}", segment(k.as_str())));
                }
                if let Some(v) = volume {
                    q.push(format!("volume={}", segment(v.as_str())));
                }
                let path = format!(
                    "/v1/datasets/{}{}{}",
                    segment(name.as_str()),
                    if q.is_empty() { "" } else { "?" },
                    q.join("&")
                );
                let payload = match input {
                    Input::File(p) => Payload::File(p),
                    _ => {
                        // Kept whole when small enough to send again.
                        use tokio::io::AsyncReadExt;
                        let mut stdin = tokio::io::stdin();
                        let mut kept = Vec::new();
                        (&mut stdin)
                            .take(REPLAYABLE_STDIN as u64 + 1)
                            .read_to_end(&mut kept)
                            .await
                            .context("cannot read the data to store from stdin")?;
                        if kept.len() <= REPLAYABLE_STDIN {
                            Payload::Bytes(Bytes::from(kept))
                        } else {
                            let rest = tokio_util::io::ReaderStream::with_capacity(stdin, 1 << 20);
                            let all = futures_util::StreamExt::chain(
                                futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(kept))]),
                                rest,
                            );
                            Payload::Once(std::sync::Mutex::new(Some(
                                StreamBody::new(all.map_ok(Frame::data)).boxed_unsync(),
                            )))
                        }
                    }
                };
                let resp = self.send("PUT", &path, payload).await?;
                self.finish(cli, resp, &show).await
            }
            op => {
                let body = serde_json::to_vec(&op)?;
                let resp = self.send("POST", "/v1/ops", Payload::Bytes(Bytes::from(body))).await?;
                let _ = (input, output);
                self.finish(cli, resp, &show).await
            }
        }
    }

    /// Print an operation's answer as embedded mode would.
    async fn finish(
        &self,
        cli: &Cli,
        resp: hyper::Response<hyper::body::Incoming>,
        show: &Show,
    ) -> anyhow::Result<ExitCode> {
        if resp.status() != StatusCode::OK {
            return Err(Self::problem(resp).await);
        }
        let body = resp.into_body().collect().await.context("the server's answer was cut")?.to_bytes();
        let v: Value = serde_json::from_slice(&body).context("the server's answer is not JSON")?;
        for w in v["warnings"].as_array().into_iter().flatten() {
            let _ = writeln!(std::io::stderr(), "custos: warning: {}", w.as_str().unwrap_or_default());
        }
        let mut out = std::io::stdout().lock();
        let rendering = |name: &str| v["renderings"][name].as_str().map(str::to_string);
        let text = match show {
            Show::Prometheus => rendering("prometheus"),
            Show::Report { format: ReportFormat::Markdown, .. } if !cli.json => rendering("markdown"),
            Show::Report { format: ReportFormat::Html, .. } if !cli.json => rendering("html"),
            Show::Report { format: ReportFormat::Json, .. } => Some(serde_json::to_string_pretty(&v["result"])? + "\n"),
            _ if cli.json => Some(serde_json::to_string_pretty(&v["result"])? + "\n"),
            _ => v["text"].as_str().map(str::to_string),
        }
        .unwrap_or_default();
        match show {
            Show::Report { output: Some(path), .. } => {
                std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
                let _ = writeln!(std::io::stderr(), "wrote the risk report to {}", path.display());
            }
            Show::Save(path) if !cli.json => {
                crate::cmd::escrow::write_new(path, text.as_bytes())?;
                let _ = writeln!(std::io::stderr(), "wrote {}", path.display());
            }
            Show::Save(path) => {
                crate::cmd::escrow::write_new(path, v["text"].as_str().unwrap_or_default().as_bytes())?;
                let j = crate::cmd::saved_json(v["result"].clone(), path);
                out.write_all((serde_json::to_string_pretty(&j)? + "\n").as_bytes())?;
            }
            _ => out.write_all(text.as_bytes())?,
        }
        if let Some(f) = v["failure"].as_object() {
            let code: custos_ops::Code = serde_json::from_value(f["code"].clone()).unwrap_or(custos_ops::Code::Other);
            let _ = writeln!(std::io::stderr(), "custos: {}", f["message"].as_str().unwrap_or_default());
            return Ok(ExitCode::from(code.exit()));
        }
        Ok(ExitCode::SUCCESS)
    }
}
