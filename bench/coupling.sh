#!/usr/bin/env bash
# Coupling to an unrelated writer (issue 19, item 4): how much a Custos
# import of many small files slows while another process streams writes to
# the same filesystem, against restic's first backup of the same files in
# the same run.
#
# N files of 1-64 KiB (default 10,000; `make_small_tree`): Custos `ds
# import` into a new vault (a key per dataset) and restic's first backup
# into a new repository, each five times quiet and five times beside each
# of two writers, the tools taking turns. The issue's writer, "buffered",
# is `dd` of zeros through the page cache into one file, rewritten in 4 GiB
# passes: it keeps the disk busy with write-back but also takes a whole
# core (copying into the page cache), so on a small machine it measures
# how much of a core each tool loses as much as its I/O coupling. The
# second, "direct", is the same `dd` with O_DIRECT and 4 MiB writes: it
# keeps the device's queue full with little CPU, so what a tool loses
# beside it is waiting behind another process's I/O. Each writer starts
# 2 s before the timed command and stops after it; the disk is settled
# (sync) before each run. A slowdown is the median beside a writer over
# the median quiet. Results replace the section between the coupling
# markers in docs/PERFORMANCE.md.
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
# start_writer buffered|direct
start_writer() {
  local how=(bs=1M count=4096)
  [ "$1" = direct ] && how=(bs=4M count=1024 oflag=direct)
  ( while :; do dd if=/dev/zero of="$work/noise" "${how[@]}" status=none || exit; done ) &
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
rounds=5
med() { sort -g | sed -n "$(((rounds + 1) / 2))p"; }
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

# The tools take turns within each round (quiet, then beside each writer):
# the disk's state drifts over a run (a later run beside a writer is often
# slower), and taking turns gives both tools the same drift.
declare -A t
tools=(custos_import restic_backup)
modes=(quiet buffered direct)
for _ in $(seq "$rounds"); do
  for mode in "${modes[@]}"; do
    for tool in "${tools[@]}"; do
      sync
      [ "$mode" = quiet ] || start_writer "$mode"
      t[$tool.$mode]+=" $(s "$("$tool")")"
      stop_writer
    done
  done
done
declare -A m
for tool in "${tools[@]}"; do
  for mode in "${modes[@]}"; do
    m[$tool.$mode]=$(printf '%s\n' ${t[$tool.$mode]} | med)
    echo "$tool $mode:${t[$tool.$mode]}" >&2
  done
done
ratio() { printf '%.2f' "$(echo "${m[$1.$2]} / ${m[$1.quiet]}" | bc -l)"; }
row() { echo "| $2 | $(s "${m[$1.quiet]}") s | $(s "${m[$1.buffered]}") s ($(ratio "$1" buffered)×) | $(s "${m[$1.direct]}") s ($(ratio "$1" direct)×) |"; }

cat > "$work/section.md" <<MD
<!-- coupling:begin -->
Measured $(date -u +%Y-%m-%d) on this machine ($(nproc) cores), by \`bench/coupling.sh $n\`, Custos $(git -C "$root" rev-parse --short HEAD)${CUSTOS_BIN:+ (measured: $CUSTOS_BIN)}, restic $(restic version | awk '{print $2}'): $n files of 1–64 KiB; medians of $rounds (the tools taking turns), quiet and beside one \`dd\` streaming to the same filesystem through the page cache ("buffered") or with O_DIRECT ("direct"); slowdown against quiet in brackets.

| | quiet | beside buffered writes | beside direct writes |
|---|---|---|---|
$(row custos_import 'Custos `ds import` (a key per dataset)')
$(row restic_backup 'restic first backup')

Each run, in seconds — Custos quiet:${t[custos_import.quiet]}; buffered:${t[custos_import.buffered]}; direct:${t[custos_import.direct]}. restic quiet:${t[restic_backup.quiet]}; buffered:${t[restic_backup.buffered]}; direct:${t[restic_backup.direct]}.
<!-- coupling:end -->
MD
replace_section coupling 'Coupling to an unrelated writer — `bench/coupling.sh`' "$work/section.md"
cat "$work/section.md"
