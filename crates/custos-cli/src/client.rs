//! Client mode (`--server URL`): the same commands, run by a Custos server.
//! Operations go as JSON to `/v1/ops`; dataset data streams to and from
//! `/v1/datasets/{name}`. The result is printed exactly as embedded mode
//! prints it (the server renders the same text), and the exit code comes
//! from the server's problem document or failure.

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
    target: Target,
    authorization: Option<zeroize::Zeroizing<String>>,
    host: String,
}

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
        let (target, host) = target(cli, url)?;
        Ok(Client { rt, target, authorization, host })
    }

    async fn send(&self, req: Request<BoxBody>) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let unreachable = |e: std::io::Error| Remote {
            exit: 7,
            message: format!("the server cannot be reached: {e}; is `custos serve` running?"),
        };
        macro_rules! handshake {
            ($io:expr) => {{
                let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new($io)).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender.send_request(req).await.map_err(|e| Remote {
                    exit: 7,
                    message: format!("the server ended the request: {e}; run the command again"),
                })?
            }};
        }
        Ok(match &self.target {
            Target::Unix(path) => {
                let s = tokio::net::UnixStream::connect(path).await.map_err(unreachable)?;
                handshake!(s)
            }
            Target::Tls { addr, name, connector } => {
                let tcp = tokio::net::TcpStream::connect(addr).await.map_err(unreachable)?;
                let _ = tcp.set_nodelay(true);
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| Remote { exit: 7, message: format!("TLS with the server failed: {e}") })?;
                handshake!(tls)
            }
        })
    }

    fn request(&self, method: &str, path: &str, body: BoxBody) -> anyhow::Result<Request<BoxBody>> {
        let mut b = Request::builder().method(method).uri(path).header("host", &self.host);
        if let Some(a) = &self.authorization {
            b = b.header("authorization", a.as_str());
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
    /// arrived whole.
    fn stream_to(&self, cli: &Cli, path: &str, output: Output, dataset: Option<String>) -> anyhow::Result<ExitCode> {
        let resp = self.rt.block_on(async { self.send(self.request("GET", path, Self::full(Vec::new()))?).await })?;
        if resp.status() != StatusCode::OK {
            return Err(self.rt.block_on(Self::problem(resp)));
        }
        let header = |k: &str| resp.headers().get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
        let want: Option<u64> = header("x-custos-size").and_then(|v| v.parse().ok());
        let generation = header("x-custos-generation").unwrap_or_else(|| "?".into());
        let mut body = resp.into_body();
        let mut copy = |w: &mut dyn Write| -> anyhow::Result<u64> {
            let mut n = 0u64;
            while let Some(frame) = self.rt.block_on(body.frame()) {
                let frame = frame.map_err(|e| Remote {
                    exit: 1,
                    message: format!("the server stopped sending after {n} bytes: {e}; nothing was written in place"),
                })?;
                if let Ok(b) = frame.into_data() {
                    n += b.len() as u64;
                    w.write_all(&b)?;
                }
            }
            if let Some(want) = want.filter(|w| *w != n) {
                return Err(Remote {
                    exit: 1,
                    message: format!("the server sent {n} of {want} bytes; run the command again"),
                }
                .into());
            }
            Ok(n)
        };
        match output {
            Output::File(path) => {
                let mut n = 0;
                crate::write_atomically(&path, |w| {
                    n = copy(w)?;
                    Ok(())
                })?;
                if let (Some(d), false) = (dataset, cli.json) {
                    let _ = writeln!(
                        std::io::stderr(),
                        "wrote {} of {d} generation {generation} to {}",
                        custos_ops::render::bytes(n),
                        path.display()
                    );
                }
            }
            _ => {
                let stdout = std::io::stdout();
                let mut w = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
                copy(&mut w)?;
                w.flush()?;
            }
        }
        Ok(ExitCode::SUCCESS)
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
                let reader: Box<dyn tokio::io::AsyncRead + Send + Unpin> = match input {
                    Input::File(p) => Box::new(
                        tokio::fs::File::open(&p)
                            .await
                            .with_context(|| format!("cannot open {} to store", p.display()))?,
                    ),
                    _ => Box::new(tokio::io::stdin()),
                };
                let stream = tokio_util::io::ReaderStream::with_capacity(reader, 1 << 20).map_ok(Frame::data);
                let body = StreamBody::new(stream).boxed_unsync();
                let resp = self.send(self.request("PUT", &path, body)?).await?;
                self.finish(cli, resp, &show).await
            }
            op => {
                let body = serde_json::to_vec(&op)?;
                let resp = self.send(self.request("POST", "/v1/ops", Self::full(body))?).await?;
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
