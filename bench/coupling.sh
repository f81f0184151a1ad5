#!/usr/bin/env bash
# Coupling to an unrelated writer (issue 19, item 4): how much a Custos
# import of many small files slows while another process streams buffered
# writes to the same filesystem, against restic's first backup of the same
# files in the same run.
#
# N files of 1-64 KiB (default 10,000; `make_small_tree`). Each tool, three
# times quiet and three times beside the writer, alternating: Custos `ds
# import` into a new vault (a key per dataset) and restic's first backup
# into a new repository. The writer is `dd` of zeros through the page cache
# into one file, rewritten in 4 GiB passes, started 2 s before the timed
# command and stopped after it. The disk is settled (sync) before each
# run. The slowdown is the median beside the writer over the median quiet.
# Results replace the section between the coupling markers in
# docs/PERFORMANCE.md.
#
# Usage: bench/coupling.sh [N]      (WORKDIR: $COUPLING_WORK, default
#        /tmp/custos-coupling; needs about 10 GiB free)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
root=$(pwd)
n=${1:-10000}
work=${COUPLING_WORK:-/tmp/custos-coupling}
need=()
command -v restic >/dev/null 2>&1 || need+=(restic)
command -v bc >/dev/null 2>&1 || need+=(bc)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}"; fi
custos_binary
export CUSTOS_PASSPHRASE="bench-not-secret" RESTIC_PASSWORD="bench-not-secret"

rm -rf "$work" && mkdir -p "$work"
trap 'stop_writer; rm -rf "$work"' EXIT
make_small_tree "$work/tree" "$n"
cat "$work"/tree/*/* > /dev/null

writer=""
start_writer() {
  ( while :; do dd if=/dev/zero of="$work/noise" bs=1M count=4096 status=none || exit; done ) &
  writer=$!
  sleep 2
}
stop_writer() {
  if [ -n "$writer" ]; then
    kill "$writer" 2>/dev/null || true
    wait "$writer" 2>/dev/null || true
    pkill -f "of=$work/noise" 2>/dev/null || true
    writer=""
  fi
  rm -f "$work/noise"
}
med() { sort -g | sed -n 2p; }
s() { printf '%.2f' "$1"; }

custos_import() {
  rm -rf "$work/vault" && sync
  export CUSTOS_VAULT="$work/vault"
  bench_vault
  timed "$custos" ds import --prefix F "$work/tree"
}
restic_backup() {
  rm -rf "$work/restic" && sync
  restic init --repo "$work/restic" > /dev/null
  timed restic --repo "$work/restic" backup --quiet "$work/tree"
}

declare -A quiet noisy
for tool in custos_import restic_backup; do
  q=() b=()
  for _ in 1 2 3; do
    sync
    q+=("$("$tool")")
    sync
    start_writer
    b+=("$("$tool")")
    stop_writer
  done
  quiet[$tool]=$(printf '%s\n' "${q[@]}" | med)
  noisy[$tool]=$(printf '%s\n' "${b[@]}" | med)
  echo "$tool: quiet ${q[*]}; beside the writer ${b[*]}" >&2
done
ratio() { printf '%.1f' "$(echo "${noisy[$1]} / ${quiet[$1]}" | bc -l)"; }

cat > "$work/section.md" <<MD
<!-- coupling:begin -->
Measured $(date -u +%Y-%m-%d) on this machine ($(nproc) cores), by \`bench/coupling.sh $n\`, Custos $(git -C "$root" rev-parse --short HEAD)${CUSTOS_BIN:+ (measured: $CUSTOS_BIN)}, restic $(restic version | awk '{print $2}'): $n files of 1–64 KiB; medians of 3, quiet and beside one \`dd\` streaming buffered writes to the same filesystem.

| | quiet | beside the writer | slowdown |
|---|---|---|---|
| Custos \`ds import\` (a key per dataset) | $(s "${quiet[custos_import]}") s | $(s "${noisy[custos_import]}") s | $(ratio custos_import)× |
| restic first backup | $(s "${quiet[restic_backup]}") s | $(s "${noisy[restic_backup]}") s | $(ratio restic_backup)× |
<!-- coupling:end -->
MD
replace_section coupling 'Coupling to an unrelated writer — `bench/coupling.sh`' "$work/section.md"
cat "$work/section.md"
