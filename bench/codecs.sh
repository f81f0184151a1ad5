#!/usr/bin/env bash
# LZ4 against zstd for Custos's chunks (issue 19, item 6; ADR 0033): the
# stored bytes under Custos's keep-if-it-saves-1/16 rule, and single-core
# compression and decompression speed, on the small-files set (10,000 files
# of 1-64 KiB, half random and half text: bench/small-files.sh's) and on
# compare.sh's 2 GiB set (200 files of 1-19 MiB, half random, half text),
# each cut into 1 MiB chunks as `ds put` cuts it; and, as real text and
# code, the Python standard library this machine has (/usr/lib/python3.N:
# sources and bytecode), since the two generated sets are either random or
# one repeated line. The codecs are the Rust
# crates Custos uses or would use (lz4_flex, zstd), built from
# bench/codecs/ (not part of the workspace). Results replace the section
# between the codecs markers in docs/PERFORMANCE.md.
#
# Usage: bench/codecs.sh      (WORKDIR: $CODECS_WORK, default /tmp/custos-codecs; needs ~3 GiB)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
root=$(pwd)
work=${CODECS_WORK:-/tmp/custos-codecs}
rm -rf "$work" && mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
cargo build --quiet --release --locked --manifest-path bench/codecs/Cargo.toml --target-dir "$work/target"
tool="$work/target/release/custos-codecs-bench"
make_small_tree "$work/small" 10000
make_big_tree "$work/big"
real=$(ls -d /usr/lib/python3.[0-9]* 2>/dev/null | head -1)
sets=(small big)
[ -n "$real" ] && sets+=(python)
rows=""
for set in "${sets[@]}"; do
  if [ "$set" = python ]; then out=$("$tool" "$real"); else out=$("$tool" "$work/$set"); fi
  echo "$set: $out" >&2
  head=$(echo "$out" | head -1)
  while IFS=$'\t' read -r codec bytes ratio comp decomp; do
    label=$set; [ "$set" = python ] && label=$(basename "$real")
  rows+="| $label ($head) | $codec | $(printf '%.0f' "$(echo "$bytes / 1000000" | bc -l)") MB | $ratio | $(printf '%.0f' "$comp") MB/s | $(printf '%.0f' "$decomp") MB/s |"$'\n'
  done < <(echo "$out" | tail -n +2)
done
cat > "$work/section.md" <<MD
<!-- codecs:begin -->
Measured $(date -u +%Y-%m-%d) on this machine ($(nproc) cores), by \`bench/codecs.sh\` (Custos $(git -C "$root" rev-parse --short HEAD)): the stored bytes after Custos's rule (a chunk is kept compressed only when that saves a sixteenth; a chunk of 256 KiB or more is first probed on its first 64 KiB), and one core's compression (probe included) and decompression speed over all the set's bytes.

| set | codec | stored | of the plaintext | compress | decompress |
|---|---|---|---|---|---|
$rows
<!-- codecs:end -->
MD
replace_section codecs 'Chunk compression: LZ4 against zstd — `bench/codecs.sh`' "$work/section.md"
cat "$work/section.md"
