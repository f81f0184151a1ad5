#!/usr/bin/env bash
# Many small files (issue 19): Custos against restic, borg and rustic on the
# same trees, in one run.
#
# For each size N (default 10,000 and 100,000): N files of 1-64 KiB in
# directories of 100, half random bytes and half compressible text. Each
# tool, on its own copy of the tree:
#   - first protection: Custos `ds import` (default policy: a key per
#     dataset) + logical `backup run` to a second volume; the others' first
#     backup;
#   - incremental after 1% of the files change: Custos `ds import --replace`
#     (which reads every file) + `backup run`; the others' second backup;
#   - plaintext out: Custos `ds export` of every dataset; the others'
#     restore of everything;
#   - stored bytes: Custos's primary volume and its logical copy; the
#     others' repositories.
# Every time is wall-clock for the whole command (or loop), page cache warm,
# disk settled (sync) before each timed step. rustic is used when on PATH or
# in ~/.cache/custos-bench/rustic; otherwise it is built there with
# `cargo install rustic-rs` unless SKIP_RUSTIC=1.
# Results replace the section between the small-files markers in
# docs/PERFORMANCE.md.
#
# Usage: bench/small-files.sh [N ...]      (WORKDIR: $SMALL_WORK, default
#        /tmp/custos-small; needs ~40 GiB free at 100,000 files: four copies of the tree, three restores, every repository)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
root=$(pwd)
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(10000 100000)
work=${SMALL_WORK:-/tmp/custos-small}
need=()
command -v restic >/dev/null 2>&1 || need+=(restic)
command -v borg >/dev/null 2>&1 || need+=(borgbackup)
command -v bc >/dev/null 2>&1 || need+=(bc)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}"; fi
cache="${XDG_CACHE_HOME:-$HOME/.cache}/custos-bench"
if ! command -v rustic >/dev/null 2>&1; then
  if [ ! -x "$cache/rustic/bin/rustic" ] && [ -z "${SKIP_RUSTIC:-}" ]; then
    cargo install --quiet --locked rustic-rs --root "$cache/rustic"
  fi
  [ -x "$cache/rustic/bin/rustic" ] && export PATH="$cache/rustic/bin:$PATH"
fi
custos_binary

settle() { sync; sleep 2; }
s() { printf '%.2f' "$1"; }
mb() { printf '%.0f' "$(echo "$1 / 1000000" | bc -l)"; }
bytes() { du -sb "$@" | awk '{n += $1} END {printf "%.0f\n", n}'; }

# change DIR N: new random content in every 100th file (1%), same size.
change() {
  python3 - "$1" "$2" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(0, n, 100):
    p = os.path.join(root, f"d{i // 100:04}", f"f{i:06}.dat")
    size = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.write(os.urandom(size))
PY
}

# The section so far: written after each size, so that a run cut short
# keeps the sizes it finished.
write_section() {
  cat > /tmp/small-files-section.md <<MD
<!-- small-files:begin -->
Measured $(date -u +%Y-%m-%d) on this machine ($(nproc) cores), by \`bench/small-files.sh ${sizes[*]}\`, Custos $(git -C "$root" rev-parse --short HEAD) (release build, default policy: a key per dataset); files of 1–64 KiB, half random and half text; page cache warm, disk settled before each timed step; one run.
$rows
"Plaintext out" is, for Custos, \`ds export\` of every dataset, and for
the others a restore of everything. Custos's incremental includes the \`ds import
--replace\` that brings the changed files in (it reads the files whose size,
times or inode changed since the last import: ADR 0036).
<!-- small-files:end -->
MD
  replace_section small-files 'Many small files against restic, borg and rustic — `bench/small-files.sh`' /tmp/small-files-section.md
}

# peer LABEL TREE REPO FIRST SECOND RESTORE: time a peer's first backup
# of TREE, its backup after the 1% change and its restore (shell commands),
# and add its row; sets last_full and last_incr.
peer() {
  local label=$1 tree=$2 repo=$3 back
  settle
  last_full=$(timed bash -c "$4")
  change "$tree" "$n"
  settle
  last_incr=$(timed bash -c "$5")
  settle
  back=$(timed bash -c "$6")
  peer_rows+="| $label | $(s "$last_full") s | $(s "$last_incr") s | $(s "$back") s | $(mb "$(bytes "$repo")") MB |
"
}

rows=""
for n in "${sizes[@]}"; do
  rm -rf "$work" && mkdir -p "$work"
  make_small_tree "$work/data" "$n"
  total=$(bytes "$work/data")
  for peer in r b u; do cp -r "$work/data" "$work/data-$peer"; done
  settle
  find "$work" -type f -path "$work/data*" -exec cat {} + > /dev/null

  # Custos.
  export CUSTOS_VAULT="$work/vault" CUSTOS_PASSPHRASE="bench-not-secret"
  bench_vault
  "$custos" volume add offsite --path "$work/offsite" --site B > /dev/null
  settle
  c_import=$(timed "$custos" ds import "$work/data" --prefix SMALL)
  settle
  c_backup=$(timed "$custos" backup run --to offsite)
  c_stored=$(bytes "$work/vault/volumes/default")
  c_copy=$(bytes "$work/offsite")
  change "$work/data" "$n"
  settle
  c_reimport=$(timed "$custos" ds import "$work/data" --prefix SMALL --replace)
  settle
  c_incr=$(timed "$custos" backup run --to offsite)
  settle
  c_export="$(s "$(timed "$custos" ds export SMALL "$work/custos-out")") s"
  [ "$(find "$work/custos-out" -type f | wc -l)" = "$n" ] || { echo "the export wrote too few files" >&2; exit 1; }

  # The others: each on its own copy of the tree.
  peer_rows=""
  export RESTIC_PASSWORD="bench-not-secret" RESTIC_REPOSITORY="$work/restic"
  restic init > /dev/null
  peer "$(restic version | cut -d' ' -f1-2)" "$work/data-r" "$work/restic" \
    "restic backup '$work/data-r'" "restic backup '$work/data-r'" "restic restore latest --target '$work/restic-out'"
  r_full=$last_full r_incr=$last_incr
  export BORG_PASSPHRASE="bench-not-secret" BORG_REPO="$work/borg"
  borg init -e repokey > /dev/null 2>&1
  mkdir -p "$work/borg-out"
  peer "$(borg --version) (lz4)" "$work/data-b" "$work/borg" \
    "borg create ::a '$work/data-b'" "borg create ::b '$work/data-b'" "cd '$work/borg-out' && borg extract ::b"
  if command -v rustic >/dev/null 2>&1; then
    export RUSTIC_PASSWORD="bench-not-secret" RUSTIC_REPOSITORY="$work/rustic"
    rustic init > /dev/null 2>&1
    peer "rustic $(rustic --version 2>/dev/null | awk '{print $2}')" "$work/data-u" "$work/rustic" \
      "rustic backup '$work/data-u'" "rustic backup '$work/data-u'" "rustic restore latest '$work/rustic-out'"
  fi

  c_full=$(echo "$c_import + $c_backup" | bc -l)
  c_inc=$(echo "$c_reimport + $c_incr" | bc -l)
  rows+="
### $n files, $(mb "$total") MB

| | first protection | incremental (1% changed) | plaintext out | stored |
|---|---|---|---|---|
| Custos: import + logical copy | $(s "$c_full") s (import $(s "$c_import") + copy $(s "$c_backup")) | $(s "$c_inc") s (import --replace $(s "$c_reimport") + copy $(s "$c_incr")) | $c_export | $(mb "$c_stored") MB primary + $(mb "$c_copy") MB copy |
${peer_rows}

Custos against restic: first protection $(printf '%.1f' "$(echo "$c_full / $r_full" | bc -l)")× the time, incremental $(printf '%.1f' "$(echo "$c_inc / $r_incr" | bc -l)")×.
"
  rm -rf "$work"
  write_section
done
cat /tmp/small-files-section.md

