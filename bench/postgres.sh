#!/usr/bin/env bash
# The catalog on PostgreSQL against the embedded SQLite catalog, in one run
# (issue 15, ADR 0020). For each backend, on a fresh vault:
#   - `key create` of KEYS keys (100,000 per command), then `mk reencipher`
#     of all of them after a master key change (the target on PostgreSQL:
#     1,000,000 keys in at most 60 s);
#   - DATASETS datasets (`ds import` of as many small files), then through
#     `custos serve` over loopback TLS: one page of `key ls` (100 keys, in
#     the middle of the keystore) and `ds info`, each the median of 21
#     requests timed by curl (target: under 20 ms each);
#   - 1 GiB `ds put` and `ds get` through the server (target: PostgreSQL
#     within 10% of SQLite);
#   - the key service, `encrypt` of 1 KiB for 20 s (wrk, 32 connections):
#     one server; on PostgreSQL also two servers on the one catalog, 16
#     connections each, at once.
# PostgreSQL is Debian's, started in a temporary directory (fsync on, its
# defaults but shared_buffers), on a Unix socket, and stopped at the end.
# Results replace the section between the postgres markers in
# docs/PERFORMANCE.md.
#
# Usage: bench/postgres.sh [KEYS] [DATASETS] [WORKDIR]
#        (defaults 1000000 100000 /tmp/custos-bench-pg; needs ~4 GiB free)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
root=$(pwd)
keys=${1:-1000000}
datasets=${2:-100000}
work=${3:-/tmp/custos-bench-pg}
for tool in wrk bc curl; do
  command -v $tool >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $tool; }
done
command -v /usr/bin/time >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq time; }
pgbin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1)")
[ -x "$pgbin/initdb" ] || { apt-get update -qq && apt-get install -y -qq postgresql; pgbin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)"); }
cargo build --release --locked -p custos-cli
custos="$root/target/release/custos"

rm -rf "$work" && mkdir -p "$work" && chmod 700 "$work"
# PostgreSQL refuses to run as root: its directory belongs to its account.
pgdir=$(mktemp -d /tmp/custos-bench-pgdata.XXXXXX)
chmod 755 "$pgdir"
chown postgres: "$pgdir"
pg() { runuser -u postgres -- "$pgbin/$1" "${@:2}"; }
pg initdb -D "$pgdir/data" -U custos --auth=trust -E UTF8 --locale=C >/dev/null
pg pg_ctl -D "$pgdir/data" -l "$pgdir/log" -w \
  -o "-c listen_addresses='' -k $pgdir -p 5499 -c shared_buffers=512MB -c max_connections=100" start >/dev/null
servers=()
stop_all() {
  for s in "${servers[@]}"; do kill "$s" 2>/dev/null || true; done
  pg pg_ctl -D "$pgdir/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$pgdir"
}
trap stop_all EXIT
pg createdb -h "$pgdir" -p 5499 -U custos bench
url="postgres://custos@/bench?host=$pgdir&port=5499"

src="$work/random-1g.bin"
head -c 1073741824 /dev/urandom > "$src"
mkdir -p "$work/files"
python3 - "$work/files" "$datasets" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f"f{i:07d}"), "wb") as f:
        f.write(os.urandom(64))
PY
bench_tls "$work"

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
median() { printf '%s\n' "$@" | sort -g | sed -n "$(( ($# + 1) / 2 ))p"; }

# serve NAME PORT [repository line]: start a server on the vault, wait for it.
serve() {
  cat > "$work/$1.toml" <<TOML
vault = "$CUSTOS_VAULT"
$3
[hsm]
kind = "soft"
[listen]
unix = "$work/$1.sock"
tcp = "127.0.0.1:$2"
[tls]
cert = "$work/server.pem"
key = "$work/server.key"
TOML
  chmod -R go-rwx "$CUSTOS_VAULT"
  "$custos" serve --config "$work/$1.toml" 2>"$work/$1.log" &
  servers+=($!)
  for _ in $(seq 200); do [ -S "$work/$1.sock" ] && return; sleep 0.1; done
  echo "server $1 did not start: $(cat "$work/$1.log")" >&2; exit 1
}

# One backend: $1 = sqlite | postgres. Sets the r_* results.
run_backend() {
  local backend=$1
  rm -rf "$work/vault"
  export CUSTOS_VAULT="$work/vault" CUSTOS_PASSPHRASE="bench-passphrase-not-secret"
  local repo_line=""
  if [ "$backend" = postgres ]; then
    bench_vault --repository "$url"
    repo_line="repository = \"$url\""
  else
    bench_vault
  fi

  local t0 t1 left=$keys batch
  t0=$(now)
  while [ "$left" -gt 0 ]; do
    batch=$(( left < 100000 ? left : 100000 ))
    "$custos" key create --app BENCH --count "$batch" --activate >/dev/null
    left=$(( left - batch ))
  done
  t1=$(now); r_create=$(secs "$t0" "$t1")
  "$custos" mk load-new --generate >/dev/null
  "$custos" mk activate >/dev/null
  t0=$(now)
  /usr/bin/time -f "%M" -o "$work/rss" "$custos" mk reencipher >/dev/null
  t1=$(now); r_reenc=$(secs "$t0" "$t1"); r_reenc_rss=$(cat "$work/rss")

  "$custos" key create DSET.PRIM.DS.key001 --activate >/dev/null
  "$custos" key create DSET.PRIM.KS.key001 --activate >/dev/null
  "$custos" policy add bench --pattern 'BENCH.**' --volume default --key DSET.PRIM.DS.key001 >/dev/null
  t0=$(now)
  "$custos" ds import "$work/files" --prefix BENCH >/dev/null
  t1=$(now); r_import=$(secs "$t0" "$t1")
  local first middle
  first=$("$custos" key ls --limit 1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["label"])')
  middle=$(python3 -c "import re; m=re.match(r'(.*key)(\d+)$', '$first'); print(m.group(1) + str(int(m.group(2)) + $keys // 2).zfill(len(m.group(2))))")
  local one_ds
  one_ds=$("$custos" ds ls --limit 1 --after "BENCH.F$(printf '%07d' $((datasets / 2)))" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["name"])')

  # The requests measure the steady state: PostgreSQL's tables vacuumed
  # and analyzed after the bulk load (what autovacuum does within a minute
  # of it) and its dirty pages written; both backends' files synced.
  if [ "$backend" = postgres ]; then
    runuser -u postgres -- "$pgbin/psql" -q -h "$pgdir" -p 5499 -U custos bench -c 'VACUUM ANALYZE' -c 'CHECKPOINT' >/dev/null
  fi
  sync

  serve a 18501 "$repo_line"
  local auth curlx
  auth="Authorization: Basic $(printf '%s:%s' "$CUSTOS_USER" "$CUSTOS_CREDENTIAL" | base64 -w0)"
  curlx=(curl -s -o /dev/null -w '%{time_total}\n' --cacert "$work/ca.pem" -H "$auth" -H 'Content-Type: application/json')
  # Warm: the first request pays the credential check, remembered after.
  "${curlx[@]}" -d "{\"op\":\"ds-info\",\"name\":\"$one_ds\"}" https://localhost:18501/v1/ops >/dev/null
  local ts=() i
  for i in $(seq 21); do ts+=("$("${curlx[@]}" -d "{\"op\":\"key-list\",\"limit\":100,\"after\":\"$middle\"}" https://localhost:18501/v1/ops)"); done
  r_page=$(echo "$(median "${ts[@]}") * 1000" | bc -l)
  ts=()
  for i in $(seq 21); do ts+=("$("${curlx[@]}" -d "{\"op\":\"ds-info\",\"name\":\"$one_ds\"}" https://localhost:18501/v1/ops)"); done
  r_info=$(echo "$(median "${ts[@]}") * 1000" | bc -l)

  local client=(env -u CUSTOS_PASSPHRASE -u CUSTOS_VAULT "$custos" --server "https://localhost:18501" --ca "$work/ca.pem")
  local p=() g=() round
  for round in 1 2 3; do
    sync; t0=$(now); "${client[@]}" ds put "BIG.R$round" "$src" >/dev/null; t1=$(now); p+=("$(secs "$t0" "$t1")")
    sync; t0=$(now); "${client[@]}" ds get "BIG.R$round" -o "$work/out.bin" >/dev/null; t1=$(now); g+=("$(secs "$t0" "$t1")")
    cmp -s "$src" "$work/out.bin" || { echo "the read differs from what was written" >&2; exit 1; }
    rm -f "$work/out.bin"
  done
  r_put=$(printf '%.2f' "$(echo "1073741824 / $(median "${p[@]}") / 1000000000" | bc -l)")
  r_get=$(printf '%.2f' "$(echo "1073741824 / $(median "${g[@]}") / 1000000000" | bc -l)")

  local plain
  plain=$(head -c 1024 /dev/urandom | base64 -w0)
  cat > "$work/encrypt.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"plaintext":"$plain","context":{"bench":"1"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "${auth#Authorization: }"
LUA
  local ks=/v1/keys/DSET.PRIM.KS.key001/encrypt
  wrk -t2 -c32 -d20s -s "$work/encrypt.lua" "https://127.0.0.1:18501$ks" > "$work/ks1.txt"
  r_ks1=$(awk '/Requests\/sec/ {print $2}' "$work/ks1.txt")
  r_ks2=""
  if [ "$backend" = postgres ]; then
    serve b 18502 "$repo_line"
    wrk -t1 -c16 -d20s -s "$work/encrypt.lua" "https://127.0.0.1:18501$ks" > "$work/ks2a.txt" &
    local w=$!
    wrk -t1 -c16 -d20s -s "$work/encrypt.lua" "https://127.0.0.1:18502$ks" > "$work/ks2b.txt"
    wait $w
    r_ks2=$(echo "$(awk '/Requests\/sec/ {print $2}' "$work/ks2a.txt") + $(awk '/Requests\/sec/ {print $2}' "$work/ks2b.txt")" | bc -l)
  fi
  for s in "${servers[@]}"; do kill -TERM "$s" 2>/dev/null || true; wait "$s" 2>/dev/null || true; done
  servers=()
  "$custos" audit verify >/dev/null
  [ "$(python3 -c "print(int($(printf '%s' "$r_ks1") > 0))")" = 1 ]
}

run_backend sqlite
s_create=$r_create s_reenc=$r_reenc s_rss=$r_reenc_rss s_import=$r_import s_page=$r_page s_info=$r_info s_put=$r_put s_get=$r_get s_ks1=$r_ks1
run_backend postgres
pgversion=$("$pgbin/postgres" --version | awk '{print $3}')

f() { printf "%.${2:-2}f" "$1"; }
cat > /tmp/postgres-section.md <<MD
<!-- postgres:begin -->
Measured $(date -u +%Y-%m-%d) on this machine ($(nproc) cores), by \`bench/postgres.sh $keys $datasets\`, release build, software HSM; PostgreSQL $pgversion on the same machine over a Unix socket (fsync on, shared_buffers 512 MB); the servers over loopback TLS 1.3. One vault per backend, $keys keys and $datasets datasets in each.

| what | SQLite (custos.db) | PostgreSQL | target |
|---|---|---|---|
| \`key create\` of $keys keys (100,000 per command) | $(f "$s_create" 1) s | $(f "$r_create" 1) s | |
| \`mk reencipher\`: $keys keys OLD → CURRENT | $(f "$s_reenc" 1) s ($(f "$(echo "$s_rss / 1024" | bc -l)" 0) MiB) | $(f "$r_reenc" 1) s ($(f "$(echo "$r_reenc_rss / 1024" | bc -l)" 0) MiB) | ≤ 60 s on PostgreSQL |
| \`ds import\` of $datasets files of 64 bytes | $(f "$s_import" 1) s | $(f "$r_import" 1) s | |
| one page of \`key ls\` (100 keys, mid-keystore) through the server | $(f "$s_page" 1) ms | $(f "$r_page" 1) ms | < 20 ms |
| \`ds info\` through the server | $(f "$s_info" 1) ms | $(f "$r_info" 1) ms | < 20 ms |
| 1 GiB \`ds put\` through the server | $s_put GB/s | $r_put GB/s | within 10% |
| 1 GiB \`ds get\` through the server | $s_get GB/s | $r_get GB/s | within 10% |
| key service \`encrypt\` (1 KiB, 32 connections), one server | $s_ks1 req/s | $r_ks1 req/s | |
| the same, two servers on one catalog (16 connections each) | — | $(f "$r_ks2" 0) req/s | |

Page and \`ds info\` times are curl's, per request (TLS connection made
per request included), median of 21, after the import was synced (on
PostgreSQL: \`VACUUM ANALYZE\` and \`CHECKPOINT\`, the steady state that
autovacuum reaches within a minute of a bulk load). The put and get figures are medians
of three rounds. Every request the key service answered is audited in the
one chain; \`audit verify\` passes after each run.
<!-- postgres:end -->
MD
cat /tmp/postgres-section.md
replace_section postgres 'The catalog on PostgreSQL — `bench/postgres.sh`' /tmp/postgres-section.md
rm -rf "$work"
