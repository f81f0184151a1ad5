//! KMIP requests carried out through the Operation boundary: each batch
//! item becomes one [`Operation`] run by the engine for the principal the
//! client certificate names, so rights, key grants, dual control and the
//! audit log apply exactly as they do to the CLI and the HTTP API. A
//! KMIP object is a Custos key; its Unique Identifier is the key's label.

use std::sync::Arc;

use custos_core::model::{KeyAction, KeyAttributes, KeyLabel, KeyRecord, KeyState, Purpose};
use custos_ops::{Caller, Code, Engine, Io, Operation, Reply};
use jiff::Timestamp;
use zeroize::Zeroizing;

use crate::message::*;
use crate::tags::*;
use crate::ttlv::{decode, Item, Value};

/// What the server's configuration decides about KMIP.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The application whose naming sequence labels keys made over KMIP.
    pub app: String,
    /// Principals whose keys go to an application of their own instead.
    pub apps: std::collections::HashMap<String, String>,
    /// The largest request message taken, in bytes.
    pub max_message: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self { app: "KMIP".into(), apps: Default::default(), max_message: 1 << 20 }
    }
}

impl Settings {
    /// The application whose naming sequence labels the keys `who` makes.
    fn app_for(&self, who: &Caller) -> String {
        match who {
            Caller::Principal(p) => self.apps.get(&p.name).unwrap_or(&self.app).clone(),
            Caller::Unverified(_) => self.app.clone(),
        }
    }
}

/// The KMIP service: decodes a request message, runs its batch items and
/// encodes the response.
pub struct Kmip {
    engine: Arc<Engine>,
    settings: Settings,
}

/// How one batch item ended.
enum Done {
    Ok(Vec<Item>),
    /// Accepted, carried out later (dual control, a waiting period): the
    /// correlation value names what to look for.
    Pending(String, String),
}

/// The reason KMIP gives for an engine's error.
fn reason_for(e: &custos_ops::Error) -> u32 {
    if let custos_ops::Error::Engine(core) = e {
        if matches!(**core, custos_core::Error::Invalid { what: "key name", .. }) {
            return 0x35; // Non Unique Name Attribute
        }
        if matches!(**core, custos_core::Error::Invalid { what: "ciphertext", .. }) {
            return REASON_CRYPTOGRAPHIC_FAILURE;
        }
        if matches!(**core, custos_core::Error::KeyNoMaterial { .. }) {
            return 0x36; // Object Destroyed
        }
    }
    match e.code() {
        Code::NotFound => REASON_ITEM_NOT_FOUND,
        Code::Forbidden => REASON_PERMISSION_DENIED,
        Code::Authentication => REASON_AUTHENTICATION_NOT_SUCCESSFUL,
        Code::KeyState | Code::Conflict => 0x43, // Wrong Key Lifecycle State
        Code::Invalid | Code::Usage => REASON_INVALID_FIELD,
        Code::Integrity => REASON_CRYPTOGRAPHIC_FAILURE,
        _ => REASON_GENERAL_FAILURE,
    }
}

/// The fields of a Decrypt payload; Encrypt's are these but the last.
const CIPHER_FIELDS: [u32; 9] = [
    UNIQUE_IDENTIFIER,
    CRYPTOGRAPHIC_PARAMETERS,
    DATA,
    IV_COUNTER_NONCE,
    CORRELATION_VALUE,
    INIT_INDICATOR,
    FINAL_INDICATOR,
    AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA,
    AUTHENTICATED_ENCRYPTION_TAG,
];

/// A key's KMIP object type.
fn object_type(k: &KeyRecord) -> u32 {
    if k.attributes.secret.is_some() {
        OBJECT_SECRET_DATA
    } else {
        OBJECT_SYMMETRIC_KEY
    }
}

/// A revocation reason code (1 to 7: the engine's list is in KMIP's
/// order) as the word Custos keeps.
fn revocation_reason(code: u32) -> Option<&'static str> {
    custos_core::REVOCATION_REASONS.get((code as usize).checked_sub(1)?).copied()
}

/// The code of a revocation reason word.
fn revocation_code(word: &str) -> u32 {
    custos_core::REVOCATION_REASONS.iter().position(|w| *w == word).map_or(1, |i| i as u32 + 1)
}

#[test]
fn revocation_codes_are_kmips() {
    assert_eq!(revocation_reason(2), Some("key-compromise"));
    assert_eq!(revocation_reason(6), Some("cessation-of-operation"));
    assert_eq!((revocation_reason(0), revocation_reason(8)), (None, None));
    assert_eq!(revocation_code("privilege-withdrawn"), 7);
}

/// KMIP's state for a key.
fn kmip_state(k: &KeyRecord) -> u32 {
    let compromised = k.attributes.revocation.as_ref().is_some_and(|r| r.reason.ends_with("compromise"));
    match k.state {
        KeyState::PreActive => STATE_PRE_ACTIVE,
        KeyState::Active => STATE_ACTIVE,
        KeyState::Inactive | KeyState::Archived => STATE_DEACTIVATED,
        KeyState::Compromised => STATE_COMPROMISED,
        KeyState::Destroyed if compromised => STATE_DESTROYED_COMPROMISED,
        KeyState::Destroyed => STATE_DESTROYED,
    }
}

/// A key's attributes as KMIP names them, each value tagged with its own
/// attribute's tag (2.0) — [`attribute_v1`] retags them for 1.x.
fn attributes_of(k: &KeyRecord) -> Vec<(String, Item)> {
    let mut out: Vec<(String, Item)> = Vec::new();
    let mut add = |name: &str, item: Item| out.push((name.to_string(), item));
    add("Unique Identifier", text(UNIQUE_IDENTIFIER, k.label.as_str()));
    for n in &k.attributes.names {
        add("Name", Item::structure(NAME, vec![text(NAME_VALUE, n.clone()), enumeration(NAME_TYPE, NAME_TEXT)]));
    }
    add("Object Type", enumeration(OBJECT_TYPE, object_type(k)));
    if k.attributes.secret.is_none() {
        add("Cryptographic Algorithm", enumeration(CRYPTOGRAPHIC_ALGORITHM, ALGORITHM_AES));
        add("Cryptographic Length", integer(CRYPTOGRAPHIC_LENGTH, i32::from(k.attributes.length_bits())));
    }
    if let Some(m) = k.attributes.usage_mask {
        add("Cryptographic Usage Mask", integer(CRYPTOGRAPHIC_USAGE_MASK, m as i32));
    }
    add("State", enumeration(STATE, kmip_state(k)));
    add("Initial Date", date(INITIAL_DATE, k.created_at));
    if let Some(t) = k.activated_at {
        add("Activation Date", date(ACTIVATION_DATE, t));
    }
    if let Some(t) = k.deactivated_at {
        add("Deactivation Date", date(DEACTIVATION_DATE, t));
    }
    if let Some(t) = k.destroyed_at {
        add("Destroy Date", date(DESTROY_DATE, t));
    }
    if let Some(r) = &k.attributes.revocation {
        let mut v = vec![enumeration(REVOCATION_REASON_CODE, revocation_code(&r.reason))];
        if let Some(m) = &r.message {
            v.push(text(REVOCATION_MESSAGE, m.clone()));
        }
        add("Revocation Reason", Item::structure(REVOCATION_REASON, v));
        if r.reason.ends_with("compromise") {
            add("Compromise Date", date(COMPROMISE_DATE, r.at));
            if let Some(t) = r.compromised_at {
                add("Compromise Occurrence Date", date(COMPROMISE_OCCURRENCE_DATE, t));
            }
        }
    }
    if let Some(c) = &k.attributes.contact {
        add("Contact Information", text(CONTACT_INFORMATION, c.clone()));
    }
    for (name, value) in &k.attributes.custom {
        add(name, text(ATTRIBUTE_VALUE, value.clone()));
    }
    out
}

/// A 1.x Attribute structure: name, index among its name's instances,
/// value.
fn attribute_v1(name: &str, index: usize, value: &Item) -> Item {
    let mut v = vec![text(ATTRIBUTE_NAME, name)];
    if index > 0 {
        v.push(integer(ATTRIBUTE_INDEX, index as i32));
    }
    v.push(Item::new(ATTRIBUTE_VALUE, value.value.clone()));
    Item::structure(ATTRIBUTE, v)
}

/// Attributes in the shape the version uses: 1.x Attribute structures, or
/// one 2.0 Attributes structure (custom attributes left out: 2.0 carries
/// them as vendor attributes, which this server does not write).
fn attributes_out(version: (i32, i32), attrs: &[(String, Item)]) -> Vec<Item> {
    if version.0 >= 2 {
        let v = attrs.iter().filter(|(n, _)| attribute_tag(n).is_some()).map(|(_, i)| i.clone()).collect();
        return vec![Item::structure(ATTRIBUTES, v)];
    }
    let mut seen: Vec<&str> = Vec::new();
    attrs
        .iter()
        .map(|(n, i)| {
            let index = seen.iter().filter(|s| **s == n.as_str()).count();
            seen.push(n);
            attribute_v1(n, index, i)
        })
        .collect()
}

/// Apply a client's attribute to a key's attributes (Create, Add and
/// Modify Attribute). `create` allows those only a new key takes.
fn apply(a: &mut KeyAttributes, name: &str, v: &Value, create: bool) -> R<()> {
    let item = value_item(v);
    match name {
        "Name" => {
            let n = name_of(v)?;
            if !a.names.contains(&n) {
                a.names.push(n);
            }
        }
        "Cryptographic Usage Mask" => a.usage_mask = Some(as_int(&item, "the usage mask")? as u32),
        "Contact Information" => a.contact = Some(as_text(&item, "contact information")?.to_string()),
        n if n.starts_with("x-") || n.starts_with("y-") => {
            let t = match v {
                Value::Text(t) => t.clone(),
                Value::Integer(i) => i.to_string(),
                Value::LongInteger(i) => i.to_string(),
                Value::Boolean(b) => b.to_string(),
                Value::Enumeration(e) => e.to_string(),
                other => {
                    return Err(invalid(format!(
                        "custom attribute {n}: a {} is not kept; give text",
                        other.type_name()
                    )))
                }
            };
            a.custom.insert(n.to_string(), t);
        }
        "Cryptographic Algorithm" if create => {
            if as_enum(&item, "the algorithm")? != ALGORITHM_AES {
                return Err(invalid("Custos keeps AES keys only: give Cryptographic Algorithm AES"));
            }
        }
        "Cryptographic Length" if create => {
            let bits = as_int(&item, "the length")?;
            if ![128, 192, 256].contains(&bits) {
                return Err(invalid(format!("an AES key of {bits} bits: give 128, 192 or 256")));
            }
            a.bits = (bits != 256).then_some(bits as u16);
        }
        // Custos's own policies decide; the name is accepted and not kept.
        "Operation Policy Name" if create => {}
        "Object Type"
        | "Cryptographic Algorithm"
        | "Cryptographic Length"
        | "Unique Identifier"
        | "State"
        | "Initial Date"
        | "Activation Date"
        | "Deactivation Date"
        | "Destroy Date"
        | "Compromise Date"
        | "Compromise Occurrence Date"
        | "Revocation Reason"
        | "Last Change Date" => {
            return Err(fail(0x22, format!("attribute {name} is set by the server, not by a client")));
            // Attribute Read Only
        }
        other => return Err(invalid(format!("attribute {other:?} is not one this server keeps"))),
    }
    Ok(())
}

impl Kmip {
    pub fn new(engine: Arc<Engine>, settings: Settings) -> Self {
        Self { engine, settings }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Answer one request message (its whole TTLV encoding) for `who`:
    /// the response, and whether the connection must close after it (the
    /// message could not be read as a request).
    pub fn handle(&self, who: &Caller, bytes: &[u8]) -> (Zeroizing<Vec<u8>>, bool) {
        let msg = match decode(bytes, self.settings.max_message) {
            Ok(m) => m,
            Err(e) => return (refusal(REASON_INVALID_MESSAGE, &format!("the request could not be read: {e}")), true),
        };
        let req = match parse_request(&msg) {
            Ok(r) => r,
            Err(f) => return (refusal(f.reason, &f.message), true),
        };
        let Some(version) = answer_version(req.version) else {
            let why = format!(
                "protocol version {}.{} is older than any this server speaks (1.0 to 2.0)",
                req.version.0, req.version.1
            );
            return (refusal(REASON_INVALID_MESSAGE, &why), true);
        };
        let mut last: Option<String> = None;
        let mut out = Vec::with_capacity(req.items.len());
        for b in &req.items {
            let r = self.run(who, version, b, &mut last);
            out.push(match r {
                Ok(Done::Ok(payload)) => {
                    let mut v = vec![enumeration(OPERATION, b.operation)];
                    v.extend(b.id.cloned());
                    v.push(enumeration(RESULT_STATUS, STATUS_SUCCESS));
                    v.push(Item::structure(RESPONSE_PAYLOAD, payload));
                    Item::structure(BATCH_ITEM, v)
                }
                Ok(Done::Pending(correlation, message)) => {
                    let mut v = vec![enumeration(OPERATION, b.operation)];
                    v.extend(b.id.cloned());
                    v.push(enumeration(RESULT_STATUS, STATUS_PENDING));
                    v.push(text(RESULT_MESSAGE, message));
                    v.push(Item::new(
                        ASYNCHRONOUS_CORRELATION_VALUE,
                        Value::Bytes(Zeroizing::new(correlation.into_bytes())),
                    ));
                    Item::structure(BATCH_ITEM, v)
                }
                Err(f) => failed_item(Some(b.operation), b.id, &f),
            });
        }
        (response(version, out), false)
    }

    fn exec(&self, who: &Caller, op: Operation) -> R<Reply> {
        self.engine
            .execute(who, op, Io::default())
            .map(|o| o.reply)
            .map_err(|e| Failure { reason: reason_for(&e), message: e.to_string() })
    }

    /// The key a request's Unique Identifier names (or the one an earlier
    /// item of the batch made).
    fn uid(&self, payload: &[Item], last: &Option<String>) -> R<KeyLabel> {
        let uid = match one(payload, UNIQUE_IDENTIFIER)? {
            Some(i) => as_text(i, "the unique identifier")?.to_string(),
            None => last.clone().ok_or_else(|| fail(REASON_MISSING_DATA, "the request names no Unique Identifier"))?,
        };
        KeyLabel::new(uid.as_str())
            .map_err(|_| fail(REASON_ITEM_NOT_FOUND, format!("no object has the identifier {uid:?}")))
    }

    fn key(&self, who: &Caller, label: &KeyLabel) -> R<KeyRecord> {
        match self.exec(who, Operation::KeyShow { label: label.clone() })? {
            Reply::KeyDetail { key, .. } => Ok(key),
            _ => Err(fail(REASON_GENERAL_FAILURE, "the engine answered a key show with something else")),
        }
    }

    fn run(&self, who: &Caller, version: (i32, i32), b: &BatchItem<'_>, last: &mut Option<String>) -> R<Done> {
        let p = b.payload;
        match b.operation {
            OP_DISCOVER_VERSIONS => {
                let asked: Vec<(i32, i32)> = p
                    .iter()
                    .filter(|i| i.tag == PROTOCOL_VERSION)
                    .map(|v| {
                        Ok((
                            as_int(need(v.items(), PROTOCOL_VERSION_MAJOR, "major")?, "major")?,
                            as_int(need(v.items(), PROTOCOL_VERSION_MINOR, "minor")?, "minor")?,
                        ))
                    })
                    .collect::<R<_>>()?;
                let v = VERSIONS
                    .iter()
                    .filter(|v| asked.is_empty() || asked.contains(v))
                    .map(|v| version_item(*v))
                    .collect();
                Ok(Done::Ok(v))
            }
            OP_QUERY => {
                let mut out = Vec::new();
                for f in p.iter().filter(|i| i.tag == QUERY_FUNCTION) {
                    match as_enum(f, "query function")? {
                        QUERY_OPERATIONS => out.extend(
                            SUPPORTED_OPERATIONS
                                .iter()
                                .filter(|o| operation_in(**o, version))
                                .map(|o| enumeration(OPERATION, *o)),
                        ),
                        QUERY_OBJECTS => out.push(enumeration(OBJECT_TYPE, OBJECT_SYMMETRIC_KEY)),
                        QUERY_SERVER_INFORMATION => {
                            out.push(text(VENDOR_IDENTIFICATION, "Custos"));
                            out.push(Item::structure(SERVER_INFORMATION, vec![]));
                        }
                        _ => {}
                    }
                }
                Ok(Done::Ok(out))
            }
            OP_CREATE => {
                let object = as_enum(need(p, OBJECT_TYPE, "object type")?, "the object type")?;
                if object != OBJECT_SYMMETRIC_KEY {
                    return Err(fail(0x30, "Custos creates symmetric keys only"));
                    // Invalid Object Type
                }
                let mut a = KeyAttributes::default();
                let mut activate = false;
                let mut algorithm = false;
                for (name, v) in attributes_in(p)? {
                    match name.as_str() {
                        "Activation Date" => {
                            let t = as_date(&value_item(&v), "the activation date")?;
                            if t > Timestamp::now() {
                                return Err(fail(
                                    REASON_FEATURE_NOT_SUPPORTED,
                                    "an activation date in the future: create the key, then Activate it when it is due",
                                ));
                            }
                            activate = true;
                        }
                        "Cryptographic Algorithm" => {
                            algorithm = true;
                            apply(&mut a, &name, &v, true)?
                        }
                        _ => apply(&mut a, &name, &v, true)?,
                    }
                }
                if !algorithm {
                    return Err(fail(REASON_MISSING_DATA, "Create needs a Cryptographic Algorithm (AES)"));
                }
                let op = Operation::KeyCreate {
                    label: None,
                    app: Some(self.settings.app_for(who)),
                    purpose: Purpose::Prim,
                    expires_at: None,
                    activate,
                    count: None,
                    attributes: a,
                };
                match self.exec(who, op)? {
                    Reply::Key(k, _) => {
                        *last = Some(k.label.to_string());
                        Ok(Done::Ok(vec![
                            enumeration(OBJECT_TYPE, OBJECT_SYMMETRIC_KEY),
                            text(UNIQUE_IDENTIFIER, k.label.as_str()),
                        ]))
                    }
                    Reply::RequestCreated { request, .. } => Ok(pending_request(request.id)),
                    _ => Err(fail(REASON_GENERAL_FAILURE, "the engine answered a create with something else")),
                }
            }
            OP_GET => {
                only(
                    p,
                    &[UNIQUE_IDENTIFIER, KEY_FORMAT_TYPE, KEY_COMPRESSION_TYPE, KEY_WRAPPING_SPECIFICATION],
                    "Get",
                )?;
                let label = self.uid(p, last)?;
                let format = match one(p, KEY_FORMAT_TYPE)? {
                    None => FORMAT_RAW,
                    Some(f) => as_enum(f, "the key format type")?,
                };
                if format != FORMAT_RAW && format != FORMAT_TRANSPARENT_SYMMETRIC {
                    return Err(fail(
                        REASON_KEY_FORMAT_TYPE_NOT_SUPPORTED,
                        "symmetric keys come as Raw or Transparent Symmetric Key",
                    ));
                }
                if one(p, KEY_WRAPPING_SPECIFICATION)?.is_some() || one(p, KEY_COMPRESSION_TYPE)?.is_some() {
                    return Err(fail(
                        REASON_FEATURE_NOT_SUPPORTED,
                        "keys are returned unwrapped, inside the mutually authenticated TLS session",
                    ));
                }
                let (key, material) = match self.exec(who, Operation::KeyExport { label: label.clone() })? {
                    Reply::KeyExported { key, material } => (key, material),
                    _ => return Err(fail(REASON_GENERAL_FAILURE, "the engine answered a get with something else")),
                };
                let bytes = Zeroizing::new(
                    base64_decode(material.expose()).map_err(|_| fail(REASON_GENERAL_FAILURE, "bad key material"))?,
                );
                if let Some(kind) = key.attributes.secret {
                    let block = Item::structure(
                        KEY_BLOCK,
                        vec![
                            enumeration(KEY_FORMAT_TYPE, FORMAT_OPAQUE),
                            Item::structure(KEY_VALUE, vec![Item::new(KEY_MATERIAL, Value::Bytes(bytes))]),
                        ],
                    );
                    return Ok(Done::Ok(vec![
                        enumeration(OBJECT_TYPE, OBJECT_SECRET_DATA),
                        text(UNIQUE_IDENTIFIER, key.label.as_str()),
                        Item::structure(SECRET_DATA, vec![enumeration(SECRET_DATA_TYPE, kind), block]),
                    ]));
                }
                let material_item = if format == FORMAT_RAW {
                    Item::new(KEY_MATERIAL, Value::Bytes(bytes))
                } else {
                    Item::structure(KEY_MATERIAL, vec![Item::new(KEY, Value::Bytes(bytes))])
                };
                let block = Item::structure(
                    KEY_BLOCK,
                    vec![
                        enumeration(KEY_FORMAT_TYPE, format),
                        Item::structure(KEY_VALUE, vec![material_item]),
                        enumeration(CRYPTOGRAPHIC_ALGORITHM, ALGORITHM_AES),
                        integer(CRYPTOGRAPHIC_LENGTH, i32::from(key.attributes.length_bits())),
                    ],
                );
                Ok(Done::Ok(vec![
                    enumeration(OBJECT_TYPE, OBJECT_SYMMETRIC_KEY),
                    text(UNIQUE_IDENTIFIER, key.label.as_str()),
                    Item::structure(SYMMETRIC_KEY, vec![block]),
                ]))
            }
            OP_GET_ATTRIBUTES => {
                only(p, &[UNIQUE_IDENTIFIER, ATTRIBUTE_NAME, ATTRIBUTE_REFERENCE], "Get Attributes")?;
                let label = self.uid(p, last)?;
                let key = self.key(who, &label)?;
                let mut wanted: Vec<String> = Vec::new();
                for i in p {
                    match i.tag {
                        ATTRIBUTE_NAME => wanted.push(as_text(i, "an attribute name")?.to_string()),
                        ATTRIBUTE_REFERENCE => wanted.push(referenced(i)?.to_string()),
                        _ => {}
                    }
                }
                let attrs: Vec<(String, Item)> =
                    attributes_of(&key).into_iter().filter(|(n, _)| wanted.is_empty() || wanted.contains(n)).collect();
                let mut out = vec![text(UNIQUE_IDENTIFIER, key.label.as_str())];
                out.extend(attributes_out(version, &attrs));
                Ok(Done::Ok(out))
            }
            OP_GET_ATTRIBUTE_LIST => {
                only(p, &[UNIQUE_IDENTIFIER], "Get Attribute List")?;
                let label = self.uid(p, last)?;
                let key = self.key(who, &label)?;
                let mut names: Vec<String> = attributes_of(&key).into_iter().map(|(n, _)| n).collect();
                names.dedup();
                let mut out = vec![text(UNIQUE_IDENTIFIER, key.label.as_str())];
                if version.0 >= 2 {
                    out.extend(
                        names.iter().filter_map(|n| attribute_tag(n)).map(|t| enumeration(ATTRIBUTE_REFERENCE, t)),
                    );
                } else {
                    out.extend(names.into_iter().map(|n| text(ATTRIBUTE_NAME, n)));
                }
                Ok(Done::Ok(out))
            }
            OP_ADD_ATTRIBUTE | OP_MODIFY_ATTRIBUTE | OP_DELETE_ATTRIBUTE | OP_SET_ATTRIBUTE
                if operation_in(b.operation, version) =>
            {
                self.change_attribute(who, b.operation, p, last)
            }
            OP_ACTIVATE => {
                only(p, &[UNIQUE_IDENTIFIER], "Activate")?;
                let label = self.uid(p, last)?;
                let op =
                    Operation::KeyLifecycle { target: label.to_string(), action: KeyAction::Activate, dry_run: false };
                self.simple(who, op, &label)
            }
            OP_REVOKE => {
                only(p, &[UNIQUE_IDENTIFIER, REVOCATION_REASON, COMPROMISE_OCCURRENCE_DATE], "Revoke")?;
                let label = self.uid(p, last)?;
                let r = need(p, REVOCATION_REASON, "revocation reason")?;
                only(r.items(), &[REVOCATION_REASON_CODE, REVOCATION_MESSAGE], "the revocation reason")?;
                let code =
                    as_enum(need(r.items(), REVOCATION_REASON_CODE, "revocation reason code")?, "the reason code")?;
                let reason = revocation_reason(code)
                    .ok_or_else(|| invalid(format!("revocation reason code {code} is not KMIP's")))?;
                let message =
                    one(r.items(), REVOCATION_MESSAGE)?.map(|m| as_text(m, "the revocation message")).transpose()?;
                let compromised_at = one(p, COMPROMISE_OCCURRENCE_DATE)?
                    .map(|d| as_date(d, "the compromise occurrence date"))
                    .transpose()?;
                let op = Operation::KeyRevoke {
                    label: label.clone(),
                    reason: reason.to_string(),
                    message: message.map(str::to_string),
                    compromised_at,
                };
                self.simple(who, op, &label)
            }
            OP_DESTROY => {
                only(p, &[UNIQUE_IDENTIFIER], "Destroy")?;
                let label = self.uid(p, last)?;
                let op = Operation::KeyDestroy { label: label.clone(), crypto_erase: false, wait: None };
                match self.exec(who, op)? {
                    Reply::Destroy(d) if d.state == KeyState::Destroyed => {
                        Ok(Done::Ok(vec![text(UNIQUE_IDENTIFIER, label.as_str())]))
                    }
                    Reply::Destroy(d) => Ok(Done::Pending(
                        format!("destroy:{label}"),
                        format!("key {label} is scheduled for destruction at {} (the vault's waiting period); `custos key cancel-destroy` stops it", d.destroy_at),
                    )),
                    Reply::RequestCreated { request, .. } => Ok(pending_request(request.id)),
                    _ => Err(fail(REASON_GENERAL_FAILURE, "the engine answered a destroy with something else")),
                }
            }
            OP_LOCATE => self.locate(who, version, p),
            OP_POLL => self.poll(who, p),
            OP_CHECK => {
                only(p, &[UNIQUE_IDENTIFIER, USAGE_LIMITS_COUNT, CRYPTOGRAPHIC_USAGE_MASK, LEASE_TIME], "Check")?;
                let label = self.uid(p, last)?;
                let (key, destroy_after) = match self.exec(who, Operation::KeyShow { label: label.clone() })? {
                    Reply::KeyDetail { key, destroy_after, .. } => (key, destroy_after),
                    _ => {
                        return Err(fail(REASON_GENERAL_FAILURE, "the engine answered a key show with something else"))
                    }
                };
                let mask = one(p, CRYPTOGRAPHIC_USAGE_MASK)?.map(|m| as_int(m, "the usage mask")).transpose()?;
                // Custos sets no usage limits and grants no leases: those
                // checks pass as asked.
                let mut out = vec![text(UNIQUE_IDENTIFIER, label.as_str())];
                if let Some(m) = mask {
                    let m = m as u32;
                    if let Some(own) = key.attributes.usage_mask.filter(|own| m & !own != 0) {
                        return Err(fail(
                            0x29, // Incompatible Cryptographic Usage Mask
                            format!("the key's usage mask is {own:#x}; {m:#x} asks for more"),
                        ));
                    }
                    let uses = [(0x4, custos_core::model::KeyUse::Encrypt), (0x8, custos_core::model::KeyUse::Decrypt)];
                    for (bit, usage) in uses {
                        if m & bit == 0 {
                            continue;
                        }
                        if let Some(at) = destroy_after {
                            return Err(fail(0x43, format!("key {label} is scheduled for destruction at {at}")));
                        }
                        if let Err(e) = key.state.permits(usage) {
                            return Err(fail(0x43, format!("key {label}: {e}")));
                        }
                    }
                    out.push(integer(CRYPTOGRAPHIC_USAGE_MASK, m as i32));
                }
                out.extend(one(p, USAGE_LIMITS_COUNT)?.cloned());
                out.extend(one(p, LEASE_TIME)?.cloned());
                Ok(Done::Ok(out))
            }
            OP_REGISTER => {
                only(p, &[OBJECT_TYPE, TEMPLATE_ATTRIBUTE, ATTRIBUTES, SYMMETRIC_KEY, SECRET_DATA], "Register")?;
                let (secret, material) = registered(p)?;
                let mut a = KeyAttributes { secret, ..Default::default() };
                let mut activate = false;
                for (name, v) in attributes_in(p)? {
                    match name.as_str() {
                        "Activation Date" => {
                            if as_date(&value_item(&v), "the activation date")? > Timestamp::now() {
                                return Err(fail(
                                    REASON_FEATURE_NOT_SUPPORTED,
                                    "an activation date in the future: register the key, then Activate it when it is due",
                                ));
                            }
                            activate = true;
                        }
                        // The key block says these; attributes that
                        // repeat them are checked against it.
                        "Cryptographic Algorithm" if secret.is_none() => apply(&mut a, &name, &v, true)?,
                        "Cryptographic Length" if secret.is_none() => {
                            if as_int(&value_item(&v), "the length")? as usize != material.len() * 8 {
                                return Err(invalid("Cryptographic Length is not the material's length"));
                            }
                        }
                        _ => apply(&mut a, &name, &v, true)?,
                    }
                }
                let bits = material.len() * 8;
                if secret.is_none() && ![128, 192, 256].contains(&bits) {
                    return Err(invalid(format!("an AES key of {bits} bits: give 128, 192 or 256")));
                }
                if secret.is_some() && !(1..=32).contains(&material.len()) {
                    return Err(invalid(format!("secret data of {} bytes: Custos keeps 1 to 32", material.len())));
                }
                a.bits = (bits != 256).then_some(bits as u16);
                let op = Operation::KeyImport {
                    app: self.settings.app_for(who),
                    material: custos_ops::SecretText::new(base64_encode(&material)),
                    attributes: a,
                    activate,
                };
                match self.exec(who, op)? {
                    Reply::Key(k, _) => {
                        *last = Some(k.label.to_string());
                        Ok(Done::Ok(vec![text(UNIQUE_IDENTIFIER, k.label.as_str())]))
                    }
                    _ => Err(fail(REASON_GENERAL_FAILURE, "the engine answered a register with something else")),
                }
            }
            OP_ENCRYPT => {
                // Encrypt's fields are Decrypt's but the tag.
                only(p, &CIPHER_FIELDS[..CIPHER_FIELDS.len() - 1], "Encrypt")?;
                gcm_version(version)?;
                let label = self.uid(p, last)?;
                let (iv, aad) = cipher_request(p)?;
                let data = bytes_of(p, DATA, "data")?;
                let op = Operation::KeyGcmEncrypt {
                    label: label.clone(),
                    plaintext: custos_ops::SecretText::new(base64_encode(data)),
                    iv: iv.map(|v| base64_encode(&v)),
                    aad: (!aad.is_empty()).then(|| base64_encode(&aad)),
                };
                let Reply::KeyGcm { data, iv: Some(iv_out), tag: Some(tag), .. } = self.exec(who, op)? else {
                    return Err(fail(REASON_GENERAL_FAILURE, "the engine answered an encrypt with something else"));
                };
                let decoded = |s: &str| base64_decode(s).map_err(|_| fail(REASON_GENERAL_FAILURE, "bad engine answer"));
                let mut out = vec![
                    text(UNIQUE_IDENTIFIER, label.as_str()),
                    Item::new(DATA, Value::Bytes(Zeroizing::new(decoded(data.expose())?))),
                ];
                if iv.is_none() {
                    out.push(Item::new(IV_COUNTER_NONCE, Value::Bytes(Zeroizing::new(decoded(&iv_out)?))));
                }
                out.push(Item::new(AUTHENTICATED_ENCRYPTION_TAG, Value::Bytes(Zeroizing::new(decoded(&tag)?))));
                Ok(Done::Ok(out))
            }
            OP_DECRYPT => {
                only(p, &CIPHER_FIELDS, "Decrypt")?;
                gcm_version(version)?;
                let label = self.uid(p, last)?;
                let (iv, aad) = cipher_request(p)?;
                let iv =
                    iv.ok_or_else(|| fail(REASON_MISSING_DATA, "Decrypt needs the IV the data was sealed with"))?;
                let data = bytes_of(p, DATA, "data")?;
                let tag = bytes_of(p, AUTHENTICATED_ENCRYPTION_TAG, "authenticated encryption tag")?;
                let op = Operation::KeyGcmDecrypt {
                    label: label.clone(),
                    ciphertext: base64_encode(data),
                    iv: base64_encode(&iv),
                    tag: base64_encode(tag),
                    aad: (!aad.is_empty()).then(|| base64_encode(&aad)),
                };
                let Reply::KeyGcm { data, .. } = self.exec(who, op)? else {
                    return Err(fail(REASON_GENERAL_FAILURE, "the engine answered a decrypt with something else"));
                };
                let plain = Zeroizing::new(
                    base64_decode(data.expose()).map_err(|_| fail(REASON_GENERAL_FAILURE, "bad engine answer"))?,
                );
                Ok(Done::Ok(vec![text(UNIQUE_IDENTIFIER, label.as_str()), Item::new(DATA, Value::Bytes(plain))]))
            }
            op => Err(fail(
                REASON_OPERATION_NOT_SUPPORTED,
                format!("operation {op:#x} is not supported; Query lists those that are"),
            )),
        }
    }

    /// An operation answered by the key's identifier, or pending.
    fn simple(&self, who: &Caller, op: Operation, label: &KeyLabel) -> R<Done> {
        match self.exec(who, op)? {
            Reply::RequestCreated { request, .. } => Ok(pending_request(request.id)),
            _ => Ok(Done::Ok(vec![text(UNIQUE_IDENTIFIER, label.as_str())])),
        }
    }

    fn change_attribute(&self, who: &Caller, operation: u32, p: &[Item], last: &Option<String>) -> R<Done> {
        let label = self.uid(p, last)?;
        let key = self.key(who, &label)?;
        let mut a = key.attributes.clone();
        // 1.x: one Attribute (Add, Modify), or an Attribute Name and
        // Index (Delete). 2.0: the attribute as its own item in a New
        // Attribute (Add, Modify, Set), the instance meant in a Current
        // Attribute (Modify, Delete), or an Attribute Reference (Delete).
        let index_of = |items: &[Item]| -> R<i32> {
            Ok(one(items, ATTRIBUTE_INDEX)?.map(|i| as_int(i, "the attribute index")).transpose()?.unwrap_or(0))
        };
        let v2 = p.iter().any(|i| [NEW_ATTRIBUTE, CURRENT_ATTRIBUTE, ATTRIBUTE_REFERENCE].contains(&i.tag));
        if operation == OP_SET_ATTRIBUTE && !v2 {
            return Err(fail(REASON_MISSING_DATA, "Set Attribute takes the attribute in a New Attribute"));
        }
        let (name, value, index) = if v2 {
            only(p, &[UNIQUE_IDENTIFIER, NEW_ATTRIBUTE, CURRENT_ATTRIBUTE, ATTRIBUTE_REFERENCE], "the request")?;
            let new = one(p, NEW_ATTRIBUTE)?.map(|n| held_attribute(n, "a New Attribute")).transpose()?;
            let current = one(p, CURRENT_ATTRIBUTE)?.map(|c| held_attribute(c, "a Current Attribute")).transpose()?;
            let at = |(n, v): &(String, Value)| instance_of(&key, n, v);
            match (operation, new, current) {
                (OP_DELETE_ATTRIBUTE, Some(_), _) => {
                    return Err(invalid(
                        "Delete Attribute takes a Current Attribute or an Attribute Reference, not a New Attribute",
                    ))
                }
                (OP_DELETE_ATTRIBUTE, None, Some(c)) => {
                    let i = at(&c)?;
                    (c.0, None, i)
                }
                (OP_DELETE_ATTRIBUTE, None, None) => {
                    let r = need(p, ATTRIBUTE_REFERENCE, "attribute reference")?;
                    (referenced(r)?.to_string(), None, 0)
                }
                (_, None, _) => return Err(fail(REASON_MISSING_DATA, "give the attribute in a New Attribute")),
                (_, Some(_), Some(_)) if operation != OP_MODIFY_ATTRIBUTE => {
                    return Err(invalid(
                        "a Current Attribute goes with Modify or Delete Attribute, not with Add or Set Attribute",
                    ))
                }
                (_, Some(n), Some(c)) => {
                    if n.0 != c.0 {
                        return Err(invalid(format!(
                            "the Current Attribute is a {}, the New Attribute a {}",
                            c.0, n.0
                        )));
                    }
                    let i = at(&c)?;
                    (n.0, Some(n.1), i)
                }
                (_, Some(n), None) => {
                    if operation == OP_MODIFY_ATTRIBUTE && n.0 == "Name" {
                        return Err(fail(
                            REASON_MISSING_DATA,
                            "a key has several Names: give the one to modify in a Current Attribute",
                        ));
                    }
                    (n.0, Some(n.1), 0)
                }
            }
        } else {
            match one(p, ATTRIBUTE)? {
                Some(attr) => {
                    let given = attributes_in(std::slice::from_ref(attr))?;
                    let (name, value) = given.into_iter().next().expect("one attribute");
                    (name, Some(value), index_of(attr.items())?)
                }
                None if operation == OP_DELETE_ATTRIBUTE => {
                    let name = as_text(need(p, ATTRIBUTE_NAME, "attribute name")?, "the attribute name")?.to_string();
                    (name, None, index_of(p)?)
                }
                None => return Err(fail(REASON_MISSING_DATA, "name one attribute (a KMIP 1.x Attribute)")),
            }
        };
        let (name, value) = (&name, value.as_ref());
        let value = || value.ok_or_else(|| fail(REASON_MISSING_DATA, "the attribute has no value"));
        if index < 0 {
            return Err(invalid("an attribute index is 0 or more"));
        }
        let index = index as usize;
        match operation {
            OP_ADD_ATTRIBUTE => {
                let single = name != "Name" && !name.starts_with("x-") && !name.starts_with("y-");
                if single && attributes_of(&key).iter().any(|(n, _)| n == name) {
                    return Err(fail(
                        REASON_ATTRIBUTE_SINGLE_VALUED,
                        format!("{name} already has a value: use Modify Attribute"),
                    ));
                }
                if (name.starts_with("x-") || name.starts_with("y-")) && a.custom.contains_key(name) {
                    return Err(fail(
                        REASON_ATTRIBUTE_SINGLE_VALUED,
                        format!("{name} already has a value: use Modify Attribute"),
                    ));
                }
                apply(&mut a, name, value()?, false)?;
            }
            OP_SET_ATTRIBUTE => {
                if name == "Name" {
                    return Err(fail(
                        REASON_MULTI_VALUED_ATTRIBUTE,
                        "a key may have several Names: use Add or Modify Attribute",
                    ));
                }
                apply(&mut a, name, value()?, false)?;
            }
            OP_MODIFY_ATTRIBUTE => {
                if name == "Name" {
                    let n = name_of(value()?)?;
                    let slot = a
                        .names
                        .get_mut(index)
                        .ok_or_else(|| fail(0x20, format!("the key has no Name at index {index}")))?;
                    *slot = n;
                } else {
                    let exists = match name.as_str() {
                        "Cryptographic Usage Mask" => a.usage_mask.is_some(),
                        "Contact Information" => a.contact.is_some(),
                        n => a.custom.contains_key(n),
                    };
                    if !exists {
                        return Err(fail(
                            REASON_ATTRIBUTE_NOT_FOUND,
                            format!("the key has no {name} to modify: use Add Attribute"),
                        ));
                    }
                    apply(&mut a, name, value()?, false)?;
                }
            }
            _ => match name.as_str() {
                "Name" if index < a.names.len() => {
                    a.names.remove(index);
                }
                "Cryptographic Usage Mask" if a.usage_mask.is_some() => a.usage_mask = None,
                "Contact Information" if a.contact.is_some() => a.contact = None,
                n if a.custom.remove(n).is_some() => {}
                _ => return Err(fail(REASON_ATTRIBUTE_NOT_FOUND, format!("the key has no {name} at index {index}"))),
            },
        }
        let op = Operation::KeySetAttributes { label: label.clone(), attributes: a };
        let rec = match self.exec(who, op)? {
            Reply::Key(k, _) => k,
            _ => return Err(fail(REASON_GENERAL_FAILURE, "the engine answered with something else")),
        };
        if v2 {
            // 2.0 answers with the identifier alone.
            return Ok(Done::Ok(vec![text(UNIQUE_IDENTIFIER, label.as_str())]));
        }
        // The attribute as it now stands (the instance modified, or the
        // one added: the last of its name), or as it was (Delete: 1.x
        // answers with the attribute deleted).
        let (shown, at) = if operation == OP_DELETE_ATTRIBUTE {
            (&key, index)
        } else {
            let n = attributes_of(&rec).iter().filter(|(n, _)| n == name).count();
            (&rec, if name == "Name" && operation == OP_MODIFY_ATTRIBUTE { index } else { n.saturating_sub(1) })
        };
        let mut out = vec![text(UNIQUE_IDENTIFIER, label.as_str())];
        let same: Vec<Item> = attributes_of(shown).into_iter().filter(|(n, _)| n == name).map(|(_, i)| i).collect();
        if let Some(i) = same.get(at) {
            out.push(attribute_v1(name, at, i));
        }
        Ok(Done::Ok(out))
    }

    /// Poll: how an operation answered Operation Pending stands, by the
    /// correlation value it was given. A dual-control request (only its
    /// requester may poll it) or a destruction's waiting period; once
    /// carried out, the operation's own answer.
    fn poll(&self, who: &Caller, p: &[Item]) -> R<Done> {
        only(p, &[ASYNCHRONOUS_CORRELATION_VALUE], "Poll")?;
        let v = need(p, ASYNCHRONOUS_CORRELATION_VALUE, "asynchronous correlation value")?;
        let unknown = || fail(REASON_ITEM_NOT_FOUND, "no operation of this server waits under that correlation value");
        let Value::Bytes(b) = &v.value else {
            return Err(invalid("an asynchronous correlation value is a byte string"));
        };
        let said = std::str::from_utf8(b).map_err(|_| unknown())?;
        if let Some(label) = said.strip_prefix("destroy:") {
            let label = KeyLabel::new(label).map_err(|_| unknown())?;
            return self.poll_destroy(who, &label);
        }
        let id: u64 = said.strip_prefix("request:").and_then(|n| n.parse().ok()).ok_or_else(unknown)?;
        let req = match self.exec(who, Operation::RequestShow { id }) {
            Ok(Reply::Request(r)) => r,
            Ok(_) => {
                return Err(fail(REASON_GENERAL_FAILURE, "the engine answered a request show with something else"))
            }
            Err(f) if f.reason == REASON_ITEM_NOT_FOUND => return Err(unknown()),
            Err(f) => return Err(f),
        };
        if req.requested_by != who.name() {
            return Err(unknown());
        }
        let label = req.operation.get("label").and_then(|l| l.as_str()).and_then(|l| KeyLabel::new(l).ok());
        match req.state.as_str() {
            "pending" | "approved" => Ok(pending_request(id)),
            "executed" => match label {
                // Carried out, it may wait for the vault's waiting period.
                Some(l) if req.action == "key-destroy" => self.poll_destroy(who, &l),
                Some(l) => Ok(Done::Ok(vec![text(UNIQUE_IDENTIFIER, l.as_str())])),
                None => Ok(Done::Ok(Vec::new())),
            },
            "denied" => Err(fail(
                REASON_PERMISSION_DENIED,
                format!("request {id} was denied by {}", req.decided_by.as_deref().unwrap_or("a second principal")),
            )),
            failed if failed.starts_with("failed") => {
                Err(fail(REASON_GENERAL_FAILURE, format!("request {id} was approved and then {failed}")))
            }
            other => {
                Err(fail(REASON_ILLEGAL_OPERATION, format!("request {id} is {other}: it will not be carried out")))
            }
        }
    }

    /// How a key's destruction stands: done, waiting, or called off.
    fn poll_destroy(&self, who: &Caller, label: &KeyLabel) -> R<Done> {
        let (key, destroy_after) = match self.exec(who, Operation::KeyShow { label: label.clone() })? {
            Reply::KeyDetail { key, destroy_after, .. } => (key, destroy_after),
            _ => return Err(fail(REASON_GENERAL_FAILURE, "the engine answered a key show with something else")),
        };
        match (key.state, destroy_after) {
            (KeyState::Destroyed, _) => Ok(Done::Ok(vec![text(UNIQUE_IDENTIFIER, label.as_str())])),
            (_, Some(at)) => Ok(Done::Pending(
                format!("destroy:{label}"),
                format!("key {label} is scheduled for destruction at {at}"),
            )),
            _ => Err(fail(
                REASON_ILLEGAL_OPERATION,
                format!("the destruction of key {label} was called off (`custos key cancel-destroy`)"),
            )),
        }
    }

    fn locate(&self, who: &Caller, version: (i32, i32), p: &[Item]) -> R<Done> {
        only(
            p,
            &[MAXIMUM_ITEMS, OFFSET_ITEMS, STORAGE_STATUS_MASK, OBJECT_GROUP_MEMBER, ATTRIBUTE, ATTRIBUTES],
            "Locate",
        )?;
        let max = one(p, MAXIMUM_ITEMS)?.map(|i| as_int(i, "maximum items")).transpose()?;
        let offset = one(p, OFFSET_ITEMS)?.map(|i| as_int(i, "offset items")).transpose()?.unwrap_or(0);
        if max.is_some_and(|m| m < 0) || offset < 0 {
            return Err(invalid("maximum items and offset items are 0 or more"));
        }
        let filters = attributes_in(p)?;
        let keys = match self.exec(who, Operation::KeyList { pattern: None, limit: None, after: None })? {
            Reply::Keys(k, _) => k,
            _ => return Err(fail(REASON_GENERAL_FAILURE, "the engine answered a key list with something else")),
        };
        let mut found = Vec::new();
        for k in &keys {
            let mut all = true;
            for (name, v) in &filters {
                let item = value_item(v);
                let ok = match name.as_str() {
                    "Name" => k.attributes.names.contains(&name_of(v)?),
                    "Object Type" => as_enum(&item, "the object type")? == object_type(k),
                    "State" => as_enum(&item, "the state")? == kmip_state(k),
                    // Secret data has neither.
                    "Cryptographic Algorithm" => {
                        as_enum(&item, "the algorithm")? == ALGORITHM_AES && k.attributes.secret.is_none()
                    }
                    "Cryptographic Length" => {
                        as_int(&item, "the length")? == i32::from(k.attributes.length_bits())
                            && k.attributes.secret.is_none()
                    }
                    "Unique Identifier" => as_text(&item, "the identifier")? == k.label.as_str(),
                    "Contact Information" => k.attributes.contact.as_deref() == Some(as_text(&item, "the contact")?),
                    n if n.starts_with("x-") || n.starts_with("y-") => {
                        k.attributes.custom.get(n).map(String::as_str) == Some(as_text(&item, "a custom value")?)
                    }
                    other => return Err(invalid(format!("Locate cannot search by {other}"))),
                };
                if !ok {
                    all = false;
                    break;
                }
            }
            if all {
                found.push(k.label.to_string());
            }
        }
        let total = found.len();
        let page: Vec<Item> = found
            .into_iter()
            .skip(offset as usize)
            .take(max.map_or(usize::MAX, |m| m as usize))
            .map(|l| text(UNIQUE_IDENTIFIER, l))
            .collect();
        let mut out = Vec::new();
        if version >= (1, 3) {
            out.push(integer(LOCATED_ITEMS, total as i32));
        }
        out.extend(page);
        Ok(Done::Ok(out))
    }
}

/// The one attribute a 2.0 New or Current Attribute holds, named by its
/// tag.
fn held_attribute(s: &Item, what: &str) -> R<(String, Value)> {
    let [item] = s.items() else { return Err(invalid(format!("{what} holds exactly one attribute"))) };
    let name = attribute_name(item.tag)
        .ok_or_else(|| invalid(format!("attribute {} is not one this server keeps", tag_name(item.tag))))?;
    Ok((name.to_string(), item.value.clone()))
}

/// The attribute a 2.0 Attribute Reference names: by its tag, or by its
/// name with no vendor (this server keeps no vendor attributes).
fn referenced(r: &Item) -> R<&'static str> {
    let kept = |n: Option<&'static str>, shown: String| {
        n.ok_or_else(|| invalid(format!("attribute {shown} is not one this server keeps")))
    };
    match &r.value {
        Value::Enumeration(t) => kept(attribute_name(*t), tag_name(*t)),
        Value::Structure(s) => {
            only(s, &[VENDOR_IDENTIFICATION, ATTRIBUTE_NAME], "an attribute reference")?;
            let vendor = one(s, VENDOR_IDENTIFICATION)?.map(|v| as_text(v, "a vendor identification")).transpose()?;
            let name = as_text(need(s, ATTRIBUTE_NAME, "attribute name")?, "an attribute name")?;
            match vendor {
                Some(v) if !v.is_empty() => {
                    Err(invalid(format!("attribute {name} of vendor {v:?} is not one this server keeps")))
                }
                _ => kept(attribute_tag(name).and_then(attribute_name), format!("{name:?}")),
            }
        }
        _ => Err(invalid("an Attribute Reference is an attribute's tag or a structure that names it")),
    }
}

/// Which instance of the key's attribute `name` has `value` (a Name by its
/// text), counting from 0.
fn instance_of(key: &KeyRecord, name: &str, value: &Value) -> R<i32> {
    let wanted = if name == "Name" { Some(name_of(value)?) } else { None };
    let same = attributes_of(key).into_iter().filter(|(n, _)| n == name);
    for (i, (_, item)) in same.enumerate() {
        let hit = match &wanted {
            Some(w) => name_of(&item.value).is_ok_and(|n| &n == w),
            None => item.value == *value,
        };
        if hit {
            return Ok(i as i32);
        }
    }
    Err(fail(REASON_ATTRIBUTE_NOT_FOUND, format!("the key has no {name} with that value")))
}

fn pending_request(id: u64) -> Done {
    Done::Pending(
        format!("request:{id}"),
        format!("dual control: request {id} waits for a second principal's approval (`custos request approve {id}`)"),
    )
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn base64_decode(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s)
}
