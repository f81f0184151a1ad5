#!/usr/bin/env bash
# A command's fixed cost: what one CLI command costs before it does any
# work worth measuring. A vault with one small dataset; `ds get` of it,
# `ds ls` and `custos --version`, each run RUNS times (default 50); the
# median wall time and the mean CPU time (user + system) per command.
# Results replace the section between the command-cost markers in
# docs/PERFORMANCE.md unless NO_DOC=1.
#
# Usage: bench/command-cost.sh [RUNS]   (CUSTOS_BIN=path measures that binary
#        instead of building this checkout's)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
root=$(pwd)
runs=${1:-50}
custos_binary
work=$(mktemp -d /tmp/custos-command-cost.XXXXXX)
trap 'rm -rf "$work"' EXIT
export CUSTOS_VAULT="$work/vault" CUSTOS_PASSPHRASE="bench-not-secret"
bench_vault
echo "a small dataset" | "$custos" ds put BENCH.ONE > /dev/null

# measure CMD...: "median-wall-ms mean-cpu-ms" over $runs runs (the CPU
# time of the children, user + system, from getrusage).
measure() {
  python3 - "$runs" "$@" <<'PY'
import resource, statistics, subprocess, sys, time
runs, cmd = int(sys.argv[1]), sys.argv[2:]
walls, cpus = [], []
for _ in range(runs):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    walls.append(time.perf_counter() - t0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
print(f"{statistics.median(walls) * 1000:.1f} {statistics.mean(cpus) * 1000:.1f}")
PY
}
read -r get_w get_c < <(measure "$custos" ds get BENCH.ONE -o "$work/out")
read -r ls_w ls_c < <(measure "$custos" ds ls)
read -r v_w v_c < <(measure "$custos" --version)
cat > "$work/section.md" <<MD
<!-- command-cost:begin -->
Measured $(date -u +%Y-%m-%d) on this machine ($(nproc) cores), by \`bench/command-cost.sh $runs\`, Custos $(git -C "$root" rev-parse --short HEAD) (release build), embedded vault with the software HSM (Argon2id at the bench's 19 MiB, 2 passes) and a script token; $runs runs each.

| command | wall (median) | CPU, user + system (mean) |
|---|---|---|
| \`ds get\` of a 16-byte dataset | $get_w ms | $get_c ms |
| \`ds ls\` (one dataset) | $ls_w ms | $ls_c ms |
| \`custos --version\` | $v_w ms | $v_c ms |
<!-- command-cost:end -->
MD
cat "$work/section.md"
[ -n "${NO_DOC:-}" ] || replace_section command-cost "A command's fixed cost — \`bench/command-cost.sh\`" "$work/section.md"
