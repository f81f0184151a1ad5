//! Listening: a Unix socket and TLS 1.3 over TCP, one HTTP/1.1 connection
//! per task; SIGTERM stops accepting, refuses new requests on open
//! connections, and waits (up to the configured drain time) for those in
//! flight.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use custos_ops::Engine;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, UnixListener};
use tower::ServiceExt as _;

use crate::auth::Authenticator;
use crate::config::{Config, Tls};
use crate::http::{router, Peer, Shared};
use crate::linger::Lingering;
use crate::metrics::Metrics;
use crate::{setup, ServeError};

pub(crate) fn pem_certs(path: &std::path::Path) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, ServeError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| setup(format!("TLS certificates {}", path.display()), e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| setup(format!("TLS certificates {}", path.display()), e))
}

/// rustls for the server: TLS 1.3 only, aws-lc-rs, HTTP/1.1; client
/// certificates optional and checked against `client_ca` when it is set.
fn tls_config(t: &Tls) -> Result<rustls::ServerConfig, ServeError> {
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = pem_certs(&t.cert)?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&t.key)
        .map_err(|e| setup(format!("TLS key {}", t.key.display()), e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| setup("TLS", e))?;
    let builder = match &t.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in pem_certs(ca)? {
                roots.add(c).map_err(|e| setup(format!("client CA {}", ca.display()), e))?;
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| setup("client certificate verifier", e))?;
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, key).map_err(|e| setup("TLS certificate and key", e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

fn sha256_hex(der: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

pub async fn serve(
    config: Config,
    engine: Arc<Engine>,
    shutdown: impl std::future::Future<Output = ()>,
    ready: impl FnOnce() + Send + 'static,
) -> Result<(), ServeError> {
    let shared = Arc::new(Shared {
        engine,
        auth: Authenticator::new(),
        metrics: Metrics::default(),
        draining: Default::default(),
        console: Default::default(),
    });
    let app = router(shared.clone());
    let graceful = GracefulShutdown::new();
    let unix = match &config.listen.unix {
        Some(path) => {
            // A socket left by a server that died is replaced; a live one is not.
            if path.exists() {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(setup(format!("socket {}", path.display()), "another server is listening on it"));
                }
                std::fs::remove_file(path).map_err(|e| setup(format!("socket {}", path.display()), e))?;
            }
            let l = UnixListener::bind(path).map_err(|e| setup(format!("socket {}", path.display()), e))?;
            rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(0o660))
                .map_err(|e| setup(format!("socket {}", path.display()), e))?;
            Some(l)
        }
        None => None,
    };
    let tcp = match (&config.listen.tcp, &config.tls) {
        (Some(addr), Some(t)) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(t)?));
            let l = TcpListener::bind(addr).await.map_err(|e| setup(format!("address {addr}"), e))?;
            let clients: HashMap<String, String> =
                t.clients.iter().map(|c| (c.sha256.to_lowercase(), c.principal.clone())).collect();
            Some((l, acceptor, Arc::new(clients)))
        }
        _ => None,
    };
    let (stop_kmip, stopped) = tokio::sync::watch::channel(false);
    let kmip = match (&config.kmip, &config.tls) {
        (Some(k), Some(t)) => {
            let l = crate::kmip::Listener::bind(k, t, shared.engine.clone()).await?;
            Some(tokio::spawn(l.run(stopped)))
        }
        _ => None,
    };
    ready();
    let builder = hyper::server::conn::http1::Builder::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Ok((stream, _)) = async { match &unix { Some(l) => l.accept().await, None => std::future::pending().await } } => {
                let svc = TowerToHyperService::new(app.clone().layer(axum::Extension(Peer::default())).map_request(Lingering::new));
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move { let _ = conn.await; });
            }
            Ok((stream, _)) = async { match &tcp { Some((l, _, _)) => l.accept().await, None => std::future::pending().await } } => {
                let (_, acceptor, clients) = tcp.as_ref().expect("tcp is listening");
                let (acceptor, clients, app) = (acceptor.clone(), clients.clone(), app.clone());
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await else { return };
                    let cert_principal = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|leaf| clients.get(&sha256_hex(leaf)).cloned());
                    let svc = TowerToHyperService::new(app.layer(axum::Extension(Peer { cert_principal, tls: true })).map_request(Lingering::new));
                    let conn = builder.serve_connection(TokioIo::new(tls), svc);
                    let _ = watcher.watch(conn).await;
                });
            }
        }
    }
    // Drain: refuse new requests, let those in flight finish.
    shared.draining.store(true, Ordering::Relaxed);
    let _ = stop_kmip.send(true);
    if let Some(k) = kmip {
        let _ = tokio::time::timeout(Duration::from_secs(config.drain_secs), k).await;
    }
    drop(unix);
    drop(tcp);
    if tokio::time::timeout(Duration::from_secs(config.drain_secs), graceful.shutdown()).await.is_err() {
        eprintln!("custos serve: operations still running after {}s; stopping anyway", config.drain_secs);
    }
    if let Some(p) = &config.listen.unix {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}
