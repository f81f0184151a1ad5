//! A KMIP load generator for bench/kmip.sh: N clients, each a thread with
//! its own mutually authenticated TLS connection, sending one request at a
//! time for a fixed time and timing each. Prints one JSON line.
//!
//! kmip-load ADDR CA CERT KEY CLIENTS SECONDS MODE [UID]
//!   MODE get:   Get UID, again and again.
//!   MODE cycle: Create an AES-256 key, Get it, Destroy it (one cycle = 3
//!               requests).
//! Every answer is decoded and must be Success; anything else is counted
//! as a failure and the first one's message printed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use custos_kmip::tags::*;
use custos_kmip::ttlv::{self, Item, Value};

fn text(tag: u32, s: &str) -> Item {
    Item::new(tag, Value::Text(s.into()))
}

fn en(tag: u32, v: u32) -> Item {
    Item::new(tag, Value::Enumeration(v))
}

fn int(tag: u32, v: i32) -> Item {
    Item::new(tag, Value::Integer(v))
}

fn request(op: u32, payload: Vec<Item>) -> Vec<u8> {
    let header = Item::structure(
        REQUEST_HEADER,
        vec![
            Item::structure(PROTOCOL_VERSION, vec![int(PROTOCOL_VERSION_MAJOR, 1), int(PROTOCOL_VERSION_MINOR, 2)]),
            int(BATCH_COUNT, 1),
        ],
    );
    let item = Item::structure(BATCH_ITEM, vec![en(OPERATION, op), Item::structure(REQUEST_PAYLOAD, payload)]);
    ttlv::encode(&Item::structure(REQUEST_MESSAGE, vec![header, item])).to_vec()
}

fn attribute(name: &str, value: Value) -> Item {
    Item::structure(ATTRIBUTE, vec![text(ATTRIBUTE_NAME, name), Item::new(ATTRIBUTE_VALUE, value)])
}

fn create() -> Vec<u8> {
    request(
        OP_CREATE,
        vec![
            en(OBJECT_TYPE, OBJECT_SYMMETRIC_KEY),
            Item::structure(
                TEMPLATE_ATTRIBUTE,
                vec![
                    attribute("Cryptographic Algorithm", Value::Enumeration(ALGORITHM_AES)),
                    attribute("Cryptographic Length", Value::Integer(256)),
                    attribute("Cryptographic Usage Mask", Value::Integer(12)),
                ],
            ),
        ],
    )
}

fn by_uid(op: u32, uid: &str) -> Vec<u8> {
    request(op, vec![text(UNIQUE_IDENTIFIER, uid)])
}

/// Send one request, read its answer: the payload of a Success, or why not.
fn exchange(tls: &mut impl ReadWrite, req: &[u8]) -> Result<Vec<Item>, String> {
    tls.write_all(req).map_err(|e| format!("write: {e}"))?;
    let mut head = [0u8; 8];
    tls.read_exact(&mut head).map_err(|e| format!("read: {e}"))?;
    let len = u32::from_be_bytes(head[4..8].try_into().unwrap()) as usize;
    let mut buf = vec![0u8; 8 + len];
    buf[..8].copy_from_slice(&head);
    tls.read_exact(&mut buf[8..]).map_err(|e| format!("read: {e}"))?;
    let msg = ttlv::decode(&buf, 16 << 20).map_err(|e| format!("decode: {e}"))?;
    let item = msg.items().iter().find(|i| i.tag == BATCH_ITEM).ok_or("no batch item")?;
    let status = item.items().iter().find(|i| i.tag == RESULT_STATUS).map(|i| i.value.clone());
    if status != Some(Value::Enumeration(STATUS_SUCCESS)) {
        let m = item.items().iter().find(|i| i.tag == RESULT_MESSAGE).map(|i| format!("{:?}", i.value));
        return Err(format!("status {status:?}: {}", m.unwrap_or_default()));
    }
    Ok(item.items().iter().find(|i| i.tag == RESPONSE_PAYLOAD).map(|p| p.items().to_vec()).unwrap_or_default())
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn uid_of(payload: &[Item]) -> Result<String, String> {
    match payload.iter().find(|i| i.tag == UNIQUE_IDENTIFIER).map(|i| &i.value) {
        Some(Value::Text(t)) => Ok(t.clone()),
        _ => Err("no unique identifier in the answer".into()),
    }
}

fn pem_certs(path: &str) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_file_iter(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 8 {
        eprintln!("usage: kmip-load ADDR CA CERT KEY CLIENTS SECONDS get|cycle [UID]");
        std::process::exit(2);
    }
    let (addr, ca, cert, key) = (a[1].clone(), &a[2], &a[3], &a[4]);
    let clients: usize = a[5].parse().expect("CLIENTS");
    let secs: f64 = a[6].parse().expect("SECONDS");
    let mode = a[7].clone();
    let uid = a.get(8).cloned();
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(ca) {
        roots.add(c).expect("CA certificate");
    }
    use rustls_pki_types::pem::PemObject;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).expect("client key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(pem_certs(cert), key)
            .expect("client certificate"),
    );
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (config, addr, mode, uid) = (config.clone(), addr.clone(), mode.clone(), uid.clone());
            std::thread::spawn(move || {
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                let conn = rustls::ClientConnection::new(config, name).expect("TLS client");
                let sock = TcpStream::connect(&addr).expect("connect");
                sock.set_nodelay(true).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, sock);
                let (mut lat, mut fails, mut first_fail) = (Vec::new(), 0u64, None::<String>);
                let get = uid.as_deref().map(|u| by_uid(OP_GET, u));
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let r = match mode.as_str() {
                        "get" => exchange(&mut tls, get.as_ref().expect("get needs a UID")).map(|_| ()),
                        _ => (|| {
                            let made = uid_of(&exchange(&mut tls, &create())?)?;
                            exchange(&mut tls, &by_uid(OP_GET, &made))?;
                            exchange(&mut tls, &by_uid(OP_DESTROY, &made))?;
                            Ok(())
                        })(),
                    };
                    match r {
                        Ok(()) => lat.push(t.elapsed()),
                        Err(e) => {
                            fails += 1;
                            first_fail.get_or_insert(e);
                            if fails > 100 {
                                break;
                            }
                        }
                    }
                }
                (lat, fails, first_fail)
            })
        })
        .collect();
    let (mut lat, mut fails, mut first) = (Vec::new(), 0, None);
    for t in threads {
        let (l, f, e) = t.join().expect("client thread");
        lat.extend(l);
        fails += f;
        first = first.or(e);
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{{\"mode\":\"{mode}\",\"clients\":{clients},\"done\":{},\"seconds\":{elapsed:.2},\"per_second\":{:.1},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"failures\":{fails}}}",
        lat.len(),
        lat.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99),
    );
    if let Some(e) = first {
        eprintln!("first failure: {e}");
    }
}
