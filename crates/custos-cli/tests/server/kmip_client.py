"""PyKMIP's ProxyKmipClient against a Custos server, for tests/server/kmip.rs.

Each phase does what the Rust test asks and prints what it saw as one JSON
object; the Rust test decides what is right. Run as
`python kmip_client.py PHASE` with KMIP_PORT, KMIP_CA and KMIP_CERTS (a
JSON map of principal to [cert, key]) in the environment.
"""
import json
import os
import socket
import ssl
import struct
import sys
import time

from kmip.core import enums
from kmip.core.factories import attributes as attribute_factory
from kmip.pie import client as pie_client
from kmip.core import attributes as core_attributes
from kmip.core import exceptions as core_exceptions
from kmip.core import objects as cobjects
from kmip.core.messages import payloads
from kmip.pie import exceptions as pie_exceptions
from kmip.pie import objects

PORT = int(os.environ["KMIP_PORT"])
CA = os.environ["KMIP_CA"]
CERTS = json.loads(os.environ["KMIP_CERTS"])
STATE = json.loads(os.environ.get("KMIP_STATE", "{}"))
factory = attribute_factory.AttributeFactory()
out = {}


def client(who, version=None):
    cert, key = CERTS[who]
    return pie_client.ProxyKmipClient(
        hostname="127.0.0.1", port=PORT, cert=cert, key=key, ca=CA,
        config_file=os.devnull, kmip_version=version,
    )


def failure(f):
    """What a refused operation says: (status, reason, message)."""
    try:
        f()
    except pie_exceptions.KmipOperationFailure as e:
        return {"status": e.status.name, "reason": e.reason.name if e.reason else None, "message": e.message}
    except core_exceptions.OperationFailure as e:
        return {"status": e.status.name, "reason": e.reason.name if e.reason else None, "message": str(e)}
    except Exception as e:  # a connection refused in the handshake, say
        return {"error": type(e).__name__, "message": str(e)}
    return {"status": "SUCCESS"}


def attrs_of(c, uid, names=None):
    _, attrs = c.get_attributes(uid, names)
    seen = {}
    for a in attrs:
        name = a.attribute_name.value
        v = a.attribute_value
        if name == "Name":
            value = v.name_value.value
        elif hasattr(v, "value") and hasattr(v.value, "name"):
            value = v.value.name
        elif hasattr(v, "value"):
            value = v.value
        else:
            value = str(v)
        seen.setdefault(name, []).append(value)
    return seen


def raw_exchange(who, payload, close_after_send=False):
    """Send bytes over TLS as `who` and return what comes back."""
    cert, key = CERTS[who]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(CA)
    ctx.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", PORT), timeout=20) as raw:
        with ctx.wrap_socket(raw) as s:
            s.sendall(payload)
            if close_after_send:
                # Half-close the TCP connection under the TLS session (a
                # duplicate descriptor: the TLS object stays usable).
                dup = socket.fromfd(s.fileno(), socket.AF_INET, socket.SOCK_STREAM)
                dup.shutdown(socket.SHUT_WR)
                dup.close()
            got = b""
            try:
                # Until the server closes, or one whole message is in.
                while len(got) < 8 or len(got) < 8 + int.from_bytes(got[4:8], "big"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            except (ssl.SSLError, OSError):
                pass
            return got


def ttlv(tag, kind, value):
    """One TTLV item: a structure (1, a list of items), an enumeration (5)
    or integer (2), a text string (7) or a byte string (8)."""
    if kind == 1:
        body = b"".join(value)
    elif kind in (2, 5):
        body = struct.pack(">i", value)
    elif kind == 8:
        body = value
    else:
        body = value.encode()
    pad = b"\x00" * (-len(body) % 8)
    return struct.pack(">I", tag)[1:] + bytes([kind]) + struct.pack(">I", len(body)) + body + pad


def request(operation, payload, version=(2, 0)):
    """A request message of one batch item (KMIP 2.0 unless told)."""
    header = ttlv(0x420077, 1, [
        ttlv(0x420069, 1, [ttlv(0x42006A, 2, version[0]), ttlv(0x42006B, 2, version[1])]),
        ttlv(0x42000D, 2, 1),
    ])
    item = ttlv(0x42000F, 1, [ttlv(0x42005C, 5, operation), ttlv(0x420079, 1, payload)])
    return ttlv(0x420078, 1, [header, item])


def ttlv_result(response):
    """The Result Status (and the Result Reason, Asynchronous Correlation
    Value and Unique Identifier, where there are) of a raw response, read
    by walking its items."""
    found = {}

    def walk(b):
        i = 0
        while i + 8 <= len(b):
            tag = int.from_bytes(b[i:i + 3], "big")
            kind, n = b[i + 3], int.from_bytes(b[i + 4:i + 8], "big")
            body = b[i + 8:i + 8 + n]
            if kind == 1:
                walk(body)
            elif tag == 0x42007F:
                found["status"] = int.from_bytes(body[:4], "big")
            elif tag == 0x42007E:
                found["reason"] = int.from_bytes(body[:4], "big")
            elif tag == 0x420006:
                found["correlation"] = body.decode(errors="replace")
            elif tag == 0x420094:
                found["uid"] = body.decode(errors="replace")
            i += 8 + n + (-n % 8)
    walk(response)
    return found


def result_of(response):
    """The first batch item's result status, reason and message, read
    from a raw response with PyKMIP's own decoder."""
    from kmip.core.messages import messages
    from kmip.core import utils
    m = messages.ResponseMessage()
    m.read(utils.BytearrayStream(response))
    item = m.batch_items[0]
    return {
        "status": item.result_status.value.name,
        "reason": item.result_reason.value.name if item.result_reason else None,
        "message": item.result_message.value if item.result_message else None,
    }


phase = sys.argv[1]
if phase == "one":
    with client("kadmin") as a:
        out["versions"] = [f"{v.major}.{v.minor}" for v in a.proxy.discover_versions().protocol_versions]
        q = a.proxy.query(query_functions=[enums.QueryFunction.QUERY_OPERATIONS, enums.QueryFunction.QUERY_OBJECTS])
        out["operations"] = sorted(enums.Operation(getattr(o, "value", o)).name for o in q.operations)
        mask = [enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT]
        uid = a.create(enums.CryptographicAlgorithm.AES, 256, name="array1-volume-key", cryptographic_usage_mask=mask)
        uid128 = a.create(enums.CryptographicAlgorithm.AES, 128, name="array1-journal-key")
        retired = a.create(enums.CryptographicAlgorithm.AES, 256, name="retired")
        leaked = a.create(enums.CryptographicAlgorithm.AES, 256, name="leaked")
        doomed = a.create(enums.CryptographicAlgorithm.AES, 256, name="doomed")
        out["uids"] = {"main": uid, "short": uid128, "retired": retired, "leaked": leaked, "doomed": doomed}
        out["duplicate_name"] = failure(lambda: a.create(enums.CryptographicAlgorithm.AES, 256, name="retired"))
        out["bad_length"] = failure(lambda: a.create(enums.CryptographicAlgorithm.AES, 100))
        out["before_activate"] = attrs_of(a, uid)["State"]
        for u in (uid, uid128, retired, leaked, doomed):
            a.activate(u)
        out["attributes"] = attrs_of(a, uid)
        out["some_attributes"] = attrs_of(a, uid, ["State", "Cryptographic Length"])
        out["attribute_list"] = sorted(a.get_attribute_list(uid))
        name = factory.create_attribute(enums.AttributeType.NAME, "array1-volume-key")
        out["located_by_name"] = a.locate(attributes=[name])
        a.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, retired, revocation_message="array retired")
        a.revoke(enums.RevocationReasonCode.KEY_COMPROMISE, leaked, revocation_message="laptop stolen")
        # By name: PyKMIP cannot read a Revocation Reason attribute, which
        # a revoked key's full list holds.
        out["retired_state"] = attrs_of(a, retired, ["State"])["State"]
        out["leaked_state"] = attrs_of(a, leaked, ["State", "Compromise Date"])
        active = factory.create_attribute(enums.AttributeType.STATE, enums.State.ACTIVE)
        out["located_active"] = sorted(a.locate(attributes=[active]))
        compromised = factory.create_attribute(enums.AttributeType.STATE, enums.State.COMPROMISED)
        out["located_compromised"] = a.locate(attributes=[compromised])
        out["located_page"] = a.locate(maximum_items=2, attributes=[active])
        out["destroy_active"] = failure(lambda: a.destroy(uid))
        # Check: an active key may encrypt; a deactivated one may not.
        out["check_active"] = a.check(uid, cryptographic_usage_mask=[enums.CryptographicUsageMask.ENCRYPT])
        # (PyKMIP's check() cannot report a refusal: it reads the absent
        # payload. The payload is sent as it is.)
        def check(u, mask):
            a.proxy.send_request_payload(enums.Operation.CHECK, payloads.CheckRequestPayload(
                unique_identifier=u, cryptographic_usage_mask=mask))
        out["check_retired"] = failure(lambda: check(retired, enums.CryptographicUsageMask.ENCRYPT.value))
        out["check_beyond_mask"] = failure(lambda: check(uid, enums.CryptographicUsageMask.SIGN.value))
        a.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, doomed)
        r = a.proxy.destroy(doomed)
        out["destroy_doomed"] = {
            "status": r.result_status.value.name,
            "message": r.result_message.value if r.result_message else None,
        }
        # Poll: a second pending destruction, sent raw to see its
        # correlation value (PyKMIP's client has no Poll).
        doomed2 = a.create(enums.CryptographicAlgorithm.AES, 128, name="doomed-2")
        a.activate(doomed2)
        a.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, doomed2)
        out["uids"]["doomed2"] = doomed2
        pending = ttlv_result(raw_exchange("kadmin", request(0x14, [ttlv(0x420094, 7, doomed2)], (1, 2))))
        out["destroy_doomed2"] = pending
        poll = lambda who, acv: ttlv_result(raw_exchange(who, request(0x15, [ttlv(0x420006, 8, acv.encode())], (1, 2))))
        out["poll_pending"] = poll("kadmin", pending.get("correlation", ""))
        out["poll_by_another"] = poll("array1", pending.get("correlation", ""))
        out["poll_unknown"] = poll("kadmin", "request:999999")
        out["unknown"] = failure(lambda: a.get_attributes("DSET.PRIM.KMIP.key999"))
        # Register: a key and a password the client brings.
        imported = a.register(objects.SymmetricKey(
            enums.CryptographicAlgorithm.AES, 128, bytes.fromhex("000102030405060708090a0b0c0d0e0f"),
            name="imported-128"))
        password = a.register(objects.SecretData(b"s3cret-passw0rd", enums.SecretDataType.PASSWORD, name="db-password"))
        a.activate(imported)
        a.activate(password)
        out["uids"]["imported"] = imported
        out["uids"]["password"] = password
        secrets = factory.create_attribute(enums.AttributeType.OBJECT_TYPE, enums.ObjectType.SECRET_DATA)
        out["located_secrets"] = a.locate(attributes=[secrets])
        # Modify and delete attributes (KMIP 1.x payloads).
        a.proxy.send_request_payload(enums.Operation.MODIFY_ATTRIBUTE, payloads.ModifyAttributeRequestPayload(
            unique_identifier=imported,
            attribute=factory.create_attribute(enums.AttributeType.NAME, "imported-128-renamed")))
        out["modify_missing"] = failure(lambda: a.proxy.send_request_payload(
            enums.Operation.MODIFY_ATTRIBUTE, payloads.ModifyAttributeRequestPayload(
                unique_identifier=imported,
                attribute=factory.create_attribute(enums.AttributeType.CONTACT_INFORMATION, "nobody"))))
        out["imported_names"] = attrs_of(a, imported, ["Name"])["Name"]
        a.proxy.send_request_payload(enums.Operation.DELETE_ATTRIBUTE, payloads.DeleteAttributeRequestPayload(
            unique_identifier=imported, attribute_name="Name", attribute_index=0))
        out["imported_after_delete"] = attrs_of(a, imported)
        out["not_an_identifier"] = failure(lambda: a.get_attributes("no such key!"))
    with client("array1") as c:
        k = c.get(uid)
        out["material"] = k.value.hex()
        out["length"] = k.cryptographic_length
        short = c.get(uid128)
        out["short_material"] = short.value.hex()
        out["short_length"] = short.cryptographic_length
        out["compromised_get"] = failure(lambda: c.get(leaked))
        out["app_creates"] = failure(lambda: c.create(enums.CryptographicAlgorithm.AES, 256))
        out["unknown_get"] = failure(lambda: c.get("DSET.PRIM.KMIP.key999"))
        out["imported_material"] = c.get(imported).value.hex()
        secret = c.get(password)
        out["password"] = secret.value.decode()
        out["password_type"] = secret.data_type.name
        out["gcm_in_1_2"] = failure(lambda: c.proxy.send_request_payload(
            enums.Operation.ENCRYPT, payloads.EncryptRequestPayload(unique_identifier=uid, data=b"x")))
    # AES-GCM's tag has its own field from KMIP 1.4 on.
    with client("array1", enums.KMIPVersion.KMIP_1_4) as c:
        # AES-GCM under the main key: an IV the client chose, additional
        # data, the tag returned; then decrypted over KMIP.
        params = core_attributes.CryptographicParameters(
            block_cipher_mode=enums.BlockCipherMode.GCM,
            cryptographic_algorithm=enums.CryptographicAlgorithm.AES,
            tag_length=16)
        iv = bytes(range(12))
        sealed = c.proxy.send_request_payload(enums.Operation.ENCRYPT, payloads.EncryptRequestPayload(
            unique_identifier=uid, data=b"journal block 42", cryptographic_parameters=params,
            iv_counter_nonce=iv, auth_additional_data=b"lun-7"))
        out["gcm"] = {"iv": iv.hex(), "data": sealed.data.hex(), "tag": sealed.auth_tag.hex()}
        opened = c.proxy.send_request_payload(enums.Operation.DECRYPT, payloads.DecryptRequestPayload(
            unique_identifier=uid, data=sealed.data, cryptographic_parameters=params,
            iv_counter_nonce=iv, auth_additional_data=b"lun-7", auth_tag=sealed.auth_tag))
        out["gcm_opened"] = opened.data.decode()
        out["gcm_wrong_aad"] = failure(lambda: c.proxy.send_request_payload(
            enums.Operation.DECRYPT, payloads.DecryptRequestPayload(
                unique_identifier=uid, data=sealed.data, cryptographic_parameters=params,
                iv_counter_nonce=iv, auth_additional_data=b"lun-8", auth_tag=sealed.auth_tag)))
        fresh = c.proxy.send_request_payload(enums.Operation.ENCRYPT, payloads.EncryptRequestPayload(
            unique_identifier=uid, data=b"with a fresh IV", cryptographic_parameters=params))
        out["fresh_iv"] = fresh.iv_counter_nonce.hex() if fresh.iv_counter_nonce else None
        out["cbc"] = failure(lambda: c.proxy.send_request_payload(
            enums.Operation.ENCRYPT, payloads.EncryptRequestPayload(
                unique_identifier=uid, data=b"x" * 16,
                cryptographic_parameters=core_attributes.CryptographicParameters(
                    block_cipher_mode=enums.BlockCipherMode.CBC))))
    with client("array2") as c:
        out["ungranted_get"] = failure(lambda: c.get(uid))
    # A client whose keys the server puts in an application of their own.
    with client("dbadmin") as d:
        db = d.create(enums.CryptographicAlgorithm.AES, 256, name="orders-db")
        out["uids"]["db"] = db
        out["db_names"] = attrs_of(d, db, ["Name"])["Name"]
    # KMIP 2.0, as PyKMIP speaks it: attributes in an Attributes structure.
    with client("kadmin", enums.KMIPVersion.KMIP_2_0) as a:
        v2 = a.create(enums.CryptographicAlgorithm.AES, 192, name="v2-key")
        a.activate(v2)
        out["v2_attributes"] = attrs_of(a, v2, ["State", "Cryptographic Length", "Name"])
        # 2.0's Set Attribute, and Modify and Delete in 2.0's form (an
        # attribute as its own item in a New or Current Attribute).
        out["v2_set"] = a.set_attribute(
            unique_identifier=v2, attribute_name="Contact Information", attribute_value="storage team")
        a.set_attribute(unique_identifier=v2, attribute_name="Contact Information", attribute_value="ops team")
        out["v2_set_twice"] = attrs_of(a, v2, ["Contact Information"])
        out["v2_set_name"] = failure(lambda: a.set_attribute(
            unique_identifier=v2, attribute_name="Name", attribute_value="v2-other"))
        out["v2_set_length"] = failure(lambda: a.set_attribute(
            unique_identifier=v2, attribute_name="Cryptographic Length", attribute_value=128))
        name = lambda text: a.attribute_value_factory.create_attribute_value_by_enum(enums.Tags.NAME, text)
        out["v2_modify"] = a.modify_attribute(
            unique_identifier=v2,
            current_attribute=cobjects.CurrentAttribute(attribute=name("v2-key")),
            new_attribute=cobjects.NewAttribute(attribute=name("v2-key-renamed")))[0]
        out["v2_modify_unknown"] = failure(lambda: a.modify_attribute(
            unique_identifier=v2,
            current_attribute=cobjects.CurrentAttribute(attribute=name("no-such-name")),
            new_attribute=cobjects.NewAttribute(attribute=name("whatever"))))
        out["v2_modify_no_current"] = failure(lambda: a.modify_attribute(
            unique_identifier=v2, new_attribute=cobjects.NewAttribute(attribute=name("whatever"))))
        # 2.0's Add Attribute, which PyKMIP's client does not send: raw TTLV.
        added = raw_exchange("kadmin", request(0x0D, [
            ttlv(0x420094, 7, v2),
            ttlv(0x42013D, 1, [ttlv(0x420053, 1, [ttlv(0x420055, 7, "v2-second"), ttlv(0x420054, 5, 1)])]),
        ]))
        out["v2_add"] = ttlv_result(added)
        contact = lambda text: ttlv(0x420022, 7, text)
        out["v2_add_with_current"] = ttlv_result(raw_exchange("kadmin", request(0x0D, [
            ttlv(0x420094, 7, v2), ttlv(0x42013D, 1, [contact("a")]), ttlv(0x42013C, 1, [contact("b")]),
        ])))
        out["v2_names"] = attrs_of(a, v2, ["Name"])["Name"]
        a.delete_attribute(
            unique_identifier=v2, current_attribute=cobjects.CurrentAttribute(attribute=name("v2-key-renamed")))
        a.delete_attribute(
            unique_identifier=v2,
            attribute_reference=cobjects.AttributeReference(
                vendor_identification="", attribute_name="Contact Information"))
        out["v2_after_delete"] = attrs_of(a, v2, ["Name", "Contact Information"])
        # Set Attribute is not a KMIP 1.x operation (PyKMIP will not send
        # it in 1.2: raw TTLV).
        contact = [ttlv(0x420094, 7, v2), ttlv(0x42013D, 1, [ttlv(0x420022, 7, "x")])]
        out["set_in_1_2"] = ttlv_result(raw_exchange("kadmin", request(0x31, contact, (1, 2))))
    with client("array1", enums.KMIPVersion.KMIP_2_0) as c:
        out["v2_material_len"] = len(c.get(v2).value)

    def as_stranger():
        # TLS 1.3 lets the client finish its side of the handshake before
        # the server has judged its certificate: the refusal comes with
        # the first request.
        with client("stranger") as c:
            c.get(uid)
    out["stranger"] = failure(as_stranger)
    # A message cut short, and one over the size limit: raw TTLV.
    whole = bytes.fromhex("42007801") + struct.pack(">I", 64) + b"\x00" * 16
    out["truncated"] = result_of(raw_exchange("kadmin", whole, close_after_send=True))
    oversize = bytes.fromhex("42007801") + struct.pack(">I", 8 << 20) + b"\x00" * 64
    out["oversize"] = result_of(raw_exchange("kadmin", oversize))
elif phase == "two":
    # One connection across a change made on the server: array2 is
    # disabled while its session is open, and its next request is refused.
    with client("array2") as c:
        out["array2_before"] = len(c.locate(maximum_items=1))
        open(STATE["ready"], "w").close()
        for _ in range(200):
            if os.path.exists(STATE["go"]):
                break
            time.sleep(0.05)
        out["array2_after"] = failure(lambda: c.locate(maximum_items=1))
    with client("array1", enums.KMIPVersion.KMIP_1_4) as c:
        uid = STATE["main"]
        out["material"] = c.get(uid).value.hex()
        out["destroyed_get"] = failure(lambda: c.get(STATE["doomed"]))
        # What the key service sealed over HTTP (the Rust test passes it
        # in) opens here.
        http = STATE["http_sealed"]
        params = core_attributes.CryptographicParameters(
            block_cipher_mode=enums.BlockCipherMode.GCM, cryptographic_algorithm=enums.CryptographicAlgorithm.AES)
        got = c.proxy.send_request_payload(enums.Operation.DECRYPT, payloads.DecryptRequestPayload(
            unique_identifier=uid, data=bytes.fromhex(http["data"]), cryptographic_parameters=params,
            iv_counter_nonce=bytes.fromhex(http["iv"]), auth_tag=bytes.fromhex(http["tag"])))
        out["http_opened"] = got.data.decode()
    with client("kadmin") as a:
        out["doomed_state"] = attrs_of(a, STATE["doomed"], ["State"])["State"]
    # Approved meanwhile: Poll answers the destruction's own result.
    out["poll_done"] = ttlv_result(raw_exchange("kadmin", request(
        0x15, [ttlv(0x420006, 8, STATE["doomed2_correlation"].encode())], (1, 2))))
else:
    sys.exit(f"unknown phase {phase}")
print(json.dumps(out))
