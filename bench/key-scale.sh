#!/usr/bin/env bash
# A key per dataset against one policy key (issue 19): `ds import` of the
# same N small files into a fresh vault whose default policy makes a new
# key for each dataset, and into one whose policy seals every dataset under
# one existing key; alternating, two runs each, the faster kept (the first
# import after the tree is made pays for the page cache: see
# docs/PERFORMANCE.md, small files).
#
# Usage: bench/key-scale.sh [N]   (default 100000; WORKDIR $KEYSCALE_WORK,
#        default /tmp/custos-keyscale, ~4 GiB at 100,000 files)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
n=${1:-100000}
work=${KEYSCALE_WORK:-/tmp/custos-keyscale}
command -v bc >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq bc; }
custos_binary
rm -rf "$work" && mkdir -p "$work"
make_small_tree "$work/data" "$n"
best() { printf '%s\n' "$@" | sort -n | head -1; }
per=() one=()
for round in 1 2; do
  for mode in per one; do
    rm -rf "$work/vault"
    export CUSTOS_VAULT="$work/vault" CUSTOS_PASSPHRASE="bench-not-secret"
    bench_vault
    if [ "$mode" = one ]; then
      label=$("$custos" key create --app SMALL --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["label"])')
      "$custos" key activate "$label" > /dev/null
      "$custos" policy add one --pattern 'SMALL.**' --volume default --key "$label" > /dev/null
    fi
    sync; sleep 2
    t=$(timed "$custos" ds import "$work/data" --prefix SMALL)
    keys=$("$custos" ds ls 'SMALL.**' --json | python3 -c 'import json, sys; print(len({d["current"]["key_label"] for d in json.load(sys.stdin)}))')
    if [ "$mode" = one ]; then
      [ "$keys" = 1 ] || { echo "the one-key import used $keys keys" >&2; exit 1; }
      one+=("$t")
    else
      [ "$keys" = "$n" ] || { echo "the key-per-dataset import used $keys keys" >&2; exit 1; }
      per+=("$t")
    fi
  done
done
p=$(best "${per[@]}") o=$(best "${one[@]}")
cat > /tmp/key-scale-section.md <<MD
<!-- key-scale:begin -->
Measured $(date -u +%Y-%m-%d) on this machine ($(nproc) cores), by \`bench/key-scale.sh $n\`, Custos $(git rev-parse --short HEAD) (release build): \`ds import\` of $n files of 1–64 KiB into a fresh vault; the faster of two runs each, alternating.

| policy | import | runs |
|---|---|---|
| a new key per dataset (the default) | $(printf '%.2f' "$p") s | $(printf '%.2f s ' "${per[@]}" | sed 's/ $//') |
| one existing key for every dataset | $(printf '%.2f' "$o") s | $(printf '%.2f s ' "${one[@]}" | sed 's/ $//') |

A key per dataset costs $(printf '%.2f' "$(echo "$p / $o" | bc -l)")× the time of one key (issue 19: under 2×).
<!-- key-scale:end -->
MD
replace_section key-scale 'A key per dataset against one policy key — `bench/key-scale.sh`' /tmp/key-scale-section.md
rm -rf "$work"
