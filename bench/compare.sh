#!/usr/bin/env bash
# Custos against cp, restic and borg on the same data, in one run.
#
# Data: ~2 GiB in 200 files of varied sizes, about half random and half
# compressible text. For each tool: the full backup, an incremental backup
# after 5% of the files (10 of 200) change, and a restore of everything.
# Custos's restore follows the removal of every dataset (so that it writes
# them all back), and its plaintext out (\`ds export\` of every dataset to
# files) is timed against the others' restores, which write files.
# Custos also makes a raw copy. Custos's full backup is timed as the import
# (its own store) plus the logical copy, as the issue asks. Every time is
# wall-clock for the whole command, page cache warm. Results replace the
# section between the compare markers in docs/PERFORMANCE.md.
#
# Nothing is deleted between timed runs: on ext4, creating files right after
# many deletions makes the inode allocator skip the recently deleted ones,
# which slowed whichever tool ran next by up to 30%. Everything goes at the end.
# Before each timed step the disk is settled (sync, untimed): otherwise the
# previous step's dirty pages (cp's copy above all, which cp leaves to the
# kernel) are written back during, and charged to, whatever runs next.
#
# Usage: bench/compare.sh [WORKDIR]      (needs ~24 GiB free)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
root=$(pwd)
work=${1:-/tmp/custos-compare}
need=()
command -v restic >/dev/null 2>&1 || need+=(restic)
command -v borg >/dev/null 2>&1 || need+=(borgbackup)
command -v bc >/dev/null 2>&1 || need+=(bc)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}"; fi
# CUSTOS_BIN: another build to measure (an older commit, say), same day,
# same machine; its figures then name that binary instead of this checkout.
custos_binary

rm -rf "$work" && mkdir -p "$work/data"
make_big_tree "$work/data"
total=$(du -sb "$work/data" | cut -f1)
sync; cat "$work"/data/*/* > /dev/null

t() { local t0 t1; t0=$(date +%s.%N); "$@" > /dev/null 2>&1; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
settle() { sync; sleep 2; }
cp_sync() { cp -r "$1" "$2" && sync; }
change5pct() {  # rewrite 1 MiB inside 10 of the 200 files
  for i in 3 23 43 63 83 103 123 143 163 183; do
    f="$work/data/dir$((i % 10))/file$(printf %03d $i).dat"
    dd if=/dev/urandom of="$f" bs=1M count=1 seek=0 conv=notrunc status=none
  done
  cat "$work"/data/*/* > /dev/null
}

# cp -r, the floor; and cp -r followed by sync, a durable copy like Custos's.
settle
cp_s=$(t cp -r "$work/data" "$work/cp-copy")
settle
cps_s=$(t cp_sync "$work/data" "$work/cp-copy2")
settle

# Custos.
export CUSTOS_VAULT="$work/vault" CUSTOS_PASSPHRASE="bench-not-secret"
bench_vault
"$custos" volume add offsite --path "$work/offsite" --site B > /dev/null
"$custos" volume add rawcopy --path "$work/rawcopy" --site B > /dev/null
c_import=$(t "$custos" ds import "$work/data" --prefix BENCH)
cat "$work"/vault/volumes/default/chunks/*/* > /dev/null
settle
# The other reading of "cp on the same bytes": cp of the sealed chunk files
# themselves, the very bytes the raw copy moves.
stored=$(du -sb "$work/vault/volumes/default" | cut -f1)
cpv_s=$(t cp -r "$work/vault/volumes/default" "$work/cp-volume")
settle
c_logical=$(t "$custos" backup run --to offsite)
settle
c_raw=$(t "$custos" backup run --method raw --to rawcopy)
change5pct
"$custos" ds import "$work/data" --prefix BENCH --replace > /dev/null
settle
c_incr=$(t "$custos" backup run --to offsite)
settle
c_export=$(t "$custos" ds export BENCH "$work/custos-out")
# Every dataset removed (untimed), so that the restore writes them all back
# from the logical copies.
"$custos" ds ls 'BENCH.**' --json | python3 -c 'import json, sys; [print(d["name"]) for d in json.load(sys.stdin)]' |
  while read -r name; do "$custos" ds rm "$name" > /dev/null; done
[ "$("$custos" ds ls 'BENCH.**' --json)" = "[]" ] || { echo "the datasets were not all removed" >&2; exit 1; }
settle
c_restore=$(t "$custos" restore 'BENCH.**')
[ "$("$custos" ds ls 'BENCH.**' --json | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))')" = 200 ] ||
  { echo "the restore did not bring every dataset back" >&2; exit 1; }

# restic (no compression in 0.14).
export RESTIC_PASSWORD="bench-not-secret" RESTIC_REPOSITORY="$work/restic"
restic init > /dev/null
cp -r "$work/data" "$work/data-r"   # each peer gets its own copy of the ~2 GiB tree, then its own 10-file change
settle
r_full=$(t restic backup "$work/data-r")
change_r() { for i in 3 23 43 63 83 103 123 143 163 183; do dd if=/dev/urandom of="$work/data-r/dir$((i % 10))/file$(printf %03d $i).dat" bs=1M count=1 conv=notrunc status=none; done; }
change_r
settle
r_incr=$(t restic backup "$work/data-r")
settle
r_restore=$(t restic restore latest --target "$work/restic-out")

# borg (default lz4 compression).
export BORG_PASSPHRASE="bench-not-secret" BORG_REPO="$work/borg"
borg init -e repokey > /dev/null 2>&1
cp -r "$work/data" "$work/data-b"
settle
b_full=$(t borg create "::a" "$work/data-b")
for i in 3 23 43 63 83 103 123 143 163 183; do dd if=/dev/urandom of="$work/data-b/dir$((i % 10))/file$(printf %03d $i).dat" bs=1M count=1 conv=notrunc status=none; done
settle
b_incr=$(t borg create "::b" "$work/data-b")
mkdir -p "$work/borg-out"
settle
b_restore=$(cd "$work/borg-out" && t borg extract "::b")

# rustic, when installed (cargo install rustic-rs).
ru_row=""
if command -v rustic >/dev/null 2>&1; then
  export RUSTIC_PASSWORD="bench-not-secret" RUSTIC_REPOSITORY="$work/rustic"
  rustic init > /dev/null 2>&1
  cp -r "$work/data" "$work/data-u"
  settle
  u_full=$(t rustic backup "$work/data-u")
  for i in 3 23 43 63 83 103 123 143 163 183; do dd if=/dev/urandom of="$work/data-u/dir$((i % 10))/file$(printf %03d $i).dat" bs=1M count=1 conv=notrunc status=none; done
  settle
  u_incr=$(t rustic backup "$work/data-u")
  settle
  u_restore=$(t rustic restore latest "$work/rustic-out")
  ru_row="| rustic $(rustic --version 2>/dev/null | awk '{print $2}') | $(printf '%.2f' "$u_full") s | $(printf '%.2f' "$u_incr") s | $(printf '%.2f' "$u_restore") s | (its restore) |"
fi

gbps() { printf '%.2f' "$(echo "$total / $1 / 1000000000" | bc -l)"; }
x() { printf '%.1f×' "$(echo "$1 / $2" | bc -l)"; }
s() { printf '%.2f' "$1"; }
c_full=$(echo "$c_import + $c_logical" | bc -l)
cat > "$work/section.md" <<MD
<!-- compare:begin -->
Measured $(date -u +%Y-%m-%d) on this machine ($(nproc) cores), by \`bench/compare.sh\`: $(printf '%.2f' "$(echo "$total / 1073741824" | bc -l)") GiB in 200 files (half random, half compressible text), page cache warm, disk settled (\`sync\`) before each timed step, one run. Versions: $(restic version | cut -d' ' -f1-2), $(borg --version), Custos ${CUSTOS_BIN:+$CUSTOS_BIN (not this checkout) }$(git -C "$root" rev-parse --short HEAD).

| | full backup | incremental (10 of 200 files changed) | restore everything | plaintext out to files |
|---|---|---|---|---|
| \`cp -r\` | $(s "$cp_s") s ($(gbps "$cp_s") GB/s) | | | |
| \`cp -r\` then \`sync\` (durable) | $(s "$cps_s") s ($(gbps "$cps_s") GB/s) | | | |
| \`cp -r\` of the primary volume (the $(printf '%.2f' "$(echo "$stored / 1000000000" | bc -l)") GB of sealed chunks a raw copy moves) | $(s "$cpv_s") s | | | |
| Custos: import + logical copy (separate BACK key) | $(s "$c_full") s ($(gbps "$c_full") GB/s; import $(s "$c_import") s + copy $(s "$c_logical") s) | $(s "$c_incr") s | $(s "$c_restore") s ($(gbps "$c_restore") GB/s; every dataset removed first) | $(s "$c_export") s ($(gbps "$c_export") GB/s; \`ds export\`) |
| Custos: raw copy (no key, shares the primary's) | $(s "$c_raw") s ($(gbps "$c_raw") GB/s) | | | |
| restic | $(s "$r_full") s ($(gbps "$r_full") GB/s) | $(s "$r_incr") s | $(s "$r_restore") s ($(gbps "$r_restore") GB/s) | (its restore) |
| borg (lz4) | $(s "$b_full") s ($(gbps "$b_full") GB/s) | $(s "$b_incr") s | $(s "$b_restore") s ($(gbps "$b_restore") GB/s) | (its restore) |
${ru_row}

Against the issue's targets, in this run: the logical copy ran at $(gbps "$c_logical") GB/s, $(x "$r_full" "$c_logical") restic's and $(x "$b_full" "$c_logical") borg's first backup; the raw copy ran at $(x "$cp_s" "$c_raw") the speed of \`cp -r\` ($(x "$cps_s" "$c_raw") a durable \`cp -r\` + \`sync\`; $(x "$cpv_s" "$c_raw") a \`cp -r\` of the sealed chunks themselves), $(x "$r_full" "$c_raw") restic and $(x "$b_full" "$c_raw") borg; the incremental took $(printf '%.1f' "$(echo "100 * $c_incr / $c_logical" | bc -l)")% of the full logical copy's time. Import plus logical copy together: $(x "$r_full" "$c_full") restic, $(x "$b_full" "$c_full") borg. Plaintext out: \`ds export\` ran at $(x "$r_restore" "$c_export") the speed of restic's restore and $(x "$b_restore" "$c_export") borg's$( [ -n "$ru_row" ] && echo " and $(x "$u_restore" "$c_export") rustic's").

Throughput is the user's data (the GiB above) per second for every tool;
Custos stores it compressed, so its copies move fewer bytes, as borg's do.
Custos's incremental copies only the chunks whose source changed (the 10
changed files had already been written back with \`ds import --replace\`, not
timed). Its restore writes every dataset back into the vault (each was
removed first, untimed) and verifies it; restic, borg and rustic write plain
files, which is what \`ds export\` does.
<!-- compare:end -->
MD
cat "$work/section.md"
replace_section compare 'Custos against cp, restic and borg — `bench/compare.sh`' "$work/section.md"
rm -rf "$work"
