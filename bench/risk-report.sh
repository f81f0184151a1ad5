#!/usr/bin/env bash
# The risk report at scale: 10,000 datasets with 30 backup generations each
# (300,000 copies), in 100 applications, two sites, a mirror, two keystore
# backups. Times `custos risk report` in JSON and as a table (median of 3,
# after one untimed run), and `--dual` once. The report opens the HSM (the
# passphrase is set) and checks every key. The issue's budget is 2 s and
# 300 MiB.
# Results replace the section between the risk markers in docs/PERFORMANCE.md.
#
# Usage: bench/risk-report.sh [DATASETS] [GENERATIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
root=$(pwd)
n=${1:-10000}
g=${2:-30}
command -v bc >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq bc; }
cargo build --release --locked -p custos-cli
cargo build --release --locked -p custos-risk --example populate
work=$(mktemp -d /tmp/custos-risk-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
export CUSTOS_VAULT="$work/vault" CUSTOS_PASSPHRASE="bench-not-secret"
t0=$(date +%s.%N)
"$root/target/release/examples/populate" "$work" "$n" "$g"
t1=$(date +%s.%N)
custos="$root/target/release/custos"
"$custos" risk report --format json -o "$work/warm.json" 2>/dev/null   # untimed: records the HSM's master keys
med() { sort -n | sed -n 2p; }
timeit() { local a b; a=$(date +%s.%N); "$@" > /dev/null 2>&1; b=$(date +%s.%N); echo "$b - $a" | bc -l; }
json=$(for _ in 1 2 3; do timeit "$custos" risk report --format json -o "$work/r.json"; done | med)
table=$(for _ in 1 2 3; do timeit "$custos" risk report -o "$work/r.txt"; done | med)
dual=$(timeit "$custos" risk report --dual --format json -o "$work/d.json")
rss=$( { /usr/bin/time -f "%M" "$custos" risk report --format json -o "$work/r.json"; } 2>&1 | tail -1)
bytes=$(stat -c %s "$work/r.json")
s() { printf '%.2f' "$1"; }
cat > "$work/section.md" <<MD
<!-- risk:begin -->
Measured $(date -u +%Y-%m-%d) on this machine ($(nproc) cores), by \`bench/risk-report.sh $n $g\`: $n datasets in 100 applications, $g backups each ($((n * g)) copies, alternately logical to disk and raw to tape at site B), every tenth application on a mirrored volume, two keystore backups; release build, median of 3 after one untimed run. Custos $(git -C "$root" rev-parse --short HEAD).

| what | time | notes |
|---|---|---|
| populate the catalog (not part of the budget) | $(s "$(echo "$t1 - $t0" | bc -l)") s | real keys from the HSM; datasets and backups written in one transaction |
| \`risk report --format json\` | $(s "$json") s | peak RSS $((rss / 1024)) MiB; $((bytes / 1048576)) MiB of JSON |
| \`risk report\` (table) | $(s "$table") s | |
| \`risk report --dual --format json\` | $(s "$dual") s | 45 pairs × $n datasets |
<!-- risk:end -->
MD
cat "$work/section.md"
replace_section risk 'The risk report at scale — `bench/risk-report.sh`' "$work/section.md"
