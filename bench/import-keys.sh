#!/usr/bin/env bash
# `ds import` of many small files under the default policy (a new key per
# dataset), at two sizes: does naming and making keys scale linearly?
# Reports wall, user and system seconds; user time is where key naming
# shows (it used to read every key for each new one).
#
# Usage: bench/import-keys.sh [N] [WORKDIR]   (default 3000, then 2N; /tmp/custos-bench-import)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
n=${1:-3000}
work=${2:-/tmp/custos-bench-import}
cargo build --release --locked -p custos-cli
custos="$(pwd)/target/release/custos"
rows=""
for count in "$n" "$((2 * n))"; do
  rm -rf "$work" && mkdir -p "$work/src"
  python3 - "$work/src" "$count" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f"f{i:06d}.dat"), "wb") as f:
        f.write(os.urandom(4096))
PY
  export CUSTOS_VAULT="$work/vault" CUSTOS_PASSPHRASE="bench-passphrase-not-secret"
  bench_vault
  sync
  t=$( { /usr/bin/time -f '%e %U %S' "$custos" ds import "$work/src" --prefix IMP >/dev/null; } 2>&1 | tail -1)
  rows+="| $count files of 4 KiB | $(echo "$t" | awk '{print $1}') s | $(echo "$t" | awk '{print $2}') s | $(echo "$t" | awk '{print $3}') s |"$'\n'
done
sec="$work/section.md"
{
  echo "<!-- import-keys:begin -->"
  echo "Measured $(date -u +%Y-%m-%d) on this machine ($(nproc) cores) by \`bench/import-keys.sh $n\`; release build,"
  echo "default policy (a new key per dataset), one \`ds import\` each."
  echo
  echo "| what | wall | user | system |"
  echo "|---|---|---|---|"
  printf '%s' "$rows"
  echo "<!-- import-keys:end -->"
} > "$sec"
replace_section import-keys "Many small datasets, a key each — \`bench/import-keys.sh\`" "$sec"
cat "$sec"
rm -rf "$work"
