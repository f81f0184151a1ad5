#!/usr/bin/env bash
# KMIP: Custos's server against PyKMIP's own reference server
# (pykmip-server), in the same run on this machine, both driven by
# bench/kmip-load (Rust, one TLS connection per client thread; not the
# bottleneck: it idles waiting for answers). Get of one key, and
# Create+Get+Destroy cycles, with 1, 8 and 32 clients. Every Custos
# operation is audited (the audit log is checked to hold them afterwards).
# PyKMIP's own client, at one request at a time, cross-checks the load
# generator's single-client rates.
# Each cell is measured in ROUNDS rounds (default 3), the two servers
# taking turns within a round: a server's rate drifts over minutes on this
# machine (PyKMIP's by a third between two runs), and the table gives each
# cell's median with every round's rate beside it.
# Results replace the section between the kmip markers in docs/PERFORMANCE.md.
#
# Usage: bench/kmip.sh [SECONDS per measurement, default 10] [ROUNDS, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
root=$(pwd)
secs=${1:-10}
rounds=${2:-3}
command -v openssl >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq openssl; }
cargo build --release --locked -p custos-cli -p kmip-load
custos="$root/target/release/custos"
load="$root/target/release/kmip-load"
py="${XDG_CACHE_HOME:-$HOME/.cache}/custos-ci/pykmip"
if ! "$py/bin/python" -c 'import kmip' >/dev/null 2>&1; then
  rm -rf "$py" && python3 -m venv "$py" && "$py/bin/pip" install --quiet 'pykmip==0.11.0'
fi
work=$(mktemp -d /tmp/custos-kmip-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"

# Certificates: an EC CA; the servers' (localhost); a device's, for
# client authentication (pykmip-server requires the clientAuth usage).
openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -subj /CN=bench-ca -days 2 -out ca.pem 2>/dev/null
issue() { # name cn usage
  openssl ecparam -name prime256v1 -genkey -noout -out "$1.ec" 2>/dev/null
  openssl pkcs8 -topk8 -nocrypt -in "$1.ec" -out "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
}
issue server localhost serverAuth
issue device bench-device clientAuth

wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; exit 1; }

# Custos: one vault, its server with KMIP on 15696; the device principal
# may create, fetch and destroy keys (security-admin and app, granted the
# KMIP keys); destruction without a waiting period or a second principal.
export CUSTOS_VAULT="$work/vault" CUSTOS_PASSPHRASE="bench-not-secret"
bench_vault
"$custos" config set key.destroy.min-wait 0s >/dev/null
"$custos" config set key.destroy.wait 0s >/dev/null
printf 'device credential, not used\n' > cred
CUSTOS_NEW_CREDENTIAL="device credential, not used" "$custos" user add device --role security-admin --role app >/dev/null
"$custos" user grant device --key 'DSET.PRIM.KMIP.**' >/dev/null
chmod -R go-rwx vault
printf '%s\n' "$CUSTOS_PASSPHRASE" > pass && chmod 600 pass
cat > custos.toml <<TOML
vault = "$work/vault"
[hsm]
kind = "soft"
secret_file = "$work/pass"
[listen]
unix = "$work/custos.sock"
[tls]
cert = "$work/server.pem"
key = "$work/server.key"
[kmip]
listen = "127.0.0.1:15696"
client_ca = "$work/ca.pem"
[[kmip.clients]]
cn = "bench-device"
principal = "device"
TOML
env -u CUSTOS_VAULT -u CUSTOS_PASSPHRASE "$custos" serve --config custos.toml 2> custos.log & pids+=($!)
wait_port 15696

# PyKMIP's server on 15697: TLS 1.2, the GCM suite rustls shares with it,
# its SQLite store in this directory.
mkdir policies
cat > pykmip.conf <<CONF
[server]
hostname=127.0.0.1
port=15697
certificate_path=$work/server.pem
key_path=$work/server.key
ca_path=$work/ca.pem
auth_suite=TLS1.2
policy_path=$work/policies
enable_tls_client_auth=True
tls_cipher_suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
logging_level=WARNING
database_path=$work/pykmip.db
CONF
"$py/bin/pykmip-server" -f pykmip.conf -l "$work/pykmip.log" > pykmip.out 2>&1 & pids+=($!)
wait_port 15697

# One key on each, made by PyKMIP's client, and its single-client Get
# rate (200 Gets, one at a time): the cross-check.
cat > one.py <<'PY'
import json, sys, time
from kmip.core import enums
from kmip.pie.client import ProxyKmipClient
port = int(sys.argv[1])
with ProxyKmipClient(hostname="127.0.0.1", port=port, cert="device.pem", key="device.key", ca="ca.pem",
                     config_file="/dev/null") as c:
    uid = c.create(enums.CryptographicAlgorithm.AES, 256)
    c.activate(uid)
    c.get(uid)
    t = time.perf_counter()
    for _ in range(200):
        c.get(uid)
    print(json.dumps({"uid": uid, "pykmip_client_get_per_second": 200 / (time.perf_counter() - t)}))
PY
c_one=$("$py/bin/python" one.py 15696)
p_one=$("$py/bin/python" one.py 15697)
c_uid=$(echo "$c_one" | python3 -c 'import json,sys; print(json.load(sys.stdin)["uid"])')
p_uid=$(echo "$p_one" | python3 -c 'import json,sys; print(json.load(sys.stdin)["uid"])')

run() { # port mode clients uid
  "$load" "127.0.0.1:$1" ca.pem device.pem device.key "$3" "$secs" "$2" "${4:-}" 2>>load.err
}
# R[key] holds one JSON result per line, one line per round.
declare -A R
for _ in $(seq "$rounds"); do
  for n in 1 8 32; do
    R[c_get_$n]+="$(run 15696 get "$n" "$c_uid")"$'\n'
    R[p_get_$n]+="$(run 15697 get "$n" "$p_uid")"$'\n'
    R[c_cyc_$n]+="$(run 15696 cycle "$n")"$'\n'
    R[p_cyc_$n]+="$(run 15697 cycle "$n")"$'\n'
  done
done
# Every request the load made is in the audit log (one entry per Get, five
# per cycle: two intents and three outcomes), and the chain is intact.
expected=$(printf '%s' "${R[c_get_1]}${R[c_get_8]}${R[c_get_32]}${R[c_cyc_1]}${R[c_cyc_8]}${R[c_cyc_32]}" | python3 -c '
import json, sys
print(sum(r["done"] * (5 if r["mode"] == "cycle" else 1) for r in map(json.loads, filter(str.strip, sys.stdin))))')
audited=$(env -u CUSTOS_VAULT -u CUSTOS_PASSPHRASE CUSTOS_SERVER="unix:$work/custos.sock" \
  "$custos" --json audit verify | python3 -c '
import json, sys
v = json.load(sys.stdin)
if v["problem"] is not None:
    sys.exit("audit verify found the log damaged after the load: " + v["problem"] + "; this is a bug in Custos, not in the benchmark")
print(v["entry_count"])')
[ "$audited" -ge "$expected" ] || {
  echo "the audit log holds $audited entries, fewer than the $expected the load's requests made: some request was answered without its entry, a bug in Custos's audit path (not in the benchmark)" >&2
  exit 1
}
# f RESULTS FIELD: the median of FIELD over the rounds (failures: the sum);
# f RESULTS all: every round's rate, in order.
f() {
  echo "$1" | python3 -c "
import json, statistics, sys
rs = [json.loads(l) for l in sys.stdin if l.strip()]
k = '$2'
if k == 'all':
    print(', '.join(f\"{r['per_second']:.0f}\" for r in rs))
elif k == 'failures':
    print(sum(r[k] for r in rs))
else:
    print(round(statistics.median(r[k] for r in rs), 2))"
}
row() { # label key
  local c="${R[c_$2]}" p="${R[p_$2]}"
  local cr pr
  cr=$(f "$c" per_second); pr=$(f "$p" per_second)
  printf '| %s | %s | %s ms / %s ms | %s | %s ms / %s ms | %s× | %s / %s |\n' "$1" "$cr" "$(f "$c" p50_ms)" "$(f "$c" p99_ms)" \
    "$pr" "$(f "$p" p50_ms)" "$(f "$p" p99_ms)" "$(python3 -c "print(round($cr / max($pr, 0.001), 1))")" "$(f "$c" failures)" "$(f "$p" failures)"
}
rounds_line() { # label key
  echo "- $1: Custos $(f "${R[c_$2]}" all); PyKMIP $(f "${R[p_$2]}" all)."
}
{
  echo "<!-- kmip:begin -->"
  echo "Measured $(date -u +%Y-%m-%d) on this machine ($(nproc) cores), by \`bench/kmip.sh $secs $rounds\`: Custos $(git -C "$root" rev-parse --short HEAD) (release, software HSM, SQLite catalog, every operation audited) and PyKMIP $("$py/bin/python" -c 'import kmip; print(kmip.__version__)')'s \`pykmip-server\` (its SQLite store), both on loopback with mutual TLS (Custos negotiates 1.3, PyKMIP 1.2), driven by \`bench/kmip-load\` for ${secs} s per cell, one connection per client. A cycle is Create (AES-256), Get, Destroy: three requests. Each figure is the median of $rounds rounds, the servers taking turns within each round (the ratio is of the medians; failures are summed)."
  echo
  echo "| load | Custos per second | Custos p50 / p99 | PyKMIP per second | PyKMIP p50 / p99 | ratio | failures (C / P) |"
  echo "|---|---|---|---|---|---|---|"
  for n in 1 8 32; do row "Get, $n client$([ "$n" = 1 ] || echo s)" "get_$n"; done
  for n in 1 8 32; do row "Create+Get+Destroy cycles, $n client$([ "$n" = 1 ] || echo s)" "cyc_$n"; done
  echo
  echo "Each round's rate per second, in order:"
  echo
  for n in 1 8 32; do rounds_line "Get, $n client$([ "$n" = 1 ] || echo s)" "get_$n"; done
  for n in 1 8 32; do rounds_line "cycles, $n client$([ "$n" = 1 ] || echo s)" "cyc_$n"; done
  echo
  echo "Cross-check, one request at a time with PyKMIP's own client (200 Gets): Custos $(f "$c_one" pykmip_client_get_per_second | xargs printf '%.0f')/s, pykmip-server $(f "$p_one" pykmip_client_get_per_second | xargs printf '%.0f')/s (against the load generator's single-client median $(f "${R[c_get_1]}" per_second)/s and $(f "${R[p_get_1]}" per_second)/s). Custos's audit log held $audited entries afterwards, its chain intact (\`audit verify\`), for the load's $expected audited requests (one entry per Get, five per cycle)."
  echo "<!-- kmip:end -->"
} > section.md
cat section.md
(cd "$root" && replace_section kmip 'KMIP against PyKMIP'"'"'s reference server — `bench/kmip.sh`' "$work/section.md")
[ -s load.err ] && { echo "load generator notes:"; sort load.err | uniq -c | head; } || true
