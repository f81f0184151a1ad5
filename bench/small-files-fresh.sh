#!/usr/bin/env bash
# Small files on a freshly made filesystem: Custos's first protection
# (`ds import` + logical `backup run`) and restic's first backup of the same
# N files of 1-64 KiB, each run on an ext4 made just before it in a loop
# file, so that no earlier run's deletions slow the filesystem's inode
# allocation (on a much-used ext4 that alone moved timings by 2x; ADR 0030).
#
# Usage: bench/small-files-fresh.sh [N] [RUNS]     (needs root: mkfs, mount)
#   CUSTOS_BIN=path   another Custos binary to compare (default: this tree's
#                     release build)
# Prints one line per run; writes nothing into docs. The generated files
# stay in $FRESH_WORK (default /tmp/custos-fresh) for the next run; the
# filesystem is unmounted and its file removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
n=${1:-10000}
runs=${2:-2}
[ "$(id -u)" = 0 ] || { echo "this bench makes and mounts a filesystem: run it as root" >&2; exit 2; }
command -v restic >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq restic; }
custos_binary
scratch=${FRESH_WORK:-/tmp/custos-fresh}
img="$scratch/fs.img" mnt="$scratch/mnt" data="$scratch/data-$n"
mkdir -p "$scratch" "$mnt"
cleanup() { umount "$mnt" 2>/dev/null || true; rm -f "$img"; }
trap cleanup EXIT

[ -d "$data" ] || make_small_tree "$data" "$n"
size_mb=$(( $(du -sm "$data" | cut -f1) * 3 + 1024 ))

fresh() {
  umount "$mnt" 2>/dev/null || true
  rm -f "$img"
  truncate -s "${size_mb}M" "$img"
  mkfs.ext4 -q -F "$img"
  mount -o loop "$img" "$mnt"
  find "$data" -type f -exec cat {} + > /dev/null
  sync
}
secs() { /usr/bin/time -f %e "$@" 2>&1 >/dev/null | tail -1; }

for r in $(seq "$runs"); do
  fresh
  export CUSTOS_VAULT="$mnt/vault" CUSTOS_PASSPHRASE="bench-not-secret"
  bench_vault
  "$custos" volume add offsite --path "$mnt/offsite" --site B > /dev/null
  sync
  imp=$(secs "$custos" ds import "$data" --prefix SMALL)
  sync
  copy=$(secs "$custos" backup run --to offsite)
  stored=$(du -sb "$mnt/vault/volumes/default" | cut -f1)
  files=$(find "$mnt/vault/volumes/default" -type f | wc -l)
  fresh
  export RESTIC_PASSWORD="bench-not-secret" RESTIC_REPOSITORY="$mnt/restic"
  restic init > /dev/null
  sync
  rb=$(secs restic backup "$data")
  rstored=$(du -sb "$mnt/restic" | cut -f1)
  echo "run $r: $n files: Custos import ${imp} s + copy ${copy} s = $(echo "$imp + $copy" | bc -l) s," \
    "primary $((stored / 1000000)) MB in $files files; restic backup ${rb} s, $((rstored / 1000000)) MB"
done
