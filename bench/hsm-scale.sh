#!/usr/bin/env bash
# Work proportional to change (issue 19, item 3): `hsm run` and the risk
# report on vaults of 1,000, 10,000 and 100,000 real datasets.
#
# For each size N: N files of 200 bytes imported (`ds import`, a key per
# dataset), an hsm rule that backs every dataset up logically to a volume
# at another site, and one untimed `backup run` so that every dataset has
# its copy. Then, timed:
#   - `hsm run` with nothing changed (median of 3);
#   - `hsm run` after 20 datasets got a new generation (`ds put`, untimed),
#     which makes their 20 logical copies (median of 3 rounds);
#   - `risk report --format json -o FILE` and `risk report -o FILE` (the
#     table), each median of 3, and their peak RSS; before each run the
#     last one's file is removed and the page cache flushed (`sync`,
#     untimed), so no run waits on the writeback of another's 300 MB;
#   - `ds ls --json` (median of 3) and its peak RSS.
# The issue's budget at 100,000 datasets: `hsm run` with 20 changed under
# 0.5 s; the risk report under 3 s and 300 MiB.
# Results replace the section between the hsm-scale markers in
# docs/PERFORMANCE.md.
#
# Usage: bench/hsm-scale.sh [N ...]     (default 1000 10000 100000; WORKDIR
#        $SCALE_WORK, default /tmp/custos-scale)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
root=$(pwd)
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 10000 100000)
work=${SCALE_WORK:-/tmp/custos-scale}
command -v bc >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq bc; }
custos_binary
export CUSTOS_PASSPHRASE="bench-not-secret"

med() { sort -n | sed -n 2p; }
s() { printf '%.2f' "$1"; }
rss() { /usr/bin/time -o "$work/rss" -f "%M" "$@" > /dev/null 2>&1; awk '{printf "%.0f", $1 / 1024}' "$work/rss"; }

rows=""
for n in "${sizes[@]}"; do
  rm -rf "$work" && mkdir -p "$work/tree"
  python3 - "$work/tree" "$n" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:04}")
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06}"), "wb") as f:
        f.write(os.urandom(200))
PY
  export CUSTOS_VAULT="$work/vault"
  bench_vault
  "$custos" volume add offsite --path "$work/offsite" --site B > /dev/null
  import=$(timed "$custos" ds import --prefix S "$work/tree")
  "$custos" hsm rule add all --pattern 'S.**' --backup-to offsite > /dev/null
  "$custos" backup run --to offsite 'S.**' > /dev/null
  idle=$(for _ in 1 2 3; do timed "$custos" hsm run; done | med)
  mapfile -t names < <("$custos" ds ls --json | python3 -c '
import json, sys
ds = json.load(sys.stdin)
step = max(1, len(ds) // 20)
for d in ds[::step][:20]:
    print(d["name"])')
  changed=$(for _ in 1 2 3; do
    for nm in "${names[@]}"; do
      head -c 200 /dev/urandom > "$work/new"
      "$custos" ds put "$nm" "$work/new" > /dev/null
    done
    timed "$custos" hsm run
  done | med)
  made=$("$custos" backup ls --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
  fresh() { rm -f "$work/r.json" "$work/r.txt"; sync; }
  risk=$(for _ in 1 2 3; do fresh; timed "$custos" risk report --format json -o "$work/r.json"; done | med)
  risk_rss=$(fresh; rss "$custos" risk report --format json -o "$work/r.json")
  table=$(for _ in 1 2 3; do fresh; timed "$custos" risk report -o "$work/r.txt"; done | med)
  table_rss=$(fresh; rss "$custos" risk report -o "$work/r.txt")
  ls_t=$(for _ in 1 2 3; do timed "$custos" ds ls --json; done | med)
  ls_rss=$(rss "$custos" ds ls --json)
  echo "N=$n import $(s "$import") s; hsm run idle $(s "$idle") s, 20 changed $(s "$changed") s ($made backups); risk report $(s "$risk") s ${risk_rss} MiB, table $(s "$table") s ${table_rss} MiB; ds ls --json $(s "$ls_t") s ${ls_rss} MiB" >&2
  rows+="| $n | $(s "$import") s | $(s "$idle") s | $(s "$changed") s | $(s "$risk") s, ${risk_rss} MiB | $(s "$table") s, ${table_rss} MiB | $(s "$ls_t") s, ${ls_rss} MiB |"$'\n'
done

cat > "$work/section.md" <<MD
<!-- hsm-scale:begin -->
Measured $(date -u +%Y-%m-%d) on this machine ($(nproc) cores), by \`bench/hsm-scale.sh ${sizes[*]}\`, Custos $(git -C "$root" rev-parse --short HEAD)${CUSTOS_BIN:+ (measured: $CUSTOS_BIN)} (release build, software HSM, SQLite catalog): N datasets of 200 bytes (a key each), one hsm rule backing all of them up logically to a volume at site B, every dataset already copied; medians of 3.

| datasets | \`ds import\` (untimed in the budget) | \`hsm run\`, nothing changed | \`hsm run\`, 20 changed | \`risk report --format json\` | \`risk report\` (table) | \`ds ls --json\` |
|---|---|---|---|---|---|---|
$rows
<!-- hsm-scale:end -->
MD
replace_section hsm-scale "Work proportional to change — \`bench/hsm-scale.sh\`" "$work/section.md"
cat "$work/section.md"
rm -rf "$work"
