//! The KMIP listener (ADR 0024): TTLV request messages over TLS 1.2 or
//! 1.3, each client authenticated by a certificate `client_ca` signed,
//! whose subject common name the configuration maps to a principal. Each
//! message is read whole (its length is checked against the limit before
//! anything is read), answered, and the connection kept for the next; a
//! message that cannot be read as a request is answered with KMIP's
//! Invalid Message and the connection closed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use custos_kmip::tags::{REASON_AUTHENTICATION_NOT_SUCCESSFUL, REASON_INVALID_MESSAGE, REQUEST_MESSAGE};
use custos_kmip::{refusal, ttlv, Kmip, Settings};
use custos_ops::{Caller, Engine};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use zeroize::Zeroizing;

use crate::config::{KmipConfig, Tls};
use crate::{setup, ServeError};

/// How long a connection may sit between messages.
const IDLE: Duration = Duration::from_secs(300);
/// How long one message may take to arrive once it has begun.
const BODY: Duration = Duration::from_secs(30);

pub(crate) struct Listener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    who: Arc<Who>,
    service: Arc<Kmip>,
    engine: Arc<Engine>,
}

/// Which principal a certificate is.
struct Who {
    by_cn: HashMap<String, String>,
    cn_is_principal: bool,
}

impl Who {
    fn principal(&self, leaf: &[u8]) -> Result<String, String> {
        let cn = common_name(leaf).ok_or("the client certificate's subject has no common name")?;
        match self.by_cn.get(&cn) {
            Some(p) => Ok(p.clone()),
            None if self.cn_is_principal => Ok(cn),
            None => Err(format!("no principal is configured for the certificate of {cn:?} ([[kmip.clients]])")),
        }
    }
}

/// The subject common name of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    use x509_cert::der::asn1::{Ia5StringRef, ObjectIdentifier, PrintableStringRef, Utf8StringRef};
    use x509_cert::der::Decode;
    const CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let atv = cert.tbs_certificate.subject.0.iter().flat_map(|rdn| rdn.0.iter()).find(|a| a.oid == CN)?;
    let v = &atv.value;
    Utf8StringRef::try_from(v)
        .map(|s| s.as_str().to_string())
        .or_else(|_| PrintableStringRef::try_from(v).map(|s| s.as_str().to_string()))
        .or_else(|_| Ia5StringRef::try_from(v).map(|s| s.as_str().to_string()))
        .ok()
}

/// rustls for KMIP: TLS 1.2 and 1.3 (KMIP's profiles name 1.2), a client
/// certificate required and checked against the CA bundle.
fn tls_config(k: &KmipConfig, t: &Tls) -> Result<rustls::ServerConfig, ServeError> {
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = crate::net::pem_certs(&t.cert)?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&t.key)
        .map_err(|e| setup(format!("TLS key {}", t.key.display()), e))?;
    let ca = k.client_ca.as_ref().or(t.client_ca.as_ref()).ok_or_else(|| setup("[kmip]", "no client_ca"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in crate::net::pem_certs(ca)? {
        roots.add(c).map_err(|e| setup(format!("KMIP client CA {}", ca.display()), e))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| setup("KMIP client certificate verifier", e))?;
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| setup("KMIP TLS", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| setup("TLS certificate and key", e))
}

impl Listener {
    pub(crate) async fn bind(k: &KmipConfig, t: &Tls, engine: Arc<Engine>) -> Result<Self, ServeError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(k, t)?));
        let tcp = TcpListener::bind(&k.listen).await.map_err(|e| setup(format!("KMIP address {}", k.listen), e))?;
        let who = Who {
            by_cn: k.clients.iter().map(|c| (c.cn.clone(), c.principal.clone())).collect(),
            cn_is_principal: k.cn_is_principal,
        };
        let service = Kmip::new(engine.clone(), Settings { app: k.app.clone(), max_message: k.max_message });
        Ok(Self { tcp, acceptor, who: Arc::new(who), service: Arc::new(service), engine })
    }

    /// Accept connections until `stop` says so; connections then finish
    /// the message they are on.
    pub(crate) async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                Ok((stream, _)) = self.tcp.accept() => {
                    let _ = stream.set_nodelay(true);
                    let (acceptor, who, service, engine) =
                        (self.acceptor.clone(), self.who.clone(), self.service.clone(), self.engine.clone());
                    let stop = stop.clone();
                    conns.spawn(async move {
                        let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await else { return };
                        let principal = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                            Some(leaf) => who.principal(leaf),
                            None => Err("no client certificate".to_string()),
                        };
                        connection(tls, principal, service, engine, stop).await;
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(self.tcp);
        while conns.join_next().await.is_some() {}
    }
}

async fn connection(
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    principal: Result<String, String>,
    service: Arc<Kmip>,
    engine: Arc<Engine>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let max = service.settings().max_message;
    loop {
        if *stop.borrow() {
            break;
        }
        let mut head = [0u8; 8];
        match tokio::time::timeout(IDLE, tls.read_exact(&mut head)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        let refuse = |why: String| refusal(REASON_INVALID_MESSAGE, &why);
        let len = match ttlv::header(&head) {
            Ok((REQUEST_MESSAGE, 0x01, len)) => len as usize,
            Ok((tag, code, _)) => {
                let why = format!("the message begins with tag {tag:06X} type {code:#04x}, not a request message");
                let _ = tls.write_all(&refuse(why)).await;
                break;
            }
            Err(e) => {
                let _ = tls.write_all(&refuse(format!("the request could not be read: {e}"))).await;
                break;
            }
        };
        if len + 8 > max {
            let why = format!("the message is {} bytes, over this server's limit of {max} bytes", len + 8);
            let _ = tls.write_all(&refuse(why)).await;
            break;
        }
        let mut buf = Zeroizing::new(vec![0u8; 8 + len]);
        buf[..8].copy_from_slice(&head);
        match tokio::time::timeout(BODY, tls.read_exact(&mut buf[8..])).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                let why = format!("the message ends before its {} bytes arrived", len + 8);
                let _ = tls.write_all(&refuse(why)).await;
                break;
            }
            _ => break,
        }
        // The principal's record is read afresh for each message: a
        // disabled principal or a revoked grant counts at once.
        let (service2, engine2, principal2) = (service.clone(), engine.clone(), principal.clone());
        let answer = tokio::task::spawn_blocking(move || {
            let caller = principal2.and_then(|name| match engine2.vault().user(&name) {
                Ok(p) if !p.disabled => Ok(Caller::Principal(p)),
                Ok(_) => Err(format!("principal {name} is disabled")),
                Err(_) => Err(format!("principal {name} does not exist")),
            });
            match caller {
                Ok(c) => service2.handle(&c, &buf),
                Err(why) => (refusal(REASON_AUTHENTICATION_NOT_SUCCESSFUL, &why), true),
            }
        })
        .await;
        let Ok((bytes, close)) = answer else { break };
        if tls.write_all(&bytes).await.is_err() || tls.flush().await.is_err() {
            break;
        }
        if close {
            break;
        }
    }
    let _ = tls.shutdown().await;
}
