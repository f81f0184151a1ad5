//! The KMIP listener (ADR 0024): TTLV request messages over TLS 1.2 or
//! 1.3, each client authenticated by a certificate `client_ca` signed,
//! whose subject common name the configuration maps to a principal. Each
//! message is read whole (its length is checked against the limit before
//! anything is read), answered, and the connection kept for the next; a
//! message that cannot be read as a request is answered with KMIP's
//! Invalid Message and the connection closed. Each connection has a thread
//! of its own, with blocking reads: the engine is synchronous, and a hop
//! between the async runtime and a blocking thread per message cost more
//! than the message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use custos_kmip::tags::{REASON_AUTHENTICATION_NOT_SUCCESSFUL, REASON_INVALID_MESSAGE, REQUEST_MESSAGE};
use custos_kmip::{refusal, ttlv, Kmip, Settings};
use custos_ops::{Caller, Engine};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use tokio::net::TcpListener;
use zeroize::Zeroizing;

use crate::config::{KmipConfig, Tls};
use crate::{setup, ServeError};

/// How long a connection may sit between messages.
const IDLE: Duration = Duration::from_secs(300);
/// How long one message may take to arrive once it has begun.
const BODY: Duration = Duration::from_secs(30);
/// How often a waiting connection looks up to see whether the server is
/// stopping.
const TICK: Duration = Duration::from_millis(500);

pub(crate) struct Listener {
    tcp: TcpListener,
    tls: Arc<rustls::ServerConfig>,
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
        let tls = Arc::new(tls_config(k, t)?);
        let tcp = TcpListener::bind(&k.listen).await.map_err(|e| setup(format!("KMIP address {}", k.listen), e))?;
        let who = Who {
            by_cn: k.clients.iter().map(|c| (c.cn.clone(), c.principal.clone())).collect(),
            cn_is_principal: k.cn_is_principal,
        };
        let service =
            Kmip::new(engine.clone(), Settings { app: k.app.clone(), apps: k.apps(), max_message: k.max_message });
        Ok(Self { tcp, tls, who: Arc::new(who), service: Arc::new(service), engine })
    }

    /// Accept connections until `stop` says so; each connection is served
    /// on a thread of its own (KMIP clients hold few, long connections,
    /// and the engine is synchronous: no hop between threads per message).
    /// On stop, connections finish the message they are on.
    pub(crate) async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let stopping = Arc::new(AtomicBool::new(false));
        let live = Arc::new(AtomicUsize::new(0));
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                Ok((stream, _)) = self.tcp.accept() => {
                    let Ok(stream) = stream.into_std() else { continue };
                    let conn = Connection {
                        tls: self.tls.clone(),
                        who: self.who.clone(),
                        service: self.service.clone(),
                        engine: self.engine.clone(),
                        stopping: stopping.clone(),
                    };
                    live.fetch_add(1, Ordering::SeqCst);
                    let ours = live.clone();
                    let spawned = std::thread::Builder::new().name("custos-kmip".into()).spawn(move || {
                        conn.serve(stream);
                        ours.fetch_sub(1, Ordering::SeqCst);
                    });
                    if spawned.is_err() {
                        live.fetch_sub(1, Ordering::SeqCst);
                        eprintln!("custos serve: could not start a thread for a KMIP connection; it was closed");
                    }
                }
            }
        }
        drop(self.tcp);
        stopping.store(true, Ordering::SeqCst);
        while live.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One client's connection, served on its own thread.
struct Connection {
    tls: Arc<rustls::ServerConfig>,
    who: Arc<Who>,
    service: Arc<Kmip>,
    engine: Arc<Engine>,
    stopping: Arc<AtomicBool>,
}

/// How a read ended early.
enum Cut {
    /// The peer closed the connection, after this many bytes.
    Closed(usize),
    /// Too slow, stopping, or broken.
    Gone,
}

impl Connection {
    fn serve(self, sock: std::net::TcpStream) {
        // Reads wake every TICK to look at the clock and for a stop; a
        // client that stops reading cannot hold a write (and this thread)
        // for longer than BODY.
        if sock.set_nonblocking(false).is_err()
            || sock.set_read_timeout(Some(TICK)).is_err()
            || sock.set_write_timeout(Some(BODY)).is_err()
        {
            return;
        }
        let _ = sock.set_nodelay(true);
        let Ok(conn) = rustls::ServerConnection::new(self.tls.clone()) else { return };
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let shaken = Instant::now() + Duration::from_secs(10);
        while tls.conn.is_handshaking() {
            match tls.conn.complete_io(&mut tls.sock) {
                Ok(_) | Err(_) if Instant::now() >= shaken => return,
                Ok((0, 0)) => return,
                Ok(_) => {}
                Err(e) if timed_out(&e) => {}
                Err(_) => return,
            }
        }
        let principal = match tls.conn.peer_certificates().and_then(|c| c.first()) {
            Some(leaf) => self.who.principal(leaf),
            None => Err("no client certificate".to_string()),
        };
        self.messages(&mut tls, principal);
        tls.conn.send_close_notify();
        let _ = tls.flush();
    }

    /// Fill `buf`, waiting at most until `by` (and not past a stop).
    fn fill(&self, tls: &mut impl Read, buf: &mut [u8], by: Instant) -> Result<(), Cut> {
        let mut got = 0;
        while got < buf.len() {
            match tls.read(&mut buf[got..]) {
                Ok(0) => return Err(Cut::Closed(got)),
                Ok(n) => got += n,
                Err(e) if timed_out(&e) => {
                    if Instant::now() >= by || (got == 0 && self.stopping.load(Ordering::SeqCst)) {
                        return Err(Cut::Gone);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(Cut::Closed(got)),
                Err(_) => return Err(Cut::Gone),
            }
        }
        Ok(())
    }

    fn messages(&self, tls: &mut (impl Read + Write), principal: Result<String, String>) {
        let max = self.service.settings().max_message;
        let refuse = |why: String| refusal(REASON_INVALID_MESSAGE, &why);
        loop {
            let mut head = [0u8; 8];
            if self.fill(tls, &mut head, Instant::now() + IDLE).is_err() {
                return;
            }
            let len = match ttlv::header(&head) {
                Ok((REQUEST_MESSAGE, 0x01, len)) => len as usize,
                Ok((tag, code, _)) => {
                    let why = format!("the message begins with tag {tag:06X} type {code:#04x}, not a request message");
                    let _ = tls.write_all(&refuse(why));
                    return;
                }
                Err(e) => {
                    let _ = tls.write_all(&refuse(format!("the request could not be read: {e}")));
                    return;
                }
            };
            if len + 8 > max {
                let why = format!("the message is {} bytes, over this server's limit of {max} bytes", len + 8);
                let _ = tls.write_all(&refuse(why));
                return;
            }
            let mut buf = Zeroizing::new(vec![0u8; 8 + len]);
            buf[..8].copy_from_slice(&head);
            match self.fill(tls, &mut buf[8..], Instant::now() + BODY) {
                Ok(()) => {}
                Err(Cut::Closed(got)) => {
                    let why = format!("the message ends after {} of its {} bytes", got + 8, len + 8);
                    let _ = tls.write_all(&refuse(why));
                    return;
                }
                Err(Cut::Gone) => return,
            }
            // The principal's record is read afresh for each message: a
            // disabled principal or a revoked grant counts at once. A
            // message's reads share one snapshot of the catalog until its
            // first write or audit entry (`with_snapshot`): KMIP's
            // operations are short.
            let (bytes, close) = custos_core::with_snapshot(|| {
                let caller = principal.clone().and_then(|name| match self.engine.vault().user(&name) {
                    Ok(p) if !p.disabled => Ok(Caller::Principal(p)),
                    Ok(_) => Err(format!("principal {name} is disabled")),
                    Err(_) => Err(format!("principal {name} does not exist")),
                });
                match caller {
                    Ok(c) => self.service.handle(&c, &buf),
                    Err(why) => (refusal(REASON_AUTHENTICATION_NOT_SUCCESSFUL, &why), true),
                }
            });
            if tls.write_all(&bytes).is_err() || tls.flush().is_err() || close {
                return;
            }
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
        }
    }
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}
