#!/usr/bin/env bash
# The machine's own limits for writing 1 GiB durably, to read the copy
# figures of compare.sh against: direct writes to one file and to 1 MiB
# files (what a copy of 1 MiB chunks does), each followed by `sync`; and
# `cp -r` of a warm 1 GiB tree with and without `sync`. Every time is
# wall-clock, median of three, disk settled (`sync`) before each. Results
# replace the section between the disk-floor markers in docs/PERFORMANCE.md.
#
# Usage: bench/disk-floor.sh [WORKDIR]      (needs ~8 GiB free)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
work=${1:-/tmp/custos-disk-floor}
command -v fio >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq fio; }
command -v bc >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq bc; }
rm -rf "$work" && mkdir -p "$work/src"
for i in $(seq 0 255); do head -c $((4 << 20)) /dev/urandom > "$work/src/f$i"; done
cat "$work"/src/* > /dev/null

t() { local t0 t1; t0=$(date +%s.%N); "$@" > /dev/null 2>&1; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
median3() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
measure() {  # measure CMD: median of three runs of CMD DEST, each DEST new under $work/out
  local a=() i
  for i in 1 2 3; do
    sync; sleep 2
    a+=("$(t "$1" "$work/out/$1-$i")")
  done
  median3 "${a[@]}"
}
mkdir -p "$work/out"
dd_one() { dd if=/dev/zero of="$1" bs=1M count=1024 oflag=direct status=none && sync; }
fio_files() {  # 4 writers, 256 files of 1 MiB each, direct I/O, then sync
  mkdir -p "$1" && fio --name=files --directory="$1" --nrfiles=256 --filesize=1M --size=256M --bs=1M \
    --direct=1 --rw=write --numjobs=4 --ioengine=psync --create_on_open=1 --file_service_type=sequential >/dev/null && sync
}
fio_big() {  # 4 writers, one 256 MiB file each, direct I/O, then sync
  mkdir -p "$1" && fio --name=big --directory="$1" --nrfiles=1 --size=256M --bs=1M \
    --direct=1 --rw=write --numjobs=4 --ioengine=psync >/dev/null && sync
}
cp_plain() { cp -r "$work/src" "$1"; }
cp_synced() { cp -r "$work/src" "$1" && sync; }

d_one=$(measure dd_one)
d_files=$(measure fio_files)
d_big=$(measure fio_big)
c_plain=$(measure cp_plain)
c_sync=$(measure cp_synced)

gbps() { printf '%.2f' "$(echo "1073741824 / $1 / 1000000000" | bc -l)"; }
row() { echo "| $1 | $(printf '%.2f' "$2") s | $(gbps "$2") GB/s |"; }
cat > "$work/section.md" <<MD
<!-- disk-floor:begin -->
Measured $(date -u +%Y-%m-%d) on this machine ($(nproc) cores), by \`bench/disk-floor.sh\`: 1 GiB each way, median of three, disk settled before each. $(fio --version).

| what (1 GiB) | time | throughput |
|---|---|---|
$(row "\`dd oflag=direct\`, one file, then \`sync\`" "$d_one")
$(row "fio, 4 writers × 256 files of 1 MiB, direct, then \`sync\`" "$d_files")
$(row "fio, 4 writers × one 256 MiB file, direct, then \`sync\`" "$d_big")
$(row "\`cp -r\` of 256 files of 4 MiB, source cached" "$c_plain")
$(row "\`cp -r\` of the same, then \`sync\`" "$c_sync")

A durable copy of 1 GiB cannot take less than the direct-write rows (the
fio rows include fio's own start-up); a plain \`cp -r\` returns before its
data reaches the disk, so it can.
<!-- disk-floor:end -->
MD
cat "$work/section.md"
replace_section disk-floor 'The disk itself — `bench/disk-floor.sh`' "$work/section.md"
rm -rf "$work"
