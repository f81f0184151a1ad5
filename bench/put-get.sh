#!/usr/bin/env bash
# Throughput and memory of `custos ds put` / `ds get` against the machine's
# limits, in one run:
#   - AES-256-GCM sealing rate through aws-lc-rs (1 core and all cores),
#   - `cp` of the same 1 GiB file (page cache warm),
#   - custos ds put / ds get of that file, wall time and peak RSS,
#   - peak RSS of put / get of a 4 GiB stream (memory must stay flat).
# Results replace the section between the put-get markers in docs/PERFORMANCE.md.
#
# Usage: bench/put-get.sh [WORKDIR]      (default /tmp/custos-bench; needs ~12 GiB free)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
root=$(pwd)
work=${1:-/tmp/custos-bench}
command -v /usr/bin/time >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq time; }

command -v bc >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq bc; }
# The binary and the crypto example: `--examples` alone would build no binary.
cargo build --release --locked -p custos-cli
cargo build --release --locked -p custos-crypto --examples
custos="$root/target/release/custos"
gcm="$root/target/release/examples/gcm-rate"

rm -rf "$work" && mkdir -p "$work"
src="$work/random-1g.bin"
head -c 1073741824 /dev/urandom > "$src"
sync
cat "$src" > /dev/null   # warm the page cache

export CUSTOS_VAULT="$work/vault" CUSTOS_PASSPHRASE="bench-passphrase-not-secret"
# A cheap KDF so the fixed cost of unsealing does not blur the data path; it
# is measured on its own below.
bench_vault

# time_cmd LABEL CMD... → prints "seconds maxrss_kib"
time_cmd() {
  local out="$work/time.$1"; shift
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$out.rss" "$@" >/dev/null
  t1=$(date +%s.%N)
  echo "$(echo "$t1 - $t0" | bc -l) $(cat "$out.rss")"
}
rate() { printf '%.2f' "$(echo "$1 / $2 / 1000000000" | bc -l)"; }
mib() { printf '%.1f' "$(echo "$1 / 1024" | bc -l)"; }
secs() { [ "$1" = n/a ] && echo n/a || printf '%.2f' "$1"; }
bytes=1073741824

# median3 LABEL PREP CMD: run PREP untimed then CMD timed, three times ({} in
# either becomes 1, 2, 3); print the median "seconds rss".
median3() {
  local label=$1 prep=$2 cmd=$3
  for i in 1 2 3; do
    sh -c "${prep//\{\}/$i}" >/dev/null
    time_cmd "$label$i" sh -c "${cmd//\{\}/$i}"
  done | sort -n | sed -n 2p
}

read -r g1 gall < <("$gcm" | awk '{print $2}' | paste -sd' ')
# Warm-up: the first touch of fresh guest memory is slow on this VM.
cp "$src" "$work/warm.bin"; rm -f "$work/warm.bin"; cp "$src" "$work/warm.bin"; rm -f "$work/warm.bin"
read -r cp_s cp_rss < <(median3 cp "rm -f '$work/copy.bin'" "cp '$src' '$work/copy.bin'")
rm -f "$work/copy.bin"
read -r empty_s _ < <(time_cmd empty sh -c "printf '' | '$custos' ds put BENCH.EMPTY -")
# Distinct names, so no run can share chunks with an earlier one.
read -r put_s put_rss < <(median3 put "cat '$src'" "'$custos' ds put BENCH.RANDOM{} '$src'")
# Warm for get means the chunk files are cached, as the input file is for put.
chunks="$CUSTOS_VAULT/volumes/default/chunks"
read -r get_s get_rss < <(median3 get "cat '$chunks'/*/*; rm -f '$work/back.bin'" "'$custos' ds get BENCH.RANDOM{} -o '$work/back.bin'")
cmp "$src" "$work/back.bin" && rm -f "$work/back.bin"
# And once from a cold cache (root only: drop_caches).
cold_s=n/a
if [ -w /proc/sys/vm/drop_caches ]; then
  sync; echo 3 > /proc/sys/vm/drop_caches
  read -r cold_s _ < <(time_cmd cold "$custos" ds get BENCH.RANDOM1 -o "$work/cold.bin")
  rm -f "$work/cold.bin"
  cat "$src" > /dev/null
fi
# The 4 GiB stream is the random file four times over (zeros would compress
# 250:1 and measure LZ4, not the pipeline); then 4 GiB of zeros for that.
read -r put4_s put4_rss < <(time_cmd put4 sh -c "cat '$src' '$src' '$src' '$src' | '$custos' ds put BENCH.FOURGIB -")
read -r get4_s get4_rss < <(time_cmd get4 sh -c "'$custos' ds get BENCH.FOURGIB > /dev/null")
read -r putz_s putz_rss < <(time_cmd putz sh -c "head -c 4294967296 /dev/zero | '$custos' ds put BENCH.ZEROS -")
read -r getz_s getz_rss < <(time_cmd getz sh -c "'$custos' ds get BENCH.ZEROS > /dev/null")

cores=$(nproc)
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
cat > "$work/section.md" <<MD
<!-- put-get:begin -->
Measured $(date -u +%Y-%m-%d) on this machine ($cores cores, $cpu, $(free -g | awk '/Mem:/{print $2}') GiB, ext4 on virtio), by \`bench/put-get.sh\`, release build, page cache warm, 1 MiB chunks, default worker threads (max(cores, 4)); 1 GiB rows are the median of 3 runs:

| what (1 GiB of random data unless noted) | time | throughput | peak RSS |
|---|---|---|---|
| AES-256-GCM seal, aws-lc-rs, 1 core (limit) | | $g1 GB/s | |
| AES-256-GCM seal, aws-lc-rs, $cores cores (limit) | | $gall GB/s | |
| \`cp\` of the file | $(secs "$cp_s") s | $(rate $bytes "$cp_s") GB/s | $(mib "$cp_rss") MiB |
| \`custos ds put\` (file → volume, fsynced, committed) | $(secs "$put_s") s | $(rate $bytes "$put_s") GB/s | $(mib "$put_rss") MiB |
| \`custos ds get -o\` (volume → file, every chunk authenticated) | $(secs "$get_s") s | $(rate $bytes "$get_s") GB/s | $(mib "$get_rss") MiB |
| \`custos ds get -o\`, chunk files not cached (after drop_caches) | $(secs "$cold_s") s | $( [ "$cold_s" = n/a ] && echo n/a || rate $bytes "$cold_s") GB/s | |
| \`custos ds put -\` of a 4 GiB stream (the random file four times) | $(secs "$put4_s") s | $(rate $((4 * bytes)) "$put4_s") GB/s | $(mib "$put4_rss") MiB |
| \`custos ds get\` of 4 GiB to stdout | $(secs "$get4_s") s | $(rate $((4 * bytes)) "$get4_s") GB/s | $(mib "$get4_rss") MiB |
| \`custos ds put -\` of 4 GiB of zeros (LZ4: each chunk stored in ~4 KiB) | $(secs "$putz_s") s | $(rate $((4 * bytes)) "$putz_s") GB/s | $(mib "$putz_rss") MiB |
| \`custos ds get\` of those 4 GiB to stdout | $(secs "$getz_s") s | $(rate $((4 * bytes)) "$getz_s") GB/s | $(mib "$getz_rss") MiB |
| fixed cost: \`ds put\` of an empty dataset (start, unseal, commit) | $(secs "$empty_s") s | | |

Times are wall-clock for the whole command, process start and HSM unseal
included. "Warm" means the source of each operation is in the page cache: the
input file for \`cp\` and \`put\`, the chunk files for \`get\`. \`put\` includes
making every chunk and the manifest durable (direct I/O plus \`syncfs\`) and
the catalog commit; \`cp\` and \`get -o\` leave their output to the kernel's writeback.
<!-- put-get:end -->
MD
cat "$work/section.md"
replace_section put-get '`ds put` / `ds get` — `bench/put-get.sh`' "$work/section.md"
rm -rf "$work"
