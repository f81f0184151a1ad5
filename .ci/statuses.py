"""Every status the OpenAPI document promises is reachable: for each
documented (method, path, status) a request made to get exactly that status.
Usage: statuses.py BASE_URL OPS_TOKEN AUDITOR_TOKEN APP_TOKEN"""
import base64, json, ssl, sys, urllib.error, urllib.request

base, ops, aud, app = sys.argv[1:5]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE


def auth(user, token):
    return "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()


OPS, AUD, APP, NOBODY, WRONG = auth("ops", ops), auth("aud", aud), auth("app", app), None, auth("ops", "not-the-token")


def call(method, path, who, body=None, ctype="application/json", idem=None):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if who:
        req.add_header("Authorization", who)
    if idem:
        req.add_header("Idempotency-Key", idem)
    if data is not None:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


def blob(label):
    return base64.b64encode(b"CKS1" + bytes([len(label)]) + label.encode() + bytes(28)).decode()


enc = {"plaintext": base64.b64encode(b"x").decode()}
ct = json.loads(urllib.request.urlopen(urllib.request.Request(
    base + "/v1/keys/DSET.PRIM.CI.key001/encrypt", data=json.dumps({**enc, "context": {"a": "1"}}).encode(),
    headers={"Authorization": OPS, "Content-Type": "application/json"}, method="POST"), context=ctx).read())["ciphertext"]
K = "/v1/keys/DSET.PRIM.CI.key001"
cases = {
    ("get", "/v1/health", "200"): lambda: call("GET", "/v1/health", NOBODY),
    ("get", "/v1/openapi.json", "200"): lambda: call("GET", "/v1/openapi.json", NOBODY),
    ("get", "/metrics", "200"): lambda: call("GET", "/metrics", NOBODY),
    ("post", "/v1/ops", "200"): lambda: call("POST", "/v1/ops", OPS, {"op": "ds-list"}),
    ("post", "/v1/ops", "400"): lambda: call("POST", "/v1/ops", OPS, {"op": "no-such-op"}),
    ("post", "/v1/ops", "401"): lambda: call("POST", "/v1/ops", WRONG, {"op": "ds-list"}),
    ("post", "/v1/ops", "403"): lambda: call("POST", "/v1/ops", AUD, {"op": "key-create", "purpose": "PRIM", "activate": False}),
    ("post", "/v1/ops", "404"): lambda: call("POST", "/v1/ops", OPS, {"op": "ds-info", "name": "NO.SUCH"}),
    ("post", "/v1/ops", "409"): lambda: call("POST", "/v1/ops", OPS, {"op": "user-add", "name": "ops", "roles": ["app"], "credential": "token"}),
    ("put", "/v1/datasets/{name}", "200"): lambda: call("PUT", "/v1/datasets/CI.PUT", OPS, b"data", "application/octet-stream"),
    ("put", "/v1/datasets/{name}", "400"): lambda: call("PUT", "/v1/datasets/CI.PUT?colour=red", OPS, b"d", "application/octet-stream"),
    ("put", "/v1/datasets/{name}", "401"): lambda: call("PUT", "/v1/datasets/CI.PUT", NOBODY, b"d", "application/octet-stream"),
    ("put", "/v1/datasets/{name}", "403"): lambda: call("PUT", "/v1/datasets/CI.PUT", AUD, b"d", "application/octet-stream"),
    ("put", "/v1/datasets/{name}", "404"): lambda: call("PUT", "/v1/datasets/CI.PUT?volume=nowhere", OPS, b"d", "application/octet-stream"),
    ("put", "/v1/datasets/{name}", "409"): lambda: call("PUT", "/v1/datasets/CI.NEW?key=DSET.BACK.CI.key001", OPS, b"d", "application/octet-stream"),
    # One Idempotency-Key, a second request: refused.
    ("post", "/v1/ops", "422"): lambda: [
        call("POST", "/v1/ops", OPS, {"op": "key-create", "purpose": "PRIM", "activate": False}, idem="ci-idem-ops"),
        call("POST", "/v1/ops", OPS, {"op": "key-create", "purpose": "BACK", "activate": False}, idem="ci-idem-ops"),
    ][1],
    ("put", "/v1/datasets/{name}", "422"): lambda: [
        call("PUT", "/v1/datasets/CI.IDEM1", OPS, b"d", "application/octet-stream", idem="ci-idem-put"),
        call("PUT", "/v1/datasets/CI.IDEM2", OPS, b"d", "application/octet-stream", idem="ci-idem-put"),
    ][1],
    ("get", "/v1/datasets/{name}", "200"): lambda: call("GET", "/v1/datasets/CI.DATA", OPS),
    ("get", "/v1/datasets/{name}", "400"): lambda: call("GET", "/v1/datasets/CI.DATA?start=x", OPS),
    ("get", "/v1/datasets/{name}", "401"): lambda: call("GET", "/v1/datasets/CI.DATA", NOBODY),
    ("get", "/v1/datasets/{name}", "403"): lambda: call("GET", "/v1/datasets/CI.DATA", AUD),
    ("get", "/v1/datasets/{name}", "404"): lambda: call("GET", "/v1/datasets/NO.SUCH", OPS),
    ("get", "/v1/audit/export", "200"): lambda: call("GET", "/v1/audit/export", AUD),
    ("get", "/v1/audit/export", "401"): lambda: call("GET", "/v1/audit/export", WRONG),
    ("get", "/v1/audit/export", "403"): lambda: call("GET", "/v1/audit/export", APP),
}
for action, good in (("encrypt", enc), ("decrypt", {"ciphertext": ct, "context": {"a": "1"}}), ("datakey", {})):
    path = f"/v1/keys/{{label}}/{action}"
    cases[("post", path, "200")] = lambda a=action, g=good: call("POST", f"{K}/{a}", OPS, g)
    cases[("post", path, "400")] = lambda a=action: call("POST", f"{K}/{a}", OPS, {"unknown": 1})
    cases[("post", path, "401")] = lambda a=action, g=good: call("POST", f"{K}/{a}", WRONG, g)
    cases[("post", path, "403")] = lambda a=action, g=good: call("POST", f"{K}/{a}", AUD, g)
    missing = {"ciphertext": blob("DSET.PRIM.NO.key009")} if action == "decrypt" else good
    cases[("post", path, "404")] = lambda a=action, m=missing: call("POST", f"/v1/keys/DSET.PRIM.NO.key009/{a}", OPS, m)
cases[("post", "/v1/keys/{label}/decrypt", "422")] = lambda: call(
    "POST", f"{K}/decrypt", OPS, {"ciphertext": ct, "context": {"a": "2"}})

doc = json.loads(urllib.request.urlopen(base + "/v1/openapi.json", context=ctx).read())
missing, wrong = [], []
for path, item in doc["paths"].items():
    for method, op in item.items():
        if method == "parameters":
            continue
        for status in op["responses"]:
            key = (method, path, status)
            if key not in cases:
                missing.append(key)
                continue
            got = cases[key]()
            if str(got) != status:
                wrong.append((key, got))
if missing or wrong:
    print("documented statuses without a case:", missing, file=sys.stderr)
    print("documented statuses not reached:", wrong, file=sys.stderr)
    sys.exit(1)
print(f"every documented status reached: {sum(len(op['responses']) for i in doc['paths'].values() for m, op in i.items() if m != 'parameters')} of them")
