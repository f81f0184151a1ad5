#!/usr/bin/env bash
# Every documented status reached on purpose (.ci/statuses.py), then
# schemathesis against the running `custos serve`, from the OpenAPI document
# the server itself serves: no 5xx for any generated request, every answer
# documented. Called by .ci/run with the debug binary built.
# Usage: .ci/schemathesis.sh CUSTOS_BINARY VENV_BIN
set -euo pipefail
custos=$1
st=$2
work=$(mktemp -d /tmp/custos-schemathesis.XXXXXX)
chmod 700 "$work"
server=
cleanup() {
  [ -n "$server" ] && kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

export CUSTOS_VAULT="$work/vault" CUSTOS_PASSPHRASE="schemathesis-passphrase" CUSTOS_USER=admin CUSTOS_CREDENTIAL="admin credential for ci"
"$custos" init --kdf-memory-mib 19 --kdf-iterations 2 >/dev/null
"$custos" config set dual-control none >/dev/null
ops=$("$custos" user add ops --token --json --role security-admin --role key-custodian --role storage-admin \
  --role app --role auditor | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
aud=$("$custos" user add aud --token --json --role auditor | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
app=$("$custos" user add app --token --json --role app | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])')
"$custos" user grant ops --data '**' >/dev/null
"$custos" user grant ops --key '**' >/dev/null
CUSTOS_USER=ops CUSTOS_CREDENTIAL=$ops "$custos" key create DSET.PRIM.CI.key001 --activate >/dev/null
CUSTOS_USER=ops CUSTOS_CREDENTIAL=$ops "$custos" key create DSET.BACK.CI.key001 --purpose BACK --activate >/dev/null
printf 'hello' | CUSTOS_USER=ops CUSTOS_CREDENTIAL=$ops "$custos" ds put CI.DATA >/dev/null

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$work/tls.key" -out "$work/tls.pem" 2>/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/server.toml" <<TOML
vault = "$work/vault"
drain_secs = 5
[hsm]
kind = "soft"
[listen]
tcp = "127.0.0.1:$port"
[tls]
cert = "$work/tls.pem"
key = "$work/tls.key"
TOML
"$custos" serve --config "$work/server.toml" 2>"$work/server.log" &
server=$!
base="https://127.0.0.1:$port"
for _ in $(seq 100); do curl -skf "$base/v1/health" >/dev/null 2>&1 && break; sleep 0.1; done

# Every documented status, reached on purpose while the vault is as set up
# (before the fuzzer changes it).
python3 "$(dirname "$0")/statuses.py" "$base" "$ops" "$aud" "$app"
# From the scratch directory: schemathesis keeps a cache in its working directory.
(cd "$work" && "$st/schemathesis" run "$base/v1/openapi.json" --tls-verify false --auth "ops:$ops" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "${CUSTOS_SCHEMATHESIS_EXAMPLES:-40}" --seed 4711 --workers 1 --request-timeout 30 \
  --suppress-health-check all --report junit --report-dir "$work/report")
if grep -q panicked "$work/server.log"; then
  echo "the server panicked:" >&2
  cat "$work/server.log" >&2
  exit 1
fi
