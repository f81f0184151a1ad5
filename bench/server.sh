#!/usr/bin/env bash
# The server against embedded mode, in one run:
#   - ds put / ds get of 1 GiB: embedded, then through `custos serve` over
#     loopback TLS 1.3 (the target: at least 0.8x embedded);
#   - the key service: `encrypt` of 1 KiB with 32 keep-alive connections
#     (wrk), every request audited; requests per second and p99 latency;
#   - a metadata operation (ds info) through the server, one connection:
#     mean latency per request;
#   - the same metadata command in embedded mode (process start, Argon2id
#     check of a passphrase, catalog): per command.
# Results replace the section between the server markers in docs/PERFORMANCE.md.
#
# Usage: bench/server.sh [WORKDIR]      (default /tmp/custos-bench-server; needs ~4 GiB free)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
root=$(pwd)
work=${1:-/tmp/custos-bench-server}
for tool in wrk bc; do
  command -v $tool >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $tool; }
done
cargo build --release --locked -p custos-cli
custos="$root/target/release/custos"

rm -rf "$work" && mkdir -p "$work" && chmod 700 "$work"
src="$work/random-1g.bin"
head -c 1073741824 /dev/urandom > "$src"
sync
cat "$src" > /dev/null

export CUSTOS_VAULT="$work/vault" CUSTOS_PASSPHRASE="bench-passphrase-not-secret"
bench_vault
"$custos" key create DSET.PRIM.KS.key001 --activate >/dev/null

elapsed() { echo "$2 - $1" | bc -l; }
gbps() { printf '%.2f' "$(echo "1073741824 / $1 / 1000000000" | bc -l)"; }

now() { date +%s.%N; }
median() { printf '%s\n' "$@" | sort -g | sed -n "$(( ($# + 1) / 2 ))p"; }
# The server: TLS material for localhost, a configuration, and the server.
bench_tls "$work"
port=18443
cat > "$work/server.toml" <<TOML
vault = "$work/vault"
[hsm]
kind = "soft"
[listen]
unix = "$work/custos.sock"
tcp = "127.0.0.1:$port"
[tls]
cert = "$work/server.pem"
key = "$work/server.key"
TOML
chmod -R go-rwx "$work/vault"
"$custos" serve --config "$work/server.toml" 2>"$work/server.log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -S "$work/custos.sock" ] && break; sleep 0.1; done
client=(env -u CUSTOS_PASSPHRASE -u CUSTOS_VAULT "$custos" --server "https://localhost:$port" --ca "$work/ca.pem")

# Three rounds, embedded and server alternating, the disk settled (sync,
# untimed) before each step; the medians are reported. CPU seconds of the
# server and of each client process are counted for the puts.
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
ticks() { /usr/bin/time -f '%U %S' "$@" 2>&1 >/dev/null | tail -1 | awk '{print $1 + $2}'; }
declare -a ep sp eg sg epc spc sps
for round in 1 2 3; do
  sync; t0=$(now); c=$(ticks "$custos" ds put "EMB.R$round" "$src"); t1=$(now)
  ep+=("$(elapsed "$t0" "$t1")"); epc+=("$c")
  sync; a=$(cpu $server); t0=$(now); c=$(ticks "${client[@]}" ds put "SRV.R$round" "$src"); t1=$(now); b=$(cpu $server)
  sp+=("$(elapsed "$t0" "$t1")"); spc+=("$c"); sps+=("$(echo "$b - $a" | bc -l)")
  sync; t0=$(now); "$custos" ds get "EMB.R$round" -o "$work/out.bin" 2>/dev/null; t1=$(now); eg+=("$(elapsed "$t0" "$t1")")
  rm -f "$work/out.bin"
  sync; t0=$(now); "${client[@]}" ds get "SRV.R$round" -o "$work/out.bin" 2>/dev/null; t1=$(now); sg+=("$(elapsed "$t0" "$t1")")
  cmp -s "$src" "$work/out.bin" || { echo "the server's read differs from what was written" >&2; exit 1; }
  rm -f "$work/out.bin"
  "$custos" ds rm "EMB.R$round" >/dev/null; "${client[@]}" ds rm "SRV.R$round" >/dev/null
done
emb_put=$(median "${ep[@]}"); srv_put=$(median "${sp[@]}"); emb_get=$(median "${eg[@]}"); srv_get=$(median "${sg[@]}")
emb_put_cpu=$(median "${epc[@]}"); srv_put_client=$(median "${spc[@]}"); srv_put_server=$(median "${sps[@]}")
"${client[@]}" ds put SRV.BIG "$src" >/dev/null
t0=$(now); for i in $(seq 20); do "$custos" ds info SRV.BIG >/dev/null; done; t1=$(now)
emb_meta=$(echo "($t1 - $t0) / 20 * 1000" | bc -l)

auth="Basic $(printf '%s:%s' "$CUSTOS_USER" "$CUSTOS_CREDENTIAL" | base64 -w0)"
plain=$(head -c 1024 /dev/urandom | base64 -w0)
cat > "$work/encrypt.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"plaintext":"$plain","context":{"bench":"1"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "$auth"
LUA
cat > "$work/info.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"op":"ds-info","name":"SRV.BIG"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "$auth"
LUA
# Warm up (the first request pays the Argon2id check, remembered after).
wrk -t1 -c1 -d2s -s "$work/info.lua" "https://127.0.0.1:$port/v1/ops" >/dev/null
wrk -t2 -c32 -d20s --latency -s "$work/encrypt.lua" "https://127.0.0.1:$port/v1/keys/DSET.PRIM.KS.key001/encrypt" > "$work/ks.txt"
wrk -t1 -c1 -d10s --latency -s "$work/info.lua" "https://127.0.0.1:$port/v1/ops" > "$work/info.txt"
ks_rps=$(awk '/Requests\/sec/ {print $2}' "$work/ks.txt")
ks_p99=$(awk '$1 == "99%" {print $2}' "$work/ks.txt")
ks_p50=$(awk '$1 == "50%" {print $2}' "$work/ks.txt")
ks_err=$(awk '/Non-2xx/ {print $4}' "$work/ks.txt"); ks_err=${ks_err:-0}
info_avg=$(awk '/Latency/ {print $2; exit}' "$work/info.txt")
info_rps=$(awk '/Requests\/sec/ {print $2}' "$work/info.txt")
kill -TERM $server; wait $server 2>/dev/null || true; trap - EXIT
audited=$("$custos" audit ls --principal bench --json | python3 -c 'import json,sys; print(sum(1 for r in json.load(sys.stdin) if r["action"]=="key encrypt" and r["result"]=="ok"))')

cpus=$(nproc)
sec="$work/section.md"
{
  echo "<!-- server:begin -->"
  echo "Measured $(date -u +%Y-%m-%d) on this machine ($cpus cores) by \`bench/server.sh\`; 1 GiB of"
  echo "random data, page cache warm, release build, server and client on one machine over loopback TLS 1.3;"
  echo "medians of three rounds (embedded and server alternating, \`sync\` before each step)."
  echo
  echo "| what | embedded | through the server | ratio |"
  echo "|---|---|---|---|"
  echo "| ds put 1 GiB | $(printf '%.2f' "$emb_put") s ($(gbps "$emb_put") GB/s) | $(printf '%.2f' "$srv_put") s ($(gbps "$srv_put") GB/s) | $(printf '%.2f' "$(echo "$emb_put / $srv_put" | bc -l)") |"
  echo "| ds get 1 GiB | $(printf '%.2f' "$emb_get") s ($(gbps "$emb_get") GB/s) | $(printf '%.2f' "$srv_get") s ($(gbps "$srv_get") GB/s) | $(printf '%.2f' "$(echo "$emb_get / $srv_get" | bc -l)") |"
  echo "| CPU for one put | $(printf '%.2f' "$emb_put_cpu") core-s | $(printf '%.2f' "$srv_put_client") (client) + $(printf '%.2f' "$srv_put_server") (server) core-s | |"
  echo "| a metadata command (ds info) | $(printf '%.1f' "$emb_meta") ms per command (process, token check, catalog) | $info_avg mean per request, one connection ($info_rps req/s) | |"
  echo
  echo "Key service, \`encrypt\` of 1 KiB, 32 keep-alive connections for 20 s (wrk):"
  echo "**$ks_rps requests/s**, p50 $ks_p50, p99 $ks_p99, $ks_err non-2xx; $audited encrypts audited"
  echo "(each one durable entry, in group commits, before its answer left)."
  echo "<!-- server:end -->"
} > "$sec"
replace_section server "The server" "$sec"
cat "$sec"
